//! A synthetic chest X-ray benchmark, deterministic from a seed, because CheXpert and CheXlocalize
//! cannot be had here. No libtorch: plain Rust, reusable by any crate.
//!
//! Each image is a PA-like chest radiograph rendered from a density map: soft tissue, two lungs
//! (air), heart, mediastinum with trachea and aortic knob, spine, posterior and anterior ribs,
//! clavicles, lung vessels branching from the hila, gastric bubble, breast shadows; then blur,
//! exposure (gain, gamma, offset, a low-frequency gradient) and noise. Patient size, position and
//! image size vary.
//!
//! Findings are drawn with **exact masks** (the geometric region the finding changes; nothing is
//! changed outside its mask except for the sub-pixel blur of edges), so every finding needs local
//! evidence:
//!
//! | column | how it looks | mask (CheXlocalize task) |
//! |---|---|---|
//! | Enlarged Cardiomediastinum | upper mediastinum widened (and a bigger aortic knob) | mediastinum above the heart |
//! | Cardiomegaly | heart 1.25–1.5× wider (cardiothoracic ratio > 0.55) | heart silhouette |
//! | Lung Lesion | 1–3 round nodules/masses | the nodules |
//! | Lung Opacity | patchy hazy opacity; **labelled positive too** whenever edema, consolidation, pneumonia or atelectasis is (CheXpert's hierarchy, upwards) | "Airspace Opacity": union of those regions |
//! | Edema | bilateral perihilar haze and Kerley B lines | haze and Kerley-line bands |
//! | Consolidation | dense homogeneous region with air bronchograms | the region |
//! | Pneumonia | mottled cluster of small opacities in a lower zone | (no task; part of Airspace Opacity) |
//! | Atelectasis | plate-like basal band(s) | the bands |
//! | Pneumothorax | apicolateral crescent without vessels, hyperlucent, visceral pleural line | the crescent |
//! | Pleural Effusion | basal fluid with a meniscus, costophrenic angle blunted | the fluid |
//! | Pleural Other | pleural thickening along the lateral chest wall | (no task) |
//! | Fracture | a rib broken and displaced, with callus | (no task) |
//! | Support Devices | endotracheal tube, central line, pacemaker with lead, NG tube, ECG electrodes | the devices (dilated 2 px) |
//! | No Finding | 1 when none of the 12 pathologies is present (Support Devices do not count, as in CheXpert's labeler) | — |
//!
//! Labels and masks agree: for each CheXlocalize task, the label is positive exactly when the
//! ground-truth mask is non-empty (Airspace Opacity ↔ the Lung Opacity column).
//!
//! Difficulty knobs ([`SynthConfig`]): finding contrast, finding size, noise, anatomical
//! variability, prevalence, label noise. Written in the real formats (see [`write_benchmark`]).

use medpatch_eval::rle::Mask;

pub use medpatch_eval::labels::{LOCALIZATION_TASKS, chexlocalize_id};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The findings whose regions make up the "Airspace Opacity" mask besides the Lung Opacity patch;
/// each implies a positive Lung Opacity label (CheXpert's hierarchy, see [`render`]).
pub const AIRSPACE_CHILDREN: [Finding; 4] =
    [Finding::Edema, Finding::Consolidation, Finding::Pneumonia, Finding::Atelectasis];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    pub seed: u64,
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    /// Nominal image width in pixels; heights are 1.0–1.25× the width, widths vary ±8 %.
    pub width: u32,
    /// Probability of each of the 13 findings (independently) per image.
    pub prevalence: f64,
    /// Multiplies every finding's density change (1 = the default look; lower is harder).
    pub contrast: f32,
    /// Multiplies finding sizes (lower is harder).
    pub size: f32,
    /// Standard deviation of the pixel noise, in units of the [0, 1] intensity.
    pub noise: f32,
    /// Scales the random variation of anatomy, position and exposure (0 = identical patients).
    pub variability: f32,
    /// Probability that a written label is flipped (the masks stay exact).
    pub label_noise: f64,
    /// JPEG quality of the written images.
    pub jpeg_quality: u8,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            train: 2000,
            valid: 200,
            test: 300,
            width: 512,
            prevalence: 0.12,
            contrast: 1.0,
            size: 1.0,
            noise: 0.02,
            variability: 1.0,
            label_noise: 0.0,
            jpeg_quality: 95,
        }
    }
}

impl SynthConfig {
    /// One knob for all: 0 = easy (strong, large findings, little noise), 0.5 = the default,
    /// 1 = hard (faint, small findings, noisy images, more anatomical variation).
    pub fn with_difficulty(mut self, difficulty: f32) -> Self {
        let d = difficulty.clamp(0.0, 1.0);
        self.contrast = 1.6 - 1.2 * d;
        self.size = 1.25 - 0.5 * d;
        self.noise = 0.01 + 0.02 * d;
        self.variability = 0.6 + 0.8 * d;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Valid,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
    pub(crate) fn id(self) -> u64 {
        self as u64 + 1
    }
}

/// One rendered image with its labels and masks.
#[derive(Debug, Clone)]
pub struct Sample {
    pub width: usize,
    pub height: usize,
    /// 8-bit grayscale, row-major.
    pub pixels: Vec<u8>,
    /// The 14 CheXpert labels, in [`medpatch_models::CHEXPERT_CLASSES`] order, indexed by [`Finding`]
    /// too (before any label noise).
    pub labels: [bool; 14],
    /// Masks of the ten CheXlocalize tasks (empty when the finding is absent).
    pub masks: BTreeMap<&'static str, Mask>,
    pub sex: &'static str,
    pub age: u32,
}

mod anatomy;
mod canvas;
mod finding;
mod findings;
mod render;
mod write;

pub use finding::{Finding, Labels};
pub use render::render;
pub use write::{BenchmarkLayout, IMAGE_DIR, write_benchmark, write_jpeg};

#[cfg(test)]
mod tests {
    use super::*;
    use medpatch_eval::rle;
    use medpatch_models::CHEXPERT_CLASSES;

    fn small() -> SynthConfig {
        SynthConfig { width: 160, prevalence: 0.5, ..Default::default() }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let c = small();
        let a = render(&c, Split::Valid, 3);
        let b = render(&c, Split::Valid, 3);
        assert_eq!(a.pixels, b.pixels);
        assert_eq!(a.labels, b.labels);
        let other = render(&SynthConfig { seed: 1, ..c.clone() }, Split::Valid, 3);
        assert_ne!(a.pixels, other.pixels);
        assert_ne!(render(&c, Split::Test, 3).pixels, a.pixels);
    }

    #[test]
    fn masks_follow_labels() {
        let c = small();
        for i in 0..40 {
            let s = render(&c, Split::Test, i);
            for f in Finding::ALL {
                let Some(task) = f.task() else { continue };
                let positive = s.labels[f];
                let mask = &s.masks[task];
                assert_eq!((mask.height, mask.width), (s.height, s.width));
                assert_eq!(!mask.is_empty(), positive, "image {i} {task}: label {positive}, mask {} px", mask.count());
            }
            // The hierarchy: every airspace finding makes Lung Opacity positive.
            if AIRSPACE_CHILDREN.iter().any(|&f| s.labels[f]) {
                assert!(s.labels[Finding::LungOpacity], "image {i}");
            }
            let pathology = (1..14).any(|k| CHEXPERT_CLASSES[k] != "Support Devices" && s.labels[k]);
            assert_eq!(s.labels[Finding::NoFinding], !pathology);
        }
    }

    /// What a user gets on disk: for every image of the written valid and test splits and every
    /// CheXlocalize task, the CSV label (Airspace Opacity → the Lung Opacity column) is positive
    /// exactly when the ground-truth mask in `gt_segmentations_*.json` is non-empty, at the
    /// default difficulty and prevalence.
    #[test]
    fn written_labels_agree_with_written_masks() {
        let root = std::env::temp_dir().join(format!("medpatch-synth-agree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let config = SynthConfig { width: 128, train: 0, valid: 60, test: 60, ..Default::default() };
        let layout = write_benchmark(&config, &root, 2, &|_, _| {}).unwrap();
        let mut positives: BTreeMap<&str, usize> = BTreeMap::new();
        for (csv, gt) in [(&layout.valid_csv, &layout.gt_val), (&layout.test_csv, &layout.gt_test)] {
            let records = medpatch_eval::labels::read_csv(csv).unwrap();
            let gt: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(gt).unwrap()).unwrap();
            assert_eq!(records.len(), 60);
            for r in &records {
                let masks = &gt[chexlocalize_id(&r.path)];
                for task in LOCALIZATION_TASKS {
                    let column = medpatch_eval::labels::task_class(task);
                    let label = r.labels[CHEXPERT_CLASSES.iter().position(|c| *c == column).unwrap()] == 1.0;
                    let mask = rle::decode_json(&masks[task]).unwrap();
                    assert_eq!(label, !mask.is_empty(), "{} {task}: label {label}, mask {} px", r.path, mask.count());
                    *positives.entry(task).or_default() += label as usize;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        // Not vacuous: every task has positive images (and Lung Opacity now also from its children).
        for task in LOCALIZATION_TASKS {
            assert!(positives.get(task).copied().unwrap_or(0) > 0, "no positive {task} in 120 images: {positives:?}");
        }
    }

    /// Local evidence: outside a finding's mask (and a 3-pixel margin for the blur) the image is
    /// the same as without the finding. Checked by rendering with the finding's contrast at zero.
    #[test]
    fn findings_change_only_their_mask() {
        let c = SynthConfig { noise: 0.0, ..small() };
        let faint = SynthConfig { contrast: 0.0, ..c.clone() };
        for i in 0..12 {
            let s = render(&c, Split::Valid, i);
            let z = render(&faint, Split::Valid, i);
            let mut allowed = Mask::new(s.height, s.width);
            for (task, m) in &s.masks {
                if *task != "Cardiomegaly" && *task != "Enlarged Cardiomediastinum" {
                    allowed.or(m);
                }
            }
            let non_local = s.labels[Finding::PleuralOther] || s.labels[Finding::Fracture];
            if non_local {
                continue; // no CheXlocalize mask exists for these two
            }
            let mut changed_outside = 0;
            for y in 0..s.height {
                for x in 0..s.width {
                    if s.pixels[y * s.width + x].abs_diff(z.pixels[y * s.width + x]) > 2 {
                        let near = (y.saturating_sub(3)..(y + 4).min(s.height))
                            .any(|yy| (x.saturating_sub(3)..(x + 4).min(s.width)).any(|xx| allowed.get(xx, yy)));
                        if !near {
                            changed_outside += 1;
                        }
                    }
                }
            }
            assert_eq!(changed_outside, 0, "image {i}: {changed_outside} pixels changed outside the masks");
        }
    }
}
