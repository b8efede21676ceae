//! `medpatch-train synth`: Writes the synthetic benchmark.

use anyhow::Result;
use clap::Args;
use medpatch_train::synth::{self, SynthConfig};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct SynthArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2000)]
    train: usize,
    #[arg(long, default_value_t = 200)]
    valid: usize,
    #[arg(long, default_value_t = 300)]
    test: usize,
    #[arg(long, default_value_t = 512)]
    width: u32,
    /// 0 (easy) … 1 (hard); sets contrast, size, noise and variability (individual knobs override).
    #[arg(long)]
    difficulty: Option<f32>,
    #[arg(long)]
    prevalence: Option<f64>,
    #[arg(long)]
    contrast: Option<f32>,
    #[arg(long)]
    size: Option<f32>,
    #[arg(long)]
    noise: Option<f32>,
    #[arg(long)]
    variability: Option<f32>,
    #[arg(long)]
    label_noise: Option<f64>,
    #[arg(long, default_value_t = 95)]
    jpeg_quality: u8,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

pub(crate) fn synth_cmd(a: SynthArgs) -> Result<()> {
    let mut config = SynthConfig {
        seed: a.seed,
        train: a.train,
        valid: a.valid,
        test: a.test,
        width: a.width,
        jpeg_quality: a.jpeg_quality,
        ..Default::default()
    };
    if let Some(d) = a.difficulty {
        config = config.with_difficulty(d);
    }
    if let Some(v) = a.prevalence {
        config.prevalence = v;
    }
    if let Some(v) = a.contrast {
        config.contrast = v;
    }
    if let Some(v) = a.size {
        config.size = v;
    }
    if let Some(v) = a.noise {
        config.noise = v;
    }
    if let Some(v) = a.variability {
        config.variability = v;
    }
    if let Some(v) = a.label_noise {
        config.label_noise = v;
    }
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new((config.train + config.valid + config.test) as u64);
    let layout = synth::write_benchmark(&config, &a.out, a.threads, &|done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} images in {:.0} s to {}",
        config.train + config.valid + config.test,
        started.elapsed().as_secs_f64(),
        a.out.display()
    );
    println!("{}", serde_json::to_string_pretty(&layout)?);
    Ok(())
}
