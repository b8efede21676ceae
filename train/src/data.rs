//! CheXpert data, as the MedicalPatchNet seed reads it (`ChexpertDataset.py`,
//! `preprocessing/preProcCheXpert.py`), without libtorch:
//!
//! * **CSVs** ([`read_csv`]): `medpatch_eval::labels` (shared with `medpatch evaluate`): the
//!   visualCheXbert column shift, names checked, `1.0` → 1, `0.0`/`-1.0`/blank → 0.
//! * **Offline preprocessing** ([`preprocess_file`]): centre crop to the shorter side (no padding),
//!   Lanczos resize to 1024×1024, grayscale, JPEG quality 100 (one component, so no chroma
//!   subsampling), same relative path.
//! * **Loading** ([`load_eval`]): decode (PIL `convert("L")` semantics, `medpatch_engine::decode`)
//!   → centre crop → antialiased bilinear resize to 512 (`medpatch_engine::preprocess`).
//! * **Training augmentation** ([`load_train`]): torchvision `RandomResizedCrop(512, scale=(0.5, 1),
//!   ratio=(3/4, 4/3))` (antialiased), `RandomRotation(5)` (nearest, zero fill, about the centre),
//!   `ColorJitter(brightness=0.3)` (× U(0.7, 1.3), clamped to [0, 1]), in that order.
//! * **Worker threads** ([`Loader`]): batches are assembled on background threads, in a
//!   deterministic order and with deterministic augmentation (seeded per sample and epoch).

use anyhow::{Context, Result};
use medpatch_engine::decode::{self, GrayImage};
use medpatch_engine::preprocess;
use medpatch_models::Rng;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

pub use medpatch_eval::labels::{Record, parse_csv, parse_label, read_csv};

// ----------------------------------------------------------------------------------------------
// Offline preprocessing

/// Side of the offline-preprocessed images.
pub const PREPROCESSED_SIDE: u32 = 1024;

/// The seed's offline step for one image: decode (grayscale), centre crop to the shorter side,
/// Lanczos (3-lobe) resize to `side`², JPEG quality 100. Returns the output size in bytes.
pub fn preprocess_file(src: &Path, dst: &Path, side: u32) -> Result<u64> {
    let img = image::ImageReader::open(src)
        .with_context(|| format!("cannot open {}", src.display()))?
        .with_guessed_format()?
        .decode()
        .with_context(|| format!("cannot decode {}", src.display()))?
        .to_luma8();
    let (w, h) = img.dimensions();
    let s = w.min(h);
    let (left, top) = (center_offset(w, s), center_offset(h, s));
    let cropped = image::imageops::crop_imm(&img, left, top, s, s).to_image();
    let resized = image::imageops::resize(&cropped, side, side, image::imageops::FilterType::Lanczos3);
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    crate::synth::write_jpeg(dst, side, side, resized.as_raw(), 100)?;
    Ok(std::fs::metadata(dst)?.len())
}

/// PIL/torchvision centre-crop offset: round((long − short)/2), half to even.
fn center_offset(long: u32, short: u32) -> u32 {
    let diff = long - short;
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 { half + 1 } else { half }
}

/// Preprocess every image of the CSVs under `src_root` into `dst_root` (same relative paths),
/// on `threads` threads. Existing outputs are skipped unless `overwrite`.
pub fn preprocess_dataset(
    csvs: &[PathBuf],
    src_root: &Path,
    dst_root: &Path,
    side: u32,
    threads: usize,
    overwrite: bool,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<usize> {
    let mut paths: Vec<String> = Vec::new();
    for csv in csvs {
        paths.extend(read_csv(csv)?.into_iter().map(|r| r.path));
        if let Some(name) = csv.file_name() {
            std::fs::create_dir_all(dst_root)?;
            std::fs::copy(csv, dst_root.join(name)).with_context(|| format!("copying {}", csv.display()))?;
        }
    }
    paths.sort();
    paths.dedup();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let error = std::sync::Mutex::new(None::<anyhow::Error>);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= paths.len() || error.lock().unwrap().is_some() {
                        break;
                    }
                    let (src, dst) = (src_root.join(&paths[i]), dst_root.join(&paths[i]));
                    if (overwrite || !dst.exists())
                        && let Err(e) = preprocess_file(&src, &dst, side)
                    {
                        *error.lock().unwrap() = Some(e);
                        break;
                    }
                    progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, paths.len());
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(paths.len())
}

// ----------------------------------------------------------------------------------------------
// Loading and augmentation

/// Evaluation input: decode → centre crop → antialiased resize to `size` (values in [0, 1]).
pub fn load_eval(path: &Path, size: u32) -> Result<Vec<f32>> {
    let img = decode::decode_path(path).with_context(|| format!("cannot load {}", path.display()))?;
    Ok(preprocess::preprocess(&img, size).pixels)
}

/// Training input: decode → centre crop to square (a no-op on preprocessed images) →
/// RandomResizedCrop → RandomRotation → brightness jitter.
pub fn load_train(path: &Path, size: u32, rng: &mut Rng) -> Result<Vec<f32>> {
    let img = decode::decode_path(path).with_context(|| format!("cannot load {}", path.display()))?;
    let img = if img.width == img.height { img } else { preprocess::center_crop_square(&img) };
    Ok(augment(&img, size, rng))
}

/// The training augmentations on a decoded image.
pub fn augment(img: &GrayImage, size: u32, rng: &mut Rng) -> Vec<f32> {
    let (top, left, h, w) = random_resized_crop_params(img.width, img.height, (0.5, 1.0), (3.0 / 4.0, 4.0 / 3.0), rng);
    let mut crop = Vec::with_capacity((w * h) as usize);
    for y in top..top + h {
        let row = (y * img.width) as usize;
        crop.extend_from_slice(&img.pixels[row + left as usize..row + (left + w) as usize]);
    }
    let resized = preprocess::resize_antialiased(&GrayImage { width: w, height: h, pixels: crop }, size, size);
    let angle = rng.range(-5.0, 5.0);
    let mut out = rotate_nearest(&resized.pixels, size as usize, angle);
    let brightness = rng.range(0.7, 1.3) as f32;
    for v in &mut out {
        *v = (*v * brightness).clamp(0.0, 1.0);
    }
    out
}

/// torchvision `RandomResizedCrop.get_params`: up to 10 tries of a random area fraction in
/// `scale` and log-uniform aspect ratio in `ratio`, else a centre crop with the ratio clamped.
/// Returns (top, left, height, width).
pub fn random_resized_crop_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (u32, u32, u32, u32) {
    let (wf, hf) = (width as f64, height as f64);
    let area = wf * hf;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(scale.0, scale.1);
        let aspect = rng.range(lr0, lr1).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= wf && h <= hf {
            let (w, h) = (w as u32, h as u32);
            let top = rng.below((height - h + 1) as u64) as u32;
            let left = rng.below((width - w + 1) as u64) as u32;
            return (top, left, h, w);
        }
    }
    let in_ratio = wf / hf;
    let (w, h) = if in_ratio < ratio.0 {
        (width, (wf / ratio.0).round() as u32)
    } else if in_ratio > ratio.1 {
        ((hf * ratio.1).round() as u32, height)
    } else {
        (width, height)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// Rotate a square image by `degrees` counter-clockwise about its centre, nearest neighbour,
/// zero fill, same size (torchvision `rotate(..., InterpolationMode.NEAREST, expand=False)`).
pub fn rotate_nearest(pixels: &[f32], side: usize, degrees: f64) -> Vec<f32> {
    let theta = degrees.to_radians();
    let (c, s) = (theta.cos(), theta.sin());
    let centre = side as f64 / 2.0;
    let mut out = vec![0f32; side * side];
    for y in 0..side {
        for x in 0..side {
            // Output pixel centre relative to the image centre (y down); inverse rotation.
            let (dx, dy) = (x as f64 + 0.5 - centre, y as f64 + 0.5 - centre);
            // A counter-clockwise rotation on screen (y down) maps source (u, v) to
            // (u·c + v·s, −u·s + v·c); invert it.
            let u = dx * c - dy * s;
            let v = dx * s + dy * c;
            let (sx, sy) = ((u + centre).floor(), (v + centre).floor());
            if sx >= 0.0 && sy >= 0.0 && (sx as usize) < side && (sy as usize) < side {
                out[y * side + x] = pixels[sy as usize * side + sx as usize];
            }
        }
    }
    out
}

// ----------------------------------------------------------------------------------------------
// Worker threads

/// A batch: images `[n, 1, size, size]` row-major and targets `[n, 14]`, plus record indices.
#[derive(Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub targets: Vec<f32>,
    pub indices: Vec<usize>,
    pub size: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub records: Vec<Record>,
}

impl Dataset {
    pub fn from_csv(csv: &Path, root: &Path) -> Result<Self> {
        Ok(Self { root: root.to_path_buf(), records: read_csv(csv)? })
    }

    pub fn image_path(&self, i: usize) -> PathBuf {
        self.root.join(&self.records[i].path)
    }
}

/// Background batch loading for one pass over a dataset: `workers` threads decode and augment
/// the batches of `order` (chunks of `batch_size`, the last one possibly short); the iterator
/// yields them in order, with at most `prefetch` batches waiting. Augmentation of sample `i` uses
/// `Rng::derive(seed, [epoch, i])`, so results do not depend on the number of workers.
pub struct Loader {
    receiver: mpsc::Receiver<(usize, Result<Batch>)>,
    pending: std::collections::BTreeMap<usize, Result<Batch>>,
    next: usize,
    total: usize,
    handles: Vec<std::thread::JoinHandle<()>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub image_size: u32,
    pub augment: bool,
    pub workers: usize,
    pub prefetch: usize,
    pub seed: u64,
    pub epoch: u64,
}

impl Loader {
    pub fn new(dataset: std::sync::Arc<Dataset>, order: Vec<usize>, options: LoaderOptions) -> Self {
        let chunks: Vec<Vec<usize>> = order.chunks(options.batch_size.max(1)).map(|c| c.to_vec()).collect();
        let total = chunks.len();
        let chunks = std::sync::Arc::new(chunks);
        let workers = options.workers.max(1);
        // Bounded: each worker may run ahead by `prefetch / workers` batches at most.
        let (sender, receiver) = mpsc::sync_channel(options.prefetch.max(1));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..workers)
            .map(|w| {
                let (dataset, chunks, sender, options, stop) =
                    (dataset.clone(), chunks.clone(), sender.clone(), options.clone(), stop.clone());
                std::thread::spawn(move || {
                    for b in (w..chunks.len()).step_by(workers) {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        let batch = load_batch(&dataset, &chunks[b], &options);
                        if sender.send((b, batch)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Self { receiver, pending: Default::default(), next: 0, total, handles, stop }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

fn load_batch(dataset: &Dataset, indices: &[usize], options: &LoaderOptions) -> Result<Batch> {
    let size = options.image_size as usize;
    let mut images = Vec::with_capacity(indices.len() * size * size);
    let mut targets = Vec::with_capacity(indices.len() * 14);
    for &i in indices {
        let path = dataset.image_path(i);
        let pixels = if options.augment {
            let mut rng = Rng::derive(options.seed, &[options.epoch, i as u64]);
            load_train(&path, options.image_size, &mut rng)?
        } else {
            load_eval(&path, options.image_size)?
        };
        images.extend_from_slice(&pixels);
        targets.extend_from_slice(&dataset.records[i].labels);
    }
    Ok(Batch { images, targets, indices: indices.to_vec(), size })
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.total {
            return None;
        }
        while !self.pending.contains_key(&self.next) {
            match self.receiver.recv() {
                Ok((b, batch)) => {
                    self.pending.insert(b, batch);
                }
                Err(_) => return Some(Err(anyhow::anyhow!("a data loading thread died"))),
            }
        }
        let batch = self.pending.remove(&self.next).unwrap();
        self.next += 1;
        Some(batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Unblock senders, then wait for the threads.
        while self.receiver.try_recv().is_ok() {}
        for h in self.handles.drain(..) {
            while !h.is_finished() {
                while self.receiver.try_recv().is_ok() {}
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_params_stay_inside_and_follow_scale() {
        let mut rng = Rng::new(1);
        for _ in 0..500 {
            let (t, l, h, w) = random_resized_crop_params(1024, 1024, (0.5, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(t + h <= 1024 && l + w <= 1024);
            let frac = (h * w) as f64 / (1024.0 * 1024.0);
            assert!((0.49..=1.01).contains(&frac), "{frac}");
            let ratio = w as f64 / h as f64;
            assert!((0.74..=1.34).contains(&ratio), "{ratio}");
        }
    }

    #[test]
    fn rotation_direction_and_identity() {
        let side = 8;
        let mut img = vec![0f32; side * side];
        img[side + 6] = 1.0; // (x=6, y=1): upper right
        assert_eq!(rotate_nearest(&img, side, 0.0), img);
        let r = rotate_nearest(&img, side, 90.0);
        // Counter-clockwise by 90°: upper right → upper left: (x=1, y=1).
        let (x, y) = r.iter().position(|&v| v == 1.0).map(|i| (i % side, i / side)).unwrap();
        assert_eq!((x, y), (1, 1));
    }

    #[test]
    fn centre_offsets_round_half_to_even() {
        assert_eq!(center_offset(11, 10), 0);
        assert_eq!(center_offset(13, 10), 2);
        assert_eq!(center_offset(15, 10), 2);
        assert_eq!(center_offset(17, 10), 4);
    }
}
