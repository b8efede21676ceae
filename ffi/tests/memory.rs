//! Memory over many create/predict/free cycles through the C API. In its own test binary (its
//! own process), so that no other test allocates while the resident set is measured.
#![allow(unsafe_code)]

use medpatch::*;
use std::ffi::CString;
use std::path::PathBuf;
use std::ptr::{null, null_mut};

unsafe extern "C" {
    /// glibc: give free heap memory back to the system.
    fn malloc_trim(pad: usize) -> i32;
}

/// This process's resident set in KiB (Linux), after returning free heap pages to the system, so
/// that what remains is memory in use (not allocator caching or fragmentation).
fn rss_kib() -> usize {
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe { malloc_trim(0) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_create_predict_free_cycles_keep_memory_flat() {
    // Each cycle creates an engine on the embedded model with ONNX Runtime's CPU provider (a new
    // session: parse, optimise, allocate), predicts the bundled X-ray from memory, reads the
    // result, and frees everything. ONNX Runtime, not tract, because a tract plan takes ~1 s to
    // optimise and 1,000 of them would not fit the test budget; tract's engines are freed by the
    // same code path.
    let png = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/00001369_000.png")).unwrap();
    let mut pixels = Vec::new();
    let ort = CString::new(std::env::var("ORT_DYLIB_PATH").expect("ORT_DYLIB_PATH (scripts/test.sh sets it)")).unwrap();
    let cycle = |pixels: &mut Vec<f32>| unsafe {
        let mut options = null_mut();
        medpatch_options_new(&mut options);
        medpatch_options_set_provider(options, c"cpu".as_ptr());
        medpatch_options_set_ort_library(options, ort.as_ptr());
        medpatch_options_set_threads(options, 1);
        let mut engine = null_mut();
        let status = medpatch_engine_new(options, &mut engine);
        assert_eq!(status, medpatch_status::Ok, "{:?}", std::ffi::CStr::from_ptr(medpatch_last_error()));
        medpatch_options_free(&mut options);
        let mut result = null_mut();
        assert_eq!(medpatch_predict_bytes(engine, png.as_ptr(), png.len(), null(), &mut result), medpatch_status::Ok);
        let (mut data, mut n) = (null(), 0);
        medpatch_result_image(result, &mut data, &mut n);
        *pixels = std::slice::from_raw_parts(data, n).to_vec();
        medpatch_result_free(&mut result);
        medpatch_engine_free(&mut engine);
    };
    for _ in 0..20 {
        cycle(&mut pixels); // warm-up: allocator pools, thread-locals, lazily built tables
    }
    let before = rss_kib();
    let cycles = std::env::var("MEDPATCH_FFI_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut trace = Vec::new();
    for i in 0..cycles {
        cycle(&mut pixels);
        if (i + 1) % (cycles / 4).max(1) == 0 {
            trace.push(rss_kib());
        }
    }
    let growth = rss_kib() as f64 - before as f64;
    eprintln!("{cycles} create/predict/free cycles: RSS {before} KiB, then {trace:?} KiB ({growth:+.0} KiB)");
    // One leaked engine or result would be ≥ 1 MiB per cycle (the 512² image alone is 1 MiB).
    assert!(growth < 16.0 * 1024.0, "RSS grew by {growth} KiB over {cycles} cycles");
    assert_eq!(pixels.len(), 512 * 512);
}
