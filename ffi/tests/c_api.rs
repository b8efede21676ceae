//! The C API called as a host would, through the exported functions: every misuse gets its
//! status and message (no crash), outputs are written only on success, threads share one
//! engine, and memory stays flat over many create/predict/free cycles.
#![allow(unsafe_code)]

use medpatch::*;
use std::ffi::{CStr, CString, c_char};
use std::path::PathBuf;
use std::ptr::{null, null_mut};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bundled_xray() -> CString {
    CString::new(repo().join("assets/00001369_000.png").to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(medpatch_last_error()) }.to_string_lossy().into_owned()
}

#[track_caller]
fn expect(status: medpatch_status, want: medpatch_status, message_part: &str) {
    let message = last_error();
    assert_eq!(status, want, "last error: {message}");
    if want != medpatch_status::Ok {
        assert!(message.contains(message_part), "'{message}' should mention '{message_part}'");
    }
}

/// A tract engine on the embedded model (no ONNX Runtime needed), one thread.
fn tract_engine() -> *mut medpatch_engine {
    unsafe {
        let mut options = null_mut();
        expect(medpatch_options_new(&mut options), medpatch_status::Ok, "");
        expect(medpatch_options_set_provider(options, c"tract".as_ptr()), medpatch_status::Ok, "");
        expect(medpatch_options_set_threads(options, 1), medpatch_status::Ok, "");
        let mut engine = null_mut();
        expect(medpatch_engine_new(options, &mut engine), medpatch_status::Ok, "");
        medpatch_options_free(&mut options);
        engine
    }
}

fn logits(result: *const medpatch_result) -> Vec<f32> {
    let (mut data, mut len) = (null(), 0);
    unsafe {
        expect(medpatch_result_logits(result, &mut data, &mut len), medpatch_status::Ok, "");
        std::slice::from_raw_parts(data, len).to_vec()
    }
}

#[test]
fn version_and_status_names() {
    let version = unsafe { CStr::from_ptr(medpatch_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        format!("{MEDPATCH_VERSION_MAJOR}.{MEDPATCH_VERSION_MINOR}.{MEDPATCH_VERSION_PATCH}"),
        env!("CARGO_PKG_VERSION"),
        "the header's version macros follow the crate version"
    );
    let name = |s: i32| unsafe { CStr::from_ptr(medpatch_status_name(s)) }.to_str().unwrap();
    assert_eq!(name(medpatch_status::Decode as i32), "MEDPATCH_STATUS_DECODE");
    assert_eq!(name(medpatch_status::Internal as i32), "MEDPATCH_STATUS_INTERNAL");
    assert_eq!(name(-3), "MEDPATCH_STATUS_UNKNOWN");
    // Every status's name is the header's: `MEDPATCH_STATUS_<NAME> = <value>`.
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/medpatch.h")).unwrap();
    for value in 0..=10 {
        let line = format!("{} = {value},", name(value));
        assert!(header.contains(&line), "'{line}' is not in medpatch.h");
    }
    assert_eq!(name(11), "MEDPATCH_STATUS_UNKNOWN");
}

#[test]
fn null_arguments_are_errors_and_outputs_stay_untouched() {
    unsafe {
        use medpatch_status::{NullArgument as NUL, Ok as OK};
        let engine = tract_engine();
        let mut options = null_mut();
        expect(medpatch_options_new(null_mut()), NUL, "out is NULL");
        expect(medpatch_options_new(&mut options), OK, "");
        expect(medpatch_options_set_model_path(null_mut(), c"m.onnx".as_ptr()), NUL, "options is NULL");
        expect(medpatch_options_set_model_path(options, null()), NUL, "path is NULL");
        expect(medpatch_options_set_model_bytes(options, null(), 4), NUL, "data is NULL");
        expect(medpatch_options_set_default_model(null_mut()), NUL, "options is NULL");
        expect(medpatch_options_set_provider(options, null()), NUL, "provider is NULL");
        expect(medpatch_options_set_threads(null_mut(), 1), NUL, "options is NULL");
        expect(medpatch_options_set_batch_size(null_mut(), 1), NUL, "options is NULL");
        expect(medpatch_options_set_ort_library(options, null()), NUL, "path is NULL");
        expect(medpatch_options_set_precision(null_mut(), c"f32".as_ptr()), NUL, "options is NULL");
        expect(medpatch_options_set_precision(options, null()), NUL, "precision is NULL");
        expect(medpatch_options_set_openvino_library(options, null()), NUL, "path is NULL");
        expect(medpatch_options_set_tensorrt_cache(options, null()), NUL, "path is NULL");
        let mut no_engine = null_mut();
        expect(medpatch_engine_new(null(), &mut no_engine), NUL, "options is NULL");
        expect(medpatch_engine_new(options, null_mut()), NUL, "out is NULL");
        assert!(no_engine.is_null());

        let mut n = 123usize;
        for getter in [
            medpatch_engine_num_classes,
            medpatch_engine_image_size,
            medpatch_engine_patch_size,
            medpatch_engine_grid,
            medpatch_engine_map_len,
            medpatch_engine_skipped_count,
        ] {
            expect(getter(null(), &mut n), NUL, "engine is NULL");
            expect(getter(engine, null_mut()), NUL, "out is NULL");
        }
        assert_eq!(n, 123, "failed calls write no output");
        let mut text: *const c_char = null();
        let mut yes = false;
        expect(medpatch_engine_is_default_model(null(), &mut yes), NUL, "engine is NULL");
        expect(medpatch_engine_class_name(null(), 0, &mut text), NUL, "engine is NULL");
        expect(medpatch_engine_class_name(engine, 0, null_mut()), NUL, "out is NULL");
        expect(medpatch_engine_provider(engine, null_mut()), NUL, "out is NULL");
        expect(medpatch_engine_skipped(engine, 0, null_mut(), &mut text), NUL, "provider is NULL");
        assert!(text.is_null());

        let mut result = null_mut();
        let xray = bundled_xray();
        expect(medpatch_predict_file(null(), xray.as_ptr(), &mut result), NUL, "engine is NULL");
        expect(medpatch_predict_file(engine, null(), &mut result), NUL, "path is NULL");
        expect(medpatch_predict_file(engine, xray.as_ptr(), null_mut()), NUL, "out is NULL");
        expect(medpatch_predict_bytes(engine, null(), 10, null(), &mut result), NUL, "data is NULL");
        expect(medpatch_predict_pixels(engine, null(), 2, 2, &mut result), NUL, "pixels is NULL");
        let paths = [xray.as_ptr()];
        let mut statuses = [OK];
        let mut results = [null_mut()];
        expect(
            medpatch_predict_files(engine, null(), 1, results.as_mut_ptr(), statuses.as_mut_ptr()),
            NUL,
            "paths is NULL",
        );
        expect(
            medpatch_predict_files(engine, paths.as_ptr(), 1, null_mut(), statuses.as_mut_ptr()),
            NUL,
            "results is NULL",
        );
        expect(
            medpatch_predict_files(engine, paths.as_ptr(), 1, results.as_mut_ptr(), null_mut()),
            NUL,
            "statuses is NULL",
        );
        let null_path = [null()];
        expect(
            medpatch_predict_files(engine, null_path.as_ptr(), 1, results.as_mut_ptr(), statuses.as_mut_ptr()),
            NUL,
            "paths[0] is NULL",
        );
        assert!(result.is_null() && results[0].is_null());

        expect(medpatch_predict_file(engine, xray.as_ptr(), &mut result), OK, "");
        let (mut data, mut len) = (null(), 0usize);
        for accessor in
            [medpatch_result_probabilities, medpatch_result_logits, medpatch_result_patch_logits, medpatch_result_image]
        {
            expect(accessor(null(), &mut data, &mut len), NUL, "result is NULL");
            expect(accessor(result, null_mut(), &mut len), NUL, "data is NULL");
            expect(accessor(result, &mut data, null_mut()), NUL, "len is NULL");
        }
        expect(medpatch_result_timings(result, null_mut()), NUL, "out is NULL");
        expect(medpatch_result_provider(null(), &mut text), NUL, "result is NULL");
        let mut map = vec![0f32; 14 * 512 * 512];
        expect(medpatch_result_saliency(null(), result, 0, map.as_mut_ptr(), map.len()), NUL, "engine is NULL");
        expect(medpatch_result_saliency(engine, null(), 0, map.as_mut_ptr(), map.len()), NUL, "result is NULL");
        expect(medpatch_result_saliency(engine, result, 0, null_mut(), map.len()), NUL, "out is NULL");
        expect(medpatch_result_dense_map(engine, result, 1, 0, null_mut(), map.len()), NUL, "out is NULL");
        expect(medpatch_last_error_copy(null_mut(), 0, null_mut()), medpatch_status::BufferSize, "");

        // Free functions: NULL, a NULL pointer, and a second free through the same variable.
        medpatch_result_free(null_mut());
        medpatch_result_free(&mut result);
        assert!(result.is_null());
        medpatch_result_free(&mut result);
        medpatch_options_free(&mut options);
        medpatch_options_free(&mut options);
        medpatch_options_free(null_mut());
        let mut engine = engine;
        medpatch_engine_free(&mut engine);
        assert!(engine.is_null());
        medpatch_engine_free(&mut engine);
        medpatch_engine_free(null_mut());
    }
}

#[test]
fn bad_inputs_get_their_status_and_a_message_naming_them() {
    unsafe {
        use medpatch_status as S;
        let engine = tract_engine();
        let mut result = null_mut();

        let missing = CString::new("no-such-dir/missing.png").unwrap();
        expect(medpatch_predict_file(engine, missing.as_ptr(), &mut result), S::Io, "missing.png");
        // Not UTF-8: a valid file name on Linux, reported with the bytes shown lossily.
        let odd = CString::new(b"no-such-\xff\xfe.png".to_vec()).unwrap();
        expect(medpatch_predict_file(engine, odd.as_ptr(), &mut result), S::Io, "no-such-");
        let garbage = b"GIF89a definitely not an X-ray";
        expect(
            medpatch_predict_bytes(engine, garbage.as_ptr(), garbage.len(), c"upload-17".as_ptr(), &mut result),
            S::Decode,
            "upload-17: unrecognised file format",
        );
        let png = std::fs::read(repo().join("assets/00001369_000.png")).unwrap();
        expect(
            medpatch_predict_bytes(engine, png.as_ptr(), png.len() / 2, null(), &mut result),
            S::Decode,
            "<memory>: corrupt or truncated PNG",
        );
        let pixels = [0.5f32, f32::NAN, 0.1, 0.2];
        expect(
            medpatch_predict_pixels(engine, pixels.as_ptr(), 2, 2, &mut result),
            S::InvalidArgument,
            "outside [0, 1]",
        );
        expect(medpatch_predict_pixels(engine, pixels.as_ptr(), 0, 7, &mut result), S::InvalidArgument, "no pixels");
        expect(
            medpatch_predict_pixels(engine, pixels.as_ptr(), usize::MAX, 2, &mut result),
            S::InvalidArgument,
            "overflows",
        );
        assert!(result.is_null(), "no output on failure");

        let mut options = null_mut();
        medpatch_options_new(&mut options);
        expect(medpatch_options_set_provider(options, c"gpu".as_ptr()), S::InvalidArgument, "unknown provider 'gpu'");
        expect(
            medpatch_options_set_precision(options, c"int4".as_ptr()),
            S::InvalidArgument,
            "unknown precision 'int4'",
        );
        expect(medpatch_options_set_provider(options, c"cuda".as_ptr()), S::Ok, "");
        expect(medpatch_options_set_ort_library(options, c"/nonexistent/libonnxruntime.so".as_ptr()), S::Ok, "");
        let mut other = null_mut();
        expect(medpatch_engine_new(options, &mut other), S::ProviderUnavailable, "provider cuda is not available");
        let not_onnx = b"\x08\x01\x12\x04junk";
        expect(medpatch_options_set_model_bytes(options, not_onnx.as_ptr(), not_onnx.len()), S::Model, "<memory>");
        let model_dir = std::env::temp_dir().join(format!("medpatch-ffi-{}", std::process::id()));
        std::fs::create_dir_all(&model_dir).unwrap();
        let text_model = model_dir.join("notes.onnx");
        std::fs::write(&text_model, "not a model").unwrap();
        let text_model = CString::new(text_model.to_str().unwrap()).unwrap();
        expect(medpatch_options_set_model_path(options, text_model.as_ptr()), S::Ok, "");
        expect(medpatch_options_set_provider(options, c"tract".as_ptr()), S::Ok, "");
        expect(medpatch_engine_new(options, &mut other), S::Model, "notes.onnx");
        assert!(other.is_null());
        medpatch_options_free(&mut options);
        let _ = std::fs::remove_dir_all(model_dir);

        // Wrong buffer sizes: the message says the size needed; nothing is written.
        let xray = bundled_xray();
        expect(medpatch_predict_file(engine, xray.as_ptr(), &mut result), S::Ok, "");
        let mut map = vec![7f32; 14 * 512 * 512 + 1];
        for len in [0, 14 * 512 * 512 - 1, 14 * 512 * 512 + 1] {
            expect(
                medpatch_result_saliency(engine, result, 0, map.as_mut_ptr(), len),
                S::BufferSize,
                "needs exactly 3670016 (14 classes × 512 × 512)",
            );
        }
        expect(
            medpatch_result_saliency(engine, result, 2, map.as_mut_ptr(), 14 * 512 * 512),
            S::InvalidArgument,
            "map kind 2",
        );
        expect(
            medpatch_result_dense_map(engine, result, 3, 0, map.as_mut_ptr(), 14 * 512 * 512),
            S::InvalidArgument,
            "power of two",
        );
        assert!(map.iter().all(|&v| v == 7.0), "failed map calls write nothing");
        expect(medpatch_result_saliency(engine, result, 1, map.as_mut_ptr(), 14 * 512 * 512), S::Ok, "");
        let (mut patch_logits, mut n) = (null(), 0);
        medpatch_result_patch_logits(result, &mut patch_logits, &mut n);
        let patch_logits = std::slice::from_raw_parts(patch_logits, n);
        let probability = 1.0 / (1.0 + (-logits(result)[3]).exp());
        assert!((map[3 * 512 * 512] - patch_logits[3] * probability).abs() < 1e-6, "scaled map, class 3, patch 0");

        // The batch call: one status per item, every failure in the last error.
        let missing_b = CString::new("missing-b.png").unwrap();
        let paths = [xray.as_ptr(), missing.as_ptr(), missing_b.as_ptr()];
        let mut results = [null_mut(); 3];
        let mut statuses = [S::Internal; 3];
        expect(
            medpatch_predict_files(engine, paths.as_ptr(), 3, results.as_mut_ptr(), statuses.as_mut_ptr()),
            S::Io,
            "[1] no-such-dir/missing.png",
        );
        assert!(last_error().contains("[2] missing-b.png"));
        assert_eq!(statuses, [S::Ok, S::Io, S::Io]);
        assert!(!results[0].is_null() && results[1].is_null() && results[2].is_null());
        assert_eq!(logits(results[0]), logits(result), "batched and single predictions agree");
        expect(medpatch_predict_files(engine, paths.as_ptr(), 0, null_mut(), null_mut()), S::Ok, "");
        for r in &mut results {
            medpatch_result_free(r);
        }

        // A forced panic is caught, reported, and the engine goes on working.
        expect(medpatch_test_panic(), S::Panic, "medpatch_test_panic was called");
        let before = logits(result);
        medpatch_result_free(&mut result);
        expect(medpatch_predict_file(engine, xray.as_ptr(), &mut result), S::Ok, "");
        assert_eq!(logits(result), before);

        // The last error, copied into a caller buffer: too small is refused and changes nothing.
        let mut unused = null_mut();
        medpatch_predict_file(engine, missing.as_ptr(), &mut unused);
        let message = last_error();
        let mut needed = 0;
        let mut small = [0 as c_char; 8];
        expect(medpatch_last_error_copy(small.as_mut_ptr(), small.len(), &mut needed), S::BufferSize, "missing.png");
        assert_eq!(needed, message.len() + 1);
        assert_eq!(small, [0; 8]);
        let mut buffer = vec![0 as c_char; needed];
        expect(medpatch_last_error_copy(buffer.as_mut_ptr(), buffer.len(), &mut needed), S::Ok, "");
        assert_eq!(CStr::from_ptr(buffer.as_ptr()).to_str().unwrap(), message);

        medpatch_result_free(&mut result);
        let mut engine = engine;
        medpatch_engine_free(&mut engine);
    }
}

#[test]
fn engine_description() {
    unsafe {
        let mut engine = tract_engine();
        let mut n = 0;
        let get = |f: unsafe extern "C" fn(*const medpatch_engine, *mut usize) -> medpatch_status, e| {
            let mut v = 0;
            expect(f(e, &mut v), medpatch_status::Ok, "");
            v
        };
        assert_eq!(get(medpatch_engine_num_classes, engine), 14);
        assert_eq!(get(medpatch_engine_image_size, engine), 512);
        assert_eq!(get(medpatch_engine_patch_size, engine), 64);
        assert_eq!(get(medpatch_engine_grid, engine), 8);
        assert_eq!(get(medpatch_engine_map_len, engine), 14 * 512 * 512);
        assert_eq!(get(medpatch_engine_skipped_count, engine), 0, "an explicit provider skips nothing");
        let mut name = null();
        expect(medpatch_engine_class_name(engine, 13, &mut name), medpatch_status::Ok, "");
        assert_eq!(CStr::from_ptr(name).to_str().unwrap(), "Support Devices");
        expect(medpatch_engine_class_name(engine, 14, &mut name), medpatch_status::InvalidArgument, "out of range");
        expect(medpatch_engine_provider(engine, &mut name), medpatch_status::Ok, "");
        assert_eq!(CStr::from_ptr(name).to_str().unwrap(), "tract");
        expect(medpatch_engine_precision(engine, &mut name), medpatch_status::Ok, "");
        assert_eq!(CStr::from_ptr(name).to_str().unwrap(), "f32");
        let mut yes = false;
        expect(medpatch_engine_is_default_model(engine, &mut yes), medpatch_status::Ok, "");
        assert!(yes);
        medpatch_engine_free(&mut engine);

        // auto without ONNX Runtime or OpenVINO: lands on tract and says why each earlier provider
        // was skipped.
        let mut options = null_mut();
        medpatch_options_new(&mut options);
        medpatch_options_set_ort_library(options, c"/nonexistent/libonnxruntime.so".as_ptr());
        medpatch_options_set_openvino_library(options, c"/nonexistent/libopenvino_c.so".as_ptr());
        expect(medpatch_engine_new(options, &mut engine), medpatch_status::Ok, "");
        expect(medpatch_engine_provider(engine, &mut name), medpatch_status::Ok, "");
        assert_eq!(CStr::from_ptr(name).to_str().unwrap(), "tract");
        expect(medpatch_engine_skipped_count(engine, &mut n), medpatch_status::Ok, "");
        assert_eq!(n, 4);
        let (mut provider, mut reason) = (null(), null());
        expect(medpatch_engine_skipped(engine, 2, &mut provider, &mut reason), medpatch_status::Ok, "");
        assert_eq!(CStr::from_ptr(provider).to_str().unwrap(), "cpu");
        assert!(CStr::from_ptr(reason).to_str().unwrap().contains("/nonexistent/libonnxruntime.so"));
        expect(medpatch_engine_skipped(engine, 3, &mut provider, &mut reason), medpatch_status::Ok, "");
        assert_eq!(CStr::from_ptr(provider).to_str().unwrap(), "openvino");
        assert!(CStr::from_ptr(reason).to_str().unwrap().contains("/nonexistent/libopenvino_c.so"));
        medpatch_options_free(&mut options);
        medpatch_engine_free(&mut engine);
    }
}

/// The pinned `openvino` wheel's library folder in the repository's venv (scripts/setup.sh).
fn venv_openvino_libs() -> CString {
    let lib = repo().join(".venv/lib");
    let found = std::fs::read_dir(&lib)
        .ok()
        .and_then(|entries| {
            entries.filter_map(|e| e.ok().map(|e| e.path().join("site-packages/openvino/libs"))).find(|p| p.is_dir())
        })
        .unwrap_or_else(|| panic!("no openvino wheel under {}: run scripts/setup.sh", lib.display()));
    CString::new(found.to_str().unwrap()).unwrap()
}

#[test]
fn openvino_and_precision_through_the_c_api() {
    let reference = unsafe {
        let engine = tract_engine();
        let mut result = null_mut();
        expect(medpatch_predict_file(engine, bundled_xray().as_ptr(), &mut result), medpatch_status::Ok, "");
        let l = logits(result);
        medpatch_result_free(&mut result);
        let mut engine = engine;
        medpatch_engine_free(&mut engine);
        l
    };
    unsafe {
        let mut options = null_mut();
        medpatch_options_new(&mut options);
        expect(medpatch_options_set_provider(options, c"openvino".as_ptr()), medpatch_status::Ok, "");
        expect(medpatch_options_set_precision(options, c"f32".as_ptr()), medpatch_status::Ok, "");
        let libs = venv_openvino_libs();
        expect(medpatch_options_set_openvino_library(options, libs.as_ptr()), medpatch_status::Ok, "");
        let mut engine = null_mut();
        expect(medpatch_engine_new(options, &mut engine), medpatch_status::Ok, "");
        let mut name = null();
        expect(medpatch_engine_provider(engine, &mut name), medpatch_status::Ok, "");
        assert_eq!(CStr::from_ptr(name).to_str().unwrap(), "openvino");
        let mut result = null_mut();
        expect(medpatch_predict_file(engine, bundled_xray().as_ptr(), &mut result), medpatch_status::Ok, "");
        let worst = logits(result).iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= 1e-4, "OpenVINO f32 vs tract: max |Δ logit| {worst}");
        medpatch_result_free(&mut result);
        medpatch_engine_free(&mut engine);

        // A precision the provider cannot run: engine creation fails and says why.
        expect(medpatch_options_set_precision(options, c"fp16".as_ptr()), medpatch_status::Ok, "");
        expect(medpatch_engine_new(options, &mut engine), medpatch_status::ProviderUnavailable, "not fp16");
        assert!(engine.is_null());
        // Layers kept in f32 are bf16's: at f32 they are an invalid argument, named.
        expect(medpatch_options_set_precision(options, c"f32".as_ptr()), medpatch_status::Ok, "");
        expect(medpatch_options_set_keep_f32(null_mut(), c"stem".as_ptr()), medpatch_status::NullArgument, "NULL");
        expect(medpatch_options_set_keep_f32(options, c"stem,head".as_ptr()), medpatch_status::Ok, "");
        expect(
            medpatch_engine_new(options, &mut engine),
            medpatch_status::InvalidArgument,
            "layers kept in f32 are for precision bf16, not f32",
        );
        assert!(engine.is_null());
        medpatch_options_free(&mut options);
    }
}

#[test]
fn eight_threads_share_one_engine_and_keep_their_own_errors() {
    struct Shared(*mut medpatch_engine);
    // SAFETY: the C API promises an engine may be used from any number of threads.
    unsafe impl Sync for Shared {}
    let engine = Shared(tract_engine());
    let xray = bundled_xray();
    let alone = unsafe {
        let mut result = null_mut();
        medpatch_predict_file(engine.0, xray.as_ptr(), &mut result);
        let l = logits(result);
        medpatch_result_free(&mut result);
        l
    };
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (engine, xray, alone) = (&engine, &xray, &alone);
            scope.spawn(move || unsafe {
                let missing = CString::new(format!("missing-{t}.png")).unwrap();
                for _ in 0..2 {
                    let mut result = null_mut();
                    expect(medpatch_predict_file(engine.0, xray.as_ptr(), &mut result), medpatch_status::Ok, "");
                    assert_eq!(&logits(result), alone, "thread {t}: same numbers as one thread");
                    medpatch_result_free(&mut result);
                    expect(medpatch_predict_file(engine.0, missing.as_ptr(), &mut result), medpatch_status::Io, "");
                    // Another thread failing meanwhile does not touch this thread's message.
                    std::thread::yield_now();
                    assert!(last_error().contains(&format!("missing-{t}.png")), "thread {t}: {}", last_error());
                }
            });
        }
    });
    let mut engine = engine.0;
    unsafe { medpatch_engine_free(&mut engine) };
}

#[test]
fn dicom_results_are_written_for_a_dicom_source_and_refused_for_others() {
    let dicom = repo().join("../shared/data/cxr/dicom/RG1_UNCR.dcm");
    if !dicom.is_file() {
        eprintln!("skipped: {} is absent", dicom.display());
        return;
    }
    let out = repo().join("target/test-scratch/c-api-dicom");
    let _ = std::fs::remove_dir_all(&out);
    let (source, out_dir) =
        (CString::new(dicom.to_str().unwrap()).unwrap(), CString::new(out.to_str().unwrap()).unwrap());
    unsafe {
        let mut engine = tract_engine();
        let mut result = null_mut();
        expect(medpatch_predict_file(engine, source.as_ptr(), &mut result), medpatch_status::Ok, "");
        let mut written = usize::MAX;
        expect(
            medpatch_result_write_dicom(engine, result, source.as_ptr(), out_dir.as_ptr(), &mut written),
            medpatch_status::Ok,
            "",
        );
        // The SR, the segmentation and at least one overlay (the most probable class, if none is present).
        let files: Vec<PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(written >= 3 && files.len() == written, "{written} reported, {files:?}");
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            assert_eq!(&bytes[128..132], b"DICM", "{}", file.display());
        }
        assert!(files.iter().any(|f| f.to_string_lossy().ends_with(".sr.dcm")));
        // A PNG is no DICOM source: refused, nothing written, the count untouched.
        let mut count = 7;
        expect(
            medpatch_result_write_dicom(engine, result, bundled_xray().as_ptr(), out_dir.as_ptr(), &mut count),
            medpatch_status::InvalidArgument,
            "DICOM results need a DICOM input",
        );
        assert_eq!(count, 7);
        expect(
            medpatch_result_write_dicom(engine, result, null(), out_dir.as_ptr(), &mut count),
            medpatch_status::NullArgument,
            "source_dicom is NULL",
        );
        medpatch_result_free(&mut result);
        medpatch_engine_free(&mut engine);
    }
}
