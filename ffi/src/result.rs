//! `medpatch_result`: one image's prediction (immutable), its arrays, and the maps computed from
//! it into caller buffers.

use crate::engine::{medpatch_engine, medpatch_result, provider_name};
use crate::status::{Failure, arg, free_boxed, guard, medpatch_status, out_arg, path_arg};
use ::medpatch_engine::{MapKind, Prediction};
use std::ffi::c_char;

/// Which saliency a map shows. Passed to functions as `uint32_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum medpatch_map_kind {
    /// The patch logits themselves (the paper's raw maps).
    Raw = 0,
    /// Patch logits × sigmoid(image logit) of the class (the paper's scaled maps).
    Scaled = 1,
}

fn map_kind(kind: u32) -> Result<MapKind, Failure> {
    match kind {
        0 => Ok(MapKind::Raw),
        1 => Ok(MapKind::Scaled),
        other => Err(Failure::invalid(format!(
            "map kind {other} is unknown: use MEDPATCH_MAP_KIND_RAW (0) or MEDPATCH_MAP_KIND_SCALED (1)"
        ))),
    }
}

/// Per-stage wall time of one prediction, in milliseconds. Batched stages (tile, backend) are
/// shared out evenly between the images of a batch.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct medpatch_timings {
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub tile_ms: f64,
    pub backend_ms: f64,
    pub aggregate_ms: f64,
}

/// Free a result and set `*result` to NULL. NULL and `*result == NULL` are accepted (no-op).
///
/// # Safety
/// `result` must be NULL or the address of a pointer from a predict call (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_free(result: *mut *mut medpatch_result) {
    free_boxed(result);
}

fn view(
    result: *const medpatch_result,
    data: *mut *const f32,
    len: *mut usize,
    pick: impl FnOnce(&Prediction) -> &[f32],
) -> medpatch_status {
    guard(|| {
        let result = arg(result, "result")?;
        let (data, len) = (out_arg(data, "data")?, out_arg(len, "len")?);
        let values = pick(&result.prediction);
        *data = values.as_ptr();
        *len = values.len();
        Ok(())
    })
}

/// The image's probabilities, sigmoid(logits): `*len` (= classes) floats in model class order.
/// The array belongs to the result and lives as long as it.
///
/// # Safety
/// All pointers must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_probabilities(
    result: *const medpatch_result,
    data: *mut *const f32,
    len: *mut usize,
) -> medpatch_status {
    view(result, data, len, |p| &p.probabilities)
}

/// The image's logits (the mean of its patch logits): `*len` (= classes) floats. Owned by the result.
///
/// # Safety
/// All pointers must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_logits(
    result: *const medpatch_result,
    data: *mut *const f32,
    len: *mut usize,
) -> medpatch_status {
    view(result, data, len, |p| &p.logits)
}

/// The patch logits, the explanation: `[grid][grid][classes]` row-major (patch row, patch column,
/// class), `*len` = grid² × classes floats. Owned by the result.
///
/// # Safety
/// All pointers must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_patch_logits(
    result: *const medpatch_result,
    data: *mut *const f32,
    len: *mut usize,
) -> medpatch_status {
    view(result, data, len, |p| &p.patch_logits)
}

/// The preprocessed image the model saw: `[image size][image size]` row-major, values in [0, 1].
/// Owned by the result.
///
/// # Safety
/// All pointers must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_image(
    result: *const medpatch_result,
    data: *mut *const f32,
    len: *mut usize,
) -> medpatch_status {
    view(result, data, len, |p| &p.image.pixels)
}

/// Per-stage timings of this prediction.
///
/// # Safety
/// All pointers must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_timings(
    result: *const medpatch_result,
    out: *mut medpatch_timings,
) -> medpatch_status {
    guard(|| {
        let t = arg(result, "result")?.prediction.timings;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        *out_arg(out, "out")? = medpatch_timings {
            decode_ms: ms(t.decode),
            preprocess_ms: ms(t.preprocess),
            tile_ms: ms(t.tile),
            backend_ms: ms(t.backend),
            aggregate_ms: ms(t.aggregate),
        };
        Ok(())
    })
}

/// The provider that computed this result (static string).
///
/// # Safety
/// All pointers must be NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_provider(
    result: *const medpatch_result,
    out: *mut *const c_char,
) -> medpatch_status {
    guard(|| {
        let provider = arg(result, "result")?.prediction.provider;
        *out_arg(out, "out")? = provider_name(provider).as_ptr();
        Ok(())
    })
}

/// Check a map request: the result fits the engine's model and the caller's buffer has exactly
/// `medpatch_engine_map_len` floats.
fn map_target<'a>(
    engine: *const medpatch_engine,
    result: *const medpatch_result,
    out: *mut f32,
    out_len: usize,
) -> Result<(&'a medpatch_engine, &'a Prediction, &'a mut [f32]), Failure> {
    let engine = arg(engine, "engine")?;
    let prediction = &arg(result, "result")?.prediction;
    let model = engine.engine.model();
    if prediction.logits.len() != model.num_classes() || prediction.grid != model.grid() {
        return Err(Failure::invalid("the result was made by an engine with a different model"));
    }
    let needed = model.num_classes() * model.image_size().pow(2);
    if out.is_null() {
        return Err(Failure::new(medpatch_status::NullArgument, "out is NULL"));
    }
    if out_len != needed {
        return Err(Failure::new(
            medpatch_status::BufferSize,
            format!(
                "the map buffer holds {out_len} floats; it needs exactly {needed} ({} classes × {side} × {side})",
                model.num_classes(),
                side = model.image_size()
            ),
        ));
    }
    // SAFETY: the caller passes `out_len` writable floats at `out`.
    Ok((engine, prediction, unsafe { std::slice::from_raw_parts_mut(out, out_len) }))
}

/// The saliency map at the model's input resolution, `[classes][size][size]` row-major: each
/// patch's raw or scaled logit over its square (`kind`: a `medpatch_map_kind`). `out` must hold
/// exactly `medpatch_engine_map_len` floats (else `MEDPATCH_STATUS_BUFFER_SIZE`, saying the size).
///
/// # Safety
/// `engine`, `result` must be NULL or valid; `out` NULL or `out_len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_saliency(
    engine: *const medpatch_engine,
    result: *const medpatch_result,
    kind: u32,
    out: *mut f32,
    out_len: usize,
) -> medpatch_status {
    guard(|| {
        let kind = map_kind(kind)?;
        let (engine, prediction, out) = map_target(engine, result, out, out_len)?;
        out.copy_from_slice(&engine.engine.saliency(prediction, kind));
        Ok(())
    })
}

/// The paper's dense shift-averaged map with `shift_steps` S × S shifts (S a power of two from 1
/// to the patch size; S² forward passes of the image: S = 8 is 64 times the cost of a
/// prediction), raw or scaled, `[classes][size][size]` in logits, into `out` of exactly
/// `medpatch_engine_map_len` floats.
///
/// # Safety
/// `engine`, `result` must be NULL or valid; `out` NULL or `out_len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_dense_map(
    engine: *const medpatch_engine,
    result: *const medpatch_result,
    shift_steps: usize,
    kind: u32,
    out: *mut f32,
    out_len: usize,
) -> medpatch_status {
    guard(|| {
        let kind = map_kind(kind)?;
        let (engine, prediction, out) = map_target(engine, result, out, out_len)?;
        out.copy_from_slice(&engine.engine.map(prediction, kind, shift_steps)?);
        Ok(())
    })
}

/// Write the DICOM results of `result` into the folder `out_dir` (made if missing): a TID 1500
/// Comprehensive 3D SR with every finding's probability, a FRACTIONAL segmentation of the patch
/// maps and a secondary-capture overlay per mapped class, all in the study of `source_dicom`, the
/// DICOM file the result was predicted from (`<SOP Instance UID>.sr.dcm`, `.seg.dcm`,
/// `.overlay.<NN>-<class>.dcm`). Mapped classes: those called present (at the model's
/// thresholds, else 0.5), else the most probable. `*written` receives the number of files. A
/// source that is not DICOM is `MEDPATCH_STATUS_INVALID_ARGUMENT`; an unreadable one
/// `MEDPATCH_STATUS_IO`; a folder that cannot be written `MEDPATCH_STATUS_IO`.
///
/// # Safety
/// `engine`, `result` must be NULL or valid; the strings NULL or NUL-terminated; `written` NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn medpatch_result_write_dicom(
    engine: *const medpatch_engine,
    result: *const medpatch_result,
    source_dicom: *const c_char,
    out_dir: *const c_char,
    written: *mut usize,
) -> medpatch_status {
    use medpatch_dicom_out::DicomOutError;
    guard(|| {
        let engine = arg(engine, "engine")?;
        let prediction = &arg(result, "result")?.prediction;
        let source = path_arg(source_dicom, "source_dicom")?;
        let dir = path_arg(out_dir, "out_dir")?;
        let written = out_arg(written, "written")?;
        let files =
            medpatch_dicom_out::write_for_file(&engine.engine, prediction, &source, &dir, None, None).map_err(|e| {
                let status = match e {
                    DicomOutError::NotDicom { .. } | DicomOutError::Findings(_) => medpatch_status::InvalidArgument,
                    DicomOutError::Source { .. } | DicomOutError::Write { .. } => medpatch_status::Io,
                    DicomOutError::Encode(_) => medpatch_status::Internal,
                };
                Failure::new(status, e.to_string())
            })?;
        *written = files.len();
        Ok(())
    })
}
