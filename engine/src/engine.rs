//! [`Engine`]: a model, a backend and the pipeline around them. `Send + Sync`: build one and
//! share it between threads; patches of several images go through the backend in one call.

use crate::backend::{
    self, Backend, BackendError, BackendOptions, Precision, PrecisionCheck, Provider, ProviderChoice,
};
use crate::decode::{self, GrayImage};
use crate::explain::{self, DenseAccumulator, MapKind};
use crate::model::{Model, ModelOrigin};
use crate::{EngineError, preprocess, tile};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
// std's clock panics on wasm32-unknown-unknown (no OS); web-time reads the browser's there.
#[cfg(not(target_arch = "wasm32"))]
use std::time::Instant;
#[cfg(target_arch = "wasm32")]
use web_time::Instant;

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
            // One 512² image per backend call: fastest measured for ONNX Runtime's CPU provider
            // (256 patches per call was 7% slower, engine/benches/ort_tuning.rs), no slower for
            // OpenVINO and tract, and a third less peak memory (`medpatch bench`).
            batch_size: 64,
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
    /// Arithmetic precision (default f32). bf16 and fp16 are faster where the hardware has them
    /// and are self-checked against f32 when the engine is built.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.options.precision = precision;
        self
    }

    pub fn build(self) -> Result<Engine, EngineError> {
        let model = match self.model {
            ModelSource::Default => Model::from_bytes(DEFAULT_MODEL_BYTES.into(), ModelOrigin::Embedded)?,
            ModelSource::Path(p) => Model::from_path(&p)?,
            ModelSource::Loaded(m) => m,
        };
        let selection = backend::select(&model, self.provider, &self.options)?;
        Ok(Engine {
            model,
            backend: selection.backend,
            skipped: selection.skipped,
            precision_check: selection.precision_check,
            batch_size: self.batch_size,
        })
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
    precision_check: Option<PrecisionCheck>,
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
    /// Said when a quantized model's quantizers are laid out for another runtime than the one
    /// running it: it runs, at that runtime's speed for a foreign layout (a model laid out for
    /// OpenVINO ran 2.5–2.9× slower than f32 on ONNX Runtime: docs/precision.md).
    pub fn layout_note(&self) -> Option<String> {
        let target = self.model.metadata.quantization.as_ref()?.target.as_deref().unwrap_or("onnxruntime");
        let runtime = match self.provider() {
            Provider::OpenVino => "openvino",
            Provider::Cpu | Provider::TensorRt | Provider::Cuda => "onnxruntime",
            Provider::Tract => return None,
        };
        (target != runtime).then(|| {
            format!(
                "the model's quantizers are laid out for {target}'s fusions, and {} runs such a model slower than one \
                 quantized for {runtime} (medpatch quantize, target {runtime})",
                self.provider().describe()
            )
        })
    }
    /// The precision the backend computes in.
    pub fn precision(&self) -> Precision {
        self.backend.precision()
    }
    /// What the reduced-precision self-check measured when the engine was built (None at f32).
    pub fn precision_check(&self) -> Option<&PrecisionCheck> {
        self.precision_check.as_ref()
    }
    /// Providers `auto` tried first, and why each was not used.
    pub fn skipped_providers(&self) -> &[(Provider, String)] {
        &self.skipped
    }

    /// Whole images per backend call: the batch size in patches over the patches per image.
    pub fn images_per_batch(&self) -> usize {
        (self.batch_size / self.model.grid().pow(2)).max(1)
    }

    /// The seed's preprocessing for this model: centre crop, antialiased resize to the image size.
    pub fn prepare(&self, image: &GrayImage) -> GrayImage {
        preprocess::preprocess(image, self.model.image_size() as u32)
    }

    /// Run the patch backbone on `n` patches (`[n, C, P, P]`), in backend calls of at most
    /// `batch_size` patches. `n = 0` is an ordinary case (a batch whose files all failed to
    /// decode): it gives no logits and calls no backend.
    pub fn run_patches(&self, patches: &[f32], n: usize) -> Result<Vec<f32>, EngineError> {
        let per_patch = self.model.channels * self.model.patch_size() * self.model.patch_size();
        if patches.len() != n * per_patch {
            return Err(EngineError::Input(format!(
                "{} values are not {n} patches of {per_patch} values",
                patches.len()
            )));
        }
        let classes = self.model.num_classes();
        let mut logits = Vec::with_capacity(n * classes);
        if n == 0 {
            return Ok(logits);
        }
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
                    return Err(EngineError::from(BackendError::NonFinite {
                        value: patch_logits[i],
                        patch: i / classes,
                        class: self.model.metadata.classes[i % classes].clone(),
                    }));
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

    /// Decode (if needed) and preprocess one input: what the model will see, with the time each
    /// step took. The CPU-side half of a prediction; [`Engine::predict_loaded`] is the other.
    pub fn load(&self, input: &Input<'_>) -> Result<Loaded, EngineError> {
        let started = Instant::now();
        let decoded;
        let image = match input {
            Input::Path(path) => {
                decoded = decode::decode_path(path)?;
                &decoded
            }
            Input::Bytes { bytes, name } => {
                decoded = decode::decode_bytes(bytes, name)
                    .map_err(|e| decode::DecodeError::InFile { path: PathBuf::from(name), problem: Box::new(e) })?;
                &decoded
            }
            Input::Image(image) => {
                check_pixels(image)?;
                image
            }
        };
        let decode_time = started.elapsed();
        let started = Instant::now();
        let image = self.prepare(image);
        Ok(Loaded { image, decode: decode_time, preprocess: started.elapsed() })
    }

    /// Predict loaded inputs, all their patches batched together. One result per input, in order;
    /// an input that failed to load keeps its error and does not stop the others.
    pub fn predict_loaded(&self, loaded: Vec<Result<Loaded, EngineError>>) -> Vec<Result<Prediction, EngineError>> {
        let mut results: Vec<Option<Result<Prediction, EngineError>>> = Vec::with_capacity(loaded.len());
        let mut prepared = Vec::new();
        let mut front = Vec::new();
        for (i, item) in loaded.into_iter().enumerate() {
            match item {
                Ok(Loaded { image, decode, preprocess }) => {
                    prepared.push(image);
                    front.push((i, decode, preprocess));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        match self.predict_prepared(&prepared) {
            Ok(predictions) => {
                for ((i, decode, preprocess), prediction) in front.into_iter().zip(predictions) {
                    results[i] = Some(prediction.map(|mut p| {
                        p.timings.decode = decode;
                        p.timings.preprocess = preprocess;
                        p
                    }));
                }
            }
            Err(e) => {
                // The whole backend call failed: every image of the batch gets the same error.
                // (Anything else from already-decoded images would be a bug.)
                for (i, ..) in front {
                    results[i] = Some(Err(match &e {
                        EngineError::Backend { error, .. } => EngineError::from(error.clone()),
                        other => EngineError::Internal(other.to_string()),
                    }));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(EngineError::Internal("an input lost its result".into()))))
            .collect()
    }

    /// Predict a batch of inputs (files, encoded bytes or pixels), their patches batched through
    /// the backend together. One result per input, in order; errors name the input.
    pub fn predict_batch(&self, inputs: &[Input<'_>]) -> Vec<Result<Prediction, EngineError>> {
        let loaded = inputs.iter().map(|input| self.load(input)).collect();
        self.predict_loaded(loaded)
            .into_iter()
            .zip(inputs)
            .map(|(r, input)| r.map_err(|e| input.name_error(e)))
            .collect()
    }

    /// Predict one input: a file, encoded bytes (PNG, JPEG, DICOM) or pixels of any size.
    pub fn predict(&self, input: Input<'_>) -> Result<Prediction, EngineError> {
        let mut results = self.predict_batch(std::slice::from_ref(&input));
        results.pop().unwrap_or_else(|| Err(EngineError::Internal("no result for one input".into())))
    }

    /// Predict many inputs in batches of `images_per_batch`, with decoding and preprocessing of
    /// the next batch (in parallel) overlapping the backend's work on the current one, so that
    /// the cores do not idle in turn. At most two batches are loaded at any time, whatever the
    /// number of inputs. `on_result(index, result)` is called once per input, in input order
    /// (errors name their input); when it returns an error, the work stops and that error is
    /// returned.
    pub fn predict_pipelined<E>(
        &self,
        inputs: &[Input<'_>],
        images_per_batch: usize,
        mut on_result: impl FnMut(usize, Result<Prediction, EngineError>) -> Result<(), E>,
    ) -> Result<(), E> {
        use rayon::prelude::*;
        let batches: Vec<&[Input<'_>]> = inputs.chunks(images_per_batch.max(1)).collect();
        std::thread::scope(|scope| {
            // Capacity 1: the loader prepares batch k+1 while batch k runs, then waits.
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<Result<Loaded, EngineError>>>(1);
            scope.spawn(move || {
                for batch in &batches {
                    let loaded = batch.par_iter().map(|input| self.load(input)).collect();
                    if sender.send(loaded).is_err() {
                        return; // the consumer stopped early
                    }
                }
            });
            let mut index = 0;
            for loaded in receiver {
                for result in self.predict_loaded(loaded) {
                    let input = &inputs[index];
                    on_result(index, result.map_err(|e| input.name_error(e)))?;
                    index += 1;
                }
            }
            Ok(())
        })
    }

    /// Decode, preprocess and predict image files. One result per path, in order; a bad file
    /// gets an error naming it and does not stop the others.
    pub fn predict_paths(&self, paths: &[PathBuf]) -> Vec<Result<Prediction, EngineError>> {
        let inputs: Vec<Input<'_>> = paths.iter().map(|p| Input::Path(p)).collect();
        self.predict_batch(&inputs)
    }

    /// The prediction's saliency, upsampled to the model input: `[classes][side][side]`, raw
    /// patch logits or scaled by the image probability, each patch's value over its square.
    pub fn saliency(&self, prediction: &Prediction, kind: MapKind) -> Vec<f32> {
        let m = &self.model;
        let values = explain::patch_saliency(&prediction.patch_logits, &prediction.logits, kind);
        explain::coarse_map(&values, m.grid(), m.patch_size(), m.num_classes())
    }

    /// The paper's overlay figure for each of `classes` (indices in model order), as RGB PNG files:
    /// the `kind` saliency, normalised as the stored maps are, in [`render::overlay_rgb`]'s colours
    /// (saturating at `logit_range`, default the model's own) over the image the model saw. What
    /// `medpatch predict --out` writes as `<name>.<class>.png` (without `--shift-steps`).
    pub fn overlay_pngs(
        &self,
        prediction: &Prediction,
        classes: &[usize],
        kind: MapKind,
        logit_range: Option<f32>,
    ) -> Result<Vec<Vec<u8>>, EngineError> {
        let (side, count) = (self.model.image_size(), self.model.num_classes());
        if let Some(&c) = classes.iter().find(|&&c| c >= count) {
            return Err(EngineError::Input(format!("class index {c} is out of range: the model has {count} classes")));
        }
        if classes.is_empty() {
            return Ok(Vec::new());
        }
        let range = logit_range.unwrap_or_else(|| self.model.metadata.overlay_logit_range());
        let map = self.saliency(prediction, kind);
        classes
            .iter()
            .map(|&c| {
                let normalised = explain::normalise(&map[c * side * side..(c + 1) * side * side]);
                let rgb = crate::render::overlay_rgb(&prediction.image, &normalised, range);
                crate::render::png_rgb8(side as u32, side as u32, &rgb)
                    .map_err(|e| EngineError::Internal(format!("overlay of class {c}: {e}")))
            })
            .collect()
    }

    /// Any map of a prediction, `[classes][side][side]` in patch logits: each patch's value over
    /// its square (`shift_steps` 1) or the paper's dense map at S × S shifts (S² forward passes of
    /// the image, S a power of two up to the patch size, checked), raw or scaled by the image
    /// probability. The one place maps are composed: the CLI, the C ABI, Python and the
    /// evaluation all call it.
    pub fn map(&self, prediction: &Prediction, kind: MapKind, shift_steps: usize) -> Result<Vec<f32>, EngineError> {
        if shift_steps == 1 {
            return Ok(self.saliency(prediction, kind));
        }
        let mut values = self.dense_map(&prediction.image, shift_steps)?.values;
        explain::apply_map_kind(&mut values, &prediction.logits, kind);
        Ok(values)
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
        let per_call = self.images_per_batch();
        let mut window = Vec::new();
        let mut patches = Vec::new();
        for group in shifts.chunks(per_call) {
            patches.clear();
            for &(dr, dc) in group {
                explain::shifted_window(&image.pixels, side, dr, dc, &mut window);
                tile::tile_into(&window, side, patch, &mut patches);
            }
            let logits = self.backend.run(&patches, group.len() * grid * grid)?;
            if let Some(i) = logits.iter().position(|z| !z.is_finite()) {
                return Err(EngineError::from(BackendError::NonFinite {
                    value: logits[i],
                    patch: i / classes,
                    class: self.model.metadata.classes[i % classes].clone(),
                }));
            }
            for (&(dr, dc), values) in group.iter().zip(logits.chunks_exact(grid * grid * classes)) {
                acc.add(values, dr, dc);
            }
        }
        Ok(DenseMap { shift_steps, values: acc.finish(), side, elapsed: started.elapsed() })
    }
}

/// One image to predict.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A PNG, JPEG or DICOM file.
    Path(&'a Path),
    /// An encoded PNG, JPEG or DICOM file in memory; `name` labels it in errors.
    Bytes { bytes: &'a [u8], name: &'a str },
    /// Grayscale pixels in [0, 1] of any size: the seed's crop and resize are applied.
    Image(&'a GrayImage),
}

impl Input<'_> {
    /// What errors call this input.
    pub fn label(&self) -> String {
        match self {
            Input::Path(p) => p.display().to_string(),
            Input::Bytes { name, .. } => name.to_string(),
            Input::Image(image) => format!("pixel buffer ({}×{})", image.width, image.height),
        }
    }

    /// Make an error name this input, unless it already does (decode errors name their file).
    fn name_error(&self, error: EngineError) -> EngineError {
        let label = self.label();
        match error {
            EngineError::Backend { input: None, error } => EngineError::Backend { input: Some(label), error },
            EngineError::Input(m) if !m.starts_with(&label) => EngineError::Input(format!("{label}: {m}")),
            other => other,
        }
    }
}

/// Pixels handed over directly must be a whole, finite image in [0, 1] within the decoders'
/// size limits: the same promises a decoded file keeps.
fn check_pixels(image: &GrayImage) -> Result<(), EngineError> {
    let (w, h) = (image.width as u64, image.height as u64);
    if w == 0 || h == 0 {
        return Err(EngineError::Input(format!("the image has no pixels ({w}×{h})")));
    }
    if w > decode::MAX_SIDE as u64 || h > decode::MAX_SIDE as u64 || w * h > decode::MAX_PIXELS {
        return Err(EngineError::Input(format!(
            "the image is {w}×{h}, over the limit of {} pixels per side and {} pixels",
            decode::MAX_SIDE,
            decode::MAX_PIXELS
        )));
    }
    if image.pixels.len() as u64 != w * h {
        return Err(EngineError::Input(format!("{} values are not a {w}×{h} image", image.pixels.len())));
    }
    if let Some(v) = image.pixels.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(EngineError::Input(format!(
            "pixel value {v} is outside [0, 1] (scale 8-bit data by 1/255, 16-bit by 1/65535)"
        )));
    }
    Ok(())
}

/// An input decoded and preprocessed: the `image_size²` image the model will see.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub image: GrayImage,
    pub decode: Duration,
    pub preprocess: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn engine_is_send_and_sync() {
        assert_send_sync::<Engine>();
    }

    fn tract_engine() -> Engine {
        Engine::builder().provider(ProviderChoice::Only(Provider::Tract)).threads(1).build().unwrap()
    }

    #[test]
    fn empty_and_all_failed_batches_are_ordinary() {
        let engine = tract_engine();
        assert!(engine.run_patches(&[], 0).unwrap().is_empty());
        assert!(engine.predict_prepared(&[]).unwrap().is_empty());
        assert!(engine.predict_paths(&[]).is_empty());
        let bytes = Input::Bytes { bytes: b"not an image", name: "notes.png" };
        let results = engine.predict_batch(&[bytes, bytes]);
        assert_eq!(results.len(), 2);
        for r in results {
            let message = r.unwrap_err().to_string();
            assert!(message.starts_with("notes.png: unrecognised file format"), "{message}");
        }
        let err = engine.run_patches(&[0.0; 10], 1).unwrap_err().to_string();
        assert!(err.contains("not 1 patches"), "{err}");
    }

    /// A backend that always fails, or always returns `Ok` of one value.
    struct Broken(Result<f32, BackendError>);

    impl Backend for Broken {
        fn provider(&self) -> Provider {
            Provider::Tract
        }
        fn run(&self, _: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
            self.0.clone().map(|v| vec![v; n * 14])
        }
    }

    #[test]
    fn backend_failures_are_typed_and_name_each_image() {
        let png = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/00001369_000.png")).unwrap();
        let inputs = [
            Input::Bytes { bytes: &png, name: "a.png" },
            Input::Bytes { bytes: b"junk", name: "b.png" },
            Input::Bytes { bytes: &png, name: "c.png" },
        ];
        let failing = Engine {
            backend: Box::new(Broken(Err(BackendError::runtime(Provider::Tract, "out of memory")))),
            ..tract_engine()
        };
        let results = failing.predict_batch(&inputs);
        for (result, name) in [(&results[0], "a.png"), (&results[2], "c.png")] {
            match result {
                Err(e @ EngineError::Backend { input: Some(input), error: BackendError::Runtime { .. } }) => {
                    assert_eq!(input, name);
                    assert_eq!(e.to_string(), format!("{name}: backend failed: tract (pure Rust): out of memory"));
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(matches!(results[1], Err(EngineError::Decode(_))), "{:?}", results[1]);

        let nan = Engine { backend: Box::new(Broken(Ok(f32::NAN))), ..tract_engine() };
        match nan.predict(inputs[0]) {
            Err(EngineError::Backend {
                input: Some(input),
                error: BackendError::NonFinite { patch: 0, class, .. },
            }) => {
                assert_eq!((input.as_str(), class.as_str()), ("a.png", "No Finding"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn overlays_are_the_saliency_in_the_overlay_colours() {
        let engine = tract_engine();
        let png = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/00001369_000.png")).unwrap();
        let p = engine.predict(Input::Bytes { bytes: &png, name: "a.png" }).unwrap();
        let pngs = engine.overlay_pngs(&p, &[2, 9], MapKind::Scaled, None).unwrap();
        assert_eq!(pngs.len(), 2);
        let map = engine.saliency(&p, MapKind::Scaled);
        let range = engine.model().metadata.overlay_logit_range();
        let plane = 512 * 512;
        let expected = crate::render::overlay_rgb(&p.image, &explain::normalise(&map[9 * plane..10 * plane]), range);
        assert_eq!(pngs[1], crate::render::png_rgb8(512, 512, &expected).unwrap());
        assert_ne!(pngs[0], pngs[1]);
        assert!(engine.overlay_pngs(&p, &[], MapKind::Raw, None).unwrap().is_empty());
        let err = engine.overlay_pngs(&p, &[14], MapKind::Raw, None).unwrap_err().to_string();
        assert!(err.contains("class index 14"), "{err}");
    }

    #[test]
    fn pixel_inputs_are_checked_and_prepared_like_files() {
        let engine = tract_engine();
        let bad = GrayImage { width: 4, height: 4, pixels: vec![2.0; 16] };
        let err = engine.predict(Input::Image(&bad)).unwrap_err().to_string();
        assert!(err.contains("outside [0, 1]") && err.starts_with("pixel buffer (4×4)"), "{err}");
        let short = GrayImage { width: 4, height: 4, pixels: vec![0.5; 15] };
        assert!(engine.predict(Input::Image(&short)).is_err());
        // Any size: cropped and resized as a decoded file would be.
        let wide =
            GrayImage { width: 700, height: 600, pixels: (0..420_000).map(|i| (i % 701) as f32 / 700.0).collect() };
        let p = engine.predict(Input::Image(&wide)).unwrap();
        assert_eq!((p.image.width, p.image.height), (512, 512));
        assert_eq!(p.image, engine.prepare(&wide));
        let maps = engine.saliency(&p, MapKind::Raw);
        assert_eq!(maps.len(), 14 * 512 * 512);
        assert_eq!(maps[0], p.patch_logits[0]);
        assert_eq!(maps[13 * 512 * 512 + 511 * 512 + 511], p.patch_logits[63 * 14 + 13]);
    }
}
