//! MedicalPatchNet results as DICOM objects that go back into the source image's study (the IHE
//! "AI Results" pattern):
//!
//! * a **Comprehensive 3D SR** with TID 1500 at its root ([`sr`]): one measurement group per
//!   class with the probability, present/absent when the model has a threshold, the source image
//!   referenced, the algorithm identified;
//! * a **FRACTIONAL Segmentation** ([`seg`]) with one segment per mapped class: each patch's
//!   probability on the source image's pixel grid ([`geometry`] inverts the engine's centre crop);
//! * a **Secondary Capture** colour overlay per mapped class ([`sc`]), in the overlay PNGs' colours.
//!
//! Patient and study attributes are copied from the source; each object has its own new series.
//! Nothing here runs a model: callers pass a prediction's numbers ([`Findings`]) and the source
//! ([`SourceImage`]). A source that is not DICOM is refused ([`DicomOutError::NotDicom`]): results
//! without the source's patient and study would have to invent them.

mod codes;
mod ds;
pub mod geometry;
mod sc;
pub mod seg;
mod source;
mod sr;
pub mod uid;

pub use codes::{Code, FindingCodes, LOCAL_SCHEME, finding_codes};
pub use source::SourceImage;

use dicom_object::{FileDicomObject, FileMetaTableBuilder, InMemDicomObject};
use medpatch_engine::{Engine, Model, Prediction};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Series numbers of the three result series (high, so that they sort after the modality's).
pub const SR_SERIES_NUMBER: u32 = 9901;
pub const SEG_SERIES_NUMBER: u32 = 9902;
pub const SC_SERIES_NUMBER: u32 = 9903;

/// medpatch's implementation class UID and version name in the files' meta header.
const IMPLEMENTATION_VERSION_NAME: &str = concat!("MEDPATCH_", env!("CARGO_PKG_VERSION"));
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

pub fn implementation_class_uid() -> String {
    uid::derived_uid(&["medpatch implementation"])
}

#[derive(Debug, thiserror::Error)]
pub enum DicomOutError {
    #[error(
        "{name} is {what}: DICOM results need a DICOM input, whose patient and study they are filed under; \
         no DICOM objects were written for it"
    )]
    NotDicom { name: String, what: &'static str },
    #[error("{name}: {problem}")]
    Source { name: String, problem: String },
    #[error("the prediction does not fit the model: {0}")]
    Findings(String),
    #[error("cannot encode the DICOM object: {0}")]
    Encode(String),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Who made the results: the IHE AIR algorithm identification.
#[derive(Debug, Clone)]
pub struct Algorithm {
    /// "MedicalPatchNet".
    pub name: String,
    /// medpatch's version.
    pub version: String,
    pub manufacturer: String,
    /// The model: its file name, or "embedded default model".
    pub model_name: String,
    /// SHA-256 (hex) of the ONNX model file.
    pub model_sha256: String,
    /// The patch logit at which the overlay's colours saturate (the model's own range).
    pub overlay_logit_range: f32,
}

impl Algorithm {
    /// The algorithm as medpatch describes itself, for a model of this name and SHA-256.
    pub fn medpatch(model_name: &str, model_sha256: &str, overlay_logit_range: f32) -> Algorithm {
        Algorithm {
            name: "MedicalPatchNet".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            manufacturer: "medpatch".into(),
            model_name: model_name.chars().take(64).collect(),
            model_sha256: model_sha256.to_string(),
            overlay_logit_range,
        }
    }

    /// `engine`'s model as the algorithm: its file name and hash; the overlays saturate at
    /// `overlay_logit_range` (default: the model's own range).
    pub fn for_engine(engine: &Engine, overlay_logit_range: Option<f32>) -> Algorithm {
        let model = engine.model();
        let range = overlay_logit_range.unwrap_or_else(|| model.metadata.overlay_logit_range());
        Algorithm::medpatch(&model.name(), model.sha256(), range)
    }
    /// A stable identity for this model as a device (Device UID, Device Observer UID).
    pub fn device_uid(&self) -> String {
        uid::derived_uid(&["device", &self.model_sha256, &self.version])
    }
    /// Device Serial Number (LO, 64 characters): the start of the model's hash.
    pub fn device_serial_number(&self) -> String {
        format!("sha256:{}", &self.model_sha256[..self.model_sha256.len().min(16)])
    }
    pub fn description(&self) -> String {
        format!(
            "Processing Algorithm: {} {} (medpatch), model {} sha256 {}",
            self.name, self.version, self.model_name, self.model_sha256
        )
    }
}

/// A prediction's numbers, in the model's class order.
#[derive(Debug, Clone, Copy)]
pub struct Findings<'a> {
    pub classes: &'a [String],
    /// sigmoid(image logit) per class.
    pub probabilities: &'a [f32],
    /// `[grid²][classes]`, patches row-major.
    pub patch_logits: &'a [f32],
    pub grid: usize,
    /// Per-class probability thresholds (the model's `medpatch.thresholds`), if it has them.
    pub thresholds: Option<&'a [f32]>,
}

impl<'a> Findings<'a> {
    /// `prediction`'s findings, in `model`'s class order, with its thresholds.
    pub fn of(model: &'a Model, prediction: &'a Prediction) -> Self {
        Findings {
            classes: &model.metadata.classes,
            probabilities: &prediction.probabilities,
            patch_logits: &prediction.patch_logits,
            grid: prediction.grid,
            thresholds: model.metadata.thresholds.as_deref(),
        }
    }

    fn check(&self) -> Result<(), DicomOutError> {
        let n = self.classes.len();
        let bad = |m: String| Err(DicomOutError::Findings(m));
        if n == 0 || self.grid == 0 {
            return bad("no classes or no patches".into());
        }
        if self.probabilities.len() != n {
            return bad(format!("{} probabilities for {n} classes", self.probabilities.len()));
        }
        if self.patch_logits.len() != self.grid * self.grid * n {
            let (len, grid) = (self.patch_logits.len(), self.grid);
            return bad(format!("{len} patch logits for {grid}×{grid} patches of {n} classes"));
        }
        if self.thresholds.is_some_and(|t| t.len() != n) {
            return bad(format!("{} thresholds for {n} classes", self.thresholds.map_or(0, |t| t.len())));
        }
        if self.probabilities.iter().chain(self.patch_logits).any(|v| !v.is_finite()) {
            return bad("a value is not finite".into());
        }
        Ok(())
    }

    /// Whether class `i` is called present: at the model's threshold, else at 0.5.
    pub fn is_present(&self, i: usize) -> bool {
        self.probabilities[i] >= self.thresholds.map_or(0.5, |t| t[i])
    }

    /// The classes to map when none are chosen: those called present; when none is, the most
    /// probable one, so that every result has a map to look at.
    pub fn default_map_classes(&self) -> Vec<usize> {
        let present: Vec<usize> = (0..self.classes.len()).filter(|&i| self.is_present(i)).collect();
        if !present.is_empty() {
            return present;
        }
        let top = (0..self.classes.len()).max_by(|&a, &b| self.probabilities[a].total_cmp(&self.probabilities[b]));
        top.into_iter().collect()
    }
}

/// What to write.
#[derive(Debug, Clone)]
pub struct Options {
    /// Classes (indices) that get a segment and an overlay; empty: the SR only.
    pub map_classes: Vec<usize>,
    /// When the objects are made (content date and time); now by default.
    pub created: SystemTime,
}

/// One written object.
#[derive(Debug, Clone)]
pub struct ResultObject {
    pub kind: ObjectKind,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub file: FileDicomObject<InMemDicomObject>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectKind {
    StructuredReport,
    Segmentation,
    /// The overlay of this class (index).
    Overlay(usize),
}

impl ResultObject {
    /// The whole DICOM file (preamble, meta header, data set).
    pub fn to_bytes(&self) -> Result<Vec<u8>, DicomOutError> {
        let mut bytes = Vec::new();
        self.file.write_all(&mut bytes).map_err(|e| DicomOutError::Encode(e.to_string()))?;
        Ok(bytes)
    }
}

/// The result objects of one source image: the SR, the segmentation (when classes are mapped),
/// one overlay per mapped class.
#[derive(Debug, Clone)]
pub struct ResultObjects {
    pub objects: Vec<ResultObject>,
}

impl ResultObjects {
    /// File names: `<stem>.sr.dcm`, `<stem>.seg.dcm`, `<stem>.overlay.<class>.dcm`.
    pub fn file_name(&self, object: &ResultObject, stem: &str, classes: &[String]) -> String {
        match object.kind {
            ObjectKind::StructuredReport => format!("{stem}.sr.dcm"),
            ObjectKind::Segmentation => format!("{stem}.seg.dcm"),
            ObjectKind::Overlay(c) => {
                format!("{stem}.overlay.{c:02}-{}.dcm", medpatch_models::contract::class_file_names(classes)[c])
            }
        }
    }

    /// Write every object into `dir` (each whole or not at all); the paths, in order.
    pub fn write_to_dir(&self, dir: &Path, stem: &str, classes: &[String]) -> Result<Vec<PathBuf>, DicomOutError> {
        let mut written = Vec::with_capacity(self.objects.len());
        for object in &self.objects {
            let path = dir.join(self.file_name(object, stem, classes));
            let bytes = object.to_bytes()?;
            medpatch_models::write_atomically(&path, &bytes)
                .map_err(|source| DicomOutError::Write { path: path.clone(), source })?;
            written.push(path);
        }
        Ok(written)
    }
}

/// The UIDs of one source image's results: derived from the source instance, the model and
/// medpatch's version (see [`uid`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultUids {
    pub sr_series: String,
    pub seg_series: String,
    pub sc_series: String,
    pub sr: String,
    pub seg: String,
    /// Per class index.
    pub overlays: Vec<String>,
}

impl ResultUids {
    pub fn new(source: &SourceImage, algorithm: &Algorithm, classes: usize) -> ResultUids {
        let series = |kind: &str| {
            uid::derived_uid(&["series", kind, &source.series_uid, &algorithm.model_sha256, &algorithm.version])
        };
        let instance = |kind: &str| {
            uid::derived_uid(&["instance", kind, &source.sop_instance_uid, &algorithm.model_sha256, &algorithm.version])
        };
        ResultUids {
            sr_series: series("sr"),
            seg_series: series("seg"),
            sc_series: series("sc"),
            sr: instance("sr"),
            seg: instance("seg"),
            overlays: (0..classes).map(|c| instance(&format!("sc-{c}"))).collect(),
        }
    }
}

fn finish(
    obj: InMemDicomObject,
    kind: ObjectKind,
    class_uid: &str,
    instance_uid: &str,
) -> Result<ResultObject, DicomOutError> {
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(class_uid)
        .media_storage_sop_instance_uid(instance_uid)
        .implementation_class_uid(implementation_class_uid())
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME);
    let file = obj.with_meta(meta).map_err(|e| DicomOutError::Encode(e.to_string()))?;
    Ok(ResultObject { kind, sop_class_uid: class_uid.into(), sop_instance_uid: instance_uid.into(), file })
}

/// The result objects of `prediction`, made by `engine` from `source`, for the classes
/// `map_classes` (default: those called present, else the most probable); the overlays saturate
/// at `overlay_logit_range` (default: the model's). What every front end calls: the CLI, the
/// node, the C ABI and Python.
pub fn for_prediction(
    engine: &Engine,
    source: &SourceImage,
    prediction: &Prediction,
    map_classes: Option<&[usize]>,
    overlay_logit_range: Option<f32>,
) -> Result<ResultObjects, DicomOutError> {
    let findings = Findings::of(engine.model(), prediction);
    let map_classes = map_classes.map_or_else(|| findings.default_map_classes(), <[usize]>::to_vec);
    let options = Options { map_classes, created: SystemTime::now() };
    build(source, &findings, &Algorithm::for_engine(engine, overlay_logit_range), &options)
}

/// The results of `prediction` on the DICOM file `source`, written into `dir` (made if missing)
/// as `<SOP Instance UID>.sr.dcm`, `.seg.dcm` and `.overlay.<NN>-<class>.dcm`, each whole or not
/// at all; the paths written, in order. See [`for_prediction`] for the classes and the range.
pub fn write_for_file(
    engine: &Engine,
    prediction: &Prediction,
    source: &Path,
    dir: &Path,
    map_classes: Option<&[usize]>,
    overlay_logit_range: Option<f32>,
) -> Result<Vec<PathBuf>, DicomOutError> {
    let name = source.display().to_string();
    let bytes = medpatch_models::read_regular_file(source, medpatch_engine::decode::MAX_FILE_BYTES)
        .map_err(|e| DicomOutError::Source { name: name.clone(), problem: e.to_string() })?;
    let source = SourceImage::from_bytes(&bytes, &name)?;
    let objects = for_prediction(engine, &source, prediction, map_classes, overlay_logit_range)?;
    std::fs::create_dir_all(dir).map_err(|source| DicomOutError::Write { path: dir.to_path_buf(), source })?;
    objects.write_to_dir(dir, &source.sop_instance_uid, &engine.model().metadata.classes)
}

/// Build the result objects of one prediction on `source`.
pub fn build(
    source: &SourceImage,
    findings: &Findings<'_>,
    algorithm: &Algorithm,
    options: &Options,
) -> Result<ResultObjects, DicomOutError> {
    findings.check()?;
    if let Some(&bad) = options.map_classes.iter().find(|&&c| c >= findings.classes.len()) {
        return Err(DicomOutError::Findings(format!("class index {bad} out of range")));
    }
    let utc_offset = source.text(dicom_dictionary_std::tags::TIMEZONE_OFFSET_FROM_UTC);
    let stamp = ds::Stamp::new(options.created, utc_offset.as_deref());
    let common = ds::Common { source, algorithm, stamp: &stamp };
    let uids = ResultUids::new(source, algorithm, findings.classes.len());
    let mut objects = vec![finish(
        sr::build(&common, findings, &uids.sr_series, &uids.sr),
        ObjectKind::StructuredReport,
        sr::COMPREHENSIVE_3D_SR,
        &uids.sr,
    )?];
    if !options.map_classes.is_empty() {
        objects.push(finish(
            seg::build(&common, findings, &options.map_classes, &uids.seg_series, &uids.seg),
            ObjectKind::Segmentation,
            seg::SEGMENTATION_STORAGE,
            &uids.seg,
        )?);
    }
    for (k, &c) in options.map_classes.iter().enumerate() {
        objects.push(finish(
            sc::build(&common, findings, c, k as u32 + 1, &uids.sc_series, &uids.overlays[c]),
            ObjectKind::Overlay(c),
            sc::SECONDARY_CAPTURE_STORAGE,
            &uids.overlays[c],
        )?);
    }
    Ok(ResultObjects { objects })
}
