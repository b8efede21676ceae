//! One class's explanation as a Secondary Capture colour image: what every viewer shows. The
//! source X-ray (as the engine decoded it) at its own size, the class's patch logits over the
//! centre crop in the colours of `medpatch predict`'s overlay PNGs (`render::overlay_rgb`: red =
//! evidence for the finding, blue = against, saturating at the model's overlay range); the sides
//! the model never saw stay plain gray.

use crate::ds::{Common, Obj, copy, put_8bit_image_pixel, put_empty, put_seq, put_str, put_strs, put_u16};
use crate::geometry::PatchGeometry;
use crate::{Findings, SC_SERIES_NUMBER};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use medpatch_engine::{explain, render};

pub(crate) const SECONDARY_CAPTURE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// The overlay's RGB pixels, row-major, source size.
pub(crate) fn overlay_pixels(common: &Common<'_>, findings: &Findings<'_>, class: usize) -> Vec<u8> {
    let image = &common.source.image;
    let geometry = PatchGeometry::new(image.width, image.height, findings.grid);
    let n = findings.classes.len();
    let per_patch: Vec<f32> = findings.patch_logits.chunks_exact(n).map(|patch| patch[class]).collect();
    // NaN marks the pixels outside the crop (normalised logits are always in [0, 1]).
    let mut map = geometry.paint(&explain::normalise(&per_patch), f32::NAN);
    let outside: Vec<bool> = map.iter().map(|v| v.is_nan()).collect();
    map.iter_mut().filter(|v| v.is_nan()).for_each(|v| *v = 0.5);
    let mut rgb = render::overlay_rgb(image, &map, common.algorithm.overlay_logit_range);
    for ((pixel, &gray), _) in rgb.chunks_exact_mut(3).zip(&image.pixels).zip(&outside).filter(|(_, o)| **o) {
        let g = (gray.clamp(0.0, 1.0) * 255.0).round() as u8;
        pixel.copy_from_slice(&[g, g, g]);
    }
    rgb
}

pub(crate) fn build(
    common: &Common<'_>,
    findings: &Findings<'_>,
    class: usize,
    instance_number: u32,
    series_uid: &str,
    instance_uid: &str,
) -> Obj {
    let source = common.source;
    let name = &findings.classes[class];
    let mut obj = Obj::new_empty();
    common.sop_common(&mut obj, SECONDARY_CAPTURE_STORAGE, instance_uid, instance_number);
    common.patient_and_study(&mut obj);
    common.series(&mut obj, "OT", series_uid, SC_SERIES_NUMBER, "medpatch overlays (AI, not for diagnosis)");
    common.equipment(&mut obj);
    common.contributing_equipment(&mut obj);
    // SC Equipment: made on a workstation.
    put_str(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD");

    // General Image.
    put_strs(&mut obj, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "SECONDARY"]);
    if !copy(&mut obj, &source.dataset, tags::PATIENT_ORIENTATION) {
        put_empty(&mut obj, tags::PATIENT_ORIENTATION, VR::CS);
    }
    // Type 2C in General Series; dciodvfy wants it present (empty when the source names none).
    if !copy(&mut obj, &source.dataset, tags::LATERALITY) {
        put_empty(&mut obj, tags::LATERALITY, VR::CS);
    }
    put_str(
        &mut obj,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        &format!(
            "medpatch overlay for {name}: patch logits over the centre crop, red = evidence for, blue = against, \
             saturating at a patch logit of ±{}; AI output, not for diagnosis",
            common.algorithm.overlay_logit_range
        ),
    );
    put_str(&mut obj, tags::IMAGE_COMMENTS, VR::LT, &format!("medpatch overlay: {name}"));
    put_seq(&mut obj, tags::SOURCE_IMAGE_SEQUENCE, vec![common.source_image_item()]);
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");

    // Image Pixel: 8-bit RGB, interleaved.
    put_8bit_image_pixel(&mut obj, 3, "RGB", source);
    put_u16(&mut obj, tags::PLANAR_CONFIGURATION, 0);
    let mut pixels = overlay_pixels(common, findings, class);
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels)));
    obj
}
