//! The findings as a Comprehensive 3D SR whose root is TID 1500 "Measurement Report":
//!
//! ```text
//! CONTAINER Imaging Measurement Report (TID 1500)
//!   HAS CONCEPT MOD  Language = English (United States)
//!   HAS OBS CONTEXT  Observer Type = Device; Device Observer UID, Name, Manufacturer, Model Name
//!   HAS CONCEPT MOD  Procedure reported = the source's procedure code, else Plain chest X-ray
//!   CONTAINS CONTAINER Imaging Measurements
//!     CONTAINS CONTAINER Measurement Group (TID 1501), one per class:
//!       HAS OBS CONTEXT  Tracking Identifier, Tracking Unique Identifier
//!       CONTAINS CODE    Finding = the class's code
//!       HAS CONCEPT MOD  Algorithm Name, Algorithm Version, Algorithm Parameters (TID 4019)
//!       CONTAINS NUM     Probability = sigmoid(image logit), unit 1 (TID 300, with TID 4019)
//!       CONTAINS CODE    <finding> = Present / Absent   (only when the model has a threshold)
//!       CONTAINS IMAGE   Source of Measurement = the X-ray
//! ```

use crate::codes::{self, Code};
use crate::ds::{Common, Obj, decimal, put_code, put_seq, put_str, sop_reference};
use crate::{Findings, uid};
use dicom_core::VR;
use dicom_dictionary_std::tags;

pub(crate) const COMPREHENSIVE_3D_SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";

/// A content item: relationship (none for the root), value type, concept name.
fn item(relationship: &str, value_type: &str, name: &Code) -> Obj {
    let mut obj = Obj::new_empty();
    put_str(&mut obj, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, value_type);
    put_code(&mut obj, tags::CONCEPT_NAME_CODE_SEQUENCE, name);
    obj
}

fn text(relationship: &str, name: &Code, value: &str) -> Obj {
    let mut obj = item(relationship, "TEXT", name);
    put_str(&mut obj, tags::TEXT_VALUE, VR::UT, value);
    obj
}

fn code(relationship: &str, name: &Code, value: &Code) -> Obj {
    let mut obj = item(relationship, "CODE", name);
    put_code(&mut obj, tags::CONCEPT_CODE_SEQUENCE, value);
    obj
}

fn uidref(relationship: &str, name: &Code, value: &str) -> Obj {
    let mut obj = item(relationship, "UIDREF", name);
    put_str(&mut obj, tags::UID, VR::UI, value);
    obj
}

fn num(relationship: &str, name: &Code, value: f32, unit: &Code, children: Vec<Obj>) -> Obj {
    let mut obj = item(relationship, "NUM", name);
    let mut measured = Obj::new_empty();
    put_str(&mut measured, tags::NUMERIC_VALUE, VR::DS, &decimal(value));
    put_code(&mut measured, tags::MEASUREMENT_UNITS_CODE_SEQUENCE, unit);
    put_seq(&mut obj, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
    if !children.is_empty() {
        put_seq(&mut obj, tags::CONTENT_SEQUENCE, children);
    }
    obj
}

fn container(relationship: &str, name: &Code, children: Vec<Obj>) -> Obj {
    let mut obj = item(relationship, "CONTAINER", name);
    put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut obj, tags::CONTENT_SEQUENCE, children);
    obj
}

fn image(relationship: &str, name: &Code, class_uid: &str, instance_uid: &str) -> Obj {
    let mut obj = item(relationship, "IMAGE", name);
    put_seq(&mut obj, tags::REFERENCED_SOP_SEQUENCE, vec![sop_reference(class_uid, instance_uid)]);
    obj
}

/// TID 4019 "Algorithm Identification": name and version, and what else identifies the run.
fn algorithm_identification(common: &Common<'_>, parameters: &[String]) -> Vec<Obj> {
    let a = common.algorithm;
    let mut items = vec![
        text("HAS CONCEPT MOD", &codes::algorithm_name(), &a.name),
        text("HAS CONCEPT MOD", &codes::algorithm_version(), &a.version),
    ];
    items.extend(parameters.iter().map(|p| text("HAS CONCEPT MOD", &codes::algorithm_parameters(), p)));
    items
}

pub(crate) fn build(common: &Common<'_>, findings: &Findings<'_>, series_uid: &str, instance_uid: &str) -> Obj {
    let source = common.source;
    let algorithm = common.algorithm;
    let mut obj = Obj::new_empty();
    common.sop_common(&mut obj, COMPREHENSIVE_3D_SR, instance_uid, 1);
    common.patient_and_study(&mut obj);
    common.series(&mut obj, "SR", series_uid, crate::SR_SERIES_NUMBER, "medpatch findings (AI, not for diagnosis)");
    put_seq(&mut obj, tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, Vec::new());
    common.equipment(&mut obj);
    common.contributing_equipment(&mut obj);

    // SR Document General: a machine's preliminary, unverified result.
    put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_str(&mut obj, tags::PRELIMINARY_FLAG, VR::CS, "PRELIMINARY");
    put_seq(&mut obj, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new());
    let mut evidence = Obj::new_empty();
    put_seq(
        &mut evidence,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![common.referenced_series_item(tags::REFERENCED_SOP_SEQUENCE)],
    );
    put_str(&mut evidence, tags::STUDY_INSTANCE_UID, VR::UI, &source.study_uid);
    put_seq(&mut obj, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE, vec![evidence]);

    // SR Document Content: the root container, TID 1500.
    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_code(&mut obj, tags::CONCEPT_NAME_CODE_SEQUENCE, &codes::imaging_measurement_report());
    put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = Obj::new_empty();
    put_str(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    put_seq(&mut obj, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);

    let procedure = source
        .dataset
        .get(tags::PROCEDURE_CODE_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|items| items.first())
        .and_then(|first| {
            let text = |tag| first.get(tag).and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string());
            Some(Code::new(
                &text(tags::CODE_VALUE)?,
                &text(tags::CODING_SCHEME_DESIGNATOR)?,
                &text(tags::CODE_MEANING)?,
            ))
        })
        .filter(|c| !c.value.is_empty() && !c.scheme.is_empty() && !c.meaning.is_empty())
        .unwrap_or_else(codes::plain_chest_xray);

    let mut root = vec![
        code("HAS CONCEPT MOD", &codes::language(), &codes::english_us()),
        code("HAS OBS CONTEXT", &codes::observer_type(), &codes::device()),
        uidref("HAS OBS CONTEXT", &codes::device_observer_uid(), &algorithm.device_uid()),
        text("HAS OBS CONTEXT", &codes::device_observer_name(), &algorithm.name),
        text("HAS OBS CONTEXT", &codes::device_observer_manufacturer(), &algorithm.manufacturer),
        text("HAS OBS CONTEXT", &codes::device_observer_model_name(), &algorithm.model_name),
        code("HAS CONCEPT MOD", &codes::procedure_reported(), &procedure),
    ];

    let model_parameter = format!("model {} (sha256 {})", algorithm.model_name, algorithm.model_sha256);
    let mut groups = Vec::with_capacity(findings.classes.len());
    for (i, class) in findings.classes.iter().enumerate() {
        let finding = codes::finding_codes(class).finding;
        let probability = findings.probabilities[i];
        let threshold = findings.thresholds.map(|t| t[i]);
        let mut parameters = vec![model_parameter.clone()];
        if let Some(t) = threshold {
            parameters.push(format!("present when the probability is at least {}", decimal(t)));
        }
        let mut group = vec![
            text("HAS OBS CONTEXT", &codes::tracking_identifier(), &format!("medpatch {class}")),
            uidref(
                "HAS OBS CONTEXT",
                &codes::tracking_uid(),
                &uid::derived_uid(&["tracking", &source.sop_instance_uid, &algorithm.model_sha256, class]),
            ),
            code("CONTAINS", &codes::finding(), &finding),
        ];
        group.extend(algorithm_identification(common, &parameters));
        group.push(num(
            "CONTAINS",
            &codes::probability(),
            probability,
            &codes::no_units(),
            algorithm_identification(common, &[]),
        ));
        if let Some(t) = threshold {
            let verdict = if probability >= t { codes::present() } else { codes::absent() };
            group.push(code("CONTAINS", &finding, &verdict));
        }
        group.push(image("CONTAINS", &codes::source_of_measurement(), &source.sop_class_uid, &source.sop_instance_uid));
        groups.push(container("CONTAINS", &codes::measurement_group(), group));
    }
    root.push(container("CONTAINS", &codes::imaging_measurements(), groups));
    put_seq(&mut obj, tags::CONTENT_SEQUENCE, root);
    obj
}
