//! `medpatch export` on the command line: errors name the file and the problem, exit codes as
//! the README says, nothing half-written. (The exporter's own error reports:
//! exporter/tests/errors.rs.)

use medpatch_testkit::{read_npy, repo_root, scratch};
use std::process::Command;

#[test]
fn cli_reports_errors_with_exit_codes() {
    let dir = scratch("exporter-errors-cli");
    let medpatch = env!("CARGO_BIN_EXE_medpatch");
    let out = dir.join("m.onnx");
    let garbage = dir.join("garbage.pt");
    std::fs::write(&garbage, b"nope").unwrap();
    let run = Command::new(medpatch).args(["export", "--weights"]).arg(&garbage).arg("-o").arg(&out).output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("garbage.pt") && stderr.contains("not a PyTorch checkpoint"), "{stderr}");
    assert!(!out.exists());

    let run = Command::new(medpatch)
        .args(["export", "--arch", "resnet50", "--random-init", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("unknown architecture 'resnet50'"));

    let run = Command::new(medpatch).args(["export", "-o"]).arg(&out).output().unwrap();
    assert_eq!(run.status.code(), Some(2), "no weights and no --random-init is a usage error");

    let run = Command::new(medpatch)
        .args(["export", "--random-init", "--seed", "5", "--arch", "efficientnet_v2_tiny", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(out.exists());
}

/// `export --calibrate-overlay` stores a range computed from the model's own patch logits,
/// leaves no scratch file, and `predict` draws overlays with it unless `--overlay-range` says
/// otherwise.
#[test]
fn overlay_range_is_calibrated_stored_and_used() {
    let dir = scratch("export-overlay-range");
    let medpatch = env!("CARGO_BIN_EXE_medpatch");
    let bundled = repo_root().join("assets/00001369_000.png");
    let model = dir.join("m.onnx");
    let run = Command::new(medpatch)
        .args(["export", "--random-init", "--seed", "3", "--arch", "efficientnet_v2_tiny", "--calibrate-overlay"])
        .arg(&bundled)
        .arg("-o")
        .arg(&model)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("overlay range calibrated on 1 images (896 patch logits"), "{stderr}");
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["m.onnx".to_string()], "the calibration's scratch model is removed");
    let stored = medpatch_engine::Model::from_path(&model).unwrap().metadata.overlay_logit_range.unwrap();

    // The same model's patch logits on the same image, through `predict --out`.
    let predict = |out: &str, extra: &[&str]| {
        let run = Command::new(medpatch)
            .args(["predict", "--provider", "tract", "--classes", "Cardiomegaly", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(dir.join(out))
            .args(extra)
            .arg(&bundled)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        std::fs::read(dir.join(out).join("00001369_000.cardiomegaly.png")).unwrap()
    };
    let default_overlay = predict("default", &[]);
    let (_, logits) = read_npy(&dir.join("default/00001369_000.patch_logits.npy"));
    let mut magnitudes: Vec<f32> = logits.iter().map(|z| z.abs()).collect();
    magnitudes.sort_by(f32::total_cmp);
    let p99 = magnitudes[(0.99 * (magnitudes.len() - 1) as f64).round() as usize];
    assert!(stored >= p99 && stored <= p99 * 1.1, "stored {stored}, 99th percentile of |logit| {p99}");

    let same = predict("explicit", &["--overlay-range", &stored.to_string()]);
    let paper = predict("paper", &["--overlay-range", "80"]);
    assert_eq!(default_overlay, same, "predict uses the model's stored range by default");
    assert_ne!(default_overlay, paper, "--overlay-range overrides it");

    let run = Command::new(medpatch).args(["predict", "--overlay-range", "0"]).arg(&bundled).output().unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("(0, 200]"));
    let missing = dir.join("no-such-validation-folder");
    let other = dir.join("other.onnx");
    let run = Command::new(medpatch)
        .args(["export", "--random-init", "--arch", "efficientnet_v2_tiny", "--calibrate-overlay"])
        .arg(&missing)
        .arg("-o")
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("no-such-validation-folder"));
    assert!(!other.exists());
}
