//! Aggregation and saliency, natively: MedicalPatchNet's explanation *is* its patch logits.
//!
//! Layout conventions: patch logits are `[patches][classes]` with patches row-major
//! (index = row · grid + col); maps are `[classes][side][side]` row-major.

use medpatch_models::contract::{MAP_LOGIT_CLIP, MAX_OVERLAY_LOGIT_RANGE};

/// The image's logits: the mean of its patch logits (f64 accumulation). Completeness holds by
/// construction: `image_logit[c] = Σ_i patch_logit[i][c] / n`.
pub fn mean_logits(patch_logits: &[f32], classes: usize) -> Vec<f32> {
    let n = patch_logits.len() / classes;
    let mut sums = vec![0f64; classes];
    for patch in patch_logits.chunks_exact(classes) {
        for (s, &z) in sums.iter_mut().zip(patch) {
            *s += z as f64;
        }
    }
    sums.into_iter().map(|s| (s / n as f64) as f32).collect()
}

pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Which saliency the maps show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MapKind {
    /// The patch logits themselves.
    #[default]
    Raw,
    /// Patch logits times the sigmoid of the image logit: evidence weighted by the prediction.
    Scaled,
}

/// The scaled map's weight per class: the image probability, sigmoid(image logit). The one
/// place the "scaled" rule lives; patch values and full maps both go through it.
fn scale_factors(image_logits: &[f32]) -> Vec<f32> {
    image_logits.iter().map(|&z| sigmoid(z)).collect()
}

/// Raw or scaled patch logits, `[patches][classes]`.
pub fn patch_saliency(patch_logits: &[f32], image_logits: &[f32], kind: MapKind) -> Vec<f32> {
    match kind {
        MapKind::Raw => patch_logits.to_vec(),
        MapKind::Scaled => {
            let gates = scale_factors(image_logits);
            patch_logits
                .chunks_exact(gates.len())
                .flat_map(|patch| patch.iter().zip(&gates).map(|(z, g)| z * g))
                .collect()
        }
    }
}

/// Turn a raw `[classes][side][side]` map (coarse or dense) into the requested kind, in place.
pub fn apply_map_kind(map: &mut [f32], image_logits: &[f32], kind: MapKind) {
    if kind == MapKind::Raw || image_logits.is_empty() {
        return;
    }
    let plane = map.len() / image_logits.len();
    for (values, gate) in map.chunks_exact_mut(plane).zip(scale_factors(image_logits)) {
        values.iter_mut().for_each(|v| *v *= gate);
    }
}

/// The coarse map: each of the `grid × grid` patch values upsampled nearest-neighbour to its
/// `patch × patch` square. Returns `[classes][grid·patch][grid·patch]`.
pub fn coarse_map(patch_values: &[f32], grid: usize, patch: usize, classes: usize) -> Vec<f32> {
    let side = grid * patch;
    let mut map = vec![0f32; classes * side * side];
    for c in 0..classes {
        let plane = &mut map[c * side * side..(c + 1) * side * side];
        for y in 0..side {
            let row = y / patch;
            for (x, v) in plane[y * side..(y + 1) * side].iter_mut().enumerate() {
                *v = patch_values[(row * grid + x / patch) * classes + c];
            }
        }
    }
    map
}

/// The reference implementation's storage form: `(clip(map, ±200) + 200) / 400`
/// ([`MAP_LOGIT_CLIP`]), so 0.5 means logit 0.
pub fn normalise(map: &[f32]) -> Vec<f32> {
    map.iter().map(|&v| (v.clamp(-MAP_LOGIT_CLIP, MAP_LOGIT_CLIP) + MAP_LOGIT_CLIP) / (2.0 * MAP_LOGIT_CLIP)).collect()
}

/// The overlay colour range calibrated on a model's own patch logits (e.g. of validation images):
/// the 99th percentile of |patch logit| over every patch and class, rounded up to two significant
/// digits, so that the strongest evidence saturates and typical patches stay readable; at most
/// the ±200 the stored maps can express. `None` without a finite logit.
pub fn calibrate_overlay_logit_range(patch_logits: &[f32]) -> Option<f32> {
    let mut magnitudes: Vec<f32> = patch_logits.iter().filter(|v| v.is_finite()).map(|v| v.abs()).collect();
    if magnitudes.is_empty() {
        return None;
    }
    let k = ((magnitudes.len() - 1) as f64 * 0.99).round() as usize;
    let (_, &mut p99, _) = magnitudes.select_nth_unstable_by(k, f32::total_cmp);
    if p99 <= 0.0 {
        return None;
    }
    let unit = 10f64.powf((p99 as f64).log10().floor() - 1.0);
    // (The 1e-6 keeps a value already on the grid, e.g. 9.9, from rounding up a step.)
    Some((((p99 as f64) / unit - 1e-6).ceil() * unit).min(MAX_OVERLAY_LOGIT_RANGE as f64) as f32)
}

/// Shift-steps allowed for the dense map: divisors of the patch size that are powers of two.
pub fn valid_shift_steps(steps: usize, patch: usize) -> bool {
    steps.is_power_of_two() && steps <= patch && patch.is_multiple_of(steps)
}

/// The shifts `(dr, dc)` of the dense map: `{−S/2 … S/2−1} × patch/S` on both axes, row-major.
pub fn dense_shifts(steps: usize, patch: usize) -> Vec<(isize, isize)> {
    let stride = (patch / steps) as isize;
    let half = (steps / 2) as isize;
    let offsets: Vec<isize> = (0..steps as isize).map(|k| (k - half) * stride).collect();
    offsets.iter().flat_map(|&dr| offsets.iter().map(move |&dc| (dr, dc))).collect()
}

/// The image window seen at shift `(dr, dc)`: the image zero-padded by `patch/2`, cut at
/// `(patch/2 + dr, patch/2 + dc)`, i.e. `window(y, x) = image(y + dr, x + dc)`, zero outside.
pub fn shifted_window(image: &[f32], side: usize, dr: isize, dc: isize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(side * side, 0.0);
    let s = side as isize;
    for y in 0..s {
        let src_y = y + dr;
        if !(0..s).contains(&src_y) {
            continue;
        }
        let (x0, x1) = ((-dc).max(0), (s - dc).min(s));
        if x0 >= x1 {
            continue;
        }
        let dst = (y * s) as usize;
        let src = (src_y * s) as usize;
        out[dst + x0 as usize..dst + x1 as usize]
            .copy_from_slice(&image[src + (x0 + dc) as usize..src + (x1 + dc) as usize]);
    }
}

/// Accumulates the dense map shift by shift: the `grid × grid` patch values of the window at
/// `(dr, dc)`, upsampled nearest, shifted back by `(−dr, −dc)` with zero fill, summed.
pub struct DenseAccumulator {
    side: usize,
    grid: usize,
    patch: usize,
    classes: usize,
    sum: Vec<f64>,
    shifts: usize,
}

impl DenseAccumulator {
    pub fn new(grid: usize, patch: usize, classes: usize) -> Self {
        let side = grid * patch;
        Self { side, grid, patch, classes, sum: vec![0.0; classes * side * side], shifts: 0 }
    }

    /// Add one shift's patch values (`[patches][classes]`). Each patch covers window rows
    /// `[r·P, (r+1)·P)`, i.e. image rows `[r·P + dr, (r+1)·P + dr)`, clipped to the image.
    pub fn add(&mut self, patch_values: &[f32], dr: isize, dc: isize) {
        let (side, p) = (self.side as isize, self.patch as isize);
        let plane = self.side * self.side;
        for r in 0..self.grid {
            let (y0, y1) = ((r as isize * p + dr).max(0), ((r as isize + 1) * p + dr).min(side));
            for col in 0..self.grid {
                let (x0, x1) = ((col as isize * p + dc).max(0), ((col as isize + 1) * p + dc).min(side));
                if y0 >= y1 || x0 >= x1 {
                    continue;
                }
                let values = &patch_values[(r * self.grid + col) * self.classes..][..self.classes];
                for (c, &v) in values.iter().enumerate() {
                    let base = c * plane;
                    for y in y0..y1 {
                        let row = base + y as usize * self.side;
                        for cell in &mut self.sum[row + x0 as usize..row + x1 as usize] {
                            *cell += v as f64;
                        }
                    }
                }
            }
        }
        self.shifts += 1;
    }

    /// The sum divided by S² (the number of shifts added): `[classes][side][side]`.
    pub fn finish(self) -> Vec<f32> {
        let n = self.shifts.max(1) as f64;
        self.sum.into_iter().map(|s| (s / n) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_is_complete() {
        let z = [1.0, -2.0, 3.0, 4.0, 5.0, 0.0];
        assert_eq!(mean_logits(&z, 2), vec![3.0, 2.0 / 3.0]);
    }

    #[test]
    fn scaled_multiplies_by_the_image_probability() {
        let patch = [2.0, -4.0, 0.0, 0.0];
        let image = mean_logits(&patch, 2);
        let scaled = patch_saliency(&patch, &image, MapKind::Scaled);
        assert!((scaled[0] - 2.0 * sigmoid(1.0)).abs() < 1e-7);
        assert!((scaled[1] + 4.0 * sigmoid(-2.0)).abs() < 1e-7);
        // The same rule on an upsampled map (2×2 grid of patches of side 3, 2 classes).
        let patches = [2.0, -4.0, 1.0, 0.5, -3.0, 2.0, 0.0, 1.0];
        let image = mean_logits(&patches, 2);
        let mut map = coarse_map(&patches, 2, 3, 2);
        apply_map_kind(&mut map, &image, MapKind::Scaled);
        assert_eq!(map, coarse_map(&patch_saliency(&patches, &image, MapKind::Scaled), 2, 3, 2));
    }

    #[test]
    fn coarse_map_is_nearest_upsampling() {
        // 2×2 grid, 2 classes, patch 3.
        let values = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0];
        let map = coarse_map(&values, 2, 3, 2);
        assert_eq!(map.len(), 2 * 36);
        assert_eq!((map[0], map[5], map[6 * 3], map[35]), (1.0, 2.0, 3.0, 4.0));
        assert_eq!(map[36 + 35], 40.0);
    }

    #[test]
    fn shifts_follow_the_paper() {
        assert_eq!(dense_shifts(1, 64), vec![(0, 0)]);
        assert_eq!(dense_shifts(2, 64), vec![(-32, -32), (-32, 0), (0, -32), (0, 0)]);
        let s64 = dense_shifts(64, 64);
        assert_eq!((s64.len(), s64[0], s64[4095]), (4096, (-32, -32), (31, 31)));
        assert!(valid_shift_steps(8, 64) && !valid_shift_steps(3, 64) && !valid_shift_steps(128, 64));
    }

    #[test]
    fn shifted_window_zero_fills() {
        let image: Vec<f32> = (1..=9).map(|v| v as f32).collect(); // 3×3
        let mut w = Vec::new();
        shifted_window(&image, 3, 1, -1, &mut w);
        assert_eq!(w, vec![0.0, 4.0, 5.0, 0.0, 7.0, 8.0, 0.0, 0.0, 0.0]);
        assert!(normalise(&[-500.0, 0.0, 100.0]) == vec![0.0, 0.5, 0.75]);
    }

    #[test]
    fn overlay_range_is_the_rounded_up_99th_percentile() {
        // 1,000 magnitudes 0.01 … 10.0: the 99th percentile is 9.9 (index 989 of 0 … 999).
        let logits: Vec<f32> =
            (1..=1000).map(|i| if i % 2 == 0 { i as f32 / 100.0 } else { -(i as f32) / 100.0 }).collect();
        let range = calibrate_overlay_logit_range(&logits).unwrap();
        assert!((range - 9.9).abs() < 1e-5, "{range}");
        assert!((calibrate_overlay_logit_range(&[0.0123, -f32::NAN]).unwrap() - 0.013).abs() < 1e-7);
        assert_eq!(calibrate_overlay_logit_range(&[1e6, -3e5]), Some(200.0));
        assert_eq!(calibrate_overlay_logit_range(&[0.0, f32::NAN]), None);
    }
}
