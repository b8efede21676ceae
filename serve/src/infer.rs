//! The transport-neutral half of an inference request: the model's tensors, checking what a client
//! sent against them, turning it into engine inputs, and the outputs it asked for. REST
//! (`rest.rs`) and gRPC (`grpc.rs`) only translate their wire formats to and from these types.

use crate::error::{ApiError, ErrorKind};
use bytes::Bytes;
use medpatch_engine::decode::GrayImage;
use medpatch_engine::{Engine, EngineError, Input, Loaded, MapKind, Prediction};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// The model's one input.
pub(crate) const INPUT_NAME: &str = "image";

/// Datatypes accepted for the input, for metadata and messages.
pub(crate) const INPUT_DATATYPES: &str =
    "BYTES [N] (encoded PNG/JPEG/DICOM files), or UINT8, UINT16 or FP32 [N, H, W] pixels";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Probabilities,
    Logits,
    PatchLogits,
    Overlays,
}

impl Output {
    pub const ALL: [Output; 4] = [Output::Probabilities, Output::Logits, Output::PatchLogits, Output::Overlays];
    /// What a request that names no outputs gets (overlays cost a PNG per class: asked for only).
    pub const DEFAULT: [Output; 3] = [Output::Probabilities, Output::Logits, Output::PatchLogits];

    pub fn name(self) -> &'static str {
        match self {
            Output::Probabilities => "probabilities",
            Output::Logits => "logits",
            Output::PatchLogits => "patch_logits",
            Output::Overlays => "overlays",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }

    pub fn datatype(self) -> &'static str {
        if self == Output::Overlays { "BYTES" } else { "FP32" }
    }

    /// Shape in model metadata (-1: any size).
    pub fn metadata_shape(self, engine: &Engine) -> Vec<i64> {
        let (grid, classes) = (engine.model().grid() as i64, engine.model().num_classes() as i64);
        match self {
            Output::Probabilities | Output::Logits => vec![-1, classes],
            Output::PatchLogits => vec![-1, grid, grid, classes],
            Output::Overlays => vec![-1, -1],
        }
    }
}

/// A request or tensor parameter's value (the protocol allows these four kinds).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
}

impl Param {
    fn kind(&self) -> &'static str {
        match self {
            Param::Bool(_) => "a boolean",
            Param::Int(_) => "an integer",
            Param::Double(_) => "a number",
            Param::Str(_) => "a string",
        }
    }
}

/// An input tensor's contents as they arrived.
#[derive(Debug)]
pub(crate) enum TensorData {
    /// Row-major little-endian elements; BYTES elements each a 4-byte little-endian length and the
    /// bytes (Triton's binary tensors, gRPC's `raw_input_contents`).
    Raw(Bytes),
    /// Numbers (JSON `data`, gRPC `fp32_contents`).
    Numbers(Vec<f32>),
    /// gRPC `uint_contents` (UINT8, UINT16).
    Unsigned(Vec<u32>),
    /// BYTES elements (JSON strings, gRPC `bytes_contents`).
    Elements(Vec<Bytes>),
    /// Nothing sent.
    Missing,
}

#[derive(Debug)]
pub(crate) struct RawInput {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// A request as a transport parsed it, before any checking against the model.
#[derive(Debug, Default)]
pub(crate) struct RawRequest {
    pub id: String,
    pub parameters: Vec<(String, Param)>,
    pub inputs: Vec<RawInput>,
    /// Requested outputs and whether each is wanted as binary data (REST); empty: the defaults.
    pub outputs: Vec<(String, Option<bool>)>,
}

/// An output the answer will carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub output: Output,
    /// REST: binary data after the JSON header rather than JSON numbers.
    pub binary: bool,
}

/// What the request asks for, checked (everything but the images).
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    pub id: String,
    pub outputs: Vec<Wanted>,
    /// Class indices for the `overlays` output.
    pub overlay_classes: Vec<usize>,
    pub map_kind: MapKind,
    /// The client's own timeout (Triton's `timeout` parameter, microseconds).
    pub timeout: Option<Duration>,
}

/// A checked request with its images decoded and preprocessed.
pub(crate) struct Prepared {
    pub asked: Asked,
    pub images: Vec<Loaded>,
    pub input_time: Duration,
}

/// Limits and context for checking requests.
pub(crate) struct Checker<'a> {
    pub engine: &'a Engine,
    pub max_images: usize,
    /// Whether outputs are binary unless a request says otherwise (REST's `binary_data_output`).
    pub binary_by_default: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PixelType {
    U8,
    U16,
    F32,
}

impl PixelType {
    fn bytes(self) -> usize {
        match self {
            PixelType::U8 => 1,
            PixelType::U16 => 2,
            PixelType::F32 => 4,
        }
    }
    fn name(self) -> &'static str {
        match self {
            PixelType::U8 => "UINT8",
            PixelType::U16 => "UINT16",
            PixelType::F32 => "FP32",
        }
    }
}

enum Layout {
    Encoded { n: usize },
    Pixels { n: usize, h: usize, w: usize, ty: PixelType },
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// The engine's verdict on an input, as the protocol's error: the image's fault (422) unless the
/// backend or medpatch itself failed (500).
pub(crate) fn engine_error(error: EngineError) -> ApiError {
    let kind = match error {
        EngineError::Decode(_) | EngineError::Input(_) => ErrorKind::Unprocessable,
        _ => ErrorKind::Internal,
    };
    ApiError::new(kind, error.to_string())
}

impl Checker<'_> {
    /// Check a request against the model and load its images (decode, preprocess): the CPU-side
    /// work, run on the CPU pool.
    pub fn prepare(&self, request: RawRequest) -> Result<Prepared, ApiError> {
        let started = Instant::now();
        let RawRequest { id, parameters, mut inputs, outputs } = request;
        let asked = self.asked(id, &parameters, &outputs)?;
        if inputs.len() != 1 || inputs[0].name != INPUT_NAME {
            let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(bad(format!(
                "the model has one input, '{INPUT_NAME}' ({INPUT_DATATYPES}); the request has {}",
                if names.is_empty() { "none".to_string() } else { format!("[{}]", names.join(", ")) }
            )));
        }
        let input = inputs.pop().ok_or_else(|| bad("no input"))?;
        let images = match self.layout(&input.datatype, &input.shape)? {
            Layout::Encoded { n } => self.load_encoded(encoded_elements(n, input.data)?)?,
            Layout::Pixels { n, h, w, ty } => self.load_pixels(n, h, w, pixel_values(n * h * w, ty, input.data)?)?,
        };
        Ok(Prepared { asked, images, input_time: started.elapsed() })
    }

    fn asked(
        &self,
        id: String,
        parameters: &[(String, Param)],
        outputs: &[(String, Option<bool>)],
    ) -> Result<Asked, ApiError> {
        let classes = &self.engine.model().metadata.classes;
        let mut overlay_classes = None;
        let mut map_kind = MapKind::Raw;
        let mut timeout = None;
        let mut binary = self.binary_by_default;
        for (name, value) in parameters {
            let wrong = |expected: &str| bad(format!("parameter '{name}' must be {expected}, not {}", value.kind()));
            match name.as_str() {
                "overlay_classes" => {
                    let Param::Str(list) = value else { return Err(wrong("a string (class names, or 'all')")) };
                    overlay_classes = Some(parse_classes(list, classes)?);
                }
                "map" => {
                    map_kind = match value {
                        Param::Str(s) if s == "raw" => MapKind::Raw,
                        Param::Str(s) if s == "scaled" => MapKind::Scaled,
                        _ => return Err(wrong("'raw' or 'scaled'")),
                    }
                }
                "timeout" => {
                    let us = match value {
                        Param::Int(us) if *us >= 0 => *us as u64,
                        Param::Double(us) if us.is_finite() && *us >= 0.0 => *us as u64,
                        _ => return Err(wrong("a non-negative integer (microseconds)")),
                    };
                    timeout = (us > 0).then(|| Duration::from_micros(us));
                }
                "binary_data_output" => {
                    let Param::Bool(b) = value else { return Err(wrong("a boolean")) };
                    binary = *b;
                }
                // Other parameters (Triton's priority, sequence ids, a client's own) do not change
                // what this model computes; the protocol lets a server ignore them.
                _ => {}
            }
        }
        let mut wanted = Vec::new();
        if outputs.is_empty() {
            wanted.extend(Output::DEFAULT.map(|output| Wanted { output, binary }));
            if overlay_classes.is_some() {
                wanted.push(Wanted { output: Output::Overlays, binary });
            }
        }
        for (name, as_binary) in outputs {
            let Some(output) = Output::from_name(name) else {
                let known: Vec<&str> = Output::ALL.iter().map(|o| o.name()).collect();
                return Err(bad(format!("unknown output '{name}': the model's outputs are {}", known.join(", "))));
            };
            if wanted.iter().any(|w: &Wanted| w.output == output) {
                return Err(bad(format!("output '{name}' is requested twice")));
            }
            wanted.push(Wanted { output, binary: as_binary.unwrap_or(binary) });
        }
        if wanted.iter().any(|w| w.output == Output::Overlays) && overlay_classes.is_none() {
            return Err(bad(
                "the 'overlays' output needs the 'overlay_classes' parameter: class names separated by commas, or 'all'",
            ));
        }
        Ok(Asked { id, outputs: wanted, overlay_classes: overlay_classes.unwrap_or_default(), map_kind, timeout })
    }

    fn layout(&self, datatype: &str, shape: &[i64]) -> Result<Layout, ApiError> {
        let shape_text = || format!("[{}]", shape.iter().map(i64::to_string).collect::<Vec<_>>().join(", "));
        if let Some(d) = shape.iter().find(|&&d| d < 1) {
            return Err(bad(format!("input '{INPUT_NAME}' has shape {}: dimension {d} is not positive", shape_text())));
        }
        let batch = |n: i64| -> Result<usize, ApiError> {
            if n as u64 > self.max_images as u64 {
                Err(bad(format!(
                    "input '{INPUT_NAME}' holds {n} images; this server takes at most {} per request (--max-batch-images)",
                    self.max_images
                )))
            } else {
                Ok(n as usize)
            }
        };
        let ty = match datatype {
            "BYTES" => {
                return match shape {
                    [n] | [n, 1] => Ok(Layout::Encoded { n: batch(*n)? }),
                    _ => Err(bad(format!(
                        "input '{INPUT_NAME}' of BYTES must have shape [N] or [N, 1] (one encoded file per image), not {}",
                        shape_text()
                    ))),
                };
            }
            "UINT8" => PixelType::U8,
            "UINT16" => PixelType::U16,
            "FP32" => PixelType::F32,
            other => {
                return Err(bad(format!("input '{INPUT_NAME}' cannot be {other}: it takes {INPUT_DATATYPES}")));
            }
        };
        let [n, h, w] = shape else {
            return Err(bad(format!(
                "input '{INPUT_NAME}' of {datatype} pixels must have shape [N, H, W], not {}",
                shape_text()
            )));
        };
        let n = batch(*n)?;
        // Sides are bounded by what fits in the body; the engine checks them against its limits.
        let (h, w) = (usize::try_from(*h).unwrap_or(usize::MAX), usize::try_from(*w).unwrap_or(usize::MAX));
        if n.checked_mul(h).and_then(|x| x.checked_mul(w)).and_then(|x| x.checked_mul(ty.bytes())).is_none() {
            return Err(bad(format!("input '{INPUT_NAME}' shape {} is too large", shape_text())));
        }
        Ok(Layout::Pixels { n, h, w, ty })
    }

    fn load_encoded(&self, files: Vec<Bytes>) -> Result<Vec<Loaded>, ApiError> {
        files
            .par_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let name = format!("{INPUT_NAME}[{i}]");
                self.engine.load(&Input::Bytes { bytes, name: &name }).map_err(engine_error)
            })
            .collect()
    }

    fn load_pixels(&self, n: usize, h: usize, w: usize, values: Vec<f32>) -> Result<Vec<Loaded>, ApiError> {
        let plane = h * w;
        (0..n)
            .into_par_iter()
            .map(|i| {
                let image = GrayImage {
                    width: w as u32,
                    height: h as u32,
                    pixels: values[i * plane..(i + 1) * plane].to_vec(),
                };
                self.engine
                    .load(&Input::Image(&image))
                    .map_err(engine_error)
                    .map_err(|e| ApiError::new(e.kind, format!("{INPUT_NAME}[{i}]: {}", e.message)))
            })
            .collect()
    }
}

/// `overlay_classes`: "all", or names separated by commas (case-insensitive, as `medpatch predict
/// --classes`).
fn parse_classes(list: &str, classes: &[String]) -> Result<Vec<usize>, ApiError> {
    if list.trim().eq_ignore_ascii_case("all") {
        return Ok((0..classes.len()).collect());
    }
    let mut chosen = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match classes.iter().position(|c| c.eq_ignore_ascii_case(name)) {
            Some(i) if !chosen.contains(&i) => chosen.push(i),
            Some(_) => {}
            None => {
                return Err(bad(format!(
                    "unknown class '{name}' in overlay_classes; the model's classes are: {}",
                    classes.join(", ")
                )));
            }
        }
    }
    if chosen.is_empty() {
        return Err(bad("overlay_classes names no class"));
    }
    Ok(chosen)
}

/// The files of a BYTES input, one per image.
fn encoded_elements(n: usize, data: TensorData) -> Result<Vec<Bytes>, ApiError> {
    let elements = match data {
        TensorData::Elements(elements) => elements,
        TensorData::Raw(mut raw) => {
            let mut elements = Vec::with_capacity(n);
            while !raw.is_empty() {
                if raw.len() < 4 {
                    return Err(bad(format!(
                        "BYTES input '{INPUT_NAME}': {} stray bytes after element {} (each element is a 4-byte little-endian length, then the bytes)",
                        raw.len(),
                        elements.len()
                    )));
                }
                let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
                if len > raw.len() - 4 {
                    return Err(bad(format!(
                        "BYTES input '{INPUT_NAME}': element {} says {len} bytes but only {} remain",
                        elements.len(),
                        raw.len() - 4
                    )));
                }
                let _ = raw.split_to(4);
                elements.push(raw.split_to(len));
            }
            elements
        }
        TensorData::Missing => return Err(bad(format!("input '{INPUT_NAME}' has no data"))),
        TensorData::Numbers(_) | TensorData::Unsigned(_) => {
            return Err(bad(format!(
                "input '{INPUT_NAME}' is BYTES but its data are numbers: send the files as BYTES elements (binary data, or base64 strings in JSON with the parameter content_type: \"base64\")"
            )));
        }
    };
    if elements.len() != n {
        return Err(bad(format!("input '{INPUT_NAME}' has shape [{n}] but {} BYTES elements", elements.len())));
    }
    Ok(elements)
}

/// Pixel values in [0, 1] (when the client's are): UINT8 / 255, UINT16 / 65535, FP32 as sent,
/// as the Python package converts numpy arrays.
fn pixel_values(count: usize, ty: PixelType, data: TensorData) -> Result<Vec<f32>, ApiError> {
    let scale = match ty {
        PixelType::U8 => 255.0,
        PixelType::U16 => 65535.0,
        PixelType::F32 => 1.0,
    };
    let max = scale as u32;
    let wrong_count = |got: usize| {
        bad(format!("input '{INPUT_NAME}' has {got} values, its shape needs {count} {} values", ty.name()))
    };
    let out_of_range =
        |v: &dyn std::fmt::Display| bad(format!("input '{INPUT_NAME}': {v} is not a {} value (0 to {max})", ty.name()));
    let values = match data {
        TensorData::Raw(raw) => {
            if raw.len() != count * ty.bytes() {
                return Err(bad(format!(
                    "input '{INPUT_NAME}' has {} bytes of data, its shape needs {} ({count} {} values)",
                    raw.len(),
                    count * ty.bytes(),
                    ty.name()
                )));
            }
            match ty {
                PixelType::U8 => raw.iter().map(|&v| v as f32 / scale).collect(),
                PixelType::U16 => {
                    raw.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as f32 / scale).collect()
                }
                PixelType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            }
        }
        TensorData::Numbers(numbers) => {
            if numbers.len() != count {
                return Err(wrong_count(numbers.len()));
            }
            if ty == PixelType::F32 {
                numbers
            } else {
                let mut numbers = numbers;
                for v in &mut numbers {
                    if !(v.fract() == 0.0 && *v >= 0.0 && *v <= scale) {
                        return Err(out_of_range(v));
                    }
                    *v /= scale;
                }
                numbers
            }
        }
        TensorData::Unsigned(values) => {
            if ty == PixelType::F32 {
                return Err(bad(format!("input '{INPUT_NAME}' is FP32 but its contents are unsigned integers")));
            }
            if values.len() != count {
                return Err(wrong_count(values.len()));
            }
            if let Some(v) = values.iter().find(|&&v| v > max) {
                return Err(out_of_range(v));
            }
            values.into_iter().map(|v| v as f32 / scale).collect()
        }
        TensorData::Elements(_) => {
            return Err(bad(format!("input '{INPUT_NAME}' is {} pixels but its data are BYTES elements", ty.name())));
        }
        TensorData::Missing => return Err(bad(format!("input '{INPUT_NAME}' has no data"))),
    };
    Ok(values)
}

/// One output tensor of an answer.
#[derive(Debug)]
pub(crate) struct OutputTensor {
    pub wanted: Wanted,
    pub shape: Vec<i64>,
    pub data: OutputData,
}

#[derive(Debug)]
pub(crate) enum OutputData {
    F32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

impl OutputData {
    /// The protocol's raw form: little-endian floats; BYTES as 4-byte length + bytes each.
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            OutputData::F32(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            OutputData::Bytes(elements) => {
                let mut raw = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
                for e in elements {
                    raw.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    raw.extend_from_slice(e);
                }
                raw
            }
        }
    }
}

/// The requested outputs of a request's predictions (overlay PNGs are encoded here: run it on the
/// CPU pool).
pub(crate) fn outputs(
    engine: &Engine,
    asked: &Asked,
    predictions: &[Prediction],
) -> Result<Vec<OutputTensor>, ApiError> {
    let n = predictions.len() as i64;
    let (grid, classes) = (engine.model().grid() as i64, engine.model().num_classes() as i64);
    asked
        .outputs
        .iter()
        .map(|&wanted| {
            let flat = |f: fn(&Prediction) -> &[f32]| {
                OutputData::F32(predictions.iter().flat_map(|p| f(p).iter().copied()).collect())
            };
            let (shape, data) = match wanted.output {
                Output::Probabilities => (vec![n, classes], flat(|p| &p.probabilities)),
                Output::Logits => (vec![n, classes], flat(|p| &p.logits)),
                Output::PatchLogits => (vec![n, grid, grid, classes], flat(|p| &p.patch_logits)),
                Output::Overlays => {
                    let mut pngs = Vec::with_capacity(predictions.len() * asked.overlay_classes.len());
                    for p in predictions {
                        pngs.extend(
                            engine
                                .overlay_pngs(p, &asked.overlay_classes, asked.map_kind, None)
                                .map_err(engine_error)?,
                        );
                    }
                    (vec![n, asked.overlay_classes.len() as i64], OutputData::Bytes(pngs))
                }
            };
            Ok(OutputTensor { wanted, shape, data })
        })
        .collect()
}

/// Response-level parameters: what ran, and the classes in output order.
pub(crate) fn answer_parameters(engine: &Engine, asked: &Asked, batch_images: usize) -> Vec<(&'static str, Param)> {
    let classes = engine.model().metadata.classes.join(",");
    let mut params = vec![
        ("provider", Param::Str(engine.provider().to_string())),
        ("precision", Param::Str(engine.precision().to_string())),
        ("classes", Param::Str(classes)),
        ("batch_images", Param::Int(batch_images as i64)),
    ];
    if !asked.overlay_classes.is_empty() && asked.outputs.iter().any(|w| w.output == Output::Overlays) {
        let names: Vec<&str> =
            asked.overlay_classes.iter().map(|&i| engine.model().metadata.classes[i].as_str()).collect();
        params.push(("overlay_classes", Param::Str(names.join(","))));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixed_elements_are_split_and_malformed_ones_named() {
        let mut raw = Vec::new();
        for e in [&b"abc"[..], b"", b"xy"] {
            raw.extend_from_slice(&(e.len() as u32).to_le_bytes());
            raw.extend_from_slice(e);
        }
        let elements = encoded_elements(3, TensorData::Raw(Bytes::from(raw.clone()))).unwrap();
        assert_eq!(elements, [Bytes::from_static(b"abc"), Bytes::new(), Bytes::from_static(b"xy")]);
        let e = encoded_elements(2, TensorData::Raw(Bytes::from(raw.clone()))).unwrap_err();
        assert!(e.message.contains("shape [2] but 3"), "{}", e.message);
        let e = encoded_elements(3, TensorData::Raw(Bytes::from(raw[..raw.len() - 1].to_vec()))).unwrap_err();
        assert!(e.message.contains("says 2 bytes but only 1 remain"), "{}", e.message);
        raw.extend_from_slice(&[1, 2]);
        let e = encoded_elements(3, TensorData::Raw(Bytes::from(raw))).unwrap_err();
        assert!(e.message.contains("2 stray bytes"), "{}", e.message);
    }

    #[test]
    fn pixels_are_scaled_as_the_python_package_scales_them() {
        let v = pixel_values(2, PixelType::U8, TensorData::Raw(Bytes::from_static(&[0, 255]))).unwrap();
        assert_eq!(v, [0.0, 1.0]);
        let v = pixel_values(1, PixelType::U16, TensorData::Raw(Bytes::from_static(&[0xff, 0x7f]))).unwrap();
        assert_eq!(v, [32767.0 / 65535.0]);
        let v = pixel_values(2, PixelType::U16, TensorData::Numbers(vec![65535.0, 1.0])).unwrap();
        assert_eq!(v, [1.0, 1.0 / 65535.0]);
        let e = pixel_values(1, PixelType::U8, TensorData::Numbers(vec![256.0])).unwrap_err();
        assert!(e.message.contains("256 is not a UINT8 value"), "{}", e.message);
        let e = pixel_values(1, PixelType::U8, TensorData::Numbers(vec![1.5])).unwrap_err();
        assert!(e.message.contains("1.5"), "{}", e.message);
        let e = pixel_values(3, PixelType::F32, TensorData::Raw(Bytes::from_static(&[0; 8]))).unwrap_err();
        assert!(e.message.contains("8 bytes of data, its shape needs 12"), "{}", e.message);
        let e = pixel_values(2, PixelType::U16, TensorData::Unsigned(vec![1, 70000])).unwrap_err();
        assert!(e.message.contains("70000"), "{}", e.message);
    }

    #[test]
    fn raw_outputs_are_little_endian_and_length_prefixed() {
        assert_eq!(OutputData::F32(vec![1.0]).to_raw(), 1f32.to_le_bytes());
        assert_eq!(OutputData::Bytes(vec![b"ab".to_vec()]).to_raw(), [2, 0, 0, 0, b'a', b'b']);
        let classes: Vec<String> = ["A b", "C"].iter().map(|s| s.to_string()).collect();
        assert_eq!(parse_classes("c, a B", &classes).unwrap(), [1, 0]);
        assert_eq!(parse_classes("ALL", &classes).unwrap(), [0, 1]);
        assert!(parse_classes("D", &classes).unwrap_err().message.contains("the model's classes are: A b, C"));
    }
}
