//! Bringing a saliency map from the model's input back to the original X-ray.
//!
//! The model saw a centre crop (a square of the shorter side) resized to 512. A map in that space
//! belongs to the crop box of the original image:
//!
//! * [`Geometry::Crop`] (default): the map is resized to the crop box and placed there; pixels
//!   outside the box have no map value (they are never the argmax and never in the predicted
//!   segmentation, and the min–max normalisation runs over the box only).
//! * [`Geometry::Stretch`]: the map is resized to the whole image, as CheXlocalize does with the
//!   image size it is given. The seed recorded the size *before* its centre crop, so its published
//!   localisation figures stretch the crop-space map over the whole image; this reproduces them.
//!   It is also the right choice for maps computed on the uncropped image.
//!
//! The resize is PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` on CPU, float32,
//! bit for bit (the pointing game takes the first maximum, and on flat 64×64 patch blocks the
//! maximum is decided by rounding): per axis `scale = in/out`, source `fma(scale, d + 0.5, −0.5)`
//! clamped at 0, `λ1 = src − ⌊src⌋`, `λ0 = 1 − λ1`; then `fma(a, λ0, b·λ1)` along the width and the
//! same along the height. Those fused multiply-adds are what PyTorch's AVX2/AVX-512 kernels compute
//! (checked against torch 2.13 by `tests/python/eval_reference.py`); a PyTorch running its
//! non-FMA kernel (pre-AVX2 CPUs) rounds differently by an ulp.

/// Where the model's crop lies in the original image (torchvision's `CenterCrop` offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rect {
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Geometry {
    #[default]
    Crop,
    Stretch,
}

impl Geometry {
    /// The part of a `width × height` image that a model-space map covers, given the model's crop.
    pub fn target(self, width: usize, height: usize, crop: Rect) -> Rect {
        match self {
            Geometry::Crop => crop,
            Geometry::Stretch => Rect { left: 0, top: 0, width, height },
        }
    }
}

/// Source indices and weights of one output axis.
struct Axis {
    i0: Vec<usize>,
    i1: Vec<usize>,
    l0: Vec<f32>,
    l1: Vec<f32>,
}

impl Axis {
    fn new(input: usize, output: usize) -> Self {
        let scale = input as f32 / output as f32;
        let mut axis = Axis {
            i0: Vec::with_capacity(output),
            i1: Vec::with_capacity(output),
            l0: Vec::with_capacity(output),
            l1: Vec::with_capacity(output),
        };
        for d in 0..output {
            let (i0, l1) = if input == output {
                (d, 0.0)
            } else {
                let source = scale.mul_add(d as f32 + 0.5, -0.5).max(0.0);
                let i0 = source as usize;
                (i0, source - i0 as f32)
            };
            axis.i0.push(i0);
            axis.i1.push(if i0 + 1 < input { i0 + 1 } else { i0 });
            axis.l1.push(l1);
            axis.l0.push(1.0 - l1);
        }
        axis
    }
}

/// Bilinear resize (align_corners=False) of a row-major `in_h × in_w` map to `out_h × out_w`,
/// exactly as PyTorch computes it (see the module notes).
pub fn resize_bilinear(map: &[f32], in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    assert_eq!(map.len(), in_w * in_h, "map size");
    let (xs, ys) = (Axis::new(in_w, out_w), Axis::new(in_h, out_h));
    // The width pass for every source row (each is read by many output rows).
    let mut rows = vec![0f32; in_h * out_w];
    for (r, row) in rows.chunks_exact_mut(out_w).enumerate() {
        let src = &map[r * in_w..(r + 1) * in_w];
        lerp_gather(row, src, &xs);
    }
    let mut out = vec![0f32; out_w * out_h];
    for (y, row) in out.chunks_exact_mut(out_w).enumerate() {
        let (a, b) = (&rows[ys.i0[y] * out_w..][..out_w], &rows[ys.i1[y] * out_w..][..out_w]);
        lerp_rows(row, a, b, ys.l0[y], ys.l1[y]);
    }
    out
}

fn lerp_gather(out: &mut [f32], src: &[f32], xs: &Axis) {
    for (x, v) in out.iter_mut().enumerate() {
        *v = src[xs.i0[x]].mul_add(xs.l0[x], src[xs.i1[x]] * xs.l1[x]);
    }
}

/// `out = fma(a, l0, b·l1)` elementwise: the hot loop. With hardware FMA it runs vectorised;
/// without, `mul_add` still rounds once (libm), so the result is the same either way.
fn lerp_rows(out: &mut [f32], a: &[f32], b: &[f32], l0: f32, l1: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA (checked just above).
        unsafe { lerp_rows_fma(out, a, b, l0, l1) };
        return;
    }
    lerp_rows_portable(out, a, b, l0, l1);
}

#[inline(always)]
fn lerp_rows_portable(out: &mut [f32], a: &[f32], b: &[f32], l0: f32, l1: f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = a.mul_add(l0, b * l1);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
unsafe fn lerp_rows_fma(out: &mut [f32], a: &[f32], b: &[f32], l0: f32, l1: f32) {
    lerp_rows_portable(out, a, b, l0, l1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant() {
        let map: Vec<f32> = (0..12).map(|v| v as f32 * 0.37).collect();
        assert_eq!(resize_bilinear(&map, 4, 3, 4, 3), map);
        let flat = vec![0.3f32; 4];
        // Upsampling a constant 2×2 map: weights sum to one, every output equals the input value
        // up to rounding (fma keeps most of them exact).
        let out = resize_bilinear(&flat, 2, 2, 7, 5);
        assert!(out.iter().all(|v| (v - 0.3).abs() < 1e-7));
    }

    #[test]
    fn half_pixel_centres() {
        // 2 → 4 along x: sources −0.25 (clamped to 0), 0.25, 0.75, 1.25 → a, 0.75a+0.25b, 0.25a+0.75b, b.
        let out = resize_bilinear(&[0.0, 4.0], 2, 1, 4, 1);
        assert_eq!(out, vec![0.0, 1.0, 3.0, 4.0]);
        // 4 → 2 (downsampling, no antialiasing): sources 0.5 and 2.5.
        let out = resize_bilinear(&[0.0, 2.0, 4.0, 6.0], 4, 1, 2, 1);
        assert_eq!(out, vec![1.0, 5.0]);
    }

    #[test]
    fn geometry_targets() {
        let crop = Rect { left: 10, top: 0, width: 100, height: 100 };
        assert_eq!(Geometry::Crop.target(120, 100, crop), crop);
        assert_eq!(Geometry::Stretch.target(120, 100, crop), Rect { left: 0, top: 0, width: 120, height: 100 });
    }
}
