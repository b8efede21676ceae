//! Where the model's patches lie on the source image: the inverse of the engine's preprocessing.
//!
//! The engine centre-crops the source to a square of side `s` (the shorter side, at
//! [`medpatch_engine::preprocess::center_crop_box`]'s offsets) and resizes it to the model's
//! `grid × patch` input; patch `(r, c)` is input rows `[r·patch, (r+1)·patch)` and the same columns.
//! A source pixel is assigned to the patch under its centre: column `x` of the crop (its centre at
//! `x + ½`) lands at `(x + ½)·grid / s` patch widths, so its patch column is
//! `⌊(2x + 1)·grid / (2s)⌋`, in integers. A centre exactly on a boundary goes to the patch right
//! of / below it. Pixels outside the crop (the sides the model never saw) belong to no patch.

use medpatch_engine::preprocess::center_crop_box;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGeometry {
    /// The source image's size, in pixels.
    pub width: u32,
    pub height: u32,
    /// The centre crop the engine takes: left and top offsets, side.
    pub left: u32,
    pub top: u32,
    pub side: u32,
    /// Patches per side.
    pub grid: usize,
}

impl PatchGeometry {
    /// The geometry of a `width × height` source image seen through a `grid × grid` model.
    pub fn new(width: u32, height: u32, grid: usize) -> Self {
        let (left, top, side) = center_crop_box(width, height);
        Self { width, height, left, top, side, grid }
    }

    /// The patch row (or column) of source row (column) `coord`, given the crop's offset on that
    /// axis; `None` outside the crop.
    fn axis(&self, coord: u32, offset: u32) -> Option<usize> {
        let inside = coord.checked_sub(offset).filter(|&d| d < self.side)?;
        Some(((2 * inside as u64 + 1) * self.grid as u64 / (2 * self.side as u64)) as usize)
    }

    /// The patch `(row, column)` under source pixel `(x, y)`, or `None` outside the crop.
    pub fn patch_of(&self, x: u32, y: u32) -> Option<(usize, usize)> {
        Some((self.axis(y, self.top)?, self.axis(x, self.left)?))
    }

    /// One value per patch (`values[row · grid + col]`) spread over the source pixel grid,
    /// row-major `width × height`, with `outside` where the model saw nothing.
    pub fn paint<T: Copy>(&self, values: &[T], outside: T) -> Vec<T> {
        assert_eq!(values.len(), self.grid * self.grid, "one value per patch");
        let cols: Vec<Option<usize>> = (0..self.width).map(|x| self.axis(x, self.left)).collect();
        let mut out = Vec::with_capacity(self.width as usize * self.height as usize);
        for y in 0..self.height {
            match self.axis(y, self.top) {
                None => out.extend(std::iter::repeat_n(outside, self.width as usize)),
                Some(row) => out.extend(cols.iter().map(|c| c.map_or(outside, |c| values[row * self.grid + c]))),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_tile_the_crop_evenly_and_nothing_else() {
        // RG1_UNCR.dcm: 1841 wide, 1955 high → a 1841 square, 57 rows cut above (round-half-even of 57).
        let g = PatchGeometry::new(1841, 1955, 8);
        assert_eq!((g.left, g.top, g.side), (0, 57, 1841));
        assert_eq!(g.patch_of(0, 56), None);
        assert_eq!(g.patch_of(0, 57), Some((0, 0)));
        assert_eq!(g.patch_of(1840, 57 + 1840), Some((7, 7)));
        assert_eq!(g.patch_of(0, 57 + 1841), None);
        // 1841 / 8 = 230.125 pixels per patch: column 229 (centre 229.5) is patch 0, 230 (230.5) patch 1.
        assert_eq!(g.patch_of(229, 100).unwrap().1, 0);
        assert_eq!(g.patch_of(230, 100).unwrap().1, 1);
        // A centre exactly on a boundary (920.5 = 1841 / 2) goes right.
        assert_eq!(g.patch_of(920, 100).unwrap().1, 4);
        assert_eq!(g.patch_of(919, 100).unwrap().1, 3);
        // Every patch gets ⌊s/grid⌋ or ⌈s/grid⌉ columns.
        let mut counts = [0usize; 8];
        for x in 0..1841 {
            counts[g.patch_of(x, 100).unwrap().1] += 1;
        }
        assert!(counts.iter().all(|&n| n == 230 || n == 231), "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), 1841);
    }

    #[test]
    fn paint_spreads_patch_values_and_marks_the_cut_sides() {
        let g = PatchGeometry::new(6, 4, 2); // 4×4 crop starting at column 1
        assert_eq!((g.left, g.top, g.side), (1, 0, 4));
        let painted = g.paint(&[1, 2, 3, 4], 0);
        #[rustfmt::skip]
        assert_eq!(painted, vec![
            0, 1, 1, 2, 2, 0,
            0, 1, 1, 2, 2, 0,
            0, 3, 3, 4, 4, 0,
            0, 3, 3, 4, 4, 0,
        ]);
    }
}
