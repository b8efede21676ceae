//! The source X-ray: its data set (for the patient, study and references the results copy) and
//! its pixels as the engine decodes them (for the overlay).

use crate::DicomOutError;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions, Tag};
use medpatch_engine::decode::{self, GrayImage};

/// A DICOM X-ray, parsed and decoded.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// Everything before the pixel data.
    pub dataset: InMemDicomObject,
    /// The pixels as the engine sees them: windowed, bright = dense, `[0, 1]`.
    pub image: GrayImage,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub series_uid: String,
}

/// What a non-DICOM file is, for the message that refuses it.
fn format_name(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "a PNG image",
        [0xFF, 0xD8, 0xFF, ..] => "a JPEG image",
        [] => "empty",
        _ => "not a DICOM file",
    }
}

impl SourceImage {
    /// Read a DICOM file (with its `DICM` header; a bare data set has no place in a study).
    /// The pixels go through the engine's decoder first, which checks the file's structure
    /// before dicom-rs believes any length in it.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<SourceImage, DicomOutError> {
        let preamble = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
            ReadPreamble::Always
        } else if bytes.starts_with(b"DICM") {
            ReadPreamble::Never
        } else {
            return Err(DicomOutError::NotDicom { name: name.to_string(), what: format_name(bytes) });
        };
        let image = decode::decode_bytes(bytes, name)
            .map_err(|e| DicomOutError::Source { name: name.to_string(), problem: e.to_string() })?;
        let parsed = std::panic::catch_unwind(|| {
            OpenFileOptions::new().read_preamble(preamble).read_until(tags::PIXEL_DATA).from_reader(bytes)
        });
        let file = match parsed {
            Ok(Ok(file)) => file,
            Ok(Err(e)) => return Err(DicomOutError::Source { name: name.to_string(), problem: e.to_string() }),
            Err(_) => {
                return Err(DicomOutError::Source {
                    name: name.to_string(),
                    problem: "the DICOM parser failed on this file".into(),
                });
            }
        };
        let dataset = file.into_inner();
        let required = |tag: Tag, what: &str| {
            text_of(&dataset, tag).ok_or_else(|| DicomOutError::Source {
                name: name.to_string(),
                problem: format!("it has no {what} {tag}, which results need to refer to it"),
            })
        };
        let source = SourceImage {
            sop_class_uid: required(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            study_uid: required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_uid: required(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            dataset,
            image,
        };
        Ok(source)
    }

    pub fn width(&self) -> u32 {
        self.image.width
    }
    pub fn height(&self) -> u32 {
        self.image.height
    }

    /// An attribute as trimmed text, if present and not empty.
    pub fn text(&self, tag: Tag) -> Option<String> {
        text_of(&self.dataset, tag)
    }
}

fn text_of(dataset: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = dataset.get(tag)?.to_str().ok()?;
    let value = value.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!value.is_empty()).then(|| value.to_string())
}
