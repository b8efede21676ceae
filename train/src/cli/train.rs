//! `medpatch-train train`: Training.

use super::{Compute, parent_dir};
use anyhow::Result;
use clap::Args;
use medpatch_train::trainer::{self, TrainOptions};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct TrainArgs {
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
    #[command(flatten)]
    compute: Compute,
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

pub(crate) fn train_cmd(a: TrainArgs) -> Result<()> {
    let train_root = a.data_root.clone().unwrap_or_else(|| parent_dir(&a.train_csv));
    let valid_root = a
        .valid_root
        .clone()
        .or(a.data_root.clone())
        .unwrap_or_else(|| a.valid_csv.as_deref().map(parent_dir).unwrap_or_default());
    let device = a.compute.device.resolve()?;
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
        workers: a.compute.workers,
        threads: a.compute.threads,
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
