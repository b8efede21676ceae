//! Seeded mutations of a real model file: every mutant is refused with a named model error, or
//! loads; a mutant that loads is then run on the bundled X-ray with tract and gives a prediction
//! or a named error. Never a panic, never a hang. (Model loading is also a cargo-fuzz target,
//! `fuzz/fuzz_targets/model.rs`; this runs on stable in every test run.)
//!
//! The source is the embedded demo model. Mutations are deterministic (a fixed seed): bit flips
//! in the first 64 KiB (the graph's nodes, shapes and attributes come before the weights) and in
//! the last 4 KiB (the `medpatch.*` metadata), flips anywhere, truncation, runs of 0xFF (absurd
//! varint lengths and dimensions), and deleted and inserted bytes.

use medpatch_engine::{DEFAULT_MODEL_BYTES, Engine, EngineError, Input, Model, ModelOrigin, ModelSource};
use medpatch_engine::{Provider, ProviderChoice};
use medpatch_models::Rng;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

const SEED: u64 = 0x5EED_0DE1_0001;
/// How many mutants that still load are also run (each builds a tract plan: ~0.3 s).
const RUN_AT_MOST: usize = 40;
const PER_MUTANT_DEADLINE: Duration = Duration::from_secs(20);

fn mutants(base: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng::new(SEED);
    let mut out = Vec::new();
    let n = base.len();
    let flip = |what: &str, range: std::ops::Range<usize>, rng: &mut Rng| {
        let mut m = base.to_vec();
        let flips = rng.int(1, 4) as usize;
        let mut at = Vec::new();
        for _ in 0..flips {
            let i = range.start + rng.below((range.end - range.start) as u64) as usize;
            m[i] ^= 1 << rng.below(8);
            at.push(i);
        }
        (format!("{what} flips at {at:?}"), m)
    };
    for _ in 0..300 {
        out.push(flip("header", 0..(64 << 10).min(n), &mut rng));
    }
    for _ in 0..150 {
        out.push(flip("metadata", n.saturating_sub(4096)..n, &mut rng));
    }
    for _ in 0..100 {
        out.push(flip("anywhere", 0..n, &mut rng));
    }
    for _ in 0..50 {
        let cut = rng.below(n as u64) as usize;
        out.push((format!("truncated at {cut}"), base[..cut].to_vec()));
    }
    for _ in 0..100 {
        let mut m = base.to_vec();
        let zone = if rng.bool(0.5) { 64 << 10 } else { n };
        let at = rng.below(zone.min(n) as u64 - 8) as usize;
        let len = rng.int(1, 8) as usize;
        m[at..at + len].fill(0xFF);
        out.push((format!("0xFF × {len} at {at}"), m));
    }
    for _ in 0..50 {
        let mut m = base.to_vec();
        let at = rng.below((64 << 10).min(n) as u64) as usize;
        let len = rng.int(1, 16) as usize;
        if rng.bool(0.5) {
            m.drain(at..(at + len).min(n));
            out.push((format!("{len} bytes deleted at {at}"), m));
        } else {
            let bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            m.splice(at..at, bytes);
            out.push((format!("{len} bytes inserted at {at}"), m));
        }
    }
    out
}

#[test]
fn mutated_models_are_refused_or_run_never_panic() {
    let png = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/00001369_000.png")).unwrap();
    let xray = Input::Bytes { bytes: &png, name: "00001369_000.png" };
    let (mut refused, mut loaded, mut ran, mut run_errors) = (0, 0, 0, 0);
    let mut panics = Vec::new();
    let mut slow = Vec::new();
    let started = Instant::now();
    for (what, bytes) in mutants(DEFAULT_MODEL_BYTES) {
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Option<bool>, EngineError> {
            let model = Model::from_bytes(bytes.into(), ModelOrigin::Memory(what.clone()))?;
            if ran + run_errors >= RUN_AT_MOST {
                return Ok(None);
            }
            let engine = Engine::builder()
                .model(ModelSource::Loaded(model))
                .provider(ProviderChoice::Only(Provider::Tract))
                .threads(1)
                .build();
            Ok(Some(engine.and_then(|e| e.predict(xray)).is_ok()))
        }));
        match outcome {
            Err(_) => panics.push(what.clone()),
            Ok(Err(EngineError::Model { problem, .. })) => {
                assert!(!problem.is_empty(), "{what}: empty model error");
                refused += 1;
            }
            Ok(Err(other)) => panic!("{what}: loading gave a non-model error: {other}"),
            Ok(Ok(None)) => loaded += 1,
            Ok(Ok(Some(ok))) => {
                loaded += 1;
                if ok { ran += 1 } else { run_errors += 1 }
            }
        }
        if t.elapsed() > PER_MUTANT_DEADLINE {
            slow.push(format!("{what}: {:.1} s", t.elapsed().as_secs_f64()));
        }
    }
    println!(
        "{} mutants in {:.1} s: {refused} refused by name, {loaded} loaded; of those run with tract, {ran} predicted and {run_errors} failed with an error",
        refused + loaded + panics.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(panics.is_empty(), "{} mutants panicked:\n{}", panics.len(), panics.join("\n"));
    assert!(slow.is_empty(), "mutants past {PER_MUTANT_DEADLINE:?}:\n{}", slow.join("\n"));
    // Not vacuous: mutants reach both outcomes, and some loaded ones reach tract.
    assert!(refused > 0 && loaded > 0 && ran + run_errors > 0);
}
