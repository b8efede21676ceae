//! The dynamic batcher, with NVIDIA Triton's semantics: requests queue in arrival order; a batch is
//! sent at once when it is full (`max_batch_images`) or can grow no more, or when a preferred size
//! can be formed; otherwise when the oldest request has waited `max_queue_delay`. The batcher's own
//! thread runs the backend (one `Engine::predict_loaded` call per batch), so the async runtime never
//! waits on it and the CPU pool decodes the next requests meanwhile.

use crate::config::BatchPolicy;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use medpatch_engine::{Engine, EngineError, Loaded, Prediction};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the backend made of one request's images.
pub(crate) struct Served {
    pub predictions: Vec<Result<Prediction, EngineError>>,
    /// From entering the queue to the start of its batch.
    pub queued: Duration,
    /// Images in the batch it rode in.
    pub batch_images: usize,
}

struct Job {
    images: Vec<Loaded>,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Served, ApiError>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    policy: BatchPolicy,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic never happens while the lock is held (the backend runs outside it); if one did,
        // the queue itself is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) struct Batcher {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the batcher does next with the queue it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Send the first `n` requests as one batch.
    Send(usize),
    /// Nothing to send yet: look again after this long, or when a request arrives.
    Wait(Duration),
}

/// Triton's decision for a queue of requests of `sizes` images each (arrival order, not empty)
/// whose oldest has waited `oldest_waited`. While `draining`, nothing waits.
pub(crate) fn plan(sizes: &[usize], policy: &BatchPolicy, oldest_waited: Duration, draining: bool) -> Plan {
    let max = policy.max_batch_images;
    let (mut fit, mut images, mut preferred) = (0, 0, None);
    for &size in sizes {
        if images + size > max {
            break;
        }
        images += size;
        fit += 1;
        if policy.preferred_batch_images.contains(&images) {
            preferred = Some(fit);
        }
    }
    if fit == 0 {
        // A request over the maximum (admission refuses these): alone, rather than stuck forever.
        return Plan::Send(1);
    }
    if images == max || fit < sizes.len() {
        return Plan::Send(fit);
    }
    if let Some(n) = preferred {
        return Plan::Send(n);
    }
    if draining || oldest_waited >= policy.max_queue_delay {
        return Plan::Send(fit);
    }
    Plan::Wait(policy.max_queue_delay - oldest_waited)
}

impl Batcher {
    pub fn start(engine: Arc<Engine>, policy: BatchPolicy, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let shared =
            Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: Condvar::new(), policy, engine, metrics });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("medpatch-backend".into()).spawn(move || run(&worker))?;
        Ok(Self { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Queue one request's images and wait for their predictions (one per image, in order). A
    /// request still queued at `deadline` gets a timeout; one whose caller went away is dropped.
    pub async fn submit(&self, images: Vec<Loaded>, deadline: Instant) -> Result<Served, ApiError> {
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = self.shared.lock();
            if queue.closed {
                return Err(ApiError::new(ErrorKind::Unavailable, "the server is shutting down"));
            }
            queue.jobs.push_back(Job { images, enqueued: Instant::now(), deadline, reply });
        }
        self.shared.wake.notify_one();
        answer.await.unwrap_or_else(|_| Err(ApiError::internal("the backend thread stopped")))
    }

    /// Finish what is queued, then stop the backend thread (new requests are refused).
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }

    /// Wait for the backend thread to finish (after [`Batcher::close`]). Blocks.
    pub fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.close();
        self.join();
    }
}

fn run(shared: &Shared) {
    let mut sizes = Vec::new();
    loop {
        let batch: Vec<Job> = {
            let mut queue = shared.lock();
            loop {
                let now = Instant::now();
                let mut i = 0;
                while i < queue.jobs.len() {
                    let job = &queue.jobs[i];
                    if job.reply.is_closed() {
                        // The caller went away (disconnect or timeout): nothing to compute.
                        queue.jobs.remove(i);
                        shared.metrics.cancelled();
                    } else if job.deadline <= now {
                        if let Some(job) = queue.jobs.remove(i) {
                            let waited = now - job.enqueued;
                            let _ = job.reply.send(Err(ApiError::new(
                                ErrorKind::Timeout,
                                format!("the request waited {} ms in the queue, past its timeout", waited.as_millis()),
                            )));
                        }
                    } else {
                        i += 1;
                    }
                }
                if queue.jobs.is_empty() {
                    if queue.closed {
                        return;
                    }
                    queue = shared.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                sizes.clear();
                sizes.extend(queue.jobs.iter().map(|j| j.images.len()));
                let oldest_waited = now - queue.jobs[0].enqueued;
                match plan(&sizes, &shared.policy, oldest_waited, queue.closed) {
                    Plan::Send(n) => break queue.jobs.drain(..n).collect(),
                    Plan::Wait(delay) => {
                        // Also wake at the earliest deadline, so that a timeout is not late.
                        let until_deadline = queue.jobs.iter().map(|j| j.deadline - now).min().unwrap_or(delay);
                        queue = shared
                            .wake
                            .wait_timeout(queue, delay.min(until_deadline))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
        };
        execute(shared, batch);
    }
}

fn execute(shared: &Shared, batch: Vec<Job>) {
    let started = Instant::now();
    let mut counts = Vec::with_capacity(batch.len());
    let mut images = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        counts.push(job.images.len());
        images.extend(job.images.into_iter().map(Ok));
        replies.push((job.reply, started - job.enqueued));
    }
    let total = images.len();
    let engine = &shared.engine;
    // The engine promises no panics; should one happen anyway, this batch fails, the server goes on.
    let results = std::panic::catch_unwind(AssertUnwindSafe(|| engine.predict_loaded(images)));
    let infer = started.elapsed();
    shared.metrics.batch_executed(total, infer);
    match results {
        Ok(results) => {
            let mut results = results.into_iter();
            for ((reply, queued), count) in replies.into_iter().zip(counts) {
                let predictions: Vec<_> = results.by_ref().take(count).collect();
                let _ = reply.send(Ok(Served { predictions, queued, batch_images: total }));
            }
        }
        Err(_) => {
            for (reply, _) in replies {
                let _ = reply.send(Err(ApiError::internal(
                    "internal error in the backend (a bug in medpatch: please report it)",
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize, delay_us: u64, preferred: &[usize]) -> BatchPolicy {
        BatchPolicy {
            max_batch_images: max,
            max_queue_delay: Duration::from_micros(delay_us),
            preferred_batch_images: preferred.to_vec(),
        }
    }

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn a_full_batch_or_one_that_cannot_grow_goes_at_once() {
        let p = policy(4, 1000, &[]);
        assert_eq!(plan(&[1, 1, 1, 1, 1], &p, NOW, false), Plan::Send(4));
        assert_eq!(plan(&[2, 2], &p, NOW, false), Plan::Send(2));
        // 3 images queued and the next request (2) does not fit: the batch cannot grow.
        assert_eq!(plan(&[3, 2], &p, NOW, false), Plan::Send(1));
        // Oversize requests are refused at admission; if one got here it would go alone.
        assert_eq!(plan(&[5, 1], &p, NOW, false), Plan::Send(1));
    }

    #[test]
    fn a_partial_batch_waits_for_the_delay_of_its_oldest_request() {
        let p = policy(8, 1000, &[]);
        assert_eq!(plan(&[1, 2], &p, Duration::from_micros(300), false), Plan::Wait(Duration::from_micros(700)));
        assert_eq!(plan(&[1, 2], &p, Duration::from_micros(1000), false), Plan::Send(2));
        assert_eq!(plan(&[1, 2], &p, Duration::from_micros(5000), false), Plan::Send(2));
        // Draining: nothing waits.
        assert_eq!(plan(&[1], &p, NOW, true), Plan::Send(1));
        // Delay zero: whatever is queued goes as soon as the backend is free.
        assert_eq!(plan(&[1, 1, 1], &policy(8, 0, &[]), NOW, false), Plan::Send(3));
        // Batching off.
        assert_eq!(plan(&[1, 1, 1], &policy(1, 1000, &[]), NOW, false), Plan::Send(1));
    }

    #[test]
    fn the_largest_preferred_batch_that_can_be_formed_goes_at_once() {
        let p = policy(8, 1000, &[2, 4]);
        assert_eq!(plan(&[1], &p, NOW, false), Plan::Wait(Duration::from_micros(1000)));
        assert_eq!(plan(&[1, 1], &p, NOW, false), Plan::Send(2));
        assert_eq!(plan(&[1, 1, 1], &p, NOW, false), Plan::Send(2));
        assert_eq!(plan(&[1, 1, 1, 1, 1], &p, NOW, false), Plan::Send(4));
        // 1 + 2 = 3 is not preferred, 1 + 2 + 1 = 4 is.
        assert_eq!(plan(&[1, 2, 1], &p, NOW, false), Plan::Send(3));
        // No prefix sums to a preferred size: wait, then send everything that fits.
        assert_eq!(plan(&[3, 2], &p, NOW, false), Plan::Wait(Duration::from_micros(1000)));
        assert_eq!(plan(&[3, 2], &p, Duration::from_millis(2), false), Plan::Send(2));
    }
}
