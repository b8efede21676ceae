//! One error type for both transports: what went wrong, said in words, and its status on each.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Malformed request: JSON, shapes, datatypes, names, parameters.
    BadRequest,
    Unauthorized,
    /// Unknown model, version or path.
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    /// A content type or content encoding the endpoint does not read.
    UnsupportedMediaType,
    /// A well-formed request whose image cannot be used (corrupt file, pixels out of range).
    Unprocessable,
    /// The queue is full: retry later.
    Busy,
    Timeout,
    /// Shutting down.
    Unavailable,
    /// A bug, or the backend failed.
    Internal,
}

#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

/// Seconds a client told "busy" should wait before retrying (Retry-After).
const RETRY_AFTER_S: u32 = 1;

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn http_status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Busy | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self.kind {
            ErrorKind::BadRequest | ErrorKind::UnsupportedMediaType | ErrorKind::Unprocessable => {
                tonic::Code::InvalidArgument
            }
            ErrorKind::Unauthorized => tonic::Code::Unauthenticated,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::MethodNotAllowed => tonic::Code::Unimplemented,
            ErrorKind::PayloadTooLarge | ErrorKind::Busy => tonic::Code::ResourceExhausted,
            ErrorKind::Timeout => tonic::Code::DeadlineExceeded,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// Triton's `reason` label of `nv_inference_request_failure`.
    pub fn failure_reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::Busy | ErrorKind::Unavailable => "REJECTED",
            ErrorKind::Timeout => "CANCELED",
            ErrorKind::Internal => "BACKEND",
            _ => "OTHER",
        }
    }

    fn retry_after(&self) -> bool {
        matches!(self.kind, ErrorKind::Busy | ErrorKind::Unavailable)
    }

    pub fn into_status(self) -> tonic::Status {
        let retry = self.retry_after();
        let mut status = tonic::Status::new(self.grpc_code(), self.message);
        if retry {
            let m = status.metadata_mut();
            m.insert("retry-after", tonic::metadata::MetadataValue::from(RETRY_AFTER_S));
            // gRPC's own retry hint (the gRPC retry design's server pushback), in milliseconds.
            m.insert("grpc-retry-pushback-ms", tonic::metadata::MetadataValue::from(RETRY_AFTER_S * 1000));
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The error message, for the access log (attached to error responses).
#[derive(Debug, Clone)]
pub(crate) struct ErrorNote(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The protocol's error object: {"error": "<message>"}.
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = (self.http_status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        if self.kind == ErrorKind::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorNote(self.message));
        response
    }
}
