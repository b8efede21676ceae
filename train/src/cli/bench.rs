//! `medpatch-train bench`: Training throughput on random inputs.

use super::DeviceArg;
use anyhow::Result;
use clap::Args;
use medpatch_train::trainer;

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[arg(long, default_value = "efficientnet_v2_tiny")]
    arch: String,
    #[arg(long, default_value_t = 64)]
    patch_size: i64,
    #[arg(long, default_value_t = 512)]
    image_size: i64,
    /// Images per batch.
    #[arg(long, default_value_t = 2)]
    batch: i64,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    threads: i32,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    #[arg(long)]
    amp: bool,
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub(crate) fn bench_cmd(a: BenchArgs) -> Result<()> {
    use tch::nn::ModuleT;
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let device = a.device.resolve()?;
    let arch = medpatch_models::ArchConfig::resolve(&a.arch)?;
    let vs = tch::nn::VarStore::new(device);
    let net = trainer::build_model(&vs, &arch, a.patch_size);
    let mut opt = medpatch_train::optim::AdamW::new(&vs, 1e-4, 0.01);
    let x = tch::Tensor::rand([a.batch, 1, a.image_size, a.image_size], (tch::Kind::Float, device));
    let y = tch::Tensor::rand([a.batch, 14], (tch::Kind::Float, device)).gt(0.7).to_kind(tch::Kind::Float);
    let patches = a.batch * (a.image_size / a.patch_size).pow(2);
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
    };
    // (whole step, forward + loss, backward, optimizer) per timed step.
    let mut times: Vec<[f64; 4]> = Vec::new();
    for i in 0..a.warmup + a.steps {
        let t0 = std::time::Instant::now();
        let logits = trainer::with_autocast(a.amp, || net.forward_t(&x, true)).to_kind(tch::Kind::Float);
        let loss = logits.binary_cross_entropy_with_logits::<tch::Tensor>(&y, None, None, tch::Reduction::Mean);
        sync();
        let t1 = std::time::Instant::now();
        let grad = opt.gradients(&loss);
        sync();
        let t2 = std::time::Instant::now();
        opt.step(&grad);
        sync();
        let t3 = std::time::Instant::now();
        if i >= a.warmup {
            times.push([
                (t3 - t0).as_secs_f64(),
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
            ]);
        }
    }
    let median = |k: usize| {
        let mut v: Vec<f64> = times.iter().map(|t| t[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (median, fwd, bwd, step) = (median(0), median(1), median(2), median(3));
    let out = serde_json::json!({
        "impl": "tch",
        "arch": arch.name,
        "patch_size": a.patch_size,
        "batch_images": a.batch,
        "patches_per_step": patches,
        "threads": tch::get_num_threads(),
        "device": format!("{device:?}"),
        "amp": a.amp,
        "median_step_s": median,
        "patches_per_s": patches as f64 / median,
        "forward_s": fwd,
        "backward_s": bwd,
        "optimizer_s": step,
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": serde_json::Value::Null,
    });
    println!("{out}");
    Ok(())
}
