//! `medpatch-train evaluate`: AUROC of a checkpoint on a CSV split.

use super::{Compute, parent_dir};
use anyhow::Result;
use clap::Args;
use medpatch_train::data::Dataset;
use medpatch_train::trainer;
use std::path::PathBuf;
use std::sync::Arc;
use tch::Device;

#[derive(Args)]
pub(crate) struct EvaluateArgs {
    /// Checkpoint JSON written by `train`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long)]
    csv: PathBuf,
    #[arg(long)]
    data_root: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[command(flatten)]
    compute: Compute,
    /// Write the metrics (and per-image scores) as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) fn evaluate_cmd(a: EvaluateArgs) -> Result<()> {
    if a.compute.threads > 0 {
        tch::set_num_threads(a.compute.threads);
    }
    let meta = trainer::read_checkpoint(&a.checkpoint)?;
    let device = a.compute.device.resolve()?;
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let net = trainer::build_model(&vs, &meta.arch_config, meta.patch_size);
    trainer::load_exact(&vs, &meta.weights_path(&a.checkpoint))?;
    vs.set_device(device);
    let root = a.data_root.clone().unwrap_or_else(|| parent_dir(&a.csv));
    let dataset = Arc::new(Dataset::from_csv(&a.csv, &root)?);
    let (scores, targets, loss) =
        trainer::predict(&net, &dataset, device, a.batch_size, meta.image_size, a.compute.workers, false)?;
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
