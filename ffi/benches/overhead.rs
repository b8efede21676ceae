//! What the C API costs over the Rust API for predicting a file: the same engine, the same file,
//! interleaved rounds (so drift on a noisy machine hits both alike), medians.
//!
//!   cargo bench -p medpatch-ffi --bench overhead            (ORT_DYLIB_PATH set: ONNX Runtime CPU, else tract)
#![allow(unsafe_code)]

use ::medpatch_engine::{Engine, Input, ProviderChoice};
use medpatch::*;
use std::ffi::CString;
use std::path::PathBuf;
use std::ptr::null_mut;
use std::time::{Duration, Instant};

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let xray = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/00001369_000.png");
    let provider = if std::env::var_os("ORT_DYLIB_PATH").is_some() { "cpu" } else { "tract" };
    let rounds: usize = std::env::var("MEDPATCH_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);

    let rust = Engine::builder().provider(provider.parse::<ProviderChoice>().unwrap()).threads(1).build().unwrap();
    let c_engine = unsafe {
        let mut options = null_mut();
        medpatch_options_new(&mut options);
        let name = CString::new(provider).unwrap();
        medpatch_options_set_provider(options, name.as_ptr());
        medpatch_options_set_threads(options, 1);
        let mut engine = null_mut();
        assert_eq!(medpatch_engine_new(options, &mut engine), medpatch_status::Ok);
        medpatch_options_free(&mut options);
        engine
    };
    let path = CString::new(xray.to_str().unwrap()).unwrap();
    let time_rust = || {
        let t = Instant::now();
        rust.predict(Input::Path(&xray)).unwrap();
        t.elapsed()
    };
    let time_c = || unsafe {
        let t = Instant::now();
        let mut result = null_mut();
        assert_eq!(medpatch_predict_file(c_engine, path.as_ptr(), &mut result), medpatch_status::Ok);
        medpatch_result_free(&mut result);
        t.elapsed()
    };
    for _ in 0..3 {
        time_rust();
        time_c();
    }
    let (mut rust_times, mut c_times) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so neither always runs on a warmer cache.
        if round % 2 == 0 {
            rust_times.push(time_rust());
            c_times.push(time_c());
        } else {
            c_times.push(time_c());
            rust_times.push(time_rust());
        }
    }
    let (r, c) = (median(rust_times), median(c_times));
    println!(
        "predict one file ({provider}, 1 thread, median of {rounds}): Rust API {:.2} ms, C API {:.2} ms, overhead {:+.2}%",
        r.as_secs_f64() * 1e3,
        c.as_secs_f64() * 1e3,
        100.0 * (c.as_secs_f64() / r.as_secs_f64() - 1.0)
    );
    let mut engine = c_engine;
    unsafe { medpatch_engine_free(&mut engine) };

    // Four threads predicting at once: sharing one engine (ONNX Runtime's session is behind a
    // lock, tract runs concurrently) against one engine each. Each engine gets 1 intra-op thread.
    let per_thread = rounds.div_ceil(4).max(2);
    let run = |engines: &[Engine]| {
        let t = Instant::now();
        std::thread::scope(|scope| {
            for i in 0..4 {
                let engine = &engines[i % engines.len()];
                let xray = &xray;
                scope.spawn(move || {
                    for _ in 0..per_thread {
                        engine.predict(Input::Path(xray)).unwrap();
                    }
                });
            }
        });
        t.elapsed()
    };
    let build = || Engine::builder().provider(provider.parse::<ProviderChoice>().unwrap()).threads(1).build().unwrap();
    let one = [build()];
    let four: Vec<Engine> = (0..4).map(|_| build()).collect();
    run(&one);
    run(&four);
    let (shared, separate) = (run(&one), run(&four));
    let images = (4 * per_thread) as f64;
    println!(
        "4 threads × {per_thread} images ({provider}): one shared engine {:.1} images/s, four engines {:.1} images/s ({} cores here)",
        images / shared.as_secs_f64(),
        images / separate.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}
