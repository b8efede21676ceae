//! `medpatch predict` as a user runs it: outputs, formats, bad inputs and exit codes.

use medpatch_testkit::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The quick start needs neither ONNX Runtime nor OpenVINO: tract runs.
fn medpatch(args: &[&str]) -> Output {
    without_runtimes(env!("CARGO_BIN_EXE_medpatch")).args(args).output().unwrap()
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
    assert!(stderr.contains("provider openvino skipped: OpenVINO library not found"), "{stderr}");
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
    if skip_without_shared() {
        return;
    }
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
    assert!(stderr.contains("expected [N, 1, 32, 32]"), "{stderr}");

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

#[test]
fn lone_bad_inputs_empty_folders_and_all_failed_batches_exit_1_without_a_panic() {
    if skip_without_shared() {
        return;
    }
    let dir = scratch("cli-lone-bad");
    let notes = dir.join("notes.png");
    std::fs::write(&notes, "not an image").unwrap();
    let garbage = dir.join("garbage.dcm");
    std::fs::write(&garbage, [0x08u8, 0x00, 0x10, 0x00, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
    let empty_dir = dir.join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let good = cxr_dir().join("pediatric/NORMAL2-IM-1427-0001.jpeg");

    let check_failed = |out: &Output, expected_records: usize, failed: usize, total: usize| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(&format!("{failed} of {total} inputs failed")), "{stderr}");
        assert_eq!(jsonl(out).len(), expected_records, "{stderr}");
    };
    // A lone corrupt file: a named error and exit 1 (this used to panic in Engine::run_patches).
    let out = medpatch(&["predict", notes.to_str().unwrap()]);
    check_failed(&out, 1, 1, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("notes.png: unrecognised file format"));
    // A batch of only corrupt files.
    let out = medpatch(&["predict", notes.to_str().unwrap(), garbage.to_str().unwrap()]);
    check_failed(&out, 2, 2, 2);
    // An empty folder: nothing to do is not a success (and the JSON says so too).
    let out = medpatch(&["predict", empty_dir.to_str().unwrap()]);
    check_failed(&out, 1, 1, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no images in this folder"));
    // One image per batch with a bad file in the middle: results in input order.
    let (g, n) = (good.to_str().unwrap(), notes.to_str().unwrap());
    let out = medpatch(&["predict", "--images-per-batch", "1", g, n, g]);
    check_failed(&out, 3, 1, 3);
    let records = jsonl(&out);
    assert!(records[0].get("error").is_none() && records[2].get("error").is_none());
    assert_eq!(records[1]["input"], n);
    assert_eq!(records[0]["probabilities"], records[2]["probabilities"]);
}

#[test]
fn a_closed_stdout_ends_quietly() {
    if skip_without_shared() {
        return;
    }
    use std::io::BufRead;
    // `medpatch predict dir | head -1`: the reader goes away after one line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_medpatch"))
        .args(["predict", "--images-per-batch", "1", "--provider", "tract"])
        .arg(cxr_dir().join("nih/images"))
        .current_dir(repo_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("probabilities"), "{first}");
    // The reader (and with it the pipe's read end) is dropped here; 31 images are still to come.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
}
