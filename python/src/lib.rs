//! `medpatch._medpatch`: the Python face of `medpatch-engine`. A thin layer: it converts Python
//! inputs (paths, bytes, numpy arrays) into engine inputs, releases the GIL while the engine
//! decodes and runs, and hands results back as numpy arrays built from the engine's own vectors
//! (moved, not copied). Errors become `medpatch.Error` subclasses or the built-in exception a
//! Python user expects (`FileNotFoundError`, `ValueError`, `TypeError`); panics become
//! `medpatch.Error`, never a crash.

use medpatch_engine::decode::{DecodeError as EngineDecodeError, GrayImage};
use medpatch_engine::{
    Engine as RustEngine, EngineError, Input, MapKind, ModelOrigin, ModelSource, Prediction, ProviderChoice, explain,
    render,
};
use numpy::{PyArray1, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods, dtype};
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyPermissionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

pyo3::create_exception!(_medpatch, Error, PyException, "Base class of medpatch's own errors.");
pyo3::create_exception!(
    _medpatch,
    DecodeError,
    Error,
    "An image could not be decoded (corrupt, truncated, unsupported)."
);
pyo3::create_exception!(_medpatch, ModelError, Error, "The model could not be read or breaks the medpatch contract.");
pyo3::create_exception!(
    _medpatch,
    ProviderUnavailableError,
    Error,
    "The requested execution provider cannot run here."
);
pyo3::create_exception!(_medpatch, BackendError, Error, "The backend failed while running the model.");

/// The Python exception for an engine error.
fn py_error(error: EngineError) -> PyErr {
    let message = medpatch_engine::backend::in_terms_of(&error.to_string(), medpatch_engine::backend::FrontEnd::Python);
    match &error {
        EngineError::Decode(decode) => match decode.problem() {
            EngineDecodeError::Io(io) => {
                let filename = match decode {
                    EngineDecodeError::InFile { path, .. } => path.display().to_string(),
                    _ => String::new(),
                };
                let errno = io.raw_os_error().unwrap_or(0);
                match io.kind() {
                    std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err((errno, message, filename)),
                    std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err((errno, message, filename)),
                    _ => PyOSError::new_err((errno, message, filename)),
                }
            }
            _ => DecodeError::new_err(message),
        },
        EngineError::Model { .. } => ModelError::new_err(message),
        EngineError::ProviderUnavailable { .. } => ProviderUnavailableError::new_err(message),
        EngineError::Backend { .. } => BackendError::new_err(message),
        EngineError::Input(_) => PyValueError::new_err(message),
        EngineError::Internal(_) => Error::new_err(message),
    }
}

/// Run engine work with the GIL released; a panic becomes `medpatch.Error`.
fn detached<T: Send>(py: Python<'_>, work: impl FnOnce() -> Result<T, EngineError> + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(work)))
        .map_err(|panic| {
            let text = medpatch_models::panics::message(&*panic);
            Error::new_err(format!("medpatch panicked (a bug, please report it): {text}"))
        })?
        .map_err(py_error)
}

/// An input converted under the GIL, owned, so that the engine can work on it without the GIL.
enum OwnedInput {
    Path(PathBuf),
    /// A file's bytes, and what error messages call it (a file name, or "<bytes>").
    Bytes(Vec<u8>, String),
    Image(GrayImage),
}

/// What error messages call bytes that came without a name.
const UNNAMED_BYTES: &str = "<bytes>";

impl OwnedInput {
    fn from_python(object: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(bytes) = object.cast::<PyBytes>() {
            return Ok(Self::Bytes(bytes.as_bytes().to_vec(), UNNAMED_BYTES.into()));
        }
        if let Ok(bytes) = object.cast::<PyByteArray>() {
            return Ok(Self::Bytes(bytes.to_vec(), UNNAMED_BYTES.into()));
        }
        if let Ok(array) = object.cast::<PyUntypedArray>() {
            return Ok(Self::Image(gray_image(array)?));
        }
        if let Ok(path) = object.extract::<PathBuf>() {
            return Ok(Self::Path(path));
        }
        Err(PyTypeError::new_err(format!(
            "cannot predict a {}: pass a path (str or os.PathLike), the bytes of a PNG/JPEG/DICOM file, \
             or a 2-D numpy array (float in [0, 1], uint8 or uint16)",
            object.get_type().name()?
        )))
    }

    /// Bytes get `name` in error messages; paths name themselves and arrays have no name.
    fn named(self, name: String) -> Self {
        match self {
            Self::Bytes(bytes, _) => Self::Bytes(bytes, name),
            other => other,
        }
    }

    fn as_input(&self) -> Input<'_> {
        match self {
            Self::Path(path) => Input::Path(path),
            Self::Bytes(bytes, name) => Input::Bytes { bytes, name },
            Self::Image(image) => Input::Image(image),
        }
    }
}

/// A 2-D numpy array as a [0, 1] grayscale image: float32/float64 as they are (checked by the
/// engine), uint8 / 255, uint16 / 65535. Any strides (non-contiguous arrays are read in order).
fn gray_image(array: &Bound<'_, PyUntypedArray>) -> PyResult<GrayImage> {
    let py = array.py();
    let shape = array.shape().to_vec();
    let [height, width] = shape[..] else {
        return Err(PyValueError::new_err(format!(
            "expected a 2-D grayscale array (height, width), got shape {shape:?}; convert colour images to \
             grayscale first"
        )));
    };
    let dt = array.dtype();
    let pixels: Vec<f32> = if dt.is_equiv_to(&dtype::<f32>(py)) {
        array.cast::<numpy::PyArray2<f32>>()?.readonly().as_array().iter().copied().collect()
    } else if dt.is_equiv_to(&dtype::<f64>(py)) {
        array.cast::<numpy::PyArray2<f64>>()?.readonly().as_array().iter().map(|&v| v as f32).collect()
    } else if dt.is_equiv_to(&dtype::<u8>(py)) {
        array.cast::<numpy::PyArray2<u8>>()?.readonly().as_array().iter().map(|&v| v as f32 / 255.0).collect()
    } else if dt.is_equiv_to(&dtype::<u16>(py)) {
        array.cast::<numpy::PyArray2<u16>>()?.readonly().as_array().iter().map(|&v| v as f32 / 65535.0).collect()
    } else {
        return Err(PyTypeError::new_err(format!(
            "array dtype {dt} is not supported: use float32 or float64 in [0, 1], uint8 or uint16"
        )));
    };
    let side = |n: usize| u32::try_from(n).map_err(|_| PyValueError::new_err(format!("{n} pixels is too large")));
    Ok(GrayImage { width: side(width)?, height: side(height)?, pixels })
}

fn map_kind(kind: &str) -> PyResult<MapKind> {
    match kind {
        "raw" => Ok(MapKind::Raw),
        "scaled" => Ok(MapKind::Scaled),
        other => Err(PyValueError::new_err(format!("kind must be 'raw' or 'scaled', not {other:?}"))),
    }
}

/// A read-only numpy array that owns `values` (moved, not copied), in `shape`.
fn frozen_array<'py>(py: Python<'py>, values: Vec<f32>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    let array = PyArray1::from_vec(py, values).reshape(shape)?.into_any();
    array.call_method1("setflags", (false,))?;
    Ok(array)
}

/// The ONNX Runtime library of the `onnxruntime` (or `onnxruntime-gpu`) wheel installed in this
/// Python environment, unless `ORT_DYLIB_PATH` names one already. Found without importing
/// onnxruntime (which is slow and would load a second copy of the library).
fn onnxruntime_wheel_library(py: Python<'_>) -> Option<PathBuf> {
    if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty()) {
        return None;
    }
    medpatch_engine::backend::ort_library_in(&package_folder(py, "onnxruntime")?.join("capi"))
}

/// The `openvino` wheel's C library, found the same way (unless OPENVINO_LIB_PATH is set).
fn openvino_wheel_library(py: Python<'_>) -> Option<PathBuf> {
    if std::env::var_os(medpatch_engine::backend::OPENVINO_LIBRARY_ENV).is_some_and(|p| !p.is_empty()) {
        return None;
    }
    medpatch_engine::backend::openvino_library_in(&package_folder(py, "openvino")?.join("libs"))
}

/// The folder of an importable package, found without importing it.
fn package_folder(py: Python<'_>, package: &str) -> Option<PathBuf> {
    let spec = py.import("importlib.util").ok()?.call_method1("find_spec", (package,)).ok()?;
    let locations: Vec<PathBuf> = spec.getattr("submodule_search_locations").ok()?.extract().ok()?;
    locations.into_iter().next()
}

/// A MedicalPatchNet model on an execution provider.
#[pyclass(frozen, module = "medpatch")]
struct Engine {
    engine: RustEngine,
    classes: Arc<[String]>,
}

/// One image's prediction (Python name `medpatch.Result`).
#[pyclass(frozen, module = "medpatch", name = "Result")]
struct PredictionResult {
    probabilities: Py<PyAny>,
    logits: Py<PyAny>,
    patch_logits: Py<PyAny>,
    image: Py<PyAny>,
    classes: Arc<[String]>,
    provider: &'static str,
    timings: medpatch_engine::Timings,
}

impl PredictionResult {
    fn new(py: Python<'_>, prediction: Prediction, classes: Arc<[String]>) -> PyResult<Self> {
        let (grid, side) = (prediction.grid, prediction.image.width as usize);
        let c = prediction.logits.len();
        Ok(Self {
            probabilities: frozen_array(py, prediction.probabilities, &[c])?.unbind(),
            logits: frozen_array(py, prediction.logits, &[c])?.unbind(),
            patch_logits: frozen_array(py, prediction.patch_logits, &[grid, grid, c])?.unbind(),
            image: frozen_array(py, prediction.image.pixels, &[side, side])?.unbind(),
            classes,
            provider: prediction.provider.name(),
            timings: prediction.timings,
        })
    }

    /// The flat contents of one of the result's arrays.
    fn values(py: Python<'_>, array: &Py<PyAny>) -> PyResult<Vec<f32>> {
        let array = array.bind(py).cast::<numpy::PyArrayDyn<f32>>()?.readonly();
        Ok(array.as_array().iter().copied().collect())
    }
}

#[pymethods]
impl PredictionResult {
    /// sigmoid(logits), float32 (classes,), in model class order.
    #[getter]
    fn probabilities(&self, py: Python<'_>) -> Py<PyAny> {
        self.probabilities.clone_ref(py)
    }
    /// The image's logits (mean of the patch logits), float32 (classes,).
    #[getter]
    fn logits(&self, py: Python<'_>) -> Py<PyAny> {
        self.logits.clone_ref(py)
    }
    /// The explanation: the patch logits, float32 (grid, grid, classes).
    #[getter]
    fn patch_logits(&self, py: Python<'_>) -> Py<PyAny> {
        self.patch_logits.clone_ref(py)
    }
    /// What the model saw: the preprocessed image, float32 (size, size) in [0, 1].
    #[getter]
    fn image(&self, py: Python<'_>) -> Py<PyAny> {
        self.image.clone_ref(py)
    }
    /// Class names, in model order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.classes.to_vec()
    }
    /// The provider that computed this result ("cpu", "tract", …).
    #[getter]
    fn provider(&self) -> &'static str {
        self.provider
    }
    /// Milliseconds per pipeline stage: decode, preprocess, tile, backend, aggregate.
    #[getter]
    fn timings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = &self.timings;
        let dict = PyDict::new(py);
        for (stage, d) in [
            ("decode", t.decode),
            ("preprocess", t.preprocess),
            ("tile", t.tile),
            ("backend", t.backend),
            ("aggregate", t.aggregate),
        ] {
            dict.set_item(stage, d.as_secs_f64() * 1e3)?;
        }
        Ok(dict)
    }
    /// {class name: probability}.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (class, p) in self.classes.iter().zip(Self::values(py, &self.probabilities)?) {
            dict.set_item(class, p)?;
        }
        Ok(dict)
    }
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let probabilities = Self::values(py, &self.probabilities)?;
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        let top: Vec<String> =
            order.iter().take(3).map(|&i| format!("{} {:.3}", self.classes[i], probabilities[i])).collect();
        Ok(format!("<medpatch.Result provider={} top: {}>", self.provider, top.join(", ")))
    }
}

impl Engine {
    /// The result's prediction, rebuilt for the engine's map functions (the arrays are small,
    /// except the image, which only the dense map needs).
    fn prediction(&self, py: Python<'_>, result: &PredictionResult, with_image: bool) -> PyResult<Prediction> {
        let model = self.engine.model();
        let logits = PredictionResult::values(py, &result.logits)?;
        if logits.len() != model.num_classes() || result.classes[..] != self.classes[..] {
            return Err(PyValueError::new_err("the result was made by an engine with a different model"));
        }
        let side = model.image_size() as u32;
        let pixels = if with_image { PredictionResult::values(py, &result.image)? } else { Vec::new() };
        Ok(Prediction {
            probabilities: PredictionResult::values(py, &result.probabilities)?,
            logits,
            patch_logits: PredictionResult::values(py, &result.patch_logits)?,
            grid: model.grid(),
            image: GrayImage { width: side, height: side, pixels },
            provider: self.engine.provider(),
            timings: result.timings,
        })
    }

    fn class_index(&self, class: &Bound<'_, PyAny>) -> PyResult<usize> {
        if let Ok(i) = class.extract::<usize>() {
            return if i < self.classes.len() {
                Ok(i)
            } else {
                Err(PyValueError::new_err(format!("class index {i} is out of range (0..{})", self.classes.len())))
            };
        }
        let name: String = class.extract()?;
        self.classes.iter().position(|c| c.eq_ignore_ascii_case(name.trim())).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown class {name:?}; the model's classes are: {}",
                self.classes.join(", ")
            ))
        })
    }

    fn map(
        &self,
        py: Python<'_>,
        result: &PredictionResult,
        kind: MapKind,
        shift_steps: Option<usize>,
    ) -> PyResult<Vec<f32>> {
        // The dense map needs the preprocessed image; the coarse one only the patch logits.
        let prediction = self.prediction(py, result, shift_steps.is_some())?;
        detached(py, || self.engine.map(&prediction, kind, shift_steps.unwrap_or(1)))
    }
}

#[pymethods]
impl Engine {
    /// Engine(model=None, *, provider="auto", precision="f32", threads=0, batch_size=None,
    ///        ort_library=None, openvino_library=None, keep_f32=None)
    ///
    /// model: None for the embedded demo model (trained on synthetic images: NOT a diagnostic
    /// model), a path to an ONNX file written by `medpatch export`, or its bytes.
    /// provider: "auto" (TensorRT → CUDA → ONNX Runtime CPU → OpenVINO → tract), "tensorrt",
    /// "cuda", "cpu", "openvino" or "tract". precision: "f32", "bf16" (OpenVINO on CPUs with
    /// BF16) or "fp16" (TensorRT; tract on ARM CPUs with FP16), checked against f32 at start. threads: intra-op threads (0: all
    /// cores). batch_size: patches per backend call. ort_library / openvino_library: the shared
    /// library to load (default: ORT_DYLIB_PATH / OPENVINO_LIB_PATH, beside the executable, or the
    /// onnxruntime / openvino wheel of this Python environment). keep_f32: at bf16, the layers
    /// left in f32 (a list of presets "stem", "head", "classifier", "se", "none" or layer names;
    /// default ["stem", "classifier"]).
    #[new]
    #[pyo3(signature = (
        model=None, *, provider="auto", precision="f32", threads=0, batch_size=None, ort_library=None,
        openvino_library=None, keep_f32=None
    ))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn new(
        py: Python<'_>,
        model: Option<&Bound<'_, PyAny>>,
        provider: &str,
        precision: &str,
        threads: usize,
        batch_size: Option<usize>,
        ort_library: Option<PathBuf>,
        openvino_library: Option<PathBuf>,
        keep_f32: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let provider: ProviderChoice = provider.parse().map_err(PyValueError::new_err)?;
        let precision: medpatch_engine::Precision = precision.parse().map_err(PyValueError::new_err)?;
        let source = match model {
            None => ModelSource::Default,
            Some(m) if m.is_none() => ModelSource::Default,
            Some(m) => match (m.cast::<PyBytes>(), m.extract::<PathBuf>()) {
                (Ok(bytes), _) => {
                    let bytes: Arc<[u8]> = bytes.as_bytes().into();
                    ModelSource::Loaded(
                        medpatch_engine::Model::from_bytes(bytes, ModelOrigin::Memory("<bytes>".into()))
                            .map_err(py_error)?,
                    )
                }
                (_, Ok(path)) if !path.exists() => {
                    return Err(PyFileNotFoundError::new_err((
                        2,
                        format!("model {} does not exist", path.display()),
                        path.display().to_string(),
                    )));
                }
                (_, Ok(path)) => ModelSource::Path(path),
                _ => return Err(PyTypeError::new_err("model must be None, a path (str or os.PathLike) or bytes")),
            },
        };
        if batch_size == Some(0) {
            return Err(PyValueError::new_err("batch_size must be at least 1 patch"));
        }
        let mut builder = RustEngine::builder().model(source).provider(provider).threads(threads);
        if let Some(patches) = batch_size {
            builder = builder.batch_size(patches);
        }
        let options = medpatch_engine::BackendOptions {
            threads,
            precision,
            ort_library: ort_library.or_else(|| onnxruntime_wheel_library(py)),
            openvino_library: openvino_library.or_else(|| openvino_wheel_library(py)),
            keep_f32,
            ..Default::default()
        };
        let builder = builder.backend_options(options);
        let engine = detached(py, move || builder.build())?;
        let classes: Arc<[String]> = engine.model().metadata.classes.clone().into();
        Ok(Self { engine, classes })
    }

    /// Predict one X-ray: a path (PNG, JPEG, DICOM), the bytes of such a file, or a 2-D numpy
    /// array (float in [0, 1], uint8 or uint16; any size: centre-cropped and resized as files are).
    fn predict(&self, py: Python<'_>, image: &Bound<'_, PyAny>) -> PyResult<PredictionResult> {
        let input = OwnedInput::from_python(image)?;
        let prediction = detached(py, || self.engine.predict(input.as_input()))?;
        PredictionResult::new(py, prediction, self.classes.clone())
    }

    /// Predict many X-rays in batches (their patches go through the backend together, and the
    /// next images are decoded meanwhile). Returns one item per input, in order: a Result, or the
    /// exception object for an input that failed (not raised), so one bad file does not lose the
    /// others. images_per_batch: default from the engine's batch_size (64 patches = 1 image).
    /// names: one per image, what error messages call a bytes input (e.g. the file it was read
    /// from; default "<bytes>").
    #[pyo3(signature = (images, *, images_per_batch=None, names=None))]
    fn predict_many(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        images_per_batch: Option<usize>,
        names: Option<Vec<String>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let items = images.try_iter()?.collect::<PyResult<Vec<_>>>()?;
        if let Some(names) = &names
            && names.len() != items.len()
        {
            return Err(PyValueError::new_err(format!(
                "names has {} entries for {} images: give one name per image",
                names.len(),
                items.len()
            )));
        }
        let converted: Vec<PyResult<OwnedInput>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let input = OwnedInput::from_python(item)?;
                Ok(match &names {
                    Some(names) => input.named(names[i].clone()),
                    None => input,
                })
            })
            .collect();
        let valid: Vec<Input<'_>> = converted.iter().flatten().map(OwnedInput::as_input).collect();
        let per_batch = images_per_batch.unwrap_or_else(|| self.engine.images_per_batch());
        // Pipelined, without the GIL: the next images are decoded while the backend runs.
        let mut predictions = Vec::with_capacity(valid.len());
        detached(py, || {
            self.engine.predict_pipelined(&valid, per_batch, |_, r| -> Result<(), EngineError> {
                predictions.push(r);
                Ok(())
            })
        })?;
        let mut predictions = predictions.into_iter();
        let mut out = Vec::with_capacity(converted.len());
        for item in &converted {
            let object = match item {
                Err(e) => e.clone_ref(py).into_value(py).into_any(),
                Ok(_) => match predictions.next() {
                    Some(Ok(p)) => Py::new(py, PredictionResult::new(py, p, self.classes.clone())?)?.into_any(),
                    Some(Err(e)) => py_error(e).into_value(py).into_any(),
                    None => Error::new_err("internal error: an input lost its result").into_value(py).into_any(),
                },
            };
            out.push(object);
        }
        Ok(out)
    }

    /// The saliency map at the model's input resolution, float32 (classes, size, size): each
    /// patch's raw logit (kind="raw") or logit × image probability (kind="scaled") over its square.
    #[pyo3(signature = (result, kind="raw"))]
    fn saliency<'py>(&self, py: Python<'py>, result: &PredictionResult, kind: &str) -> PyResult<Bound<'py, PyAny>> {
        let kind = map_kind(kind)?;
        let (c, side) = (self.classes.len(), self.engine.model().image_size());
        frozen_array(py, self.map(py, result, kind, None)?, &[c, side, side])
    }

    /// The paper's dense shift-averaged map with shift_steps² shifted forward passes (a power of
    /// two up to the patch size; 8 costs 64 predictions), float32 (classes, size, size) in logits.
    #[pyo3(signature = (result, shift_steps=8, kind="raw"))]
    fn dense_map<'py>(
        &self,
        py: Python<'py>,
        result: &PredictionResult,
        shift_steps: usize,
        kind: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = map_kind(kind)?;
        let (c, side) = (self.classes.len(), self.engine.model().image_size());
        frozen_array(py, self.map(py, result, kind, Some(shift_steps))?, &[c, side, side])
    }

    /// DICOM results of `result` for the DICOM file `source` it was predicted from, written into
    /// the folder `out_dir` (made if missing): a TID 1500 Comprehensive 3D SR with every finding's
    /// probability, a FRACTIONAL segmentation of the patch maps and a secondary-capture overlay
    /// per mapped class, in the source's study. `classes`: names or indices to map (default:
    /// those called present, else the most probable). Returns the paths written. A source that is
    /// not DICOM raises ValueError.
    #[pyo3(signature = (result, source, out_dir, classes=None))]
    fn write_dicom(
        &self,
        py: Python<'_>,
        result: &PredictionResult,
        source: PathBuf,
        out_dir: PathBuf,
        classes: Option<Vec<Bound<'_, PyAny>>>,
    ) -> PyResult<Vec<String>> {
        let prediction = self.prediction(py, result, false)?;
        let chosen = classes.map(|list| list.iter().map(|c| self.class_index(c)).collect::<PyResult<Vec<usize>>>());
        let chosen = chosen.transpose()?;
        let written = py
            .detach(|| {
                medpatch_dicom_out::write_for_file(
                    &self.engine,
                    &prediction,
                    &source,
                    &out_dir,
                    chosen.as_deref(),
                    None,
                )
            })
            .map_err(|e| match e {
                medpatch_dicom_out::DicomOutError::NotDicom { .. } | medpatch_dicom_out::DicomOutError::Findings(_) => {
                    PyValueError::new_err(e.to_string())
                }
                other => Error::new_err(other.to_string()),
            })?;
        Ok(written.iter().map(|p| p.display().to_string()).collect())
    }

    /// The paper's overlay colours for one class, uint8 RGBA (size, size, 4) with alpha 128: red
    /// = evidence for, blue = against, white = neutral. Draw it over `result.image` (e.g.
    /// `plt.imshow(r.image, cmap="gray"); plt.imshow(layer)`). `cls`: a class name or index.
    /// Colours saturate at a patch logit of ±`logit_range` (default: the model's own range,
    /// `Engine.overlay_logit_range`).
    #[pyo3(signature = (result, cls, kind="raw", shift_steps=None, logit_range=None))]
    fn overlay<'py>(
        &self,
        py: Python<'py>,
        result: &PredictionResult,
        cls: &Bound<'_, PyAny>,
        kind: &str,
        shift_steps: Option<usize>,
        logit_range: Option<f32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let logit_range = match logit_range {
            None => self.engine.model().metadata.overlay_logit_range(),
            Some(range) => medpatch_models::contract::check_overlay_logit_range(range)
                .map_err(|problem| PyValueError::new_err(format!("logit_range={range}: {problem}")))?,
        };
        let index = self.class_index(cls)?;
        let kind = map_kind(kind)?;
        let side = self.engine.model().image_size();
        let map = self.map(py, result, kind, shift_steps)?;
        let plane = &map[index * side * side..(index + 1) * side * side];
        let rgba = render::overlay_layer_rgba(&explain::normalise(plane), logit_range);
        let array = numpy::PyArray1::from_vec(py, rgba).reshape([side, side, 4])?.into_any();
        Ok(array)
    }

    /// The patch logit at which this model's overlays saturate (its metadata's calibrated range,
    /// else the paper's 80).
    #[getter]
    fn overlay_logit_range(&self) -> f32 {
        self.engine.model().metadata.overlay_logit_range()
    }

    /// Class names, in model output order.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.classes.to_vec()
    }
    /// The provider that really runs: "tensorrt", "cuda", "cpu", "openvino" or "tract".
    #[getter]
    fn provider(&self) -> &'static str {
        self.engine.provider().name()
    }
    /// The precision the backend really computes in: "f32", "bf16" or "fp16" (a reduced one
    /// passed its self-check against f32 when the engine was built).
    #[getter]
    fn precision(&self) -> &'static str {
        self.engine.precision().name()
    }
    /// Providers that "auto" tried first and why each was skipped: [(name, reason)].
    #[getter]
    fn skipped(&self) -> Vec<(&'static str, String)> {
        self.engine.skipped_providers().iter().map(|(p, why)| (p.name(), why.clone())).collect()
    }
    #[getter]
    fn image_size(&self) -> usize {
        self.engine.model().image_size()
    }
    #[getter]
    fn patch_size(&self) -> usize {
        self.engine.model().patch_size()
    }
    #[getter]
    fn grid(&self) -> usize {
        self.engine.model().grid()
    }
    /// True for the embedded demo model (NOT a diagnostic model).
    #[getter]
    fn is_default_model(&self) -> bool {
        self.engine.model().origin == ModelOrigin::Embedded
    }
    /// Where the model came from (a path, or "embedded default model").
    #[getter]
    fn model(&self) -> String {
        self.engine.model().origin.to_string()
    }
    fn __repr__(&self) -> String {
        let model = self.engine.model();
        format!(
            "<medpatch.Engine model={} ({}) provider={}>",
            model.origin,
            model.metadata.architecture,
            self.provider()
        )
    }
}

/// export(weights, output, *, arch="efficientnet_v2_s", patch_size=64, image_size=512, classes=None)
///
/// Write the patch backbone of trained weights (a torch.save state dict such as the published
/// MedicalPatchNet_weights.pt, or safetensors with torchvision names) to a self-describing ONNX
/// file, exactly as `medpatch export` does. Returns a dict describing what was written.
#[pyfunction]
#[pyo3(signature = (weights, output, *, arch="efficientnet_v2_s", patch_size=64, image_size=512, classes=None))]
fn export<'py>(
    py: Python<'py>,
    weights: PathBuf,
    output: PathBuf,
    arch: &str,
    patch_size: u32,
    image_size: u32,
    classes: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyDict>> {
    use medpatch_exporter::{ExportOptions, WeightsSource};
    if !weights.exists() {
        return Err(PyFileNotFoundError::new_err((
            2,
            format!("{} does not exist", weights.display()),
            weights.display().to_string(),
        )));
    }
    let mut options = ExportOptions::new(WeightsSource::File(weights), output);
    options.arch = medpatch_models::ArchConfig::resolve(arch).map_err(|e| PyValueError::new_err(e.to_string()))?;
    options.patch_size = patch_size;
    options.image_size = image_size;
    options.classes = classes;
    let report = py
        .detach(|| catch_unwind(AssertUnwindSafe(|| medpatch_exporter::export(&options))))
        .map_err(|_| Error::new_err("medpatch panicked while exporting (a bug, please report it)"))?
        .map_err(|e| ModelError::new_err(e.to_string()))?;
    let dict = PyDict::new(py);
    dict.set_item("output", report.output.display().to_string())?;
    dict.set_item("architecture", &report.metadata.architecture)?;
    dict.set_item("classes", &report.metadata.classes)?;
    dict.set_item("patch_size", report.metadata.patch_size)?;
    dict.set_item("image_size", report.metadata.image_size)?;
    dict.set_item("parameters", report.parameters)?;
    dict.set_item("nodes", report.nodes)?;
    dict.set_item("file_bytes", report.file_bytes)?;
    dict.set_item("source_sha256", &report.metadata.source_sha256)?;
    Ok(dict)
}

#[pymodule]
fn _medpatch(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Engine>()?;
    m.add_class::<PredictionResult>()?;
    m.add_function(wrap_pyfunction!(export, m)?)?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("ProviderUnavailableError", py.get_type::<ProviderUnavailableError>())?;
    m.add("BackendError", py.get_type::<BackendError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
