//! Replays every input the fuzzers (`fuzz/`, cargo-fuzz on nightly) found a problem with, on the
//! stable toolchain: `tests/data/fuzz-regressions/<target>/<file>` goes through the same entry point
//! as fuzz target `<target>` (with the same forced magic bytes) and must return an image/value or a
//! named error — not panic, not hang (each input has [`DEADLINE`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions")
}

/// What fuzz target `target` does with `data`: Ok(()) or the error's message. Keep in step with
/// fuzz/fuzz_targets/*.rs.
fn run_target(target: &str, data: &[u8]) -> Result<(), String> {
    use medpatch_engine::decode::decode_bytes;
    let forced = |magic: &[u8], keep_from: usize| {
        let mut v = magic.to_vec();
        v.extend_from_slice(data.get(keep_from..).unwrap_or_default());
        v
    };
    match target {
        "png" => decode_bytes(&forced(b"\x89PNG\r\n\x1a\n", 8), "fuzz.png").map(drop).map_err(|e| e.to_string()),
        "jpeg" => decode_bytes(&forced(&[0xFF, 0xD8, 0xFF], 3), "fuzz.jpg").map(drop).map_err(|e| e.to_string()),
        "dicom" => {
            let mut magic = vec![0u8; 128];
            magic.extend_from_slice(b"DICM");
            decode_bytes(&forced(&magic, 132), "fuzz.dcm").map(drop).map_err(|e| e.to_string())
        }
        "decode_bytes" => decode_bytes(data, "fuzz.dcm").map(drop).map_err(|e| e.to_string()),
        "torch_weights" => medpatch_weights::load_bytes(data, "fuzz.pt").map(drop).map_err(|e| e.to_string()),
        "pickle" => medpatch_weights::pickle::parse(data).map(drop).map_err(|e| e.to_string()),
        "model" => medpatch_engine::Model::from_bytes(data.into(), medpatch_engine::ModelOrigin::Memory("fuzz".into()))
            .map(drop)
            .map_err(|e| e.to_string()),
        other => panic!("tests/data/fuzz-regressions/{other}: no such fuzz target"),
    }
}

#[test]
fn fuzz_regressions_fail_cleanly_and_quickly() {
    let dir = regressions_dir();
    let mut count = 0;
    let mut failures = Vec::new();
    for target in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let target = target.unwrap().path();
        if !target.is_dir() {
            continue;
        }
        let name = target.file_name().unwrap().to_string_lossy().to_string();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&target).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let (tx, rx) = mpsc::channel();
            let t = name.clone();
            let started = Instant::now();
            std::thread::spawn(move || {
                let _ = tx.send(std::panic::catch_unwind(|| run_target(&t, &data)));
            });
            let shown = file.strip_prefix(&dir).unwrap().display().to_string();
            match rx.recv_timeout(DEADLINE) {
                Ok(Ok(Ok(()))) => println!("{shown}: ok ({:.2?})", started.elapsed()),
                Ok(Ok(Err(msg))) if !msg.trim().is_empty() => {
                    println!("{shown}: error ({:.2?}): {msg}", started.elapsed())
                }
                Ok(Ok(Err(_))) => failures.push(format!("{shown}: an error with an empty message")),
                Ok(Err(_)) => failures.push(format!("{shown}: panicked")),
                Err(_) => failures.push(format!("{shown}: still running after {DEADLINE:?}")),
            }
            count += 1;
        }
    }
    println!("{count} regression inputs replayed");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
