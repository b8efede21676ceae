//! `medpatch`: MedicalPatchNet chest X-ray classification with built-in patch saliency.
//!
//! A thin front end over the `medpatch-engine` and `medpatch-exporter` libraries. Exit codes:
//! 0 success, 1 some input or output failed (the others were still processed), 2 usage error.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "medpatch", version, about = "MedicalPatchNet: self-explainable chest X-ray classification", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify chest X-rays (PNG, JPEG, DICOM) and explain each finding with patch saliency maps.
    Predict(cli::predict::PredictArgs),
    /// Write the patch backbone to a self-describing ONNX file from trained weights.
    Export(cli::export::ExportArgs),
    /// Quantize a model to int8 (a QDQ graph) with calibration X-rays: `--precision int8` runs it.
    Quantize(cli::quantize::QuantizeArgs),
    /// Time every backend side by side on one model, with the pipeline split and peak memory.
    Bench(cli::bench::BenchArgs),
    /// The paper's evaluation on a CheXpert-style split: AUROC and thresholded metrics with bootstrap
    /// intervals, CheXlocalize hit rate and mIoU; markdown, CSV, JSON, ROC curves, saliency sheets.
    Evaluate(cli::evaluate::EvaluateArgs),
    /// Serve the model: Open Inference Protocol v2 over REST and gRPC (Triton's clients work), dynamic
    /// batching, Prometheus metrics, POST /v1/predict for a file.
    #[cfg(feature = "serve")]
    Serve(cli::serve::ServeArgs),
    /// A DICOM node: receives X-rays over DICOM (C-STORE), sends the results (TID 1500 SR,
    /// segmentation, overlays) to a PACS through an on-disk queue.
    DicomNode(cli::dicom_node::DicomNodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic is a bug; it still ends with a documented exit code (1), not Rust's 101.
    let result = std::panic::catch_unwind(move || match cli.command {
        Command::Predict(args) => cli::predict::run(args),
        Command::Export(args) => cli::export::run(args),
        Command::Quantize(args) => cli::quantize::run(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Evaluate(args) => cli::evaluate::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => cli::serve::run(args),
        Command::DicomNode(args) => cli::dicom_node::run(args),
    })
    .unwrap_or_else(|_| {
        Err(anyhow::anyhow!("internal error (a bug in medpatch: please report it with the message above)"))
    });
    match result {
        Ok(code) => code,
        // A closed stdout (`medpatch predict dir | head -1`) is the reader saying "enough":
        // stop quietly, as ripgrep does.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let message =
                medpatch_engine::backend::in_terms_of(&format!("{err:#}"), medpatch_engine::backend::FrontEnd::Cli);
            eprintln!("medpatch: error: {message}");
            cli::exit::failure()
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}
