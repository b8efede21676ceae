//! `medpatch bench`: the same model and threads on every available backend, side by side in one
//! run (the only fair comparison on a noisy machine): one-image latency, folder throughput end to
//! end against the bare backbone, peak memory, the pipeline's stage split and the dense-map cost;
//! plus, when the Python environment has them, onnxruntime-python, OpenVINO-python and PyTorch
//! eager on the same model, each in its own process. A markdown table, or `--json`.

use super::EngineArgs;
use anyhow::{Context, Result, bail};
use clap::Args;
use medpatch_engine::decode::{self, GrayImage};
use medpatch_engine::{Engine, Input, Precision, Provider, ProviderChoice, Timings};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// X-rays: the first times one-image latency, all of them folder throughput (default: the
    /// bundled one; pass a folder's files, e.g. ../shared/data/cxr/nih/images/*.png).
    #[arg(long = "image", value_name = "FILE", num_args = 1..)]
    images: Vec<PathBuf>,
    /// Timed runs per backend (after one warm-up).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Backends to compare, in order: tensorrt, cuda, cpu, openvino, tract, each optionally with
    /// `:PRECISION` (e.g. openvino:bf16, tensorrt:fp16, cpu:int8; default --precision). Unavailable
    /// ones are reported and left out.
    #[arg(long, value_delimiter = ',', default_value = "cpu,openvino,openvino:bf16,tract")]
    providers: Vec<String>,
    /// The int8 model (from `medpatch quantize --model` of this one) that rows at int8 run, so
    /// that f32 and int8 are timed side by side in one run.
    #[arg(long, value_name = "FILE.onnx")]
    int8_model: Option<PathBuf>,
    /// Python runtimes to compare on the same ONNX model (each skipped, with the reason, when the
    /// Python environment lacks it): onnxruntime, openvino, openvino:bf16, and onnxruntime:int8,
    /// openvino:int8 on --int8-model; `none` for none.
    #[arg(long, value_delimiter = ',', default_value = "onnxruntime,openvino,openvino:bf16")]
    python_runtimes: Vec<String>,
    /// Also time PyTorch eager on CPU: the checkpoint the model was exported from.
    #[arg(long, value_name = "FILE.pt")]
    torch_weights: Option<PathBuf>,
    /// Architecture of --torch-weights.
    #[arg(long, default_value = "efficientnet_v2_s")]
    torch_arch: String,
    /// Python for the Python rows (default: .venv/bin/python, the test environment's).
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// Dense map shift steps to time on the fastest backend (0: skip).
    #[arg(long, default_value_t = 8)]
    shift_steps: usize,
    /// Print one JSON document instead of the markdown report.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    name: String,
    /// One image (64 patches), preprocessed beforehand: backend, tiling and the logit mean.
    latency_median_ms: f64,
    latency_min_ms: f64,
    /// The whole pipeline over every --image file: decode and preprocessing included.
    throughput_images_per_s: Option<f64>,
    /// The same images already preprocessed, in the same batches: what the backend allows.
    backbone_images_per_s: Option<f64>,
    /// Peak RSS of the process that ran it (Python rows: their own process).
    peak_rss_mb: Option<f64>,
    /// Largest |Δ| of the 14 image logits against the first medpatch f32 row, same image.
    max_abs_logit_diff: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    cpu: String,
    cpu_flags: Vec<String>,
    cores: usize,
    threads: usize,
    model: String,
    images: usize,
    repeats: usize,
    rows: Vec<Row>,
    skipped: Vec<String>,
    pipeline_split_ms: Option<Split>,
    dense_map: Option<DenseTiming>,
    /// This process's peak RSS: every medpatch backend, the models and the dense map together.
    medpatch_peak_rss_mb: Option<f64>,
}

#[derive(Serialize)]
struct Split {
    provider: String,
    decode: f64,
    preprocess: f64,
    tile: f64,
    backend: f64,
    aggregate: f64,
}

#[derive(Serialize)]
struct DenseTiming {
    provider: String,
    shift_steps: usize,
    seconds: f64,
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
    let mut rows: Vec<Row> = Vec::new();
    let mut skipped = Vec::new();
    let mut split: Option<Split> = None;
    let mut prepared: Option<Vec<GrayImage>> = None;
    let mut reference: Option<Vec<f32>> = None;
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
        if precision != Precision::Bf16 {
            engine_args.keep_f32 = None; // bf16's layers kept in f32: the other rows have none
        }
        if precision == Precision::Int8 && args.int8_model.is_some() {
            engine_args.model = args.int8_model.clone();
        }
        let engine = match engine_args.build() {
            Ok(e) => e,
            Err(e) => {
                skipped.push(format!("{provider} at {precision}: {e:#}"));
                continue;
            }
        };
        if let Some(check) = engine.precision_check() {
            eprintln!("bench: {provider}: {check}");
        }
        if prepared.is_none() {
            let mut all = Vec::with_capacity(images.len());
            for path in &images {
                all.push(engine.prepare(&decode::decode_path(path)?));
            }
            prepared = Some(all);
        }
        let ready = prepared.as_deref().expect("prepared above");
        let one = std::slice::from_ref(&ready[0]);
        let logits = first_logits(&engine, one)?; // warm-up (and tract's plan)
        let mut times = Vec::with_capacity(args.repeats);
        for _ in 0..args.repeats {
            let t = Instant::now();
            first_logits(&engine, one)?;
            times.push(t.elapsed());
        }
        times.sort();
        let (median, min) = (times[times.len() / 2], times[0]);
        let max_abs_logit_diff = match &reference {
            Some(r) => Some(max_abs_diff(r, &logits)),
            None if precision == Precision::F32 => {
                reference = Some(logits);
                Some(0.0)
            }
            None => None,
        };
        let (throughput, backbone) = throughput(&engine, &images, ready)?;
        rows.push(Row {
            name: format!("medpatch {provider}: {}, {precision}", provider.describe()),
            latency_median_ms: ms(median),
            latency_min_ms: ms(min),
            throughput_images_per_s: Some(throughput),
            backbone_images_per_s: Some(backbone),
            peak_rss_mb: None,
            max_abs_logit_diff,
        });
        if split.is_none() {
            split = Some(pipeline_split(&engine, provider, &images, args.repeats)?);
        }
        if fastest.as_ref().is_none_or(|(d, _)| median < *d) {
            fastest = Some((median, engine));
        }
    }
    let Some((_, fastest)) = fastest else { bail!("no backend could be started:\n  {}", skipped.join("\n  ")) };
    let prepared = prepared.expect("a backend ran");
    let model = fastest.model().clone();

    let python = args.python.clone().unwrap_or_else(|| PathBuf::from(".venv/bin/python"));
    let python_runtimes: Vec<&String> = args.python_runtimes.iter().filter(|r| r.as_str() != "none").collect();
    if !python_runtimes.is_empty() || args.torch_weights.is_some() {
        let dir = tempfile::tempdir()?;
        let npy = dir.path().join("image.npy");
        let image = &prepared[0];
        let shape = [image.height as usize, image.width as usize];
        std::fs::write(&npy, medpatch_engine::render::npy_f32(&shape, &image.pixels))?;
        let model_path = match &args.engine.model {
            Some(p) => p.clone(),
            None => {
                let p = dir.path().join("model.onnx");
                std::fs::write(&p, &model.bytes)?;
                p
            }
        };
        for runtime in python_runtimes {
            let (name, precision) = runtime.split_once(':').unwrap_or((runtime, "f32"));
            let model_path = match (precision, &args.int8_model) {
                ("int8", Some(int8)) => int8.clone(),
                ("int8", None) => {
                    skipped.push(format!("{runtime} (Python): needs --int8-model"));
                    continue;
                }
                _ => model_path.clone(),
            };
            let script_args = [
                "--runtime",
                name,
                "--precision",
                precision,
                "--model",
                &model_path.display().to_string(),
                "--patch",
                &model.patch_size().to_string(),
            ];
            match python_row(&python, "bench_runtimes.py", &script_args, threads, args.repeats, &npy) {
                Ok((mut row, logits)) => {
                    row.max_abs_logit_diff = reference.as_ref().zip(logits).map(|(r, l)| max_abs_diff(r, &l));
                    rows.push(row)
                }
                Err(e) => skipped.push(format!("{runtime} (Python): {e:#}")),
            }
        }
        if let Some(weights) = &args.torch_weights {
            let script_args = ["--weights", &weights.display().to_string(), "--arch", &args.torch_arch];
            match python_row(&python, "bench_torch.py", &script_args, threads, args.repeats, &npy) {
                Ok((row, _)) => rows.push(row),
                Err(e) => skipped.push(format!("PyTorch: {e:#}")),
            }
        }
    }

    let dense_map = if args.shift_steps > 0 {
        let dense = fastest.dense_map(&prepared[0], args.shift_steps)?;
        Some(DenseTiming {
            provider: fastest.provider().to_string(),
            shift_steps: args.shift_steps,
            seconds: dense.elapsed.as_secs_f64(),
        })
    } else {
        None
    };
    let (cpu, cpu_flags) = cpu_description();
    let report = Report {
        cpu,
        cpu_flags,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        threads,
        model: format!("{} ({})", model.origin, model.metadata.architecture),
        images: images.len(),
        repeats: args.repeats,
        rows,
        skipped,
        pipeline_split_ms: split,
        dense_map,
        medpatch_peak_rss_mb: peak_rss_mb(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", markdown(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The image logits of the first image.
fn first_logits(engine: &Engine, images: &[GrayImage]) -> Result<Vec<f32>> {
    let prediction = engine.predict_prepared(images)?.into_iter().next().expect("one image")?;
    Ok(prediction.logits)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max)
}

/// Images/s over every file end to end (decode and preprocessing of the next batch overlap the
/// backend), and over the same images already preprocessed, in the same batches.
fn throughput(engine: &Engine, images: &[PathBuf], prepared: &[GrayImage]) -> Result<(f64, f64)> {
    let per_batch = engine.images_per_batch();
    let inputs: Vec<Input<'_>> = images.iter().map(|p| Input::Path(p)).collect();
    let t = Instant::now();
    engine.predict_pipelined(&inputs, per_batch, |_, r| r.map(drop))?;
    let end_to_end = images.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for batch in prepared.chunks(per_batch) {
        for r in engine.predict_prepared(batch)? {
            r?;
        }
    }
    let backbone = prepared.len() as f64 / t.elapsed().as_secs_f64();
    Ok((end_to_end, backbone))
}

/// Where one image's time goes, averaged over every file and `repeats` rounds.
fn pipeline_split(engine: &Engine, provider: Provider, images: &[PathBuf], repeats: usize) -> Result<Split> {
    let mut total = Timings::default();
    let mut n = 0;
    for _ in 0..repeats.max(1) {
        for p in engine.predict_paths(images) {
            let t = p?.timings;
            total.decode += t.decode;
            total.preprocess += t.preprocess;
            total.tile += t.tile;
            total.backend += t.backend;
            total.aggregate += t.aggregate;
            n += 1;
        }
    }
    let per = |d: Duration| ms(d) / n as f64;
    Ok(Split {
        provider: provider.to_string(),
        decode: per(total.decode),
        preprocess: per(total.preprocess),
        tile: per(total.tile),
        backend: per(total.backend),
        aggregate: per(total.aggregate),
    })
}

fn markdown(r: &Report) -> String {
    let mut out = format!(
        "CPU: {} ({} cores; {}), {} threads\nmodel: {}, {} image(s), median of {} runs\n\n",
        r.cpu,
        r.cores,
        if r.cpu_flags.is_empty() { "no AVX-512/AMX".to_string() } else { r.cpu_flags.join(" ") },
        r.threads,
        r.model,
        r.images,
        r.repeats
    );
    out += "| runtime | latency ms (median) | min ms | images/s end to end | backbone images/s | end to end / backbone | max \\|Δ logit\\| | peak RSS MB |\n|---|---|---|---|---|---|---|---|\n";
    let opt = |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    for row in &r.rows {
        let ratio = row.throughput_images_per_s.zip(row.backbone_images_per_s).map(|(e, b)| e / b);
        let diff = row.max_abs_logit_diff.map_or("–".to_string(), |d| format!("{d:.1e}"));
        out += &format!(
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |\n",
            row.name,
            row.latency_median_ms,
            row.latency_min_ms,
            opt(row.throughput_images_per_s, 2),
            opt(row.backbone_images_per_s, 2),
            opt(ratio, 2),
            diff,
            opt(row.peak_rss_mb, 0)
        );
    }
    let latency =
        |prefix: &str| r.rows.iter().find(|row| row.name.starts_with(prefix)).map(|row| row.latency_median_ms);
    out += "\n";
    for (what, a, b) in [
        ("tract / ONNX Runtime CPU time", "medpatch tract", "medpatch cpu"),
        ("medpatch ONNX Runtime CPU / onnxruntime-python time", "medpatch cpu", "onnxruntime-python"),
        ("medpatch OpenVINO f32 / OpenVINO-python f32 time", "medpatch openvino: OpenVINO CPU, f32", "openvino-python"),
    ] {
        if let (Some(a), Some(b)) = (latency(a), latency(b)) {
            out += &format!("{what}: {:.2}×\n", a / b);
        }
    }
    if let Some(s) = &r.pipeline_split_ms {
        let outside = s.decode + s.preprocess + s.tile + s.aggregate;
        out += &format!(
            "pipeline split per image ({}): decode {:.2} ms, preprocess {:.2} ms, tile {:.3} ms, backend {:.1} ms, aggregate {:.3} ms; outside the backend {:.1}% of backend time\n",
            s.provider,
            s.decode,
            s.preprocess,
            s.tile,
            s.backend,
            s.aggregate,
            100.0 * outside / s.backend
        );
    }
    if let Some(d) = &r.dense_map {
        out += &format!(
            "dense map S={} ({} shifted images) on {}: {:.2} s\n",
            d.shift_steps,
            d.shift_steps.pow(2),
            d.provider,
            d.seconds
        );
    }
    if let Some(rss) = r.medpatch_peak_rss_mb {
        out += &format!("peak RSS of medpatch (every backend above, models, dense map): {rss:.0} MB\n");
    }
    for s in &r.skipped {
        out += &format!("skipped: {s}\n");
    }
    out
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

/// The CPU's model name and the flags that decide the fast paths (AVX-512, VNNI, BF16, AMX, ARM's
/// fp16 and dot product), from /proc/cpuinfo.
fn cpu_description() -> (String, Vec<String>) {
    const FLAGS: [&str; 9] =
        ["avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "avx_vnni", "asimdhp", "asimddp", "sve"];
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
    };
    let model =
        field("model name").or_else(|| field("CPU part").map(|p| format!("ARM part {p}"))).unwrap_or("?".into());
    let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
    let present = FLAGS.iter().filter(|f| flags.split_whitespace().any(|x| x == **f)).map(|f| f.to_string()).collect();
    (model, present)
}

/// One Python runtime's row, from a script in tests/python run in its own process.
fn python_row(
    python: &Path,
    script: &str,
    script_args: &[&str],
    threads: usize,
    repeats: usize,
    npy: &Path,
) -> Result<(Row, Option<Vec<f32>>)> {
    // The scripts live in the source tree: run from there (as scripts/test.sh does).
    let script = Path::new("tests/python").join(script);
    if !script.exists() {
        bail!("{} not found: run `medpatch bench` from the medpatch source tree", script.display());
    }
    if !python.exists() {
        bail!("no Python at {} (pass --python, or run scripts/setup.sh)", python.display());
    }
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(script_args)
        .args(["--threads", &threads.to_string(), "--repeats", &repeats.to_string()])
        .arg(npy)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii())?;
    let logits = v["logits"].as_array().map(|l| l.iter().map(|x| x.as_f64().unwrap_or(f64::NAN) as f32).collect());
    let name = match v["name"].as_str() {
        Some(n) => n.to_string(),
        None => format!("pytorch-python {}: eager CPU, f32", v["torch"].as_str().unwrap_or("?")),
    };
    let row = Row {
        name,
        latency_median_ms: v["median_ms"].as_f64().unwrap_or(f64::NAN),
        latency_min_ms: v["min_ms"].as_f64().unwrap_or(f64::NAN),
        throughput_images_per_s: None,
        backbone_images_per_s: None,
        peak_rss_mb: v["peak_rss_mb"].as_f64(),
        max_abs_logit_diff: None,
    };
    Ok((row, logits))
}
