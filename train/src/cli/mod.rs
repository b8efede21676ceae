//! The subcommands of `medpatch-train`, one file each; shared argument types here.

pub(crate) mod bench;
pub(crate) mod cam;
pub(crate) mod evaluate;
pub(crate) mod preprocess;
pub(crate) mod synth;
pub(crate) mod train;

use anyhow::Result;
use std::path::{Path, PathBuf};
use tch::Device;

/// Where and how wide training and evaluation compute (shared by `train` and `evaluate`).
#[derive(clap::Args)]
pub(crate) struct Compute {
    /// Data loading threads.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// libtorch intra-op threads (0: libtorch's default, all cores).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: i32,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub(crate) device: DeviceArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

impl DeviceArg {
    fn resolve(self) -> Result<Device> {
        Ok(match self {
            DeviceArg::Auto => Device::cuda_if_available(),
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => {
                anyhow::ensure!(
                    tch::Cuda::is_available(),
                    "CUDA is not available to this libtorch (run `medpatch-train doctor`)"
                );
                Device::Cuda(0)
            }
        })
    }
}

pub(crate) fn parent_dir(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn doctor() -> Result<()> {
    println!("libtorch intra-op threads: {}", tch::get_num_threads());
    println!("CUDA available: {}", tch::Cuda::is_available());
    println!("CUDA devices: {}", tch::Cuda::device_count());
    println!("cuDNN available: {}", tch::Cuda::cudnn_is_available());
    if tch::Cuda::is_available() {
        let t = tch::Tensor::ones([2, 2], (tch::Kind::Float, Device::Cuda(0)));
        println!("CUDA tensor sum: {}", t.sum(tch::Kind::Float).double_value(&[]));
    }
    Ok(())
}
