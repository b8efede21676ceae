//! `medpatch predict --dicom-out DIR`: one prediction's DICOM results (the `medpatch-dicom-out`
//! crate) written beside the other outputs, named by the source's SOP Instance UID.

use medpatch_dicom_out::{Algorithm, DicomOutError, Findings, Options, SourceImage};
use medpatch_engine::{Engine, ModelOrigin, Prediction};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::OnceLock;
use std::time::SystemTime;

/// How the results name the model: its file name (not the path: the objects leave this machine).
pub fn model_name(origin: &ModelOrigin) -> String {
    match origin {
        ModelOrigin::File(path) => {
            path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
        }
        other => other.to_string(),
    }
}

/// This engine's algorithm identity; the model file is hashed once per process.
pub fn algorithm(engine: &Engine, overlay_logit_range: f32) -> Algorithm {
    static HASHED: OnceLock<Algorithm> = OnceLock::new();
    let model = engine.model();
    let mut algorithm = HASHED
        .get_or_init(|| Algorithm::medpatch(&model_name(&model.origin), &model.bytes, overlay_logit_range))
        .clone();
    algorithm.overlay_logit_range = overlay_logit_range;
    algorithm
}

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
    let name = path.display().to_string();
    let bytes = medpatch_models::read_regular_file(path, medpatch_engine::decode::MAX_FILE_BYTES)
        .map_err(|e| format!("{name}: {e}"))?;
    let source = match SourceImage::from_bytes(&bytes, &name) {
        Ok(source) => source,
        Err(e @ DicomOutError::NotDicom { .. }) => {
            eprintln!("medpatch: warning: {e}");
            return Ok(json!({ "skipped": e.to_string() }));
        }
        Err(e) => return Err(e.to_string()),
    };
    let metadata = &engine.model().metadata;
    let findings = Findings {
        classes: &metadata.classes,
        probabilities: &prediction.probabilities,
        patch_logits: &prediction.patch_logits,
        grid: prediction.grid,
        thresholds: metadata.thresholds.as_deref(),
    };
    let map_classes = chosen.map_or_else(|| findings.default_map_classes(), <[usize]>::to_vec);
    let options = Options { map_classes, created: SystemTime::now() };
    let objects = medpatch_dicom_out::build(&source, &findings, &algorithm(engine, overlay_logit_range), &options)
        .map_err(|e| format!("{name}: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let written = objects.write_to_dir(dir, &source.sop_instance_uid, &metadata.classes).map_err(|e| e.to_string())?;
    Ok(Value::Array(written.iter().map(|p| json!(p.display().to_string())).collect()))
}
