//! One image: the patient's anatomy, the findings with their exact masks (see
//! [`crate::findings`]), the anatomy's density, then exposure and noise.

use crate::anatomy::{Anatomy, Side};
use crate::canvas::{Canvas, ValueNoise, smoothstep, walk};
use crate::finding::{Finding, Labels};
use crate::{AIRSPACE_CHILDREN, LOCALIZATION_TASKS, Sample, Split, SynthConfig};
use medpatch_eval::rle::Mask;
use medpatch_models::Rng;
use std::collections::BTreeMap;

/// Render one image. Deterministic in `(config.seed, split, index)`.
pub fn render(config: &SynthConfig, split: Split, index: u64) -> Sample {
    let mut rng = Rng::derive(config.seed, &[split.id(), index]);
    let var = config.variability;
    let w = ((config.width as f32) * (1.0 + rng.rangef(-0.08, 0.08) * var)).round().max(64.0) as usize;
    let h = ((w as f32) * (1.0 + rng.rangef(0.0, 0.25) * var.min(1.0))).round() as usize;
    let mut anatomy = Anatomy::random(&mut rng, w, h, var);
    let mut labels = draw_labels(&mut rng, config.prevalence);
    enlarge(&mut anatomy, &labels, &mut rng, config, w);
    let scene = Scene::new(anatomy, w, h, config, &mut rng);

    let mut masks = Masks::new(h, w);
    let mut finding = Canvas::new(w, h); // density added by findings
    let mut no_vessels = Mask::new(h, w); // where lung markings are absent (pneumothorax)
    let mut devices = Canvas::new(w, h); // support devices, bright, in their own layer
    if labels[Finding::LungLesion] {
        scene.lung_lesion(&mut rng, masks.of(Finding::LungLesion), &mut finding);
    }
    // "Airspace Opacity": the Lung Opacity patch and the regions of its CheXpert children.
    let mut airspace = Mask::new(h, w);
    let airspace_findings: [(Finding, DrawRegion); 5] = [
        (Finding::LungOpacity, Scene::lung_opacity),
        (Finding::Consolidation, Scene::consolidation),
        (Finding::Pneumonia, Scene::pneumonia),
        (Finding::Edema, Scene::edema),
        (Finding::Atelectasis, Scene::atelectasis),
    ];
    for (f, draw) in airspace_findings {
        if labels[f] {
            let region = draw(&scene, &mut rng, &mut finding);
            if f != Finding::LungOpacity && f.task().is_some() {
                masks.of(f).or(&region); // Pneumonia has no task of its own
            }
            airspace.or(&region);
        }
    }
    masks.of(Finding::LungOpacity).or(&airspace);
    if labels[Finding::Pneumothorax] {
        scene.pneumothorax(&mut rng, masks.of(Finding::Pneumothorax), &mut no_vessels, &mut finding);
    }
    if labels[Finding::PleuralEffusion] {
        scene.pleural_effusion(&mut rng, masks.of(Finding::PleuralEffusion), &mut finding);
    }
    if labels[Finding::PleuralOther] {
        scene.pleural_other(&mut rng, &mut finding);
    }
    if labels[Finding::SupportDevices] {
        scene.support_devices(&mut rng, masks.of(Finding::SupportDevices), &mut devices);
    }
    scene.enlarged_structure_masks(&labels, &mut masks);

    let density = scene.density(&mut rng, &finding, &devices, &no_vessels);
    let pixels = expose(&mut rng, config, &density, w, h);
    apply_hierarchy(&mut labels);
    Sample {
        width: w,
        height: h,
        pixels,
        labels,
        masks: masks.0,
        sex: if scene.a.female { "Female" } else { "Male" },
        age: rng.int(18, 90) as u32,
    }
}

/// Draws a finding's region (into the findings' density) and returns it.
type DrawRegion = fn(&Scene, &mut Rng, &mut Canvas) -> Mask;

/// Which findings an image has: each of the 13 drawn ones independently (support devices twice as
/// often). No Finding is derived afterwards ([`apply_hierarchy`]).
fn draw_labels(rng: &mut Rng, prevalence: f64) -> Labels {
    let mut labels = [false; 14];
    for &f in Finding::drawn() {
        let p = if f == Finding::SupportDevices { prevalence * 2.0 } else { prevalence };
        labels[f] = rng.bool(p.min(1.0));
    }
    labels
}

/// Findings that change the anatomy itself (their masks are the enlarged structures), and the
/// broken rib.
fn enlarge(a: &mut Anatomy, labels: &Labels, rng: &mut Rng, config: &SynthConfig, w: usize) {
    let (c, sz, wf) = (config.contrast, config.size, w as f32);
    if labels[Finding::Cardiomegaly] {
        let f = rng.rangef(1.25, 1.5) * (1.0 + 0.2 * (sz - 1.0));
        a.heart_right *= f;
        a.heart_left *= f;
        a.heart_hh *= 1.0 + (f - 1.0) * 0.4;
    }
    if labels[Finding::EnlargedCardiomediastinum] {
        a.med *= rng.rangef(1.45, 1.8) * (1.0 + 0.2 * (sz - 1.0));
        a.knob *= rng.rangef(1.3, 1.8);
    }
    if labels[Finding::Fracture] {
        let side = Side::random(rng);
        a.fracture = Some((
            side,
            rng.int(2, 8) as usize,
            a.hw * rng.rangef(0.55, 0.9),
            wf * rng.rangef(0.008, 0.016) * c.max(0.5),
        ));
    }
}

/// CheXpert's hierarchy, upwards: Lung Opacity is the parent of the airspace findings, so a
/// positive Edema, Consolidation, Pneumonia or Atelectasis makes Lung Opacity positive. The
/// "Airspace Opacity" mask is the union of exactly these regions (plus the Lung Opacity patch
/// itself), so the column and its mask agree. Lung Lesion (CheXpert also files it under Lung
/// Opacity) is left out: nodules are not airspace disease, CheXlocalize localises them as their
/// own task, and the Airspace Opacity mask does not contain them. Applied after drawing, so the
/// images and masks are those of the independent draws. Then No Finding: none of the 12
/// pathologies (support devices do not count).
fn apply_hierarchy(labels: &mut Labels) {
    if AIRSPACE_CHILDREN.iter().any(|&f| labels[f]) {
        labels[Finding::LungOpacity] = true;
    }
    labels[Finding::NoFinding] = !Finding::drawn().iter().any(|&f| f.is_pathology() && labels[f]);
}

/// Exposure (gain, gamma, offset, a low-frequency gradient), a film-like response and noise.
fn expose(rng: &mut Rng, config: &SynthConfig, density: &Canvas, w: usize, h: usize) -> Vec<u8> {
    let var = config.variability;
    let wf = w as f32;
    let gain = 1.0 + rng.rangef(-0.12, 0.12) * var;
    let gamma = 1.0 + rng.rangef(-0.15, 0.15) * var;
    let offset = 0.04 + rng.rangef(-0.03, 0.03) * var;
    let gradient = ValueNoise::new(&mut *rng, w, h, wf * 0.5);
    let grain = ValueNoise::new(&mut *rng, w, h, 2.5);
    let mut pixels = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let lowfreq = 0.04 * var * gradient.at(x as f32, y as f32);
            // Film-like response: saturates softly instead of clipping dense regions to white.
            let e = (density.d[i] * gain).max(0.0);
            let v = ((1.0 - (-2.4 * e).exp()) / (1.0 - (-2.4f32 * 0.8).exp())).powf(gamma) * 0.92 + offset + lowfreq;
            let noise = config.noise * (rng.normal() as f32 * 0.8 + 0.6 * grain.at(x as f32, y as f32));
            pixels[i] = ((v + noise).clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    pixels
}

/// The ground-truth masks, one per CheXlocalize task, empty unless drawn.
pub(crate) struct Masks(BTreeMap<&'static str, Mask>);

impl Masks {
    fn new(h: usize, w: usize) -> Self {
        Masks(LOCALIZATION_TASKS.iter().map(|t| (*t, Mask::new(h, w))).collect())
    }

    /// The mask of `finding`'s task. Only findings with a task are drawn into a mask.
    pub(crate) fn of(&mut self, finding: Finding) -> &mut Mask {
        let task = finding.task().expect("only findings with a CheXlocalize task have a mask");
        self.0.get_mut(task).expect("every task has a mask")
    }
}

/// The patient as the findings see it: the anatomy, its lung membership, the texture for hazy
/// opacities, and the difficulty knobs.
pub(crate) struct Scene {
    pub(crate) a: Anatomy,
    /// Which lung each pixel is in, if any.
    pub(crate) lung: Vec<Option<Side>>,
    pub(crate) texture: ValueNoise,
    pub(crate) w: usize,
    pub(crate) h: usize,
    pub(crate) wf: f32,
    /// Lung height.
    pub(crate) lh: f32,
    /// Contrast and size knobs ([`SynthConfig::contrast`], [`SynthConfig::size`]).
    pub(crate) c: f32,
    pub(crate) sz: f32,
}

impl Scene {
    fn new(a: Anatomy, w: usize, h: usize, config: &SynthConfig, rng: &mut Rng) -> Self {
        let mut lung: Vec<Option<Side>> = vec![None; w * h];
        for y in 0..h {
            for x in 0..w {
                lung[y * w + x] = a.lung_at(x as f32 + 0.5, y as f32 + 0.5);
            }
        }
        let texture = ValueNoise::new(rng, w, h, w as f32 * 0.02);
        let (wf, lh) = (w as f32, a.lung_h());
        Scene { a, lung, texture, w, h, wf, lh, c: config.contrast, sz: config.size }
    }

    /// A random point inside the lung (`side`, or either), between `zone` fractions of its height.
    pub(crate) fn random_lung_point(&self, rng: &mut Rng, side: Option<Side>, zone: (f32, f32)) -> (f32, f32) {
        let (w, h, wf, lh) = (self.w, self.h, self.wf, self.lh);
        let (a, lung) = (&self.a, &self.lung);
        for _ in 0..2000 {
            let x = rng.rangef(0.0, wf);
            let y = a.top + lh * rng.rangef(zone.0, zone.1);
            let (xi, yi) = (x as usize, (y.max(0.0) as usize).min(h - 1));
            if let Some(s) = lung[yi * w + xi.min(w - 1)]
                && side.is_none_or(|want| want == s)
            {
                return (x, y);
            }
        }
        (a.cx + a.hw * 0.6, a.top + lh * 0.5)
    }

    /// A blob region: a union of Gaussians, thresholded, inside the lung; its mask and its
    /// smooth field.
    pub(crate) fn blob(&self, rng: &mut Rng, center: (f32, f32), radius: f32, lobes: usize) -> (Mask, Vec<f32>) {
        let (w, h) = (self.w, self.h);
        let lung = &self.lung;
        let centers: Vec<(f32, f32, f32)> = (0..lobes)
            .map(|_| {
                (
                    center.0 + rng.rangef(-radius, radius) * 0.7,
                    center.1 + rng.rangef(-radius, radius) * 0.7,
                    radius * rng.rangef(0.45, 0.8),
                )
            })
            .collect();
        let mut m = Mask::new(h, w);
        let mut field = vec![0f32; w * h];
        let r = radius * 2.2;
        let (x0, x1) = ((center.0 - r).max(0.0) as usize, ((center.0 + r) as usize).min(w - 1));
        let (y0, y1) = ((center.1 - r).max(0.0) as usize, ((center.1 + r) as usize).min(h - 1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let f: f32 = centers
                    .iter()
                    .map(|&(cx, cy, s)| (-((px - cx).powi(2) + (py - cy).powi(2)) / (2.0 * s * s)).exp())
                    .sum();
                let i = y * w + x;
                if f > 0.5 && lung[i].is_some() {
                    m.data[i] = true;
                    field[i] = smoothstep(0.5, 1.0, f);
                }
            }
        }
        (m, field)
    }

    /// Every pixel of the `side` lung, in row-major order: (index, pixel-centre x, y).
    pub(crate) fn lung_pixels(&self, side: Side) -> impl Iterator<Item = (usize, f32, f32)> + '_ {
        let w = self.w;
        self.lung
            .iter()
            .enumerate()
            .filter(move |(_, lung)| **lung == Some(side))
            .map(move |(i, _)| (i, (i % w) as f32 + 0.5, (i / w) as f32 + 0.5))
    }

    /// Enlarged structures: their masks are the structures themselves.
    fn enlarged_structure_masks(&self, labels: &Labels, masks: &mut Masks) {
        let (w, h, a) = (self.w, self.h, &self.a);
        if labels[Finding::Cardiomegaly] || labels[Finding::EnlargedCardiomediastinum] {
            for y in 0..h {
                for x in 0..w {
                    let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                    let i = y * w + x;
                    if labels[Finding::Cardiomegaly] && a.in_heart(px, py) {
                        masks.of(Finding::Cardiomegaly).data[i] = true;
                    }
                    if labels[Finding::EnlargedCardiomediastinum] && a.in_mediastinum(px, py) {
                        masks.of(Finding::EnlargedCardiomediastinum).data[i] = true;
                    }
                }
            }
        }
    }

    /// The anatomy's density (vessels, ribs and clavicles, the fracture, torso, spine, heart,
    /// mediastinum, trachea, lungs, breasts, gastric bubble) plus the findings' and devices'
    /// layers, blurred.
    fn density(&self, rng: &mut Rng, finding: &Canvas, devices: &Canvas, no_vessels: &Mask) -> Canvas {
        let (w, h, wf, lh, c) = (self.w, self.h, self.wf, self.lh, self.c);
        let (a, lung) = (&self.a, &self.lung);
        let mut vessels = Canvas::new(w, h);
        let hilum_y = a.top + 0.45 * lh;
        for side in [Side::ImageLeft, Side::ImageRight] {
            let start = (a.cx + side.sign() * (a.medial(side, hilum_y) + 0.01 * wf), hilum_y);
            for _ in 0..rng.int(7, 11) {
                let angle = if side == Side::ImageRight { 0.0 } else { std::f32::consts::PI }
                    + rng.rangef(-1.3, 1.3) * side.sign();
                let steps = rng.int(10, 18) as usize;
                let trunk = walk(rng, start, angle, wf * 0.012, steps, 0.25);
                for (k, seg) in trunk.windows(2).enumerate() {
                    let r = (1.8 - 0.1 * k as f32).max(0.5) * wf / 512.0;
                    vessels.stroke(seg, r, (1.0 - 0.05 * k as f32).max(0.3), None);
                }
                // A side branch.
                let from = trunk[trunk.len() / 2];
                let heading = angle + rng.rangef(-0.8, 0.8);
                let branch = walk(rng, from, heading, wf * 0.01, 8, 0.3);
                vessels.stroke(&branch, 0.7 * wf / 512.0, 0.5, None);
            }
        }
        let mut ribs = Canvas::new(w, h);
        let rib_th = lh * 0.026;
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let side = if px < a.cx { Side::ImageLeft } else { Side::ImageRight };
                let d = (px - a.cx).abs();
                let mut v = 0f32;
                for i in 0..10 {
                    if let Some(ry) = a.posterior_rib(side, i, d) {
                        let t = (py - ry).abs() / (rib_th / 2.0);
                        if t < 1.0 {
                            // Brighter cortex at the edges.
                            v = v.max(0.05 + 0.035 * smoothstep(0.6, 0.95, t));
                        }
                    }
                    if i < 6
                        && let Some(ry) = a.anterior_rib(side, i, d)
                    {
                        let t = (py - ry).abs() / (rib_th * 0.45);
                        if t < 1.0 {
                            v += 0.022;
                        }
                    }
                }
                // Clavicles: from near the midline outward and up.
                let s = d / (a.hw * 1.1);
                if (0.08..1.0).contains(&s) {
                    // An S-shaped clavicle rising laterally.
                    let cy =
                        a.top + lh * (0.04 - 0.05 * s - 0.10 * s * s + 0.06 * (std::f32::consts::PI * s).sin() * 0.3);
                    let half = lh * (0.016 - 0.004 * s);
                    if (py - cy).abs() < half {
                        v = v.max(0.09 + 0.03 * smoothstep(0.5, 0.95, (py - cy).abs() / half));
                    }
                }
                ribs.d[y * w + x] = v;
            }
        }
        if let Some((side, i, fd, _)) = a.fracture {
            // The break: a dark gap across the rib, and callus around it.
            if let Some(ry) = a.posterior_rib(side, i, fd - 1.0) {
                let fx = a.cx + side.sign() * fd;
                for y in 0..h {
                    for x in 0..w {
                        let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                        let dist = ((px - fx).powi(2) + (py - ry).powi(2)).sqrt();
                        if (px - fx).abs() < 1.2 && (py - ry).abs() < rib_th * 0.7 {
                            ribs.d[y * w + x] = 0.0;
                        } else if dist < rib_th * 1.2 {
                            ribs.d[y * w + x] += 0.05 * c * (1.0 - dist / (rib_th * 1.2));
                        }
                    }
                }
            }
        }

        let mut density = Canvas::new(w, h);
        let gastric = (a.cx + a.hw * 0.45, a.base[1] + lh * 0.06);
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let i = y * w + x;
                let d = (px - a.cx).abs();
                // Torso: wide below the shoulders, neck above.
                let shoulder = a.top - 0.05 * lh;
                let half = if py > shoulder {
                    a.hw * (1.2 - 0.05 * smoothstep(shoulder, shoulder + 0.5 * lh, py)
                        + 0.04 * smoothstep(shoulder + 0.6 * lh, shoulder + 1.2 * lh, py))
                } else {
                    a.hw * (0.35 + 0.85 * smoothstep(shoulder - 0.15 * lh, shoulder, py))
                };
                let mut v = 0.45 * smoothstep(half + 4.0, half - 4.0, d);
                // Spine and mediastinal soft tissue.
                if d < a.spine {
                    let period = lh * 0.075;
                    let phase = ((py - a.top) / period).rem_euclid(1.0);
                    v += 0.05 + 0.03 * smoothstep(0.85, 0.95, phase);
                }
                if a.in_heart(px, py) {
                    v += 0.12;
                } else if py > a.top - 0.1 * lh
                    && py < a.heart_cy
                    && d < a.med_ext(if px < a.cx { Side::ImageLeft } else { Side::ImageRight }, py)
                {
                    v += 0.09; // mediastinal soft tissue and great vessels
                }
                if py < a.carina && d < a.trachea {
                    v -= 0.10;
                }
                if let Some(side) = lung[i] {
                    let t = (py - a.top) / lh;
                    v -= 0.32 - 0.06 * t;
                    if a.female && t > 0.55 && d > a.hw * 0.45 {
                        v += 0.05 * smoothstep(0.55, 0.7, t);
                    }
                    if !no_vessels.data[i] {
                        v += 0.07 * vessels.d[i];
                    }
                    let _ = side;
                }
                let g = ((px - gastric.0) / (a.hw * 0.18)).powi(2) + ((py - gastric.1) / (lh * 0.05)).powi(2);
                if g < 1.0 && lung[i].is_none() {
                    v -= 0.12 * (1.0 - g);
                }
                v += ribs.d[i] * smoothstep(half + 4.0, half - 4.0, d);
                v += finding.d[i] + devices.d[i];
                density.d[i] = v;
            }
        }
        density.blur(0.7 * wf / 512.0);
        density
    }
}
