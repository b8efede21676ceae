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
    /// Optional: per-class probability thresholds, a JSON object `{"class": p, …}` naming every
    /// class (e.g. the Youden thresholds of `medpatch evaluate`); DICOM results call a finding
    /// present at its threshold (see [`super::ModelMetadata::thresholds`]).
    pub const THRESHOLDS: &str = "medpatch.thresholds";
    /// Optional: the model is an int8 QDQ graph written by `medpatch quantize`; a JSON object
    /// (see [`super::Quantization`]). Engines run such a model at precision int8 only.
    pub const QUANTIZATION: &str = "medpatch.quantization";
}

/// The reference implementation's image side and patch side: 8×8 patches of 64² on a 512² image.
pub const DEFAULT_IMAGE_SIZE: u32 = 512;
pub const DEFAULT_PATCH_SIZE: u32 = 64;

/// Stored maps clip patch logits at ±this and map them to [0, 1]: `(clip(z, ±200) + 200) / 400`,
/// as the reference implementation stores its maps.
pub const MAP_LOGIT_CLIP: f32 = 200.0;

/// The paper's overlay colour range, in logits: its maps are stored as `(clip(z, ±200) + 200) / 400`
/// and drawn over 0.5 ± 0.2, i.e. colours saturate at a patch logit of ±80. It suits the published
/// checkpoint, whose patch logits reach the hundreds; models without a stored range use it.
pub const PAPER_OVERLAY_LOGIT_RANGE: f32 = 80.0;
/// The largest range the stored maps can express (they clip logits at ±200).
pub const MAX_OVERLAY_LOGIT_RANGE: f32 = MAP_LOGIT_CLIP;

/// Largest preprocessed image side a model may declare. The paper's is 512; per-image maps cost
/// `classes × side²` floats (128 × 1024² × 4 bytes = 512 MiB at the limits), so a model file
/// cannot make every prediction allocate gigabytes.
pub const MAX_IMAGE_SIZE: u32 = 1024;
/// Most patches per image side (the paper's grid is 8: 64-pixel patches of a 512 image).
pub const MAX_GRID: u32 = 64;
/// Most classes a model may declare (CheXpert has 14, NIH ChestX-ray14 15).
pub const MAX_CLASSES: usize = 128;
/// Longest class name, in bytes.
pub const MAX_CLASS_NAME_BYTES: usize = 64;

/// Why a patch and image size are not usable, if they are not: positive, the patch dividing the
/// image, within [`MAX_IMAGE_SIZE`] and [`MAX_GRID`].
pub fn check_geometry(patch_size: u32, image_size: u32) -> Result<(), String> {
    if patch_size == 0 || image_size == 0 {
        return Err(format!("patch size {patch_size} and image size {image_size} must be positive"));
    }
    if image_size > MAX_IMAGE_SIZE {
        return Err(format!("image size {image_size} is over the limit of {MAX_IMAGE_SIZE}"));
    }
    if !image_size.is_multiple_of(patch_size) {
        return Err(format!("the image size {image_size} is not a multiple of the patch size {patch_size}"));
    }
    if image_size / patch_size > MAX_GRID {
        return Err(format!(
            "{0}/{patch_size} = {1} patches per side is over the limit of {MAX_GRID}",
            image_size,
            image_size / patch_size
        ));
    }
    Ok(())
}

/// Why a list of class names is not usable, if it is not. Names are how users choose classes
/// (matched without regard to ASCII case), how JSON results are keyed and how output files are
/// named, so each must be non-empty, printable, at most [`MAX_CLASS_NAME_BYTES`] long, and unique
/// without regard to case; at most [`MAX_CLASSES`] of them.
pub fn check_classes<S: AsRef<str>>(classes: &[S]) -> Result<(), String> {
    if classes.is_empty() {
        return Err("no classes".into());
    }
    if classes.len() > MAX_CLASSES {
        return Err(format!("{} classes, over the limit of {MAX_CLASSES}", classes.len()));
    }
    let mut seen = std::collections::HashMap::new();
    for (i, name) in classes.iter().enumerate() {
        let name = name.as_ref();
        if name.trim().is_empty() {
            return Err(format!("class {i} has an empty name"));
        }
        if name.len() > MAX_CLASS_NAME_BYTES {
            return Err(format!(
                "class {i} ({}) is {} bytes long, over the limit of {MAX_CLASS_NAME_BYTES}",
                shorten(name),
                name.len()
            ));
        }
        if name.chars().any(char::is_control) || name != name.trim() {
            return Err(format!("class {i} ({name:?}) has control characters or surrounding spaces"));
        }
        if let Some(first) = seen.insert(name.to_lowercase(), i) {
            return Err(format!(
                "classes {first} and {i} are both named {:?} (names must differ in more than case)",
                classes[first].as_ref()
            ));
        }
    }
    Ok(())
}

/// Classes' names for file names: lower-case ASCII letters and digits, other characters as `_`;
/// names that would still collide (`A+B`, `A-B`) get their class index appended, so each class
/// has its own file.
pub fn class_file_names<S: AsRef<str>>(classes: &[S]) -> Vec<String> {
    let safe: Vec<String> = classes
        .iter()
        .map(|c| {
            c.as_ref().chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
        })
        .collect();
    safe.iter()
        .enumerate()
        .map(
            |(i, name)| {
                if safe.iter().filter(|n| *n == name).count() > 1 { format!("{name}_{i}") } else { name.clone() }
            },
        )
        .collect()
}

/// A value for an error message: whole if short, else its start and its length.
pub fn shorten(value: &str) -> String {
    const KEEP: usize = 120;
    if value.len() <= KEEP {
        return value.to_string();
    }
    let end = (0..=KEEP).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
    format!("{}… ({} bytes)", &value[..end], value.len())
}

/// Where the input convention's centre crop ("center_square") cuts a `width × height` image:
/// `(left, top, side)`, the square of the shorter side placed like torchvision's `CenterCrop`.
pub fn center_crop_box(width: u32, height: u32) -> (u32, u32, u32) {
    let side = width.min(height);
    (crop_offset(width, side), crop_offset(height, side), side)
}

/// torchvision's `int(round((size - crop) / 2.0))` with Python's banker's rounding (a difference
/// of 1 gives offset 0, 3 gives 2, 5 gives 2, 7 gives 4). `size >= crop` is required.
pub fn crop_offset(size: u32, crop: u32) -> u32 {
    let d = size - crop;
    let half = d / 2;
    if d.is_multiple_of(2) || half.is_multiple_of(2) {
        // even differences, and x.5 with an even integer part, round down
        half
    } else {
        half + 1
    }
}

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
    /// `value` is [`shorten`]ed: a metadata string can be megabytes long.
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
    /// Per-class probability thresholds in class order, each in (0, 1): a finding is called
    /// present when its probability is at least its threshold. `None`: the model has none.
    pub thresholds: Option<Vec<f32>>,
    /// How the model was quantized, if it is an int8 QDQ graph from `medpatch quantize`.
    pub quantization: Option<Quantization>,
}

/// What `medpatch quantize` records in a quantized model (`medpatch.quantization`): how it was
/// made, from what, and what its int8 arithmetic does to the logits, so that an engine can check
/// a runtime against it without the f32 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// The scheme, in words: "qdq: int8 weights per output channel (symmetric), uint8 activations per tensor".
    pub scheme: String,
    /// The runtime whose fusions the quantizers are laid out for ("onnxruntime", "openvino"); other
    /// runtimes run the model too, slower. Absent in models that predate the choice (onnxruntime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The calibration method: "minmax" or "percentile 99.99".
    pub method: String,
    pub calibration: CalibrationRecord,
    /// Layers left in f32 (names as in `medpatch quantize --keep`).
    pub kept_f32: Vec<String>,
    /// The f32 model it was quantized from.
    pub reference: ModelReference,
    /// The f32 model's logits and the quantized graph's deviation from them on the engine's fixed
    /// self-check patches, computed when the model was quantized.
    pub self_check: QuantizedSelfCheck,
    /// The quantized graph's deviation from f32 on calibration patches.
    pub calibration_error: Deviation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    pub images: usize,
    pub patches: usize,
    /// SHA-256 of the images' own SHA-256 digests, sorted: the same set of files gives the same
    /// digest whatever their names or order.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReference {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedSelfCheck {
    /// SHA-256 of the self-check patches (f32, little-endian) the logits belong to.
    pub patches_sha256: String,
    /// The f32 model's patch logits on them, `[patches, classes]` row-major.
    pub f32_logits: Vec<f32>,
    /// The quantized graph's deviation from them, its QDQ arithmetic evaluated in f32.
    pub deviation: Deviation,
}

/// |quantized − f32| over patch logits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Deviation {
    pub patches: usize,
    pub max_abs: f32,
    pub mean_abs: f32,
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
            thresholds: None,
            quantization: None,
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
        if let Some(thresholds) = &self.thresholds {
            let object: serde_json::Map<String, serde_json::Value> =
                self.classes.iter().cloned().zip(thresholds.iter().map(|&t| serde_json::json!(t))).collect();
            props.push((keys::THRESHOLDS.into(), serde_json::Value::Object(object).to_string()));
        }
        if let Some(q) = &self.quantization {
            props.push((keys::QUANTIZATION.into(), serde_json::to_string(q).expect("plain struct serialises")));
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
            value: shorten(value),
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
        check_classes(&classes).map_err(|problem| invalid(keys::CLASSES, classes_text, problem))?;
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
        check_geometry(patch_size, image_size)
            .map_err(|problem| invalid(keys::IMAGE_SIZE, &image_size.to_string(), problem))?;
        let thresholds = match props.get(keys::THRESHOLDS) {
            None => None,
            Some(text) => {
                Some(parse_thresholds(text, &classes).map_err(|problem| invalid(keys::THRESHOLDS, text, problem))?)
            }
        };
        let quantization = match props.get(keys::QUANTIZATION) {
            None => None,
            Some(text) => Some(serde_json::from_str::<Quantization>(text).map_err(|e| {
                invalid(keys::QUANTIZATION, text, format!("expected medpatch quantize's record ({e})"))
            })?),
        };
        let metadata = Self {
            format_version: FORMAT_VERSION,
            thresholds,
            quantization,
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

/// `{"class": probability, …}` with every class once and each value in (0, 1), in class order.
fn parse_thresholds(text: &str, classes: &[String]) -> Result<Vec<f32>, String> {
    let object: BTreeMap<String, f64> =
        serde_json::from_str(text).map_err(|e| format!("expected a JSON object of class: probability ({e})"))?;
    if let Some(unknown) = object.keys().find(|k| !classes.contains(k)) {
        return Err(format!("'{}' is not one of the model's classes", shorten(unknown)));
    }
    classes
        .iter()
        .map(|class| match object.get(class) {
            Some(&t) if t > 0.0 && t < 1.0 => Ok(t as f32),
            Some(t) => Err(format!("the threshold of {class} is {t}, not a probability in (0, 1)")),
            None => Err(format!("no threshold for {class}: name every class")),
        })
        .collect()
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
    fn thresholds_round_trip_and_bad_ones_are_refused() {
        let mut m = ModelMetadata::new("x", 64, 512, ModelMetadata::default_classes());
        m.thresholds = Some((0..14).map(|i| 0.05 + i as f32 * 0.06).collect());
        let props = m.to_props();
        let text = &props.iter().find(|(k, _)| k == keys::THRESHOLDS).unwrap().1;
        assert!(text.starts_with("{\"No Finding\":0.05"), "{text}");
        let back = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, m);
        let names = r#""No Finding":0.5,"Enlarged Cardiomediastinum":0.5,"Cardiomegaly":0.5,"Lung Opacity":0.5,"Lung Lesion":0.5,"Edema":0.5,"Consolidation":0.5,"Pneumonia":0.5,"Atelectasis":0.5,"Pneumothorax":0.5,"Pleural Effusion":0.5,"Pleural Other":0.5,"Fracture":0.5"#;
        for (bad, problem) in [
            ("[0.5]", "expected a JSON object"),
            (&format!("{{{names}}}") as &str, "no threshold for Support Devices"),
            (&format!("{{{names},\"Support Devices\":1.0}}"), "not a probability"),
            (&format!("{{{names},\"Support Devices\":0.5,\"Other\":0.5}}"), "'Other' is not one of"),
        ] {
            let mut props = ModelMetadata::new("x", 64, 512, ModelMetadata::default_classes()).to_props();
            props.push((keys::THRESHOLDS.into(), bad.into()));
            let err = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
            assert!(
                err.to_string().contains("medpatch.thresholds") && err.to_string().contains(problem),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_quantization_record_round_trips_and_a_broken_one_is_refused() {
        let mut m = ModelMetadata::new("x", 64, 512, ModelMetadata::default_classes());
        let deviation = Deviation { patches: 64, max_abs: 2.5, mean_abs: 0.125 };
        m.quantization = Some(Quantization {
            scheme: "qdq".into(),
            target: Some("onnxruntime".into()),
            method: "minmax".into(),
            calibration: CalibrationRecord { images: 2, patches: 128, sha256: "ab".repeat(32) },
            kept_f32: vec!["features.0".into()],
            reference: ModelReference { name: "m.onnx".into(), sha256: "cd".repeat(32) },
            self_check: QuantizedSelfCheck { patches_sha256: "ef".repeat(32), f32_logits: vec![0.1, -3.5], deviation },
            calibration_error: deviation,
        });
        let props = m.to_props();
        let back = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, m);
        let mut props = ModelMetadata::new("x", 64, 512, ModelMetadata::default_classes()).to_props();
        props.push((keys::QUANTIZATION.into(), r#"{"scheme":"qdq"}"#.into()));
        let err = ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
        assert!(
            err.to_string().contains("medpatch.quantization") && err.to_string().contains("missing field"),
            "{err}"
        );
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

    fn read_with(key: &str, value: &str) -> Result<ModelMetadata, ContractError> {
        let mut props = ModelMetadata::new("x", 64, 512, ModelMetadata::default_classes()).to_props();
        props.retain(|(k, _)| k != keys::GRID);
        props.iter_mut().find(|(k, _)| k == key).unwrap().1 = value.into();
        ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    #[test]
    fn refuses_geometry_that_would_allocate_gigabytes() {
        let err = read_with(keys::IMAGE_SIZE, "16384").unwrap_err().to_string();
        assert!(err.contains("image size 16384 is over the limit of 1024"), "{err}");
        let err = read_with(keys::PATCH_SIZE, "4").unwrap_err().to_string();
        assert!(err.contains("512/4 = 128 patches per side is over the limit of 64"), "{err}");
        assert!(check_geometry(8, 512).is_ok(), "64 per side is the limit, allowed");
        assert!(check_geometry(4, 512).unwrap_err().contains("128 patches per side"));
        assert!(check_geometry(64, 1024).is_ok() && check_geometry(0, 512).is_err());
    }

    #[test]
    fn refuses_class_names_that_repeat_are_empty_or_absurd() {
        for (classes, expected) in [
            (r#"["Edema","Edema"]"#, "classes 0 and 1 are both named \"Edema\""),
            (r#"["Pleural Effusion","pleural effusion"]"#, "names must differ in more than case"),
            (r#"["Edema",""]"#, "class 1 has an empty name"),
            (r#"["Edema","  "]"#, "class 1 has an empty name"),
            (r#"["Ede\nma"]"#, "control characters"),
            ("[]", "no classes"),
        ] {
            let err = read_with(keys::CLASSES, classes).unwrap_err().to_string();
            assert!(err.contains(expected), "{classes}: {err}");
        }
        let many: Vec<String> = (0..=MAX_CLASSES).map(|i| format!("c{i}")).collect();
        assert!(check_classes(&many).unwrap_err().contains("over the limit of 128"));
        let long = format!("[{:?}]", "x".repeat(10_000_000));
        let err = read_with(keys::CLASSES, &long).unwrap_err().to_string();
        assert!(err.len() < 500, "a 10 MB value is echoed whole ({} bytes)", err.len());
        assert!(err.contains("(10000004 bytes)"), "{}", &err[..200]);
    }

    #[test]
    fn class_file_names_are_safe_and_distinct() {
        assert_eq!(class_file_names(&["Pleural Effusion", "No Finding"]), ["pleural_effusion", "no_finding"]);
        assert_eq!(class_file_names(&["A+B", "A-B", "C"]), ["a_b_0", "a_b_1", "c"]);
        assert_eq!(shorten("short"), "short");
        assert!(shorten(&"é".repeat(100)).ends_with("… (200 bytes)"));
    }
}
