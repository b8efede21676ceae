//! Where patches become logits: ONNX Runtime (TensorRT, CUDA or CPU execution provider),
//! OpenVINO (CPU) or tract.
//!
//! [`select`] resolves a [`ProviderChoice`] and a [`Precision`] into a running [`Backend`]. `auto`
//! tries TensorRT → CUDA → ONNX Runtime CPU → OpenVINO → tract and keeps the first that runs the
//! requested precision and really initialises on this model; it never falls back silently: every
//! provider it skipped is returned with the reason. A backend at reduced precision (bf16, fp16,
//! int8) must first pass a self-check against f32 (see [`precision`]). int8 is the precision of a
//! quantized model (`medpatch quantize`): such a model runs at int8 only, and int8 needs one.

#[cfg(feature = "openvino")]
mod bf16_graph;
#[cfg(feature = "onnxruntime")]
mod onnxruntime;
#[cfg(feature = "openvino")]
mod openvino;
pub mod precision;
pub mod tract;

use crate::EngineError;
use crate::model::Model;
use serde::Serialize;
use std::path::PathBuf;

#[cfg(feature = "openvino")]
pub use self::openvino::{
    OPENVINO_LIBRARY_ENV, c_library_in as openvino_library_in, default_openvino_library, loaded_openvino_library,
};
#[cfg(feature = "onnxruntime")]
pub use onnxruntime::{OrtLibrary, default_ort_library, ort_library_in};
pub use precision::{Bound, CheckBound, INT8_BOUND, Int8Bound, Precision, PrecisionCheck, REDUCED_PRECISION_BOUND};

/// A backend that actually ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    TensorRt,
    Cuda,
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// OpenVINO's CPU plugin (f32, or bf16 on CPUs that have it).
    #[serde(rename = "openvino")]
    OpenVino,
    Tract,
}

impl Provider {
    /// Every provider, in the order `auto` tries them (fastest first at f32). The one list:
    /// parsing, the CLI's help and `auto` all derive from it. OpenVINO comes after ONNX Runtime's
    /// CPU provider: at f32 it was slower on the machines measured (docs/speed.md), and at bf16
    /// the providers before it are skipped anyway.
    pub const ALL: [Provider; 5] =
        [Provider::TensorRt, Provider::Cuda, Provider::Cpu, Provider::OpenVino, Provider::Tract];

    /// The precisions this provider can be asked for (the hardware may still refuse: OpenVINO
    /// runs bf16 only where the CPU reports BF16, tract fp16 only on ARM CPUs with FP16). int8
    /// means a quantized (QDQ) model run by the provider's integer kernels; ONNX Runtime's CUDA
    /// provider has none for it, and tract refuses it, saying why (it runs it slower than f32).
    pub fn precisions(self) -> &'static [Precision] {
        match self {
            Provider::TensorRt => &[Precision::F32, Precision::Fp16, Precision::Int8],
            Provider::OpenVino => &[Precision::F32, Precision::Bf16, Precision::Int8],
            Provider::Tract => &[Precision::F32, Precision::Fp16],
            Provider::Cpu => &[Precision::F32, Precision::Int8],
            Provider::Cuda => &[Precision::F32],
        }
    }

    /// Names accepted for this provider: its name first, then aliases.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Provider::TensorRt => &["tensorrt", "trt"],
            Provider::Cuda => &["cuda"],
            Provider::Cpu => &["cpu", "ort"],
            Provider::OpenVino => &["openvino", "ov"],
            Provider::Tract => &["tract"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
            Provider::OpenVino => "openvino",
            Provider::Tract => "tract",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Provider::TensorRt => "ONNX Runtime TensorRT execution provider",
            Provider::Cuda => "ONNX Runtime CUDA execution provider",
            Provider::Cpu => "ONNX Runtime CPU execution provider",
            Provider::OpenVino => "OpenVINO CPU",
            Provider::Tract => "tract (pure Rust)",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong while a running backend computed logits. (A backend that cannot start is
/// [`EngineError::ProviderUnavailable`], with the reason in words.)
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The runtime reported a failure.
    #[error("{}: {message}", provider.describe())]
    Runtime { provider: Provider, message: String },
    /// The runtime returned another shape than `[n, classes]`: the model does not follow the
    /// contract.
    #[error("{} returned shape {got:?}, expected {expected:?}", provider.describe())]
    OutputShape { provider: Provider, got: Vec<usize>, expected: [usize; 2] },
    /// A logit is NaN or infinite: the model or the runtime is broken, the result meaningless.
    #[error("the model produced a non-finite logit ({value}) for patch {patch}, class {class}")]
    NonFinite { value: f32, patch: usize, class: String },
    /// A worker thread of a data-parallel backend panicked (a bug, in the runtime or in medpatch).
    #[error("a {} worker thread panicked", provider.describe())]
    WorkerPanicked { provider: Provider },
}

impl BackendError {
    pub(crate) fn runtime(provider: Provider, message: impl std::fmt::Display) -> Self {
        BackendError::Runtime { provider, message: message.to_string() }
    }

    /// Check the output of a run over `n` patches has the contract's shape.
    pub(crate) fn check_shape(provider: Provider, got: &[usize], n: usize, classes: usize) -> Result<(), Self> {
        if got == [n, classes] {
            Ok(())
        } else {
            Err(BackendError::OutputShape { provider, got: got.to_vec(), expected: [n, classes] })
        }
    }
}

/// Options the library's messages name, in the library's words, and as each front end spells
/// them: the CLI, the C API, Python. A front end shows a message through [`in_terms_of`].
pub const OPTION_SPELLINGS: [(&str, [&str; 3]); 5] = [
    (
        "the ONNX Runtime library option",
        ["--ort-lib PATH", "medpatch_options_set_ort_library()", "Engine(ort_library=PATH)"],
    ),
    (
        "the OpenVINO library option",
        ["--openvino-lib PATH", "medpatch_options_set_openvino_library()", "Engine(openvino_library=PATH)"],
    ),
    ("precision f32", ["--precision f32", "precision \"f32\"", "precision=\"f32\""]),
    ("precision int8", ["--precision int8", "precision \"int8\"", "precision=\"int8\""]),
    (
        "keep more layers in f32",
        [
            "keep more layers in f32 (--keep-f32 LAYERS)",
            "keep more layers in f32 (medpatch_options_set_keep_f32())",
            "keep more layers in f32 (Engine(keep_f32=[...]))",
        ],
    ),
];

/// A front end, for [`in_terms_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    Cli = 0,
    C = 1,
    Python = 2,
}

/// `message` with the options it names spelled as `front_end` spells them.
pub fn in_terms_of(message: &str, front_end: FrontEnd) -> String {
    OPTION_SPELLINGS
        .iter()
        .fold(message.to_string(), |text, (words, spellings)| text.replace(words, spellings[front_end as usize]))
}

/// A runtime library given by path, checked and made absolute: the file checked is then the file
/// loaded (`dlopen` searches the system's folders for a bare name like `libonnxruntime.so`, and
/// `ort` tries the executable's folder first for a relative one).
#[cfg(any(feature = "onnxruntime", feature = "openvino"))]
pub(crate) fn library_file(path: &std::path::Path, what: &str) -> Result<PathBuf, String> {
    match std::fs::metadata(path) {
        Err(_) => Err(format!("{what} library {} does not exist", path.display())),
        Ok(m) if m.is_dir() => Err(format!("{what} library {} is a folder, not a library file", path.display())),
        Ok(m) if !m.is_file() => Err(format!("{what} library {} is not a regular file", path.display())),
        Ok(_) => std::fs::canonicalize(path).map_err(|e| format!("{what} library {}: {e}", path.display())),
    }
}

/// Run `f`, turning a panic inside a runtime into an error: tract's and the `openvino` crate's
/// asserts, unwraps and overflow checks are reachable from a hostile model file (found by
/// engine/tests/model_mutations.rs) or a library that is not the runtime, and no panic may cross
/// the library boundary (nor be printed before the error that says what happened).
pub(crate) fn guard<T, E>(f: impl FnOnce() -> Result<T, E>, on_panic: impl FnOnce(String) -> E) -> Result<T, E> {
    medpatch_models::panics::catch_quietly(f).unwrap_or_else(|message| Err(on_panic(message)))
}

/// Data parallelism for runtimes that run one request on one core well but do not spread it
/// (tract's plans, OpenVINO's infer requests): split `n` patches of `per_patch` values into
/// `parts` contiguous shares, run `run(k, share, share_n)` for each share `k` on its own thread,
/// and join the logits in order.
pub(crate) fn run_in_parts(
    provider: Provider,
    patches: &[f32],
    n: usize,
    per_patch: usize,
    parts: usize,
    run: impl Fn(usize, &[f32], usize) -> Result<Vec<f32>, BackendError> + Sync,
) -> Result<Vec<f32>, BackendError> {
    let parts = parts.min(n).max(1);
    if parts == 1 {
        return run(0, patches, n);
    }
    let share = n.div_ceil(parts) * per_patch;
    let run = &run;
    let outputs: Vec<Result<Vec<f32>, BackendError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = patches
            .chunks(share)
            .enumerate()
            .map(|(k, part)| scope.spawn(move || run(k, part, part.len() / per_patch)))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(Err(BackendError::WorkerPanicked { provider }))).collect()
    });
    let mut logits = Vec::new();
    for part in outputs {
        logits.extend(part?);
    }
    Ok(logits)
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProviderChoice {
    #[default]
    Auto,
    Only(Provider),
}

impl std::str::FromStr for ProviderChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(ProviderChoice::Auto);
        }
        Provider::ALL
            .into_iter()
            .find(|p| p.names().contains(&s))
            .map(ProviderChoice::Only)
            .ok_or_else(|| format!("unknown provider '{s}': use {}", ProviderChoice::names().join(", ")))
    }
}

impl ProviderChoice {
    /// The choices a user can write: `auto` and each provider's name, in `auto`'s order.
    pub fn names() -> Vec<&'static str> {
        std::iter::once("auto").chain(Provider::ALL.iter().map(|p| p.name())).collect()
    }
}

#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Intra-op threads (0: the runtime's default, all cores).
    pub threads: usize,
    /// Arithmetic precision, for every provider (default f32). `auto` skips providers that
    /// cannot run it; a reduced precision must pass a self-check against f32 first.
    pub precision: Precision,
    /// ONNX Runtime shared library; default: `ORT_DYLIB_PATH`, then beside the executable.
    pub ort_library: Option<PathBuf>,
    /// OpenVINO C library (`libopenvino_c.so*`, or its folder); default: see
    /// [`default_openvino_library`].
    pub openvino_library: Option<PathBuf>,
    /// TensorRT: where built engines are cached (building one takes minutes).
    pub tensorrt_cache: Option<PathBuf>,
    /// int8: the f32 model the quantized model was made from, run for the self-check (default:
    /// the f32 logits stored in the quantized model by `medpatch quantize`).
    pub reference_model: Option<PathBuf>,
    /// bf16: the layers that stay f32 (names or presets of [`crate::layers`]; default
    /// [`crate::layers::DEFAULT_KEEP`]). An int8 model's f32 layers were chosen when it was
    /// quantized.
    pub keep_f32: Option<Vec<String>>,
}

/// Runs the patch backbone: `patches` is `[n, C, P, P]` row-major, the result `[n, classes]`.
pub trait Backend: Send + Sync {
    fn provider(&self) -> Provider;
    /// The precision it computes in.
    fn precision(&self) -> Precision {
        Precision::F32
    }
    /// The layers it leaves in f32 at a reduced precision (bf16 on OpenVINO).
    fn kept_f32(&self) -> &[String] {
        &[]
    }
    fn run(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, BackendError>;
}

/// The chosen backend and why the ones before it were not used.
pub struct Selection {
    pub backend: Box<dyn Backend>,
    pub skipped: Vec<(Provider, String)>,
    /// The self-check a reduced-precision backend passed (None at f32).
    pub precision_check: Option<PrecisionCheck>,
}

fn build(
    model: &Model,
    provider: Provider,
    precision: Precision,
    options: &BackendOptions,
) -> Result<Box<dyn Backend>, String> {
    match provider {
        Provider::Tract => tract::TractBackend::new(model, precision, options).map(|b| Box::new(b) as Box<dyn Backend>),
        #[cfg(feature = "openvino")]
        Provider::OpenVino => {
            self::openvino::OpenVinoBackend::new(model, precision, options).map(|b| Box::new(b) as Box<dyn Backend>)
        }
        #[cfg(feature = "onnxruntime")]
        Provider::TensorRt | Provider::Cuda | Provider::Cpu => {
            onnxruntime::OrtBackend::new(model, provider, precision, options).map(|b| Box::new(b) as Box<dyn Backend>)
        }
        #[allow(unreachable_patterns)] // with every runtime compiled in
        other => Err(format!(
            "{} is not compiled into this build (the edge build: tract only); rebuild with the default features",
            other.describe()
        )),
    }
}

/// Start `provider` at `precision`; a reduced precision must then pass the self-check against an
/// f32 run: OpenVINO's and tract's own f32 (the same runtime but for the precision), for TensorRT
/// ONNX Runtime's CPU provider (a second TensorRT engine would take minutes to build), else tract.
fn start(
    model: &Model,
    provider: Provider,
    options: &BackendOptions,
    int8_reference: Option<&Model>,
) -> Result<(Box<dyn Backend>, Option<PrecisionCheck>), String> {
    let precision = options.precision;
    if provider == Provider::Tract && precision == Precision::Int8 {
        return Err(tract::INT8_REFUSAL.into());
    }
    if !provider.precisions().contains(&precision) {
        // int8 is a quantized model's precision, not an alternative for a float model: named only
        // when it is what was asked for.
        let runs: Vec<&str> = provider
            .precisions()
            .iter()
            .filter(|p| **p != Precision::Int8 || precision == Precision::Int8)
            .map(|p| p.name())
            .collect();
        let who: Vec<&str> =
            Provider::ALL.iter().filter(|p| p.precisions().contains(&precision)).map(|p| p.describe()).collect();
        return Err(format!(
            "{} runs {} only, not {precision}; {precision} needs {}",
            provider.describe(),
            runs.join(" or "),
            who.join(" or ")
        ));
    }
    let backend = build(model, provider, precision, options)?;
    if precision == Precision::F32 {
        return Ok((backend, None));
    }
    if precision == Precision::Int8 {
        let check = match int8_reference {
            None => precision::self_check_int8(model, &*backend, precision::Int8Reference::Stored, INT8_BOUND)?,
            Some(f32_model) => {
                let reference = build(f32_model, Provider::Cpu, Precision::F32, options)
                    .or_else(|_| build(f32_model, Provider::Tract, Precision::F32, options))
                    .map_err(|e| format!("cannot start the f32 run for the int8 self-check: {e}"))?;
                let reference = precision::Int8Reference::Run(&*reference);
                precision::self_check_int8(model, &*backend, reference, INT8_BOUND)?
            }
        };
        return Ok((backend, Some(check)));
    }
    let reference = match provider {
        Provider::OpenVino | Provider::Tract => build(model, provider, Precision::F32, options),
        _ => build(model, Provider::Cpu, Precision::F32, options)
            .or_else(|_| build(model, Provider::Tract, Precision::F32, options)),
    }
    .map_err(|e| format!("cannot start the f32 run for the {precision} self-check: {e}"))?;
    let check = precision::self_check(model, &*backend, &*reference, REDUCED_PRECISION_BOUND)?;
    Ok((backend, Some(check)))
}

/// The f32 model an int8 self-check runs, if one is given: checked to be the one `quantized` was
/// made from.
fn int8_reference(quantized: &Model, options: &BackendOptions) -> Result<Option<Model>, EngineError> {
    let (Some(path), Some(q)) = (&options.reference_model, &quantized.metadata.quantization) else {
        return Ok(None);
    };
    let reference = Model::from_path(path)?;
    if reference.sha256() != q.reference.sha256 {
        return Err(EngineError::Model {
            origin: path.display().to_string(),
            problem: format!(
                "not the f32 model {} was quantized from ({}, sha256 {}), so it cannot be its self-check's reference",
                quantized.name(),
                q.reference.name,
                q.reference.sha256
            ),
        });
    }
    Ok(Some(reference))
}

/// A quantized model runs at int8 only, and int8 needs a quantized model.
fn check_model_precision(model: &Model, precision: Precision) -> Result<(), EngineError> {
    let problem = match (&model.metadata.quantization, precision) {
        (None, _) if model.integer_graph => "the graph computes in integers (QuantizeLinear/DequantizeLinear) but has \
            no medpatch.quantization record: it was quantized by another tool, and its runtimes would run it in \
            integer kernels whatever precision is asked for; quantize the f32 model with `medpatch quantize`"
            .to_string(),
        (Some(_), Precision::Int8) => return Ok(()),
        (None, p) if p != Precision::Int8 => return Ok(()),
        (None, _) => "the model is not quantized: precision int8 runs a model made by `medpatch quantize` \
                      (an int8 QDQ graph); quantize it first, or use precision f32"
            .to_string(),
        (Some(q), p) => format!(
            "the model is quantized to int8 (`medpatch quantize`, from {}): run it at precision int8, not {p}, or run \
             its f32 original",
            q.reference.name
        ),
    };
    Err(EngineError::Model { origin: model.origin.to_string(), problem })
}

pub fn select(model: &Model, choice: ProviderChoice, options: &BackendOptions) -> Result<Selection, EngineError> {
    check_model_precision(model, options.precision)?;
    if options.keep_f32.is_some() && options.precision != Precision::Bf16 {
        return Err(EngineError::Input(format!(
            "layers kept in f32 are for precision bf16, not {}{}",
            options.precision,
            if options.precision == Precision::Int8 {
                ": an int8 model's were chosen when it was quantized (medpatch quantize --keep)"
            } else {
                ""
            }
        )));
    }
    let reference = if options.precision == Precision::Int8 { int8_reference(model, options)? } else { None };
    let order = match choice {
        ProviderChoice::Auto => Provider::ALL.to_vec(),
        ProviderChoice::Only(p) => vec![p],
    };
    let mut skipped = Vec::new();
    for provider in order {
        match start(model, provider, options, reference.as_ref()) {
            Ok((backend, precision_check)) => return Ok(Selection { backend, skipped, precision_check }),
            Err(reason) if choice == ProviderChoice::Auto => skipped.push((provider, reason)),
            Err(reason) => return Err(EngineError::ProviderUnavailable { provider: provider.name(), reason }),
        }
    }
    Err(EngineError::ProviderUnavailable {
        provider: "auto",
        reason: skipped.iter().map(|(p, r)| format!("{p}: {r}")).collect::<Vec<_>>().join("; "),
    })
}
