//! `medpatch serve`: the engine as a network service.
//!
//! The Open Inference Protocol v2 (KServe's; NVIDIA Triton, Seldon MLServer and OpenVINO Model Server
//! speak it) over REST ([`rest`]) and gRPC ([`grpc`]), with Triton's binary-tensor extension, plus
//! `POST /v1/predict` (a file in, `medpatch predict`'s JSON record out). Requests flow:
//!
//! ```text
//! connection (TLS optional, `listen`) → admission (bounded queue, auth, body limit)
//!   → parse + decode + preprocess on the CPU pool (`pool`, never on the async runtime's threads)
//!   → dynamic batcher (`batcher`: Triton's max batch / preferred batch / max queue delay)
//!   → one backend call per batch on the batcher's own thread (`Engine::predict_loaded`)
//!   → response (overlay PNGs encoded on the CPU pool)
//! ```
//!
//! Every request's answer is `Engine::predict_loaded`'s for its own images, whatever batch they
//! rode in: the engine runs each image's patches as they would run alone (the backend call size is
//! the engine's `batch_size`, in patches, not the service's batch).

mod batcher;
mod config;
mod error;
mod grpc;
mod infer;
mod listen;
mod metrics;
mod pool;
mod rest;
mod server;

/// The Open Inference Protocol's gRPC messages, generated from `proto/open_inference_grpc.proto`
/// (public so that Rust callers and the tests can build requests).
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("inference");
}

pub use config::{BatchPolicy, ConfigError, ServeConfig, TlsFiles, read_auth_token};
pub use server::{RunningServer, ServeError, run_until_signal, start};

/// The one model this server serves is called this in URLs and requests unless configured otherwise.
pub const DEFAULT_MODEL_NAME: &str = "medpatch";

#[cfg(test)]
mod mutation_tests;
