//! tract's settings, measured side by side on the full EfficientNetV2-S MedicalPatchNet (random
//! weights, 64 patches = one 512² X-ray): convolution layout, patches per plan, threads, and
//! tract's convolution knobs. (tract's own multithreaded executor is behind tract-linalg's
//! `multithread-mm` feature, which medpatch does not enable: the data-parallel split needs none.) What medpatch
//! ships is the first row (`medpatch_engine::backend::tract`); the others are what was tried.
//!
//! ```sh
//! cargo bench -p medpatch-engine --bench tract_tuning [-- ROUNDS]
//! ```
//!
//! Every configuration runs once per round, rounds interleave them (a noisy 2-core machine drifts),
//! and the table shows each one's median over the rounds, in ms per image.

use medpatch_engine::Precision;
use medpatch_engine::backend::tract::{ConvLayout, PATCHES_PER_RUN, optimise};
use medpatch_exporter::{ExportOptions, WeightsSource, export};
use medpatch_models::Rng;
use medpatch_testkit::{cpu_summary, median};
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::knobs::KnobScope;

const PATCHES_PER_IMAGE: usize = 64;
const PATCH: usize = 64;
const THREADS: usize = 2;

struct Config {
    name: &'static str,
    layout: ConvLayout,
    /// Patches per plan run (each thread runs its share in runs of this many).
    per_plan: usize,
    /// Threads, each running its own share of the patches with the (single-threaded) plan.
    parts: usize,
    /// tract knobs set while the plan is optimised.
    knobs: &'static [(&'static str, &'static str)],
}

const BASE: Config = Config {
    name: "shipped: channels-last, 2 threads, runs of 16 patches, data-parallel",
    layout: ConvLayout::ChannelsLast,
    per_plan: PATCHES_PER_RUN,
    parts: THREADS,
    knobs: &[],
};

fn configs() -> Vec<Config> {
    vec![
        BASE,
        Config { name: "channels-first (the ONNX layout, tract's default)", layout: ConvLayout::ChannelsFirst, ..BASE },
        Config { name: "runs of 8 patches", per_plan: 8, ..BASE },
        Config { name: "runs of 32 patches (a thread's half of an image)", per_plan: 32, ..BASE },
        Config { name: "runs of 64 patches (each thread a whole image)", per_plan: 64, ..BASE },
        Config { name: "knob TRACT_ENABLE_BLOCKED_CONV", knobs: &[("TRACT_ENABLE_BLOCKED_CONV", "true")], ..BASE },
        Config {
            name: "knob TRACT_DISABLE_DIRECT_SPATIAL",
            knobs: &[("TRACT_DISABLE_DIRECT_SPATIAL", "true")],
            ..BASE
        },
        Config { name: "1 thread (scaling reference)", parts: 1, ..BASE },
    ]
}

fn plan(model: &InferenceModel, c: &Config) -> TractResult<Arc<TypedSimplePlan>> {
    let shape = [c.per_plan, 1, PATCH, PATCH];
    KnobScope::new(c.knobs.iter().copied())?.enter(|| optimise(model, shape, c.layout, Precision::F32)?.into_runnable())
}

fn run(plan: &Arc<TypedSimplePlan>, patches: &[f32], per_plan: usize) {
    for call in patches.chunks(per_plan * PATCH * PATCH) {
        let input = Tensor::from_shape(&[per_plan, 1, PATCH, PATCH], call).unwrap();
        let outputs = plan.run(tvec!(input.into_tvalue())).unwrap();
        assert!(outputs[0].to_plain_array_view::<f32>().unwrap().iter().all(|z| z.is_finite()));
    }
}

/// One measurement: seconds per image for `c`, on `images` images' worth of patches.
fn measure(plan: &Arc<TypedSimplePlan>, c: &Config, patches: &[f32]) -> f64 {
    let images = patches.len() / (PATCHES_PER_IMAGE * PATCH * PATCH);
    let started = Instant::now();
    let share = patches.len().div_ceil(c.parts);
    std::thread::scope(|scope| {
        for part in patches.chunks(share) {
            scope.spawn(move || run(plan, part, c.per_plan));
        }
    });
    started.elapsed().as_secs_f64() / images as f64
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.onnx");
    export(&ExportOptions::new(WeightsSource::Random { seed: 0, num_classes: 14 }, path.clone())).unwrap();
    let model = tract_onnx::onnx().model_for_path(&path).unwrap();
    // Two images' worth of patches: every configuration's calls come out whole.
    let mut rng = Rng::new(7);
    let patches: Vec<f32> = (0..2 * PATCHES_PER_IMAGE * PATCH * PATCH).map(|_| rng.rangef(0.0, 1.0)).collect();

    let configs = configs();
    let plans: Vec<Arc<TypedSimplePlan>> = configs.iter().map(|c| plan(&model, c).unwrap()).collect();
    for (p, c) in plans.iter().zip(&configs) {
        measure(p, c, &patches); // warm-up
    }
    let mut times = vec![Vec::new(); configs.len()];
    for _ in 0..rounds {
        for ((p, c), t) in plans.iter().zip(&configs).zip(&mut times) {
            t.push(measure(p, c, &patches));
        }
    }
    println!("tract {}\nCPU: {}\n{rounds} rounds, 2 images per measurement, medians\n", tract_version(), cpu_summary());
    println!("| configuration | ms / image | vs shipped |\n|---|---|---|");
    let base = median(times[0].clone());
    for (c, t) in configs.iter().zip(times) {
        let m = median(t);
        println!("| {} | {:.1} | {:.2}× |", c.name, m * 1e3, base / m);
    }
}

/// The tract this was built with, from the workspace's lock file, so that a table says what it measured.
fn tract_version() -> &'static str {
    let lock = include_str!("../../Cargo.lock");
    let entry = lock.split("[[package]]").find(|p| p.contains("name = \"tract-core\"")).unwrap_or_default();
    entry.lines().find_map(|l| l.strip_prefix("version = ")).map_or("?", |v| v.trim_matches('"'))
}
