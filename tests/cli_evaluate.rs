//! `medpatch evaluate` end to end on a small synthetic benchmark (generated here by
//! `medpatch-synth`, the same generator as `medpatch-train synth`) with the embedded default model:
//! validation run → thresholds → test run, compared with scikit-learn and with a CheXlocalize
//! transcription (pycocotools, torch) on the very scores and maps the run scored; the same numbers
//! from `medpatch predict` output and from `.npy` maps; bad inputs named in the report.

use medpatch_synth::{SynthConfig, write_benchmark};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn medpatch(args: &[&str]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_medpatch"));
    command.args(args);
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        command.env("ORT_DYLIB_PATH", medpatch_testkit::ort_library());
    }
    let out = command.output().expect("cannot run medpatch");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Benchmark {
    dir: PathBuf,
    root: PathBuf,
}

fn benchmark(name: &str) -> Benchmark {
    let dir = medpatch_testkit::scratch(name);
    let root = dir.join("data");
    // Non-square images (heights 1.0–1.25× the width), so the crop box matters; findings common.
    let config =
        SynthConfig { seed: 5, train: 0, valid: 10, test: 14, width: 192, prevalence: 0.45, ..Default::default() };
    write_benchmark(&config, &root, 2, &|_, _| {}).unwrap();
    Benchmark { dir, root }
}

fn evaluate(b: &Benchmark, split: &str, out: &str, extra: &[&str]) -> (i32, String) {
    let (csv, gt) = if split == "valid" {
        ("valid.csv", "gt_segmentations_val.json")
    } else {
        ("test_labels.csv", "gt_segmentations_test.json")
    };
    let out = b.dir.join(out);
    let mut args: Vec<String> = vec![
        "evaluate".into(),
        "--csv".into(),
        s(&b.root.join(csv)).to_string(),
        "--gt".into(),
        s(&b.root.join(gt)).to_string(),
        "--out".into(),
        s(&out).to_string(),
        "--quiet".into(),
    ];
    if !extra.contains(&"--bootstrap") {
        args.extend(["--bootstrap".to_string(), "2000".to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    medpatch(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The localisation numbers of a report against the CheXlocalize transcription.
fn compare_localization(report: &Value, reference: &Value, thresholds_checked: bool) -> (f64, usize) {
    let tasks = report["localization"]["tasks"].as_array().unwrap();
    assert!(!tasks.is_empty());
    let mut worst = 0f64;
    let mut maps = 0;
    for t in tasks {
        let name = t["task"].as_str().unwrap();
        let r = &reference["tasks"][name];
        assert_eq!(t["maps"], r["maps"], "{name}: maps scored");
        maps += t["maps"].as_u64().unwrap() as usize;
        assert_eq!(t["hit_cases"], r["hit_cases"], "{name}: images counted for the hit rate");
        assert_eq!(t["hit_rate"].as_f64(), r["hit_rate"].as_f64(), "{name}: hit rate");
        // CheXlocalize's own 1,000-replicate summary (numpy seed 0), rounded to 3 decimals.
        assert_eq!(t["hit_rate_chexlocalize"], r["hit_rate_chexlocalize"], "{name}: CheXlocalize hit-rate summary");
        for key in ["tp_fp_fn", "tp_only"] {
            assert_eq!(
                t["tuned"][key]["threshold"].as_f64(),
                r["tuned"][key].as_f64(),
                "{name} {key}: tuned threshold"
            );
            if thresholds_checked {
                let (a, b) = (&t["miou"][key], &r["miou"][key]);
                assert_eq!(a["cases"], b["cases"], "{name} {key}: IoU cases");
                assert_eq!(a["threshold"].as_f64(), b["threshold"].as_f64());
                assert_eq!(a["chexlocalize"], b["chexlocalize"], "{name} {key}: CheXlocalize mIoU summary");
                match (a["miou"].as_f64(), b["miou"].as_f64()) {
                    (Some(x), Some(y)) => worst = worst.max((x - y).abs()),
                    (x, y) => assert_eq!(x, y, "{name} {key}: mIoU defined"),
                }
            }
        }
    }
    (worst, maps)
}

fn chexlocalize(b: &Benchmark, gt: &str, maps: &Path, geometry: &str, thresholds: Option<&Path>, out: &str) -> Value {
    let out = b.dir.join(out);
    let gt = b.root.join(gt);
    let mut args = vec!["chexlocalize", "--gt", s(&gt), "--maps", s(maps), "--geometry", geometry, "--out", s(&out)];
    if let Some(t) = thresholds {
        args.extend(["--thresholds", s(t)]);
    }
    medpatch_testkit::run_python("eval_reference.py", &args);
    json(&out)
}

#[test]
fn evaluate_matches_scikit_learn_and_chexlocalize() {
    let b = benchmark("cli-evaluate");
    let val_dir = b.dir.join("val");
    let (code, text) = evaluate(&b, "valid", "val", &["--save-maps", s(&val_dir.join("maps"))]);
    assert_eq!(code, 0, "{text}");
    let thresholds = val_dir.join("thresholds.json");
    let test_dir = b.dir.join("test");
    let (code, text) = evaluate(
        &b,
        "test",
        "test",
        &["--thresholds-from", s(&thresholds), "--save-maps", s(&test_dir.join("maps")), "--sheets", "1"],
    );
    assert_eq!(code, 0, "{text}");
    let report = json(&test_dir.join("report.json"));
    for file in ["report.md", "metrics.csv", "cases.csv", "thresholds.json", "localization_cases.csv"] {
        assert!(test_dir.join(file).is_file(), "{file} missing");
    }
    let md = std::fs::read_to_string(test_dir.join("report.md")).unwrap();
    assert!(md.contains("## Table 1") && md.contains("## Table 2") && md.contains("## Table 3"), "{md}");
    assert!(std::fs::read_dir(test_dir.join("roc")).unwrap().count() >= 10);
    assert!(test_dir.join("sheets").is_dir());

    // Table 1 against scikit-learn on the scores the run wrote.
    let out = b.dir.join("sklearn.json");
    medpatch_testkit::run_python(
        "eval_reference.py",
        &[
            "classification",
            "--cases",
            s(&test_dir.join("cases.csv")),
            "--thresholds",
            s(&thresholds),
            "--out",
            s(&out),
        ],
    );
    let sklearn = json(&out);
    let mut worst = 0f64;
    let classes = report["classification"]["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 14);
    for c in classes {
        let name = c["class"].as_str().unwrap();
        let r = &sklearn[name];
        assert_eq!(c["positives"], r["positives"], "{name}");
        match (c["auroc"].as_f64(), r["auroc"].as_f64()) {
            (Some(a), Some(b)) => worst = worst.max((a - b).abs()),
            (a, b) => assert_eq!(a, b, "{name}: AUROC defined"),
        }
        assert_eq!(c["youden_threshold"], r["youden_threshold"], "{name}: Youden threshold");
        for m in ["accuracy", "sensitivity", "specificity"] {
            assert_eq!(c[m].as_f64(), r[m].as_f64(), "{name}: {m}");
        }
    }
    println!("Table 1 vs scikit-learn, 14 classes × 14 cases: max |Δ AUROC| {worst:.1e}");
    assert!(worst <= 1e-9);
    // The validation run's Youden thresholds are scikit-learn's on the validation scores.
    let out = b.dir.join("sklearn-val.json");
    medpatch_testkit::run_python(
        "eval_reference.py",
        &["classification", "--cases", s(&val_dir.join("cases.csv")), "--out", s(&out)],
    );
    let sklearn_val = json(&out);
    let chosen = json(&thresholds);
    for (class, t) in chosen["classification"].as_object().unwrap() {
        assert_eq!(t, &sklearn_val[class]["youden_threshold"], "{class}: validation Youden threshold");
    }

    // Tables 2–3 against the CheXlocalize transcription on the same maps.
    let reference =
        chexlocalize(&b, "gt_segmentations_val.json", &val_dir.join("maps"), "crop", None, "chexlocalize-val.json");
    let (_, val_maps) = compare_localization(&json(&val_dir.join("report.json")), &reference, false);
    for (slice, tasks) in chosen["localization"].as_object().unwrap() {
        for (task, t) in tasks.as_object().unwrap() {
            assert_eq!(t.as_f64(), reference["tasks"][task]["tuned"][slice].as_f64(), "{task} {slice}");
        }
    }
    let reference = chexlocalize(
        &b,
        "gt_segmentations_test.json",
        &test_dir.join("maps"),
        "crop",
        Some(&thresholds),
        "chexlocalize-test.json",
    );
    let (worst, test_maps) = compare_localization(&report, &reference, true);
    println!(
        "Tables 2–3 vs the CheXlocalize transcription ({val_maps} validation + {test_maps} test maps, crop geometry): \
         hit rates, counts and tuned thresholds equal; max |Δ mIoU| {worst:.1e}"
    );
    assert!(worst <= 1e-12);
    // Per case: the same first-maximum pixel.
    let cases = std::fs::read_to_string(test_dir.join("localization_cases.csv")).unwrap();
    for line in cases.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let r = &reference["tasks"][f[0]]["per_case"][f[1]];
        assert_eq!(
            r["argmax"],
            serde_json::json!([f[3].parse::<u64>().unwrap(), f[4].parse::<u64>().unwrap()]),
            "{line}"
        );
    }

    // The same maps as .npy files, stretched over the whole image (the seed's published geometry).
    let (code, text) = evaluate(
        &b,
        "test",
        "test-stretch",
        &[
            "--thresholds-from",
            s(&thresholds),
            "--maps-dir",
            s(&test_dir.join("maps")),
            "--geometry",
            "stretch",
            "--bootstrap",
            "0",
        ],
    );
    assert_eq!(code, 0, "{text}");
    let stretched = json(&b.dir.join("test-stretch/report.json"));
    let reference = chexlocalize(
        &b,
        "gt_segmentations_test.json",
        &test_dir.join("maps"),
        "stretch",
        Some(&thresholds),
        "chexlocalize-stretch.json",
    );
    let (worst, _) = compare_localization(&stretched, &reference, true);
    println!("stretch geometry from .npy maps vs the transcription: max |Δ mIoU| {worst:.1e}");
    assert!(worst <= 1e-12);
}

#[test]
fn predictions_from_medpatch_predict_give_the_same_numbers() {
    let b = benchmark("cli-evaluate-predictions");
    let (code, text) = evaluate(&b, "test", "direct", &["--bootstrap", "500"]);
    assert_eq!(code, 0, "{text}");
    let images = b.root.join("CheXpert-synthetic/test");
    let (code, jsonl) = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_medpatch"));
        command.args(["predict", s(&images), "--out", s(&b.dir.join("predictions")), "--quiet"]);
        if std::env::var_os("ORT_DYLIB_PATH").is_none() {
            command.env("ORT_DYLIB_PATH", medpatch_testkit::ort_library());
        }
        let out = command.output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(code, 0);
    std::fs::write(b.dir.join("predictions.jsonl"), jsonl).unwrap();
    let (code, text) = evaluate(
        &b,
        "test",
        "from-jsonl",
        &["--bootstrap", "500", "--predictions", s(&b.dir.join("predictions.jsonl"))],
    );
    assert_eq!(code, 0, "{text}");
    let (direct, replay) = (json(&b.dir.join("direct/report.json")), json(&b.dir.join("from-jsonl/report.json")));
    assert_eq!(direct["classification"]["classes"], replay["classification"]["classes"]);
    assert_eq!(direct["localization"]["tasks"], replay["localization"]["tasks"]);
}

#[test]
fn bad_inputs_are_named_and_counted() {
    let b = benchmark("cli-evaluate-bad");
    // A CSV row whose image does not exist, and a ground-truth mask of the wrong size.
    let csv = b.root.join("test_labels.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let missing = lines[1].replacen("patient", "nobody", 1);
    lines.push(missing.clone());
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let gt_path = b.root.join("gt_segmentations_test.json");
    let mut gt = json(&gt_path);
    let (first_id, first) = gt.as_object_mut().unwrap().iter_mut().next().map(|(k, v)| (k.clone(), v)).unwrap();
    first["Cardiomegaly"] = serde_json::json!({"size": [10, 10], "counts": [100]});
    std::fs::write(&gt_path, gt.to_string()).unwrap();
    let (code, text) = evaluate(&b, "test", "out", &["--bootstrap", "0"]);
    assert_eq!(code, 1, "{text}");
    let report = json(&b.dir.join("out/report.json"));
    let skipped = report["skipped"].as_array().unwrap();
    let reasons: Vec<String> =
        skipped.iter().map(|s| format!("{} | {} | {}", s["case"], s["stage"], s["reason"])).collect();
    assert!(reasons.iter().any(|r| r.contains("nobody") && r.contains("image file not found")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains(&first_id) && r.contains("Cardiomegaly") && r.contains("the mask is 10×10")),
        "{reasons:?}"
    );
    let md = std::fs::read_to_string(b.dir.join("out/report.md")).unwrap();
    assert!(md.contains("image file not found") && md.contains("the mask is 10×10"));
    // Every other case is still scored.
    assert_eq!(report["classification"]["cases"], 14);

    // A CSV that is not CheXpert-shaped: an error naming the file, exit 1, nothing written.
    let bad = b.dir.join("bad.csv");
    std::fs::write(&bad, "Path,Foo\nx.jpg,1\n").unwrap();
    let (code, text) = medpatch(&["evaluate", "--csv", s(&bad), "--out", s(&b.dir.join("never"))]);
    assert_eq!(code, 1);
    assert!(text.contains("bad.csv") && text.contains("expected a CheXpert CSV"), "{text}");
    assert!(!b.dir.join("never/report.md").exists());
    // Usage errors exit 2.
    let (code, _) = medpatch(&["evaluate", "--predictions", "x.jsonl", "--model", "m.onnx", "--csv", s(&bad)]);
    assert_eq!(code, 2);
}
