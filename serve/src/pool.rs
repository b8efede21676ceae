//! The CPU pool: request parsing, image decoding and preprocessing, overlay encoding. Beside the
//! batcher's backend thread (as `Engine::predict_pipelined` decodes beside the backend), and never
//! on the async runtime's threads, which only move bytes.

use crate::error::ApiError;
use std::panic::AssertUnwindSafe;

pub(crate) struct CpuPool {
    pool: rayon::ThreadPool,
}

impl CpuPool {
    pub fn new(threads: usize) -> Result<Self, String> {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("medpatch-cpu-{i}"))
            .build()
            .map_err(|e| format!("cannot start the CPU pool: {e}"))?;
        Ok(Self { pool })
    }

    /// Run `work` on the pool and wait for it without blocking the runtime. A panic (a bug) becomes
    /// an internal error for this request; the pool and the server go on. Work whose caller went
    /// away (disconnect, timeout) before it started is skipped.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            if sender.is_closed() {
                return;
            }
            let result = std::panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
                Err(ApiError::internal(
                    "internal error while handling the request (a bug in medpatch: please report it)",
                ))
            });
            let _ = sender.send(result);
        });
        receiver.await.unwrap_or_else(|_| Err(ApiError::internal("the CPU pool dropped a request")))
    }
}
