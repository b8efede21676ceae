//! Memory over many create/predict/free cycles through the C API. In its own test binary (its
//! own process), so that no other test allocates while memory is measured.
//!
//! Two measures, because one is exact and the other is not:
//! - the bytes the Rust side holds (engine, options, result, last error), counted by this binary's
//!   global allocator: exact, so any handle the C API forgets to free shows as growth;
//! - the resident set, which also sees ONNX Runtime's own (C++) allocations, e.g. a session that
//!   is never released, but moves by tens of MiB either way with the allocator's arenas (a CI run
//!   saw 44–73 MiB around a 50 MiB start over 1,000 cycles). So it is sampled often and judged by
//!   its least-squares slope, against a bound far below one leaked session per cycle.
#![allow(unsafe_code)]

use medpatch::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CString;
use std::path::PathBuf;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the bytes currently allocated through it.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

unsafe extern "C" {
    /// glibc: give free heap memory back to the system.
    fn malloc_trim(pad: usize) -> i32;
}

/// This process's resident set in KiB (Linux), after returning free heap pages to the system.
fn rss_kib() -> f64 {
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe { malloc_trim(0) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Least-squares slope of `ys` against `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    cov / var
}

#[test]
fn a_thousand_create_predict_free_cycles_keep_memory_flat() {
    // Each cycle creates an engine on the embedded model with ONNX Runtime's CPU provider (a new
    // session: parse, optimise, allocate), predicts the bundled X-ray from memory, reads the
    // result, and frees everything. ONNX Runtime, not tract, because a tract plan takes ~1 s to
    // optimise and 1,000 of them would not fit the test budget; tract's engines are freed by the
    // same code path.
    let png = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/00001369_000.png")).unwrap();
    let model_bytes =
        std::fs::metadata(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default/medpatch-default.onnx"))
            .unwrap()
            .len() as f64;
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
        pixels.clear();
        pixels.extend_from_slice(std::slice::from_raw_parts(data, n));
        medpatch_result_free(&mut result);
        medpatch_engine_free(&mut engine);
    };
    for _ in 0..20 {
        cycle(&mut pixels); // warm-up: allocator pools, thread-locals, lazily built tables
    }
    let cycles: usize = std::env::var("MEDPATCH_FFI_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let every = (cycles / 40).max(1);
    // The samples' vectors are allocated before counting starts: their growth is not the C API's.
    let (mut at, mut rss) = (Vec::with_capacity(cycles / every + 1), Vec::with_capacity(cycles / every + 1));
    at.push(0.0);
    rss.push(rss_kib());
    let live_before = LIVE_BYTES.load(Ordering::Relaxed);
    for i in 1..=cycles {
        cycle(&mut pixels);
        if i % every == 0 {
            at.push(i as f64);
            rss.push(rss_kib());
        }
    }
    let live_growth = LIVE_BYTES.load(Ordering::Relaxed) - live_before;
    let rss_per_cycle = slope(&at, &rss) * 1024.0; // bytes
    let (lo, hi) = rss.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    eprintln!(
        "{cycles} create/predict/free cycles: Rust heap {live_growth:+} B; RSS {:.0} KiB at the start, {lo:.0}–{hi:.0} KiB over the run, slope {rss_per_cycle:+.0} B/cycle",
        rss[0]
    );
    assert_eq!(pixels.len(), 512 * 512);
    // Exact: the Rust side holds nothing more than before (a few bytes of slack for a lazily
    // grown table; one forgotten result alone would be ≥ 1 MiB, its 512² image).
    assert!(live_growth < 4096, "the Rust heap grew by {live_growth} B over {cycles} cycles: a handle is not freed");
    // Statistical: a leaked ONNX Runtime session per cycle would hold at least the model's
    // weights (~2 MB); the bound is a tenth of that.
    assert!(
        rss_per_cycle < model_bytes / 10.0,
        "RSS grows by {rss_per_cycle:.0} B per cycle (model {model_bytes} B): something is not released"
    );
}
