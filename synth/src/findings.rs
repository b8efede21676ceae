//! The findings, each drawn with its exact mask: the region it changes, nothing outside it
//! (but for the sub-pixel blur of edges). Called by [`crate::render`] in a fixed order, so that
//! one seed gives one image.

use crate::anatomy::Side;
use crate::canvas::{Canvas, bezier, smoothstep, walk};
use crate::render::Scene;
use medpatch_eval::rle::Mask;
use medpatch_models::Rng;

// `finding` is the density the findings add; `mask` the finding's CheXlocalize mask. Findings
// that make up "Airspace Opacity" return their region instead.
impl Scene {
    /// Lung Lesion: 1–3 round nodules or masses.
    pub(crate) fn lung_lesion(&self, rng: &mut Rng, mask: &mut Mask, finding: &mut Canvas) {
        let (w, h, wf, c, sz) = (self.w, self.h, self.wf, self.c, self.sz);
        let lung = &self.lung;
        let n = rng.int(1, 4);
        for _ in 0..n {
            let r = wf * rng.rangef(0.012, 0.04) * sz;
            let (px, py) = self.random_lung_point(rng, None, (0.15, 0.8));
            let side = lung[(py as usize).min(h - 1) * w + (px as usize).min(w - 1)];
            let m = &mut *mask;
            for y in ((py - r).max(0.0) as usize)..(((py + r) as usize) + 1).min(h) {
                for x in ((px - r).max(0.0) as usize)..(((px + r) as usize) + 1).min(w) {
                    let rho = ((x as f32 + 0.5 - px).powi(2) + (y as f32 + 0.5 - py).powi(2)).sqrt() / r;
                    let i = y * w + x;
                    if rho < 1.0 && lung[i].is_some() && lung[i] == side {
                        m.data[i] = true;
                        finding.d[i] += 0.24 * c * (1.0 - rho * rho).sqrt().max(0.25);
                    }
                }
            }
        }
    }

    /// Lung Opacity: a patchy hazy opacity.
    pub(crate) fn lung_opacity(&self, rng: &mut Rng, finding: &mut Canvas) -> Mask {
        let (w, wf, c, sz) = (self.w, self.wf, self.c, self.sz);
        let texture = &self.texture;
        let center = self.random_lung_point(rng, None, (0.2, 0.85));
        let (radius, lobes) = (wf * rng.rangef(0.04, 0.07) * sz, rng.int(3, 6) as usize);
        let (m, field) = self.blob(rng, center, radius, lobes);
        for (i, &f) in field.iter().enumerate() {
            if m.data[i] {
                let tex = 0.75 + 0.25 * texture.at((i % w) as f32, (i / w) as f32);
                finding.d[i] += 0.14 * c * f * tex;
            }
        }
        m
    }

    /// Consolidation: a dense homogeneous region with air bronchograms.
    pub(crate) fn consolidation(&self, rng: &mut Rng, finding: &mut Canvas) -> Mask {
        let (w, h, wf, c, sz) = (self.w, self.h, self.wf, self.c, self.sz);
        let center = self.random_lung_point(rng, None, (0.45, 0.9));
        let (radius, lobes) = (wf * rng.rangef(0.05, 0.08) * sz, rng.int(3, 6) as usize);
        let (m, field) = self.blob(rng, center, radius, lobes);
        for (i, &f) in field.iter().enumerate() {
            if m.data[i] {
                finding.d[i] += 0.28 * c * (0.6 + 0.4 * f);
            }
        }
        // Air bronchograms: dark branching lines inside the region.
        let mut bronchi = Canvas::new(w, h);
        for _ in 0..rng.int(2, 4) {
            let start = (center.0 + rng.rangef(-5.0, 5.0), center.1 + rng.rangef(-5.0, 5.0));
            let heading = rng.rangef(0.0, std::f32::consts::TAU);
            let pts = walk(rng, start, heading, wf * 0.008, 8, 0.4);
            bronchi.stroke(&pts, 0.9, 1.0, None);
        }
        for (i, d) in finding.d.iter_mut().enumerate() {
            if m.data[i] {
                *d -= 0.12 * c * bronchi.d[i] * field[i];
            }
        }
        m
    }

    /// Pneumonia: a mottled cluster of small opacities in a lower zone.
    pub(crate) fn pneumonia(&self, rng: &mut Rng, finding: &mut Canvas) -> Mask {
        let (w, h, wf, c, sz) = (self.w, self.h, self.wf, self.c, self.sz);
        let lung = &self.lung;
        let side = Side::random(rng);
        let center = self.random_lung_point(rng, Some(side), (0.5, 0.85));
        let mut m = Mask::new(h, w);
        let spread = wf * 0.06 * sz;
        for _ in 0..rng.int(8, 15) {
            let p = (center.0 + rng.rangef(-spread, spread), center.1 + rng.rangef(-spread, spread) * 0.8);
            let r = wf * rng.rangef(0.008, 0.016) * sz;
            for y in ((p.1 - r).max(0.0) as usize)..(((p.1 + r) as usize) + 1).min(h) {
                for x in ((p.0 - r).max(0.0) as usize)..(((p.0 + r) as usize) + 1).min(w) {
                    let rho = ((x as f32 + 0.5 - p.0).powi(2) + (y as f32 + 0.5 - p.1).powi(2)).sqrt() / r;
                    let i = y * w + x;
                    if rho < 1.0 && lung[i].is_some() {
                        if !m.data[i] {
                            finding.d[i] += 0.16 * c * (1.0 - rho * rho).max(0.3);
                        }
                        m.data[i] = true;
                    }
                }
            }
        }
        m
    }

    /// Edema: bilateral perihilar haze and Kerley B lines.
    pub(crate) fn edema(&self, rng: &mut Rng, finding: &mut Canvas) -> Mask {
        let (w, h, wf, lh, c, sz) = (self.w, self.h, self.wf, self.lh, self.c, self.sz);
        let (a, texture) = (&self.a, &self.texture);
        let mut m = Mask::new(h, w);
        let hilum_y = a.top + 0.5 * lh;
        let mut kerley = Canvas::new(w, h);
        for side in [Side::ImageLeft, Side::ImageRight] {
            let hx = a.cx + side.sign() * (a.medial(side, hilum_y) + 0.04 * wf);
            let (rx, ry) = (a.hw * 0.45 * sz.sqrt(), lh * 0.3 * sz.sqrt());
            // Kerley B lines: short horizontal lines at the lateral lower periphery.
            let band = 0.06 * wf;
            for k in 0..rng.int(4, 8) {
                let y = a.top + lh * (0.62 + 0.045 * k as f32) + rng.rangef(-2.0, 2.0);
                let lat = a.lateral(side, y);
                let x_out = a.cx + side.sign() * (lat - 1.0);
                let len = wf * rng.rangef(0.02, 0.035);
                kerley.stroke(&[(x_out, y), (x_out - side.sign() * len, y)], 0.7, 1.0, None);
            }
            for (i, px, py) in self.lung_pixels(side) {
                let e = ((px - hx) / rx).powi(2) + ((py - hilum_y) / ry).powi(2);
                let in_band = py > a.top + 0.58 * lh && (px - a.cx).abs() > a.lateral(side, py) - band;
                if e < 1.0 {
                    m.data[i] = true;
                    let tex = 0.7 + 0.3 * texture.at(px, py);
                    finding.d[i] += 0.13 * c * (1.0 - e).sqrt() * tex;
                }
                if in_band {
                    m.data[i] = true;
                    finding.d[i] += 0.16 * c * kerley.d[i];
                }
            }
        }
        m
    }

    /// Atelectasis: plate-like basal band(s).
    pub(crate) fn atelectasis(&self, rng: &mut Rng, finding: &mut Canvas) -> Mask {
        let (w, h, lh, c, sz) = (self.w, self.h, self.lh, self.c, self.sz);
        let (a, lung) = (&self.a, &self.lung);
        let mut m = Mask::new(h, w);
        for _ in 0..rng.int(1, 3) {
            let side = Side::random(rng);
            let y = a.top + lh * rng.rangef(0.6, 0.85);
            let d_mid = (a.medial(side, y) + a.lateral(side, y)) / 2.0;
            let center = (a.cx + side.sign() * d_mid, y);
            let half_len = a.hw * rng.rangef(0.14, 0.25) * sz;
            let half_th = lh * rng.rangef(0.010, 0.022) * sz;
            let angle = rng.rangef(-0.3, 0.3);
            let (ca, sa) = (angle.cos(), angle.sin());
            for yy in 0..h {
                for xx in 0..w {
                    let (dx, dy) = (xx as f32 + 0.5 - center.0, yy as f32 + 0.5 - center.1);
                    let (u, v) = (dx * ca + dy * sa, -dx * sa + dy * ca);
                    let e = (u / half_len).powi(2) + (v / half_th).powi(2);
                    let i = yy * w + xx;
                    if e < 1.0 && lung[i].is_some() {
                        if !m.data[i] {
                            finding.d[i] += 0.26 * c * (1.0 - e).sqrt().max(0.35);
                        }
                        m.data[i] = true;
                    }
                }
            }
        }
        m
    }

    /// Pneumothorax: an apicolateral crescent without vessels, hyperlucent, with the visceral
    /// pleural line.
    pub(crate) fn pneumothorax(&self, rng: &mut Rng, mask: &mut Mask, no_vessels: &mut Mask, finding: &mut Canvas) {
        let (wf, lh, c, sz) = (self.wf, self.lh, self.c, self.sz);
        let a = &self.a;
        let side = Side::random(rng);
        let depth = wf * rng.rangef(0.035, 0.08) * sz;
        let cut = a.top + lh * rng.rangef(0.55, 0.8);
        let m = mask;
        for (i, px, py) in self.lung_pixels(side) {
            if py > cut {
                continue;
            }
            let taper = (1.0 - ((py - a.top) / (cut - a.top)).powi(2)).max(0.0).sqrt();
            let dd = depth * taper;
            let d = (px - a.cx).abs();
            let from_lateral = a.lateral(side, py) - d;
            let from_apex = py - a.apex(d);
            let inner = from_lateral.min(from_apex);
            if inner < dd {
                m.data[i] = true;
                no_vessels.data[i] = true;
                finding.d[i] -= 0.07 * c;
            } else if inner < dd + 1.6 && dd > 2.0 {
                // The visceral pleural line lies on the mask's inner border (marked as part of it).
                m.data[i] = true;
                finding.d[i] += 0.16 * c;
            }
        }
    }

    /// Pleural Effusion: basal fluid with a meniscus.
    pub(crate) fn pleural_effusion(&self, rng: &mut Rng, mask: &mut Mask, finding: &mut Canvas) {
        let (lh, c, sz) = (self.lh, self.c, self.sz);
        let a = &self.a;
        let side = Side::random(rng);
        let height = lh * rng.rangef(0.08, 0.22) * sz;
        let m = mask;
        for (i, px, py) in self.lung_pixels(side) {
            let d = (px - a.cx).abs();
            let (m0, l0) = (a.medial(side, py), a.lateral(side, py));
            let s = ((d - m0) / (l0 - m0).max(1.0)).clamp(0.0, 1.0);
            // Meniscus: the fluid climbs laterally.
            let level = a.diaphragm(side, d) - height * (0.6 + 0.8 * s * s);
            if py > level {
                m.data[i] = true;
                finding.d[i] += 0.32 * c * smoothstep(level, level + 0.03 * lh, py).max(0.3);
            }
        }
    }

    /// Pleural Other: pleural thickening along the lateral chest wall (no mask).
    pub(crate) fn pleural_other(&self, rng: &mut Rng, finding: &mut Canvas) {
        let (wf, lh, c, sz) = (self.wf, self.lh, self.c, self.sz);
        let a = &self.a;
        let side = Side::random(rng);
        let y0 = a.top + lh * rng.rangef(0.25, 0.5);
        let y1 = y0 + lh * rng.rangef(0.15, 0.3) * sz;
        let th = wf * rng.rangef(0.012, 0.022) * sz;
        for (i, px, py) in self.lung_pixels(side) {
            if py < y0 || py > y1 {
                continue;
            }
            let lens = (1.0 - ((2.0 * py - y0 - y1) / (y1 - y0)).powi(2)).max(0.0).sqrt();
            if a.lateral(side, py) - (px - a.cx).abs() < th * lens {
                finding.d[i] += 0.2 * c;
            }
        }
    }

    /// Support Devices, drawn into their own (bright) layer; the mask is each stroke + 2 px.
    pub(crate) fn support_devices(&self, rng: &mut Rng, mask: &mut Mask, devices: &mut Canvas) {
        let (w, h, wf, lh) = (self.w, self.h, self.wf, self.lh);
        let a = &self.a;
        let m = mask;
        let heart_top = a.heart_cy - a.heart_hh;
        let kinds = rng.int(1, 4);
        let mut chosen = [0usize, 1, 2, 3, 4];
        rng.shuffle(&mut chosen);
        for &kind in &chosen[..kinds as usize] {
            match kind {
                0 => {
                    // Endotracheal tube: two walls and a radiopaque stripe, tip above the carina.
                    let tip = a.carina - lh * rng.rangef(0.04, 0.09);
                    let x = a.cx + rng.rangef(-1.5, 1.5);
                    let half = a.trachea * 0.55;
                    devices.stroke(&[(x - half, 0.0), (x - half, tip)], 0.8, 0.35, Some((&mut *m, 2.0)));
                    devices.stroke(&[(x + half, 0.0), (x + half, tip)], 0.8, 0.35, Some((&mut *m, 2.0)));
                    devices.stroke(&[(x, 0.0), (x, tip)], 0.9, 0.6, Some((&mut *m, 2.0)));
                }
                1 => {
                    // Central venous catheter from the subclavian region to the SVC.
                    let s = Side::random(rng).sign();
                    let p0 = (a.cx + s * a.hw * rng.rangef(0.5, 0.8), a.top - lh * 0.02);
                    let p1 = (a.cx + s * a.med * 0.9, a.top + lh * 0.05);
                    let p2 = (a.cx - a.med * 0.5, heart_top + lh * rng.rangef(-0.02, 0.05));
                    devices.stroke(&bezier(p0, p1, p2, 40), 1.0, 0.55, Some((&mut *m, 2.0)));
                }
                2 => {
                    // Pacemaker under the image-right clavicle, lead into the heart.
                    let (bx, by) = (a.cx + a.hw * rng.rangef(0.45, 0.7), a.top + lh * rng.rangef(0.0, 0.08));
                    let (bw, bh) = (wf * 0.045, wf * 0.03);
                    for y in ((by - bh) as usize)..((by + bh) as usize).min(h) {
                        for x in ((bx - bw) as usize)..((bx + bw) as usize).min(w) {
                            let (dx, dy) = ((x as f32 + 0.5 - bx) / bw, (y as f32 + 0.5 - by) / bh);
                            if dx.powi(4) + dy.powi(4) < 1.0 {
                                let i = y * w + x;
                                devices.d[i] = devices.d[i].max(0.7);
                                m.data[i] = true;
                            }
                        }
                    }
                    let tip = (a.cx + a.heart_right * 0.5, a.heart_cy + a.heart_hh * 0.3);
                    let ctrl = (a.cx - a.med * 0.3, heart_top);
                    devices.stroke(&bezier((bx - bw, by), ctrl, tip, 50), 1.0, 0.6, Some((&mut *m, 2.0)));
                }
                3 => {
                    // Nasogastric tube: down the midline into the stomach below the image-right diaphragm.
                    let end = (a.cx + a.hw * 0.45, a.base[1] + lh * 0.08);
                    let pts = [(a.cx + 2.0, 0.0), (a.cx + 3.0, a.heart_cy)];
                    let mut line = pts.to_vec();
                    line.extend(bezier((a.cx + 3.0, a.heart_cy), (a.cx + 5.0, a.base[1]), end, 30));
                    devices.stroke(&line, 0.9, 0.45, Some((&mut *m, 2.0)));
                }
                _ => {
                    // ECG electrodes with short wires.
                    for _ in 0..rng.int(2, 5) {
                        let p = (a.cx + rng.rangef(-1.0, 1.0) * a.hw * 1.05, a.top + lh * rng.rangef(0.0, 0.9));
                        let r = wf * 0.012;
                        devices.stroke(&[p, (p.0 + 0.1, p.1)], r, 0.5, Some((&mut *m, 2.0)));
                        let heading = rng.rangef(0.0, std::f32::consts::TAU);
                        let wire = walk(rng, p, heading, wf * 0.02, 5, 0.5);
                        devices.stroke(&wire, 0.6, 0.4, Some((&mut *m, 2.0)));
                    }
                }
            }
        }
    }
}
