//! What an exported MedicalPatchNet ONNX file promises about itself, stored in its
//! `metadata_props`, so that a runtime needs no side files to use it correctly.
//!
//! Every key is prefixed `medpatch.`; values are plain strings (JSON for structured ones).
//! Bump [`FORMAT_VERSION`] on any incompatible change; readers refuse versions they do not know.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The CheXpert findings in model output order (the CheXpert CSV column order).
pub const CHEXPERT_CLASSES: [&str; 14] = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
];

pub const FORMAT_VERSION: u32 = 1;
/// ONNX graph input: `[N, 1, P, P]` float32 patches.
pub const INPUT_NAME: &str = "patches";
/// ONNX graph output: `[N, C]` float32 patch logits.
pub const OUTPUT_NAME: &str = "logits";

pub mod keys {
    pub const FORMAT_VERSION: &str = "medpatch.format_version";
    pub const CLASSES: &str = "medpatch.classes";
    pub const PATCH_SIZE: &str = "medpatch.patch_size";
    pub const IMAGE_SIZE: &str = "medpatch.image_size";
    pub const GRID: &str = "medpatch.grid";
    pub const INPUT: &str = "medpatch.input";
    pub const ARCHITECTURE: &str = "medpatch.architecture";
    pub const SOURCE_SHA256: &str = "medpatch.source_sha256";
    pub const SOURCE: &str = "medpatch.source";
    /// Optional: the patch logit that saturates the overlay's colours (see [`super::ModelMetadata::overlay_logit_range`]).
    pub const OVERLAY_LOGIT_RANGE: &str = "medpatch.overlay_logit_range";
}

/// The paper's overlay colour range, in logits: its maps are stored as `(clip(z, ±200) + 200) / 400`
/// and drawn over 0.5 ± 0.2, i.e. colours saturate at a patch logit of ±80. It suits the published
/// checkpoint, whose patch logits reach the hundreds; models without a stored range use it.
pub const PAPER_OVERLAY_LOGIT_RANGE: f32 = 80.0;
/// The largest range the stored maps can express (they clip logits at ±200).
pub const MAX_OVERLAY_LOGIT_RANGE: f32 = 200.0;

/// Why an overlay range is not usable, if it is not: positive, finite, at most ±200 logits.
pub fn check_overlay_logit_range(range: f32) -> Result<f32, String> {
    if range.is_finite() && range > 0.0 && range <= MAX_OVERLAY_LOGIT_RANGE {
        Ok(range)
    } else {
        Err(format!("expected a patch logit in (0, {MAX_OVERLAY_LOGIT_RANGE}] (the stored maps clip logits at ±200)"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error(
        "the model has no medpatch metadata ('{}' is missing): it was not written by `medpatch export`; re-export it with `medpatch export`",
        keys::FORMAT_VERSION
    )]
    NotMedpatch,
    #[error(
        "the model's metadata format version {found} is not supported (this medpatch reads version {FORMAT_VERSION}); use a matching medpatch release or re-export the model"
    )]
    UnsupportedVersion { found: String },
    #[error("the model's metadata key '{key}' is missing")]
    Missing { key: &'static str },
    #[error("the model's metadata key '{key}' has an invalid value '{value}': {problem}")]
    Invalid { key: &'static str, value: String, problem: String },
}

/// How an image must be turned into the model's input. Only one convention exists today (the
/// MedicalPatchNet seed's); it is written out in full so a reader can check rather than assume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputConvention {
    /// Channels per patch (1: grayscale, PIL `convert("L")`).
    pub channels: u32,
    /// Pixel value range after `to_tensor`.
    pub range: [f32; 2],
    /// Mean/std normalisation applied before the model: "none" for MedicalPatchNet.
    pub normalization: String,
    /// Crop before resizing: "center_square" (crop to the shorter side, centred, no padding).
    pub crop: String,
    /// Resize to `image_size`: "bilinear_antialias" (torchvision `Resize(antialias=True)`).
    pub resize: String,
}

impl Default for InputConvention {
    fn default() -> Self {
        Self {
            channels: 1,
            range: [0.0, 1.0],
            normalization: "none".into(),
            crop: "center_square".into(),
            resize: "bilinear_antialias".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetadata {
    pub format_version: u32,
    pub classes: Vec<String>,
    /// Side of one square patch fed to the backbone (64 for MedicalPatchNet, 512 for the baseline).
    pub patch_size: u32,
    /// Side of the preprocessed square image (512).
    pub image_size: u32,
    pub input: InputConvention,
    pub architecture: String,
    /// sha256 (hex) of the weights file the model was exported from.
    pub source_sha256: String,
    /// Free text: where the weights came from.
    pub source: String,
    /// The patch logit at which the overlay's colours saturate, calibrated for this model (on
    /// validation patches, when it was exported); `None`: the paper's ±80.
    pub overlay_logit_range: Option<f32>,
}

impl ModelMetadata {
    pub fn new(architecture: &str, patch_size: u32, image_size: u32, classes: Vec<String>) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            classes,
            patch_size,
            image_size,
            input: InputConvention::default(),
            architecture: architecture.to_string(),
            source_sha256: String::new(),
            source: String::new(),
            overlay_logit_range: None,
        }
    }

    /// The overlay's colour range for this model, in patch logits: its own, or the paper's.
    pub fn overlay_logit_range(&self) -> f32 {
        self.overlay_logit_range.unwrap_or(PAPER_OVERLAY_LOGIT_RANGE)
    }

    /// Patches per side of the image (8 for 512 / 64).
    pub fn grid(&self) -> u32 {
        self.image_size / self.patch_size
    }

    pub fn default_classes() -> Vec<String> {
        CHEXPERT_CLASSES.iter().map(|c| c.to_string()).collect()
    }

    pub fn to_props(&self) -> Vec<(String, String)> {
        let grid = self.grid();
        let mut props = vec![
            (keys::FORMAT_VERSION.into(), self.format_version.to_string()),
            (keys::CLASSES.into(), serde_json::to_string(&self.classes).expect("strings serialise")),
            (keys::PATCH_SIZE.into(), self.patch_size.to_string()),
            (keys::IMAGE_SIZE.into(), self.image_size.to_string()),
            (keys::GRID.into(), format!("{grid}x{grid}")),
            (keys::INPUT.into(), serde_json::to_string(&self.input).expect("plain struct serialises")),
            (keys::ARCHITECTURE.into(), self.architecture.clone()),
            (keys::SOURCE_SHA256.into(), self.source_sha256.clone()),
            (keys::SOURCE.into(), self.source.clone()),
        ];
        if let Some(range) = self.overlay_logit_range {
            props.push((keys::OVERLAY_LOGIT_RANGE.into(), range.to_string()));
        }
        props
    }

    pub fn from_props<'a>(props: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, ContractError> {
        let props: BTreeMap<&str, &str> = props.into_iter().collect();
        let version = props.get(keys::FORMAT_VERSION).ok_or(ContractError::NotMedpatch)?;
        if version.parse::<u32>().ok() != Some(FORMAT_VERSION) {
            return Err(ContractError::UnsupportedVersion { found: version.to_string() });
        }
        let get = |key: &'static str| props.get(key).copied().ok_or(ContractError::Missing { key });
        let invalid = |key: &'static str, value: &str, problem: String| ContractError::Invalid {
            key,
            value: value.to_string(),
            problem,
        };
        let positive = |key: &'static str| -> Result<u32, ContractError> {
            let value = get(key)?;
            match value.parse::<u32>() {
                Ok(v) if v > 0 => Ok(v),
                _ => Err(invalid(key, value, "expected a positive integer".into())),
            }
        };
        let classes_text = get(keys::CLASSES)?;
        let classes: Vec<String> = serde_json::from_str(classes_text)
            .map_err(|e| invalid(keys::CLASSES, classes_text, format!("expected a JSON list of names ({e})")))?;
        if classes.is_empty() {
            return Err(invalid(keys::CLASSES, classes_text, "no classes".into()));
        }
        let input_text = get(keys::INPUT)?;
        let input: InputConvention =
            serde_json::from_str(input_text).map_err(|e| invalid(keys::INPUT, input_text, e.to_string()))?;
        if input != InputConvention::default() {
            return Err(invalid(
                keys::INPUT,
                input_text,
                "this medpatch only implements the MedicalPatchNet convention (1 channel, [0,1], no normalisation, centre crop, antialiased bilinear)".into(),
            ));
        }
        let patch_size = positive(keys::PATCH_SIZE)?;
        let image_size = positive(keys::IMAGE_SIZE)?;
        if image_size % patch_size != 0 {
            return Err(invalid(
                keys::PATCH_SIZE,
                &patch_size.to_string(),
                format!("the image size {image_size} is not a multiple of it"),
            ));
        }
        let metadata = Self {
            format_version: FORMAT_VERSION,
            classes,
            patch_size,
            image_size,
            input,
            architecture: get(keys::ARCHITECTURE)?.to_string(),
            source_sha256: props.get(keys::SOURCE_SHA256).unwrap_or(&"").to_string(),
            source: props.get(keys::SOURCE).unwrap_or(&"").to_string(),
            overlay_logit_range: match props.get(keys::OVERLAY_LOGIT_RANGE) {
                None => None,
                Some(text) => Some(
                    text.parse::<f32>()
                        .map_err(|e| e.to_string())
                        .and_then(check_overlay_logit_range)
                        .map_err(|problem| invalid(keys::OVERLAY_LOGIT_RANGE, text, problem))?,
                ),
            },
        };
        if let Some(grid) = props.get(keys::GRID) {
            let expected = format!("{0}x{0}", metadata.grid());
            if *grid != expected {
                return Err(invalid(keys::GRID, grid, format!("patch and image size imply {expected}")));
            }
        }
        Ok(metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_round_trip() {
        let mut m = ModelMetadata::new("efficientnet_v2_s", 64, 512, ModelMetadata::default_classes());
        m.source_sha256 = "ab".repeat(32);
        let props = m.to_props();
        assert!(props.iter().any(|(k, v)| k == keys::GRID && v == "8x8"));
        let back = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.overlay_logit_range(), PAPER_OVERLAY_LOGIT_RANGE);
        m.overlay_logit_range = Some(3.25);
        let props = m.to_props();
        let back = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back.overlay_logit_range(), 3.25);
    }

    #[test]
    fn refuses_unusable_overlay_ranges() {
        for bad in ["0", "-1", "NaN", "inf", "250", "wide"] {
            let mut props = ModelMetadata::new("x", 64, 512, ModelMetadata::default_classes()).to_props();
            props.push((keys::OVERLAY_LOGIT_RANGE.into(), bad.into()));
            let err = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
            assert!(err.to_string().contains("medpatch.overlay_logit_range"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_foreign_or_broken_metadata() {
        let none: Vec<(&str, &str)> = vec![("producer", "pytorch")];
        assert!(matches!(ModelMetadata::from_props(none), Err(ContractError::NotMedpatch)));
        let m = ModelMetadata::new("x", 64, 512, ModelMetadata::default_classes());
        let mut props = m.to_props();
        props.retain(|(k, _)| k != keys::CLASSES);
        let err = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
        assert!(err.to_string().contains("medpatch.classes"), "{err}");
        let mut props = m.to_props();
        props.iter_mut().find(|(k, _)| k == keys::PATCH_SIZE).unwrap().1 = "60".into();
        let err = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
        assert!(err.to_string().contains("not a multiple"), "{err}");
    }
}
