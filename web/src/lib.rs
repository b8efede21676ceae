//! MedicalPatchNet in the browser: the engine's decode → preprocess → tile → tract → explain →
//! render path compiled to WebAssembly, behind a small JavaScript API (wasm-bindgen). The X-ray
//! never leaves the page: decoding, the model and the maps all run in the browser.
//!
//! ```js
//! import init, { Explainer } from "./pkg/medpatch_web.js";
//! await init();
//! const explainer = new Explainer();             // the embedded demo model
//! // or Explainer.fromOnnx(bytes, "model.onnx") // any medpatch .onnx
//! const result = explainer.predict(bytes, "chest.png");
//! result.probabilities;                          // Float32Array, one per class
//! const rgba = explainer.overlay(result, 3);     // side × side RGBA, the CLI's colours
//! ```
//!
//! Errors (an unreadable file, a model that is not a medpatch model) are thrown as JavaScript
//! `Error`s with the engine's message. WebAssembly cannot unwind: a panic (a bug, or hostile input
//! reaching an assert in a dependency) stops the instance, and its message is left in
//! `globalThis.medpatchPanic` for the page to show before it starts a fresh instance.
#![cfg(target_arch = "wasm32")]

use medpatch_engine::explain;
use medpatch_engine::render;
use medpatch_engine::{Engine, EngineError, Input, MapKind, Model, ModelOrigin, Provider, ProviderChoice};
use wasm_bindgen::prelude::*;

/// Runs when the module is instantiated: panics leave their message where the page can read it.
#[wasm_bindgen(start)]
fn start() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = format!("medpatch stopped: {info}");
        // Reflect::set on the global object cannot fail; nothing to do if it did.
        let _ = js_sys::Reflect::set(&js_sys::global(), &"medpatchPanic".into(), &message.as_str().into());
        previous(info);
    }));
}

fn js_error(error: EngineError) -> JsError {
    JsError::new(&error.to_string())
}

/// A loaded model and its tract plan, ready to explain X-rays.
#[wasm_bindgen]
pub struct Explainer {
    engine: Engine,
}

#[wasm_bindgen]
impl Explainer {
    /// The embedded demo model (trained on synthetic X-rays: see [`Explainer::notice`]).
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<Explainer, JsError> {
        Self::build(Model::from_bytes(medpatch_engine::DEFAULT_MODEL_BYTES.into(), ModelOrigin::Embedded))
    }

    /// A medpatch `.onnx` file's bytes (checked as the CLI checks a `--model`); `name` labels it.
    #[wasm_bindgen(js_name = fromOnnx)]
    pub fn from_onnx(bytes: Vec<u8>, name: String) -> Result<Explainer, JsError> {
        Self::build(Model::from_bytes(bytes.into(), ModelOrigin::Memory(name)))
    }

    fn build(model: Result<Model, EngineError>) -> Result<Explainer, JsError> {
        // One thread: the browser gives this module none to spare (no SharedArrayBuffer here).
        let engine = Engine::builder()
            .model(medpatch_engine::ModelSource::Loaded(model.map_err(js_error)?))
            .provider(ProviderChoice::Only(Provider::Tract))
            .threads(1)
            .build()
            .map_err(js_error)?;
        Ok(Explainer { engine })
    }

    /// The model's class names, in its output order.
    pub fn classes(&self) -> Vec<String> {
        self.engine.model().metadata.classes.clone()
    }

    /// The model's name (its file name, or "embedded default model").
    #[wasm_bindgen(getter, js_name = modelName)]
    pub fn model_name(&self) -> String {
        self.engine.model().origin.to_string()
    }

    #[wasm_bindgen(getter)]
    pub fn architecture(&self) -> String {
        self.engine.model().metadata.architecture.clone()
    }

    /// What the model is not, for the embedded demo model (the same rule as `medpatch predict`'s
    /// notice: from the model's own metadata); `undefined` for a model the user picked.
    pub fn notice(&self) -> Option<String> {
        let model = self.engine.model();
        if model.origin != ModelOrigin::Embedded {
            return None;
        }
        let what = if model.metadata.source.starts_with("random initialisation") {
            "an untrained placeholder with random weights: its outputs mean nothing"
        } else {
            "a demo model trained on synthetic X-rays only: on real X-rays its outputs mean nothing"
        };
        Some(format!(
            "The embedded model ({}) is {what}. It is not a diagnostic model: do not use its outputs for \
             clinical decisions.",
            model.metadata.architecture
        ))
    }

    /// Side of the image the model sees (and of overlays), in pixels.
    #[wasm_bindgen(getter)]
    pub fn side(&self) -> usize {
        self.engine.model().image_size()
    }

    /// Patch logit at which the overlay colours saturate (the model's own range).
    #[wasm_bindgen(getter, js_name = overlayLogitRange)]
    pub fn overlay_logit_range(&self) -> f32 {
        self.engine.model().metadata.overlay_logit_range()
    }

    /// Decode a PNG, JPEG or DICOM file's bytes and explain it; `name` labels it in errors.
    pub fn predict(&self, bytes: &[u8], name: Option<String>) -> Result<Prediction, JsError> {
        let name = name.unwrap_or_else(|| "the image".into());
        let inner = self.engine.predict(Input::Bytes { bytes, name: &name }).map_err(js_error)?;
        Ok(Prediction { inner })
    }

    /// The overlay of `class` for `result`, as `medpatch predict --out` draws it (raw patch logits,
    /// red = evidence for, blue = against, blended over the image the model saw): `side × side`
    /// RGBA pixels, row-major, opaque (for `ImageData`).
    pub fn overlay(&self, result: &Prediction, class: usize) -> Result<Vec<u8>, JsError> {
        let model = self.engine.model();
        let (side, classes) = (model.image_size(), model.num_classes());
        if class >= classes {
            return Err(JsError::new(&format!("class index {class} is out of range: the model has {classes} classes")));
        }
        let map = self.engine.map(&result.inner, MapKind::Raw, 1).map_err(js_error)?;
        let normalised = explain::normalise(&map[class * side * side..(class + 1) * side * side]);
        let rgb = render::overlay_rgb(&result.inner.image, &normalised, model.metadata.overlay_logit_range());
        Ok(opaque_rgba(&rgb))
    }
}

/// RGB8 → RGBA8 with alpha 255.
fn opaque_rgba(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect()
}

/// One X-ray's result: the image logits, their probabilities and the patch logits (the
/// explanation), with the time each stage took.
#[wasm_bindgen]
pub struct Prediction {
    inner: medpatch_engine::Prediction,
}

#[wasm_bindgen]
impl Prediction {
    /// sigmoid(logits), one per class.
    #[wasm_bindgen(getter)]
    pub fn probabilities(&self) -> Vec<f32> {
        self.inner.probabilities.clone()
    }

    /// Image logits, one per class: the mean of the patch logits.
    #[wasm_bindgen(getter)]
    pub fn logits(&self) -> Vec<f32> {
        self.inner.logits.clone()
    }

    /// `[grid · grid][classes]`, patches row-major.
    #[wasm_bindgen(getter, js_name = patchLogits)]
    pub fn patch_logits(&self) -> Vec<f32> {
        self.inner.patch_logits.clone()
    }

    /// Patches per side.
    #[wasm_bindgen(getter)]
    pub fn grid(&self) -> usize {
        self.inner.grid
    }

    /// The image the model saw (after the centre crop and resize), as opaque gray RGBA.
    pub fn image(&self) -> Vec<u8> {
        // As render::png_gray8 quantises it.
        let gray = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        self.inner.image.pixels.iter().flat_map(|&v| [gray(v), gray(v), gray(v), 255]).collect()
    }

    /// Milliseconds per stage: decode, preprocess, tile, backend (the model), aggregate.
    #[wasm_bindgen(getter, js_name = timingsMs)]
    pub fn timings_ms(&self) -> Vec<f64> {
        let t = &self.inner.timings;
        [t.decode, t.preprocess, t.tile, t.backend, t.aggregate].iter().map(|d| d.as_secs_f64() * 1e3).collect()
    }
}
