//! Post-training static quantization of a MedicalPatchNet model: an f32 ONNX model from
//! `medpatch export` and calibration X-rays in, an int8 QDQ graph out, itself a normal medpatch
//! model (its metadata carried over, plus `medpatch.quantization`).
//!
//! 1. Calibration: the X-rays are decoded, preprocessed and tiled as the engine does, and tract
//!    runs the f32 model over their patches with every activation as an output: each activation's
//!    range (min–max), or its histogram and the range that leaves out the extreme values
//!    ([`Method::Percentile`]).
//! 2. The QDQ rewrite ([`qdq`]) with the scales and zero points of [`formulas`]: int8 weights per
//!    output channel, uint8 activations per tensor; the layers named in `keep` stay f32.
//! 3. The quantized graph's arithmetic, run in tract, against f32: on calibration patches (how
//!    far int8 moves the logits) and on the engine's fixed self-check patches, whose f32 logits
//!    are stored so that an engine can check a runtime's int8 kernels without the f32 model.
//!
//! ```no_run
//! use medpatch_quantize::{Calibration, QuantizeOptions, quantize};
//! let model = medpatch_engine::Model::from_path("m.onnx".as_ref()).unwrap();
//! let files = vec!["valid/a.png".into(), "valid/b.png".into()];
//! let calibration = Calibration::from_files(&model, &files, 256).unwrap();
//! let quantized = quantize(&model, &calibration, &QuantizeOptions::default()).unwrap();
//! medpatch_models::write_atomically("m.int8.onnx".as_ref(), &quantized.bytes).unwrap();
//! ```

pub mod calibrate;
pub mod formulas;
pub mod qdq;
/// Layer names and presets, shared with the engine's bf16 (which keeps layers in f32 the same way).
pub use medpatch_engine::layers;

use calibrate::Runner;
use formulas::{ActivationParams, activation_params};
use medpatch_engine::{Model, backend::precision::check_patches, decode, preprocess, tile};
use medpatch_models::contract::{
    CalibrationRecord, Deviation, ModelReference, OUTPUT_NAME, Quantization, QuantizedSelfCheck, keys,
};
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use tract_onnx::pb;

/// How activation ranges are chosen from the calibration patches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The smallest and largest value seen.
    MinMax,
    /// The range that leaves out `(100 − p)`% of the values at each end (p in (50, 100)).
    Percentile(f64),
}

impl Method {
    pub fn describe(&self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile {p}"),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "minmax" | "min-max" => Ok(Method::MinMax),
            "percentile" => Ok(Method::Percentile(DEFAULT_PERCENTILE)),
            _ => match s.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 50.0 && p < 100.0 => Ok(Method::Percentile(p)),
                _ => Err(format!(
                    "unknown calibration method '{s}': use minmax, percentile (= percentile:{DEFAULT_PERCENTILE}) or \
                     percentile:P with P in (50, 100)"
                )),
            },
        }
    }
}

/// The percentile method's default: a hundredth of a percent left out at each end.
pub const DEFAULT_PERCENTILE: f64 = 99.99;

/// Patches of the calibration set on which the quantized graph's deviation from f32 is measured
/// (a second and third run of the model; the whole set would double the time for little).
pub const DEVIATION_PATCHES: usize = 1024;

/// The scheme every quantized model uses, in words (stored in its metadata).
pub const SCHEME: &str = "qdq: int8 weights per output channel (symmetric), uint8 activations per tensor";

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub method: Method,
    /// Layers (or presets, [`layers::PRESETS`]) left in f32.
    pub keep: Vec<String>,
    /// Threads for the calibration runs (0: all cores).
    pub threads: usize,
    /// The runtime whose integer kernels the quantizers are laid out for.
    pub target: qdq::Target,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        Self {
            method: Method::MinMax,
            keep: layers::DEFAULT_KEEP.iter().map(|s| s.to_string()).collect(),
            threads: 0,
            target: qdq::Target::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The input is not a medpatch model (or is broken); the engine's words.
    #[error("{0}")]
    Model(String),
    #[error("{0} is already quantized (medpatch.quantization is set): quantize its f32 original")]
    AlreadyQuantized(String),
    #[error(
        "no calibration images: give folders or files of X-rays like the ones the model will see (validation images, not test images)"
    )]
    NoCalibrationImages,
    #[error("none of the {count} calibration images could be read; the first: {first}")]
    NoReadableCalibrationImages { count: usize, first: String },
    #[error("{0}")]
    Layers(String),
    #[error("tract could not run the model for calibration: {0}")]
    Runtime(String),
    #[error("cannot quantize this graph: {0}")]
    Graph(String),
}

/// Calibration patches: the X-rays' patches as the engine feeds them.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub patches: Vec<f32>,
    pub count: usize,
    pub images: usize,
    /// See [`CalibrationRecord::sha256`].
    pub sha256: String,
    /// Files that could not be used, and why.
    pub skipped: Vec<(PathBuf, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Calibration {
    /// Decode, preprocess and tile `files` for `model` (at most `max_images` of them, in order).
    /// Files that fail are skipped and listed; none at all, or none readable, is an error.
    pub fn from_files(model: &Model, files: &[PathBuf], max_images: usize) -> Result<Self, QuantizeError> {
        if files.is_empty() {
            return Err(QuantizeError::NoCalibrationImages);
        }
        let (side, patch) = (model.image_size(), model.patch_size());
        let mut patches = Vec::new();
        let mut digests = Vec::new();
        let mut skipped = Vec::new();
        for path in files {
            if digests.len() == max_images.max(1) {
                break;
            }
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) => {
                    skipped.push((path.clone(), format!("cannot read: {e}")));
                    continue;
                }
            };
            let name = path.display().to_string();
            match decode::decode_bytes(&bytes, &name) {
                Ok(image) => {
                    let image = preprocess::preprocess(&image, side as u32);
                    for p in tile::tile(&image.pixels, side, patch).chunks_exact(patch * patch) {
                        for _ in 0..model.channels {
                            patches.extend_from_slice(p);
                        }
                    }
                    digests.push(Sha256::digest(&bytes).to_vec());
                }
                Err(e) => skipped.push((path.clone(), e.to_string())),
            }
        }
        if digests.is_empty() {
            let (path, problem) = &skipped[0];
            return Err(QuantizeError::NoReadableCalibrationImages {
                count: skipped.len(),
                first: format!("{}: {problem}", path.display()),
            });
        }
        digests.sort();
        let sha256 = hex(&Sha256::digest(digests.concat()));
        let per_patch = model.channels * patch * patch;
        Ok(Self { count: patches.len() / per_patch, patches, images: digests.len(), sha256, skipped })
    }
}

/// A quantized model and what was measured while making it.
#[derive(Debug, Clone)]
pub struct Quantized {
    pub bytes: Vec<u8>,
    pub record: Quantization,
    pub rewritten: qdq::Rewritten,
    /// Nodes of the f32 graph.
    pub nodes: usize,
}

fn runtime(e: impl std::fmt::Display) -> QuantizeError {
    QuantizeError::Runtime(format!("{e:#}"))
}

fn deviation(a: &[f32], b: &[f32], classes: usize) -> Deviation {
    let diffs = a.iter().zip(b).map(|(x, y)| (x - y).abs());
    let max_abs = diffs.clone().fold(0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) });
    let mean_abs = (diffs.map(f64::from).sum::<f64>() / a.len().max(1) as f64) as f32;
    Deviation { patches: a.len() / classes.max(1), max_abs, mean_abs }
}

/// Quantize `model` with the calibration patches.
pub fn quantize(
    model: &Model,
    calibration: &Calibration,
    options: &QuantizeOptions,
) -> Result<Quantized, QuantizeError> {
    if model.metadata.quantization.is_some() {
        return Err(QuantizeError::AlreadyQuantized(model.name()));
    }
    if calibration.count == 0 {
        return Err(QuantizeError::NoCalibrationImages);
    }
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut proto = pb::ModelProto::decode(&*model.bytes).map_err(|e| QuantizeError::Model(e.to_string()))?;
    let graph = proto.graph.as_mut().ok_or_else(|| QuantizeError::Model("the model has no graph".into()))?;
    let kept = layers::expand(&options.keep, &model.metadata.architecture, graph).map_err(QuantizeError::Layers)?;
    let is_kept = |node: &str| kept.iter().any(|layer| layers::belongs(node, layer));
    let plan = qdq::plan(graph, &is_kept, options.target);
    if plan.quantized_nodes() == 0 {
        return Err(QuantizeError::Graph("no node left to quantize: every supported node is kept in f32".into()));
    }
    let patch_shape = [model.channels, model.patch_size(), model.patch_size()];
    let classes = model.num_classes();

    // Pass 1 (and 2): ranges of every planned activation. The logits come first, for free.
    let mut outputs = vec![OUTPUT_NAME.to_string()];
    outputs.extend(plan.activations.iter().cloned());
    let runner = Runner::new(&model.bytes, &outputs, patch_shape, threads).map_err(runtime)?;
    let (patches, n) = (&calibration.patches, calibration.count);
    let ranges = calibrate::ranges(&runner, outputs.len(), patches, n).map_err(runtime)?;
    let chosen: Vec<(f32, f32)> = match options.method {
        Method::MinMax => ranges.min.iter().copied().zip(ranges.max.iter().copied()).collect(),
        Method::Percentile(p) => calibrate::histograms(&runner, &ranges, patches, n)
            .map_err(runtime)?
            .iter()
            .map(|h| h.percentile_range(p))
            .collect(),
    };
    drop(runner);
    let mut params: HashMap<String, ActivationParams> = HashMap::new();
    for (name, &(low, high)) in outputs.iter().zip(&chosen).skip(1) {
        if !(low.is_finite() && high.is_finite()) {
            return Err(QuantizeError::Graph(format!(
                "activation {name} has no finite values on the calibration patches ({low} … {high})"
            )));
        }
        params.insert(name.clone(), activation_params(low, high));
    }

    let f32_graph_nodes = graph.node.len();
    let rewritten = qdq::rewrite(graph, &plan, &params).map_err(QuantizeError::Graph)?;

    // What the quantized arithmetic does to the logits: on the engine's self-check patches (whose
    // f32 logits are stored for the engine's check) and on calibration patches, in one run each.
    let (check, check_n) = check_patches(model);
    let per_patch: usize = patch_shape.iter().product();
    let sample_n = n.min(DEVIATION_PATCHES);
    let both: Vec<f32> = check.iter().chain(&patches[..sample_n * per_patch]).copied().collect();
    let logits_of = |bytes: &[u8]| -> Result<(Vec<f32>, Vec<f32>), QuantizeError> {
        let mut logits = Runner::new(bytes, &[OUTPUT_NAME.to_string()], patch_shape, threads)
            .and_then(|r| r.logits(&both, check_n + sample_n))
            .map_err(runtime)?;
        let sample = logits.split_off(check_n * classes);
        Ok((logits, sample))
    };
    let (f32_check, f32_sample) = logits_of(&model.bytes)?;
    let mut record = Quantization {
        scheme: SCHEME.into(),
        target: Some(options.target.name().into()),
        method: options.method.describe(),
        calibration: CalibrationRecord {
            images: calibration.images,
            patches: calibration.count,
            sha256: calibration.sha256.clone(),
        },
        kept_f32: kept.clone(),
        reference: ModelReference { name: model.name(), sha256: model.sha256().to_string() },
        self_check: QuantizedSelfCheck {
            patches_sha256: hex(&Sha256::digest(check.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())),
            f32_logits: f32_check.clone(),
            deviation: Deviation { patches: check_n, max_abs: 0.0, mean_abs: 0.0 },
        },
        calibration_error: Deviation { patches: sample_n, max_abs: 0.0, mean_abs: 0.0 },
    };
    let encode = |proto: &mut pb::ModelProto, record: &Quantization| {
        proto.metadata_props.retain(|p| p.key != keys::QUANTIZATION);
        proto.metadata_props.push(pb::StringStringEntryProto {
            key: keys::QUANTIZATION.into(),
            value: serde_json::to_string(record).expect("plain struct serialises"),
        });
        proto.producer_name = "medpatch quantize".into();
        proto.encode_to_vec()
    };
    let draft = encode(&mut proto, &record);
    let (q_check, q_sample) = logits_of(&draft)?;
    record.self_check.deviation = deviation(&q_check, &f32_check, classes);
    record.calibration_error = deviation(&q_sample, &f32_sample, classes);
    for d in [record.self_check.deviation, record.calibration_error] {
        if !(d.max_abs.is_finite() && d.mean_abs.is_finite()) {
            return Err(QuantizeError::Graph("the quantized graph gives non-finite logits".into()));
        }
    }
    let bytes = encode(&mut proto, &record);
    // The result must be a model the engine accepts.
    Model::from_bytes(bytes.clone().into(), medpatch_engine::ModelOrigin::Memory("quantized".into()))
        .map_err(|e| QuantizeError::Graph(format!("the quantized model does not load: {e}")))?;
    Ok(Quantized { bytes, record, rewritten, nodes: f32_graph_nodes })
}
