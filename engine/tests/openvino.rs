//! The OpenVINO provider and precisions: OpenVINO equals ONNX Runtime at f32 on every real X-ray,
//! bf16, with the stem and the classifier kept in f32, stays within the self-check's bound on real
//! X-rays where the CPU has it (and is refused, with the reason, where it does not), and `auto`
//! skips what cannot run the requested precision.
//!
//! OpenVINO is found the way users find it: `OPENVINO_LIB_PATH` (scripts/test.sh sets it) or the
//! active Python environment (`VIRTUAL_ENV`, the venv that has the pinned `openvino` wheel). How
//! the command line finds it, in fresh processes: tests/cli_openvino.rs at the workspace root.

use medpatch_engine::backend::{REDUCED_PRECISION_BOUND, default_openvino_library};
use medpatch_engine::{BackendOptions, Engine, EngineError, Model, ModelSource, Precision, Provider, ProviderChoice};
use medpatch_testkit::*;
use std::path::PathBuf;

/// The venv's OpenVINO, found as medpatch finds it by default.
fn openvino_found() -> PathBuf {
    default_openvino_library().unwrap_or_else(|| {
        panic!(
            "OpenVINO not found: run the tests through scripts/test.sh (it sets OPENVINO_LIB_PATH), or activate \
             .venv (it has the openvino wheel from scripts/requirements-test.txt), or export OPENVINO_LIB_PATH"
        )
    })
}

fn engine(model: &Model, provider: ProviderChoice, precision: Precision) -> Result<Engine, EngineError> {
    engine_keeping(model, provider, precision, None)
}

/// An engine with `keep` (layer names or presets) in f32 at bf16; `None`: the default.
fn engine_keeping(
    model: &Model,
    provider: ProviderChoice,
    precision: Precision,
    keep: Option<&[&str]>,
) -> Result<Engine, EngineError> {
    let keep_f32 = keep.map(|k| k.iter().map(|s| s.to_string()).collect());
    Engine::builder()
        .model(ModelSource::Loaded(model.clone()))
        .provider(provider)
        .backend_options(BackendOptions { ort_library: Some(ort_library()), precision, keep_f32, ..Default::default() })
        .build()
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("?".into(), |s| s.trim().to_string())
}

/// A model of `arch` (efficientnet_v2_s: full size) with the exporter's reproducible random weights.
fn random_model(arch: &str) -> Model {
    let dir = scratch(&format!("openvino-random-{arch}-{}", std::process::id()));
    let path = dir.join(format!("{arch}.onnx"));
    let mut options = medpatch_exporter::ExportOptions::new(
        medpatch_exporter::WeightsSource::Random { seed: 0, num_classes: 14 },
        path.clone(),
    );
    options.arch = medpatch_models::ArchConfig::builtin(arch).unwrap();
    medpatch_exporter::export(&options).unwrap();
    Model::from_path(&path).unwrap()
}

fn embedded_model() -> Model {
    Model::from_bytes(medpatch_engine::DEFAULT_MODEL_BYTES.into(), medpatch_engine::ModelOrigin::Embedded).unwrap()
}

#[derive(Default)]
struct Deviation {
    worst: f32,
    sum: f64,
    count: usize,
}

impl Deviation {
    fn add(&mut self, a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs();
            self.worst = if d.is_nan() { f32::INFINITY } else { self.worst.max(d) };
            self.sum += d as f64;
            self.count += 1;
        }
    }
    fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }
}

#[test]
fn openvino_equals_onnxruntime_at_f32_on_every_real_xray() {
    eprintln!("OpenVINO: {}; CPU: {}", openvino_found().display(), cpu_model());
    let (_, model) = exported_reference_model("efficientnet_v2_s");
    let ort = engine(&model, ProviderChoice::Only(Provider::Cpu), Precision::F32).unwrap();
    let ov = engine(&model, ProviderChoice::Only(Provider::OpenVino), Precision::F32).unwrap();
    assert_eq!((ov.provider(), ov.precision()), (Provider::OpenVino, Precision::F32));
    assert!(ov.precision_check().is_none(), "f32 needs no self-check");
    let images = all_real_xrays();
    assert!(images.len() >= 41, "expected the 32 NIH PNGs, 8 JPEGs and the DICOM");
    // The engine's default batch (256 patches = 4 images) and the shorter last batch: two shapes.
    let (a, b) = (ort.predict_paths(&images), ov.predict_paths(&images));
    let (mut worst, mut largest) = (0f32, 0f32);
    for ((path, a), b) in images.iter().zip(a).zip(b) {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(b.provider, Provider::OpenVino);
        let d = max_abs_diff(&a.patch_logits, &b.patch_logits).max(max_abs_diff(&a.logits, &b.logits));
        eprintln!("{}: max |Δ logit| OpenVINO vs ONNX Runtime {d:.2e}", path.file_name().unwrap().to_string_lossy());
        worst = worst.max(d);
        largest = a.patch_logits.iter().fold(largest, |m, z| m.max(z.abs()));
    }
    eprintln!("worst over {} real X-rays: {worst:.2e} (patch logits up to {largest:.2})", images.len());
    assert!(largest > 0.1, "the reference model's logits must not be vanishingly small ({largest})");
    assert!(worst <= 1e-4, "OpenVINO and ONNX Runtime differ by {worst}");
}

/// What bf16 does to a model on a CPU that has it.
#[derive(Clone, Copy, PartialEq)]
enum OnBf16Cpu {
    /// Its self-check passes, and on the real X-rays it stays within the same bound.
    Passes,
    /// Its self-check refuses it. The embedded demo model with no layer kept in f32: bf16 in the
    /// stem (the first convolution, which sees the image) alone moves its patch logits by ~6,
    /// twice what rounding the image to 8 bits does to them in f32 (measured on a Zen 4:
    /// docs/precision.md), outside any bf16 kernel's rounding differences.
    IsRefused,
}

/// bf16 (with `keep` in f32) on the real X-rays against OpenVINO f32, for one model: where the
/// CPU has bf16 the model behaves as `expected` (within the self-check's bound on the real X-rays
/// too, or refused by the self-check naming the logit and what to do); where it does not, bf16
/// must be refused with a reason naming the missing capability.
///
/// On the real X-rays the bound is the self-check's: every patch logit within `absolute +
/// relative·|z|`, or max and mean |Δ| within `input_rounding_factor` times what rounding the
/// prepared images to 8 bits does to the f32 patch logits.
fn bf16_on_real_xrays(label: &str, model: &Model, keep: Option<&[&str]>, expected: OnBf16Cpu) {
    let bf16 = engine_keeping(model, ProviderChoice::Only(Provider::OpenVino), Precision::Bf16, keep);
    if cpu_has_bf16() && expected == OnBf16Cpu::IsRefused {
        let err = bf16.err().expect("the self-check must refuse bf16 for this model").to_string();
        eprintln!("{label}: bf16 refused on {} by the self-check, as expected: {err}", cpu_model());
        for needed in [
            "provider openvino is not available",
            "bf16 results are too far from f32",
            "precision f32, or keep more layers in f32",
        ] {
            assert!(err.contains(needed), "'{needed}' missing from: {err}");
        }
        return;
    }
    if !cpu_has_bf16() {
        let err = bf16.err().expect("bf16 must be refused on a CPU without AVX512-BF16 or AMX").to_string();
        eprintln!("{label}: bf16 refused on {}, as it must be: {err}", cpu_model());
        assert!(
            err.contains("provider openvino is not available")
                && err.contains("does not report BF16 in OpenVINO's OPTIMIZATION_CAPABILITIES")
                && err.contains("precision f32"),
            "{err}"
        );
        return;
    }
    let bf16 = bf16.unwrap_or_else(|e| panic!("{label}: this CPU has bf16 but OpenVINO bf16 was refused: {e}"));
    let f32 = engine(model, ProviderChoice::Only(Provider::OpenVino), Precision::F32).unwrap();
    let check = bf16.precision_check().expect("bf16 is self-checked");
    eprintln!("{label}: {check}");
    let prepared: Vec<_> =
        all_real_xrays().iter().map(|p| f32.load(&medpatch_engine::Input::Path(p)).unwrap().image).collect();
    let in_8_bits: Vec<_> = prepared
        .iter()
        .map(|image| {
            let mut image = image.clone();
            image.pixels.iter_mut().for_each(|v| *v = (*v * 255.0).round() / 255.0);
            image
        })
        .collect();
    let run = |engine: &Engine, images| engine.predict_prepared(images).unwrap().into_iter().map(Result::unwrap);
    let (mut logits, mut probabilities, mut patches, mut rounding) =
        (Deviation::default(), Deviation::default(), Deviation::default(), Deviation::default());
    let mut per_logit = 0f32;
    for ((a, b), r) in run(&bf16, &prepared).zip(run(&f32, &prepared)).zip(run(&f32, &in_8_bits)) {
        logits.add(&a.logits, &b.logits);
        probabilities.add(&a.probabilities, &b.probabilities);
        patches.add(&a.patch_logits, &b.patch_logits);
        rounding.add(&r.patch_logits, &b.patch_logits);
        per_logit = per_logit.max(REDUCED_PRECISION_BOUND.worst(&a.patch_logits, &b.patch_logits).0);
    }
    let factor = REDUCED_PRECISION_BOUND.input_rounding_factor as f64;
    let aggregate =
        (patches.worst as f64 / (factor * rounding.worst as f64)).max(patches.mean() / (factor * rounding.mean()));
    eprintln!(
        "{label}: bf16 vs f32 over {} real X-rays on {}: logits worst {:.2e} mean {:.2e}; probabilities worst {:.2e} \
         mean {:.2e}; patch logits worst {:.2e} mean {:.2e}; the images rounded to 8 bits, in f32: patch logits worst \
         {:.2e} mean {:.2e}; {:.0}% of the per-logit bound, {:.0}% of the rounding bound",
        prepared.len(),
        cpu_model(),
        logits.worst,
        logits.mean(),
        probabilities.worst,
        probabilities.mean(),
        patches.worst,
        patches.mean(),
        rounding.worst,
        rounding.mean(),
        100.0 * per_logit,
        100.0 * aggregate
    );
    assert!(
        per_logit <= 1.0 || aggregate <= 1.0,
        "{label}: bf16 is outside the bound on the real X-rays ({per_logit:.2} of the per-logit one, {aggregate:.2} of \
         the rounding one)"
    );
    assert!(patches.worst > 0.0, "{label}: bf16 gave exactly the f32 numbers: it did not run bf16");
}

#[test]
fn bf16_is_within_the_bound_on_real_xrays_or_refused_naming_why() {
    eprintln!("OpenVINO: {}; CPU: {}; bf16 flags: {}", openvino_found().display(), cpu_model(), cpu_has_bf16());
    bf16_on_real_xrays("random efficientnet_v2_s", &random_model("efficientnet_v2_s"), None, OnBf16Cpu::Passes);
    let demo = embedded_model();
    bf16_on_real_xrays("embedded demo model, stem and classifier in f32", &demo, None, OnBf16Cpu::Passes);
    bf16_on_real_xrays("embedded demo model, all in bf16", &demo, Some(&["none"]), OnBf16Cpu::IsRefused);
}

/// The layers kept in f32 are named in the self-check's report; a name that is no layer of the
/// model, and layers kept at a precision other than bf16, are refused naming the problem.
#[test]
fn layers_kept_in_f32_are_reported_and_bad_names_refused() {
    openvino_found();
    let demo = embedded_model();
    let only = ProviderChoice::Only(Provider::OpenVino);
    let err = engine_keeping(&demo, only, Precision::F32, Some(&["stem"])).err().unwrap().to_string();
    assert!(err.contains("layers kept in f32 are for precision bf16, not f32"), "{err}");
    if !cpu_has_bf16() {
        return;
    }
    let err = engine_keeping(&demo, only, Precision::Bf16, Some(&["features.99"])).err().unwrap().to_string();
    assert!(err.contains("layers to keep in f32: no layer named 'features.99'"), "{err}");
    let e = engine_keeping(&demo, only, Precision::Bf16, Some(&["stem", "head"])).unwrap();
    let check = e.precision_check().unwrap();
    assert_eq!(check.kept_f32, ["features.0", "features.7"]);
    assert!(check.to_string().ends_with("layers in f32: features.0, features.7"), "{check}");
}

#[test]
fn auto_skips_providers_that_cannot_run_the_precision_and_says_why() {
    openvino_found();
    let model = embedded_model();
    // f32: ONNX Runtime's CPU provider comes before OpenVINO.
    let f32 = engine(&model, ProviderChoice::Auto, Precision::F32).unwrap();
    assert_eq!((f32.provider(), f32.precision()), (Provider::Cpu, Precision::F32));
    // bf16: everything but OpenVINO is skipped for the precision; OpenVINO runs it where the CPU
    // can and the model passes the self-check (a small random model does; the demo model with no
    // layer in f32 does not, see `OnBf16Cpu::IsRefused`). Otherwise auto ends on an error listing
    // every provider's reason.
    let auto_bf16_error = |model: &Model, keep: Option<&[&str]>, openvino_reason: &str| {
        let e = engine_keeping(model, ProviderChoice::Auto, Precision::Bf16, keep);
        let e = e.err().expect("auto must find no bf16 provider");
        let e = e.to_string();
        eprintln!("{e}");
        assert!(e.starts_with("provider auto is not available: tensorrt: "), "{e}");
        for expected in [
            "cpu: ONNX Runtime CPU execution provider runs f32 only, not bf16; bf16 needs OpenVINO CPU",
            openvino_reason,
            "tract: tract (pure Rust) runs f32 or fp16 only, not bf16",
        ] {
            assert!(e.contains(expected), "missing '{expected}' in: {e}");
        }
    };
    if cpu_has_bf16() {
        let small = random_model("efficientnet_v2_tiny");
        let e = engine(&small, ProviderChoice::Auto, Precision::Bf16)
            .unwrap_or_else(|e| panic!("this CPU has bf16 but auto found no provider for a small random model: {e}"));
        assert_eq!((e.provider(), e.precision()), (Provider::OpenVino, Precision::Bf16));
        let skipped: Vec<Provider> = e.skipped_providers().iter().map(|(p, _)| *p).collect();
        assert_eq!(skipped, [Provider::TensorRt, Provider::Cuda, Provider::Cpu]);
        let (_, why) = &e.skipped_providers()[2];
        assert!(why.contains("runs f32 only, not bf16; bf16 needs OpenVINO CPU"), "{why}");
        auto_bf16_error(&model, Some(&["none"]), "openvino: bf16 results are too far from f32");
    } else {
        auto_bf16_error(&model, None, "does not report BF16");
    }
    // fp16 is TensorRT's and (on ARM) tract's: OpenVINO, asked for it, says so.
    let err = engine(&model, ProviderChoice::Only(Provider::OpenVino), Precision::Fp16).err().unwrap().to_string();
    assert!(
        err.contains(
            "OpenVINO CPU runs f32 or bf16 only, not fp16; fp16 needs ONNX Runtime TensorRT execution provider or tract"
        ),
        "{err}"
    );
}
