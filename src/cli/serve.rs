//! `medpatch serve`: the engine as an inference service (Open Inference Protocol v2 over REST and
//! gRPC, dynamic batching, metrics). Argument parsing only; the service is `medpatch-serve`.

use super::{EngineArgs, exit};
use anyhow::Result;
use clap::Args;
use medpatch_serve::{BatchPolicy, ServeConfig, TlsFiles};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on (both ports). The default serves this machine only; 0.0.0.0 serves
    /// the network (put TLS and a token in front of it).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// REST (Open Inference Protocol v2, /v1/predict, /metrics); 0: any free port.
    #[arg(long, default_value_t = 8000)]
    http_port: u16,
    /// gRPC (inference.GRPCInferenceService); 0: any free port.
    #[arg(long, default_value_t = 8001)]
    grpc_port: u16,
    /// No gRPC listener.
    #[arg(long)]
    no_grpc: bool,
    /// The model's name in URLs and requests.
    #[arg(long, default_value = medpatch_serve::DEFAULT_MODEL_NAME)]
    model_name: String,
    /// Most images per backend call (Triton's max_batch_size; 1 turns dynamic batching off). Also the
    /// most images one request may carry.
    #[arg(long, default_value_t = 8)]
    max_batch_images: usize,
    /// How long the oldest queued request waits for others to fill its batch (Triton's
    /// max_queue_delay_microseconds).
    #[arg(long, default_value_t = 0, value_name = "US")]
    max_queue_delay_us: u64,
    /// Batch sizes sent as soon as they can be formed (Triton's preferred_batch_size), e.g. 4,8.
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    preferred_batch_images: Vec<usize>,
    /// Requests admitted at once (parsing, queued, running); more are refused with HTTP 503 /
    /// gRPC RESOURCE_EXHAUSTED and Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queue_requests: usize,
    /// Largest request body or gRPC message, in bytes (after decompression).
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// Per-request limit from admission to answer; over it: HTTP 504 / DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    request_timeout_ms: u64,
    /// Threads parsing, decoding and preprocessing requests beside the backend (0: one per core).
    #[arg(long, default_value_t = 0)]
    cpu_threads: usize,
    /// Require `Authorization: Bearer <token>` (gRPC: `authorization` metadata) with the token in
    /// this file, on every endpoint but the health probes.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, both ports speak TLS only.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// No access log (by default one JSON line per request on stderr).
    #[arg(long)]
    no_access_log: bool,
    /// After SIGTERM, how long requests in flight may take before the server exits anyway.
    #[arg(long, default_value_t = 30, value_name = "S")]
    drain_timeout_s: u64,
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let auth_token = match &args.auth_token_file {
        Some(path) => Some(medpatch_serve::read_auth_token(path)?),
        None => None,
    };
    let config = ServeConfig {
        http: SocketAddr::new(args.host, args.http_port),
        grpc: (!args.no_grpc).then(|| SocketAddr::new(args.host, args.grpc_port)),
        model_name: args.model_name.clone(),
        batching: BatchPolicy {
            max_batch_images: args.max_batch_images,
            max_queue_delay: Duration::from_micros(args.max_queue_delay_us),
            preferred_batch_images: args.preferred_batch_images.clone(),
        },
        max_queue_requests: args.max_queue_requests,
        max_body_bytes: args.max_body_bytes,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        cpu_threads: args.cpu_threads,
        auth_token,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()).map(|(cert, key)| TlsFiles { cert, key }),
        access_log: !args.no_access_log,
        drain_timeout: Duration::from_secs(args.drain_timeout_s),
    };
    if let Err(e) = config.check() {
        eprintln!("medpatch: error: {e}");
        return Ok(exit::usage());
    }
    let engine = args.engine.build()?;
    super::predict::report_engine(&engine);
    let batching = config.batching.clone();
    medpatch_serve::run_until_signal(Arc::new(engine), config, |server| {
        let scheme = if server.uses_tls() { "https" } else { "http" };
        // These lines are read by scripts and tests to find the ports (port 0 picks any).
        eprintln!("medpatch: http listening on {} ({scheme})", server.http_addr());
        if let Some(grpc) = server.grpc_addr() {
            eprintln!("medpatch: grpc listening on {grpc}");
        }
        eprintln!(
            "medpatch: model '{}': dynamic batching up to {} images, queue delay {} µs{}",
            args.model_name,
            batching.max_batch_images,
            batching.max_queue_delay.as_micros(),
            if batching.preferred_batch_images.is_empty() {
                String::new()
            } else {
                format!(", preferred {:?}", batching.preferred_batch_images)
            }
        );
    })?;
    Ok(ExitCode::SUCCESS)
}
