//! The MedicalPatchNet model contract, shared by the exporter (which writes it), the engine (which
//! reads it) and the trainer: the 14 CheXpert classes, the torchvision EfficientNetV2 architecture
//! configs, and the ONNX metadata that makes an exported model self-describing.

pub mod arch;
pub mod contract;
pub mod io;
pub mod panics;
pub mod rng;
pub mod weights;

pub use arch::{ArchConfig, ArchError, BlockKind, BlockSpec, LayerSpec, StageConfig};
pub use contract::{CHEXPERT_CLASSES, ContractError, InputConvention, ModelMetadata};
pub use io::{
    MAX_DATA_FILE_BYTES, ReadError, check_output_path, check_regular_file, read_regular_file, read_regular_text,
    write_atomically,
};
pub use rng::Rng;
pub use weights::WeightProblems;
