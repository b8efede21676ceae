use anyhow::Result;
use clap::Args;
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
    #[arg(long, default_value_t = 14, requires = "random_init")]
    num_classes: usize,
    /// Architecture: a built-in name (efficientnet_v2_s, efficientnet_v2_tiny) or a JSON config file.
    #[arg(long, default_value = "efficientnet_v2_s")]
    arch: String,
    /// Patch side: 64 for MedicalPatchNet, 512 for the whole-image EfficientNetV2-S baseline.
    #[arg(long, default_value_t = 64)]
    patch_size: u32,
    /// Side of the preprocessed square X-ray.
    #[arg(long, default_value_t = 512)]
    image_size: u32,
    /// Comma-separated output names (default: the 14 CheXpert findings).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
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
    let report = medpatch_exporter::export(&options)?;
    let m = &report.metadata;
    eprintln!(
        "wrote {}: {} ({} parameters after batch-norm folding, {} nodes, {:.1} MB) in {:.2} s\n  \
         input patches [N,1,{p},{p}], output logits [N,{}], grid {g}x{g} on {s}x{s} images\n  source: {}{}",
        report.output.display(),
        m.architecture,
        report.parameters,
        report.nodes,
        report.file_bytes as f64 / 1e6,
        report.elapsed.as_secs_f64(),
        m.classes.len(),
        m.source,
        if m.source_sha256.is_empty() { String::new() } else { format!(" (sha256 {})", m.source_sha256) },
        p = m.patch_size,
        g = m.grid(),
        s = m.image_size,
    );
    Ok(ExitCode::SUCCESS)
}
