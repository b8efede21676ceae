//! ONNX Runtime's settings, measured side by side on the full EfficientNetV2-S MedicalPatchNet
//! (random weights, 64 patches = one 512² X-ray): graph optimisation level, intra-op spinning,
//! patches per call, and one 2-thread session against two 1-thread sessions running halves of the
//! batch side by side. What medpatch ships is the first row; the others are what was tried.
//!
//! ```sh
//! ORT_DYLIB_PATH=.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* \
//!     cargo bench -p medpatch-engine --bench ort_tuning [-- ROUNDS]
//! ```
//!
//! Every configuration runs once per round, rounds interleave them (a noisy 2-core machine drifts),
//! and the table shows each one's median over the rounds, in ms per image.

use medpatch_exporter::{ExportOptions, WeightsSource, export};
use medpatch_models::Rng;
use medpatch_testkit::{cpu_summary, median};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::TensorRef;
use std::time::Instant;

const PATCHES_PER_IMAGE: usize = 64;
const PATCH: usize = 64;

struct Config {
    name: &'static str,
    level: GraphOptimizationLevel,
    spinning: bool,
    /// Patches per `run` call.
    per_call: usize,
    /// Sessions running side by side (each with `threads / sessions` intra-op threads).
    sessions: usize,
    threads: usize,
}

const BASE: Config = Config {
    name: "shipped: all optimisations, spinning, 64 patches/call, 1 session × 2 threads",
    level: GraphOptimizationLevel::All,
    spinning: true,
    per_call: 64,
    sessions: 1,
    threads: 2,
};

fn configs() -> Vec<Config> {
    vec![
        BASE,
        Config { name: "optimisation level 2 (extended, no layout)", level: GraphOptimizationLevel::Level2, ..BASE },
        Config { name: "optimisation level 1 (basic)", level: GraphOptimizationLevel::Level1, ..BASE },
        Config { name: "intra-op spinning off", spinning: false, ..BASE },
        Config { name: "32 patches/call (2 calls per image)", per_call: 32, ..BASE },
        Config { name: "128 patches/call (2 images per call)", per_call: 128, ..BASE },
        Config { name: "256 patches/call (4 images per call)", per_call: 256, ..BASE },
        Config { name: "2 sessions × 1 thread, half the batch each, side by side", sessions: 2, ..BASE },
        Config { name: "1 session × 1 thread (scaling reference)", threads: 1, ..BASE },
    ]
}

fn session(env: &Environment, model: &[u8], c: &Config) -> Result<Session, String> {
    let err = |e: ort::Error<SessionBuilder>| e.to_string();
    Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(c.level)
        .map_err(err)?
        .with_intra_threads(c.threads / c.sessions)
        .map_err(err)?
        .with_intra_op_spinning(c.spinning)
        .map_err(err)?
        .commit_from_memory(model)
        .map_err(|e| e.to_string())
}

fn run(session: &mut Session, patches: &[f32]) {
    let n = patches.len() / (PATCH * PATCH);
    let input = TensorRef::from_array_view(([n, 1, PATCH, PATCH], patches)).unwrap();
    let outputs = session.run(ort::inputs!["patches" => input]).unwrap();
    assert!(outputs[0].try_extract_tensor::<f32>().unwrap().1.iter().all(|z| z.is_finite()));
}

/// One measurement: seconds per image for `c`, on `images` images' worth of patches.
fn measure(sessions: &mut [Session], c: &Config, patches: &[f32]) -> f64 {
    let images = patches.len() / (PATCHES_PER_IMAGE * PATCH * PATCH);
    let started = Instant::now();
    for call in patches.chunks(c.per_call * PATCH * PATCH) {
        if sessions.len() == 1 {
            run(&mut sessions[0], call);
        } else {
            let share = call.len().div_ceil(sessions.len());
            std::thread::scope(|scope| {
                for (session, part) in sessions.iter_mut().zip(call.chunks(share)) {
                    scope.spawn(move || run(session, part));
                }
            });
        }
    }
    started.elapsed().as_secs_f64() / images as f64
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(7);
    let library = std::env::var("ORT_DYLIB_PATH").expect("set ORT_DYLIB_PATH to libonnxruntime.so (see the header)");
    let env = ort::init_from(&library).expect("loading ONNX Runtime").with_name("ort_tuning").build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.onnx");
    export(&ExportOptions::new(WeightsSource::Random { seed: 0, num_classes: 14 }, path.clone())).unwrap();
    let model = std::fs::read(&path).unwrap();
    // Four images' worth of patches, so that every batching fills whole calls.
    let mut rng = Rng::new(7);
    let patches: Vec<f32> = (0..4 * PATCHES_PER_IMAGE * PATCH * PATCH).map(|_| rng.rangef(0.0, 1.0)).collect();

    let configs = configs();
    let mut sessions: Vec<Vec<Session>> =
        configs.iter().map(|c| (0..c.sessions).map(|_| session(&env, &model, c).unwrap()).collect()).collect();
    for (s, c) in sessions.iter_mut().zip(&configs) {
        measure(s, c, &patches); // warm-up
    }
    let mut times = vec![Vec::new(); configs.len()];
    for _ in 0..rounds {
        for ((s, c), t) in sessions.iter_mut().zip(&configs).zip(&mut times) {
            t.push(measure(s, c, &patches));
        }
    }
    println!("ONNX Runtime {library}\nCPU: {}\n{rounds} rounds, 4 images per measurement, medians\n", cpu_summary());
    println!("| configuration | ms / image | vs shipped |\n|---|---|---|");
    let base = median(times[0].clone());
    for (c, t) in configs.iter().zip(times) {
        let m = median(t);
        println!("| {} | {:.1} | {:.2}× |", c.name, m * 1e3, base / m);
    }
}
