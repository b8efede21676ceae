use anyhow::{Context, Result, bail};
use clap::Args;
use medpatch_engine::{Engine, explain};
use medpatch_exporter::{ExportOptions, WeightsSource};
use medpatch_models::ArchConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ExportArgs {
    /// Trained weights: a torch.save state dict (.pt/.pth, e.g. the published
    /// MedicalPatchNet_weights.pt) or safetensors with torchvision names (what `train` writes).
    #[arg(long, value_name = "FILE", required_unless_present = "random_init", conflicts_with = "random_init")]
    weights: Option<PathBuf>,
    /// Use reproducible random weights instead (test models).
    #[arg(long)]
    random_init: bool,
    /// Seed for --random-init.
    #[arg(long, default_value_t = 0, requires = "random_init")]
    seed: u64,
    /// Number of outputs for --random-init.
    #[arg(long, default_value_t = medpatch_models::CHEXPERT_CLASSES.len(), requires = "random_init")]
    num_classes: usize,
    /// Architecture: a built-in name (efficientnet_v2_s, efficientnet_v2_tiny) or a JSON config file.
    #[arg(long, default_value = "efficientnet_v2_s")]
    arch: String,
    /// Patch side: 64 for MedicalPatchNet, 512 for the whole-image EfficientNetV2-S baseline.
    #[arg(long, default_value_t = medpatch_models::contract::DEFAULT_PATCH_SIZE)]
    patch_size: u32,
    /// Side of the preprocessed square X-ray.
    #[arg(long, default_value_t = medpatch_models::contract::DEFAULT_IMAGE_SIZE)]
    image_size: u32,
    /// Comma-separated output names (default: the 14 CheXpert findings).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// Store this overlay colour range: the patch logit at which overlays saturate (default: none
    /// stored, so readers use the paper's ±80, right for the published checkpoint).
    #[arg(long, value_name = "LOGIT", value_parser = super::predict::overlay_range)]
    overlay_range: Option<f32>,
    /// Calibrate the overlay colour range on these X-rays (files or folders; validation images,
    /// not test images): the 99th percentile of |patch logit| over all their patches and classes.
    #[arg(long, value_name = "INPUT", num_args = 1.., conflicts_with = "overlay_range")]
    calibrate_overlay: Vec<PathBuf>,
    /// Where to write the ONNX model.
    #[arg(short, long, value_name = "FILE.onnx")]
    output: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<ExitCode> {
    let weights = match args.weights {
        Some(path) => WeightsSource::File(path),
        None => WeightsSource::Random { seed: args.seed, num_classes: args.num_classes },
    };
    let mut options = ExportOptions::new(weights, args.output);
    options.arch = ArchConfig::resolve(&args.arch)?;
    options.patch_size = args.patch_size;
    options.image_size = args.image_size;
    options.classes = args.classes;
    options.overlay_logit_range = args.overlay_range;
    if !args.calibrate_overlay.is_empty() {
        options.overlay_logit_range = Some(calibrate_overlay(&options, &args.calibrate_overlay)?);
    }
    let report = medpatch_exporter::export(&options)?;
    let m = &report.metadata;
    eprintln!(
        "wrote {}: {} ({} parameters after batch-norm folding, {} nodes, {:.1} MB) in {:.2} s\n  \
         input patches [N,1,{p},{p}], output logits [N,{}], grid {g}x{g} on {s}x{s} images\n  source: {}{}\n  overlay range: ±{} logits{}",
        report.output.display(),
        m.architecture,
        report.parameters,
        report.nodes,
        report.file_bytes as f64 / 1e6,
        report.elapsed.as_secs_f64(),
        m.classes.len(),
        m.source,
        if m.source_sha256.is_empty() { String::new() } else { format!(" (sha256 {})", m.source_sha256) },
        m.overlay_logit_range(),
        if m.overlay_logit_range.is_some() { "" } else { " (none stored: the paper's)" },
        p = m.patch_size,
        g = m.grid(),
        s = m.image_size,
    );
    Ok(ExitCode::SUCCESS)
}

/// Export once to a scratch file beside the output, run it on the calibration images, and return
/// the range their patch logits call for. The scratch file is removed whatever happens.
fn calibrate_overlay(options: &ExportOptions, inputs: &[PathBuf]) -> Result<f32> {
    let super::inputs::Collected { files, problems, notes } = super::inputs::collect(inputs);
    for note in notes {
        eprintln!("medpatch: warning: {note}");
    }
    if let Some((path, problem)) = problems.first() {
        bail!("cannot calibrate the overlay range on {}: {problem}", path.display());
    }
    if files.is_empty() {
        bail!("no images to calibrate the overlay range on (looked for .png, .jpg, .jpeg, .dcm, .dicom files)");
    }
    let name = options.output.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let scratch = options.output.with_file_name(format!(".{name}.calibrating"));
    let result = (|| -> Result<f32> {
        medpatch_exporter::export(&ExportOptions { output: scratch.clone(), ..options.clone() })?;
        let engine = Engine::builder().model_path(&scratch).build()?;
        // A few images at a time: only the patch logits are kept, not the decoded images.
        let mut logits = Vec::new();
        for chunk in files.chunks(16) {
            // The engine's errors name the file.
            for prediction in engine.predict_paths(chunk) {
                let prediction = prediction.context("cannot calibrate the overlay range")?;
                logits.extend_from_slice(&prediction.patch_logits);
            }
        }
        let range = explain::calibrate_overlay_logit_range(&logits)
            .context("the calibration images gave no usable patch logits (all zero or not finite)")?;
        eprintln!(
            "overlay range calibrated on {} images ({} patch logits, provider {}): ±{range} logits",
            files.len(),
            logits.len(),
            engine.provider()
        );
        Ok(range)
    })();
    let _ = std::fs::remove_file(&scratch);
    result
}
