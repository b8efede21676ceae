//! `medpatch-eval` against independent Python references (tests/python/eval_reference.py):
//! scikit-learn's AUROC / ROC curve / Youden / confusion metrics on tied and untied scores, a numpy
//! transcription of the bootstrap on the same resample indices, and torch's bilinear resize.

use medpatch_eval::bootstrap::{self, BootstrapOptions, ClassInput, METRICS};
use medpatch_eval::geometry::resize_bilinear;
use medpatch_eval::metrics::{Confusion, ThresholdRule, auroc, roc_curve, youden};
use medpatch_models::Rng;
use serde_json::{Value, json};

/// Scores with many ties (rounded to 2 decimals) and without, labels correlated with them.
fn classes(n: usize, seed: u64) -> Vec<(String, Vec<f32>, Vec<bool>)> {
    let mut rng = Rng::new(seed);
    (0..6)
        .map(|c| {
            let prevalence = [0.05, 0.2, 0.5, 0.3, 0.1, 0.4][c];
            let labels: Vec<bool> = (0..n).map(|_| rng.bool(prevalence)).collect();
            let scores = labels
                .iter()
                .map(|&l| {
                    let s = (rng.normal() * 0.2 + if l { 0.6 } else { 0.4 }).clamp(0.0, 1.0) as f32;
                    if c % 2 == 0 { (s * 100.0).round() / 100.0 } else { s }
                })
                .collect();
            (format!("class{c}"), scores, labels)
        })
        .collect()
}

#[test]
fn classification_metrics_equal_scikit_learn() {
    let dir = medpatch_testkit::scratch("eval-parity-classification");
    let data = classes(500, 11);
    // cases.csv as `medpatch evaluate` writes it, and thresholds for half the classes.
    let mut text = String::from("id,path");
    for (name, ..) in &data {
        text.push_str(&format!(",score:{name},label:{name}"));
    }
    text.push('\n');
    for i in 0..500 {
        text.push_str(&format!("case{i},p{i}"));
        for (_, s, l) in &data {
            text.push_str(&format!(",{},{}", s[i], l[i] as u8));
        }
        text.push('\n');
    }
    std::fs::write(dir.join("cases.csv"), text).unwrap();
    let thresholds: serde_json::Map<String, Value> =
        data.iter().step_by(2).map(|(name, s, _)| (name.clone(), json!(s[7] as f64))).collect();
    std::fs::write(dir.join("thresholds.json"), json!({ "classification": thresholds }).to_string()).unwrap();
    for rule in ["ge", "gt"] {
        let out = dir.join(format!("sklearn-{rule}.json"));
        medpatch_testkit::run_python(
            "eval_reference.py",
            &[
                "classification",
                "--cases",
                dir.join("cases.csv").to_str().unwrap(),
                "--thresholds",
                dir.join("thresholds.json").to_str().unwrap(),
                "--rule",
                rule,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        let reference: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        let rule = if rule == "ge" { ThresholdRule::Ge } else { ThresholdRule::Gt };
        let mut worst = 0f64;
        for (name, s, l) in &data {
            let r = &reference[name];
            let a = auroc(s, l).unwrap();
            worst = worst.max((a - r["auroc"].as_f64().unwrap()).abs());
            let (t, _) = youden(&roc_curve(s, l).unwrap());
            assert_eq!(t, r["youden_threshold"].as_f64().unwrap(), "{name}: Youden threshold");
            if let Some(t) = thresholds.get(name) {
                let c = Confusion::at(s, l, t.as_f64().unwrap(), rule);
                assert_eq!(c.accuracy(), r["accuracy"].as_f64(), "{name}");
                assert_eq!(c.sensitivity(), r["sensitivity"].as_f64(), "{name}");
                assert_eq!(c.specificity(), r["specificity"].as_f64(), "{name}");
            }
        }
        println!("AUROC vs scikit-learn roc_auc_score, 6 classes × 500 cases ({rule:?}): max |Δ| {worst:.1e}");
        assert!(worst <= 1e-9, "AUROC differs from scikit-learn by {worst}");
    }
}

#[test]
fn bootstrap_equals_a_numpy_transcription_on_the_same_indices() {
    let dir = medpatch_testkit::scratch("eval-parity-bootstrap");
    let data = classes(80, 5);
    let options = BootstrapOptions { resamples: 400, seed: 17, rule: ThresholdRule::Ge };
    let inputs: Vec<ClassInput> =
        data.iter().map(|(_, s, l)| ClassInput { scores: s, labels: l, threshold: Some(s[3] as f64) }).collect();
    let distribution = bootstrap::bootstrap(&inputs, &[], &options);
    let intervals = distribution.intervals();
    let indices: Vec<Vec<usize>> =
        (0..options.resamples).map(|r| bootstrap::resample_indices(options.seed, r as u64, 80)).collect();
    let spec = json!({
        "rule": "ge",
        "indices": indices,
        "classes": data.iter().zip(&inputs).map(|((_, s, l), i)| json!({
            "scores": s, "labels": l.iter().map(|&b| b as u8).collect::<Vec<_>>(), "threshold": i.threshold,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("bootstrap.json"), spec.to_string()).unwrap();
    let out = dir.join("numpy.json");
    medpatch_testkit::run_python(
        "eval_reference.py",
        &["bootstrap", "--data", dir.join("bootstrap.json").to_str().unwrap(), "--out", out.to_str().unwrap()],
    );
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let mut worst = 0f64;
    for c in 0..data.len() {
        for (m, metric) in METRICS.iter().enumerate() {
            let slot = c * METRICS.len() + m;
            let ours: Vec<f64> = distribution.values_of(slot).collect();
            let theirs = reference["values"][c][m].as_array().unwrap();
            for (r, (a, b)) in ours.iter().zip(theirs).enumerate() {
                match b.as_f64() {
                    Some(b) if !b.is_nan() => worst = worst.max((a - b).abs()),
                    _ => assert!(a.is_nan(), "class {c} {metric} resample {r}: {a} vs undefined"),
                }
            }
            let (mine, theirs) = (intervals[slot], &reference["intervals"][c][m]);
            match mine {
                None => assert!(theirs.is_null()),
                Some(i) => {
                    for (key, value) in [("low", i.low), ("high", i.high), ("median", i.median), ("mean", i.mean)] {
                        let t = theirs[key].as_f64().unwrap();
                        assert!((value - t).abs() <= 1e-12, "class {c} {metric} {key}: {value} vs {t}");
                    }
                    assert_eq!(i.defined as u64, theirs["defined"].as_u64().unwrap());
                }
            }
        }
    }
    println!("bootstrap vs numpy/scikit-learn on the same 400 resamples × 6 classes: max |Δ| {worst:.1e}");
    assert!(worst <= 1e-12);
}

#[test]
fn resize_equals_torch_bit_for_bit() {
    let dir = medpatch_testkit::scratch("eval-parity-resize");
    let mut rng = Rng::new(2);
    let cases = [(8, 8, 707, 580), (8, 8, 320, 390), (512, 512, 300, 260), (16, 16, 425, 512), (64, 64, 37, 100)];
    let maps: Vec<Vec<f32>> =
        cases.iter().map(|&(w, h, ..)| (0..w * h).map(|_| rng.normal() as f32).collect()).collect();
    let spec: Vec<Value> = cases
        .iter()
        .zip(&maps)
        .map(|(&(w, h, ow, oh), m)| json!({"map": m, "w": w, "h": h, "out_w": ow, "out_h": oh}))
        .collect();
    std::fs::write(dir.join("spec.json"), Value::Array(spec).to_string()).unwrap();
    let out = dir.join("torch.json");
    medpatch_testkit::run_python(
        "eval_reference.py",
        &["resize", "--spec", dir.join("spec.json").to_str().unwrap(), "--out", out.to_str().unwrap()],
    );
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let capability = reference["capability"].as_str().unwrap_or("?").to_string();
    for (k, (&(w, h, ow, oh), m)) in cases.iter().zip(&maps).enumerate() {
        let ours = resize_bilinear(m, w, h, ow, oh);
        let theirs: Vec<f32> =
            reference["maps"][k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!(
            "{w}×{h} → {ow}×{oh}: {differing} of {} pixels differ from torch ({capability}), max {worst:e}",
            ours.len()
        );
        // torch's AVX2/AVX-512 kernels fuse multiply-adds as we do; its portable kernel does not.
        if capability.starts_with("AVX") {
            assert_eq!(differing, 0, "{w}×{h} → {ow}×{oh}");
        } else {
            assert!(worst <= 2e-6);
        }
    }
}
