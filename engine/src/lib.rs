//! MedicalPatchNet inference, stage by stage:
//! [`decode`] (PNG, JPEG, DICOM) → [`preprocess`] (the seed's centre crop and antialiased resize)
//! → [`tile`] (8×8 patches of 64×64) → [`backend`] (ONNX Runtime, OpenVINO or tract) → [`explain`]
//! (mean of patch logits, saliency maps). [`Engine`] strings them together.

pub mod backend;
/// Decoding lives in its own crate (the fuzz targets and the web build use it alone).
pub use medpatch_decode as decode;
mod engine;
pub mod explain;
pub mod layers;
pub mod model;
pub mod preprocess;
pub mod render;
pub mod report;
pub mod tile;

pub use backend::{BackendError, BackendOptions, Precision, PrecisionCheck, Provider, ProviderChoice};
pub use engine::{
    DEFAULT_MODEL_BYTES, DenseMap, Engine, EngineBuilder, Input, Loaded, ModelSource, Prediction, Timings,
};
pub use explain::MapKind;
pub use model::{Model, ModelOrigin};

/// Everything that can go wrong in the library. No panic crosses the library boundary.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model {origin}: {problem}")]
    Model { origin: String, problem: String },
    #[error("provider {provider} is not available: {reason}")]
    ProviderUnavailable { provider: &'static str, reason: String },
    /// Running the model failed; `input` names the image (or batch) it failed on, where known.
    #[error("{}backend failed: {error}", input.as_deref().map(|i| format!("{i}: ")).unwrap_or_default())]
    Backend { input: Option<String>, error: BackendError },
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
    #[error("{0}")]
    Input(String),
    /// A bug in medpatch (an invariant broke); please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<BackendError> for EngineError {
    fn from(error: BackendError) -> Self {
        EngineError::Backend { input: None, error }
    }
}
