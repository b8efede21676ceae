//! gRPC: the Open Inference Protocol's `inference.GRPCInferenceService`, served by the same accept
//! loop as REST (tonic's router is an axum router).

use crate::error::ApiError;
use crate::infer::{self, INPUT_NAME, Output, OutputTensor, Param, RawInput, RawRequest, TensorData};
use crate::listen::{AccessLog, ConnInfo};
use crate::proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::proto::{self, infer_parameter::ParameterChoice};
use crate::server::{AppState, MODEL_VERSION};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Code, Status};

const SERVICE: &str = "/inference.GRPCInferenceService/";

pub(crate) fn router(state: Arc<AppState>) -> axum::Router {
    let service = GrpcInferenceServiceServer::new(Grpc { state: Arc::clone(&state) })
        .max_decoding_message_size(state.config.max_body_bytes)
        .max_encoding_message_size(usize::MAX);
    tonic::service::Routes::new(service).into_axum_router().layer(middleware::from_fn_with_state(state, gate))
}

/// Authentication (all but ServerLive/ServerReady), tonic's over-size status as the protocol's, and
/// the access log.
async fn gate(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let info = request.extensions().get::<ConnInfo>().copied();
    let path = request.uri().path().to_string();
    let open = path == format!("{SERVICE}ServerLive") || path == format!("{SERVICE}ServerReady");
    let mut response = if open
        || state.authorized(request.headers().get(http::header::AUTHORIZATION).map(HeaderValue::as_bytes))
    {
        next.run(request).await
    } else {
        Status::unauthenticated("this server needs a bearer token: metadata authorization: Bearer <token>").into_http()
    };
    // tonic refuses a message over the size limit with OUT_OF_RANGE; gRPC's convention (and its own
    // clients') for an over-size message is RESOURCE_EXHAUSTED.
    // And a request that is not a valid protobuf message is the client's error, not INTERNAL.
    let headers = response.headers_mut();
    if headers.get("grpc-status").is_some_and(|v| v == "11") {
        headers.insert("grpc-status", HeaderValue::from(Code::ResourceExhausted as i32));
    }
    let message =
        headers.get("grpc-message").and_then(|v| v.to_str().ok()).map(crate::rest::percent_decode).unwrap_or_default();
    let malformed = ["failed to decode", "protocol error", "Missing request message", "Unexpected EOF"];
    if headers.get("grpc-status").is_some_and(|v| v == "13") && malformed.iter().any(|m| message.starts_with(m)) {
        headers.insert("grpc-status", HeaderValue::from(Code::InvalidArgument as i32));
    }
    if state.config.access_log {
        let grpc_status = headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()).or(Some(0));
        AccessLog {
            info: info.as_ref(),
            method: "POST",
            path: &path,
            status: response.status().as_u16(),
            grpc_status,
            elapsed: started.elapsed(),
            bytes_out: None,
            error: Some(message.as_str()).filter(|m| !m.is_empty()),
        }
        .write();
    }
    response
}

struct Grpc {
    state: Arc<AppState>,
}

fn status(error: ApiError) -> Status {
    error.into_status()
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        _: tonic::Request<proto::ServerLiveRequest>,
    ) -> Result<tonic::Response<proto::ServerLiveResponse>, Status> {
        Ok(tonic::Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: tonic::Request<proto::ServerReadyRequest>,
    ) -> Result<tonic::Response<proto::ServerReadyResponse>, Status> {
        Ok(tonic::Response::new(proto::ServerReadyResponse { ready: self.state.is_ready() }))
    }

    async fn model_ready(
        &self,
        request: tonic::Request<proto::ModelReadyRequest>,
    ) -> Result<tonic::Response<proto::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        self.state.check_model(&r.name, Some(&r.version)).map_err(status)?;
        Ok(tonic::Response::new(proto::ModelReadyResponse { ready: self.state.is_ready() }))
    }

    async fn server_metadata(
        &self,
        _: tonic::Request<proto::ServerMetadataRequest>,
    ) -> Result<tonic::Response<proto::ServerMetadataResponse>, Status> {
        Ok(tonic::Response::new(proto::ServerMetadataResponse {
            name: "medpatch".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["binary_tensor_data".into(), "parameters".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: tonic::Request<proto::ModelMetadataRequest>,
    ) -> Result<tonic::Response<proto::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        self.state.check_model(&r.name, Some(&r.version)).map_err(status)?;
        let engine = &self.state.engine;
        let tensor = |name: &str, datatype: &str, shape: Vec<i64>| proto::model_metadata_response::TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape,
        };
        let properties = crate::rest::model_properties(&self.state)
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
        Ok(tonic::Response::new(proto::ModelMetadataResponse {
            name: r.name,
            versions: vec![MODEL_VERSION.into()],
            platform: "medpatch".into(),
            inputs: vec![tensor(INPUT_NAME, "BYTES", vec![-1])],
            outputs: Output::ALL.iter().map(|o| tensor(o.name(), o.datatype(), o.metadata_shape(engine))).collect(),
            properties,
        }))
    }

    async fn model_infer(
        &self,
        request: tonic::Request<proto::ModelInferRequest>,
    ) -> Result<tonic::Response<proto::ModelInferResponse>, Status> {
        let state = Arc::clone(&self.state);
        let request = request.into_inner();
        let result = self
            .state
            .serve_infer(move |admission| async move {
                state.check_model(&request.model_name, Some(&request.model_version))?;
                let model_name = request.model_name.clone();
                let prepared = state.prepare(false, move || raw_request(request)).await?;
                let batched = state.batch(&admission, prepared).await?;
                let (batched, tensors) = state.outputs(batched).await?;
                let params = infer::answer_parameters(&state.engine, &batched.asked, batched.batch_images);
                Ok(answer(model_name, batched.asked.id, params, tensors))
            })
            .await;
        result.map(tonic::Response::new).map_err(status)
    }
}

fn from_proto(name: &str, p: &proto::InferParameter) -> Result<Param, ApiError> {
    Ok(match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Param::Bool(*b),
        Some(ParameterChoice::Int64Param(i)) => Param::Int(*i),
        Some(ParameterChoice::Uint64Param(u)) => Param::Int(i64::try_from(*u).unwrap_or(i64::MAX)),
        Some(ParameterChoice::DoubleParam(d)) => Param::Double(*d),
        Some(ParameterChoice::StringParam(s)) => Param::Str(s.clone()),
        None => return Err(ApiError::bad_request(format!("parameter '{name}' has no value"))),
    })
}

fn to_proto(p: Param) -> proto::InferParameter {
    proto::InferParameter {
        parameter_choice: Some(match p {
            Param::Bool(b) => ParameterChoice::BoolParam(b),
            Param::Int(i) => ParameterChoice::Int64Param(i),
            Param::Double(d) => ParameterChoice::DoubleParam(d),
            Param::Str(s) => ParameterChoice::StringParam(s),
        }),
    }
}

/// A ModelInfer request in the transport-neutral form (run on the CPU pool: typed contents of a
/// large image are millions of values).
pub(crate) fn raw_request(request: proto::ModelInferRequest) -> Result<RawRequest, ApiError> {
    let proto::ModelInferRequest { id, parameters, inputs, outputs, raw_input_contents, .. } = request;
    if !raw_input_contents.is_empty() && raw_input_contents.len() != inputs.len() {
        return Err(ApiError::bad_request(format!(
            "raw_input_contents has {} entries for {} inputs (one per input, in order)",
            raw_input_contents.len(),
            inputs.len()
        )));
    }
    let mut raw = raw_input_contents.into_iter();
    let inputs = inputs
        .into_iter()
        .map(|input| {
            let typed = input.contents.unwrap_or_default();
            let data = match raw.next() {
                Some(bytes) => {
                    if typed != proto::InferTensorContents::default() {
                        return Err(ApiError::bad_request(format!(
                            "input '{}' has both raw_input_contents and typed contents",
                            input.name
                        )));
                    }
                    TensorData::Raw(bytes)
                }
                None => match input.datatype.as_str() {
                    "BYTES" if !typed.bytes_contents.is_empty() => TensorData::Elements(typed.bytes_contents),
                    "FP32" if !typed.fp32_contents.is_empty() => TensorData::Numbers(typed.fp32_contents),
                    "UINT8" | "UINT16" if !typed.uint_contents.is_empty() => TensorData::Unsigned(typed.uint_contents),
                    _ => TensorData::Missing,
                },
            };
            let parameters: HashMap<String, proto::InferParameter> = input.parameters;
            for (name, value) in &parameters {
                from_proto(name, value)?;
            }
            Ok(RawInput { name: input.name, datatype: input.datatype, shape: input.shape, data })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let parameters = parameters
        .iter()
        .map(|(name, value)| Ok((name.clone(), from_proto(name, value)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let outputs = outputs.into_iter().map(|o| (o.name, None)).collect();
    Ok(RawRequest { id, parameters, inputs, outputs })
}

/// The answer, every output as raw contents (as Triton answers).
fn answer(
    model: String,
    id: String,
    params: Vec<(&str, Param)>,
    tensors: Vec<OutputTensor>,
) -> proto::ModelInferResponse {
    let mut outputs = Vec::with_capacity(tensors.len());
    let mut raw = Vec::with_capacity(tensors.len());
    for t in tensors {
        outputs.push(proto::model_infer_response::InferOutputTensor {
            name: t.wanted.output.name().into(),
            datatype: t.wanted.output.datatype().into(),
            shape: t.shape,
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(t.data.to_raw().into());
    }
    proto::ModelInferResponse {
        model_name: model,
        model_version: MODEL_VERSION.into(),
        id,
        parameters: params.into_iter().map(|(k, v)| (k.to_string(), to_proto(v))).collect(),
        outputs,
        raw_output_contents: raw,
    }
}
