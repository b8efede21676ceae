//! Data set building blocks: typed element writers, code sequences, date/time stamps, and the
//! modules every result object shares (patient and study copied from the source, a new series,
//! the equipment, the algorithm as contributing equipment, SOP common).

use crate::codes::{self, Code};
use crate::{Algorithm, SourceImage};
use dicom_core::value::{C, DataSetSequence};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) type Obj = InMemDicomObject;

pub(crate) fn put_str(obj: &mut Obj, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

pub(crate) fn put_strs(obj: &mut Obj, tag: Tag, vr: VR, values: &[&str]) {
    let values: C<String> = values.iter().map(|v| v.to_string()).collect();
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Strs(values)));
}

/// A Type 2 attribute whose value is unknown: present, zero length.
pub(crate) fn put_empty(obj: &mut Obj, tag: Tag, vr: VR) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
}

pub(crate) fn put_u16(obj: &mut Obj, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::U16(C::from_elem(value, 1))));
}

/// The Image Pixel module of an 8-bit unsigned image on the source's pixel grid (the pixel data
/// itself is the caller's).
pub(crate) fn put_8bit_image_pixel(obj: &mut Obj, samples: u16, photometric: &str, source: &crate::SourceImage) {
    put_u16(obj, tags::SAMPLES_PER_PIXEL, samples);
    put_str(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric);
    put_u16(obj, tags::ROWS, source.height() as u16);
    put_u16(obj, tags::COLUMNS, source.width() as u16);
    put_u16(obj, tags::BITS_ALLOCATED, 8);
    put_u16(obj, tags::BITS_STORED, 8);
    put_u16(obj, tags::HIGH_BIT, 7);
    put_u16(obj, tags::PIXEL_REPRESENTATION, 0);
}

pub(crate) fn put_u32(obj: &mut Obj, tag: Tag, value: u32) {
    obj.put(DataElement::new(tag, VR::UL, PrimitiveValue::U32(C::from_elem(value, 1))));
}

pub(crate) fn put_tag(obj: &mut Obj, tag: Tag, value: Tag) {
    obj.put(DataElement::new(tag, VR::AT, PrimitiveValue::Tags(C::from_elem(value, 1))));
}

pub(crate) fn put_seq(obj: &mut Obj, tag: Tag, items: Vec<Obj>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

pub(crate) fn code_item(code: &Code) -> Obj {
    let mut item = Obj::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, &code.value);
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, &code.scheme);
    put_str(&mut item, tags::CODE_MEANING, VR::LO, &code.meaning);
    item
}

pub(crate) fn put_code(obj: &mut Obj, tag: Tag, code: &Code) {
    put_seq(obj, tag, vec![code_item(code)]);
}

/// A reference to an instance: Referenced SOP Class and Instance UIDs.
pub(crate) fn sop_reference(class_uid: &str, instance_uid: &str) -> Obj {
    let mut item = Obj::new_empty();
    put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class_uid);
    put_str(&mut item, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance_uid);
    item
}

/// A decimal string (DS, at most 16 characters) that reads back as the same `f32`.
pub(crate) fn decimal(value: f32) -> String {
    let plain = format!("{value}");
    if plain.len() <= 16 { plain } else { format!("{value:e}") }
}

/// When the objects were made, as DICOM DA, TM and DT values in the source's time zone (its
/// Timezone Offset From UTC, which the objects copy, applies to every date and time in them,
/// the copied study date included), or in UTC when the source names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub date: String,
    pub time: String,
    pub datetime: String,
}

impl Stamp {
    pub fn new(at: SystemTime, utc_offset: Option<&str>) -> Stamp {
        let offset_minutes = utc_offset.and_then(parse_utc_offset).unwrap_or(0);
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let local = since.as_secs() as i64 + offset_minutes as i64 * 60;
        let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        let date = format!("{y:04}{m:02}{d:02}");
        let time = format!("{:02}{:02}{:02}.{:06}", secs / 3600, secs / 60 % 60, secs % 60, since.subsec_micros());
        let datetime = format!("{date}{time}");
        Stamp { date, time, datetime }
    }
}

/// `+hhmm` / `-hhmm` (Timezone Offset From UTC, SH) in minutes.
fn parse_utc_offset(text: &str) -> Option<i32> {
    let text = text.trim();
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i32, i32) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the days-from-civil inverse:
/// eras of 400 years, March-based years so that leap days come last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Copy an attribute from the source if it has it; true if it did.
pub(crate) fn copy(dst: &mut Obj, src: &Obj, tag: Tag) -> bool {
    match src.get(tag) {
        Some(element) => {
            dst.put(element.clone());
            true
        }
        None => false,
    }
}

/// Copy a Type 2 attribute: the source's value, or present and empty.
pub(crate) fn copy_or_empty(dst: &mut Obj, src: &Obj, tag: Tag, vr: VR) {
    if !copy(dst, src, tag) {
        put_empty(dst, tag, vr);
    }
}

/// Study-level attributes (General Study, and Patient Study's, which are group 0010) copied
/// verbatim so the results file into the source's study.
const STUDY_ATTRIBUTES: [Tag; 9] = [
    tags::STUDY_DESCRIPTION,
    tags::PROCEDURE_CODE_SEQUENCE,
    tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
    tags::PHYSICIANS_OF_RECORD,
    tags::NAME_OF_PHYSICIANS_READING_STUDY,
    tags::REFERENCED_STUDY_SEQUENCE,
    tags::ADMITTING_DIAGNOSES_DESCRIPTION,
    tags::TIMEZONE_OFFSET_FROM_UTC,
    tags::REQUESTING_SERVICE,
];

/// The modules every result object shares.
pub(crate) struct Common<'a> {
    pub source: &'a SourceImage,
    pub algorithm: &'a Algorithm,
    pub stamp: &'a Stamp,
}

impl Common<'_> {
    /// Patient (all of the source's group 0010: patient and patient-study attributes) and
    /// General Study, copied; Type 2 attributes the source lacks are written empty. Nothing is
    /// made up: a source without a patient ID gives results without one.
    pub fn patient_and_study(&self, obj: &mut Obj) {
        let src = &self.source.dataset;
        for element in src.iter() {
            let tag = element.header().tag;
            // Other Patient IDs (0010,1000) is retired (its sequence replaces it): not copied.
            if tag.group() == 0x0010 && tag != Tag(0x0010, 0x1000) {
                obj.put(element.clone());
            }
        }
        copy_or_empty(obj, src, tags::PATIENT_NAME, VR::PN);
        copy_or_empty(obj, src, tags::PATIENT_ID, VR::LO);
        copy_or_empty(obj, src, tags::PATIENT_BIRTH_DATE, VR::DA);
        copy_or_empty(obj, src, tags::PATIENT_SEX, VR::CS);
        put_str(obj, tags::STUDY_INSTANCE_UID, VR::UI, &self.source.study_uid);
        copy_or_empty(obj, src, tags::STUDY_DATE, VR::DA);
        copy_or_empty(obj, src, tags::STUDY_TIME, VR::TM);
        copy_or_empty(obj, src, tags::REFERRING_PHYSICIAN_NAME, VR::PN);
        copy_or_empty(obj, src, tags::STUDY_ID, VR::SH);
        copy_or_empty(obj, src, tags::ACCESSION_NUMBER, VR::SH);
        for tag in STUDY_ATTRIBUTES {
            copy(obj, src, tag);
        }
    }

    /// General Series (and the modality-specific series modules' common part).
    pub fn series(&self, obj: &mut Obj, modality: &str, series_uid: &str, number: u32, description: &str) {
        put_str(obj, tags::MODALITY, VR::CS, modality);
        put_str(obj, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
        put_str(obj, tags::SERIES_NUMBER, VR::IS, &number.to_string());
        put_str(obj, tags::SERIES_DESCRIPTION, VR::LO, description);
        put_str(obj, tags::SERIES_DATE, VR::DA, &self.stamp.date);
        put_str(obj, tags::SERIES_TIME, VR::TM, &self.stamp.time);
    }

    /// General Equipment and Enhanced General Equipment: medpatch, this model.
    pub fn equipment(&self, obj: &mut Obj) {
        let a = self.algorithm;
        put_str(obj, tags::MANUFACTURER, VR::LO, &a.manufacturer);
        put_str(obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, &a.model_name);
        put_str(obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, &a.device_serial_number());
        put_strs(obj, tags::SOFTWARE_VERSIONS, VR::LO, &[&a.version]);
    }

    /// Contributing Equipment (IHE AIR's algorithm identification): the acquisition equipment
    /// of the source (when it names a manufacturer), then the algorithm that processed it.
    pub fn contributing_equipment(&self, obj: &mut Obj) {
        let src = &self.source.dataset;
        let a = self.algorithm;
        let mut acquisition = Obj::new_empty();
        for tag in [
            tags::MANUFACTURER,
            tags::INSTITUTION_NAME,
            tags::STATION_NAME,
            tags::INSTITUTIONAL_DEPARTMENT_NAME,
            tags::MANUFACTURER_MODEL_NAME,
            tags::DEVICE_SERIAL_NUMBER,
            tags::SOFTWARE_VERSIONS,
        ] {
            copy(&mut acquisition, src, tag);
        }
        put_code(
            &mut acquisition,
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            &Code::dcm("109101", "Acquisition Equipment"),
        );
        put_str(&mut acquisition, tags::CONTRIBUTION_DESCRIPTION, VR::ST, "Acquisition equipment of the source image");

        let mut algorithm = Obj::new_empty();
        put_str(&mut algorithm, tags::MANUFACTURER, VR::LO, &a.manufacturer);
        put_str(&mut algorithm, tags::MANUFACTURER_MODEL_NAME, VR::LO, &a.model_name);
        put_str(&mut algorithm, tags::DEVICE_SERIAL_NUMBER, VR::LO, &a.device_serial_number());
        put_strs(&mut algorithm, tags::SOFTWARE_VERSIONS, VR::LO, &[&a.version]);
        put_code(&mut algorithm, tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, &codes::processing_equipment());
        put_str(&mut algorithm, tags::CONTRIBUTION_DATE_TIME, VR::DT, &self.stamp.datetime);
        put_str(&mut algorithm, tags::CONTRIBUTION_DESCRIPTION, VR::ST, &a.description());
        // Manufacturer is Type 1 in an item: the acquisition equipment is listed only when the
        // source names it.
        let named = self.source.text(tags::MANUFACTURER).is_some();
        let items = if named { vec![acquisition, algorithm] } else { vec![algorithm] };
        put_seq(obj, tags::CONTRIBUTING_EQUIPMENT_SEQUENCE, items);
    }

    /// SOP Common, plus the content date and time.
    pub fn sop_common(&self, obj: &mut Obj, class_uid: &str, instance_uid: &str, instance_number: u32) {
        // Strings were decoded from the source's character set; they are written as UTF-8.
        put_str(obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
        put_str(obj, tags::SOP_CLASS_UID, VR::UI, class_uid);
        put_str(obj, tags::SOP_INSTANCE_UID, VR::UI, instance_uid);
        put_str(obj, tags::INSTANCE_CREATION_DATE, VR::DA, &self.stamp.date);
        put_str(obj, tags::INSTANCE_CREATION_TIME, VR::TM, &self.stamp.time);
        put_str(obj, tags::CONTENT_DATE, VR::DA, &self.stamp.date);
        put_str(obj, tags::CONTENT_TIME, VR::TM, &self.stamp.time);
        put_str(obj, tags::INSTANCE_NUMBER, VR::IS, &instance_number.to_string());
    }

    /// Source Image Sequence item: the X-ray this object was derived from.
    pub fn source_image_item(&self) -> Obj {
        let mut item = sop_reference(&self.source.sop_class_uid, &self.source.sop_instance_uid);
        put_code(&mut item, tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, &codes::source_image_for_processing());
        item
    }

    /// Referenced Series Sequence of the Common Instance Reference module (and the SR's
    /// evidence): the source image within its series.
    pub fn referenced_series_item(&self, instances_tag: Tag) -> Obj {
        let mut series = Obj::new_empty();
        put_seq(
            &mut series,
            instances_tag,
            vec![sop_reference(&self.source.sop_class_uid, &self.source.sop_instance_uid)],
        );
        put_str(&mut series, tags::SERIES_INSTANCE_UID, VR::UI, &self.source.series_uid);
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_are_calendar_dates_in_the_source_time_zone() {
        let at = UNIX_EPOCH + Duration::from_micros(951_782_400_000_000 + 3_723_000_042); // 2000-02-29 01:02:03.000042 UTC
        let utc = Stamp::new(at, None);
        assert_eq!((utc.date.as_str(), utc.time.as_str()), ("20000229", "010203.000042"));
        assert_eq!(utc.datetime, "20000229010203.000042");
        let behind = Stamp::new(at, Some("-0400"));
        assert_eq!((behind.date.as_str(), behind.time.as_str()), ("20000228", "210203.000042"));
        assert_eq!(Stamp::new(at, Some("+0530")).time, "063203.000042");
        assert_eq!(Stamp::new(at, Some("garbage")), utc);
        assert_eq!(Stamp::new(UNIX_EPOCH + Duration::from_secs(4_107_542_400), None).date, "21000301");
        assert_eq!(Stamp::new(UNIX_EPOCH, None).date, "19700101");
    }

    #[test]
    fn decimals_fit_ds_and_read_back_exactly() {
        for v in [0.5f32, 0.123_456_79, 1e-30, 0.999_999_9, 3.0e-8, 1.0, 0.0] {
            let s = decimal(v);
            assert!(s.len() <= 16, "{s}");
            assert_eq!(s.parse::<f32>().unwrap(), v, "{s}");
        }
    }
}
