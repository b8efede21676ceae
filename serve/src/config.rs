//! What `medpatch serve` is told on its command line, checked before anything binds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Triton's dynamic batcher, in images (a request of N images counts N).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// The most images in one backend call (Triton's `max_batch_size`); 1 turns batching off. A
    /// request with more images than this is refused.
    pub max_batch_images: usize,
    /// How long the oldest queued request may wait for others to join its batch (Triton's
    /// `max_queue_delay_microseconds`). Zero: send whatever is queued as soon as the backend is free.
    pub max_queue_delay: Duration,
    /// Batch sizes sent at once when the queue can form one exactly (Triton's
    /// `preferred_batch_size`), the largest first; empty: only a full batch is sent early.
    pub preferred_batch_images: Vec<usize>,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        // Triton's defaults: no waiting. Batches still form whenever the backend is busy (requests
        // queue meanwhile); a delay only trades a lone request's latency for bigger batches, which
        // pays on accelerators, not on CPU (docs/serve.md).
        Self { max_batch_images: 8, max_queue_delay: Duration::ZERO, preferred_batch_images: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// REST (and `/metrics`). Port 0: any free port (the running server says which).
    pub http: SocketAddr,
    /// gRPC; `None`: no gRPC listener.
    pub grpc: Option<SocketAddr>,
    /// The model's name in URLs and requests.
    pub model_name: String,
    pub batching: BatchPolicy,
    /// Requests admitted at once (parsing, queued or running); more get 503 / RESOURCE_EXHAUSTED
    /// with Retry-After. This bounds memory: at most this many bodies and their decoded images.
    pub max_queue_requests: usize,
    /// The largest request body (REST) or message (gRPC), after decompression.
    pub max_body_bytes: usize,
    /// From the first byte of the body to the last of the answer; a request over it gets 504 /
    /// DEADLINE_EXCEEDED and leaves the queue.
    pub request_timeout: Duration,
    /// Threads that parse, decode and preprocess requests and encode overlays (0: one per core).
    pub cpu_threads: usize,
    /// Bearer token every request but the health probes must carry.
    pub auth_token: Option<String>,
    pub tls: Option<TlsFiles>,
    /// One JSON line per request on stderr.
    pub access_log: bool,
    /// After SIGTERM, how long in-flight requests may take before the server exits anyway.
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8000)),
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 8001))),
            model_name: crate::DEFAULT_MODEL_NAME.to_string(),
            batching: BatchPolicy::default(),
            max_queue_requests: 64,
            max_body_bytes: 64 << 20,
            request_timeout: Duration::from_secs(60),
            cpu_threads: 0,
            auth_token: None,
            tls: None,
            access_log: true,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

impl ServeConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let b = &self.batching;
        if b.max_batch_images == 0 {
            return invalid("--max-batch-images must be at least 1".into());
        }
        if let Some(&p) = b.preferred_batch_images.iter().find(|&&p| p == 0 || p > b.max_batch_images) {
            return invalid(format!(
                "--preferred-batch-images {p} is not between 1 and --max-batch-images {}",
                b.max_batch_images
            ));
        }
        if self.max_queue_requests == 0 {
            return invalid("--max-queue-requests must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            return invalid(format!(
                "--max-body-bytes {} is too small for any image (at least 1024)",
                self.max_body_bytes
            ));
        }
        if self.request_timeout.is_zero() {
            return invalid("--request-timeout-ms must be positive".into());
        }
        if self.model_name.is_empty() || self.model_name.contains(['/', '?', '#', ' ', '%', '"', '\\']) {
            return invalid(format!("model name '{}' cannot appear in a URL path or a metric label", self.model_name));
        }
        if let Some(grpc) = self.grpc
            && grpc == self.http
            && grpc.port() != 0
        {
            return invalid(format!("HTTP and gRPC cannot share {grpc}"));
        }
        Ok(())
    }
}

/// A bearer token from a file (surrounding whitespace, e.g. a final newline, is not part of it).
pub fn read_auth_token(path: &Path) -> Result<String, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::Invalid(format!("{}: the token file is empty", path.display())));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::Invalid(format!(
            "{}: a bearer token is one line without spaces or control characters",
            path.display()
        )));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ServeConfig::default().check().unwrap();
        let mut c = ServeConfig::default();
        c.batching.preferred_batch_images = vec![4, 16];
        let message = c.check().unwrap_err().to_string();
        assert!(message.contains("--preferred-batch-images 16"), "{message}");
        let c = ServeConfig { max_queue_requests: 0, ..ServeConfig::default() };
        assert!(c.check().unwrap_err().to_string().contains("--max-queue-requests"));
        let c = ServeConfig { model_name: "a/b".into(), ..ServeConfig::default() };
        assert!(c.check().is_err());
    }

    #[test]
    fn tokens_are_trimmed_and_empty_files_refused() {
        let dir = std::env::temp_dir().join(format!("medpatch-serve-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(read_auth_token(&file).unwrap(), "s3cret");
        std::fs::write(&file, "  \n").unwrap();
        assert!(read_auth_token(&file).unwrap_err().to_string().contains("empty"));
        std::fs::write(&file, "two words").unwrap();
        assert!(read_auth_token(&file).is_err());
        assert!(read_auth_token(&dir.join("missing")).unwrap_err().to_string().contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
