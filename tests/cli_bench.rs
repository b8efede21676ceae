//! `medpatch bench --json` on the embedded model: every row it promises, and the Python runtimes
//! agree with medpatch on the same image (an independent check of the whole pipeline but decode).

use medpatch_testkit::*;
use serde_json::Value;
use std::process::Command;

#[test]
fn bench_json_compares_medpatch_and_python_runtimes_on_the_same_image() {
    let out = Command::new(env!("CARGO_BIN_EXE_medpatch"))
        .args(["bench", "--json", "--repeats", "2", "--shift-steps", "2", "--threads", "1"])
        .args(["--providers", "cpu,tract", "--python-runtimes", "onnxruntime,openvino"])
        .args(["--ort-lib", ort_library().to_str().unwrap()])
        .args(["--image", "assets/00001369_000.png", "--image", "assets/00001369_000.png"])
        .arg("--python")
        .arg(python())
        .current_dir(repo_root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report["threads"], 1);
    assert_eq!(report["images"], 2);
    assert!(!report["cpu"].as_str().unwrap().is_empty());
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4, "{names:?}; skipped: {}", report["skipped"]);
    assert!(names[0].starts_with("medpatch cpu") && names[1].starts_with("medpatch tract"), "{names:?}");
    assert!(names[2].starts_with("onnxruntime-python") && names[3].starts_with("openvino-python"), "{names:?}");
    for row in rows {
        assert!(row["latency_median_ms"].as_f64().unwrap() > 0.0, "{row}");
        // Every runtime's image logits against medpatch's ONNX Runtime CPU row, same image.
        let diff = row["max_abs_logit_diff"].as_f64().unwrap();
        assert!(diff <= 1e-4, "{}: max |Δ logit| {diff}", row["name"]);
    }
    for row in &rows[..2] {
        let (e2e, backbone) =
            (row["throughput_images_per_s"].as_f64().unwrap(), row["backbone_images_per_s"].as_f64().unwrap());
        assert!(e2e > 0.0 && backbone > 0.0, "{row}");
    }
    for row in &rows[2..] {
        assert!(row["peak_rss_mb"].as_f64().unwrap() > 10.0, "{row}");
    }
    let split = &report["pipeline_split_ms"];
    assert_eq!(split["provider"], "cpu");
    assert!(split["backend"].as_f64().unwrap() > 0.0);
    assert_eq!(report["dense_map"]["shift_steps"], 2);
}
