//! `medpatch-train`: make the synthetic benchmark, preprocess CheXpert, train MedicalPatchNet,
//! evaluate checkpoints, explain the whole-image baseline (Grad-CAM family), benchmark training throughput.

mod cli;

use clap::{Parser, Subcommand};
use cli::{bench, cam, evaluate, preprocess, synth, train};

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
    Synth(synth::SynthArgs),
    /// The seed's offline preprocessing of CheXpert: centre crop, Lanczos to 1024², grayscale JPEG q100.
    Preprocess(preprocess::PreprocessArgs),
    /// Train; writes a checkpoint (safetensors + JSON) every epoch.
    Train(train::TrainArgs),
    /// AUROC per class of a checkpoint on a CSV split.
    Evaluate(evaluate::EvaluateArgs),
    /// Grad-CAM / Grad-CAM++ / Eigen-CAM maps of a whole-image checkpoint (the paper's baselines).
    Cam(cam::CamArgs),
    /// Training throughput (forward + backward + AdamW step) on random inputs.
    Bench(bench::BenchArgs),
    /// What libtorch this binary found: version, threads, CUDA, cuDNN.
    Doctor,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Synth(a) => synth::synth_cmd(a),
        Command::Preprocess(a) => preprocess::preprocess_cmd(a),
        Command::Train(a) => train::train_cmd(a),
        Command::Evaluate(a) => evaluate::evaluate_cmd(a),
        Command::Cam(a) => cam::cam_cmd(a),
        Command::Bench(a) => bench::bench_cmd(a),
        Command::Doctor => cli::doctor(),
    };
    if let Err(err) = result {
        eprintln!("medpatch-train: error: {err:#}");
        std::process::exit(1);
    }
}
