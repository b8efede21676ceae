//! `medpatch-train preprocess`: The seed's offline CheXpert preprocessing.

use anyhow::Result;
use clap::Args;
use medpatch_train::data;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct PreprocessArgs {
    /// CSVs listing the images (their Path column, relative to --src); copied to --dst.
    #[arg(long = "csv", required = true)]
    csvs: Vec<PathBuf>,
    #[arg(long)]
    src: PathBuf,
    #[arg(long)]
    dst: PathBuf,
    #[arg(long, default_value_t = data::PREPROCESSED_SIDE)]
    side: u32,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    overwrite: bool,
}

pub(crate) fn preprocess_cmd(a: PreprocessArgs) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    let n = data::preprocess_dataset(&a.csvs, &a.src, &a.dst, a.side, a.threads, a.overwrite, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    eprintln!("preprocessed {n} images into {}", a.dst.display());
    Ok(())
}
