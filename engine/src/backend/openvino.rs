//! OpenVINO's CPU plugin through the `openvino` crate, linked at run time: medpatch builds and runs
//! without OpenVINO, and this provider is then skipped with the reason.
//!
//! The model is read from memory (the engine's ONNX bytes; OpenVINO's ONNX frontend reads it
//! directly) and compiled once, any batch size, in OpenVINO's throughput mode: a batch is split
//! between the compiled model's infer requests (one per stream), which run side by side. The
//! precision hint is always f32, set explicitly (OpenVINO's CPU default on BF16-capable CPUs is
//! bf16) and checked in the compiled model's report: bf16 is written into the graph instead
//! ([`super::bf16_graph`]), so that chosen layers stay f32, and runs only on CPUs that report BF16
//! (elsewhere OpenVINO would run the bf16 nodes in f32, silently).

use super::{Backend, BackendOptions, Precision, Provider};
use super::{BackendError, bf16_graph::bf16_graph, guard, run_in_parts};
use crate::layers;
use crate::model::Model;
use ::openvino::{
    CompiledModel, Core, DeviceType, Dimension, ElementType, InferRequest, InferenceError, PartialShape, PropertyKey,
    RwPropertyKey, Shape, Tensor,
};
use medpatch_models::panics::catch_quietly;
use prost::Message;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tract_onnx::pb;

/// The environment variable naming the OpenVINO C library (`libopenvino_c.so*`) or its folder.
pub const OPENVINO_LIBRARY_ENV: &str = "OPENVINO_LIB_PATH";

/// The library this process loaded (OpenVINO's functions are process-wide: one library per process).
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Is `name` the OpenVINO C API library, under any of the names its packages use
/// (`libopenvino_c.so`, the pip wheel's `libopenvino_c.so.2641`, `libopenvino_c.2641.dylib`,
/// `openvino_c.dll`)?
fn is_c_library(name: &str) -> bool {
    let rest = name.strip_prefix("libopenvino_c.").or_else(|| name.strip_prefix("openvino_c."));
    rest.is_some_and(|rest| rest == "so" || rest.starts_with("so.") || rest.ends_with("dylib") || rest == "dll")
}

/// The OpenVINO C library in `dir`, if there is one (the highest name when several versions are):
/// how every front end finds it in a folder (the wheel's `openvino/libs`, beside the executable).
pub fn c_library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_c_library))
        .collect();
    found.sort();
    found.pop()
}

/// `openvino/libs` of the pip wheel inside the Python environment at `prefix`.
fn in_python_environment(prefix: &Path) -> Option<PathBuf> {
    // Windows venvs: Lib/site-packages; elsewhere lib/pythonX.Y/site-packages.
    let mut site_packages = vec![prefix.join("Lib/site-packages")];
    if let Ok(entries) = std::fs::read_dir(prefix.join("lib")) {
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
            .collect();
        pythons.sort();
        site_packages.extend(pythons.into_iter().rev().map(|p| p.join("site-packages")));
    }
    site_packages.iter().find_map(|sp| c_library_in(&sp.join("openvino/libs")))
}

/// Where medpatch looks for OpenVINO when no path is given, in order:
/// 1. `OPENVINO_LIB_PATH`: the C library (`libopenvino_c.so*`) or the folder holding it;
/// 2. beside the executable, or in its `lib/` folder;
/// 3. the active Python environment (`$VIRTUAL_ENV`, then `$CONDA_PREFIX`):
///    `site-packages/openvino/libs/` of the `openvino` wheel (`pip install openvino`), whose
///    library has a versioned name (`libopenvino_c.so.2641` for 2026.4.1);
/// 4. an OpenVINO installation (`setupvars.sh`'s `INTEL_OPENVINO_DIR`, `LD_LIBRARY_PATH`, the
///    system packages' folders), as `openvino-finder` finds it.
pub fn default_openvino_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(OPENVINO_LIBRARY_ENV).filter(|p| !p.is_empty()) {
        // A folder is resolved, and a wrong value reported, by the loader.
        return Some(PathBuf::from(p));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf))
        && let Some(p) = c_library_in(&exe_dir).or_else(|| c_library_in(&exe_dir.join("lib")))
    {
        return Some(p);
    }
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) =
            std::env::var_os(var).filter(|p| !p.is_empty()).and_then(|p| in_python_environment(Path::new(&p)))
        {
            return Some(p);
        }
    }
    catch_quietly(openvino_sys::library::find).ok().flatten().filter(|p| p.is_file())
}

fn not_found() -> String {
    format!(
        "OpenVINO library not found: `pip install openvino` (2025.1 or newer) into the active Python environment \
         ($VIRTUAL_ENV or $CONDA_PREFIX), or give the OpenVINO library option or set {OPENVINO_LIBRARY_ENV} to its \
         libopenvino_c.so* (in site-packages/openvino/libs/), or put that library beside medpatch"
    )
}

/// Load the OpenVINO C library once per process: `requested`, else [`default_openvino_library`].
/// A failed load is not remembered (a later call may name a good library); asking for another
/// library once one is loaded is an error rather than a silent mismatch.
fn load(requested: Option<&Path>) -> Result<PathBuf, String> {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let path = match (requested, &*loaded) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(current)) => return Ok(current.clone()),
        (None, None) => default_openvino_library().ok_or_else(not_found)?,
    };
    // A folder stands for the library in it (the wheel's has a versioned name).
    let path = if path.is_dir() {
        c_library_in(&path)
            .ok_or_else(|| format!("no OpenVINO C library (libopenvino_c.so*) in the folder {}", path.display()))?
    } else {
        path
    };
    let path = super::library_file(&path, "OpenVINO").map_err(|e| format!("{e}. {}", not_found()))?;
    if let Some(current) = &*loaded {
        if *current != path {
            return Err(format!(
                "OpenVINO is already loaded from {}; one library per process (asked for {})",
                current.display(),
                path.display()
            ));
        }
        return Ok(path);
    }
    let attempt = catch_quietly(|| openvino_sys::library::load_from(path.clone())).unwrap_or_else(Err);
    attempt.map_err(|e| format!("cannot load OpenVINO from {}: {e}", path.display()))?;
    *loaded = Some(path.clone());
    Ok(path)
}

pub struct OpenVinoBackend {
    /// One per OpenVINO stream; a batch is split between them and they run side by side.
    requests: Vec<Mutex<InferRequest>>,
    // Dropped after the requests, in this order. (Mutexes only to make them Sync; never locked.)
    _compiled: Mutex<CompiledModel>,
    _core: Mutex<Core>,
    precision: Precision,
    /// bf16: the layers left in f32.
    kept_f32: Vec<String>,
    patch_shape: [usize; 3],
    classes: usize,
}

/// The OpenVINO library this process loaded, if any.
pub fn loaded_openvino_library() -> Option<PathBuf> {
    LOADED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn ov_err(what: &'static str) -> impl Fn(InferenceError) -> String {
    move |e| format!("OpenVINO {what}: {e}")
}

fn ov_run_err(what: &'static str) -> impl Fn(InferenceError) -> BackendError {
    move |e| BackendError::runtime(Provider::OpenVino, format!("{what}: {e}"))
}

impl OpenVinoBackend {
    pub fn new(model: &Model, precision: Precision, options: &BackendOptions) -> Result<Self, String> {
        let library = load(options.openvino_library.as_deref())?;
        guard(|| Self::start(model, precision, options, &library), |panic| format!("OpenVINO: {panic}"))
    }

    fn start(model: &Model, precision: Precision, options: &BackendOptions, library: &Path) -> Result<Self, String> {
        let mut core = Core::new().map_err(|e| format!("OpenVINO from {}: {e}", library.display()))?;
        let cpu = DeviceType::CPU;
        if precision == Precision::Bf16 {
            let capabilities =
                core.get_property(&cpu, &PropertyKey::DeviceCapabilities).map_err(ov_err("capabilities"))?;
            if !capabilities.split([' ', ',']).any(|c| c == "BF16") {
                let name = core.get_property(&cpu, &PropertyKey::DeviceFullName).unwrap_or_else(|_| "this CPU".into());
                return Err(format!(
                    "{name} does not report BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES ({capabilities}): bf16 needs a \
                     CPU with AVX512-BF16 or AMX; use precision f32"
                ));
            }
        }
        // Always f32, explicitly: the CPU plugin's default on BF16-capable CPUs is bf16. bf16 is
        // the graph's (below); int8 is the model's (its QDQ pairs become OpenVINO's FakeQuantize
        // and run in integer kernels).
        core.set_property(&cpu, &RwPropertyKey::HintInferencePrecision, "f32").map_err(ov_err("precision hint"))?;
        if options.threads > 0 {
            core.set_property(&cpu, &RwPropertyKey::InferenceNumThreads, &options.threads.to_string())
                .map_err(ov_err("threads"))?;
        }
        // Several streams, each running a share of the batch on fewer threads, beat all threads
        // on one request for 64×64 patches (measured: docs/speed.md).
        core.set_property(&cpu, &RwPropertyKey::HintPerformanceMode, "THROUGHPUT")
            .map_err(ov_err("performance hint"))?;
        let (graph, kept_f32) = match precision {
            Precision::Bf16 => {
                let (graph, kept) = mixed_precision_graph(model, options.keep_f32.as_deref())?;
                (Cow::Owned(graph), kept)
            }
            _ => (Cow::Borrowed(&model.bytes[..]), Vec::new()),
        };
        let mut ov_model = core.read_model_from_buffer(&graph, None).map_err(ov_err("cannot read the model"))?;
        drop(graph);
        // Any batch size, every other dimension static: one compiled model serves every batch.
        let [c, p] = [model.channels as i64, model.patch_size() as i64];
        let dims = [Dimension::new(-1, -1), Dimension::new(c, c), Dimension::new(p, p), Dimension::new(p, p)];
        let shape = PartialShape::new(4, &dims).map_err(ov_err("shape"))?;
        ov_model.reshape_single_input(&shape).map_err(ov_err("cannot reshape the model"))?;
        let mut compiled = core.compile_model(&ov_model, cpu).map_err(ov_err("cannot compile the model"))?;
        let hint = compiled.get_property(&PropertyKey::Rw(RwPropertyKey::HintInferencePrecision));
        let hint = hint.map_err(ov_err("precision"))?.to_string();
        if !matches!(hint.trim().to_ascii_lowercase().as_str(), "f32" | "float32") {
            return Err(format!("OpenVINO compiled the model at {hint}, not at the f32 it was asked for"));
        }
        let streams = compiled.get_property(&PropertyKey::OptimalNumberOfInferRequests).map_err(ov_err("streams"))?;
        let streams = streams.trim().parse::<usize>().unwrap_or(1).clamp(1, 64);
        let requests = (0..streams)
            .map(|_| compiled.create_infer_request().map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ov_err("cannot create an infer request"))?;
        Ok(Self {
            requests,
            _compiled: Mutex::new(compiled),
            _core: Mutex::new(core),
            precision,
            kept_f32,
            patch_shape: [model.channels, model.patch_size(), model.patch_size()],
            classes: model.num_classes(),
        })
    }

    fn infer(&self, request: &Mutex<InferRequest>, patches: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        let [c, h, w] = self.patch_shape;
        let shape = Shape::new(&[n as i64, c as i64, h as i64, w as i64]).map_err(ov_run_err("shape"))?;
        let mut input = Tensor::new(ElementType::F32, &shape).map_err(ov_run_err("input tensor"))?;
        let data = input.get_data_mut::<f32>().map_err(ov_run_err("input tensor"))?;
        if data.len() != patches.len() {
            return Err(BackendError::runtime(
                Provider::OpenVino,
                format!("the input tensor holds {} values, not {}", data.len(), patches.len()),
            ));
        }
        data.copy_from_slice(patches);
        let mut request = request.lock().unwrap_or_else(|p| p.into_inner());
        request.set_input_tensor(&input).map_err(ov_run_err("input"))?;
        request.infer().map_err(ov_run_err("inference"))?;
        let output = request.get_output_tensor_by_index(0).map_err(ov_run_err("output"))?;
        let dims = output.get_shape().map_err(ov_run_err("output shape"))?.get_dimensions().to_vec();
        let dims: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
        BackendError::check_shape(Provider::OpenVino, &dims, n, self.classes)?;
        Ok(output.get_data::<f32>().map_err(ov_run_err("output"))?.to_vec())
    }
}

/// `model` with every layer in bf16 but those `keep` names (default [`layers::DEFAULT_KEEP`]), and
/// the layers kept.
fn mixed_precision_graph(model: &Model, keep: Option<&[String]>) -> Result<(Vec<u8>, Vec<String>), String> {
    let proto = pb::ModelProto::decode(&*model.bytes).map_err(|e| format!("not an ONNX model ({e})"))?;
    let default_keep = layers::DEFAULT_KEEP.map(String::from);
    let graph = proto.graph.as_ref().ok_or("the model has no graph")?;
    let kept = layers::expand(keep.unwrap_or(&default_keep), &model.metadata.architecture, graph)
        .map_err(|e| format!("layers to keep in f32: {e}"))?;
    let (bytes, _) = bf16_graph(proto, &|node| kept.iter().any(|layer| layers::belongs(node, layer)))?;
    Ok((bytes, kept))
}

impl Backend for OpenVinoBackend {
    fn provider(&self) -> Provider {
        Provider::OpenVino
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn kept_f32(&self) -> &[String] {
        &self.kept_f32
    }

    fn run(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        // One contiguous share of the batch per stream, run side by side; no panic of the
        // `openvino` crate crosses the library boundary.
        let per_patch: usize = self.patch_shape.iter().product();
        guard(
            || {
                run_in_parts(Provider::OpenVino, patches, n, per_patch, self.requests.len(), |k, part, m| {
                    self.infer(&self.requests[k], part, m)
                })
            },
            |panic| BackendError::runtime(Provider::OpenVino, panic),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_library_names_of_every_package_are_recognised() {
        for name in [
            "libopenvino_c.so",
            "libopenvino_c.so.2641",
            "libopenvino_c.so.2026.4.1",
            "libopenvino_c.2641.dylib",
            "openvino_c.dll",
        ] {
            assert!(is_c_library(name), "{name}");
        }
        for name in ["libopenvino.so.2641", "libopenvino_c.pc", "libopenvino_onnx_frontend.so.2641", "openvino_c.h"] {
            assert!(!is_c_library(name), "{name}");
        }
    }
}
