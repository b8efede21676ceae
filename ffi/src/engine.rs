//! `medpatch_engine`: a model on a provider, shared by any number of threads, and the predict
//! calls (file, encoded bytes, pixel buffer, batch of files).

use crate::options::{medpatch_options, options_ref};
use crate::status::{Failure, arg, free_boxed, guard, medpatch_status, out_arg, path_arg, slice_arg, status_of};
use ::medpatch_engine::decode::GrayImage;
use ::medpatch_engine::{Engine, Input, ModelOrigin, Prediction};
use std::ffi::{CString, c_char};

/// A model on an execution provider (opaque). Thread-safe: predict from any number of threads.
pub struct medpatch_engine {
    pub(crate) engine: Engine,
    class_names: Vec<CString>,
    /// Providers `auto` skipped, and why.
    skipped: Vec<(CString, CString)>,
}

// Defined here, where the engine's predict calls make it; result.rs reads it.
/// One image's prediction (opaque, immutable: readable from any thread).
pub struct medpatch_result {
    pub(crate) prediction: Prediction,
}

impl medpatch_result {
    pub(crate) fn new(prediction: Prediction) -> Self {
        Self { prediction }
    }
}

fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).unwrap_or_default()
}

/// Create an engine from `options` (which the caller still owns and may free at once). Loads
/// the model, then tries the provider(s); with `"auto"` the skipped ones are listed by
/// `medpatch_engine_skipped`. `*out` receives the engine, owned by the caller.
///
/// # Safety
/// `options` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_new(
    options: *const medpatch_options,
    out: *mut *mut medpatch_engine,
) -> medpatch_status {
    guard(|| {
        let options = options_ref(options)?;
        let out = out_arg(out, "out")?;
        let engine = options.builder().build()?;
        let class_names = engine.model().metadata.classes.iter().map(|c| c_string(c)).collect();
        let skipped = engine.skipped_providers().iter().map(|(p, why)| (c_string(p.name()), c_string(why))).collect();
        *out = Box::into_raw(Box::new(medpatch_engine { engine, class_names, skipped }));
        Ok(())
    })
}

/// Free an engine and set `*engine` to NULL. NULL and `*engine == NULL` are accepted (no-op).
/// No other thread may be using the engine.
///
/// # Safety
/// `engine` must be NULL or the address of a pointer from `medpatch_engine_new` (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_free(engine: *mut *mut medpatch_engine) {
    free_boxed(engine);
}

fn get(engine: *const medpatch_engine, out: *mut usize, value: impl FnOnce(&Engine) -> usize) -> medpatch_status {
    guard(|| {
        let engine = arg(engine, "engine")?;
        *out_arg(out, "out")? = value(&engine.engine);
        Ok(())
    })
}

/// Number of classes (model outputs): 14 for MedicalPatchNet.
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_num_classes(
    engine: *const medpatch_engine,
    out: *mut usize,
) -> medpatch_status {
    get(engine, out, |e| e.model().num_classes())
}

/// Side of the square image the model sees, in pixels (512).
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_image_size(
    engine: *const medpatch_engine,
    out: *mut usize,
) -> medpatch_status {
    get(engine, out, |e| e.model().image_size())
}

/// Side of one patch, in pixels (64).
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_patch_size(
    engine: *const medpatch_engine,
    out: *mut usize,
) -> medpatch_status {
    get(engine, out, |e| e.model().patch_size())
}

/// Patches per side (8: an 8×8 grid).
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_grid(engine: *const medpatch_engine, out: *mut usize) -> medpatch_status {
    get(engine, out, |e| e.model().grid())
}

/// Floats in one full-resolution map: classes × image size × image size, the size the
/// `medpatch_result_saliency` and `medpatch_result_dense_map` buffers must have.
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_map_len(engine: *const medpatch_engine, out: *mut usize) -> medpatch_status {
    get(engine, out, |e| e.model().num_classes() * e.model().image_size().pow(2))
}

/// `*out` = 1 if the engine runs the embedded demo model (trained on synthetic images: NOT a
/// diagnostic model), else 0.
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_is_default_model(
    engine: *const medpatch_engine,
    out: *mut bool,
) -> medpatch_status {
    guard(|| {
        let engine = arg(engine, "engine")?;
        *out_arg(out, "out")? = engine.engine.model().origin == ModelOrigin::Embedded;
        Ok(())
    })
}

/// The name of class `index` (0-based, model output order), e.g. `"Cardiomegaly"`. The string
/// belongs to the engine and lives as long as it.
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_class_name(
    engine: *const medpatch_engine,
    index: usize,
    out: *mut *const c_char,
) -> medpatch_status {
    guard(|| {
        let engine = arg(engine, "engine")?;
        let out = out_arg(out, "out")?;
        let name = engine.class_names.get(index).ok_or_else(|| {
            Failure::invalid(format!(
                "class index {index} is out of range (the model has {})",
                engine.class_names.len()
            ))
        })?;
        *out = name.as_ptr();
        Ok(())
    })
}

/// The provider that really runs: `"tensorrt"`, `"cuda"`, `"cpu"`, `"openvino"` or `"tract"`
/// (static string).
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_provider(
    engine: *const medpatch_engine,
    out: *mut *const c_char,
) -> medpatch_status {
    guard(|| {
        let engine = arg(engine, "engine")?;
        *out_arg(out, "out")? = provider_name(engine.engine.provider()).as_ptr();
        Ok(())
    })
}

/// A name of the engine's as a static C string: the engine's names (`Provider::name`,
/// `Precision::name`) are the one list; each is made into a C string once per process.
pub(crate) fn static_c_name(name: &'static str) -> &'static std::ffi::CStr {
    use std::collections::HashMap;
    use std::ffi::CString;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashMap<&'static str, &'static std::ffi::CStr>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    names.entry(name).or_insert_with(|| {
        // Leaked once per distinct name (a handful): the strings live as long as the library.
        Box::leak(CString::new(name).unwrap_or_default().into_boxed_c_str())
    })
}

pub(crate) fn provider_name(provider: ::medpatch_engine::Provider) -> &'static std::ffi::CStr {
    static_c_name(provider.name())
}

/// The precision the backend really computes in: `"f32"`, `"bf16"` or `"fp16"` (static string).
/// A reduced precision passed its self-check against f32 when the engine was created.
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_precision(
    engine: *const medpatch_engine,
    out: *mut *const c_char,
) -> medpatch_status {
    guard(|| {
        let engine = arg(engine, "engine")?;
        *out_arg(out, "out")? = static_c_name(engine.engine.precision().name()).as_ptr();
        Ok(())
    })
}

/// How many providers `auto` tried and skipped before the one that runs.
///
/// # Safety
/// `engine` and `out` must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_skipped_count(
    engine: *const medpatch_engine,
    out: *mut usize,
) -> medpatch_status {
    guard(|| {
        let engine = arg(engine, "engine")?;
        *out_arg(out, "out")? = engine.skipped.len();
        Ok(())
    })
}

/// Skipped provider `index`: its name and the reason it was skipped. Both strings belong to the
/// engine and live as long as it.
///
/// # Safety
/// All pointers must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_engine_skipped(
    engine: *const medpatch_engine,
    index: usize,
    provider: *mut *const c_char,
    reason: *mut *const c_char,
) -> medpatch_status {
    guard(|| {
        let engine = arg(engine, "engine")?;
        let (provider, reason) = (out_arg(provider, "provider")?, out_arg(reason, "reason")?);
        let (name, why) = engine.skipped.get(index).ok_or_else(|| {
            Failure::invalid(format!(
                "skipped-provider index {index} is out of range ({} skipped)",
                engine.skipped.len()
            ))
        })?;
        *provider = name.as_ptr();
        *reason = why.as_ptr();
        Ok(())
    })
}

fn predict_into(
    engine: *const medpatch_engine,
    out: *mut *mut medpatch_result,
    input: impl FnOnce() -> Result<Prediction, Failure>,
) -> medpatch_status {
    guard(|| {
        arg(engine, "engine")?;
        let out = out_arg(out, "out")?;
        let prediction = input()?;
        *out = Box::into_raw(Box::new(medpatch_result::new(prediction)));
        Ok(())
    })
}

/// Predict the X-ray in the file at `path` (PNG, JPEG or DICOM; any bytes on Unix). `*out`
/// receives the result, owned by the caller (`medpatch_result_free`). A missing or unreadable
/// file is `MEDPATCH_STATUS_IO`, a bad image `MEDPATCH_STATUS_DECODE`; the message names the file.
///
/// # Safety
/// All pointers must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_predict_file(
    engine: *const medpatch_engine,
    path: *const c_char,
    out: *mut *mut medpatch_result,
) -> medpatch_status {
    predict_into(engine, out, || {
        let path = path_arg(path, "path")?;
        Ok(arg(engine, "engine")?.engine.predict(Input::Path(&path))?)
    })
}

/// Predict an encoded PNG, JPEG or DICOM file held in memory (`data[0..len]`, not kept).
/// `name` (may be NULL) labels it in error messages.
///
/// # Safety
/// `engine`, `out` must be NULL or valid; `data` NULL or `len` readable bytes; `name` NULL or a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_predict_bytes(
    engine: *const medpatch_engine,
    data: *const u8,
    len: usize,
    name: *const c_char,
    out: *mut *mut medpatch_result,
) -> medpatch_status {
    predict_into(engine, out, || {
        let bytes = slice_arg(data, len, "data")?;
        let name = if name.is_null() {
            "<memory>".to_string()
        } else {
            String::from_utf8_lossy(crate::status::c_str_arg(name, "name")?).into_owned()
        };
        Ok(arg(engine, "engine")?.engine.predict(Input::Bytes { bytes, name: &name })?)
    })
}

/// Predict a grayscale image given as `width × height` float32 pixels, row-major, values in
/// [0, 1] (bright = dense), any size: the seed's centre crop and antialiased resize are applied
/// as for files. Values outside [0, 1] or non-finite are `MEDPATCH_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
/// `engine`, `out` must be NULL or valid; `pixels` NULL or `width * height` readable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_predict_pixels(
    engine: *const medpatch_engine,
    pixels: *const f32,
    width: usize,
    height: usize,
    out: *mut *mut medpatch_result,
) -> medpatch_status {
    predict_into(engine, out, || {
        let count = width.checked_mul(height).ok_or_else(|| Failure::invalid(format!("{width}×{height} overflows")))?;
        if count == 0 {
            return Err(Failure::invalid(format!("the image has no pixels ({width}×{height})")));
        }
        let (w, h) = (u32::try_from(width), u32::try_from(height));
        let (Ok(width), Ok(height)) = (w, h) else {
            return Err(Failure::invalid(format!("{width}×{height} is too large")));
        };
        let pixels = slice_arg(pixels, count, "pixels")?.to_vec();
        let image = GrayImage { width, height, pixels };
        Ok(arg(engine, "engine")?.engine.predict(Input::Image(&image))?)
    })
}

/// Predict `count` files in batches (several images' patches go through the backend together,
/// and the next images are decoded meanwhile).
/// `results[i]` receives the result of `paths[i]` (owned by the caller) or NULL, and
/// `statuses[i]` its status. The call itself returns `MEDPATCH_STATUS_OK` when every item
/// succeeded, else the status of the first failed item; the last error then holds one line per
/// failed item: `"[i] <message>"`. Arrays are written only when the call's arguments are valid.
///
/// # Safety
/// `engine` must be NULL or valid; `paths` NULL or `count` pointers to NUL-terminated strings;
/// `results` and `statuses` NULL or `count` writable elements each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_predict_files(
    engine: *const medpatch_engine,
    paths: *const *const c_char,
    count: usize,
    results: *mut *mut medpatch_result,
    statuses: *mut medpatch_status,
) -> medpatch_status {
    guard(|| {
        let engine = arg(engine, "engine")?;
        let paths = slice_arg(paths, count, "paths")?;
        if count > 0 && (results.is_null() || statuses.is_null()) {
            let which = if results.is_null() { "results" } else { "statuses" };
            return Err(Failure::new(medpatch_status::NullArgument, format!("{which} is NULL")));
        }
        let paths: Vec<_> =
            paths.iter().enumerate().map(|(i, &p)| path_arg(p, &format!("paths[{i}]"))).collect::<Result<_, _>>()?;
        let inputs: Vec<Input<'_>> = paths.iter().map(|p| Input::Path(p)).collect();
        let mut first_failure: Option<medpatch_status> = None;
        let mut messages = Vec::new();
        // Pipelined: the next images are decoded while the backend runs the current batch.
        let per_batch = engine.engine.images_per_batch();
        let _ = engine.engine.predict_pipelined(&inputs, per_batch, |i, outcome| -> Result<(), ()> {
            // SAFETY: both arrays hold `count` writable elements (checked non-NULL above).
            let (result, status) = unsafe { (&mut *results.add(i), &mut *statuses.add(i)) };
            match outcome {
                Ok(prediction) => {
                    *result = Box::into_raw(Box::new(medpatch_result::new(prediction)));
                    *status = medpatch_status::Ok;
                }
                Err(error) => {
                    *result = std::ptr::null_mut();
                    *status = status_of(&error);
                    first_failure.get_or_insert(*status);
                    messages.push(format!("[{i}] {error}"));
                }
            }
            Ok(())
        });
        match first_failure {
            None => Ok(()),
            Some(status) => Err(Failure::new(status, messages.join("\n"))),
        }
    })
}

// The header promises that engines and results may be shared between threads.
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<medpatch_engine>();
    is_send_sync::<medpatch_result>();
};
