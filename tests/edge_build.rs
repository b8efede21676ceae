//! The edge build (tract only, cross-compiled for aarch64 by scripts/edge-build.sh) runs under
//! qemu-aarch64 and gives the x86 build's answers on the bundled X-ray.
//!
//! scripts/test.sh builds it and names it in `MEDPATCH_EDGE_BIN`; without that variable this test
//! says so and passes (a plain `cargo test` does not cross-compile).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const XRAY: &str = "assets/00001369_000.png";
/// ELF `e_machine` of 64-bit ARM.
const EM_AARCH64: u16 = 183;

fn edge_binary() -> Option<PathBuf> {
    let path = std::env::var_os("MEDPATCH_EDGE_BIN").map(PathBuf::from);
    if path.is_none() {
        eprintln!("SKIPPED: MEDPATCH_EDGE_BIN is not set (scripts/test.sh builds the edge binary and sets it)");
    }
    path
}

fn under_qemu(binary: &Path, args: &[&str]) -> Output {
    Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(binary)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("qemu-aarch64 runs (Debian qemu-user, installed by scripts/setup.sh)")
}

/// The x86 build's `medpatch`, in the repository root.
fn x86(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medpatch")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

/// The JSON record of a successful `predict`.
fn record(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON record")
}

fn logits(out: &Output) -> Vec<f64> {
    record(out)["logits"].as_object().expect("logits").values().map(|v| v.as_f64().unwrap()).collect()
}

#[test]
fn the_aarch64_tract_build_equals_the_x86_build_on_the_bundled_xray() {
    let Some(edge) = edge_binary() else { return };
    let bytes = std::fs::read(&edge).unwrap_or_else(|e| panic!("{}: {e}", edge.display()));
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not an ELF file", edge.display());
    assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), EM_AARCH64, "{} is not an aarch64 binary", edge.display());
    // Neither runtime's loader is linked in: their entry points' names appear nowhere.
    for symbol in [&b"OrtGetApiBase"[..], b"ov_core_create"] {
        assert!(
            !bytes.windows(symbol.len()).any(|w| w == symbol),
            "the edge build contains {}",
            String::from_utf8_lossy(symbol)
        );
    }

    // `auto` (the default) lands on tract and says why the others were skipped.
    let auto = under_qemu(&edge, &["predict", "--threads", "2", XRAY]);
    let stderr = String::from_utf8_lossy(&auto.stderr);
    assert!(stderr.contains("medpatch: provider: tract"), "{stderr}");
    assert!(stderr.contains("ONNX Runtime CPU execution provider is not compiled into this build"), "{stderr}");
    let edge_logits = logits(&auto);
    let x86_logits = logits(&x86(&["predict", "--provider", "tract", "--threads", "2", XRAY]));
    assert_eq!(edge_logits.len(), 14);
    let worst = edge_logits.iter().zip(&x86_logits).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    eprintln!("aarch64 (qemu) vs x86, tract, 14 image logits: max |Δ| {worst:.2e}");
    assert!(worst <= 1e-4, "aarch64 and x86 differ by {worst}");

    // Asking for a runtime the build does not have is an error that says so.
    let cpu = under_qemu(&edge, &["predict", "--provider", "cpu", XRAY]);
    let stderr = String::from_utf8_lossy(&cpu.stderr);
    assert_eq!(cpu.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not compiled into this build (the edge build: tract only)"), "{stderr}");
}

/// tract's fp16 on ARM, with its native arm64 fp16 kernels: scripts/test.sh builds the edge binary
/// for an FP16 CPU (`scripts/edge-build.sh --fp16-cpu`), because qemu-user shows the x86 host's
/// /proc/cpuinfo, where tract looks for FP16, while the CPU qemu emulates has it.
/// On a model whose logits are small (random weights: logits near 0; a 128² image, 4 patches),
/// `--precision fp16` passes the self-check's per-logit bound against tract's f32 and gives the x86
/// build's f32 logits within it. On the bundled demo model (patch logits up to ±170) fp16 moves
/// the logits near 0 by far more than the per-logit bound, but by less than twice what rounding the
/// check image to 8 bits does to them in f32: the self-check passes on that half of its bound.
#[test]
fn tract_runs_fp16_on_arm_after_the_self_check() {
    let Some(edge) = edge_binary() else { return };
    let dir = medpatch_testkit::scratch("edge-fp16");
    let model = dir.join("tiny-random.onnx");
    let model = model.to_str().unwrap();
    // A 128² grid (4 patches) keeps the emulated runs short.
    let export =
        x86(&["export", "--random-init", "--arch", "efficientnet_v2_tiny", "--image-size", "128", "--output", model]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));

    let half = under_qemu(&edge, &["predict", "--model", model, "--provider", "tract", "--precision", "fp16", XRAY]);
    let stderr = String::from_utf8_lossy(&half.stderr);
    assert!(half.status.success(), "{stderr}\n(was MEDPATCH_EDGE_BIN built by scripts/edge-build.sh --fp16-cpu?)");
    assert!(stderr.contains("precision fp16"), "{stderr}");
    assert!(stderr.contains("fp16 self-check on 4 fixed patches against tract f32"), "{stderr}");
    assert_eq!(record(&half)["precision"], "fp16");
    let half = logits(&half);
    let exact = logits(&x86(&["predict", "--model", model, "--provider", "tract", XRAY]));
    let bound = medpatch_engine::backend::REDUCED_PRECISION_BOUND;
    let mut worst = 0f64;
    for (h, e) in half.iter().zip(&exact) {
        worst = worst.max((h - e).abs());
        assert!((h - e).abs() <= f64::from(bound.allowed(*e as f32)), "fp16 {h} vs f32 {e}");
    }
    eprintln!("aarch64 fp16 (qemu) vs x86 f32, random tiny model, 14 image logits: max |Δ| {worst:.2e}");

    let demo = under_qemu(&edge, &["predict", "--provider", "tract", "--precision", "fp16", XRAY]);
    let stderr = String::from_utf8_lossy(&demo.stderr);
    assert!(demo.status.success(), "{stderr}");
    let check = stderr.lines().find(|l| l.contains("fp16 self-check on 64 fixed patches")).expect("the check's line");
    eprintln!("the demo model on aarch64 fp16 (qemu): {check}");
    // "(N% of the bound: P% of 0.05 + 0.05·|logit| per logit, R% of 2× what rounding …)": passed on R.
    let percent = |after: &str| -> f64 {
        let rest = &check[check.find(after).expect(after) + after.len()..];
        rest[..rest.find('%').unwrap()].trim().parse().unwrap()
    };
    let (per_logit, rounding) = (percent("of the bound: "), percent("per logit, "));
    assert!(per_logit > 100.0 && rounding <= 100.0, "{check}");
    assert_eq!(record(&demo)["precision"], "fp16");
}
