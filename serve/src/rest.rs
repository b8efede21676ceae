//! REST: the Open Inference Protocol v2 over HTTP/JSON with Triton's binary-tensor extension,
//! `POST /v1/predict` (a file in, `medpatch predict`'s record out), and `/metrics`.

use crate::error::{ApiError, ErrorKind, ErrorNote};
use crate::infer::{
    self, INPUT_DATATYPES, INPUT_NAME, Output, OutputData, OutputTensor, Param, RawInput, RawRequest, TensorData,
};
use crate::listen::{AccessLog, ConnInfo};
use crate::server::{AppState, MODEL_VERSION};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::{Map, Value, json};
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

/// Triton's binary-tensor extension: the JSON header's length when binary data follow it.
const HEADER_LENGTH: &str = "inference-header-content-length";

type St = State<Arc<AppState>>;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config_version))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_version))
        .route("/v1/predict", post(predict))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Arc::clone(&state))
        .layer(middleware::from_fn_with_state(state, gate))
}

/// Authentication (all but the health probes) and the access log.
async fn gate(State(state): St, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let info = request.extensions().get::<ConnInfo>().copied();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let open = path == "/v2/health/live" || path == "/v2/health/ready";
    let response = if open || state.authorized(request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes))
    {
        next.run(request).await
    } else {
        ApiError::new(ErrorKind::Unauthorized, "this server needs a bearer token: Authorization: Bearer <token>")
            .into_response()
    };
    if state.config.access_log {
        let bytes_out = axum::body::HttpBody::size_hint(response.body()).exact();
        AccessLog {
            info: info.as_ref(),
            method: &method,
            path: &path,
            status: response.status().as_u16(),
            grpc_status: None,
            elapsed: started.elapsed(),
            bytes_out,
            error: response.extensions().get::<ErrorNote>().map(|n| n.0.as_str()),
        }
        .write();
    }
    response
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(state): St) -> Response {
    if state.is_ready() {
        StatusCode::OK.into_response()
    } else {
        ApiError::new(ErrorKind::Unavailable, "shutting down").into_response()
    }
}

fn json_response(value: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

async fn server_metadata() -> Response {
    json_response(&json!({
        "name": "medpatch",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "parameters"],
    }))
}

async fn model_metadata(State(state): St, Path(model): Path<String>) -> Response {
    metadata(&state, &model, None)
}

async fn model_metadata_version(State(state): St, Path((model, version)): Path<(String, String)>) -> Response {
    metadata(&state, &model, Some(&version))
}

fn metadata(state: &AppState, model: &str, version: Option<&str>) -> Response {
    if let Err(e) = state.check_model(model, version) {
        return e.into_response();
    }
    let engine = &state.engine;
    let tensor =
        |name: &str, datatype: &str, shape: Vec<i64>| json!({ "name": name, "datatype": datatype, "shape": shape });
    json_response(&json!({
        "name": model,
        "versions": [MODEL_VERSION],
        "platform": "medpatch",
        "inputs": [tensor(INPUT_NAME, "BYTES", vec![-1])],
        "outputs": Output::ALL.iter().map(|o| tensor(o.name(), o.datatype(), o.metadata_shape(engine))).collect::<Vec<_>>(),
        "properties": model_properties(state),
    }))
}

/// What a client needs beyond the tensors: class order, geometry, accepted input types. The same
/// on both transports (gRPC's `properties`).
pub(crate) fn model_properties(state: &AppState) -> Map<String, Value> {
    let engine = &state.engine;
    let model = engine.model();
    let mut p = Map::new();
    p.insert("classes".into(), model.metadata.classes.join(",").into());
    p.insert("input_datatypes".into(), INPUT_DATATYPES.into());
    p.insert("image_size".into(), model.image_size().to_string().into());
    p.insert("patch_size".into(), model.patch_size().to_string().into());
    p.insert("grid".into(), model.grid().to_string().into());
    p.insert("overlay_logit_range".into(), model.metadata.overlay_logit_range().to_string().into());
    p.insert("model".into(), model.origin.to_string().into());
    p.insert("provider".into(), engine.provider().to_string().into());
    p.insert("precision".into(), engine.precision().to_string().into());
    p.insert("max_batch_images".into(), state.config.batching.max_batch_images.to_string().into());
    p
}

async fn model_ready(State(state): St, Path(model): Path<String>) -> Response {
    readiness(&state, &model, None)
}

async fn model_ready_version(State(state): St, Path((model, version)): Path<(String, String)>) -> Response {
    readiness(&state, &model, Some(&version))
}

fn readiness(state: &AppState, model: &str, version: Option<&str>) -> Response {
    match state.check_model(model, version) {
        Err(e) => e.into_response(),
        Ok(()) if state.is_ready() => StatusCode::OK.into_response(),
        Ok(()) => ApiError::new(ErrorKind::Unavailable, "shutting down").into_response(),
    }
}

async fn model_config(State(state): St, Path(model): Path<String>) -> Response {
    config(&state, &model, None)
}

async fn model_config_version(State(state): St, Path((model, version)): Path<(String, String)>) -> Response {
    config(&state, &model, Some(&version))
}

/// Triton's model configuration (its `model_configuration` extension), for tools that read it.
fn config(state: &AppState, model: &str, version: Option<&str>) -> Response {
    if let Err(e) = state.check_model(model, version) {
        return e.into_response();
    }
    let b = &state.config.batching;
    json_response(&json!({
        "name": model,
        "platform": "medpatch",
        "max_batch_size": b.max_batch_images,
        "input": [{ "name": INPUT_NAME, "data_type": "TYPE_STRING", "dims": [1] }],
        "output": Output::ALL.iter().map(|o| {
            let mut dims = o.metadata_shape(&state.engine);
            dims.remove(0);
            json!({ "name": o.name(), "data_type": if o.datatype() == "FP32" { "TYPE_FP32" } else { "TYPE_STRING" }, "dims": dims })
        }).collect::<Vec<_>>(),
        "dynamic_batching": {
            "preferred_batch_size": b.preferred_batch_images,
            "max_queue_delay_microseconds": b.max_queue_delay.as_micros() as u64,
        },
    }))
}

async fn metrics(State(state): St) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn not_found(request: Request) -> Response {
    ApiError::not_found(format!("no such endpoint: {} {}", request.method(), request.uri().path())).into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
    .into_response()
}

async fn infer(State(state): St, Path(model): Path<String>, request: Request) -> Response {
    run_infer(state, model, None, request).await
}

async fn infer_version(State(state): St, Path((model, version)): Path<(String, String)>, request: Request) -> Response {
    run_infer(state, model, Some(version), request).await
}

async fn run_infer(state: Arc<AppState>, model: String, version: Option<String>, request: Request) -> Response {
    let inner = Arc::clone(&state);
    let result = state
        .serve_infer(move |admission| async move {
            let state = inner;
            // The body first: see read_body.
            let (headers, body) = read_body(&state, request, false).await?;
            state.check_model(&model, version.as_deref())?;
            let header_length = match headers.get(HEADER_LENGTH) {
                None => None,
                Some(v) => Some(v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
                    ApiError::bad_request(format!("{HEADER_LENGTH} must be a number of bytes, not {v:?}"))
                })?),
            };
            let encoding = content_encoding(&headers)?;
            let limit = state.config.max_body_bytes;
            let prepared =
                state.prepare(false, move || parse_infer(&decompress(body, encoding, limit)?, header_length)).await?;
            let batched = state.batch(&admission, prepared).await?;
            let (batched, tensors) = state.outputs(batched).await?;
            let params = infer::answer_parameters(&state.engine, &batched.asked, batched.batch_images);
            Ok(encode_answer(&model, &batched.asked.id, params, tensors))
        })
        .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn predict(State(state): St, request: Request) -> Response {
    let name = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
        .map_or_else(|| "request body".to_string(), percent_decode);
    let inner = Arc::clone(&state);
    let result = state
        .serve_infer(move |admission| async move {
            let state = inner;
            let (headers, body) = read_body(&state, request, true).await?;
            let encoding = content_encoding(&headers)?;
            let limit = state.config.max_body_bytes;
            let label = name.clone();
            let prepared = state
                .prepare(false, move || {
                    Ok(RawRequest {
                        inputs: vec![RawInput {
                            name: INPUT_NAME.into(),
                            datatype: "BYTES".into(),
                            shape: vec![1],
                            data: TensorData::Elements(vec![decompress(body, encoding, limit)?]),
                        }],
                        ..RawRequest::default()
                    })
                })
                .await
                .map_err(|e| ApiError::new(e.kind, e.message.replacen(&format!("{INPUT_NAME}[0]"), &label, 1)))?;
            let batched = state.batch(&admission, prepared).await?;
            let prediction = &batched.predictions[0];
            let mut record = Map::new();
            record.insert("input".into(), name.into());
            let fields =
                serde_json::to_value(medpatch_engine::report::PredictionRecord::new(&state.engine, prediction))
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            if let Value::Object(fields) = fields {
                record.extend(fields);
            }
            Ok(json_response(&Value::Object(record)))
        })
        .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Clone, Copy)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase()) {
        None => Ok(Encoding::Identity),
        Some(e) if e.is_empty() || e == "identity" => Ok(Encoding::Identity),
        Some(e) if e == "gzip" => Ok(Encoding::Gzip),
        Some(e) if e == "deflate" => Ok(Encoding::Deflate),
        Some(e) => Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!("Content-Encoding '{e}' is not supported (identity, gzip or deflate)"),
        )),
    }
}

/// The body, decompressed if it came compressed, within the body limit (run on the CPU pool).
fn decompress(body: Bytes, encoding: Encoding, limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    let read = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1).read_to_end(&mut out),
        // HTTP's "deflate" is the zlib format (RFC 9110), as Triton's clients send it.
        Encoding::Deflate => flate2::read::ZlibDecoder::new(&body[..]).take(limit as u64 + 1).read_to_end(&mut out),
    };
    read.map_err(|e| ApiError::bad_request(format!("the compressed body cannot be decompressed: {e}")))?;
    if out.len() > limit {
        return Err(too_large(None, limit));
    }
    Ok(Bytes::from(out))
}

fn too_large(size: Option<u64>, limit: usize) -> ApiError {
    let size = size.map_or_else(String::new, |s| format!(" of {s} bytes"));
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("the request body{size} is over the limit of {limit} bytes (--max-body-bytes)"),
    )
}

/// Read the body within --max-body-bytes (refusing at once when Content-Length says it is over),
/// then refuse a content type the route does not take. Every other refusal comes after the body
/// is read: an answer sent while the client is still writing reaches it as a connection reset
/// (the kernel resets a connection closed with unread data), not as the error.
async fn read_body(state: &AppState, request: Request, raw_file: bool) -> Result<(HeaderMap, Bytes), ApiError> {
    let limit = state.config.max_body_bytes;
    let (parts, body) = request.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&s| s > limit as u64) {
        return Err(too_large(Some(size), limit));
    }
    let bytes = match Limited::new(Body::new(body), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(None, limit)),
        Err(e) => return Err(ApiError::bad_request(format!("the request body could not be read: {e}"))),
    };
    if let Some(kind) = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        let kind = kind.to_ascii_lowercase();
        if kind.starts_with("multipart/") || (raw_file && kind.starts_with("application/json")) {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                if raw_file {
                    format!(
                        "POST /v1/predict takes the image file itself as the body (PNG, JPEG or DICOM; e.g. curl --data-binary @xray.png), not {kind}; inference requests in JSON go to /v2/models/{}/infer",
                        state.config.model_name
                    )
                } else {
                    format!("an inference request is JSON, optionally followed by binary tensor data, not {kind}")
                },
            ));
        }
    }
    Ok((parts.headers, bytes))
}

/// A `%XX`-escaped query value (`+` is a space).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- The JSON request --------------------------------------------------------------------------

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<JsonData>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// A tensor's `data`: numbers or strings, flat or nested row-major arrays, read straight into a
/// flat vector (a 512² image as JSON is 3 MB of text: no intermediate `Value` tree).
enum JsonData {
    Numbers(Vec<f32>),
    Strings(Vec<String>),
}

#[derive(Default)]
struct Flat {
    numbers: Vec<f32>,
    strings: Vec<String>,
}

struct FlatVisitor<'a>(&'a mut Flat);

impl<'de> Visitor<'de> for FlatVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers or strings, in a flat or nested array")
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.0.numbers.push(v as f32);
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.0.numbers.push(v as f32);
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.0.numbers.push(v as f32);
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.0.strings.push(v.to_string());
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(FlatSeed(self.0))?.is_some() {}
        Ok(())
    }
}

struct FlatSeed<'a>(&'a mut Flat);

impl<'de> DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(FlatVisitor(self.0))
    }
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut flat = Flat::default();
        deserializer.deserialize_any(FlatVisitor(&mut flat))?;
        match (flat.numbers.is_empty(), flat.strings.is_empty()) {
            (false, false) => Err(serde::de::Error::custom("data mixes numbers and strings")),
            (true, false) => Ok(JsonData::Strings(flat.strings)),
            _ => Ok(JsonData::Numbers(flat.numbers)),
        }
    }
}

fn param(name: &str, value: &Value) -> Result<Param, ApiError> {
    Ok(match value {
        Value::Bool(b) => Param::Bool(*b),
        Value::String(s) => Param::Str(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Param::Int(i),
            None => Param::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        _ => return Err(ApiError::bad_request(format!("parameter '{name}' must be a boolean, a number or a string"))),
    })
}

/// An inference request: JSON, or JSON followed by binary tensor data (`header_length` bytes of JSON).
pub(crate) fn parse_infer(body: &Bytes, header_length: Option<usize>) -> Result<RawRequest, ApiError> {
    let json_len = header_length.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(ApiError::bad_request(format!(
            "{HEADER_LENGTH} is {json_len} but the body has only {} bytes",
            body.len()
        )));
    }
    let request: JsonRequest = serde_json::from_slice(&body[..json_len])
        .map_err(|e| ApiError::bad_request(format!("malformed inference request JSON: {e}")))?;
    let mut binary = body.slice(json_len..);
    let parameters = request
        .parameters
        .iter()
        .flatten()
        .map(|(name, value)| Ok((name.clone(), param(name, value)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let params = input.parameters.unwrap_or_default();
        let name = &input.name;
        let binary_size = match params.get("binary_data_size") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                ApiError::bad_request(format!("input '{name}': binary_data_size must be a non-negative integer"))
            })? as usize),
        };
        let base64 = match params.get("content_type") {
            None => false,
            Some(Value::String(s)) if s == "base64" => true,
            Some(Value::String(s)) if s == "str" || s == "bytes" => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "input '{name}': content_type {other} is not supported (\"base64\" for files in JSON strings)"
                )));
            }
        };
        let data = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(format!("input '{name}' has both binary_data_size and JSON data")));
            }
            (Some(size), None) => {
                if size > binary.len() {
                    return Err(ApiError::bad_request(format!(
                        "input '{name}': binary_data_size is {size} but only {} bytes of binary data remain",
                        binary.len()
                    )));
                }
                TensorData::Raw(binary.split_to(size))
            }
            (None, Some(JsonData::Numbers(numbers))) => TensorData::Numbers(numbers),
            (None, Some(JsonData::Strings(strings))) => TensorData::Elements(
                strings
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| {
                        if base64 {
                            base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map(Bytes::from).map_err(
                                |e| ApiError::bad_request(format!("input '{name}' element {i}: not base64: {e}")),
                            )
                        } else {
                            Ok(Bytes::from(s.into_bytes()))
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (None, None) => TensorData::Missing,
        };
        inputs.push(RawInput { name: input.name, datatype: input.datatype, shape: input.shape, data });
    }
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data after the inputs' binary_data_size",
            binary.len()
        )));
    }
    let mut outputs = Vec::new();
    for output in request.outputs.into_iter().flatten() {
        let params = output.parameters.unwrap_or_default();
        if params.get("classification").is_some_and(|v| v.as_u64() != Some(0)) {
            return Err(ApiError::bad_request(format!(
                "output '{}': the classification extension is not supported; read 'probabilities'",
                output.name
            )));
        }
        let binary = match params.get("binary_data") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                return Err(ApiError::bad_request(format!("output '{}': binary_data must be a boolean", output.name)));
            }
        };
        outputs.push((output.name, binary));
    }
    Ok(RawRequest { id: request.id.unwrap_or_default(), parameters, inputs, outputs })
}

// ---- The JSON answer ---------------------------------------------------------------------------

fn param_value(p: &Param) -> Value {
    match p {
        Param::Bool(b) => (*b).into(),
        Param::Int(i) => (*i).into(),
        Param::Double(d) => (*d).into(),
        Param::Str(s) => s.as_str().into(),
    }
}

/// The answer: JSON, with binary outputs after it when any output is binary (Triton's extension).
pub(crate) fn encode_answer(model: &str, id: &str, params: Vec<(&str, Param)>, tensors: Vec<OutputTensor>) -> Response {
    let mut binary: Vec<u8> = Vec::new();
    let outputs: Vec<Value> = tensors
        .iter()
        .map(|t| {
            let mut out = Map::new();
            out.insert("name".into(), t.wanted.output.name().into());
            out.insert("datatype".into(), t.wanted.output.datatype().into());
            out.insert("shape".into(), t.shape.clone().into());
            if t.wanted.binary {
                let raw = t.data.to_raw();
                out.insert("parameters".into(), json!({ "binary_data_size": raw.len() }));
                binary.extend_from_slice(&raw);
            } else {
                match &t.data {
                    OutputData::F32(values) => {
                        out.insert("data".into(), values.iter().map(|&v| Value::from(v)).collect::<Vec<_>>().into());
                    }
                    OutputData::Bytes(elements) => {
                        // PNG files are not text: JSON carries them as base64 (MLServer's convention).
                        out.insert("parameters".into(), json!({ "content_type": "base64" }));
                        let encoded: Vec<Value> = elements
                            .iter()
                            .map(|e| base64::engine::general_purpose::STANDARD.encode(e).into())
                            .collect();
                        out.insert("data".into(), encoded.into());
                    }
                }
            }
            Value::Object(out)
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("model_name".into(), model.into());
    answer.insert("model_version".into(), MODEL_VERSION.into());
    if !id.is_empty() {
        answer.insert("id".into(), id.into());
    }
    answer.insert(
        "parameters".into(),
        Value::Object(params.iter().map(|(k, v)| (k.to_string(), param_value(v))).collect()),
    );
    answer.insert("outputs".into(), outputs.into());
    let header = Value::Object(answer).to_string();
    if binary.is_empty() {
        return ([(header::CONTENT_TYPE, "application/json")], header).into_response();
    }
    let header_length = header.len();
    let mut body = header.into_bytes();
    body.extend_from_slice(&binary);
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(HEADER_LENGTH, HeaderValue::from(header_length));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_data_is_flattened_and_binary_data_split_in_input_order() {
        let body = br#"{"id":"a","inputs":[{"name":"image","shape":[1,2,2],"datatype":"UINT8","data":[[1,2],[3,4]]}]}"#;
        let r = parse_infer(&Bytes::from_static(body), None).unwrap();
        assert_eq!(r.id, "a");
        assert!(matches!(&r.inputs[0].data, TensorData::Numbers(v) if v == &[1.0, 2.0, 3.0, 4.0]));

        let json = br#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}],"outputs":[{"name":"logits","parameters":{"binary_data":false}}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&[2, 0, 0, 0, b'h', b'i']);
        let r = parse_infer(&Bytes::from(body.clone()), Some(json.len())).unwrap();
        assert!(matches!(&r.inputs[0].data, TensorData::Raw(b) if b.len() == 6));
        assert_eq!(r.outputs, [("logits".to_string(), Some(false))]);
        let e = parse_infer(&Bytes::from(body.clone()), Some(json.len() + 1)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        body.push(0);
        let e = parse_infer(&Bytes::from(body), Some(json.len())).unwrap_err();
        assert!(e.message.contains("1 bytes of binary data after"), "{}", e.message);
    }

    #[test]
    fn malformed_requests_are_named() {
        for (body, expected) in [
            (&b"{"[..], "malformed inference request JSON"),
            (br#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":[1,"a"]}]}"#, "mixes numbers and strings"),
            (br#"{"inputs":[{"name":"image","shape":"x","datatype":"BYTES"}]}"#, "invalid type"),
            (br#"{"parameters":{"p":[1]},"inputs":[]}"#, "parameter 'p' must be"),
            (br#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["@@"],"parameters":{"content_type":"base64"}}]}"#, "not base64"),
        ] {
            let e = parse_infer(&Bytes::from_static(body), None).unwrap_err();
            assert!(e.message.contains(expected), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b+c%2Fd.png"), "a b c/d.png");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
