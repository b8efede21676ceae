//! The MedicalPatchNet seed preprocessing, reproduced without PyTorch.
//!
//! The reference pipeline (Python) is
//!
//! ```text
//! img = PIL.Image.open(path).convert("L")
//! t   = torchvision.transforms.functional.to_tensor(img)          # [1, H, W] float in [0, 1]
//! t   = torchvision.transforms.CenterCrop(min(H, W))(t)
//! t   = torchvision.transforms.Resize((size, size), antialias=True)(t)   # bilinear
//! ```
//!
//! [`crate::decode`] covers the first two lines; this module covers the crop
//! ([`center_crop_square`]) and the resize ([`resize_antialiased`]), and [`preprocess`] chains them.
//!
//! The resize is the separable "triangle filter with antialiasing" that torchvision reaches through
//! `torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True)` (ATen's
//! `_upsample_bilinear2d_aa`), which in turn follows PIL's `ImagingResample`:
//!
//! * `scale = in / out` per axis, `support = max(scale, 1)` (bilinear has a radius of 1 input pixel,
//!   widened by the scale when shrinking so that every input pixel contributes: that is the
//!   antialiasing);
//! * output pixel `i` is centred on `c = (i + 0.5) * scale` in input coordinates and reads input
//!   pixels `j` in `[trunc(c - support + 0.5), trunc(c + support + 0.5))` clipped to the image, with
//!   weights `tri((j + 0.5 - c) / max(scale, 1))`, `tri(x) = max(0, 1 - |x|)`, normalised to sum 1;
//! * the horizontal pass runs first, then the vertical one, both in floating point with no
//!   intermediate rounding; an axis whose size does not change is left untouched.
//!
//! When enlarging (`scale < 1`) this is exactly bilinear interpolation with `align_corners=False`
//! and edge clamping.

use crate::decode::GrayImage;

/// Centre crop to a square whose side is the shorter image side, placed like torchvision's
/// `CenterCrop`: the offset along the longer axis is `round((long - short) / 2)` with Python's
/// round-half-to-even (so a difference of 1 gives offset 0, 3 gives 2, 5 gives 2, 7 gives 4).
///
/// A square image is returned unchanged (copied).
pub fn center_crop_square(img: &GrayImage) -> GrayImage {
    let (w, h) = (img.width, img.height);
    let side = w.min(h);
    let left = crop_offset(w, side);
    let top = crop_offset(h, side);
    if side == w && side == h {
        return img.clone();
    }
    let mut pixels = Vec::with_capacity(side as usize * side as usize);
    for y in top..top + side {
        let row = y as usize * w as usize;
        pixels.extend_from_slice(&img.pixels[row + left as usize..row + (left + side) as usize]);
    }
    GrayImage { width: side, height: side, pixels }
}

/// Where [`center_crop_square`] cuts an image: the input convention's rule, which the evaluation
/// and the DICOM results (maps back on the source image) use too.
pub use medpatch_models::contract::center_crop_box;
use medpatch_models::contract::crop_offset;

/// Precomputed one-axis resampling weights: output index `i` reads input indices
/// `start[i] .. start[i] + len[i]` with weights `weights[i * taps .. i * taps + len[i]]`.
#[derive(Debug, Clone)]
struct AxisWeights {
    start: Vec<usize>,
    len: Vec<usize>,
    taps: usize,
    weights: Vec<f32>,
}

impl AxisWeights {
    /// Triangle-filter weights for resizing an axis of `in_size` samples to `out_size` samples,
    /// antialiased when shrinking (see the module documentation).
    fn new(in_size: usize, out_size: usize) -> Self {
        assert!(in_size > 0 && out_size > 0, "resize axes must be non-empty");
        let scale = in_size as f64 / out_size as f64;
        let (support, inv_scale) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
        // Largest window any output sample can have, plus slack for the rounding of the bounds.
        let taps = ((support * 2.0).ceil() as usize + 2).min(in_size);
        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut weights = vec![0f32; out_size * taps];
        let mut w64 = vec![0f64; taps];
        for i in 0..out_size {
            let center = scale * (i as f64 + 0.5);
            // C++ `static_cast<int64_t>` truncates toward zero; clamped at 0 below, so a negative
            // truncation and a floor give the same result.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
            let n = hi.saturating_sub(lo).min(taps);
            let mut total = 0.0f64;
            for (k, w) in w64.iter_mut().enumerate().take(n) {
                let x = ((lo + k) as f64 - center + 0.5) * inv_scale;
                *w = (1.0 - x.abs()).max(0.0);
                total += *w;
            }
            let row = &mut weights[i * taps..i * taps + n];
            for (dst, w) in row.iter_mut().zip(&w64[..n]) {
                *dst = if total != 0.0 { (*w / total) as f32 } else { 0.0 };
            }
            start.push(lo);
            len.push(n);
        }
        AxisWeights { start, len, taps, weights }
    }

    #[inline]
    fn of(&self, i: usize) -> (usize, &[f32]) {
        let n = self.len[i];
        (self.start[i], &self.weights[i * self.taps..i * self.taps + n])
    }
}

/// Resize with torchvision's antialiased bilinear filter
/// (`F.resize(t, [out_h, out_w], interpolation=BILINEAR, antialias=True)` on a float tensor).
///
/// Works for shrinking and enlarging, independently per axis. Output values stay within the
/// input's range (all weights are non-negative and sum to 1). Zero output or input sizes give an
/// empty image of the requested size (all-zero pixels when the input is empty).
pub fn resize_antialiased(img: &GrayImage, out_w: u32, out_h: u32) -> GrayImage {
    let (in_w, in_h) = (img.width as usize, img.height as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    if ow == 0 || oh == 0 || in_w == 0 || in_h == 0 {
        return GrayImage { width: out_w, height: out_h, pixels: vec![0.0; ow * oh] };
    }
    assert_eq!(img.pixels.len(), in_w * in_h, "GrayImage pixel count does not match its size");

    // Horizontal pass: in_h rows of in_w -> in_h rows of ow.
    let horizontal: std::borrow::Cow<'_, [f32]> = if ow == in_w {
        std::borrow::Cow::Borrowed(&img.pixels)
    } else {
        let wx = AxisWeights::new(in_w, ow);
        let mut out = vec![0f32; in_h * ow];
        for (src, dst) in img.pixels.chunks_exact(in_w).zip(out.chunks_exact_mut(ow)) {
            for (x, d) in dst.iter_mut().enumerate() {
                let (lo, w) = wx.of(x);
                let s = &src[lo..lo + w.len()];
                let mut acc = 0f32;
                for (a, b) in s.iter().zip(w) {
                    acc += a * b;
                }
                *d = acc;
            }
        }
        std::borrow::Cow::Owned(out)
    };

    // Vertical pass: in_h rows of ow -> oh rows of ow, accumulating whole rows (cache friendly).
    let pixels = if oh == in_h {
        horizontal.into_owned()
    } else {
        let wy = AxisWeights::new(in_h, oh);
        let mut out = vec![0f32; oh * ow];
        for (y, dst) in out.chunks_exact_mut(ow).enumerate() {
            let (lo, w) = wy.of(y);
            for (k, &wk) in w.iter().enumerate() {
                let src = &horizontal[(lo + k) * ow..(lo + k + 1) * ow];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += wk * s;
                }
            }
        }
        out
    };

    GrayImage { width: out_w, height: out_h, pixels }
}

/// The seed preprocessing: [`center_crop_square`] then [`resize_antialiased`] to `size`×`size`.
pub fn preprocess(img: &GrayImage, size: u32) -> GrayImage {
    if img.width == img.height {
        return resize_antialiased(img, size, size);
    }
    resize_antialiased(&center_crop_square(img), size, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(width: u32, height: u32, pixels: Vec<f32>) -> GrayImage {
        assert_eq!(pixels.len(), (width * height) as usize);
        GrayImage { width, height, pixels }
    }

    fn ramp(width: u32, height: u32) -> GrayImage {
        let pixels = (0..width * height).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        img(width, height, pixels)
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "index {i}: {x} vs {y}");
        }
    }

    #[test]
    fn crop_offsets_follow_python_round_half_even() {
        // (size, crop) -> torchvision's int(round((size - crop) / 2.0))
        let cases = [
            (10, 10, 0),
            (11, 10, 0), // 0.5 -> 0
            (12, 10, 1),
            (13, 10, 2), // 1.5 -> 2
            (14, 10, 2),
            (15, 10, 2), // 2.5 -> 2
            (17, 10, 4), // 3.5 -> 4
            (19, 10, 4), // 4.5 -> 4
            (2048, 1024, 512),
            (1955, 1841, 57),
        ];
        for (size, crop, want) in cases {
            assert_eq!(crop_offset(size, crop), want, "size {size} crop {crop}");
        }
    }

    #[test]
    fn crop_takes_the_centred_square() {
        // 5 wide x 2 high: difference 3 -> left offset round(1.5) = 2
        let im = img(5, 2, (0..10).map(|v| v as f32).collect());
        let c = center_crop_square(&im);
        assert_eq!((c.width, c.height), (2, 2));
        assert_eq!(c.pixels, vec![2.0, 3.0, 7.0, 8.0]);

        // 2 wide x 4 high: difference 2 -> top offset 1
        let im = img(2, 4, (0..8).map(|v| v as f32).collect());
        let c = center_crop_square(&im);
        assert_eq!((c.width, c.height), (2, 2));
        assert_eq!(c.pixels, vec![2.0, 3.0, 4.0, 5.0]);

        // 3 wide x 2 high: difference 1 -> offset round(0.5) = 0
        let im = img(3, 2, (0..6).map(|v| v as f32).collect());
        let c = center_crop_square(&im);
        assert_eq!(c.pixels, vec![0.0, 1.0, 3.0, 4.0]);

        let sq = ramp(4, 4);
        assert_eq!(center_crop_square(&sq), sq);
    }

    #[test]
    fn resize_keeps_a_constant_image_constant() {
        for &(w, h, ow, oh) in
            &[(1024, 1024, 512, 512), (1841, 1841, 512, 512), (300, 300, 512, 512), (7, 13, 5, 29), (1, 1, 4, 3)]
        {
            let im = img(w, h, vec![0.625; (w * h) as usize]);
            let r = resize_antialiased(&im, ow, oh);
            assert_eq!((r.width, r.height), (ow, oh));
            for &v in &r.pixels {
                assert!((v - 0.625).abs() < 1e-6, "{w}x{h}->{ow}x{oh}: {v}");
            }
        }
    }

    #[test]
    fn resize_to_the_same_size_is_the_identity() {
        let im = ramp(9, 6);
        assert_eq!(resize_antialiased(&im, 9, 6), im);
        // also via the weights themselves (one axis changes, the other goes through weights of 1)
        let w = AxisWeights::new(6, 6);
        for i in 0..6 {
            let (lo, ws) = w.of(i);
            assert_eq!(lo, i);
            assert_eq!(ws[0], 1.0);
            assert!(ws[1..].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn resize_4_to_2_by_hand() {
        // scale 2, support 2. Output 0: centre 1.0, window [trunc(-0.5)=0, trunc(3.5)=3):
        // x = (j + 0.5 - 1) / 2 -> -0.25, 0.25, 0.75 -> tri 0.75, 0.75, 0.25 -> /1.75
        // Output 1: centre 3.0, window [trunc(1.5)=1, min(trunc(5.5), 4)=4):
        // x = (j + 0.5 - 3) / 2 for j = 1, 2, 3 -> -0.75, -0.25, 0.25 -> 0.25, 0.75, 0.75 -> /1.75
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let o0 = (0.75 * a[0] + 0.75 * a[1] + 0.25 * a[2]) / 1.75;
        let o1 = (0.25 * a[1] + 0.75 * a[2] + 0.75 * a[3]) / 1.75;
        let r = resize_antialiased(&img(4, 1, a.to_vec()), 2, 1);
        assert_close(&r.pixels, &[o0, o1], 1e-6);
        // the same along the vertical axis
        let r = resize_antialiased(&img(1, 4, a.to_vec()), 1, 2);
        assert_close(&r.pixels, &[o0, o1], 1e-6);
        // and separably on a 4x4 whose rows are scaled copies of a
        let mut p = Vec::new();
        for k in 1..=4 {
            p.extend(a.iter().map(|v| v * k as f32));
        }
        let r = resize_antialiased(&img(4, 4, p), 2, 2);
        let (k0, k1) = (o0 / 1.0, o1 / 1.0); // column factors follow the same weights on 1..4
        assert_close(&r.pixels, &[o0 * k0, o1 * k0, o0 * k1, o1 * k1], 1e-5);
    }

    #[test]
    fn resize_2_to_4_by_hand() {
        // scale 0.5, support 1: plain bilinear, align_corners=False, edges clamped.
        // centres 0.25, 0.75, 1.25, 1.75 -> source positions c - 0.5 = -0.25, 0.25, 0.75, 1.25
        let r = resize_antialiased(&img(2, 1, vec![0.0, 1.0]), 4, 1);
        assert_close(&r.pixels, &[0.0, 0.25, 0.75, 1.0], 1e-6);
        let r = resize_antialiased(&img(1, 2, vec![0.2, 0.6]), 1, 4);
        assert_close(&r.pixels, &[0.2, 0.3, 0.5, 0.6], 1e-6);
    }

    #[test]
    fn resize_1024_to_512_averages_pairs_with_neighbours() {
        // scale 2: interior output i reads inputs 2i-1 .. 2i+2 with weights 1/8, 3/8, 3/8, 1/8
        let n = 1024;
        let row: Vec<f32> = (0..n).map(|v| ((v * 7919) % 256) as f32 / 255.0).collect();
        let r = resize_antialiased(&img(n, 1, row.clone()), 512, 1);
        for i in 1..511usize {
            let want = (row[2 * i - 1] + 3.0 * row[2 * i] + 3.0 * row[2 * i + 1] + row[2 * i + 2]) / 8.0;
            assert!((r.pixels[i] - want).abs() < 1e-6, "{i}");
        }
    }

    #[test]
    fn preprocess_crops_then_resizes() {
        let im = ramp(30, 20);
        let p = preprocess(&im, 8);
        assert_eq!((p.width, p.height), (8, 8));
        let manual = resize_antialiased(&center_crop_square(&im), 8, 8);
        assert_eq!(p, manual);
        for &v in &p.pixels {
            assert!((0.0..=1.0).contains(&v));
        }
    }

    #[test]
    fn resize_of_empty_input_does_not_panic() {
        let r = resize_antialiased(&img(0, 0, vec![]), 2, 2);
        assert_eq!(r.pixels, vec![0.0; 4]);
        let r = resize_antialiased(&ramp(3, 3), 0, 5);
        assert!(r.pixels.is_empty());
    }
}
