//! The explainer in a real browser: headless Chromium, driven by wasm-bindgen-test-runner through
//! chromedriver (scripts/test.sh's web stage builds and runs this; see docs/web.md).
//!
//! The reference is the native build: scripts/test.sh runs `medpatch predict --provider tract` on
//! the bundled X-rays and hands its JSON lines to this test at compile time
//! (`MEDPATCH_WEB_NATIVE_PREDICTIONS`). Without them the comparison fails, saying so.
#![cfg(target_arch = "wasm32")]

use medpatch_engine::{Engine, Input, MapKind, Provider, ProviderChoice};
use medpatch_web::{Explainer, Prediction};
use wasm_bindgen::{JsError, JsValue};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const PNG_NAME: &str = "00001369_000.png";
const PNG: &[u8] = include_bytes!("../../assets/00001369_000.png");
const JPEG_NAME: &str = "synthetic-pneumothorax.jpg";
const JPEG: &[u8] = include_bytes!("../../assets/synthetic-pneumothorax.jpg");

/// The native tract build's JSON lines for the bundled X-rays (see the module's documentation).
const NATIVE_PREDICTIONS: Option<&str> = option_env!("MEDPATCH_WEB_NATIVE_PREDICTIONS");

/// How far the browser's logits may be from the native build's. The same model, the same f32
/// arithmetic, but tract's wasm SIMD128 kernels sum in another order than its AVX2/AVX-512 ones:
/// the bound, which the measured differences stay well inside (docs/web.md).
const LOGIT_TOLERANCE: f64 = 1e-4;

/// The native build's logits for `file`, in model order.
fn native_logits(file: &str, classes: &[String]) -> Vec<f64> {
    let lines = NATIVE_PREDICTIONS.expect(
        "MEDPATCH_WEB_NATIVE_PREDICTIONS is not set: run the browser tests through scripts/test.sh's web stage, \
         which sets it to `medpatch predict --provider tract` on the bundled X-rays",
    );
    let record = lines
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .find(|record| record["input"].as_str().is_some_and(|input| input.ends_with(file)))
        .unwrap_or_else(|| panic!("no native prediction for {file}"));
    classes
        .iter()
        .map(|class| record["logits"][class].as_f64().unwrap_or_else(|| panic!("{file}: no {class}")))
        .collect()
}

fn message(error: JsError) -> String {
    js_sys::Error::from(JsValue::from(error)).message().into()
}

fn predict(explainer: &Explainer, bytes: &[u8], name: &str) -> Prediction {
    explainer.predict(bytes, Some(name.into())).unwrap_or_else(|e| panic!("{name}: {}", message(e)))
}

fn assert_close_to_native(explainer: &Explainer, prediction: &Prediction, reference: &str, what: &str) {
    let classes = explainer.classes();
    let native = native_logits(reference, &classes);
    let logits = prediction.logits();
    assert_eq!(logits.len(), classes.len());
    let worst = logits.iter().zip(&native).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    wasm_bindgen_test::console_log!(
        "{what}: max |logit − native| = {worst:.2e} (logits up to ±{:.1})",
        max_abs(&logits)
    );
    for ((class, &got), &want) in classes.iter().zip(&logits).zip(&native) {
        assert!((got as f64 - want).abs() <= LOGIT_TOLERANCE, "{what}, {class}: browser {got}, native {want}");
    }
    // The probabilities are the logits' sigmoids, and the logits the patch logits' means.
    for (&p, &z) in prediction.probabilities().iter().zip(&logits) {
        assert!((p - 1.0 / (1.0 + (-z).exp())).abs() <= 1e-6, "{what}: probability {p} for logit {z}");
    }
    let (grid, patch_logits) = (prediction.grid(), prediction.patch_logits());
    assert_eq!(patch_logits.len(), grid * grid * classes.len());
    for (c, &z) in logits.iter().enumerate() {
        let mean =
            (0..grid * grid).map(|k| patch_logits[k * classes.len() + c] as f64).sum::<f64>() / (grid * grid) as f64;
        assert!((mean - z as f64).abs() <= 1e-5 * (1.0 + mean.abs()), "{what}: class {c}: mean {mean} vs {z}");
    }
}

fn max_abs(values: &[f32]) -> f32 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[wasm_bindgen_test]
fn logits_equal_the_native_tract_builds_on_the_bundled_xrays() {
    let explainer = Explainer::new().unwrap_or_else(|e| panic!("{}", message(e)));
    assert!(explainer.notice().is_some_and(|n| n.contains("mean nothing")), "the demo model's notice");
    for (name, bytes) in [(PNG_NAME, PNG), (JPEG_NAME, JPEG)] {
        let prediction = predict(&explainer, bytes, name);
        assert_close_to_native(&explainer, &prediction, name, name);
    }
}

/// DICOM in the browser: the PNG's pixels as an 8-bit DICOM whose window (LINEAR_EXACT, centre
/// 127.5, width 255) maps a stored value v to exactly v / 255, the PNG's own scaling; so its
/// logits are the native build's for the PNG.
#[wasm_bindgen_test]
fn a_dicom_file_is_explained_like_the_same_pixels_as_png() {
    let explainer = Explainer::new().unwrap_or_else(|e| panic!("{}", message(e)));
    let gray = image::load_from_memory(PNG).expect("the bundled PNG").to_luma8();
    let dicom = dicom_8bit(gray.width() as u16, gray.height() as u16, gray.as_raw());
    let prediction = predict(&explainer, &dicom, "pixels-of-png.dcm");
    assert_close_to_native(&explainer, &prediction, PNG_NAME, "the PNG's pixels as DICOM");
}

/// The browser build has no JPEG 2000 decoder (decode/Cargo.toml): such files are refused with
/// the transfer syntax's name and what to do, like any other file the page cannot read.
#[wasm_bindgen_test]
fn jpeg_2000_dicom_is_refused_by_name() {
    let explainer = Explainer::new().unwrap_or_else(|e| panic!("{}", message(e)));
    let dicom = dicom_encapsulated("1.2.840.10008.1.2.4.90", 64, 64, b"\xff\x4f\xff\x51 not really a codestream");
    let error = message(explainer.predict(&dicom, Some("lossless.dcm".into())).err().expect("refused"));
    assert!(
        error.starts_with("lossless.dcm") && error.contains("JPEG 2000 Lossless Only (1.2.840.10008.1.2.4.90)"),
        "{error}"
    );
    assert!(error.contains("convert the file to an uncompressed one"), "{error}");
}

/// The overlay is `medpatch predict --out`'s overlay PNG (the engine's own, decoded), in RGBA.
#[wasm_bindgen_test]
fn overlays_are_the_clis_overlay_pngs() {
    let explainer = Explainer::new().unwrap_or_else(|e| panic!("{}", message(e)));
    let prediction = predict(&explainer, JPEG, JPEG_NAME);
    let engine = Engine::builder().provider(ProviderChoice::Only(Provider::Tract)).threads(1).build().unwrap();
    let reference = engine.predict(Input::Bytes { bytes: JPEG, name: JPEG_NAME }).unwrap();
    let side = explainer.side();
    let classes = explainer.classes();
    let pneumothorax = classes.iter().position(|c| c == "Pneumothorax").expect("a Pneumothorax class");
    for class in [0, pneumothorax] {
        let rgba = explainer.overlay(&prediction, class).unwrap_or_else(|e| panic!("{}", message(e)));
        assert_eq!(rgba.len(), side * side * 4);
        let png = engine.overlay_pngs(&reference, &[class], MapKind::Raw, None).unwrap().remove(0);
        let expected = image::load_from_memory(&png).unwrap().to_rgb8();
        let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        assert!(rgba.chunks_exact(4).all(|p| p[3] == 255), "{}: opaque", classes[class]);
        assert!(rgb == expected.as_raw().as_slice(), "{}: the overlay differs from the CLI's", classes[class]);
        // Not the bare X-ray: some pixels are coloured (red or blue evidence).
        let coloured = rgb.chunks_exact(3).filter(|p| p.iter().max().unwrap() - p.iter().min().unwrap() > 32).count();
        assert!(coloured > side * side / 100, "{}: only {coloured} coloured pixels", classes[class]);
    }
    let error = message(explainer.overlay(&prediction, classes.len()).expect_err("out of range"));
    assert!(error.contains("out of range"), "{error}");
}

/// Bad files are errors the page can show; the explainer keeps working after them.
#[wasm_bindgen_test]
fn corrupt_files_are_errors_and_the_explainer_goes_on() {
    let explainer = Explainer::new().unwrap_or_else(|e| panic!("{}", message(e)));
    let cases: [(&[u8], &str, &str); 3] = [
        (b"these are notes, not an image", "notes.png", "unrecognised file format"),
        (&PNG[..4000], "truncated.png", "corrupt or truncated PNG"),
        (&[], "empty.dcm", "empty"),
    ];
    for (bytes, name, expected) in cases {
        let error = message(explainer.predict(bytes, Some(name.into())).err().expect("an error"));
        assert!(error.starts_with(name) && error.contains(expected), "{name}: {error}");
    }
    let prediction = predict(&explainer, JPEG, JPEG_NAME);
    assert_close_to_native(&explainer, &prediction, JPEG_NAME, "after the errors");
}

/// A model the user picks is checked like `--model`: the demo model's bytes work (without the
/// notice: it is no longer the embedded model), anything else is refused with the reason.
#[wasm_bindgen_test]
fn a_picked_model_is_checked_and_used() {
    let picked = Explainer::from_onnx(medpatch_engine::DEFAULT_MODEL_BYTES.to_vec(), "picked.onnx".into())
        .unwrap_or_else(|e| panic!("{}", message(e)));
    assert_eq!(picked.model_name(), "picked.onnx");
    assert_eq!(picked.notice(), None);
    let prediction = predict(&picked, PNG, PNG_NAME);
    assert_close_to_native(&picked, &prediction, PNG_NAME, "the picked model");
    let error = message(Explainer::from_onnx(PNG.to_vec(), "photo.onnx".into()).err().expect("refused"));
    assert!(error.contains("photo.onnx") && error.contains("not an ONNX model"), "{error}");
}

const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// A single-frame 8-bit MONOCHROME2 data set's header elements.
fn gray_8bit_header(width: u16, height: u16) -> Vec<dicom_object::mem::InMemElement> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let text = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
    let short = |tag, value: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(value));
    vec![
        text(tags::SOP_CLASS_UID, VR::UI, SECONDARY_CAPTURE),
        text(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1"),
        short(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        short(tags::ROWS, height),
        short(tags::COLUMNS, width),
        short(tags::BITS_ALLOCATED, 8),
        short(tags::BITS_STORED, 8),
        short(tags::HIGH_BIT, 7),
        short(tags::PIXEL_REPRESENTATION, 0),
    ]
}

/// `elements` as a DICOM file in `transfer_syntax`.
fn dicom_file(elements: Vec<dicom_object::mem::InMemElement>, transfer_syntax: &str) -> Vec<u8> {
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(transfer_syntax)
        .media_storage_sop_class_uid(SECONDARY_CAPTURE)
        .media_storage_sop_instance_uid("2.25.1");
    let mut bytes = Vec::new();
    let object = InMemDicomObject::from_element_iter(elements).with_meta(meta).expect("file meta");
    object.write_all(&mut bytes).expect("written");
    bytes
}

/// An 8-bit MONOCHROME2 DICOM file (explicit VR little endian) with a LINEAR_EXACT window that
/// maps stored value v to v / 255.
fn dicom_8bit(width: u16, height: u16, pixels: &[u8]) -> Vec<u8> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let mut elements = gray_8bit_header(width, height);
    elements.extend([
        DataElement::new(tags::WINDOW_CENTER, VR::DS, PrimitiveValue::from("127.5")),
        DataElement::new(tags::WINDOW_WIDTH, VR::DS, PrimitiveValue::from("255")),
        DataElement::new(tags::VOILUT_FUNCTION, VR::CS, PrimitiveValue::from("LINEAR_EXACT")),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels.to_vec())),
    ]);
    dicom_file(elements, "1.2.840.10008.1.2.1")
}

/// An 8-bit MONOCHROME2 DICOM file whose pixel data is one encapsulated fragment in
/// `transfer_syntax`.
fn dicom_encapsulated(transfer_syntax: &str, width: u16, height: u16, fragment: &[u8]) -> Vec<u8> {
    use dicom_core::value::{PixelFragmentSequence, Value};
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    let mut elements = gray_8bit_header(width, height);
    let fragments = PixelFragmentSequence::new(Vec::<u32>::new(), vec![fragment.to_vec()]);
    elements.push(DataElement::new(tags::PIXEL_DATA, VR::OB, Value::PixelSequence(fragments)));
    dicom_file(elements, transfer_syntax)
}
