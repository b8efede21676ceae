//! medpatch's exporter: the shared MedicalPatchNet patch backbone (torchvision EfficientNetV2) from
//! trained weights to one self-describing ONNX file.
//!
//! ```no_run
//! use medpatch_exporter::{export, ExportOptions, WeightsSource};
//! let report = export(&ExportOptions::new(
//!     WeightsSource::File("MedicalPatchNet_weights.pt".into()),
//!     "medicalpatchnet.onnx".into(),
//! )).unwrap();
//! println!("{} parameters", report.parameters);
//! ```

pub mod efficientnet;
pub mod onnx;

use medpatch_models::contract::{INPUT_NAME, OUTPUT_NAME};
use medpatch_models::{ArchConfig, ArchError, ModelMetadata};
use onnx::Dim;
use prost::Message;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use efficientnet::WeightProblems;
use medpatch_weights as weights;
pub use medpatch_weights::{Tensor, Weights, WeightsError};

#[derive(Debug, Clone)]
pub enum WeightsSource {
    /// A `torch.save` state dict (`.pt`/`.pth`) or a safetensors file with torchvision names.
    File(PathBuf),
    /// Reproducible random weights (for tests and benchmarks): `num_classes` outputs.
    Random { seed: u64, num_classes: usize },
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub weights: WeightsSource,
    pub output: PathBuf,
    pub arch: ArchConfig,
    /// 64 for MedicalPatchNet, 512 for the whole-image EfficientNetV2-S baseline.
    pub patch_size: u32,
    pub image_size: u32,
    /// Output names; `None`: the 14 CheXpert findings (the model must then have 14 outputs).
    pub classes: Option<Vec<String>>,
    /// The overlay colour range to store (patch logit at which colours saturate); `None`: none
    /// stored, readers use the paper's ±80.
    pub overlay_logit_range: Option<f32>,
}

impl ExportOptions {
    pub fn new(weights: WeightsSource, output: PathBuf) -> Self {
        Self {
            weights,
            output,
            arch: ArchConfig::builtin("efficientnet_v2_s").expect("built-in config is valid"),
            patch_size: medpatch_models::contract::DEFAULT_PATCH_SIZE,
            image_size: medpatch_models::contract::DEFAULT_IMAGE_SIZE,
            classes: None,
            overlay_logit_range: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    pub output: PathBuf,
    pub metadata: ModelMetadata,
    /// Parameters of the folded inference graph.
    pub parameters: usize,
    pub nodes: usize,
    pub file_bytes: usize,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error("{path}: {problems}")]
    Mismatch { path: String, problems: WeightProblems },
    #[error("invalid export options: {0}")]
    Options(String),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

pub fn export(options: &ExportOptions) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    let p = options.patch_size;
    // Everything the options alone can refuse is refused before any weight is read or made.
    medpatch_models::contract::check_geometry(p, options.image_size).map_err(ExportError::Options)?;
    if let Some(classes) = &options.classes {
        medpatch_models::contract::check_classes(classes)
            .map_err(|problem| ExportError::Options(format!("class names: {problem}")))?;
    }
    if let WeightsSource::Random { num_classes, .. } = options.weights
        && !(1..=medpatch_models::contract::MAX_CLASSES).contains(&num_classes)
    {
        return Err(ExportError::Options(format!(
            "{num_classes} classes: a model has 1 to {} outputs",
            medpatch_models::contract::MAX_CLASSES
        )));
    }
    medpatch_models::io::check_output_path(&options.output)
        .map_err(|source| ExportError::Write { path: options.output.display().to_string(), source })?;
    let (weights, origin, source) = match &options.weights {
        WeightsSource::File(path) => {
            let w = weights::load(path)?;
            let name =
                path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            (w, path.display().to_string(), format!("weights file {name}"))
        }
        WeightsSource::Random { seed, num_classes } => (
            efficientnet::random_weights(&options.arch, *num_classes, *seed),
            format!("random weights (seed {seed})"),
            format!("random initialisation, seed {seed}: an untrained test model"),
        ),
    };
    let backbone = efficientnet::build(&options.arch, &weights, INPUT_NAME, OUTPUT_NAME)
        .map_err(|problems| ExportError::Mismatch { path: origin.clone(), problems })?;
    let classes = match &options.classes {
        Some(c) => c.clone(),
        None if backbone.num_classes == medpatch_models::CHEXPERT_CLASSES.len() => ModelMetadata::default_classes(),
        None => {
            return Err(ExportError::Options(format!(
                "the model has {} outputs, not the 14 CheXpert findings: give their class names",
                backbone.num_classes
            )));
        }
    };
    if classes.len() != backbone.num_classes {
        return Err(ExportError::Options(format!(
            "{} class names given for a model with {} outputs",
            classes.len(),
            backbone.num_classes
        )));
    }
    let mut metadata = ModelMetadata::new(&options.arch.name, p, options.image_size, classes);
    metadata.source_sha256 = weights.source_sha256.clone();
    metadata.source = source;
    if let Some(range) = options.overlay_logit_range {
        metadata.overlay_logit_range = Some(
            medpatch_models::contract::check_overlay_logit_range(range)
                .map_err(|problem| ExportError::Options(format!("overlay range {range}: {problem}")))?,
        );
    }
    let parameters = backbone.graph.parameter_count();
    let cin = options.arch.in_channels as i64;
    let doc = format!(
        "MedicalPatchNet patch backbone ({}): patches [N,{cin},{p},{p}] in [0,1] -> logits [N,{}]. \
         Image logits are the mean over the {g}x{g} patches of a {s}x{s} image. Written by medpatch export.",
        options.arch.name,
        backbone.num_classes,
        g = metadata.grid(),
        s = options.image_size
    );
    let model = backbone.graph.finish(
        &format!("medpatch_{}", options.arch.name),
        (INPUT_NAME, &[Dim::Named("N"), Dim::Fixed(cin), Dim::Fixed(p as i64), Dim::Fixed(p as i64)]),
        (OUTPUT_NAME, &[Dim::Named("N"), Dim::Fixed(backbone.num_classes as i64)]),
        metadata.to_props(),
        &doc,
    );
    let nodes = model.graph.as_ref().map_or(0, |g| g.node.len());
    let bytes = model.encode_to_vec();
    medpatch_models::write_atomically(&options.output, &bytes)
        .map_err(|source| ExportError::Write { path: options.output.display().to_string(), source })?;
    Ok(ExportReport {
        output: options.output.clone(),
        metadata,
        parameters,
        nodes,
        file_bytes: bytes.len(),
        elapsed: started.elapsed(),
    })
}
