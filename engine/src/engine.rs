//! [`Engine`]: a model, a backend and the pipeline around them. `Send + Sync`: build one and
//! share it between threads; patches of several images go through the backend in one call.

use crate::backend::{self, Backend, BackendOptions, Provider, ProviderChoice};
use crate::decode::{self, GrayImage};
use crate::explain::{self, DenseAccumulator};
use crate::model::{Model, ModelOrigin};
use crate::{EngineError, preprocess, tile};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The demo model compiled into medpatch (trained on synthetic images: not for clinical use).
pub const DEFAULT_MODEL_BYTES: &[u8] = include_bytes!("../../models/default/medpatch-default.onnx");

/// Where the engine gets its model.
#[derive(Debug, Clone, Default)]
#[allow(clippy::large_enum_variant)] // built once per engine
pub enum ModelSource {
    /// The embedded demo model.
    #[default]
    Default,
    Path(PathBuf),
    Loaded(Model),
}

#[derive(Debug, Clone)]
pub struct EngineBuilder {
    model: ModelSource,
    provider: ProviderChoice,
    options: BackendOptions,
    batch_size: usize,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self {
            model: ModelSource::Default,
            provider: ProviderChoice::Auto,
            options: BackendOptions::default(),
            batch_size: 256,
        }
    }
}

impl EngineBuilder {
    pub fn model(mut self, model: ModelSource) -> Self {
        self.model = model;
        self
    }
    pub fn model_path(self, path: impl Into<PathBuf>) -> Self {
        self.model(ModelSource::Path(path.into()))
    }
    pub fn provider(mut self, provider: ProviderChoice) -> Self {
        self.provider = provider;
        self
    }
    /// Intra-op threads of the backend (0: all cores).
    pub fn threads(mut self, threads: usize) -> Self {
        self.options.threads = threads;
        self
    }
    /// Patches per backend call (rounded up to whole images where possible).
    pub fn batch_size(mut self, patches: usize) -> Self {
        self.batch_size = patches.max(1);
        self
    }
    pub fn backend_options(mut self, options: BackendOptions) -> Self {
        self.options = options;
        self
    }

    pub fn build(self) -> Result<Engine, EngineError> {
        let model = match self.model {
            ModelSource::Default => Model::from_bytes(DEFAULT_MODEL_BYTES.into(), ModelOrigin::Embedded)?,
            ModelSource::Path(p) => Model::from_path(&p)?,
            ModelSource::Loaded(m) => m,
        };
        let selection = backend::select(&model, self.provider, &self.options)?;
        Ok(Engine { model, backend: selection.backend, skipped: selection.skipped, batch_size: self.batch_size })
    }
}

/// Time spent in each pipeline stage for one image. Batched stages (backend) are shared out
/// evenly between the images of the batch.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    #[serde(serialize_with = "as_ms")]
    pub decode: Duration,
    #[serde(serialize_with = "as_ms")]
    pub preprocess: Duration,
    #[serde(serialize_with = "as_ms")]
    pub tile: Duration,
    #[serde(serialize_with = "as_ms")]
    pub backend: Duration,
    #[serde(serialize_with = "as_ms")]
    pub aggregate: Duration,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.decode + self.preprocess + self.tile + self.backend + self.aggregate
    }
}

/// One image's result.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Image logits, one per class: the mean of the patch logits.
    pub logits: Vec<f32>,
    /// sigmoid(logits).
    pub probabilities: Vec<f32>,
    /// `[grid·grid][classes]`, patches row-major: the explanation.
    pub patch_logits: Vec<f32>,
    pub grid: usize,
    /// The preprocessed image the model saw (`image_size²`, values in [0, 1]).
    pub image: GrayImage,
    pub provider: Provider,
    pub timings: Timings,
}

/// A dense, shift-averaged saliency map (the paper's "stepsPerPatch" S).
#[derive(Debug, Clone)]
pub struct DenseMap {
    pub shift_steps: usize,
    /// `[classes][side][side]` in logits (unclipped).
    pub values: Vec<f32>,
    pub side: usize,
    pub elapsed: Duration,
}

pub struct Engine {
    model: Model,
    backend: Box<dyn Backend>,
    skipped: Vec<(Provider, String)>,
    batch_size: usize,
}

impl Engine {
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    pub fn model(&self) -> &Model {
        &self.model
    }
    /// The backend that really runs.
    pub fn provider(&self) -> Provider {
        self.backend.provider()
    }
    /// Providers `auto` tried first, and why each was not used.
    pub fn skipped_providers(&self) -> &[(Provider, String)] {
        &self.skipped
    }

    /// The seed's preprocessing for this model: centre crop, antialiased resize to the image size.
    pub fn prepare(&self, image: &GrayImage) -> GrayImage {
        preprocess::preprocess(image, self.model.image_size() as u32)
    }

    /// Run the patch backbone on `n` patches, in backend calls of at most `batch_size` patches.
    pub fn run_patches(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, EngineError> {
        let per_patch = patches.len() / n.max(1);
        let classes = self.model.num_classes();
        let mut logits = Vec::with_capacity(n * classes);
        for chunk in patches.chunks(self.batch_size * per_patch) {
            let m = chunk.len() / per_patch;
            let out = self.backend.run(chunk, m)?;
            logits.extend_from_slice(&out);
        }
        Ok(logits)
    }

    /// Predict preprocessed images (each `image_size²`), all their patches batched together.
    /// An image whose outputs are not finite gets an error; the others are unaffected.
    pub fn predict_prepared(&self, images: &[GrayImage]) -> Result<Vec<Result<Prediction, EngineError>>, EngineError> {
        let side = self.model.image_size();
        let (patch, grid, classes) = (self.model.patch_size(), self.model.grid(), self.model.num_classes());
        for image in images {
            if image.width as usize != side || image.height as usize != side {
                return Err(EngineError::Input(format!(
                    "image is {}×{}, the model needs {side}×{side}: call Engine::prepare first",
                    image.width, image.height
                )));
            }
        }
        let started = Instant::now();
        let mut patches = Vec::with_capacity(images.len() * side * side);
        for image in images {
            tile::tile_into(&image.pixels, side, patch, &mut patches);
        }
        let tile_time = started.elapsed() / images.len().max(1) as u32;
        let started = Instant::now();
        let logits = self.run_patches(&patches, images.len() * grid * grid)?;
        let backend_time = started.elapsed() / images.len().max(1) as u32;
        Ok(images
            .iter()
            .zip(logits.chunks_exact(grid * grid * classes))
            .map(|(image, patch_logits)| {
                let started = Instant::now();
                if let Some(i) = patch_logits.iter().position(|z| !z.is_finite()) {
                    return Err(EngineError::Backend(format!(
                        "the model produced a non-finite logit ({}) for patch {} class {}",
                        patch_logits[i],
                        i / classes,
                        self.model.metadata.classes[i % classes]
                    )));
                }
                let logits = explain::mean_logits(patch_logits, classes);
                let probabilities = logits.iter().map(|&z| explain::sigmoid(z)).collect();
                let timings = Timings {
                    tile: tile_time,
                    backend: backend_time,
                    aggregate: started.elapsed(),
                    ..Default::default()
                };
                Ok(Prediction {
                    logits,
                    probabilities,
                    patch_logits: patch_logits.to_vec(),
                    grid,
                    image: image.clone(),
                    provider: self.provider(),
                    timings,
                })
            })
            .collect())
    }

    /// Decode, preprocess and predict image files. One result per path, in order; a bad file
    /// gets an error naming it and does not stop the others.
    pub fn predict_paths(&self, paths: &[PathBuf]) -> Vec<Result<Prediction, EngineError>> {
        let mut prepared = Vec::new();
        let mut results: Vec<Option<Result<Prediction, EngineError>>> = Vec::with_capacity(paths.len());
        let mut front: Vec<(usize, Duration, Duration)> = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let started = Instant::now();
            match decode::decode_path(path) {
                Ok(image) => {
                    let decode_time = started.elapsed();
                    let started = Instant::now();
                    prepared.push(self.prepare(&image));
                    front.push((i, decode_time, started.elapsed()));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e.into()))),
            }
        }
        match self.predict_prepared(&prepared) {
            Ok(predictions) => {
                for ((i, decode_time, prep_time), prediction) in front.into_iter().zip(predictions) {
                    results[i] = Some(prediction.map(|mut p| {
                        p.timings.decode = decode_time;
                        p.timings.preprocess = prep_time;
                        p
                    }));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (i, ..) in front {
                    results[i] = Some(Err(EngineError::Backend(message.clone())));
                }
            }
        }
        results
            .into_iter()
            .zip(paths)
            .map(|(r, path)| r.expect("every input has a result").map_err(|e| with_path(e, path)))
            .collect()
    }

    /// The paper's dense map at `shift_steps` S ∈ {1, 2, 4, …, patch}: S² shifted copies of the
    /// image, all their patches batched through the backend, averaged back in image coordinates.
    pub fn dense_map(&self, image: &GrayImage, shift_steps: usize) -> Result<DenseMap, EngineError> {
        let started = Instant::now();
        let (side, patch, grid, classes) =
            (self.model.image_size(), self.model.patch_size(), self.model.grid(), self.model.num_classes());
        if !explain::valid_shift_steps(shift_steps, patch) {
            return Err(EngineError::Input(format!(
                "shift steps must be a power of two dividing the patch size {patch} (1, 2, 4, …, {patch}), not {shift_steps}"
            )));
        }
        if image.width as usize != side || image.height as usize != side {
            return Err(EngineError::Input(format!("dense maps need a prepared {side}×{side} image")));
        }
        let shifts = explain::dense_shifts(shift_steps, patch);
        let mut acc = DenseAccumulator::new(grid, patch, classes);
        // Whole shifted images per backend call, about `batch_size` patches at a time.
        let per_call = (self.batch_size / (grid * grid)).max(1);
        let mut window = Vec::new();
        let mut patches = Vec::new();
        for group in shifts.chunks(per_call) {
            patches.clear();
            for &(dr, dc) in group {
                explain::shifted_window(&image.pixels, side, dr, dc, &mut window);
                tile::tile_into(&window, side, patch, &mut patches);
            }
            let logits = self.backend.run(&patches, group.len() * grid * grid)?;
            if logits.iter().any(|z| !z.is_finite()) {
                return Err(EngineError::Backend("the model produced non-finite logits for a shifted image".into()));
            }
            for (&(dr, dc), values) in group.iter().zip(logits.chunks_exact(grid * grid * classes)) {
                acc.add(values, dr, dc);
            }
        }
        Ok(DenseMap { shift_steps, values: acc.finish(), side, elapsed: started.elapsed() })
    }
}

fn with_path(error: EngineError, path: &Path) -> EngineError {
    match error {
        // Decode errors already name the file.
        EngineError::Decode(_) => error,
        other => EngineError::Input(format!("{}: {other}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn engine_is_send_and_sync() {
        assert_send_sync::<Engine>();
    }
}
