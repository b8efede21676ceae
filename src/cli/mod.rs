pub mod bench;
pub mod dicom_node;
pub mod dicom_results;
pub mod evaluate;
pub mod export;
pub mod inputs;
pub mod predict;
pub mod quantize;
#[cfg(feature = "serve")]
pub mod serve;

use anyhow::Result;
use clap::Args;
use medpatch_engine::{BackendOptions, Engine, ModelSource, Precision, ProviderChoice};
use std::path::PathBuf;
use std::str::FromStr;

pub mod exit {
    use std::process::ExitCode;
    /// An input or output failed; the rest was still processed.
    pub fn failure() -> ExitCode {
        ExitCode::from(1)
    }
    /// The command line itself is wrong (clap uses 2 as well).
    pub fn usage() -> ExitCode {
        ExitCode::from(2)
    }
}

/// How to build the engine: shared by `predict` and `bench`.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// An ONNX model written by `medpatch export` (default: the embedded demo model).
    #[arg(long, value_name = "FILE.onnx")]
    pub model: Option<PathBuf>,
    /// auto, tensorrt, cuda, cpu (ONNX Runtime's CPU provider), openvino or tract. auto tries
    /// them in that order, skipping those that cannot run --precision, and reports what it skipped.
    #[arg(long, default_value = "auto", value_parser = ProviderChoice::from_str)]
    pub provider: ProviderChoice,
    /// f32 (exact, every provider), bf16 (OpenVINO on CPUs with AVX512-BF16 or AMX), fp16
    /// (TensorRT; tract on ARM CPUs with FP16) or int8 (a model from `medpatch quantize`; ONNX
    /// Runtime CPU, OpenVINO, TensorRT). bf16, fp16 and int8 are checked against f32 when the
    /// engine starts.
    #[arg(long, default_value = "f32", value_parser = Precision::from_str)]
    pub precision: Precision,
    /// int8: the f32 model the quantized one was made from, run for the self-check (default: the
    /// f32 logits `medpatch quantize` stored in the quantized model).
    #[arg(long, value_name = "FILE.onnx")]
    pub reference_model: Option<PathBuf>,
    /// bf16: layers left in f32, comma-separated: presets stem, head, classifier, se, none, or
    /// layer names such as features.4.0 (default stem,classifier).
    #[arg(long, value_name = "LAYERS", value_delimiter = ',')]
    pub keep_f32: Option<Vec<String>>,
    /// Intra-op threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Patches per backend call (64 = one 512² image: the fastest measured on CPU: docs/speed.md).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// ONNX Runtime library (libonnxruntime.so); default: $ORT_DYLIB_PATH, then beside medpatch.
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// OpenVINO C library (libopenvino_c.so*, or its folder); default: $OPENVINO_LIB_PATH, then
    /// beside medpatch, then the active Python environment's `openvino` package.
    #[arg(long, value_name = "PATH")]
    pub openvino_lib: Option<PathBuf>,
    /// TensorRT: cache built engines here (the first build takes minutes).
    #[arg(long, value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
}

impl EngineArgs {
    pub fn build(&self) -> Result<Engine> {
        let provider = self.provider;
        let model = self.model.clone().map_or(ModelSource::Default, ModelSource::Path);
        Ok(Engine::builder()
            .model(model)
            .provider(provider)
            .batch_size(self.batch_size)
            .backend_options(BackendOptions {
                threads: self.threads,
                precision: self.precision,
                ort_library: self.ort_lib.clone(),
                openvino_library: self.openvino_lib.clone(),
                tensorrt_cache: self.trt_cache.clone(),
                reference_model: self.reference_model.clone(),
                keep_f32: self.keep_f32.clone(),
            })
            .build()?)
    }
}

/// `--classes`: comma-separated names (matched without regard to ASCII case) or `all`, as model
/// class indices; `None` when not given. An unknown name is a usage error listing the classes.
pub fn chosen_classes(list: Option<&[String]>, classes: &[String]) -> Result<Option<Vec<usize>>, String> {
    let Some(list) = list else { return Ok(None) };
    if list.len() == 1 && list[0] == "all" {
        return Ok(Some((0..classes.len()).collect()));
    }
    list.iter()
        .map(|name| {
            classes
                .iter()
                .position(|c| c.eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| format!("unknown class '{name}'; the model's classes are: {}", classes.join(", ")))
        })
        .collect::<Result<Vec<usize>, String>>()
        .map(Some)
}

/// A progress bar on stderr for `len` images: hidden with `--quiet`, for fewer than two images,
/// and when stderr is not a terminal (a log file gets no bar).
pub fn progress_bar(len: usize, quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || len < 2 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
