//! `medpatch predict` as a user runs it: outputs, formats, bad inputs and exit codes.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn medpatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_medpatch"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("ORT_DYLIB_PATH") // the quick start needs no ONNX Runtime: tract runs
        .output()
        .unwrap()
}

fn jsonl(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn quick_start_runs_on_the_bundled_xray_with_the_embedded_model() {
    let out = medpatch(&["predict", "assets/00001369_000.png"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("provider cpu skipped: ONNX Runtime library not found"),
        "auto must say why it fell back:\n{stderr}"
    );
    assert!(stderr.contains("NOT a diagnostic model"), "{stderr}");
    let records = jsonl(&out);
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r["provider"], "tract");
    assert_eq!(r["model"], "embedded default model");
    let probabilities = r["probabilities"].as_object().unwrap();
    let classes: Vec<&String> = probabilities.keys().collect();
    assert_eq!(classes.len(), 14);
    assert_eq!((classes[0].as_str(), classes[13].as_str()), ("No Finding", "Support Devices"), "model order is kept");
    for (class, p) in probabilities {
        let z = r["logits"][class].as_f64().unwrap();
        assert!((p.as_f64().unwrap() - 1.0 / (1.0 + (-z).exp())).abs() < 1e-5);
    }
}

#[test]
fn bad_inputs_are_reported_and_the_rest_still_processed() {
    let dir = scratch("cli-bad-inputs");
    let good = cxr_dir().join("pediatric/NORMAL2-IM-1427-0001.jpeg");
    let png = std::fs::read(nih_images()[0].clone()).unwrap();
    let truncated = dir.join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 3]).unwrap();
    let text = dir.join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let empty = dir.join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.join("missing.png");
    let out_dir = dir.join("out");
    let args: Vec<String> =
        [good.as_path(), &truncated, &text, &empty, &missing].iter().map(|p| p.display().to_string()).collect();
    let mut cli = vec!["predict", "--out", out_dir.to_str().unwrap(), "--classes", "all"];
    cli.extend(args.iter().map(String::as_str));
    let out = medpatch(&cli);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "some inputs failed:\n{stderr}");
    for name in ["truncated.png", "notes.png", "empty.jpg", "missing.png"] {
        assert!(
            stderr.lines().any(|l| l.starts_with("medpatch: error:") && l.contains(name)),
            "{name} not reported:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 of 5 inputs failed"), "{stderr}");
    let records = jsonl(&out);
    let ok: Vec<&Value> = records.iter().filter(|r| r.get("error").is_none()).collect();
    assert_eq!(ok.len(), 1, "the good image is still processed");
    // Outputs of the good image, written whole: JSON, maps, overlays for all 14 classes.
    let written = ok[0]["outputs"].as_object().unwrap();
    assert_eq!(written.keys().filter(|k| k.starts_with("overlay:")).count(), 14);
    for path in written.values() {
        let path = PathBuf::from(path.as_str().unwrap());
        assert!(std::fs::metadata(&path).unwrap().len() > 0, "{}", path.display());
    }
    let leftovers: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(!out_dir.join("truncated.json").exists() && !out_dir.join("notes.json").exists());
    let saved: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("NORMAL2-IM-1427-0001.json")).unwrap()).unwrap();
    assert_eq!(saved["probabilities"], ok[0]["probabilities"]);
    let (shape, patch_logits) = read_npy(Path::new(written["patch_logits"].as_str().unwrap()));
    assert_eq!(shape, vec![8, 8, 14]);
    // Completeness on what the user gets: the saved patch logits average to the reported logits.
    for (c, class) in saved["logits"].as_object().unwrap().keys().enumerate() {
        let mean = (0..64).map(|i| patch_logits[i * 14 + c] as f64).sum::<f64>() / 64.0;
        assert!((mean - saved["logits"][class].as_f64().unwrap()).abs() < 1e-5);
    }
}

#[test]
fn folders_csv_and_usage_errors() {
    let out = medpatch(&["predict", "--format", "csv", "../shared/data/cxr/pediatric"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("filename,No Finding,Enlarged Cardiomediastinum"));
    assert_eq!(lines.len(), 1 + 8, "a header and the 8 pediatric JPEGs:\n{csv}");
    assert!(lines[1..].iter().all(|l| l.split(',').count() == 15));

    for bad in [
        vec!["predict", "--shift-steps", "3", "assets/00001369_000.png"],
        vec!["predict", "--classes", "Fractures", "assets/00001369_000.png"],
        vec!["predict", "--provider", "gpu", "assets/00001369_000.png"],
        vec!["predict"],
    ] {
        let out = medpatch(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?} is a usage error: {}", String::from_utf8_lossy(&out.stderr));
    }
    // An explicitly requested provider that cannot run is an error, not a silent fallback.
    let out = medpatch(&["predict", "--provider", "cuda", "assets/00001369_000.png"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("provider cuda is not available"));
}

#[test]
fn models_without_metadata_or_with_the_wrong_input_are_refused() {
    use prost::Message;
    use tract_onnx::pb::ModelProto;
    let dir = scratch("cli-bad-models");
    let good = dir.join("good.onnx");
    let status = Command::new(env!("CARGO_BIN_EXE_medpatch"))
        .args(["export", "--random-init", "--arch", "efficientnet_v2_tiny", "-o"])
        .arg(&good)
        .status()
        .unwrap();
    assert!(status.success());
    let model = ModelProto::decode(&*std::fs::read(&good).unwrap()).unwrap();

    let mut bare = model.clone();
    bare.metadata_props.clear();
    let bare_path = dir.join("bare.onnx");
    std::fs::write(&bare_path, bare.encode_to_vec()).unwrap();
    let out = medpatch(&["predict", "--model", bare_path.to_str().unwrap(), "assets/00001369_000.png"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("bare.onnx") && stderr.contains("no medpatch metadata") && stderr.contains("medpatch export"),
        "{stderr}"
    );

    let mut wrong = model.clone();
    for p in &mut wrong.metadata_props {
        match p.key.as_str() {
            "medpatch.patch_size" => p.value = "32".into(),
            "medpatch.grid" => p.value = "16x16".into(),
            _ => {}
        }
    }
    let wrong_path = dir.join("wrong.onnx");
    std::fs::write(&wrong_path, wrong.encode_to_vec()).unwrap();
    let out = medpatch(&["predict", "--model", wrong_path.to_str().unwrap(), "assets/00001369_000.png"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("expected [N, C, 32, 32]"), "{stderr}");

    // A model whose outputs are not finite: each image fails with a clear error, exit 1.
    let mut broken = model.clone();
    let graph = broken.graph.as_mut().unwrap();
    let bias = graph.initializer.iter_mut().find(|t| t.name == "classifier.1.bias").unwrap();
    bias.raw_data = f32::NAN.to_le_bytes().repeat(14);
    let broken_path = dir.join("nan.onnx");
    std::fs::write(&broken_path, broken.encode_to_vec()).unwrap();
    let out = medpatch(&["predict", "--model", broken_path.to_str().unwrap(), "assets/00001369_000.png"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("00001369_000.png") && stderr.contains("non-finite logit"), "{stderr}");

    let out = medpatch(&["predict", "--model", "assets/00001369_000.png", "assets/00001369_000.png"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an ONNX model"));
}
