//! The shipped default model (models/default/): its checkpoint (safetensors, what `medpatch-train`
//! wrote) in tch and its ONNX export (what the engine embeds) in the engine's backends, ONNX
//! Runtime and tract, give the same patch logits (within 2^-17 of the largest) on the same preprocessed
//! inputs; and
//! the checkpoint's metadata matches the ONNX metadata; the ONNX file was exported from exactly the
//! shipped weights file (sha256), which the model card names.

use medpatch_engine::backend::{self, BackendOptions, Provider, ProviderChoice};
use medpatch_engine::{DEFAULT_MODEL_BYTES, Model, ModelOrigin};
use medpatch_models::ArchConfig;
use medpatch_train::model::MedicalPatchNet;
use medpatch_train::synth::{self, Split, SynthConfig};
use medpatch_train::trainer;
use std::path::{Path, PathBuf};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("models/default")
}

fn ort_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let lib = default_dir().join("../../.venv/lib");
    std::fs::read_dir(&lib).ok()?.filter_map(|e| e.ok()).find_map(|e| {
        let capi = e.path().join("site-packages/onnxruntime/capi");
        std::fs::read_dir(capi)
            .ok()?
            .filter_map(|f| f.ok().map(|f| f.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
    })
}

/// What every training record says of its model, whichever trainer wrote it (medpatch-train's
/// checkpoint JSON, or scripts/gpu/train_torch.py's record for the GPU-trained default model).
#[derive(serde::Deserialize)]
struct TrainingRecord {
    architecture: String,
    patch_size: i64,
    image_size: u32,
    classes: Vec<String>,
    weights_file: String,
}

#[test]
fn shipped_checkpoint_and_onnx_agree() {
    tch::set_num_threads(1);
    let meta: TrainingRecord =
        serde_json::from_str(&std::fs::read_to_string(default_dir().join("medpatch-default.json")).unwrap()).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = trainer::build_model(&vs, &ArchConfig::resolve(&meta.architecture).unwrap(), meta.patch_size);
    trainer::load_exact(&vs, &default_dir().join(&meta.weights_file)).unwrap();

    let model = Model::from_bytes(DEFAULT_MODEL_BYTES.into(), ModelOrigin::Embedded).unwrap();
    assert_eq!(model.metadata.patch_size as i64, meta.patch_size);
    assert_eq!(model.metadata.image_size, meta.image_size);
    assert_eq!(model.metadata.classes, meta.classes);
    assert_eq!(model.metadata.architecture, meta.architecture);

    // Provenance: the embedded ONNX was exported from exactly this weights file, and the model card
    // describes this file (so the card's numbers cannot silently belong to another model).
    let weights = medpatch_weights::load(&default_dir().join(&meta.weights_file)).unwrap();
    assert_eq!(
        model.metadata.source_sha256, weights.source_sha256,
        "models/default/medpatch-default.onnx was not exported from {}: re-export it (see MODEL_CARD.md)",
        meta.weights_file
    );
    let card = std::fs::read_to_string(default_dir().join("MODEL_CARD.md")).unwrap();
    assert!(
        card.contains(&meta.weights_file) && card.contains(&weights.source_sha256),
        "MODEL_CARD.md must name {} and its sha256 {}",
        meta.weights_file,
        weights.source_sha256
    );
    // The demo model's overlays need its own colour range (its logits are a few units, not hundreds).
    let range = model.metadata.overlay_logit_range.expect("the default model stores a calibrated overlay range");
    assert!(card.contains(&format!("±{range}")), "MODEL_CARD.md must state the overlay range ±{range}");

    // Two synthetic test-split images (the model's own domain), preprocessed as the engine does.
    let size = meta.image_size;
    let mut images = Vec::new();
    for i in 0..2 {
        let s = synth::render(&SynthConfig::default(), Split::Test, i);
        let gray = medpatch_engine::decode::GrayImage {
            width: s.width as u32,
            height: s.height as u32,
            pixels: s.pixels.iter().map(|&v| v as f32 / 255.0).collect(),
        };
        images.extend(medpatch_engine::preprocess::preprocess(&gray, size).pixels);
    }
    let x = Tensor::from_slice(&images).reshape([2, 1, size as i64, size as i64]);
    let tch_patch_logits: Vec<f32> =
        Vec::try_from(tch::no_grad(|| net.patch_logits(&x, false)).flatten(0, -1)).unwrap();
    let tch_image_logits: Vec<f32> =
        Vec::try_from(tch::no_grad(|| net.forward_t(&x, false)).to_kind(Kind::Float).flatten(0, -1)).unwrap();
    let patches: Vec<f32> = Vec::try_from(MedicalPatchNet::tile(&x, meta.patch_size).flatten(0, -1)).unwrap();
    let n = patches.len() / (meta.patch_size * meta.patch_size) as usize;

    let mut providers = vec![Provider::Tract];
    let options = BackendOptions { ort_library: ort_library(), threads: 1, ..Default::default() };
    if options.ort_library.is_some() {
        providers.push(Provider::Cpu);
    } else {
        eprintln!("ONNX Runtime library not found: checking tract only");
    }
    for provider in providers {
        let selection = backend::select(&model, ProviderChoice::Only(provider), &options).unwrap();
        let got = selection.backend.run(&patches, n).unwrap();
        let d = got.iter().zip(&tch_patch_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // Image logits: mean over each image's patches.
        let per_image = n / 2;
        let mut d_img = 0f32;
        for b in 0..2 {
            for c in 0..14 {
                let mean =
                    (0..per_image).map(|p| got[(b * per_image + p) * 14 + c] as f64).sum::<f64>() / per_image as f64;
                d_img = d_img.max((mean as f32 - tch_image_logits[b * 14 + c]).abs());
            }
        }
        // Relative to the largest patch logit, not absolute: the demo model's reach ±170, and three
        // libraries' f32 kernels (tch, ONNX Runtime, tract; AVX2 or AVX-512 chosen at run time) sum
        // each layer's products in different orders. A float32 carries 24 bits; allowing 7 of
        // them for ~40 layers of reordered sums gives 2^-17 of the scale (1.3e-3 at 170), still
        // two orders of magnitude below what a real mismatch (a wrong weight, layout or
        // normalisation) does to these logits.
        let scale = tch_patch_logits.iter().fold(1f32, |m, z| m.max(z.abs()));
        let bound = scale * 2f32.powi(-17);
        eprintln!(
            "default model, {provider} vs tch: patch logits max |Δ| {d:.2e}, image logits max |Δ| {d_img:.2e} \
             (largest patch logit {scale:.1}, bound {bound:.2e})"
        );
        assert!(d <= bound && d_img <= bound, "{provider}: {d} / {d_img} against {bound}");
    }
}
