//! `medpatch_options`: how to build an engine (model, provider, threads, batch size, ONNX Runtime
//! library, TensorRT settings). Every setter checks its value at once.

use crate::status::{
    Failure, arg, c_str_arg, free_boxed, guard, medpatch_status, out_arg, path_arg, slice_arg, utf8_arg,
};
use ::medpatch_engine::{BackendOptions, EngineBuilder, ModelOrigin, ModelSource, ProviderChoice};
use std::ffi::c_char;

/// Engine options (opaque). Create with `medpatch_options_new`, free with `medpatch_options_free`.
/// Not synchronised: use one from one thread at a time.
pub struct medpatch_options {
    pub(crate) model: ModelSource,
    pub(crate) provider: ProviderChoice,
    pub(crate) backend: BackendOptions,
    pub(crate) batch_size: Option<usize>,
}

impl medpatch_options {
    pub(crate) fn builder(&self) -> EngineBuilder {
        let builder = ::medpatch_engine::Engine::builder()
            .model(self.model.clone())
            .provider(self.provider)
            .backend_options(self.backend.clone());
        match self.batch_size {
            Some(patches) => builder.batch_size(patches),
            None => builder,
        }
    }
}

fn with_options(
    options: *mut medpatch_options,
    change: impl FnOnce(&mut medpatch_options) -> Result<(), Failure>,
) -> medpatch_status {
    guard(|| change(out_arg(options, "options")?))
}

/// New options with the defaults: the embedded demo model, provider `auto`, threads 0 (all
/// cores), the engine's default batch size, ONNX Runtime from `ORT_DYLIB_PATH` or beside the
/// executable. `*out` receives the object, owned by the caller.
///
/// # Safety
/// `out` must be NULL or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_new(out: *mut *mut medpatch_options) -> medpatch_status {
    guard(|| {
        let out = out_arg(out, "out")?;
        *out = Box::into_raw(Box::new(medpatch_options {
            model: ModelSource::Default,
            provider: ProviderChoice::Auto,
            backend: BackendOptions::default(),
            batch_size: None,
        }));
        Ok(())
    })
}

/// Free options and set `*options` to NULL. NULL and `*options == NULL` are accepted (no-op).
///
/// # Safety
/// `options` must be NULL or the address of a pointer from `medpatch_options_new` (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_free(options: *mut *mut medpatch_options) {
    free_boxed(options);
}

/// Use the ONNX model at `path` (written by `medpatch export`). The file is read when the engine
/// is created. `path` is a NUL-terminated file name (any bytes on Unix).
///
/// # Safety
/// `options` and `path` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_model_path(
    options: *mut medpatch_options,
    path: *const c_char,
) -> medpatch_status {
    with_options(options, |o| {
        o.model = ModelSource::Path(path_arg(path, "path")?);
        Ok(())
    })
}

/// Use the ONNX model in `data[0..len]` (copied; the caller keeps its buffer). It is checked
/// now: a buffer that is not a medpatch model gives `MEDPATCH_STATUS_MODEL`.
///
/// # Safety
/// `options` must be NULL or valid; `data` NULL or `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_model_bytes(
    options: *mut medpatch_options,
    data: *const u8,
    len: usize,
) -> medpatch_status {
    with_options(options, |o| {
        let bytes = slice_arg(data, len, "data")?;
        if bytes.is_empty() {
            return Err(Failure::invalid("the model buffer is empty"));
        }
        let model = ::medpatch_engine::Model::from_bytes(bytes.into(), ModelOrigin::Memory("<memory>".into()))?;
        o.model = ModelSource::Loaded(model);
        Ok(())
    })
}

/// Use the embedded demo model again (the default; NOT a diagnostic model).
///
/// # Safety
/// `options` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_default_model(options: *mut medpatch_options) -> medpatch_status {
    with_options(options, |o| {
        o.model = ModelSource::Default;
        Ok(())
    })
}

/// The execution provider: `"auto"` (TensorRT → CUDA → ONNX Runtime CPU → OpenVINO → tract, the
/// first that initialises at the requested precision), `"tensorrt"`, `"cuda"`, `"cpu"` (ONNX
/// Runtime's CPU provider), `"openvino"` (OpenVINO's CPU plugin, loaded at run time) or `"tract"`
/// (pure Rust, always available). An explicit provider that cannot run fails engine creation
/// with `MEDPATCH_STATUS_PROVIDER_UNAVAILABLE`; an unknown name is `MEDPATCH_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
/// `options` and `provider` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_provider(
    options: *mut medpatch_options,
    provider: *const c_char,
) -> medpatch_status {
    with_options(options, |o| {
        o.provider = utf8_arg(provider, "provider")?.parse().map_err(Failure::invalid)?;
        Ok(())
    })
}

/// Intra-op threads of the backend (0: all cores).
///
/// # Safety
/// `options` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_threads(
    options: *mut medpatch_options,
    threads: usize,
) -> medpatch_status {
    with_options(options, |o| {
        o.backend.threads = threads;
        Ok(())
    })
}

/// Patches per backend call (64 patches = one 512² image). Must be at least 1.
///
/// # Safety
/// `options` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_batch_size(
    options: *mut medpatch_options,
    patches: usize,
) -> medpatch_status {
    with_options(options, |o| {
        if patches == 0 {
            return Err(Failure::invalid("the batch size must be at least 1 patch"));
        }
        o.batch_size = Some(patches);
        Ok(())
    })
}

/// The ONNX Runtime shared library to load (`libonnxruntime.so.1.31.x`, e.g. from the
/// `onnxruntime` or `onnxruntime-gpu` wheel). Default: `ORT_DYLIB_PATH`, then beside the
/// executable. ONNX Runtime is loaded once per process: the first engine that needs it decides.
///
/// # Safety
/// `options` and `path` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_ort_library(
    options: *mut medpatch_options,
    path: *const c_char,
) -> medpatch_status {
    with_options(options, |o| {
        o.backend.ort_library = Some(path_arg(path, "path")?);
        Ok(())
    })
}

/// The arithmetic precision: `"f32"` (the default: exact, every provider), `"bf16"` (OpenVINO on
/// CPUs with AVX512-BF16 or AMX) or `"fp16"` (TensorRT; tract on ARM CPUs with FP16). A reduced
/// precision is checked against f32 when the engine is created; with provider `"auto"`, providers
/// that cannot run it are skipped.
///
/// # Safety
/// `options` and `precision` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_precision(
    options: *mut medpatch_options,
    precision: *const c_char,
) -> medpatch_status {
    with_options(options, |o| {
        o.backend.precision = utf8_arg(precision, "precision")?.parse().map_err(Failure::invalid)?;
        Ok(())
    })
}

/// At precision `"bf16"`: the layers left in f32, comma-separated: presets `stem`, `head`,
/// `classifier`, `se`, `none`, or layer names such as `features.4.0` (default
/// `"stem,classifier"`). Checked against the model when the engine is created.
///
/// # Safety
/// `options` and `layers` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_keep_f32(
    options: *mut medpatch_options,
    layers: *const c_char,
) -> medpatch_status {
    with_options(options, |o| {
        let layers = utf8_arg(layers, "layers")?;
        o.backend.keep_f32 = Some(layers.split(',').map(|l| l.trim().to_string()).collect());
        Ok(())
    })
}

/// The OpenVINO C library (`libopenvino_c.so*`) or the folder that holds it (e.g. the `openvino`
/// wheel's `openvino/libs`). Default: `OPENVINO_LIB_PATH`, then the active Python environment.
///
/// # Safety
/// `options` and `path` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_openvino_library(
    options: *mut medpatch_options,
    path: *const c_char,
) -> medpatch_status {
    with_options(options, |o| {
        o.backend.openvino_library = Some(path_arg(path, "path")?);
        Ok(())
    })
}

/// TensorRT: cache built engines in the folder `path` (created if missing); building one takes
/// minutes.
///
/// # Safety
/// `options` and `path` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_options_set_tensorrt_cache(
    options: *mut medpatch_options,
    path: *const c_char,
) -> medpatch_status {
    with_options(options, |o| {
        let dir = path_arg(path, "path")?;
        if c_str_arg(path, "path")?.is_empty() {
            return Err(Failure::invalid("the TensorRT cache folder name is empty"));
        }
        o.backend.tensorrt_cache = Some(dir);
        Ok(())
    })
}

/// Read-only view used by the engine module.
pub(crate) fn options_ref<'a>(options: *const medpatch_options) -> Result<&'a medpatch_options, Failure> {
    arg(options, "options")
}
