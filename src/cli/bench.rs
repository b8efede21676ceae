//! `medpatch bench`: the same model and threads on every available backend, side by side in one
//! run (this is the only fair comparison on a noisy machine), plus the pipeline's stage split,
//! peak memory and the dense-map cost.

use super::EngineArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use medpatch_engine::decode::{self, GrayImage};
use medpatch_engine::{Engine, Precision, Provider, ProviderChoice, Timings};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// X-rays to time the whole pipeline on (default: the bundled one).
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// Timed runs per backend (after one warm-up).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Also time PyTorch eager on CPU: the checkpoint the model was exported from.
    #[arg(long, value_name = "FILE.pt")]
    torch_weights: Option<PathBuf>,
    /// Architecture of --torch-weights.
    #[arg(long, default_value = "efficientnet_v2_s")]
    torch_arch: String,
    /// Python with torch/torchvision (default: .venv/bin/python).
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// Backends to compare, in order: tensorrt, cuda, cpu, openvino, tract, each optionally with
    /// `:PRECISION` (e.g. openvino:bf16, tensorrt:fp16; default --precision). Unavailable ones are
    /// reported and left out.
    #[arg(long, value_delimiter = ',', default_value = "cpu,openvino,openvino:bf16,tract")]
    providers: Vec<String>,
    /// Dense map shift steps to time (0: skip).
    #[arg(long, default_value_t = 8)]
    shift_steps: usize,
}

struct Row {
    name: String,
    median: Duration,
    min: Duration,
    peak_rss_mb: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let images = if args.images.is_empty() {
        // The X-ray bundled with the source tree, when run from it.
        let bundled = PathBuf::from("assets/00001369_000.png");
        if !bundled.exists() {
            bail!("no X-ray to time: pass --image FILE (or run from the medpatch source tree)");
        }
        vec![bundled]
    } else {
        args.images.clone()
    };
    let threads = if args.engine.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.engine.threads
    };
    let mut rows = Vec::new();
    let mut split: Option<(Provider, Timings, usize)> = None;
    let mut prepared: Option<GrayImage> = None;
    let mut fastest: Option<(Duration, Engine)> = None;
    for entry in &args.providers {
        let (name, precision) = match entry.split_once(':') {
            Some((name, precision)) => (name, precision.parse::<Precision>().map_err(anyhow::Error::msg)?),
            None => (entry.as_str(), args.engine.precision),
        };
        let provider = match name.parse::<ProviderChoice>().map_err(anyhow::Error::msg)? {
            ProviderChoice::Only(p) => p,
            ProviderChoice::Auto => bail!("--providers takes explicit providers, not auto"),
        };
        let mut engine_args = args.engine.clone();
        engine_args.provider = ProviderChoice::Only(provider);
        engine_args.precision = precision;
        engine_args.threads = threads;
        let engine = match engine_args.build() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("bench: {provider} at {precision} unavailable: {e:#}");
                continue;
            }
        };
        if let Some(check) = engine.precision_check() {
            eprintln!("bench: {provider}: {check}");
        }
        let image = match &prepared {
            Some(p) => p.clone(),
            None => {
                let decoded = decode::decode_path(&images[0])?;
                let p = engine.prepare(&decoded);
                prepared = Some(p.clone());
                p
            }
        };
        engine.predict_prepared(std::slice::from_ref(&image))?; // warm-up (and tract's plan)
        let mut times = Vec::with_capacity(args.repeats);
        for _ in 0..args.repeats {
            let t = Instant::now();
            for r in engine.predict_prepared(std::slice::from_ref(&image))? {
                r?;
            }
            times.push(t.elapsed());
        }
        times.sort();
        let (median, min) = (times[times.len() / 2], times[0]);
        rows.push(Row {
            name: format!("{provider}: {}, {precision}", provider.describe()),
            median,
            min,
            peak_rss_mb: None,
        });
        if split.is_none() {
            // Whole pipeline on real files: where the time goes outside the backend.
            let mut total = Timings::default();
            let mut n = 0;
            for _ in 0..args.repeats.max(1) {
                for p in engine.predict_paths(&images) {
                    let t = p?.timings;
                    total.decode += t.decode;
                    total.preprocess += t.preprocess;
                    total.tile += t.tile;
                    total.backend += t.backend;
                    total.aggregate += t.aggregate;
                    n += 1;
                }
            }
            split = Some((provider, total, n));
        }
        if fastest.as_ref().is_none_or(|(d, _)| median < *d) {
            fastest = Some((median, engine));
        }
    }
    if rows.is_empty() {
        bail!("no backend could be started");
    }
    if let Some(weights) = &args.torch_weights {
        match torch_reference(&args, weights, threads, prepared.as_ref().expect("an image was prepared")) {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("bench: PyTorch reference failed: {e:#}"),
        }
    }

    let model = fastest.as_ref().map(|(_, e)| e.model().clone()).expect("a backend ran");
    println!(
        "model: {} ({}), {} patches of {}×{} per image, {threads} threads, median of {} runs",
        model.origin,
        model.metadata.architecture,
        model.grid() * model.grid(),
        model.patch_size(),
        model.patch_size(),
        args.repeats
    );
    println!("{:<52} {:>12} {:>12} {:>10} {:>14}", "backend", "median ms", "min ms", "images/s", "vs PyTorch");
    let torch_median = rows.iter().find(|r| r.name.starts_with("pytorch")).map(|r| r.median);
    for row in &rows {
        let ratio =
            torch_median.map_or("".to_string(), |t| format!("{:.2}×", t.as_secs_f64() / row.median.as_secs_f64()));
        println!(
            "{:<52} {:>12.1} {:>12.1} {:>10.2} {:>14}{}",
            row.name,
            ms(row.median),
            ms(row.min),
            1.0 / row.median.as_secs_f64(),
            ratio,
            row.peak_rss_mb.map_or(String::new(), |m| format!("  (peak RSS {m:.0} MB)"))
        );
    }
    let find = |p: &str| rows.iter().find(|r| r.name.starts_with(p)).map(|r| r.median.as_secs_f64());
    if let (Some(ort), Some(tract)) = (find("cpu"), find("tract")) {
        println!("tract / ONNX Runtime CPU time: {:.2}×", tract / ort);
    }
    if let (Some(ort), Some(ov)) = (find("cpu"), find("openvino: OpenVINO CPU, f32")) {
        println!("OpenVINO f32 / ONNX Runtime CPU time: {:.2}×", ov / ort);
    }
    if let (Some(f32), Some(bf16)) = (find("openvino: OpenVINO CPU, f32"), find("openvino: OpenVINO CPU, bf16")) {
        println!("OpenVINO bf16 / f32 time: {:.2}×", bf16 / f32);
    }
    if let Some((provider, t, n)) = split {
        let per = |d: Duration| ms(d) / n as f64;
        let outside = per(t.decode) + per(t.preprocess) + per(t.tile) + per(t.aggregate);
        println!(
            "pipeline split per image ({provider}, {n} runs over {} file(s)): decode {:.2} ms, preprocess {:.2} ms, tile {:.3} ms, backend {:.1} ms, aggregate {:.3} ms",
            images.len(),
            per(t.decode),
            per(t.preprocess),
            per(t.tile),
            per(t.backend),
            per(t.aggregate)
        );
        println!(
            "outside the backend: {:.2} ms = {:.1}% of backend time (decode and preprocess included)",
            outside,
            100.0 * outside / per(t.backend)
        );
    }
    if args.shift_steps > 0 {
        let (_, engine) = fastest.as_ref().expect("a backend ran");
        let dense = engine.dense_map(prepared.as_ref().expect("prepared"), args.shift_steps)?;
        println!(
            "dense map S={} ({} shifted images, {} patches) on {}: {:.2} s",
            args.shift_steps,
            args.shift_steps.pow(2),
            args.shift_steps.pow(2) * 64,
            engine.provider(),
            dense.elapsed.as_secs_f64()
        );
    }
    if let Some(rss) = peak_rss_mb() {
        println!("peak RSS of this process (all Rust backends, models and dense map): {rss:.0} MB");
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// This process's peak resident set (VmHWM), Linux only.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn torch_reference(args: &BenchArgs, weights: &std::path::Path, threads: usize, image: &GrayImage) -> Result<Row> {
    // The reference script lives in the source tree: run from there (as scripts/test.sh does).
    let script = PathBuf::from("tests/python/bench_torch.py");
    if !script.exists() {
        bail!("{} not found: run `medpatch bench --torch-weights` from the medpatch source tree", script.display());
    }
    let python = args.python.clone().unwrap_or_else(|| PathBuf::from(".venv/bin/python"));
    let dir = tempfile::tempdir()?;
    let npy = dir.path().join("image.npy");
    std::fs::write(
        &npy,
        medpatch_engine::render::npy_f32(&[image.height as usize, image.width as usize], &image.pixels),
    )?;
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args([
            "--weights",
            &weights.display().to_string(),
            "--arch",
            &args.torch_arch,
            "--threads",
            &threads.to_string(),
            "--repeats",
            &args.repeats.to_string(),
        ])
        .arg(&npy)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii())?;
    let d = |k: &str| Duration::from_secs_f64(v[k].as_f64().unwrap_or(f64::NAN) / 1e3);
    Ok(Row {
        name: format!("pytorch: eager CPU, torch {}", v["torch"].as_str().unwrap_or("?")),
        median: d("median_ms"),
        min: d("min_ms"),
        peak_rss_mb: v["peak_rss_mb"].as_f64(),
    })
}
