//! The training loop, as the seed's `trainClassification.py`: BCEWithLogits on the mean patch
//! logits, AdamW (lr 1e-4, weight decay 0.01), OneCycleLR (pct_start 0.05) stepped per batch,
//! AMP (fp16 autocast + loss scaling) on CUDA, a checkpoint every epoch — plus validation AUROC
//! per class, resumable checkpoints and seeds.
//!
//! A checkpoint `epoch-NNN` is three files in the output directory:
//! * `epoch-NNN.safetensors`: the backbone's state dict with torchvision names (running stats and
//!   `num_batches_tracked` included) — what `medpatch export --weights` reads as is;
//! * `epoch-NNN.json`: [`CheckpointMeta`] (architecture, patch size, classes, epoch, optimizer and
//!   scheduler state, validation metrics, loss history);
//! * `epoch-NNN.optim.safetensors`: AdamW's moment buffers (kept for the latest epoch only).
//!
//! Reproducibility: torch's generator (initialisation, dropout, stochastic depth) is seeded from
//! `seed` at the start and from `(seed, epoch)` at the start of every epoch; the data order and
//! augmentations depend only on `(seed, epoch, sample)`. A run resumed from epoch k therefore
//! continues as the uninterrupted run would (on CPU, where libtorch's kernels are deterministic).

use crate::data::{Dataset, Loader, LoaderOptions};
use crate::metrics;
use crate::model::{self, Backbone, MedicalPatchNet};
use crate::optim::{AdamW, GradScaler};
use crate::schedule::OneCycle;
use anyhow::{Context, Result, bail};
use medpatch_models::Rng;
use medpatch_models::{ArchConfig, CHEXPERT_CLASSES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

pub const CHECKPOINT_FORMAT: &str = "medpatch-train-checkpoint/1";

#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Architecture name (built-in) or path of a JSON config, as `medpatch export --arch` takes it.
    pub arch: String,
    pub patch_size: i64,
    pub image_size: u32,
    pub train_csv: PathBuf,
    pub train_root: PathBuf,
    pub valid_csv: Option<PathBuf>,
    pub valid_root: PathBuf,
    pub out: PathBuf,
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub pct_start: f64,
    pub seed: u64,
    pub workers: usize,
    /// libtorch intra-op threads (0: libtorch's default).
    pub threads: i32,
    pub device: Device,
    pub amp: bool,
    /// torchvision ImageNet state dict (`.pt`/`.pth`/`.safetensors`) to start from.
    pub init: Option<PathBuf>,
    /// Checkpoint JSON to resume from.
    pub resume: Option<PathBuf>,
    /// Use only the first N training records (quick runs).
    pub limit_train: Option<usize>,
    /// Stop (with a resumable checkpoint) after this epoch, e.g. to train in several sittings.
    pub stop_after_epoch: Option<u64>,
    /// Override the architecture's dropout / stochastic-depth rates (training only; the network
    /// and its exported form are unchanged). `None`: the config's (torchvision's 0.2 / 0.2).
    pub dropout: Option<f32>,
    pub stochastic_depth: Option<f32>,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptimizerState {
    pub kind: String,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    /// Moment buffers (file name in the checkpoint directory), if kept.
    pub state_file: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerState {
    pub kind: String,
    #[serde(flatten)]
    pub one_cycle: OneCycle,
    /// Scheduler steps taken (= optimizer steps attempted).
    pub step: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validation {
    pub loss: f64,
    /// AUROC per class, in the model's class order (null where the split has only one class).
    pub auroc: Vec<ClassAuroc>,
    pub mean_auroc: Option<f64>,
    pub samples: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassAuroc {
    pub class: String,
    pub auroc: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: u64,
    pub train_loss: f64,
    pub seconds: f64,
    pub patches_per_second: f64,
    pub validation: Option<Validation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: String,
    pub architecture: String,
    /// The full config, so the checkpoint stands alone even for a custom JSON architecture.
    pub arch_config: ArchConfig,
    pub patch_size: i64,
    pub image_size: u32,
    pub classes: Vec<String>,
    /// Epochs completed (1-based) and planned.
    pub epoch: u64,
    pub epochs: u64,
    pub batch_size: usize,
    pub seed: u64,
    pub weights_file: String,
    pub optimizer: OptimizerState,
    pub scheduler: SchedulerState,
    pub grad_scaler: Option<GradScaler>,
    pub history: Vec<EpochLog>,
    pub train_csv: String,
    pub valid_csv: Option<String>,
    pub init: Option<String>,
    pub device: String,
    pub amp: bool,
}

/// A checkpoint JSON written by [`train`] (`epoch-NNN.json`, `last.json`).
pub fn read_checkpoint(path: &Path) -> Result<CheckpointMeta> {
    let text = medpatch_models::read_regular_text(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a medpatch-train checkpoint", path.display()))
}

impl CheckpointMeta {
    /// The weights file of the checkpoint JSON at `json` (it names it relative to its own folder).
    pub fn weights_path(&self, json: &Path) -> PathBuf {
        json.parent().unwrap_or(Path::new(".")).join(&self.weights_file)
    }
}

/// Build the model's variables on `device` and seed torch.
pub fn build_model(vs: &nn::VarStore, arch: &ArchConfig, patch_size: i64) -> MedicalPatchNet {
    let backbone = Backbone::new(&vs.root(), arch, CHEXPERT_CLASSES.len() as i64);
    MedicalPatchNet { backbone, patch_size }
}

/// Save the backbone as torchvision would (`state_dict()` names, `num_batches_tracked` as int64).
pub fn save_weights(vs: &nn::VarStore, path: &Path, num_batches_tracked: i64) -> Result<()> {
    let mut named: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(k, v)| (k, v.detach().to_device(Device::Cpu).contiguous())).collect();
    let bn: Vec<String> =
        named.iter().filter_map(|(k, _)| k.strip_suffix(".running_mean").map(str::to_string)).collect();
    for prefix in bn {
        named.push((format!("{prefix}.num_batches_tracked"), Tensor::from(num_batches_tracked)));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_atomic_safetensors(&named, path)
}

fn write_atomic_safetensors(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    Tensor::write_safetensors(named, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Load a checkpoint's (or any torchvision-named) weights file, exactly: every variable present
/// with its shape, nothing left over.
pub fn load_exact(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let weights = medpatch_weights::load(path).with_context(|| format!("cannot read {}", path.display()))?;
    let report = model::load_weights(vs, &weights);
    if !report.problems.is_empty() {
        bail!("{}: {}", path.display(), report.problems);
    }
    Ok(())
}

/// Start from a torchvision ImageNet state dict: everything loads except the stem conv (3 input
/// channels there, 1 here) and `classifier.1` (1000 classes there, 14 here), which keep their
/// fresh initialisation — the seed replaces exactly these two modules after loading.
pub fn load_imagenet(vs: &nn::VarStore, path: &Path) -> Result<String> {
    let weights = medpatch_weights::load(path).with_context(|| format!("cannot read {}", path.display()))?;
    let report = model::load_weights(vs, &weights);
    let replaced = ["features.0.0.weight", "classifier.1.weight", "classifier.1.bias"];
    let problems = report.problems.except(&replaced);
    if !problems.is_empty() {
        bail!("{} is not a torchvision state dict of this architecture: {problems}", path.display());
    }
    let kept: Vec<&str> =
        replaced.iter().copied().filter(|n| report.problems.wrong_shape.iter().any(|(w, ..)| w == n)).collect();
    Ok(format!(
        "loaded {} tensors from {}; freshly initialised (replaced as the seed does): {kept:?}",
        report.loaded,
        path.display()
    ))
}

/// Sigmoid scores and targets over a dataset, in record order (eval mode, no augmentation).
pub fn predict(
    net: &MedicalPatchNet,
    dataset: &Arc<Dataset>,
    device: Device,
    batch_size: usize,
    image_size: u32,
    workers: usize,
    amp: bool,
) -> Result<(Vec<f32>, Vec<f32>, f64)> {
    let order: Vec<usize> = (0..dataset.records.len()).collect();
    let loader = Loader::new(
        dataset.clone(),
        order,
        LoaderOptions {
            batch_size,
            image_size,
            augment: false,
            workers,
            prefetch: 2 * workers.max(1),
            seed: 0,
            epoch: 0,
        },
    );
    let (mut scores, mut targets) = (Vec::new(), Vec::new());
    let mut loss_sum = 0f64;
    for batch in loader {
        let batch = batch?;
        let n = batch.len() as i64;
        let s = batch.size as i64;
        let x = Tensor::from_slice(&batch.images).reshape([n, 1, s, s]).to_device(device);
        let y = Tensor::from_slice(&batch.targets).reshape([n, 14]).to_device(device);
        let logits = tch::no_grad(|| with_autocast(amp, || net.forward_t(&x, false))).to_kind(Kind::Float);
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Sum);
        loss_sum += loss.double_value(&[]);
        scores.extend(Vec::<f32>::try_from(logits.sigmoid().to_device(Device::Cpu).flatten(0, -1))?);
        targets.extend_from_slice(&batch.targets);
    }
    let mean_loss = loss_sum / targets.len().max(1) as f64;
    Ok((scores, targets, mean_loss))
}

pub fn validation_from(scores: &[f32], targets: &[f32], loss: f64) -> Validation {
    let per_class = metrics::per_class_auroc(scores, targets, 14);
    Validation {
        loss,
        mean_auroc: metrics::mean_defined(&per_class),
        auroc: CHEXPERT_CLASSES
            .iter()
            .zip(&per_class)
            .map(|(c, a)| ClassAuroc { class: c.to_string(), auroc: *a })
            .collect(),
        samples: targets.len() / 14,
    }
}

/// fp16 autocast (CUDA) around `f` when `amp`; otherwise `f` alone (tch's autocast toggles
/// libtorch's deprecated global switch, which some libtorch versions warn about on every call).
pub fn with_autocast<T>(amp: bool, f: impl FnOnce() -> T) -> T {
    if amp { tch::autocast(true, f) } else { f() }
}

fn epoch_seed(seed: u64, epoch: u64) -> i64 {
    (Rng::derive(seed, &[epoch, 0x70_7263]).next_u64() >> 1) as i64
}

/// Train; returns the path of the last checkpoint's JSON.
pub fn train(opts: &TrainOptions, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    if opts.threads > 0 {
        tch::set_num_threads(opts.threads);
    }
    let mut arch = ArchConfig::resolve(&opts.arch)?;
    if let Some(p) = opts.dropout {
        anyhow::ensure!((0.0..1.0).contains(&p), "dropout must be in [0, 1)");
        arch.dropout = p;
    }
    if let Some(p) = opts.stochastic_depth {
        anyhow::ensure!((0.0..1.0).contains(&p), "stochastic depth must be in [0, 1)");
        arch.stochastic_depth = p;
    }
    anyhow::ensure!(
        opts.patch_size > 0 && opts.image_size as i64 % opts.patch_size == 0,
        "the patch size must divide the image size"
    );
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;

    let mut train_set = Dataset::from_csv(&opts.train_csv, &opts.train_root)?;
    if let Some(n) = opts.limit_train {
        train_set.records.truncate(n);
    }
    anyhow::ensure!(!train_set.records.is_empty(), "no training records in {}", opts.train_csv.display());
    let train_set = Arc::new(train_set);
    let valid_set = match &opts.valid_csv {
        Some(csv) => Some(Arc::new(Dataset::from_csv(csv, &opts.valid_root)?)),
        None => None,
    };

    tch::manual_seed(epoch_seed(opts.seed, u64::MAX));
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut net = build_model(&vs, &arch, opts.patch_size);
    let steps_per_epoch = train_set.records.len().div_ceil(opts.batch_size) as u64;
    let schedule = OneCycle::new(opts.lr, opts.epochs * steps_per_epoch, opts.pct_start);
    let amp = opts.amp && opts.device.is_cuda();
    let mut scaler = amp.then(GradScaler::default);
    let mut history: Vec<EpochLog> = Vec::new();
    let mut start_epoch = 0u64;
    let mut global_step = 0u64;
    let mut resume_optimizer: Option<(PathBuf, u64)> = None;

    if let Some(resume) = &opts.resume {
        let meta = read_checkpoint(resume)?;
        anyhow::ensure!(meta.format == CHECKPOINT_FORMAT, "unsupported checkpoint format {}", meta.format);
        anyhow::ensure!(
            meta.arch_config == arch && meta.patch_size == opts.patch_size,
            "the checkpoint was trained with another architecture or patch size"
        );
        anyhow::ensure!(
            meta.scheduler.one_cycle == schedule,
            "resuming needs the same epochs, batch size, learning rate and data size (the OneCycle schedule differs)"
        );
        let dir = resume.parent().unwrap_or(Path::new("."));
        load_exact(&vs, &dir.join(&meta.weights_file))?;
        let state = meta
            .optimizer
            .state_file
            .as_ref()
            .context("the checkpoint kept no optimizer state (only the latest epoch does)")?;
        resume_optimizer = Some((dir.join(state), meta.optimizer.step));
        start_epoch = meta.epoch;
        global_step = meta.scheduler.step;
        history = meta.history;
        scaler = meta.grad_scaler.or(scaler);
        log(&format!("resumed from {} (epoch {}, step {global_step})", resume.display(), meta.epoch));
    } else if let Some(init) = &opts.init {
        log(&load_imagenet(&vs, init)?);
    }
    vs.set_device(opts.device);
    let mut optimizer = AdamW::new(&vs, opts.lr, opts.weight_decay);
    if let Some((path, step)) = resume_optimizer {
        let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .into_iter()
            .collect();
        optimizer.load_state_tensors(&tensors, step)?;
    }
    net.backbone.dropout = arch.dropout as f64;
    let patches_per_image = (opts.image_size as i64 / opts.patch_size).pow(2);
    log(&format!(
        "training {} (patch {}, {} patches/image) on {:?}{}: {} images, {} steps/epoch × {} epochs, batch {}, {} parameters",
        arch.name,
        opts.patch_size,
        patches_per_image,
        opts.device,
        if amp { " with AMP (fp16)" } else { "" },
        train_set.records.len(),
        steps_per_epoch,
        opts.epochs,
        opts.batch_size,
        vs.trainable_variables().iter().map(|t| t.numel()).sum::<usize>()
    ));

    let mut last: Option<PathBuf> = None;
    for epoch in start_epoch..opts.epochs {
        tch::manual_seed(epoch_seed(opts.seed, epoch));
        let mut order: Vec<usize> = (0..train_set.records.len()).collect();
        Rng::derive(opts.seed, &[epoch, 0x5eed]).shuffle(&mut order);
        let loader = Loader::new(
            train_set.clone(),
            order,
            LoaderOptions {
                batch_size: opts.batch_size,
                image_size: opts.image_size,
                augment: true,
                workers: opts.workers,
                prefetch: 2 * opts.workers.max(1),
                seed: opts.seed,
                epoch,
            },
        );
        let bar = progress_bar(opts.progress, loader.len() as u64, &format!("epoch {}/{}", epoch + 1, opts.epochs));
        let started = Instant::now();
        let (mut loss_sum, mut seen, mut patches) = (0f64, 0usize, 0usize);
        for batch in loader {
            let batch = batch?;
            let n = batch.len() as i64;
            let s = batch.size as i64;
            let x = Tensor::from_slice(&batch.images).reshape([n, 1, s, s]).to_device(opts.device);
            let y = Tensor::from_slice(&batch.targets).reshape([n, 14]).to_device(opts.device);
            let (lr, beta1) = schedule.at(global_step);
            optimizer.lr = lr;
            optimizer.beta1 = beta1;
            let logits = with_autocast(amp, || net.forward_t(&x, true)).to_kind(Kind::Float);
            let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&y, None, None, tch::Reduction::Mean);
            match &mut scaler {
                Some(scaler) => {
                    let mut grad = optimizer.gradients(&(&loss * scaler.scale));
                    let finite = scaler.unscale(&mut grad);
                    if finite {
                        optimizer.step(&grad);
                    }
                    scaler.update(finite);
                }
                None => {
                    let grad = optimizer.gradients(&loss);
                    optimizer.step(&grad);
                }
            }
            global_step += 1;
            let l = loss.double_value(&[]);
            anyhow::ensure!(l.is_finite() || amp, "the loss is not finite ({l}) at step {global_step}");
            loss_sum += l * n as f64;
            seen += n as usize;
            patches += (n * patches_per_image) as usize;
            if let Some(bar) = &bar {
                bar.set_message(format!(
                    "loss {:.4} lr {:.2e} {:.0} patches/s",
                    loss_sum / seen as f64,
                    lr,
                    patches as f64 / started.elapsed().as_secs_f64()
                ));
                bar.inc(1);
            }
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let seconds = started.elapsed().as_secs_f64();
        let train_loss = loss_sum / seen.max(1) as f64;
        let validation = match &valid_set {
            Some(v) => {
                let (scores, targets, loss) =
                    predict(&net, v, opts.device, opts.batch_size, opts.image_size, opts.workers, amp)?;
                Some(validation_from(&scores, &targets, loss))
            }
            None => None,
        };
        let entry = EpochLog {
            epoch: epoch + 1,
            train_loss,
            seconds,
            patches_per_second: patches as f64 / seconds,
            validation,
        };
        log(&describe_epoch(&entry));
        history.push(entry);

        // Checkpoint.
        let stem = format!("epoch-{:03}", epoch + 1);
        let weights_file = format!("{stem}.safetensors");
        let optim_file = format!("{stem}.optim.safetensors");
        save_weights(&vs, &opts.out.join(&weights_file), global_step as i64)?;
        write_atomic_safetensors(&optimizer.state_tensors(), &opts.out.join(&optim_file))?;
        let meta = CheckpointMeta {
            format: CHECKPOINT_FORMAT.into(),
            architecture: arch.name.clone(),
            arch_config: arch.clone(),
            patch_size: opts.patch_size,
            image_size: opts.image_size,
            classes: CHEXPERT_CLASSES.iter().map(|c| c.to_string()).collect(),
            epoch: epoch + 1,
            epochs: opts.epochs,
            batch_size: opts.batch_size,
            seed: opts.seed,
            weights_file,
            optimizer: OptimizerState {
                kind: "AdamW".into(),
                lr: optimizer.lr,
                beta1: optimizer.beta1,
                beta2: optimizer.beta2,
                eps: optimizer.eps,
                weight_decay: optimizer.weight_decay,
                step: optimizer.step,
                state_file: Some(optim_file),
            },
            scheduler: SchedulerState { kind: "OneCycleLR".into(), one_cycle: schedule.clone(), step: global_step },
            grad_scaler: scaler.clone(),
            history: history.clone(),
            train_csv: opts.train_csv.display().to_string(),
            valid_csv: opts.valid_csv.as_ref().map(|p| p.display().to_string()),
            init: opts.init.as_ref().map(|p| p.display().to_string()),
            device: format!("{:?}", opts.device),
            amp,
        };
        let json_path = opts.out.join(format!("{stem}.json"));
        std::fs::write(&json_path, serde_json::to_string_pretty(&meta)?)?;
        // Only the latest epoch keeps its optimizer state (a few times the model's size).
        if let Some(prev) = &last {
            forget_optimizer_state(prev)?;
        }
        std::fs::write(opts.out.join("last.json"), serde_json::to_string_pretty(&meta)?)?;
        last = Some(json_path);
        if opts.stop_after_epoch.is_some_and(|stop| epoch + 1 >= stop) && epoch + 1 < opts.epochs {
            log(&format!(
                "stopping after epoch {} as asked; resume with --resume {}",
                epoch + 1,
                opts.out.join("last.json").display()
            ));
            break;
        }
    }
    last.context("no epoch to run (already complete?)")
}

fn forget_optimizer_state(json: &Path) -> Result<()> {
    let mut meta: CheckpointMeta = serde_json::from_str(&std::fs::read_to_string(json)?)?;
    if let Some(file) = meta.optimizer.state_file.take() {
        let _ = std::fs::remove_file(json.parent().unwrap_or(Path::new(".")).join(file));
        std::fs::write(json, serde_json::to_string_pretty(&meta)?)?;
    }
    Ok(())
}

pub fn describe_epoch(e: &EpochLog) -> String {
    let mut s = format!(
        "epoch {}: train loss {:.4}, {:.0} s, {:.1} patches/s",
        e.epoch, e.train_loss, e.seconds, e.patches_per_second
    );
    if let Some(v) = &e.validation {
        s += &format!(
            ", valid loss {:.4}, mean AUROC {}",
            v.loss,
            v.mean_auroc.map_or("n/a".into(), |a| format!("{a:.4}"))
        );
    }
    s
}

fn progress_bar(enabled: bool, len: u64, prefix: &str) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    Some(bar)
}
