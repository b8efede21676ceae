//! medpatch-eval: the MedicalPatchNet paper's evaluation, in Rust, without libtorch or Python.
//!
//! * [`labels`] — CheXpert CSVs (the seed's label rules), CheXlocalize's tasks and image ids.
//! * [`metrics`] — AUROC, ROC curve, Youden threshold, confusion counts (scikit-learn's numbers).
//! * [`bootstrap`] — seeded, parallel percentile bootstrap intervals (the seed's protocol).
//! * [`classification`] — Table 1 for one split.
//! * [`evaluation`] — one split's whole evaluation without I/O: cases, per-case reduction, the report.
//! * [`rle`] — COCO run-length encoding of CheXlocalize's ground truth.
//! * [`geometry`] — maps back to the original image: crop box or stretch, torch-exact bilinear.
//! * [`localization`] — hit rate, mIoU (TP, FP, FN / TP only), the seed's threshold search;
//!   [`chexlocalize_bootstrap`] — CheXlocalize's own 1,000-replicate summary (numpy's MT19937).
//! * [`npy`] — `.npy` maps from other methods; [`numpy`] — numpy's summation, bit for bit.
//! * [`report`], [`plot`] — markdown/CSV/JSON, thresholds files, ROC curves and saliency sheets.
//! * [`rng`] — the reproducible generator shared with the trainer and the synthetic benchmark.

pub mod bootstrap;
pub mod chexlocalize_bootstrap;
pub mod classification;
pub mod evaluation;
pub mod geometry;
pub mod labels;
pub mod localization;
pub mod metrics;
pub mod npy;
pub mod numpy;
pub mod plot;
pub mod report;
pub mod rle;
