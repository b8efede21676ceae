//! `medpatch predict --dicom-out DIR`: one prediction's DICOM results (the `medpatch-dicom-out`
//! crate) written beside the other outputs, named by the source's SOP Instance UID.

use medpatch_dicom_out::DicomOutError;
use medpatch_engine::{Engine, Prediction};
use serde_json::{Value, json};
use std::path::Path;

/// Write the SR, segmentation and overlays of `prediction` on the DICOM file `path` into `dir`.
/// `chosen`: the classes to map (default: those called present, else the most probable). A
/// non-DICOM input gets a warning and `{"skipped": why}`, not an error: its prediction stands.
pub fn write(
    engine: &Engine,
    path: &Path,
    prediction: &Prediction,
    dir: &Path,
    chosen: Option<&[usize]>,
    overlay_logit_range: f32,
) -> Result<Value, String> {
    match medpatch_dicom_out::write_for_file(engine, prediction, path, dir, chosen, Some(overlay_logit_range)) {
        Ok(written) => Ok(Value::Array(written.iter().map(|p| json!(p.display().to_string())).collect())),
        Err(e @ DicomOutError::NotDicom { .. }) => {
            eprintln!("medpatch: warning: {e}");
            Ok(json!({ "skipped": e.to_string() }))
        }
        Err(e) => Err(e.to_string()),
    }
}
