//! The synthetic benchmark without libtorch: `medpatch-train synth` with the default settings, for
//! machines that have no libtorch of the version medpatch-train links (scripts/gpu-train.sh runs it
//! on the lent GPU machine).
//!
//!   cargo build -p medpatch-synth --example synth
//!   target/debug/examples/synth OUT SEED TRAIN VALID TEST THREADS

use medpatch_synth::{SynthConfig, write_benchmark};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() == 6, "usage: synth OUT SEED TRAIN VALID TEST THREADS");
    let number = |i: usize| args[i].parse::<u64>().map_err(|e| anyhow::anyhow!("argument {}: {e}", i + 1));
    let config = SynthConfig {
        seed: number(1)?,
        train: number(2)? as usize,
        valid: number(3)? as usize,
        test: number(4)? as usize,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    write_benchmark(&config, &PathBuf::from(&args[0]), number(5)? as usize, &|_, _| {})?;
    eprintln!(
        "synth: {} images in {:.1} s",
        config.train + config.valid + config.test,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
