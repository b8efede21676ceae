//! The command line and OpenVINO, in fresh processes (which library a process loads is
//! process-wide): how `medpatch` finds OpenVINO (the active Python environment, the variable, a
//! flag), what `auto` says when it is missing, and `--precision`. The engine-level OpenVINO tests
//! (parity with ONNX Runtime, bf16 bounds) are engine/tests/openvino.rs.

use medpatch_testkit::*;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The pip wheel's library folder in the repository's venv (`site-packages/openvino/libs`).
fn venv_openvino_libs() -> PathBuf {
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|entries| {
            entries.filter_map(|e| e.ok().map(|e| e.path().join("site-packages/openvino/libs"))).find(|p| p.is_dir())
        })
        .unwrap_or_else(|| panic!("no openvino wheel under {}: run scripts/setup.sh", lib.display()))
}

/// `medpatch` with neither ONNX Runtime nor OpenVINO findable unless the caller adds them.
fn bare_medpatch() -> Command {
    without_runtimes(env!("CARGO_BIN_EXE_medpatch"))
}

fn run(cli: &mut Command, args: &[&str]) -> (Output, String) {
    let out = cli.args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

fn provider_of(out: &Output) -> String {
    let record: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    record["provider"].as_str().unwrap().to_string()
}

const XRAY: &str = "assets/00001369_000.png";

#[test]
fn without_openvino_auto_skips_it_naming_what_to_install_and_an_explicit_request_fails() {
    let (out, stderr) = run(&mut bare_medpatch(), &["predict", XRAY]);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(provider_of(&out), "tract");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("medpatch: provider openvino skipped:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    for needed in ["OpenVINO library not found", "pip install openvino", "OPENVINO_LIB_PATH", "--openvino-lib"] {
        assert!(line.contains(needed), "'{needed}' missing from: {line}");
    }
    let (out, stderr) = run(&mut bare_medpatch(), &["predict", "--provider", "openvino", XRAY]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("provider openvino is not available: OpenVINO library not found"), "{stderr}");
    let (out, stderr) = run(
        &mut bare_medpatch(),
        &["predict", "--provider", "openvino", "--openvino-lib", "/nonexistent/libopenvino_c.so", XRAY],
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("OpenVINO library /nonexistent/libopenvino_c.so does not exist"), "{stderr}");
    // bf16 with nothing that runs it: auto ends on an error listing every provider's reason.
    let (out, stderr) = run(&mut bare_medpatch(), &["predict", "--precision", "bf16", XRAY]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("provider auto is not available") && stderr.contains("openvino: OpenVINO library not found"),
        "{stderr}"
    );
}

#[test]
fn the_active_python_environment_and_the_variable_find_openvino() {
    let venv = repo_root().join(".venv");
    let (out, stderr) = run(bare_medpatch().env("VIRTUAL_ENV", &venv), &["predict", "--provider", "openvino", XRAY]);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(provider_of(&out), "openvino");
    assert!(stderr.contains("medpatch: provider: openvino, OpenVINO CPU, precision f32"), "{stderr}");
    let record: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(record["precision"], "f32");
    // The variable may name the wheel's folder (its library has a versioned name) or the file.
    let libs = venv_openvino_libs();
    let file = std::fs::read_dir(&libs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("libopenvino_c.so"))
        .unwrap();
    for value in [libs.as_path(), file.as_path()] {
        let (out, stderr) =
            run(bare_medpatch().env("OPENVINO_LIB_PATH", value), &["predict", "--provider", "openvino", XRAY]);
        assert!(out.status.success(), "OPENVINO_LIB_PATH={}: {stderr}", value.display());
    }
    // auto with OpenVINO but no ONNX Runtime: OpenVINO, not tract.
    let (out, stderr) = run(bare_medpatch().env("VIRTUAL_ENV", &venv), &["predict", XRAY]);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(provider_of(&out), "openvino", "{stderr}");
    assert!(stderr.contains("provider cpu skipped: ONNX Runtime library not found"), "{stderr}");
}

#[test]
fn precision_on_the_command_line() {
    // An unknown precision is a usage error (exit 2) that lists the known ones.
    let (out, stderr) = run(&mut bare_medpatch(), &["predict", "--precision", "int4", XRAY]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown precision 'int4': use f32, bf16, fp16, int8"), "{stderr}");
    // The TensorRT-only flag is gone: precision is one option for every provider.
    let (out, _) = run(&mut bare_medpatch(), &["predict", "--trt-fp16", XRAY]);
    assert_eq!(out.status.code(), Some(2));
    // An explicit provider that cannot run the precision: an error naming why. ONNX Runtime's CPU
    // provider runs f32 only; tract runs fp16 only on ARM CPUs with FP16 (this test runs on x86;
    // tests/edge_build.rs runs tract's fp16 under qemu-aarch64).
    let (out, stderr) = run(&mut bare_medpatch(), &["predict", "--provider", "cpu", "--precision", "bf16", XRAY]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("provider cpu is not available: ONNX Runtime CPU execution provider runs f32 only, not bf16; bf16 needs OpenVINO CPU"),
        "{stderr}"
    );
    let (out, stderr) = run(&mut bare_medpatch(), &["predict", "--provider", "tract", "--precision", "fp16", XRAY]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("provider tract is not available: tract runs fp16 only on ARM CPUs"), "{stderr}");
    // bf16 under auto, as a user runs it: OpenVINO where the CPU has bf16, else an error naming why.
    let venv = repo_root().join(".venv");
    let ort = ort_library();
    let (out, stderr) = run(
        bare_medpatch().env("VIRTUAL_ENV", &venv),
        &["predict", "--precision", "bf16", "--ort-lib", ort.to_str().unwrap(), XRAY],
    );
    if cpu_has_bf16() {
        // The embedded demo model runs at bf16 with its stem and classifier in f32 (the default);
        // with every layer in bf16 its self-check refuses it (engine/tests/openvino.rs,
        // `OnBf16Cpu::IsRefused`), and auto says so and stops.
        assert!(out.status.success(), "{stderr}");
        assert_eq!(provider_of(&out), "openvino");
        assert!(stderr.contains("provider cpu skipped: ONNX Runtime CPU execution provider runs f32 only, not bf16"));
        assert!(stderr.contains("bf16 self-check on 64 fixed patches against openvino f32"), "{stderr}");
        assert!(stderr.contains("layers in f32: features.0, avgpool, flatten, classifier.1"), "{stderr}");
        let (out, stderr) = run(
            bare_medpatch().env("VIRTUAL_ENV", &venv),
            &["predict", "--precision", "bf16", "--keep-f32", "none", "--ort-lib", ort.to_str().unwrap(), XRAY],
        );
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("cpu: ONNX Runtime CPU execution provider runs f32 only, not bf16"), "{stderr}");
        assert!(stderr.contains("openvino: bf16 results are too far from f32"), "{stderr}");
        assert!(stderr.contains("Use --precision f32, or keep more layers in f32 (--keep-f32 LAYERS)"), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("cpu: ONNX Runtime CPU execution provider runs f32 only, not bf16"), "{stderr}");
        assert!(stderr.contains("openvino: ") && stderr.contains("does not report BF16 in OpenVINO's"), "{stderr}");
    }
}
