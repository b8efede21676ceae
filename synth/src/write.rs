//! The benchmark on disk, in the real formats: CheXpert-style JPEGs and CSVs, CheXlocalize-style
//! ground-truth JSON.

use crate::{Split, SynthConfig, chexlocalize_id, render};
use medpatch_eval::rle;
use medpatch_models::{CHEXPERT_CLASSES, Rng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One written image: relative path, labels, sex, age, CheXlocalize masks (valid/test only).
type Row = (String, [bool; 14], &'static str, u32, Option<serde_json::Value>);

/// Where things are in a written benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchmarkLayout {
    pub root: PathBuf,
    /// CSVs (paths inside are relative to `root`).
    pub train_csv: PathBuf,
    pub train_visualchexbert_csv: PathBuf,
    pub valid_csv: PathBuf,
    pub test_csv: PathBuf,
    pub gt_val: PathBuf,
    pub gt_test: PathBuf,
}

impl BenchmarkLayout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            train_csv: root.join("train.csv"),
            train_visualchexbert_csv: root.join("train_visualCheXbert.csv"),
            valid_csv: root.join("valid.csv"),
            test_csv: root.join("test_labels.csv"),
            gt_val: root.join("gt_segmentations_val.json"),
            gt_test: root.join("gt_segmentations_test.json"),
        }
    }
}

/// Directory of the images under the root, as CheXpert's `CheXpert-v1.0/…`.
pub const IMAGE_DIR: &str = "CheXpert-synthetic";

fn relative_path(split: Split, index: u64) -> String {
    format!("{IMAGE_DIR}/{}/patient{:05}/study1/view1_frontal.jpg", split.name(), index + 1 + split.id() * 100_000)
}

fn label_text(v: bool) -> &'static str {
    if v { "1.0" } else { "0.0" }
}

/// Write train/valid/test images (JPEG), CheXpert-style CSVs (`train.csv` and
/// `train_visualCheXbert.csv` — the latter with No Finding last, as visualCheXbert writes it —,
/// `valid.csv`, `test_labels.csv`) and CheXlocalize-style ground truth for valid (`_val`) and test.
/// Images are rendered on `threads` threads; the output does not depend on the thread count.
pub fn write_benchmark(
    config: &SynthConfig,
    root: &Path,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> anyhow::Result<BenchmarkLayout> {
    use anyhow::Context;
    let layout = BenchmarkLayout::new(root);
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    std::fs::write(root.join("synth_config.json"), serde_json::to_string_pretty(config)?)?;
    let total = config.train + config.valid + config.test;
    let done = std::sync::atomic::AtomicUsize::new(0);
    for (split, n) in [(Split::Train, config.train), (Split::Valid, config.valid), (Split::Test, config.test)] {
        let results: Vec<std::sync::Mutex<Option<Row>>> = (0..n).map(|_| std::sync::Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let error: std::sync::Mutex<Option<anyhow::Error>> = std::sync::Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n || error.lock().unwrap().is_some() {
                            break;
                        }
                        let sample = render(config, split, i as u64);
                        let rel = relative_path(split, i as u64);
                        let path = root.join(&rel);
                        let result = (|| -> anyhow::Result<()> {
                            std::fs::create_dir_all(path.parent().unwrap())?;
                            write_jpeg(
                                &path,
                                sample.width as u32,
                                sample.height as u32,
                                &sample.pixels,
                                config.jpeg_quality,
                            )
                        })();
                        if let Err(e) = result {
                            *error.lock().unwrap() = Some(e.context(format!("writing {}", path.display())));
                            break;
                        }
                        let gt = (split != Split::Train).then(|| {
                            serde_json::Value::Object(
                                sample.masks.iter().map(|(task, m)| (task.to_string(), rle::encode_json(m))).collect(),
                            )
                        });
                        // Label noise (a separate stream, so the images do not depend on it).
                        let mut labels = sample.labels;
                        if config.label_noise > 0.0 {
                            let mut r = Rng::derive(config.seed ^ 0x1abe1, &[split.id(), i as u64]);
                            for l in labels.iter_mut() {
                                if r.bool(config.label_noise) {
                                    *l = !*l;
                                }
                            }
                        }
                        *results[i].lock().unwrap() = Some((rel, labels, sample.sex, sample.age, gt));
                        let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        progress(k, total);
                    }
                });
            }
        });
        if let Some(e) = error.into_inner().unwrap() {
            return Err(e);
        }
        let rows: Vec<_> =
            results.into_iter().map(|r| r.into_inner().unwrap().expect("every image rendered")).collect();
        let header = |visual: bool| {
            let mut cols = vec!["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"];
            if visual {
                cols.extend(CHEXPERT_CLASSES[1..].iter());
                cols.push(CHEXPERT_CLASSES[0]);
            } else {
                cols.extend(CHEXPERT_CLASSES.iter());
            }
            cols.join(",")
        };
        let row = |r: &Row, visual: bool| {
            let mut cols = vec![r.0.clone(), r.2.to_string(), r.3.to_string(), "Frontal".into(), "PA".into()];
            let labels: Vec<&str> = r.1.iter().map(|&v| label_text(v)).collect();
            if visual {
                cols.extend(labels[1..].iter().map(|s| s.to_string()));
                cols.push(labels[0].to_string());
            } else {
                cols.extend(labels.iter().map(|s| s.to_string()));
            }
            cols.join(",")
        };
        let write_csv = |path: &Path, visual: bool| -> anyhow::Result<()> {
            let mut text = header(visual) + "\n";
            for r in &rows {
                text += &row(r, visual);
                text.push('\n');
            }
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        };
        match split {
            Split::Train => {
                write_csv(&layout.train_csv, false)?;
                write_csv(&layout.train_visualchexbert_csv, true)?;
            }
            Split::Valid | Split::Test => {
                write_csv(if split == Split::Valid { &layout.valid_csv } else { &layout.test_csv }, false)?;
                let gt: serde_json::Map<String, serde_json::Value> =
                    rows.iter().map(|r| (chexlocalize_id(&r.0), r.4.clone().expect("masks for valid/test"))).collect();
                let path = if split == Split::Valid { &layout.gt_val } else { &layout.gt_test };
                std::fs::write(path, serde_json::to_string(&gt)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
    }
    Ok(layout)
}

/// 8-bit grayscale JPEG. A one-component JPEG has no chroma, so "no chroma subsampling" holds
/// trivially.
pub fn write_jpeg(path: &Path, width: u32, height: u32, pixels: &[u8], quality: u8) -> anyhow::Result<()> {
    use image::ImageEncoder;
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    image::codecs::jpeg::JpegEncoder::new_with_quality(file, quality).write_image(
        pixels,
        width,
        height,
        image::ExtendedColorType::L8,
    )?;
    Ok(())
}
