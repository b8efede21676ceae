//! `medpatch export` on the command line: errors name the file and the problem, exit codes as
//! the README says, nothing half-written. (The exporter's own error reports:
//! exporter/tests/errors.rs.)

use medpatch_testkit::scratch;
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
