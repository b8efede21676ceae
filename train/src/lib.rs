//! medpatch-train: MedicalPatchNet training in libtorch (tch), CheXpert and synthetic data.
//!
//! * [`model`] — torchvision-exact EfficientNetV2 / MedicalPatchNet in tch (torchvision names).
//! * [`optim`], [`schedule`] — PyTorch's AdamW and OneCycleLR, written out (checkpointable).
//! * [`data`] — CheXpert CSVs, offline preprocessing, loading, augmentation, worker threads.
//! * [`synth`], [`rle`] — the synthetic chest X-ray benchmark and CheXlocalize's COCO RLE (no tch).
//! * [`metrics`] — per-class AUROC.
//! * [`trainer`] — the training loop, evaluation and checkpoints.

pub mod data;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod rle;
pub mod schedule;
pub mod synth;
pub mod trainer;

pub use tch;
