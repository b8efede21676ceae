//! medpatch-train: MedicalPatchNet training in libtorch (tch), CheXpert and synthetic data.
//!
//! * [`model`] — torchvision-exact EfficientNetV2 / MedicalPatchNet in tch (torchvision names).
//! * [`optim`], [`schedule`] — PyTorch's AdamW and OneCycleLR, written out (checkpointable).
//! * [`data`] — CheXpert CSVs, offline preprocessing, loading, augmentation, worker threads.
//! * [`synth`], [`rle`] — the synthetic chest X-ray benchmark (`medpatch-synth`) and CheXlocalize's
//!   COCO RLE (`medpatch-eval`); no tch in either.
//! * [`metrics`] — per-class AUROC (`medpatch-eval`, shared with `medpatch evaluate`).
//! * [`cam`] — Grad-CAM, Grad-CAM++, Eigen-CAM on the whole-image baseline (pytorch-grad-cam's rules).
//! * [`trainer`] — the training loop, evaluation and checkpoints.

pub mod cam;
pub mod data;
pub mod model;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use medpatch_eval::{metrics, rle};
pub use medpatch_synth as synth;

pub use tch;
