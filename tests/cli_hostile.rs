//! The command line against hostile files, paths and environments: FIFOs, devices, symbolic link
//! loops, names too long or not UTF-8, outputs that cannot be written, a closed stdout, absurd
//! export options and evaluation inputs. Each ends with a named error and a documented exit code
//! within a bounded time, nothing half-written, the other inputs still processed.

use medpatch_testkit::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run `medpatch` (tract only, like a fresh machine) and kill it if it outlives `limit`: a hang is
/// a failure of the test, not of the suite.
fn medpatch_within(args: &[&str], limit: Duration) -> Output {
    let mut child = without_runtimes(env!("CARGO_BIN_EXE_medpatch"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "medpatch {args:?} hung (killed after {limit:?}); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn medpatch(args: &[&str]) -> Output {
    medpatch_within(args, Duration::from_secs(120))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn jsonl(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const XRAY: &str = "assets/00001369_000.png";

#[test]
fn fifos_devices_and_missing_files_get_an_error_line_each_and_never_block() {
    let dir = scratch("cli-hostile-streams");
    let fifo = dir.join("waiting.png");
    mkfifo(&fifo);
    let missing = dir.join("missing.png");
    let out = medpatch(&["predict", s(&fifo), "/dev/zero", s(&missing), XRAY]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("3 of 4 inputs failed"), "{err}");
    let records = jsonl(&out);
    assert_eq!(records.len(), 4, "one line per input, errors included: {records:?}");
    let error_of = |name: &str| {
        records.iter().find(|r| r["input"].as_str().unwrap().ends_with(name)).and_then(|r| r["error"].as_str())
    };
    assert!(error_of("waiting.png").unwrap().contains("it is a FIFO (named pipe), not a regular file"));
    assert!(error_of("/dev/zero").unwrap().contains("it is a character device, not a regular file"));
    assert!(error_of("missing.png").unwrap().contains("cannot read"));
    assert!(records.iter().any(|r| r["input"] == XRAY && r["probabilities"].is_object()));

    // A FIFO or a device as the model: refused at once, not read forever.
    for model in [s(&fifo), "/dev/zero"] {
        let out = medpatch_within(&["predict", "--model", model, XRAY], Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("not a regular file"), "{}", stderr(&out));
    }
}

#[test]
fn folder_walks_survive_link_loops_and_fifos() {
    let dir = scratch("cli-hostile-walk");
    let root = dir.join("export");
    std::fs::create_dir_all(root.join("study/series")).unwrap();
    std::fs::copy(repo_root().join(XRAY), root.join("study/series/image.png")).unwrap();
    std::os::unix::fs::symlink(&root, root.join("study/series/back-to-top")).unwrap();
    mkfifo(&root.join("study/pipe.png"));
    let out = medpatch_within(&["predict", s(&root)], Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "the FIFO is a failed input: {err}");
    assert!(err.contains("back-to-top: a symbolic link back to") && err.contains("(a loop): not followed"), "{err}");
    let records = jsonl(&out);
    assert_eq!(records.len(), 2, "the image once, the FIFO's error once: {records:?}");
    assert!(records.iter().any(|r| r["probabilities"].is_object()));
    assert!(records.iter().any(|r| r["error"].as_str().is_some_and(|e| e.contains("FIFO"))));
}

#[test]
fn long_odd_and_unwritable_names_keep_every_result() {
    let dir = scratch("cli-hostile-names");
    let image = std::fs::read(repo_root().join(XRAY)).unwrap();
    // A 250-character name: its outputs' names would pass the file system's 255.
    let long = dir.join(format!("{}.png", "x".repeat(246)));
    std::fs::write(&long, &image).unwrap();
    // A carriage return and a comma in a name, for CSV.
    let odd = dir.join("odd\r,name.png");
    std::fs::write(&odd, &image).unwrap();
    let out_dir = dir.join("out");
    let out = medpatch(&["predict", "--out", s(&out_dir), "--classes", "Edema", s(&long), s(&odd)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let records = jsonl(&out);
    assert_eq!(records.len(), 2);
    let written = records[0]["outputs"]["json"].as_str().unwrap();
    let name = Path::new(written).file_name().unwrap().to_str().unwrap();
    assert!(name.len() <= 255 && name.starts_with("xxxx") && name.ends_with(".json"), "{name}");
    assert!(Path::new(written).is_file());

    // CSV: the name comes back exactly through a CSV reader.
    let out = medpatch(&["predict", "--format", "csv", s(&odd)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][0], s(&odd));
    assert_eq!(rows[0].len(), 15);

    // A name that is not UTF-8: its bytes travel in hex beside the readable name.
    use std::os::unix::ffi::OsStrExt;
    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir).unwrap();
    let raw = raw_dir.join(std::ffi::OsStr::from_bytes(b"scan-\xff\xfe.png"));
    std::fs::write(&raw, &image).unwrap();
    let out = medpatch(&["predict", s(&raw_dir)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record = jsonl(&out).into_iter().next().unwrap();
    let hex: String = raw.as_os_str().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(record["input_hex"], hex.as_str());

    // One output of the set cannot be written (a folder is in the way): the image fails, exit 1,
    // and nothing of its set is left behind.
    let blocked = dir.join("blocked");
    std::fs::create_dir_all(blocked.join("00001369_000.json")).unwrap();
    let out = medpatch(&["predict", "--out", s(&blocked), "--classes", "Edema", XRAY]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot write outputs") && err.contains("is a folder"), "{err}");
    let left: Vec<PathBuf> = std::fs::read_dir(&blocked).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left, [blocked.join("00001369_000.json")], "a partial output set was left behind");
}

#[test]
fn a_closed_stdout_is_an_error_before_any_work() {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("exec '{}' predict {XRAY} >&-", env!("CARGO_BIN_EXE_medpatch")))
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("standard output is closed or /dev/null and there is no --out DIR"));
    // With --out the per-image files keep the results: /dev/null on stdout is then a choice.
    let dir = scratch("cli-hostile-stdout");
    let out = Command::new(env!("CARGO_BIN_EXE_medpatch"))
        .args(["predict", "--out", s(&dir), XRAY])
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("00001369_000.json").is_file());
}

#[test]
fn export_refuses_absurd_options_and_never_replaces_links_fifos_or_devices() {
    let dir = scratch("cli-hostile-export");
    let random = ["export", "--random-init", "--arch", "efficientnet_v2_tiny"];
    let export = |extra: &[&str]| medpatch_within(&[&random[..], extra].concat(), Duration::from_secs(60));
    let model = dir.join("m.onnx");
    for (extra, expected) in [
        (vec!["--num-classes", "100000000"], "100000000 classes: a model has 1 to 128 outputs"),
        (vec!["--image-size", "16384"], "image size 16384 is over the limit of 1024"),
        (vec!["--patch-size", "4"], "128 patches per side is over the limit of 64"),
        (vec!["--num-classes", "2", "--classes", "Edema,Edema"], "classes 0 and 1 are both named \"Edema\""),
        (vec!["--num-classes", "2", "--classes", "Pleural Effusion,pleural effusion"], "differ in more than case"),
    ] {
        let out = export(&[&extra[..], &["-o", s(&model)]].concat());
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{extra:?}: {}", stderr(&out));
        assert!(!model.exists());
    }
    // -o onto a symbolic link, a FIFO, a device: refused, left as they were.
    let target = dir.join("keep.onnx");
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.join("link.onnx");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.join("fifo.onnx");
    mkfifo(&fifo);
    for (output, kind) in [(s(&link), "a symbolic link"), (s(&fifo), "a FIFO"), ("/dev/full", "a character device")] {
        let out = export(&["-o", output]);
        assert_eq!(out.status.code(), Some(1), "{output}: {}", stderr(&out));
        assert!(stderr(&out).contains(&format!("is {kind}")), "{output}: {}", stderr(&out));
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert!(Path::new("/dev/full").metadata().is_ok_and(|m| !m.is_file()));
}

#[test]
fn evaluate_refuses_empty_repeated_and_impossible_inputs() {
    let dir = scratch("cli-hostile-evaluate");
    let header = format!("Path,Sex,Age,Frontal/Lateral,AP/PA,{}", medpatch_models::CHEXPERT_CLASSES.join(","));
    let row = format!("{},F,50,Frontal,AP{}", XRAY, ",0.0".repeat(14));
    let csv = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let evaluate = |csv: &Path, extra: &[&str]| {
        let out_dir = dir.join(format!("out-{}", csv.file_stem().unwrap().to_string_lossy()));
        let root = repo_root();
        medpatch(
            &[&["evaluate", "--csv", s(csv), "--data-root", s(&root), "--out", s(&out_dir), "--bootstrap", "0"], extra]
                .concat(),
        )
    };
    let empty = csv("empty.csv", format!("{header}\n"));
    let out = evaluate(&empty, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no rows"), "{}", stderr(&out));
    let twice = csv("twice.csv", format!("{header}\n{row}\n{row}\n"));
    let out = evaluate(&twice, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("rows 2 and 3 are both for"), "{}", stderr(&out));

    // Predictions with a probability outside [0, 1], and predictions that are a FIFO.
    let one = csv("one.csv", format!("{header}\n{row}\n"));
    let predictions = dir.join("predictions.jsonl");
    let mut record = serde_json::json!({ "input": XRAY, "model": "m", "probabilities": {}, "logits": {} });
    for c in medpatch_models::CHEXPERT_CLASSES {
        record["probabilities"][c] = 0.5.into();
        record["logits"][c] = 0.0.into();
    }
    record["probabilities"]["Edema"] = 1.5.into();
    std::fs::write(&predictions, format!("{record}\n")).unwrap();
    let out = evaluate(&one, &["--predictions", s(&predictions)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("'Edema' the probability 1.5, outside [0, 1]"), "{}", stderr(&out));
    let fifo = dir.join("predictions-fifo.jsonl");
    mkfifo(&fifo);
    let out = evaluate(&one, &["--predictions", s(&fifo)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("FIFO"), "{}", stderr(&out));

    // A ground-truth mask claiming 10^12 pixels, and run lengths that overflow: named, not allocated.
    let id = eval_id(XRAY);
    let gt = dir.join("gt.json");
    std::fs::write(
        &gt,
        serde_json::json!({ id: {
            "Cardiomegaly": {"size": [1_000_000, 1_000_000], "counts": [0, 1]},
            "Edema": {"size": [2, 2], "counts": [u64::MAX, u64::MAX, 4]},
        }})
        .to_string(),
    )
    .unwrap();
    let out = evaluate(&one, &["--gt", s(&gt)]);
    let err = stderr(&out);
    assert!(!err.contains("panicked") && out.status.code().is_some(), "{err}");
    let report_dir = dir.join("out-one");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    let reasons = report["skipped"].to_string();
    assert!(reasons.contains("over the limit of 268435456 pixels"), "{reasons}");
    assert!(reasons.contains("cover more than 2^64 pixels"), "{reasons}");
}

/// CheXlocalize's id of a CSV path (the last three components joined by `_`).
fn eval_id(path: &str) -> String {
    medpatch_eval::labels::chexlocalize_id(path)
}
