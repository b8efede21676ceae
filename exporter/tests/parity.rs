//! The exporter against PyTorch/torchvision: a torchvision EfficientNetV2 MedicalPatchNet
//! checkpoint, saved like the published one, exported by medpatch, run in ONNX Runtime and tract.

use medpatch_engine::backend::{self, BackendOptions, Provider, ProviderChoice};
use medpatch_engine::{Model, ModelOrigin};
use medpatch_exporter::{ExportOptions, WeightsSource, export};
use medpatch_models::ArchConfig;
use medpatch_testkit::*;
use std::path::Path;

const TOLERANCE: f32 = 1e-4;

fn export_model(weights: &Path, arch: &str, patch_size: u32, out: &Path) -> Model {
    let mut options = ExportOptions::new(WeightsSource::File(weights.to_path_buf()), out.to_path_buf());
    options.arch = ArchConfig::builtin(arch).unwrap();
    options.patch_size = patch_size;
    let report = export(&options).unwrap();
    eprintln!(
        "exported {} ({} parameters, {:.1} MB) in {:.2} s",
        out.display(),
        report.parameters,
        report.file_bytes as f64 / 1e6,
        report.elapsed.as_secs_f64()
    );
    Model::from_path(out).unwrap()
}

fn run(model: &Model, provider: Provider, patches: &[f32], n: usize) -> Vec<f32> {
    let options = BackendOptions { ort_library: Some(ort_library()), ..Default::default() };
    let selection = backend::select(model, ProviderChoice::Only(provider), &options).unwrap();
    selection.backend.run(patches, n).unwrap()
}

fn mean_over_patches(patch_logits: &[f32], classes: usize) -> Vec<f32> {
    let n = patch_logits.len() / classes;
    (0..classes).map(|c| (0..n).map(|i| patch_logits[i * classes + c] as f64).sum::<f64>() as f32 / n as f32).collect()
}

/// The full checks for one architecture: patches, the whole MedicalPatchNet forward on a real
/// X-ray, and the patch-512 baseline, each in ONNX Runtime and tract; then onnx's own checker.
fn parity(arch: &str) {
    let dir = scratch(&format!("exporter-parity-{arch}"));
    let xray = nih_images()[0].clone();
    run_python(
        "make_export_reference.py",
        &["--arch", arch, "--xray", xray.to_str().unwrap(), "--out", dir.to_str().unwrap()],
    );
    let (_, patches) = read_npy(&dir.join("patches.npy"));
    let (_, patch_ref) = read_npy(&dir.join("patch_logits.npy"));
    let (_, image) = read_npy(&dir.join("image.npy"));
    let (_, image_ref) = read_npy(&dir.join("image_logits.npy"));
    let (_, baseline_ref) = read_npy(&dir.join("baseline_logits.npy"));

    let model = export_model(&dir.join("weights.pt"), arch, 64, &dir.join("model.onnx"));
    assert_eq!(model.metadata.classes.len(), 14);
    assert_eq!((model.metadata.patch_size, model.metadata.grid()), (64, 8));
    let baseline = export_model(&dir.join("weights.pt"), arch, 512, &dir.join("baseline.onnx"));
    assert_eq!(baseline.metadata.grid(), 1);

    let image_patches = medpatch_engine::tile::tile(&image, 512, 64);
    for provider in [Provider::Cpu, Provider::Tract] {
        let got = run(&model, provider, &patches, patches.len() / 4096);
        let d_patch = max_abs_diff(&got, &patch_ref);
        let image_logits = mean_over_patches(&run(&model, provider, &image_patches, 64), 14);
        let d_image = max_abs_diff(&image_logits, &image_ref);
        let d_baseline = max_abs_diff(&run(&baseline, provider, &image, 1), &baseline_ref);
        eprintln!(
            "{arch} {provider}: max |Δ logit| patches {d_patch:.2e}, image {d_image:.2e}, baseline-512 {d_baseline:.2e}"
        );
        assert!(d_patch <= TOLERANCE, "{provider}: patch logits differ by {d_patch}");
        assert!(d_image <= TOLERANCE, "{provider}: image logits differ by {d_image}");
        assert!(d_baseline <= TOLERANCE, "{provider}: baseline logits differ by {d_baseline}");
    }
    let checked = run_python(
        "check_onnx.py",
        &[dir.join("model.onnx").to_str().unwrap(), dir.join("baseline.onnx").to_str().unwrap()],
    );
    eprintln!("{checked}");
}

#[test]
fn tiny_variant_matches_torchvision() {
    if skip_without_shared() {
        return;
    }
    parity("efficientnet_v2_tiny");
}

#[test]
fn efficientnet_v2_s_matches_torchvision() {
    if skip_without_shared() {
        return;
    }
    parity("efficientnet_v2_s");
}

#[test]
fn safetensors_with_torchvision_names_exports_the_same_model() {
    if skip_without_shared() {
        return;
    }
    let dir = scratch("exporter-safetensors");
    let xray = nih_images()[1].clone();
    run_python(
        "make_export_reference.py",
        &["--arch", "efficientnet_v2_tiny", "--xray", xray.to_str().unwrap(), "--out", dir.to_str().unwrap()],
    );
    let from_pt = export_model(&dir.join("weights.pt"), "efficientnet_v2_tiny", 64, &dir.join("a.onnx"));
    let from_st = export_model(&dir.join("weights.safetensors"), "efficientnet_v2_tiny", 64, &dir.join("b.onnx"));
    let (_, patches) = read_npy(&dir.join("patches.npy"));
    let (_, reference) = read_npy(&dir.join("patch_logits.npy"));
    let n = patches.len() / 4096;
    let a = run(&from_pt, Provider::Tract, &patches, n);
    let b = run(&from_st, Provider::Tract, &patches, n);
    assert_eq!(a, b, "the same weights must give the same model whatever the file format");
    assert!(max_abs_diff(&b, &reference) <= TOLERANCE);
    assert_ne!(from_pt.metadata.source_sha256, from_st.metadata.source_sha256);
}

#[test]
fn exported_model_loads_from_memory_with_its_metadata() {
    if skip_without_shared() {
        return;
    }
    let dir = scratch("exporter-metadata");
    let out = dir.join("random.onnx");
    let mut options = ExportOptions::new(WeightsSource::Random { seed: 3, num_classes: 14 }, out.clone());
    options.arch = ArchConfig::builtin("efficientnet_v2_tiny").unwrap();
    export(&options).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let model = Model::from_bytes(bytes.clone().into(), ModelOrigin::Memory("random".into())).unwrap();
    assert_eq!(model.metadata.architecture, "efficientnet_v2_tiny");
    assert_eq!(model.metadata.classes[13], "Support Devices");
    assert!(model.metadata.source.contains("seed 3"));
    // Same seed, same bytes: reproducible test models.
    let again = dir.join("again.onnx");
    export(&ExportOptions { output: again.clone(), ..options }).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
}
