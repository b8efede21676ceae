//! The patient: a random PA chest (thorax, lungs, heart, mediastinum, ribs) as geometry that
//! rendering and the findings query.

use medpatch_models::Rng;

/// Side of the image: `-1` = image left (the patient's right in a PA view), `+1` = image right.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Side {
    ImageLeft,
    ImageRight,
}

impl Side {
    pub(crate) fn sign(self) -> f32 {
        match self {
            Side::ImageLeft => -1.0,
            Side::ImageRight => 1.0,
        }
    }
    pub(crate) fn random(rng: &mut Rng) -> Self {
        if rng.bool(0.5) { Side::ImageLeft } else { Side::ImageRight }
    }
}

pub(crate) struct Anatomy {
    pub(crate) cx: f32,
    /// Lung apex level and costophrenic angle levels (image-left, image-right).
    pub(crate) top: f32,
    pub(crate) base: [f32; 2],
    /// Thorax half-width at its widest (lateral lung border).
    pub(crate) hw: f32,
    pub(crate) dome: f32,
    /// Upper mediastinum half-width and aortic knob bulge (image right).
    pub(crate) med: f32,
    pub(crate) knob: f32,
    /// Heart: centre level, half height, extents to the image right and left of the midline.
    pub(crate) heart_cy: f32,
    pub(crate) heart_hh: f32,
    pub(crate) heart_right: f32,
    pub(crate) heart_left: f32,
    pub(crate) spine: f32,
    pub(crate) trachea: f32,
    pub(crate) carina: f32,
    pub(crate) female: bool,
    /// A broken rib (side, rib index, lateral distance of the break, displacement).
    pub(crate) fracture: Option<(Side, usize, f32, f32)>,
}

impl Anatomy {
    pub(crate) fn random(rng: &mut Rng, w: usize, h: usize, var: f32) -> Self {
        let wf = w as f32;
        let hf = h as f32;
        let j = |rng: &mut Rng, amount: f32| rng.rangef(-amount, amount) * var;
        let scale = 1.0 + j(rng, 0.08);
        let cx = wf * (0.5 + j(rng, 0.025));
        let hw = wf * 0.36 * scale;
        let top = hf * 0.5 - 0.40 * wf * scale + j(rng, 0.03) * hf;
        let base_mid = top + 0.78 * wf * scale * (1.0 + j(rng, 0.05));
        let base = [base_mid - wf * 0.01 + j(rng, 0.01) * wf, base_mid + wf * 0.012 + j(rng, 0.01) * wf];
        let lung_h = base_mid - top;
        let ctr = 0.44 + j(rng, 0.04);
        let total = 2.0 * hw * ctr;
        Self {
            cx,
            top,
            base,
            hw,
            dome: lung_h * (0.10 + j(rng, 0.02)),
            med: wf * (0.062 + j(rng, 0.006)) * scale,
            knob: wf * (0.018 + j(rng, 0.005)) * scale,
            heart_cy: top + lung_h * (0.74 + j(rng, 0.03)),
            heart_hh: lung_h * (0.21 + j(rng, 0.02)),
            heart_right: total * 0.66,
            heart_left: total * 0.34,
            spine: wf * 0.042 * scale,
            trachea: wf * 0.018 * scale,
            carina: top + lung_h * (0.28 + j(rng, 0.02)),
            female: rng.bool(0.5),
            fracture: None,
        }
    }

    pub(crate) fn lung_h(&self) -> f32 {
        (self.base[0] + self.base[1]) / 2.0 - self.top
    }

    pub(crate) fn base_of(&self, side: Side) -> f32 {
        match side {
            Side::ImageLeft => self.base[0],
            Side::ImageRight => self.base[1],
        }
    }

    /// Heart extent from the midline toward `side` at level y (0 outside the heart's levels).
    pub(crate) fn heart_ext(&self, side: Side, y: f32) -> f32 {
        let e = if side == Side::ImageRight { self.heart_right } else { self.heart_left };
        let top = self.heart_cy - self.heart_hh;
        if y < top {
            0.0
        } else if y < self.heart_cy {
            e * (1.0 - ((y - self.heart_cy) / self.heart_hh).powi(2)).max(0.0).sqrt()
        } else {
            e
        }
    }

    /// Upper mediastinum half-width toward `side` at level y (with the aortic knob on the right).
    pub(crate) fn med_ext(&self, side: Side, y: f32) -> f32 {
        let mut m = self.med;
        if side == Side::ImageRight {
            let ky = self.top + 0.22 * self.lung_h();
            let s = (y - ky) / (0.06 * self.lung_h());
            m += self.knob * (-s * s).exp();
        }
        m
    }

    /// Lateral lung border (distance from the midline) at level y.
    pub(crate) fn lateral(&self, side: Side, y: f32) -> f32 {
        let t = ((y - self.top) / (self.base_of(side) - self.top)).clamp(0.0, 1.0);
        let u = (t / 0.55).min(1.0);
        self.hw * (0.60 + 0.40 * (1.0 - (1.0 - u).powi(2)))
    }

    /// Medial lung border at level y.
    pub(crate) fn medial(&self, side: Side, y: f32) -> f32 {
        self.med_ext(side, y).max(self.heart_ext(side, y))
    }

    /// Diaphragm level at distance d from the midline (dome highest mid-hemithorax).
    pub(crate) fn diaphragm(&self, side: Side, d: f32) -> f32 {
        let m0 = self.med * 0.8;
        let s = ((d - m0) / (self.hw - m0)).clamp(0.0, 1.0);
        self.base_of(side) - self.dome * (std::f32::consts::PI * s).sin().powf(0.7) * (1.0 - 0.35 * s)
    }

    /// Apex level at distance d from the midline (rounded apex).
    pub(crate) fn apex(&self, d: f32) -> f32 {
        let c = self.hw * 0.55;
        let s = (d - c) / (self.hw * 0.45);
        self.top + self.lung_h() * 0.12 * s * s
    }

    /// Which lung (if any) the point is in.
    pub(crate) fn lung_at(&self, x: f32, y: f32) -> Option<Side> {
        let side = if x < self.cx { Side::ImageLeft } else { Side::ImageRight };
        let d = (x - self.cx).abs();
        (y > self.apex(d) && y < self.diaphragm(side, d) && d < self.lateral(side, y) && d > self.medial(side, y))
            .then_some(side)
    }

    pub(crate) fn in_heart(&self, x: f32, y: f32) -> bool {
        let side = if x < self.cx { Side::ImageLeft } else { Side::ImageRight };
        let bottom = (self.base[0] + self.base[1]) / 2.0 - self.dome * 0.6;
        y < bottom && (x - self.cx).abs() < self.heart_ext(side, y)
    }

    pub(crate) fn in_mediastinum(&self, x: f32, y: f32) -> bool {
        let side = if x < self.cx { Side::ImageLeft } else { Side::ImageRight };
        let heart_top = self.heart_cy - self.heart_hh;
        y > self.top - 0.05 * self.lung_h()
            && y < heart_top + 0.05 * self.lung_h()
            && (x - self.cx).abs() < self.med_ext(side, y)
    }

    /// Posterior rib i centre line at distance d from the midline (None outside the rib).
    pub(crate) fn posterior_rib(&self, side: Side, i: usize, d: f32) -> Option<f32> {
        let lh = self.lung_h();
        let y0 = self.top - 0.04 * lh + i as f32 * lh * 0.095;
        if d < self.spine * 0.9 || d > self.lateral(side, y0 + 0.1 * lh) * 1.04 {
            return None;
        }
        let s = d / self.hw;
        let mut y = y0 - 0.05 * lh * s + 0.20 * lh * s * s;
        if let Some((fs, fi, fd, dy)) = self.fracture
            && fs == side
            && fi == i
            && d > fd
        {
            y += dy;
        }
        Some(y)
    }

    /// Anterior rib i centre line (descending toward the midline).
    pub(crate) fn anterior_rib(&self, side: Side, i: usize, d: f32) -> Option<f32> {
        let lh = self.lung_h();
        let y_lat = self.top + 0.02 * lh + i as f32 * lh * 0.13;
        let lat = self.lateral(side, y_lat);
        if d < lat * 0.35 || d > lat * 1.02 {
            return None;
        }
        Some(y_lat + (lat - d) * 0.45)
    }
}
