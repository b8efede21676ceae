//! The engine against independent references: ONNX Runtime against tract on every real X-ray,
//! and the whole pipeline against PIL/torchvision preprocessing plus the torch forward.

use medpatch_engine::decode::GrayImage;
use medpatch_engine::{BackendOptions, Engine, ModelSource, Provider, ProviderChoice};
use medpatch_testkit::*;

fn engine(model: &medpatch_engine::Model, provider: Provider) -> Engine {
    Engine::builder()
        .model(ModelSource::Loaded(model.clone()))
        .provider(ProviderChoice::Only(provider))
        .backend_options(BackendOptions { ort_library: Some(ort_library()), ..Default::default() })
        .build()
        .unwrap()
}

#[test]
fn onnxruntime_and_tract_agree_on_every_real_xray() {
    if skip_without_shared() {
        return;
    }
    let (_, model) = exported_reference_model("efficientnet_v2_s");
    let (ort, tract) = (engine(&model, Provider::Cpu), engine(&model, Provider::Tract));
    assert_eq!((ort.provider(), tract.provider()), (Provider::Cpu, Provider::Tract));
    let images = all_real_xrays();
    assert!(images.len() >= 41, "expected the 32 NIH PNGs, 8 JPEGs and the DICOM");
    let (a, b) = (ort.predict_paths(&images), tract.predict_paths(&images));
    let mut worst = 0f32;
    for ((path, a), b) in images.iter().zip(a).zip(b) {
        let (a, b) = (a.unwrap(), b.unwrap());
        let d = max_abs_diff(&a.patch_logits, &b.patch_logits).max(max_abs_diff(&a.logits, &b.logits));
        eprintln!(
            "{}: max |Δ logit| ORT vs tract {d:.2e} (logits up to {:.2})",
            path.file_name().unwrap().to_string_lossy(),
            a.logits.iter().fold(0f32, |m, z| m.max(z.abs()))
        );
        worst = worst.max(d);
    }
    eprintln!("worst over {} real X-rays: {worst:.2e}", images.len());
    assert!(worst <= 1e-4, "ORT and tract differ by {worst}");
}

#[test]
fn end_to_end_matches_pil_torchvision_and_torch() {
    if skip_without_shared() {
        return;
    }
    let (dir, model) = exported_reference_model("efficientnet_v2_s");
    let images = nih_images();
    let out = dir.join("end-to-end");
    let mut args = vec![
        "--weights".to_string(),
        dir.join("weights.pt").display().to_string(),
        "--arch".into(),
        "efficientnet_v2_s".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(images.iter().map(|p| p.display().to_string()));
    run_python("predict_reference.py", &args.iter().map(String::as_str).collect::<Vec<_>>());
    let engine = engine(&model, Provider::Cpu);
    let predictions = engine.predict_paths(&images);
    let (mut worst_e2e, mut worst_same_input) = (0f32, 0f32);
    for (i, prediction) in predictions.into_iter().enumerate() {
        let p = prediction.unwrap();
        let (_, reference) = read_npy(&out.join(format!("{i}.logits.npy")));
        let (_, reference_patches) = read_npy(&out.join(format!("{i}.patch_logits.npy")));
        let (_, tensor) = read_npy(&out.join(format!("{i}.image.npy")));
        let e2e = max_abs_diff(&p.logits, &reference);
        // Same preprocessed tensor as the reference: only the runtime differs.
        let same = engine
            .predict_prepared(&[GrayImage { width: 512, height: 512, pixels: tensor }])
            .unwrap()
            .remove(0)
            .unwrap();
        let d_same = max_abs_diff(&same.logits, &reference).max(max_abs_diff(&same.patch_logits, &reference_patches));
        eprintln!(
            "{}: end to end {e2e:.2e}, identical input {d_same:.2e}",
            images[i].file_name().unwrap().to_string_lossy()
        );
        worst_e2e = worst_e2e.max(e2e);
        worst_same_input = worst_same_input.max(d_same);
    }
    eprintln!(
        "worst over {} NIH X-rays: end to end {worst_e2e:.2e}, identical input {worst_same_input:.2e}",
        images.len()
    );
    assert!(worst_e2e <= 1e-3, "end-to-end logits differ by {worst_e2e}");
    assert!(worst_same_input <= 1e-4, "logits on identical inputs differ by {worst_same_input}");
}
