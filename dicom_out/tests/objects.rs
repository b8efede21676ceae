//! The result objects built from the real DICOM X-ray: every object passes dicom3tools' `dciodvfy`
//! with no errors, the SR tree, the segmentation's pixels and the overlay's colours hold what the
//! prediction said, UIDs are stable, and non-DICOM inputs are refused. (highdicom reads them back
//! in tests/python/test_dicom_out.py.)

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use medpatch_dicom_out::geometry::PatchGeometry;
use medpatch_dicom_out::{Algorithm, DicomOutError, Findings, ObjectKind, Options, SourceImage, build, seg};
use medpatch_engine::{explain, render};
use medpatch_testkit::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CLASSES: [&str; 14] = medpatch_models::CHEXPERT_CLASSES;

fn source_path() -> PathBuf {
    cxr_dir().join("dicom/RG1_UNCR.dcm")
}

fn classes() -> Vec<String> {
    CLASSES.iter().map(|c| c.to_string()).collect()
}

/// Made-up but plausible patch logits: patch `p`, class `c` (some strongly negative, some positive).
fn patch_logits() -> Vec<f32> {
    (0..64 * 14).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect()
}

fn probabilities(patch_logits: &[f32]) -> Vec<f32> {
    explain::mean_logits(patch_logits, 14).into_iter().map(explain::sigmoid).collect()
}

fn algorithm() -> Algorithm {
    Algorithm::medpatch("test-model.onnx", &"ab".repeat(32), 4.0)
}

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// `dciodvfy`'s complaints about a file: every line that is an error.
fn dciodvfy_errors(path: &Path) -> Vec<String> {
    let out = Command::new("dciodvfy")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("dciodvfy (Debian package dicom3tools) is needed: run scripts/setup.sh ({e})"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.lines().filter(|l| l.starts_with("Error") || l.starts_with("Abort")).map(str::to_string).collect()
}

fn read(path: &Path) -> InMemDicomObject {
    OpenFileOptions::new().open_file(path).unwrap().into_inner()
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag).map(|e| e.to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()).unwrap_or_default()
}

fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.get(tag).and_then(|e| e.items()).unwrap_or(&[])
}

/// The meaning of a content item's concept name.
fn concept(item: &InMemDicomObject) -> String {
    text(&items(item, tags::CONCEPT_NAME_CODE_SEQUENCE)[0], tags::CODE_MEANING)
}

fn child<'a>(item: &'a InMemDicomObject, meaning: &str) -> Vec<&'a InMemDicomObject> {
    items(item, tags::CONTENT_SEQUENCE).iter().filter(|c| concept(c) == meaning).collect()
}

#[test]
fn objects_pass_dciodvfy_and_hold_the_prediction() {
    if skip_without_shared() {
        return;
    }
    let dir = scratch("dicom-out-objects");
    let bytes = std::fs::read(source_path()).unwrap();
    let source = SourceImage::from_bytes(&bytes, "RG1_UNCR.dcm").unwrap();
    assert_eq!((source.width(), source.height()), (1841, 1955));
    let (classes, logits) = (classes(), patch_logits());
    let probabilities = probabilities(&logits);
    let thresholds: Vec<f32> = (0..14).map(|i| 0.2 + 0.04 * i as f32).collect();
    let findings = Findings {
        classes: &classes,
        probabilities: &probabilities,
        patch_logits: &logits,
        grid: 8,
        thresholds: Some(&thresholds),
    };
    let map_classes = vec![2, 9];
    let options = Options { map_classes: map_classes.clone(), created: at(1_800_000_000) };
    let objects = build(&source, &findings, &algorithm(), &options).unwrap();
    let kinds: Vec<ObjectKind> = objects.objects.iter().map(|o| o.kind.clone()).collect();
    assert_eq!(
        kinds,
        [ObjectKind::StructuredReport, ObjectKind::Segmentation, ObjectKind::Overlay(2), ObjectKind::Overlay(9)]
    );
    let paths = objects.write_to_dir(&dir, "rg1", &classes).unwrap();
    let names: Vec<String> = paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        ["rg1.sr.dcm", "rg1.seg.dcm", "rg1.overlay.02-cardiomegaly.dcm", "rg1.overlay.09-pneumothorax.dcm"]
    );
    for path in &paths {
        let errors = dciodvfy_errors(path);
        assert!(errors.is_empty(), "{}:\n{}", path.display(), errors.join("\n"));
    }

    // Same study and patient, new series, the source referenced.
    let original = read(&source_path());
    let sr = read(&paths[0]);
    for tag in
        [tags::STUDY_INSTANCE_UID, tags::PATIENT_ID, tags::PATIENT_NAME, tags::ACCESSION_NUMBER, tags::STUDY_DATE]
    {
        assert_eq!(text(&sr, tag), text(&original, tag), "{tag}");
    }
    assert_ne!(text(&sr, tags::SERIES_INSTANCE_UID), text(&original, tags::SERIES_INSTANCE_UID));
    assert_eq!(text(&sr, tags::MODALITY), "SR");
    let equipment = items(&sr, tags::CONTRIBUTING_EQUIPMENT_SEQUENCE);
    assert_eq!(text(&equipment[0], tags::MANUFACTURER), "Philips Medical Systems");
    assert_eq!(text(&items(&equipment[1], tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE)[0], tags::CODE_VALUE), "109102");
    assert!(text(&equipment[1], tags::CONTRIBUTION_DESCRIPTION).contains(&algorithm().model_sha256));
    assert_eq!(text(&items(&sr, tags::CONTENT_TEMPLATE_SEQUENCE)[0], tags::TEMPLATE_IDENTIFIER), "1500");

    // The SR tree: one measurement group per class, probability and present/absent.
    let measurements = child(&sr, "Imaging Measurements");
    assert_eq!(measurements.len(), 1);
    let groups = child(measurements[0], "Measurement Group");
    assert_eq!(groups.len(), 14);
    for (i, group) in groups.iter().enumerate() {
        let finding = &child(group, "Finding")[0];
        let code = &items(finding, tags::CONCEPT_CODE_SEQUENCE)[0];
        let expected = medpatch_dicom_out::finding_codes(CLASSES[i]).finding;
        assert_eq!(text(code, tags::CODE_VALUE), expected.value);
        let num = &child(group, "Probability")[0];
        let value: f32 = text(&items(num, tags::MEASURED_VALUE_SEQUENCE)[0], tags::NUMERIC_VALUE).parse().unwrap();
        assert_eq!(value, probabilities[i], "the DS reads back as the same f32");
        let verdict = &child(group, &expected.meaning)[0];
        let verdict = text(&items(verdict, tags::CONCEPT_CODE_SEQUENCE)[0], tags::CODE_MEANING);
        assert_eq!(verdict, if probabilities[i] >= thresholds[i] { "Present" } else { "Absent" }, "{}", CLASSES[i]);
        let image = &child(group, "Source of Measurement")[0];
        let reference = &items(image, tags::REFERENCED_SOP_SEQUENCE)[0];
        assert_eq!(text(reference, tags::REFERENCED_SOP_INSTANCE_UID), text(&original, tags::SOP_INSTANCE_UID));
    }

    // The segmentation: one frame per mapped class, round(255·sigmoid(patch logit)) under each pixel.
    let seg_obj = read(&paths[1]);
    assert_eq!(text(&seg_obj, tags::SEGMENTATION_TYPE), "FRACTIONAL");
    assert_eq!(text(&seg_obj, tags::NUMBER_OF_FRAMES), "2");
    let pixels = seg_obj.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let geometry = PatchGeometry::new(1841, 1955, 8);
    let frame = 1841 * 1955;
    for (k, &c) in map_classes.iter().enumerate() {
        for (x, y) in [(0u32, 0u32), (0, 57), (1840, 1954), (1000, 1000), (230, 300), (920, 1011)] {
            let value = pixels[k * frame + y as usize * 1841 + x as usize];
            let expected =
                geometry.patch_of(x, y).map_or(0, |(r, col)| seg::fractional_value(logits[(r * 8 + col) * 14 + c]));
            assert_eq!(value, expected, "class {c} at ({x}, {y})");
        }
    }

    // The overlay: the PNG overlays' colours inside the crop, plain gray outside.
    let overlay = read(&paths[2]);
    assert_eq!(text(&overlay, tags::PHOTOMETRIC_INTERPRETATION), "RGB");
    let rgb = overlay.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let (x, y) = (1000usize, 1000usize);
    let (r, col) = geometry.patch_of(x as u32, y as u32).unwrap();
    let normalised = explain::normalise(&[logits[(r * 8 + col) * 14 + 2]])[0];
    let gray = source.image.pixels[y * 1841 + x];
    let one = medpatch_engine::decode::GrayImage { width: 1, height: 1, pixels: vec![gray] };
    assert_eq!(&rgb[(y * 1841 + x) * 3..][..3], &render::overlay_rgb(&one, &[normalised], 4.0)[..]);
    let g = (source.image.pixels[10 * 1841 + 10] * 255.0).round() as u8;
    assert_eq!(&rgb[(10 * 1841 + 10) * 3..][..3], &[g, g, g], "row 10 is above the crop");

    // UIDs depend on the source and the model, not on the time: a resend replaces.
    let again = build(&source, &findings, &algorithm(), &Options { map_classes, created: at(1_900_000_000) }).unwrap();
    for (a, b) in objects.objects.iter().zip(&again.objects) {
        assert_eq!(a.sop_instance_uid, b.sop_instance_uid);
        assert!(medpatch_dicom_out::uid::is_valid_uid(&a.sop_instance_uid));
    }
    let other_model = Algorithm::medpatch("other.onnx", &"cd".repeat(32), 4.0);
    let other = build(&source, &findings, &other_model, &options).unwrap();
    assert_ne!(other.objects[0].sop_instance_uid, objects.objects[0].sop_instance_uid);
}

#[test]
fn without_thresholds_or_maps_the_sr_alone_is_written_and_valid() {
    if skip_without_shared() {
        return;
    }
    let dir = scratch("dicom-out-sr-only");
    let source = SourceImage::from_bytes(&std::fs::read(source_path()).unwrap(), "RG1_UNCR.dcm").unwrap();
    let (classes, logits) = (classes(), patch_logits());
    let probabilities = probabilities(&logits);
    let findings =
        Findings { classes: &classes, probabilities: &probabilities, patch_logits: &logits, grid: 8, thresholds: None };
    let objects = build(&source, &findings, &algorithm(), &Options { map_classes: vec![], created: at(0) }).unwrap();
    assert_eq!(objects.objects.len(), 1);
    let paths = objects.write_to_dir(&dir, "rg1", &classes).unwrap();
    assert!(dciodvfy_errors(&paths[0]).is_empty());
    let sr = read(&paths[0]);
    let groups = child(child(&sr, "Imaging Measurements")[0], "Measurement Group");
    for (group, class) in groups.iter().zip(CLASSES) {
        let meaning = medpatch_dicom_out::finding_codes(class).finding.meaning;
        assert!(child(group, &meaning).is_empty(), "no present/absent without a threshold");
        assert_eq!(child(group, "Probability").len(), 1);
    }
    // The default maps: what is called present at 0.5, else the most probable class.
    let present: Vec<usize> = (0..14).filter(|&i| probabilities[i] >= 0.5).collect();
    let defaults = findings.default_map_classes();
    if present.is_empty() {
        assert_eq!(defaults.len(), 1);
    } else {
        assert_eq!(defaults, present);
    }
    // Bad numbers are refused, not written.
    let short = Findings { probabilities: &probabilities[..3], ..findings };
    assert!(matches!(
        build(&source, &short, &algorithm(), &Options { map_classes: vec![], created: at(0) }),
        Err(DicomOutError::Findings(_))
    ));
}

#[test]
fn non_dicom_inputs_are_refused_with_a_reason() {
    let png = std::fs::read(repo_root().join("assets/00001369_000.png")).unwrap();
    let err = SourceImage::from_bytes(&png, "chest.png").unwrap_err().to_string();
    assert!(err.starts_with("chest.png is a PNG image: DICOM results need a DICOM input"), "{err}");
    let err = SourceImage::from_bytes(b"\xff\xd8\xff\xe0 jpeg", "x.jpg").unwrap_err().to_string();
    assert!(err.contains("is a JPEG image"), "{err}");
    let err = SourceImage::from_bytes(b"", "empty.dcm").unwrap_err().to_string();
    assert!(err.contains("is empty"), "{err}");
    // A DICOM file whose pixels cannot be read: the decoder's reason.
    let mut broken = vec![0u8; 128];
    broken.extend_from_slice(b"DICM\x02\x00\x00\x00UL\x04\x00\xff\xff\xff\x7f");
    let err = SourceImage::from_bytes(&broken, "broken.dcm").unwrap_err();
    assert!(matches!(err, DicomOutError::Source { .. }), "{err}");
}

#[test]
fn non_ascii_names_are_kept() {
    if skip_without_shared() {
        return;
    }
    let dir = scratch("dicom-out-charset");
    let mut file = OpenFileOptions::new().open_file(source_path()).unwrap();
    file.put(dicom_core::DataElement::new(
        tags::PATIENT_NAME,
        dicom_core::VR::PN,
        dicom_core::PrimitiveValue::from("Müller^Jürgen"),
    ));
    file.put(dicom_core::DataElement::new(
        tags::SPECIFIC_CHARACTER_SET,
        dicom_core::VR::CS,
        dicom_core::PrimitiveValue::from("ISO_IR 100"),
    ));
    let latin1 = dir.join("latin1.dcm");
    file.write_to_file(&latin1).unwrap();
    let raw = std::fs::read(&latin1).unwrap();
    assert!(raw.windows(6).any(|w| w == b"M\xfcller"), "the source is really Latin-1");
    let source = SourceImage::from_bytes(&raw, "latin1.dcm").unwrap();
    let (classes, logits) = (classes(), patch_logits());
    let probabilities = probabilities(&logits);
    let findings =
        Findings { classes: &classes, probabilities: &probabilities, patch_logits: &logits, grid: 8, thresholds: None };
    let objects = build(&source, &findings, &algorithm(), &Options { map_classes: vec![0], created: at(0) }).unwrap();
    for path in objects.write_to_dir(&dir, "out", &classes).unwrap() {
        assert_eq!(text(&read(&path), tags::PATIENT_NAME), "Müller^Jürgen", "{}", path.display());
        let raw = std::fs::read(&path).unwrap();
        assert!(raw.windows(7).any(|w| w == "Müller".as_bytes()), "written as UTF-8 (ISO_IR 192)");
        let errors = dciodvfy_errors(&path);
        assert!(errors.is_empty(), "{}:\n{}", path.display(), errors.join("\n"));
    }
}

/// The inverse geometry against the engine's own preprocessing: paint each patch's index onto
/// the source grid, preprocess, and every model-input pixel at least two pixels inside a patch
/// (beyond the resize filter's reach) must hold exactly that patch's index.
#[test]
fn geometry_inverts_the_engines_crop_and_resize() {
    for (w, h) in [(1841u32, 1955u32), (1024, 1024), (700, 600), (513, 2000), (333, 333)] {
        let g = PatchGeometry::new(w, h, 8);
        let ids: Vec<f32> = (0..64).map(|i| i as f32 / 63.0).collect();
        let painted = g.paint(&ids, 0.5);
        let image = medpatch_engine::decode::GrayImage { width: w, height: h, pixels: painted };
        let prepared = medpatch_engine::preprocess::preprocess(&image, 512);
        let margin = (g.side as f64 / 512.0).ceil() as usize + 1;
        for y in 0..512 {
            for x in 0..512 {
                let (py, px) = (y % 64, x % 64);
                if py < margin || py >= 64 - margin || px < margin || px >= 64 - margin {
                    continue;
                }
                let expected = ids[(y / 64) * 8 + x / 64];
                let got = prepared.pixels[y * 512 + x];
                assert!((got - expected).abs() < 1e-5, "{w}×{h}: model pixel ({x}, {y}) is {got}, expected {expected}");
            }
        }
    }
}

/// `medpatch.thresholds` in a model file reaches the SR: the demo model with thresholds added to
/// its metadata, run by the engine, calls each finding present exactly when its probability is
/// at least its threshold.
#[test]
fn a_model_with_thresholds_gets_present_and_absent_in_the_sr() {
    use medpatch_engine::{Engine, Input, Model, ModelOrigin, ModelSource, Provider, ProviderChoice};
    use prost::Message;
    use tract_onnx::pb::{ModelProto, StringStringEntryProto};
    if skip_without_shared() {
        return;
    }
    let dir = scratch("dicom-out-thresholds");
    let mut proto = ModelProto::decode(medpatch_engine::DEFAULT_MODEL_BYTES).unwrap();
    let thresholds: Vec<f32> = (0..14).map(|i| 0.1 + 0.06 * i as f32).collect();
    let object: Vec<String> = CLASSES.iter().zip(&thresholds).map(|(c, t)| format!("\"{c}\":{t}")).collect();
    proto.metadata_props.push(StringStringEntryProto {
        key: medpatch_models::contract::keys::THRESHOLDS.into(),
        value: format!("{{{}}}", object.join(",")),
    });
    let model = Model::from_bytes(proto.encode_to_vec().into(), ModelOrigin::Memory("thresholds.onnx".into())).unwrap();
    assert_eq!(model.metadata.thresholds.as_deref(), Some(&thresholds[..]));
    let engine = Engine::builder()
        .model(ModelSource::Loaded(model))
        .provider(ProviderChoice::Only(Provider::Tract))
        .threads(1)
        .build()
        .unwrap();
    let bytes = std::fs::read(source_path()).unwrap();
    let source = SourceImage::from_bytes(&bytes, "RG1_UNCR.dcm").unwrap();
    let p = engine.predict(Input::Image(&source.image)).unwrap();
    let metadata = &engine.model().metadata;
    let findings = Findings {
        classes: &metadata.classes,
        probabilities: &p.probabilities,
        patch_logits: &p.patch_logits,
        grid: p.grid,
        thresholds: metadata.thresholds.as_deref(),
    };
    let objects = build(&source, &findings, &algorithm(), &Options { map_classes: vec![], created: at(0) }).unwrap();
    let path = &objects.write_to_dir(&dir, "rg1", &metadata.classes).unwrap()[0];
    assert!(dciodvfy_errors(path).is_empty());
    let sr = read(path);
    let groups = child(child(&sr, "Imaging Measurements")[0], "Measurement Group");
    let mut verdicts = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let meaning = medpatch_dicom_out::finding_codes(CLASSES[i]).finding.meaning;
        let verdict = text(&items(child(group, &meaning)[0], tags::CONCEPT_CODE_SEQUENCE)[0], tags::CODE_MEANING);
        assert_eq!(verdict == "Present", p.probabilities[i] >= thresholds[i], "{}", CLASSES[i]);
        verdicts.push(verdict);
    }
    assert!(verdicts.iter().any(|v| v == "Present") && verdicts.iter().any(|v| v == "Absent"), "{verdicts:?}");
}
