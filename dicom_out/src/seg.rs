//! The patch maps as a FRACTIONAL Segmentation, one segment (one frame) per mapped class, on the
//! source image's pixel grid.
//!
//! Each pixel holds `round(255 · sigmoid(patch logit))` of the patch under it
//! ([`crate::geometry`]): the probability that patch alone gives the finding, which is what
//! MedicalPatchNet averages (in logits) into the image's. Pixels the centre crop cut off hold 0.
//!
//! Why not a Parametric Map with float logits: that IOD requires a Frame of Reference and plane
//! position/orientation (dciodvfy: "Missing attribute Type 1 Required Element=<FrameOfReferenceUID>"),
//! which a projection radiograph does not have; a Segmentation without one is valid, and
//! highdicom writes and reads such single-frame X-ray segmentations.

use crate::codes;
use crate::ds::{
    Common, Obj, put_8bit_image_pixel, put_code, put_empty, put_seq, put_str, put_strs, put_tag, put_u16, put_u32,
};
use crate::geometry::PatchGeometry;
use crate::{Findings, uid};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use medpatch_engine::explain::sigmoid;

pub(crate) const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
/// The fractional value that means probability 1.
pub const MAX_FRACTIONAL_VALUE: u16 = 255;

/// A patch logit as the segmentation stores it.
pub fn fractional_value(patch_logit: f32) -> u8 {
    (sigmoid(patch_logit) * MAX_FRACTIONAL_VALUE as f32).round().clamp(0.0, 255.0) as u8
}

fn segment(common: &Common<'_>, number: u16, class: &str) -> Obj {
    let a = common.algorithm;
    let codes = codes::finding_codes(class);
    let mut item = Obj::new_empty();
    put_u16(&mut item, tags::SEGMENT_NUMBER, number);
    put_str(&mut item, tags::SEGMENT_LABEL, VR::LO, class);
    put_str(
        &mut item,
        tags::SEGMENT_DESCRIPTION,
        VR::ST,
        &format!("{class}: per-patch probability, sigmoid of the patch logit (MedicalPatchNet)"),
    );
    put_code(&mut item, tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, &codes.category);
    put_code(&mut item, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, &codes.finding);
    put_str(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put_str(&mut item, tags::SEGMENT_ALGORITHM_NAME, VR::LO, &a.name);
    let mut algorithm = Obj::new_empty();
    put_code(&mut algorithm, tags::ALGORITHM_FAMILY_CODE_SEQUENCE, &codes::artificial_intelligence());
    put_str(&mut algorithm, tags::ALGORITHM_NAME, VR::LO, &a.name);
    put_str(&mut algorithm, tags::ALGORITHM_VERSION, VR::LO, &a.version);
    put_str(&mut algorithm, tags::ALGORITHM_PARAMETERS, VR::LT, &format!("model sha256 {}", a.model_sha256));
    put_seq(&mut item, tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE, vec![algorithm]);
    item
}

fn frame_functional_groups(common: &Common<'_>, segment_number: u16) -> Obj {
    let mut derivation = Obj::new_empty();
    let mut source = common.source_image_item();
    put_str(&mut source, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
    put_seq(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
    put_code(&mut derivation, tags::DERIVATION_CODE_SEQUENCE, &codes::segmentation_derivation());
    let mut content = Obj::new_empty();
    put_u32(&mut content, tags::DIMENSION_INDEX_VALUES, segment_number as u32);
    let mut identification = Obj::new_empty();
    put_u16(&mut identification, tags::REFERENCED_SEGMENT_NUMBER, segment_number);
    let mut item = Obj::new_empty();
    put_seq(&mut item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
    put_seq(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
    put_seq(&mut item, tags::SEGMENT_IDENTIFICATION_SEQUENCE, vec![identification]);
    item
}

/// Pixel Measures for the shared functional groups, when the source states a usable spacing
/// (some sources carry `0\0`, which is not one).
fn pixel_measures(common: &Common<'_>) -> Option<Obj> {
    let spacing = common.source.dataset.get(tags::PIXEL_SPACING)?;
    let values = spacing.to_multi_float64().ok()?;
    if values.len() != 2 || !values.iter().all(|v| v.is_finite() && *v > 0.0) {
        return None;
    }
    let mut measures = Obj::new_empty();
    measures.put(spacing.clone());
    Some(measures)
}

pub(crate) fn build(
    common: &Common<'_>,
    findings: &Findings<'_>,
    classes: &[usize],
    series_uid: &str,
    instance_uid: &str,
) -> Obj {
    let source = common.source;
    let geometry = PatchGeometry::new(source.width(), source.height(), findings.grid);
    let n_classes = findings.classes.len();
    let mut obj = Obj::new_empty();
    common.sop_common(&mut obj, SEGMENTATION_STORAGE, instance_uid, 1);
    common.patient_and_study(&mut obj);
    common.series(&mut obj, "SEG", series_uid, crate::SEG_SERIES_NUMBER, "medpatch patch maps (AI, not for diagnosis)");
    common.equipment(&mut obj);
    common.contributing_equipment(&mut obj);

    // General Image / Segmentation Image.
    put_strs(&mut obj, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]);
    if !crate::ds::copy(&mut obj, &source.dataset, tags::PATIENT_ORIENTATION) {
        put_empty(&mut obj, tags::PATIENT_ORIENTATION, VR::CS);
    }
    crate::ds::copy(&mut obj, &source.dataset, tags::LATERALITY);
    put_str(&mut obj, tags::CONTENT_LABEL, VR::CS, "MEDPATCH_MAP");
    put_str(&mut obj, tags::CONTENT_DESCRIPTION, VR::LO, "MedicalPatchNet patch probabilities");
    put_empty(&mut obj, tags::CONTENT_CREATOR_NAME, VR::PN);
    put_str(&mut obj, tags::SEGMENTATION_TYPE, VR::CS, "FRACTIONAL");
    put_str(&mut obj, tags::SEGMENTATION_FRACTIONAL_TYPE, VR::CS, "PROBABILITY");
    put_u16(&mut obj, tags::MAXIMUM_FRACTIONAL_VALUE, MAX_FRACTIONAL_VALUE);
    // Each finding is judged on its own: segments may cover the same pixels.
    put_str(&mut obj, tags::SEGMENTS_OVERLAP, VR::CS, "UNDEFINED");
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    put_seq(&mut obj, tags::SOURCE_IMAGE_SEQUENCE, vec![common.source_image_item()]);
    let segments: Vec<Obj> =
        classes.iter().enumerate().map(|(k, &c)| segment(common, k as u16 + 1, &findings.classes[c])).collect();
    put_seq(&mut obj, tags::SEGMENT_SEQUENCE, segments);
    put_seq(
        &mut obj,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![common.referenced_series_item(tags::REFERENCED_INSTANCE_SEQUENCE)],
    );

    // Image Pixel: one 8-bit frame per segment.
    put_8bit_image_pixel(&mut obj, 1, "MONOCHROME2", source);
    put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, &classes.len().to_string());
    put_str(&mut obj, tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY");

    // Multi-frame Dimension: frames indexed by segment.
    let organization = uid::derived_uid(&["dimension-organization", instance_uid]);
    let mut org_item = Obj::new_empty();
    put_str(&mut org_item, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organization);
    put_seq(&mut obj, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![org_item]);
    let mut index = Obj::new_empty();
    put_str(&mut index, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organization);
    put_tag(&mut index, tags::DIMENSION_INDEX_POINTER, tags::REFERENCED_SEGMENT_NUMBER);
    put_tag(&mut index, tags::FUNCTIONAL_GROUP_POINTER, tags::SEGMENT_IDENTIFICATION_SEQUENCE);
    put_str(&mut index, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, "Referenced Segment Number");
    put_seq(&mut obj, tags::DIMENSION_INDEX_SEQUENCE, vec![index]);

    // Multi-frame Functional Groups.
    let mut shared = Obj::new_empty();
    if let Some(measures) = pixel_measures(common) {
        put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    }
    put_seq(&mut obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);
    let per_frame: Vec<Obj> = (0..classes.len()).map(|k| frame_functional_groups(common, k as u16 + 1)).collect();
    put_seq(&mut obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);

    let frame_len = source.width() as usize * source.height() as usize;
    let mut pixels = Vec::with_capacity(frame_len * classes.len() + 1);
    for &c in classes {
        let per_patch: Vec<u8> =
            findings.patch_logits.chunks_exact(n_classes).map(|patch| fractional_value(patch[c])).collect();
        pixels.extend(geometry.paint(&per_patch, 0u8));
    }
    if pixels.len() % 2 == 1 {
        pixels.push(0); // OB values have even length
    }
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels)));
    obj
}
