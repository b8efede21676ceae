use anyhow::{Context, Result, bail};
use clap::Args;
use medpatch_engine::Model;
use medpatch_quantize::{Calibration, Method, QuantizeOptions, layers, qdq::Target};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The f32 model to quantize (written by `medpatch export`).
    #[arg(long, value_name = "FILE.onnx")]
    model: PathBuf,
    /// Calibration X-rays: files or folders (searched recursively), like the ones the model will
    /// see: validation images, not test images.
    #[arg(long, value_name = "INPUT", num_args = 1.., required = true)]
    calibrate: Vec<PathBuf>,
    /// At most this many calibration images (in order); their patches are held in memory (1 MB each).
    #[arg(long, default_value_t = 256)]
    max_images: usize,
    /// How activation ranges are chosen: minmax, or percentile[:P] (leaves out (100 − P)% of the
    /// values at each end; default P = 99.99).
    #[arg(long, default_value = "minmax", value_parser = Method::from_str)]
    method: Method,
    /// Layers left in f32, comma-separated: layer names (features.0, features.4.0.block.2,
    /// classifier.1, a whole block: features.4.0) or presets: stem, head, classifier, se, none.
    #[arg(long, value_delimiter = ',', default_values_t = layers::DEFAULT_KEEP.map(String::from))]
    keep: Vec<String>,
    /// The runtime that will run the model: onnxruntime (also TensorRT: every quantizable layer in
    /// integers) or openvino (quantizers where OpenVINO's CPU plugin fuses them; SiLUs float).
    #[arg(long, default_value = "onnxruntime", value_parser = Target::from_str)]
    target: Target,
    /// Threads for the calibration runs (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Where to write the quantized model.
    #[arg(short, long, value_name = "FILE.onnx")]
    output: PathBuf,
}

pub fn run(args: QuantizeArgs) -> Result<ExitCode> {
    medpatch_models::io::check_output_path(&args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let model = Model::from_path(&args.model)?;
    let super::inputs::Collected { files, problems, notes } = super::inputs::collect(&args.calibrate);
    for note in notes {
        eprintln!("medpatch: warning: {note}");
    }
    if let Some((path, problem)) = problems.first() {
        bail!("cannot calibrate on {}: {problem}", path.display());
    }
    let started = std::time::Instant::now();
    let calibration = Calibration::from_files(&model, &files, args.max_images)?;
    for (path, problem) in &calibration.skipped {
        eprintln!("medpatch: warning: calibration image skipped: {}: {problem}", path.display());
    }
    let options = QuantizeOptions { method: args.method, keep: args.keep, threads: args.threads, target: args.target };
    let quantized = medpatch_quantize::quantize(&model, &calibration, &options)?;
    medpatch_models::write_atomically(&args.output, &quantized.bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let r = &quantized.record;
    let kept = if r.kept_f32.is_empty() { "none".to_string() } else { r.kept_f32.join(", ") };
    eprintln!(
        "wrote {}: int8 QDQ graph of {} for {} ({:.1} MB, was {:.1} MB) in {:.1} s\n  \
         {} of {} nodes quantized ({} weight tensors, {} activation Q/DQ pairs); kept in f32: {kept}\n  \
         calibration: {} images ({} patches, {}), sha256 {}\n  \
         int8 vs f32 on {} calibration patches: max |Δ patch logit| {:.3}, mean {:.4}\n  \
         on the {} self-check patches: max {:.3}, mean {:.4}",
        args.output.display(),
        model.name(),
        options.target.name(),
        quantized.bytes.len() as f64 / 1e6,
        model.bytes.len() as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        quantized.rewritten.quantized_nodes,
        quantized.nodes,
        quantized.rewritten.quantized_weights,
        quantized.rewritten.activation_pairs,
        r.calibration.images,
        r.calibration.patches,
        r.method,
        r.calibration.sha256,
        r.calibration_error.patches,
        r.calibration_error.max_abs,
        r.calibration_error.mean_abs,
        r.self_check.deviation.patches,
        r.self_check.deviation.max_abs,
        r.self_check.deviation.mean_abs,
    );
    Ok(ExitCode::SUCCESS)
}
