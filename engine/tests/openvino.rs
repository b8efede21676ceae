//! The OpenVINO provider and precisions: OpenVINO equals ONNX Runtime at f32 on every real X-ray,
//! bf16 stays within the documented bound where the CPU has it (and is refused, with the reason,
//! where it does not), and `auto` skips what cannot run the requested precision.
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
    Engine::builder()
        .model(ModelSource::Loaded(model.clone()))
        .provider(provider)
        .backend_options(BackendOptions { ort_library: Some(ort_library()), precision, ..Default::default() })
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
    /// Its self-check passes: every patch logit on the real X-rays stays within the bound.
    Passes,
    /// Its self-check refuses it: the model's patch logits are too large for bf16's 8-bit
    /// mantissa to keep the small ones within the per-logit bound. The embedded demo model: its
    /// patch logits reach ±170, and a relative rounding of 2^-8 per operation, compounded over its
    /// layers, moves them by several units (7.0 measured on a Zen 4, 40× the bound near 0), far
    /// outside any bf16 kernel's rounding differences, so every BF16 CPU refuses it.
    IsRefused,
}

/// bf16 on the real X-rays against OpenVINO f32, for one model: where the CPU has bf16 the model
/// behaves as `expected` (within the bound on every patch logit, or refused by the self-check
/// naming the logit and what to do); where it does not, bf16 must be refused with a reason naming
/// the missing capability.
fn bf16_on_real_xrays(label: &str, model: &Model, expected: OnBf16Cpu) {
    let bf16 = engine(model, ProviderChoice::Only(Provider::OpenVino), Precision::Bf16);
    if cpu_has_bf16() && expected == OnBf16Cpu::IsRefused {
        let err = bf16.err().expect("the self-check must refuse bf16 for this model").to_string();
        eprintln!("{label}: bf16 refused on {} by the self-check, as expected: {err}", cpu_model());
        for needed in ["provider openvino is not available", "bf16 results are too far from f32", "precision f32"] {
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
    let images = all_real_xrays();
    let (a, b) = (bf16.predict_paths(&images), f32.predict_paths(&images));
    let (mut logits, mut probabilities, mut patches) =
        (Deviation::default(), Deviation::default(), Deviation::default());
    let mut worst_fraction = 0f32;
    for (a, b) in a.into_iter().zip(b) {
        let (a, b) = (a.unwrap(), b.unwrap());
        logits.add(&a.logits, &b.logits);
        probabilities.add(&a.probabilities, &b.probabilities);
        patches.add(&a.patch_logits, &b.patch_logits);
        worst_fraction = worst_fraction.max(REDUCED_PRECISION_BOUND.worst(&a.patch_logits, &b.patch_logits).0);
    }
    eprintln!(
        "{label}: bf16 vs f32 over {} real X-rays on {}: logits worst {:.2e} mean {:.2e}; probabilities worst {:.2e} \
         mean {:.2e}; patch logits worst {:.2e} mean {:.2e}; worst patch logit at {:.0}% of the bound",
        images.len(),
        cpu_model(),
        logits.worst,
        logits.mean(),
        probabilities.worst,
        probabilities.mean(),
        patches.worst,
        patches.mean(),
        100.0 * worst_fraction
    );
    assert!(worst_fraction <= 1.0, "{label}: a bf16 patch logit is outside the bound ({worst_fraction:.2} of it)");
    assert!(patches.worst > 0.0, "{label}: bf16 gave exactly the f32 numbers: it did not run bf16");
}

#[test]
fn bf16_is_within_the_bound_on_real_xrays_or_refused_naming_why() {
    eprintln!("OpenVINO: {}; CPU: {}; bf16 flags: {}", openvino_found().display(), cpu_model(), cpu_has_bf16());
    bf16_on_real_xrays("random efficientnet_v2_s", &random_model("efficientnet_v2_s"), OnBf16Cpu::Passes);
    bf16_on_real_xrays("embedded demo model", &embedded_model(), OnBf16Cpu::IsRefused);
}

#[test]
fn auto_skips_providers_that_cannot_run_the_precision_and_says_why() {
    openvino_found();
    let model = embedded_model();
    // f32: ONNX Runtime's CPU provider comes before OpenVINO.
    let f32 = engine(&model, ProviderChoice::Auto, Precision::F32).unwrap();
    assert_eq!((f32.provider(), f32.precision()), (Provider::Cpu, Precision::F32));
    // bf16: everything but OpenVINO is skipped for the precision; OpenVINO runs it where the CPU
    // can and the model passes the self-check (a small random model does; the demo model does not,
    // see `OnBf16Cpu::IsRefused`). Otherwise auto ends on an error listing every provider's reason.
    let auto_bf16_error = |model: &Model, openvino_reason: &str| {
        let e = engine(model, ProviderChoice::Auto, Precision::Bf16).err().expect("auto must find no bf16 provider");
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
        auto_bf16_error(&model, "openvino: bf16 results are too far from f32");
    } else {
        auto_bf16_error(&model, "does not report BF16");
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
