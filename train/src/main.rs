//! `medpatch-train`: make the synthetic benchmark, preprocess CheXpert, train MedicalPatchNet,
//! evaluate checkpoints, benchmark training throughput.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use medpatch_train::data::{self, Dataset};
use medpatch_train::synth::{self, SynthConfig};
use medpatch_train::trainer::{self, CheckpointMeta, TrainOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Device;

#[derive(Parser)]
#[command(
    name = "medpatch-train",
    version,
    about = "Train MedicalPatchNet (libtorch) on CheXpert or the synthetic benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the synthetic chest X-ray benchmark (CheXpert-style CSVs and JPEGs, CheXlocalize-style masks).
    Synth(SynthArgs),
    /// The seed's offline preprocessing of CheXpert: centre crop, Lanczos to 1024², grayscale JPEG q100.
    Preprocess(PreprocessArgs),
    /// Train; writes a checkpoint (safetensors + JSON) every epoch.
    Train(TrainArgs),
    /// AUROC per class of a checkpoint on a CSV split.
    Evaluate(EvaluateArgs),
    /// Training throughput (forward + backward + AdamW step) on random inputs.
    Bench(BenchArgs),
    /// What libtorch this binary found: version, threads, CUDA, cuDNN.
    Doctor,
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2000)]
    train: usize,
    #[arg(long, default_value_t = 200)]
    valid: usize,
    #[arg(long, default_value_t = 300)]
    test: usize,
    #[arg(long, default_value_t = 512)]
    width: u32,
    /// 0 (easy) … 1 (hard); sets contrast, size, noise and variability (individual knobs override).
    #[arg(long)]
    difficulty: Option<f32>,
    #[arg(long)]
    prevalence: Option<f64>,
    #[arg(long)]
    contrast: Option<f32>,
    #[arg(long)]
    size: Option<f32>,
    #[arg(long)]
    noise: Option<f32>,
    #[arg(long)]
    variability: Option<f32>,
    #[arg(long)]
    label_noise: Option<f64>,
    #[arg(long, default_value_t = 95)]
    jpeg_quality: u8,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Args)]
struct PreprocessArgs {
    /// CSVs listing the images (their Path column, relative to --src); copied to --dst.
    #[arg(long = "csv", required = true)]
    csvs: Vec<PathBuf>,
    #[arg(long)]
    src: PathBuf,
    #[arg(long)]
    dst: PathBuf,
    #[arg(long, default_value_t = data::PREPROCESSED_SIDE)]
    side: u32,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// Training CSV (train_visualCheXbert.csv, train.csv, …).
    #[arg(long)]
    train_csv: PathBuf,
    /// Directory the CSV's paths are relative to (default: the CSV's directory).
    #[arg(long)]
    data_root: Option<PathBuf>,
    #[arg(long)]
    valid_csv: Option<PathBuf>,
    #[arg(long)]
    valid_root: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Built-in architecture name or JSON config path.
    #[arg(long, default_value = "efficientnet_v2_s")]
    arch: String,
    /// 64: MedicalPatchNet; 512: the EfficientNetV2-S baseline.
    #[arg(long, default_value_t = 64)]
    patch_size: i64,
    #[arg(long, default_value_t = 512)]
    image_size: u32,
    #[arg(long, default_value_t = 20)]
    epochs: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.05)]
    pct_start: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Data loading threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// libtorch intra-op threads (0: libtorch's default, all cores).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Disable mixed precision on CUDA (on by default there, as in the seed).
    #[arg(long)]
    no_amp: bool,
    /// torchvision ImageNet state dict to start from (.pt/.pth/.safetensors).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Resume from a checkpoint JSON (e.g. OUT/last.json).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Use only the first N training records.
    #[arg(long)]
    limit_train: Option<usize>,
    /// Stop after this epoch (resumable), to train in several sittings.
    #[arg(long)]
    stop_after_epoch: Option<u64>,
    /// Override the architecture's dropout rate (classifier.0) for training.
    #[arg(long)]
    dropout: Option<f32>,
    /// Override the architecture's stochastic-depth rate for training.
    #[arg(long)]
    stochastic_depth: Option<f32>,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl DeviceArg {
    fn resolve(self) -> Result<Device> {
        Ok(match self {
            DeviceArg::Auto => Device::cuda_if_available(),
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => {
                anyhow::ensure!(
                    tch::Cuda::is_available(),
                    "CUDA is not available to this libtorch (run `medpatch-train doctor`)"
                );
                Device::Cuda(0)
            }
        })
    }
}

#[derive(Args)]
struct EvaluateArgs {
    /// Checkpoint JSON written by `train`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    csv: PathBuf,
    #[arg(long)]
    data_root: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, default_value_t = 0)]
    threads: i32,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Write the metrics (and per-image scores) as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, default_value = "efficientnet_v2_tiny")]
    arch: String,
    #[arg(long, default_value_t = 64)]
    patch_size: i64,
    #[arg(long, default_value_t = 512)]
    image_size: i64,
    /// Images per batch.
    #[arg(long, default_value_t = 2)]
    batch: i64,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    threads: i32,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    #[arg(long)]
    amp: bool,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Synth(a) => synth_cmd(a),
        Command::Preprocess(a) => preprocess_cmd(a),
        Command::Train(a) => train_cmd(a),
        Command::Evaluate(a) => evaluate_cmd(a),
        Command::Bench(a) => bench_cmd(a),
        Command::Doctor => doctor(),
    };
    if let Err(err) = result {
        eprintln!("medpatch-train: error: {err:#}");
        std::process::exit(1);
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn synth_cmd(a: SynthArgs) -> Result<()> {
    let mut config = SynthConfig {
        seed: a.seed,
        train: a.train,
        valid: a.valid,
        test: a.test,
        width: a.width,
        jpeg_quality: a.jpeg_quality,
        ..Default::default()
    };
    if let Some(d) = a.difficulty {
        config = config.with_difficulty(d);
    }
    if let Some(v) = a.prevalence {
        config.prevalence = v;
    }
    if let Some(v) = a.contrast {
        config.contrast = v;
    }
    if let Some(v) = a.size {
        config.size = v;
    }
    if let Some(v) = a.noise {
        config.noise = v;
    }
    if let Some(v) = a.variability {
        config.variability = v;
    }
    if let Some(v) = a.label_noise {
        config.label_noise = v;
    }
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new((config.train + config.valid + config.test) as u64);
    let layout = synth::write_benchmark(&config, &a.out, a.threads, &|done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} images in {:.0} s to {}",
        config.train + config.valid + config.test,
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    println!("{}", serde_json::to_string_pretty(&layout)?);
    Ok(())
}

fn preprocess_cmd(a: PreprocessArgs) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    let n = data::preprocess_dataset(&a.csvs, &a.src, &a.dst, a.side, a.threads, a.overwrite, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    eprintln!("preprocessed {n} images into {}", a.dst.display());
    Ok(())
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    let train_root = a.data_root.clone().unwrap_or_else(|| parent_dir(&a.train_csv));
    let valid_root = a
        .valid_root
        .clone()
        .or(a.data_root.clone())
        .unwrap_or_else(|| a.valid_csv.as_deref().map(parent_dir).unwrap_or_default());
    let device = a.device.resolve()?;
    let opts = TrainOptions {
        arch: a.arch,
        patch_size: a.patch_size,
        image_size: a.image_size,
        train_csv: a.train_csv,
        train_root,
        valid_csv: a.valid_csv,
        valid_root,
        out: a.out,
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        pct_start: a.pct_start,
        seed: a.seed,
        workers: a.workers,
        threads: a.threads,
        device,
        amp: !a.no_amp,
        init: a.init,
        resume: a.resume,
        limit_train: a.limit_train,
        stop_after_epoch: a.stop_after_epoch,
        dropout: a.dropout,
        stochastic_depth: a.stochastic_depth,
        progress: !a.no_progress,
    };
    let last = trainer::train(&opts, &mut |line| eprintln!("{line}"))?;
    println!("{}", last.display());
    Ok(())
}

fn evaluate_cmd(a: EvaluateArgs) -> Result<()> {
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let meta: CheckpointMeta = serde_json::from_str(
        &std::fs::read_to_string(&a.checkpoint).with_context(|| format!("cannot read {}", a.checkpoint.display()))?,
    )?;
    let device = a.device.resolve()?;
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let net = trainer::build_model(&vs, &meta.arch_config, meta.patch_size);
    trainer::load_exact(&vs, &parent_dir(&a.checkpoint).join(&meta.weights_file))?;
    vs.set_device(device);
    let root = a.data_root.clone().unwrap_or_else(|| parent_dir(&a.csv));
    let dataset = Arc::new(Dataset::from_csv(&a.csv, &root)?);
    let (scores, targets, loss) =
        trainer::predict(&net, &dataset, device, a.batch_size, meta.image_size, a.workers, false)?;
    let v = trainer::validation_from(&scores, &targets, loss);
    for c in &v.auroc {
        eprintln!("{:>28}: {}", c.class, c.auroc.map_or("n/a".into(), |x| format!("{x:.4}")));
    }
    eprintln!("{:>28}: {}", "mean AUROC", v.mean_auroc.map_or("n/a".into(), |x| format!("{x:.4}")));
    let report = serde_json::json!({
        "checkpoint": a.checkpoint.display().to_string(),
        "csv": a.csv.display().to_string(),
        "metrics": v,
        "paths": dataset.records.iter().map(|r| r.path.clone()).collect::<Vec<_>>(),
        "scores": scores.chunks(14).map(|c| c.to_vec()).collect::<Vec<_>>(),
    });
    match &a.out {
        Some(path) => std::fs::write(path, serde_json::to_string_pretty(&report)?)?,
        None => println!("{}", serde_json::to_string_pretty(&report["metrics"])?),
    }
    Ok(())
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    use tch::nn::ModuleT;
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let device = a.device.resolve()?;
    let arch = medpatch_models::ArchConfig::resolve(&a.arch)?;
    let vs = tch::nn::VarStore::new(device);
    let net = trainer::build_model(&vs, &arch, a.patch_size);
    let mut opt = medpatch_train::optim::AdamW::new(&vs, 1e-4, 0.01);
    let x = tch::Tensor::rand([a.batch, 1, a.image_size, a.image_size], (tch::Kind::Float, device));
    let y = tch::Tensor::rand([a.batch, 14], (tch::Kind::Float, device)).gt(0.7).to_kind(tch::Kind::Float);
    let patches = a.batch * (a.image_size / a.patch_size).pow(2);
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
    };
    // (whole step, forward + loss, backward, optimizer) per timed step.
    let mut times: Vec<[f64; 4]> = Vec::new();
    for i in 0..a.warmup + a.steps {
        let t0 = std::time::Instant::now();
        let logits = trainer::with_autocast(a.amp, || net.forward_t(&x, true)).to_kind(tch::Kind::Float);
        let loss = logits.binary_cross_entropy_with_logits::<tch::Tensor>(&y, None, None, tch::Reduction::Mean);
        sync();
        let t1 = std::time::Instant::now();
        let grad = opt.gradients(&loss);
        sync();
        let t2 = std::time::Instant::now();
        opt.step(&grad);
        sync();
        let t3 = std::time::Instant::now();
        if i >= a.warmup {
            times.push([
                (t3 - t0).as_secs_f64(),
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
            ]);
        }
    }
    let median = |k: usize| {
        let mut v: Vec<f64> = times.iter().map(|t| t[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (median, fwd, bwd, step) = (median(0), median(1), median(2), median(3));
    let out = serde_json::json!({
        "impl": "tch",
        "arch": arch.name,
        "patch_size": a.patch_size,
        "batch_images": a.batch,
        "patches_per_step": patches,
        "threads": tch::get_num_threads(),
        "device": format!("{device:?}"),
        "amp": a.amp,
        "median_step_s": median,
        "patches_per_s": patches as f64 / median,
        "forward_s": fwd,
        "backward_s": bwd,
        "optimizer_s": step,
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": serde_json::Value::Null,
    });
    println!("{out}");
    Ok(())
}

fn doctor() -> Result<()> {
    println!("libtorch intra-op threads: {}", tch::get_num_threads());
    println!("CUDA available: {}", tch::Cuda::is_available());
    println!("CUDA devices: {}", tch::Cuda::device_count());
    println!("cuDNN available: {}", tch::Cuda::cudnn_is_available());
    if tch::Cuda::is_available() {
        let t = tch::Tensor::ones([2, 2], (tch::Kind::Float, Device::Cuda(0)));
        println!("CUDA tensor sum: {}", t.sum(tch::Kind::Float).double_value(&[]));
    }
    Ok(())
}
