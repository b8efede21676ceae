//! Cutting a preprocessed square image into the model's patches, as the seed's `unfold` does:
//! non-overlapping, no padding, row-major (patch index = row · grid + col).

/// Append the `grid × grid` patches of a `side × side` single-channel image to `out`, each
/// `patch × patch` contiguous, in row-major patch order.
pub fn tile_into(image: &[f32], side: usize, patch: usize, out: &mut Vec<f32>) {
    debug_assert_eq!(image.len(), side * side);
    debug_assert_eq!(side % patch, 0);
    let grid = side / patch;
    out.reserve(image.len());
    for row in 0..grid {
        for col in 0..grid {
            for y in 0..patch {
                let start = (row * patch + y) * side + col * patch;
                out.extend_from_slice(&image[start..start + patch]);
            }
        }
    }
}

pub fn tile(image: &[f32], side: usize, patch: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(image.len());
    tile_into(image, side, patch, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_are_row_major_like_unfold() {
        // 4×4 image of its own pixel indices, 2×2 patches.
        let image: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let patches = tile(&image, 4, 2);
        assert_eq!(patches, vec![0., 1., 4., 5., 2., 3., 6., 7., 8., 9., 12., 13., 10., 11., 14., 15.]);
    }
}
