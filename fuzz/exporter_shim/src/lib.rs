//! `medpatch_exporter::{pickle, weights}`, the same source files, without the rest of the exporter.
#[path = "../../../exporter/src/pickle.rs"]
pub mod pickle;
#[path = "../../../exporter/src/weights.rs"]
pub mod weights;
