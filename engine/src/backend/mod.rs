//! Where patches become logits: ONNX Runtime (TensorRT, CUDA or CPU execution provider) or tract.
//!
//! [`select`] resolves a [`ProviderChoice`] into a running [`Backend`]. `auto` tries TensorRT →
//! CUDA → ONNX Runtime CPU → tract and keeps the first that really initialises on this model; it
//! never falls back silently: every provider it skipped is returned with the reason.

mod onnxruntime;
mod tract;

use crate::EngineError;
use crate::model::Model;
use serde::Serialize;
use std::path::PathBuf;

pub use onnxruntime::{OrtLibrary, default_ort_library};

/// A backend that actually ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    TensorRt,
    Cuda,
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    Tract,
}

impl Provider {
    /// Every provider, in the order `auto` tries them (fastest first). The one list: parsing,
    /// the CLI's help and `auto` all derive from it.
    pub const ALL: [Provider; 4] = [Provider::TensorRt, Provider::Cuda, Provider::Cpu, Provider::Tract];

    /// Names accepted for this provider: its name first, then aliases.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Provider::TensorRt => &["tensorrt", "trt"],
            Provider::Cuda => &["cuda"],
            Provider::Cpu => &["cpu", "ort"],
            Provider::Tract => &["tract"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
            Provider::Tract => "tract",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Provider::TensorRt => "ONNX Runtime TensorRT execution provider",
            Provider::Cuda => "ONNX Runtime CUDA execution provider",
            Provider::Cpu => "ONNX Runtime CPU execution provider",
            Provider::Tract => "tract (pure Rust)",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProviderChoice {
    #[default]
    Auto,
    Only(Provider),
}

impl std::str::FromStr for ProviderChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(ProviderChoice::Auto);
        }
        Provider::ALL
            .into_iter()
            .find(|p| p.names().contains(&s))
            .map(ProviderChoice::Only)
            .ok_or_else(|| format!("unknown provider '{s}': use {}", ProviderChoice::names().join(", ")))
    }
}

impl ProviderChoice {
    /// The choices a user can write: `auto` and each provider's name, in `auto`'s order.
    pub fn names() -> Vec<&'static str> {
        std::iter::once("auto").chain(Provider::ALL.iter().map(|p| p.name())).collect()
    }
}

#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Intra-op threads (0: the runtime's default, all cores).
    pub threads: usize,
    /// ONNX Runtime shared library; default: `ORT_DYLIB_PATH`, then beside the executable.
    pub ort_library: Option<PathBuf>,
    /// TensorRT: build fp16 engines.
    pub tensorrt_fp16: bool,
    /// TensorRT: where built engines are cached (building one takes minutes).
    pub tensorrt_cache: Option<PathBuf>,
}

/// Runs the patch backbone: `patches` is `[n, C, P, P]` row-major, the result `[n, classes]`.
pub trait Backend: Send + Sync {
    fn provider(&self) -> Provider;
    fn run(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, EngineError>;
}

/// The chosen backend and why the ones before it were not used.
pub struct Selection {
    pub backend: Box<dyn Backend>,
    pub skipped: Vec<(Provider, String)>,
}

pub fn select(model: &Model, choice: ProviderChoice, options: &BackendOptions) -> Result<Selection, EngineError> {
    let order = match choice {
        ProviderChoice::Auto => Provider::ALL.to_vec(),
        ProviderChoice::Only(p) => vec![p],
    };
    let mut skipped = Vec::new();
    for provider in order {
        let attempt = match provider {
            Provider::Tract => tract::TractBackend::new(model, options).map(|b| Box::new(b) as Box<dyn Backend>),
            ort_provider => {
                onnxruntime::OrtBackend::new(model, ort_provider, options).map(|b| Box::new(b) as Box<dyn Backend>)
            }
        };
        match attempt {
            Ok(backend) => return Ok(Selection { backend, skipped }),
            Err(reason) if choice == ProviderChoice::Auto => skipped.push((provider, reason)),
            Err(reason) => return Err(EngineError::ProviderUnavailable { provider: provider.name(), reason }),
        }
    }
    Err(EngineError::ProviderUnavailable {
        provider: "auto",
        reason: skipped.iter().map(|(p, r)| format!("{p}: {r}")).collect::<Vec<_>>().join("; "),
    })
}
