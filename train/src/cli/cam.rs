//! `medpatch-train cam`: Grad-CAM / Grad-CAM++ / Eigen-CAM maps of a whole-image checkpoint, as
//! `.npy` files `medpatch evaluate --maps-dir` scores.

use super::{Compute, parent_dir};
use anyhow::{Context, Result};
use clap::Args;
use medpatch_eval::labels::{LOCALIZATION_TASKS, chexlocalize_id, task_class};
use medpatch_models::{ArchConfig, CHEXPERT_CLASSES};
use medpatch_train::cam::{self, CamMethod};
use medpatch_train::data::{Dataset, Loader, LoaderOptions};
use medpatch_train::trainer;
use std::path::PathBuf;
use std::sync::Arc;
use tch::{Device, Tensor};

#[derive(Args)]
pub(crate) struct CamArgs {
    /// Checkpoint JSON of a whole-image model (`train --patch-size 512`).
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    checkpoint: Option<PathBuf>,
    /// Or a weights file with torchvision names (e.g. from scripts/gpu/train_torch.py), with --arch.
    #[arg(long, requires = "arch")]
    weights: Option<PathBuf>,
    /// The architecture of --weights (a built-in name or a JSON config).
    #[arg(long)]
    arch: Option<String>,
    /// The image (and patch) size of --weights.
    #[arg(long, default_value_t = 512)]
    image_size: u32,
    /// The split's CSV (the images to explain).
    #[arg(long)]
    csv: PathBuf,
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Saliency method(s); repeat the option for several (default: all three).
    #[arg(long = "method", value_enum)]
    methods: Vec<CamMethod>,
    /// Output folder: OUT/<method>/<image id>_<task>_map.npy for the ten CheXlocalize tasks.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[command(flatten)]
    compute: Compute,
}

pub(crate) fn cam_cmd(a: CamArgs) -> Result<()> {
    if a.compute.threads > 0 {
        tch::set_num_threads(a.compute.threads);
    }
    let (arch, image_size, patch_size, weights) = match (&a.checkpoint, &a.weights, &a.arch) {
        (Some(checkpoint), ..) => {
            let meta = trainer::read_checkpoint(checkpoint)?;
            let weights = meta.weights_path(checkpoint);
            (meta.arch_config, meta.image_size, meta.patch_size, weights)
        }
        // A bare weights file says nothing about its patch size: it is taken as a whole-image model.
        (None, Some(weights), Some(arch)) => {
            (ArchConfig::resolve(arch)?, a.image_size, a.image_size as i64, weights.clone())
        }
        _ => anyhow::bail!("give --checkpoint, or --weights with --arch"),
    };
    let device = a.compute.device.resolve()?;
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    // Whole-image models only (class_activation_maps refuses patch models).
    let net = trainer::build_model(&vs, &arch, patch_size);
    trainer::load_exact(&vs, &weights)?;
    vs.set_device(device);
    let methods = if a.methods.is_empty() { CamMethod::ALL.to_vec() } else { a.methods.clone() };

    // The CheXlocalize tasks and the class each one scores.
    let tasks: Vec<(&str, i64)> = LOCALIZATION_TASKS
        .iter()
        .filter_map(|&t| CHEXPERT_CLASSES.iter().position(|&c| c == task_class(t)).map(|i| (t, i as i64)))
        .collect();
    let classes: Vec<i64> = tasks.iter().map(|&(_, c)| c).collect();
    for m in &methods {
        std::fs::create_dir_all(a.out.join(m.slug()))
            .with_context(|| format!("cannot create {}", a.out.join(m.slug()).display()))?;
    }

    let root = a.data_root.clone().unwrap_or_else(|| parent_dir(&a.csv));
    let dataset = Arc::new(Dataset::from_csv(&a.csv, &root)?);
    let options = LoaderOptions {
        batch_size: a.batch_size.max(1),
        image_size,
        augment: false,
        workers: a.compute.workers,
        prefetch: 2 * a.compute.workers.max(1),
        seed: 0,
        epoch: 0,
    };
    let loader = Loader::new(dataset.clone(), (0..dataset.records.len()).collect(), options);
    let mut written = 0usize;
    for batch in loader {
        let batch = batch?;
        let (n, s) = (batch.len() as i64, batch.size as i64);
        let images = Tensor::from_slice(&batch.images).reshape([n, 1, s, s]).to_device(device);
        for &method in &methods {
            let maps = cam::class_activation_maps(&net, &images, method, &classes)?.to_device(Device::Cpu);
            let maps = Vec::<f32>::try_from(maps.flatten(0, -1))?;
            let plane = (s * s) as usize;
            for (k, &record) in batch.indices.iter().enumerate() {
                let id = chexlocalize_id(&dataset.records[record].path);
                for (t, (task, _)) in tasks.iter().enumerate() {
                    let at = (k * tasks.len() + t) * plane;
                    let path = a.out.join(method.slug()).join(format!("{id}_{task}_map.npy"));
                    let bytes = medpatch_engine::render::npy_f32(&[s as usize, s as usize], &maps[at..at + plane]);
                    medpatch_models::io::write_atomically(&path, &bytes)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    written += 1;
                }
            }
        }
    }
    eprintln!(
        "wrote {written} maps ({} images × {} tasks × {} methods) under {}",
        dataset.records.len(),
        tasks.len(),
        methods.len(),
        a.out.display()
    );
    Ok(())
}
