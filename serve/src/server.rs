//! The server's shared state, the request path common to both transports (admission, the CPU pool,
//! the batcher, metrics), and starting and stopping.

use crate::batcher::{Batcher, Served};
use crate::config::ServeConfig;
use crate::error::{ApiError, ErrorKind};
use crate::infer::{Asked, Checker, OutputTensor, Prepared, RawRequest, engine_error, outputs};
use crate::listen::{self, Stop};
use crate::metrics::Metrics;
use crate::pool::CpuPool;
use medpatch_engine::{Engine, Prediction};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// The one version of the one model (the protocol's URLs may name it).
pub(crate) const MODEL_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot start: {0}")]
    Start(String),
    #[error("requests still in flight after the drain timeout of {0} s; exiting anyway")]
    DrainTimeout(u64),
}

pub(crate) struct AppState {
    pub engine: Arc<Engine>,
    pub config: ServeConfig,
    pub batcher: Batcher,
    pub pool: CpuPool,
    pub metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    ready: AtomicBool,
}

/// An admitted inference request: holds its queue slot and the pending gauge until it ends.
pub(crate) struct Admission {
    _slot: OwnedSemaphorePermit,
    pub started: Instant,
}

/// A request's predictions, and what it asked for.
pub(crate) struct Batched {
    pub asked: Asked,
    pub predictions: Vec<Prediction>,
    pub batch_images: usize,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The model and version a request names, if this server serves them.
    pub fn check_model(&self, name: &str, version: Option<&str>) -> Result<(), ApiError> {
        if name != self.config.model_name {
            return Err(ApiError::not_found(format!(
                "unknown model '{name}': this server serves '{}'",
                self.config.model_name
            )));
        }
        match version {
            Some(v) if !v.is_empty() && v != MODEL_VERSION => Err(ApiError::not_found(format!(
                "model '{name}' has no version '{v}' (its one version is '{MODEL_VERSION}')"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether `authorization` (the header's value) carries the configured bearer token; compared in
    /// constant time, so that response times do not tell how much of a guess was right.
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.config.auth_token else { return true };
        let Some(value) = authorization else { return false };
        let Some(given) = value.get(..7).filter(|p| p.eq_ignore_ascii_case(b"bearer ")).map(|_| &value[7..]) else {
            return false;
        };
        bool::from(token.as_bytes().ct_eq(given))
    }

    /// Run one inference request under admission control, the request timeout and the metrics.
    /// The queue bound is taken before the body is read, so that a flood of requests holds at most
    /// `max_queue_requests` bodies.
    pub async fn serve_infer<T, F>(&self, work: impl FnOnce(Admission) -> F) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        let started = Instant::now();
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            let error = ApiError::new(
                ErrorKind::Busy,
                format!(
                    "the server is busy: {} requests are already queued or running (--max-queue-requests); retry later",
                    self.config.max_queue_requests
                ),
            );
            self.metrics.request_done(Some(error.failure_reason()), started.elapsed());
            return Err(error);
        };
        let _pending = self.metrics.pending();
        let result =
            match tokio::time::timeout(self.config.request_timeout, work(Admission { _slot: slot, started })).await {
                Ok(result) => result,
                Err(_) => Err(ApiError::new(
                    ErrorKind::Timeout,
                    format!("no answer within the request timeout of {} ms", self.config.request_timeout.as_millis()),
                )),
            };
        self.metrics.request_done(result.as_ref().err().map(ApiError::failure_reason), started.elapsed());
        result
    }

    /// Check and load a request on the CPU pool (`parse` turns the transport's bytes into a
    /// [`RawRequest`] there too).
    pub async fn prepare(
        self: &Arc<Self>,
        binary_by_default: bool,
        parse: impl FnOnce() -> Result<RawRequest, ApiError> + Send + 'static,
    ) -> Result<Prepared, ApiError> {
        let state = Arc::clone(self);
        let prepared = self
            .pool
            .run(move || {
                let checker = Checker {
                    engine: &state.engine,
                    max_images: state.config.batching.max_batch_images,
                    binary_by_default,
                };
                checker.prepare(parse()?)
            })
            .await?;
        self.metrics.input_time(prepared.input_time);
        Ok(prepared)
    }

    /// Queue a prepared request's images and wait for their predictions.
    pub async fn batch(&self, admission: &Admission, prepared: Prepared) -> Result<Batched, ApiError> {
        let Prepared { asked, images, .. } = prepared;
        let limit = asked.timeout.map_or(self.config.request_timeout, |t| t.min(self.config.request_timeout));
        let Served { predictions, queued, batch_images, .. } =
            self.batcher.submit(images, admission.started + limit).await?;
        self.metrics.queue_time(queued);
        let predictions = predictions
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                p.map_err(|e| {
                    let e = engine_error(e);
                    ApiError::new(e.kind, format!("{}[{i}]: {}", crate::infer::INPUT_NAME, e.message))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Batched { asked, predictions, batch_images })
    }

    /// The requested output tensors (overlays are encoded on the CPU pool).
    pub async fn outputs(self: &Arc<Self>, batched: Batched) -> Result<(Batched, Vec<OutputTensor>), ApiError> {
        let state = Arc::clone(self);
        let started = Instant::now();
        let result = self
            .pool
            .run(move || {
                let tensors = outputs(&state.engine, &batched.asked, &batched.predictions)?;
                Ok((batched, tensors))
            })
            .await;
        self.metrics.output_time(started.elapsed());
        result
    }
}

/// A server that is running: its addresses, and the way to stop it.
pub struct RunningServer {
    http: SocketAddr,
    grpc: Option<SocketAddr>,
    stop: Stop,
    loops: Vec<JoinHandle<()>>,
    state: Arc<AppState>,
}

impl RunningServer {
    /// Where REST (and `/metrics`) listens (the real port when 0 was asked for).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc
    }
    pub fn uses_tls(&self) -> bool {
        self.state.config.tls.is_some()
    }

    /// Stop accepting connections, answer every request already received (up to the drain
    /// timeout), then stop the backend thread.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.state.ready.store(false, Ordering::Relaxed);
        self.stop.stop();
        let deadline = tokio::time::Instant::now() + self.state.config.drain_timeout;
        let mut drained = true;
        for handle in self.loops {
            drained &= tokio::time::timeout_at(deadline, handle).await.is_ok();
        }
        let state = Arc::clone(&self.state);
        let _ = tokio::task::spawn_blocking(move || {
            state.batcher.close();
            state.batcher.join();
        })
        .await;
        if drained { Ok(()) } else { Err(ServeError::DrainTimeout(self.state.config.drain_timeout.as_secs())) }
    }
}

/// Bind the listeners and start serving `engine` (on the current tokio runtime).
pub async fn start(engine: Arc<Engine>, config: ServeConfig) -> Result<RunningServer, ServeError> {
    config.check()?;
    let tls = config.tls.as_ref().map(listen::tls_acceptor).transpose()?;
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
    };
    let http_listener = bind(config.http).await?;
    let grpc_listener = match config.grpc {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let local = |l: &tokio::net::TcpListener| l.local_addr().map_err(|e| ServeError::Start(e.to_string()));
    let http = local(&http_listener)?;
    let grpc = grpc_listener.as_ref().map(local).transpose()?;

    let metrics = Arc::new(Metrics::new(&config.model_name, MODEL_VERSION, config.batching.max_batch_images));
    let batcher = Batcher::start(Arc::clone(&engine), config.batching.clone(), Arc::clone(&metrics))
        .map_err(|e| ServeError::Start(format!("backend thread: {e}")))?;
    let pool = CpuPool::new(config.cpu_threads).map_err(ServeError::Start)?;
    let slots = Arc::new(Semaphore::new(config.max_queue_requests));
    let state = Arc::new(AppState { engine, config, batcher, pool, metrics, slots, ready: AtomicBool::new(true) });

    let stop = Stop::new();
    let mut loops =
        vec![listen::spawn(http_listener, tls.clone(), crate::rest::router(Arc::clone(&state)), "http", &stop)];
    if let Some(listener) = grpc_listener {
        loops.push(listen::spawn(listener, tls, crate::grpc::router(Arc::clone(&state)), "grpc", &stop));
    }
    Ok(RunningServer { http, grpc, stop, loops, state })
}

/// `medpatch serve`: start, call `on_ready` (e.g. to print the addresses), serve until SIGTERM or
/// SIGINT, then drain and return. Builds its own tokio runtime.
pub fn run_until_signal(
    engine: Arc<Engine>,
    config: ServeConfig,
    on_ready: impl FnOnce(&RunningServer),
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("medpatch-io")
        .build()
        .map_err(|e| ServeError::Start(format!("async runtime: {e}")))?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        // Installed before the server says it is ready, so that a SIGTERM right after is a drain,
        // not the default action.
        let signals = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
        let (mut term, mut int) = signals.map_err(|e| ServeError::Start(format!("signal handlers: {e}")))?;
        let server = start(engine, config).await?;
        on_ready(&server);
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        eprintln!("medpatch: {name}: no new connections; finishing the requests in flight");
        let result = server.shutdown().await;
        if result.is_ok() {
            eprintln!("medpatch: drained, exiting");
        }
        result
    })
}
