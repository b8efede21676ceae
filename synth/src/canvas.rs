//! Drawing primitives: a float canvas with strokes and blur, value noise, random walks, curves.

use medpatch_eval::rle::Mask;
use medpatch_models::Rng;

/// A float image (density or intensity) with pixel-centre coordinates.
pub(crate) struct Canvas {
    pub(crate) w: usize,
    pub(crate) h: usize,
    pub(crate) d: Vec<f32>,
}

impl Canvas {
    pub(crate) fn new(w: usize, h: usize) -> Self {
        Self { w, h, d: vec![0.0; w * h] }
    }

    /// Stamp a polyline of radius `r` (anti-aliased, max-composited) with value `v`; optionally
    /// mark a mask with the stroke dilated by `dilate` pixels.
    pub(crate) fn stroke(&mut self, points: &[(f32, f32)], r: f32, v: f32, mut mask: Option<(&mut Mask, f32)>) {
        for seg in points.windows(2) {
            let (a, b) = (seg[0], seg[1]);
            let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
            let steps = (len / 0.5).ceil().max(1.0) as usize;
            for s in 0..=steps {
                let t = s as f32 / steps as f32;
                let (px, py) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                let extra = mask.as_ref().map_or(0.0, |m| m.1);
                let reach = r + 1.0 + extra;
                let (x0, x1) = (
                    (px - reach).floor().max(0.0) as usize,
                    ((px + reach).ceil() as usize).min(self.w.saturating_sub(1)),
                );
                let (y0, y1) = (
                    (py - reach).floor().max(0.0) as usize,
                    ((py + reach).ceil() as usize).min(self.h.saturating_sub(1)),
                );
                if px + reach < 0.0 || py + reach < 0.0 {
                    continue;
                }
                for y in y0..=y1 {
                    for x in x0..=x1 {
                        let dist = ((x as f32 + 0.5 - px).powi(2) + (y as f32 + 0.5 - py).powi(2)).sqrt();
                        let cover = (r + 0.5 - dist).clamp(0.0, 1.0);
                        let i = y * self.w + x;
                        if cover > 0.0 {
                            self.d[i] = self.d[i].max(cover * v);
                        }
                        if let Some((m, dil)) = mask.as_mut()
                            && dist <= r + *dil
                        {
                            m.data[i] = true;
                        }
                    }
                }
            }
        }
    }

    /// Separable Gaussian blur (sigma in pixels), edges clamped.
    pub(crate) fn blur(&mut self, sigma: f32) {
        if sigma <= 0.0 {
            return;
        }
        let radius = (3.0 * sigma).ceil() as i64;
        let kernel: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
        let sum: f32 = kernel.iter().sum();
        let kernel: Vec<f32> = kernel.iter().map(|k| k / sum).collect();
        let (w, h) = (self.w as i64, self.h as i64);
        let mut tmp = vec![0f32; self.d.len()];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (k, kv) in kernel.iter().enumerate() {
                    let xx = (x + k as i64 - radius).clamp(0, w - 1);
                    acc += kv * self.d[(y * w + xx) as usize];
                }
                tmp[(y * w + x) as usize] = acc;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (k, kv) in kernel.iter().enumerate() {
                    let yy = (y + k as i64 - radius).clamp(0, h - 1);
                    acc += kv * tmp[(yy * w + x) as usize];
                }
                self.d[(y * w + x) as usize] = acc;
            }
        }
    }
}

/// Smooth value noise on a coarse grid (bilinear), in [-1, 1], for textures and exposure.
pub(crate) struct ValueNoise {
    pub(crate) gw: usize,
    pub(crate) gh: usize,
    pub(crate) cell: f32,
    pub(crate) v: Vec<f32>,
}

impl ValueNoise {
    pub(crate) fn new(rng: &mut Rng, w: usize, h: usize, cell: f32) -> Self {
        let gw = (w as f32 / cell).ceil() as usize + 2;
        let gh = (h as f32 / cell).ceil() as usize + 2;
        let v = (0..gw * gh).map(|_| rng.rangef(-1.0, 1.0)).collect();
        Self { gw, gh, cell, v }
    }
    pub(crate) fn at(&self, x: f32, y: f32) -> f32 {
        let (fx, fy) = (x / self.cell, y / self.cell);
        let (ix, iy) = ((fx.floor() as usize).min(self.gw - 2), (fy.floor() as usize).min(self.gh - 2));
        let (tx, ty) = (fx - ix as f32, fy - iy as f32);
        let (tx, ty) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
        let g = |i: usize, j: usize| self.v[j * self.gw + i];
        let a = g(ix, iy) + (g(ix + 1, iy) - g(ix, iy)) * tx;
        let b = g(ix, iy + 1) + (g(ix + 1, iy + 1) - g(ix, iy + 1)) * tx;
        a + (b - a) * ty
    }
}

pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// A random walk from `start` heading `angle` (radians, image coordinates), for vessels and lines.
pub(crate) fn walk(
    rng: &mut Rng,
    start: (f32, f32),
    angle: f32,
    step: f32,
    steps: usize,
    wiggle: f32,
) -> Vec<(f32, f32)> {
    let mut pts = vec![start];
    let (mut x, mut y, mut a) = (start.0, start.1, angle);
    for _ in 0..steps {
        a += rng.rangef(-wiggle, wiggle);
        x += step * a.cos();
        y += step * a.sin();
        pts.push((x, y));
    }
    pts
}

/// Points of a quadratic Bézier curve.
pub(crate) fn bezier(p0: (f32, f32), p1: (f32, f32), p2: (f32, f32), n: usize) -> Vec<(f32, f32)> {
    (0..=n)
        .map(|i| {
            let t = i as f32 / n as f32;
            let u = 1.0 - t;
            (u * u * p0.0 + 2.0 * u * t * p1.0 + t * t * p2.0, u * u * p0.1 + 2.0 * u * t * p1.1 + t * t * p2.1)
        })
        .collect()
}
