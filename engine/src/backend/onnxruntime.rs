use super::BackendError;
use super::{Backend, BackendOptions, Precision, Provider};
use crate::model::Model;
use medpatch_models::contract::INPUT_NAME;
use ort::ep;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Which ONNX Runtime library the process loaded (ONNX Runtime allows one per process).
#[derive(Debug, Clone)]
pub struct OrtLibrary {
    pub path: PathBuf,
}

static ORT: OnceLock<Result<(OrtLibrary, ort::environment::Environment), String>> = OnceLock::new();

/// Where medpatch looks for ONNX Runtime when no path is given: `ORT_DYLIB_PATH`, then
/// `libonnxruntime.so*` beside the executable or in its `lib/` folder.
pub fn default_ort_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe_dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    ort_library_in(&exe_dir).or_else(|| ort_library_in(&exe_dir.join("lib")))
}

/// The ONNX Runtime library (`libonnxruntime.so*`) in `dir`, the highest name when several are:
/// how every front end finds it in a folder (the wheel's `onnxruntime/capi`, beside the executable).
pub fn ort_library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    found.sort();
    found.pop()
}

/// Load ONNX Runtime once per process. Later calls return the first outcome; asking for a
/// different library afterwards is an error rather than a silent mismatch.
fn environment(requested: Option<&Path>) -> Result<&'static ort::environment::Environment, String> {
    let outcome = ORT.get_or_init(|| {
        let path = requested.map(Path::to_path_buf).or_else(default_ort_library).ok_or_else(|| {
            "ONNX Runtime library not found: give the ONNX Runtime library option or set ORT_DYLIB_PATH to libonnxruntime.so \
             (e.g. from the onnxruntime or onnxruntime-gpu 1.31 wheel)"
                .to_string()
        })?;
        let path = super::library_file(&path, "ONNX Runtime")?;
        // ort panics on some load failures (e.g. a version mismatch): keep that inside.
        let env = medpatch_models::panics::catch_quietly(|| -> Result<_, String> {
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("medpatch")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))
        })
        .unwrap_or_else(|panic| Err(format!("cannot load ONNX Runtime from {}: {panic}", path.display())))?;
        Ok((OrtLibrary { path }, env))
    });
    match outcome {
        Ok((lib, env)) => match requested {
            Some(p) if std::fs::canonicalize(p).ok().as_ref() != Some(&lib.path) => {
                Err(format!("ONNX Runtime is already loaded from {}; one library per process", lib.path.display()))
            }
            _ => Ok(env),
        },
        Err(e) => Err(e.clone()),
    }
}

pub struct OrtBackend {
    session: Mutex<Session>,
    provider: Provider,
    precision: Precision,
    patch_shape: [usize; 3],
    classes: usize,
}

impl OrtBackend {
    /// `precision` is one `provider` runs (checked by the caller): f32, fp16 for TensorRT, or int8
    /// (a quantized model: ONNX Runtime fuses its QDQ pairs into integer kernels by itself).
    pub fn new(
        model: &Model,
        provider: Provider,
        precision: Precision,
        options: &BackendOptions,
    ) -> Result<Self, String> {
        let env = environment(options.ort_library.as_deref())?;
        let dispatch = match provider {
            Provider::TensorRt => {
                let mut trt = ep::TensorRT::default()
                    .with_fp16(precision == Precision::Fp16)
                    .with_int8(precision == Precision::Int8);
                if let Some(cache) = &options.tensorrt_cache {
                    std::fs::create_dir_all(cache).map_err(|e| format!("TensorRT cache {}: {e}", cache.display()))?;
                    trt = trt.with_engine_cache(true).with_engine_cache_path(cache.display().to_string());
                }
                Some(trt.build().error_on_failure())
            }
            Provider::Cuda => Some(ep::CUDA::default().build().error_on_failure()),
            Provider::Cpu => None,
            other => return Err(format!("{} is not an ONNX Runtime execution provider", other.describe())),
        };
        let err = |e: ort::Error<ort::session::builder::SessionBuilder>| e.to_string();
        let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
        if options.threads > 0 {
            builder = builder.with_intra_threads(options.threads).map_err(err)?;
        }
        if let Some(dispatch) = dispatch {
            builder = builder.with_execution_providers([dispatch]).map_err(err)?;
        }
        let session = builder.commit_from_memory(&model.bytes).map_err(|e| e.to_string())?;
        Ok(Self {
            session: Mutex::new(session),
            provider,
            precision,
            patch_shape: [model.channels, model.patch_size(), model.patch_size()],
            classes: model.num_classes(),
        })
    }
}

impl Backend for OrtBackend {
    fn provider(&self) -> Provider {
        self.provider
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn run(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        let [c, h, w] = self.patch_shape;
        let fail = |e: ort::Error| BackendError::runtime(self.provider, e);
        let input = TensorRef::from_array_view(([n, c, h, w], patches)).map_err(fail)?;
        // ONNX Runtime sessions are thread-safe, but ort's `run` takes `&mut self`.
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session.run(ort::inputs![INPUT_NAME => input]).map_err(fail)?;
        let (shape, logits) = outputs[0].try_extract_tensor::<f32>().map_err(fail)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        BackendError::check_shape(self.provider, &shape, n, self.classes)?;
        Ok(logits.to_vec())
    }
}
