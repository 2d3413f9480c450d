//! Background workers: named loops (heartbeats, automatic compaction, liveness sweeps,
//! re-replication, and the repair, scrub and erasure-coding work to come) that all run,
//! pause, back off, report and stop the same way.
//!
//! A [`Worker`] does one unit of work per [`Worker::step`] and says what comes next: more
//! work at once ([`Next::Busy`], after the throttle pause), nothing until a time or a
//! trigger ([`Next::Idle`]), or nothing ever again ([`Next::Done`]). A failed step is logged
//! and retried after a back-off that doubles up to a ceiling. The policy (what to do, how
//! often) stays in the worker; the runner only schedules, so each can be tested alone.
//!
//! On /metrics, per worker: `haystack_worker_state{worker}` (0 idle, 1 busy, 2 backing off,
//! 3 stopped), `haystack_worker_steps_total{worker,result}` and
//! `haystack_worker_last_success_unix_seconds{worker}`.
//!
//! [`WorkerSet::shutdown`] cancels every worker (a step in progress is dropped at its next
//! await: steps must be cancel-safe, e.g. spawn what must finish) and waits for them up to a
//! deadline; those still running then are aborted and named in the log.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a worker does after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// More work is waiting: step again after the throttle pause.
    Busy,
    /// Nothing to do: step again after this long, or as soon as the worker is triggered.
    Idle(Duration),
    /// Finished for good.
    Done,
}

/// One kind of background work.
pub trait Worker: Send + 'static {
    /// Does one unit of work. An error is logged and the step retried after a back-off.
    fn step(&mut self) -> impl Future<Output = Result<Next, String>> + Send;
}

/// A worker's state, as on /metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Idle = 0,
    Busy = 1,
    BackingOff = 2,
    Stopped = 3,
}

/// How a worker is run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pause between busy steps (throttling); zero for none.
    pub throttle: Duration,
    /// First back-off after a failed step; doubled on each further failure.
    pub backoff_min: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            throttle: Duration::ZERO,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A running worker: wake it early, read its state.
#[derive(Clone)]
pub struct Handle {
    name: Arc<str>,
    trigger: Arc<Notify>,
    state: Arc<AtomicU8>,
}

impl Handle {
    /// Wakes an idle worker now (a trigger while it is busy is kept for its next wait).
    pub fn trigger(&self) {
        self.trigger.notify_one();
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            0 => State::Idle,
            1 => State::Busy,
            2 => State::BackingOff,
            _ => State::Stopped,
        }
    }
}

/// The workers of one role, stopped together.
pub struct WorkerSet {
    token: CancellationToken,
    tasks: Mutex<Vec<(Arc<str>, JoinHandle<()>)>>,
}

impl Default for WorkerSet {
    fn default() -> Self {
        Self::new(CancellationToken::new())
    }
}

fn set_state(name: &str, cell: &AtomicU8, s: State) {
    cell.store(s as u8, Ordering::Relaxed);
    metrics::gauge!("haystack_worker_state", "worker" => name.to_string()).set(s as u8 as f64);
}

impl WorkerSet {
    /// Workers that stop when `token` is cancelled (or on [`shutdown`](Self::shutdown)).
    pub fn new(token: CancellationToken) -> Self {
        WorkerSet {
            token,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The token every worker of the set watches.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Starts `worker` under `name`; `trigger`, when given, wakes it from idle (several
    /// workers or a service may share one).
    pub fn spawn<W: Worker>(
        &self,
        name: &str,
        mut worker: W,
        opts: Options,
        trigger: Option<Arc<Notify>>,
    ) -> Handle {
        let handle = Handle {
            name: Arc::from(name),
            trigger: trigger.unwrap_or_default(),
            state: Arc::new(AtomicU8::new(State::Idle as u8)),
        };
        let h = handle.clone();
        let token = self.token.clone();
        let task = tokio::spawn(async move {
            let name = h.name.clone();
            let mut backoff = opts.backoff_min;
            loop {
                set_state(&name, &h.state, State::Busy);
                let r = tokio::select! {
                    _ = token.cancelled() => break,
                    r = worker.step() => r,
                };
                let wait = match r {
                    Ok(next) => {
                        metrics::counter!("haystack_worker_steps_total", "worker" => name.to_string(), "result" => "ok").increment(1);
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs_f64())
                            .unwrap_or(0.0);
                        metrics::gauge!("haystack_worker_last_success_unix_seconds", "worker" => name.to_string()).set(now);
                        backoff = opts.backoff_min;
                        match next {
                            Next::Done => break,
                            Next::Busy => {
                                if opts.throttle.is_zero() {
                                    if token.is_cancelled() {
                                        break;
                                    }
                                    continue;
                                }
                                (opts.throttle, false)
                            }
                            Next::Idle(d) => {
                                set_state(&name, &h.state, State::Idle);
                                (d, true)
                            }
                        }
                    }
                    Err(e) => {
                        metrics::counter!("haystack_worker_steps_total", "worker" => name.to_string(), "result" => "error").increment(1);
                        tracing::warn!(worker = %name, error = %e, backoff_ms = backoff.as_millis() as u64, "background work failed; backing off");
                        set_state(&name, &h.state, State::BackingOff);
                        let d = backoff;
                        backoff = (backoff * 2).min(opts.backoff_max);
                        (d, false)
                    }
                };
                let (d, triggerable) = wait;
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(d) => {}
                    _ = h.trigger.notified(), if triggerable => {}
                }
            }
            set_state(&name, &h.state, State::Stopped);
            tracing::debug!(worker = %name, "worker stopped");
        });
        crate::sync::lock(&self.tasks).push((handle.name.clone(), task));
        handle
    }

    /// Stops every worker: cancels them and waits up to `deadline` in all; those still
    /// running then are aborted and named in a warning.
    pub async fn shutdown(&self, deadline: Duration) {
        self.token.cancel();
        let tasks = std::mem::take(&mut *crate::sync::lock(&self.tasks));
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut task) in tasks {
            match tokio::time::timeout_at(until, &mut task).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(worker = %name, "worker did not stop within the shutdown deadline; aborted");
                    task.abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    struct Counting {
        steps: Arc<AtomicU32>,
        fail_first: u32,
        next: Next,
    }

    impl Worker for Counting {
        async fn step(&mut self) -> Result<Next, String> {
            let n = self.steps.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                return Err(format!("failure {n}"));
            }
            Ok(self.next)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_workers_wake_on_their_interval_or_a_trigger() {
        let set = WorkerSet::default();
        let steps = Arc::new(AtomicU32::new(0));
        let h = set.spawn(
            "t",
            Counting {
                steps: steps.clone(),
                fail_first: 0,
                next: Next::Idle(Duration::from_secs(60)),
            },
            Options::default(),
            None,
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 1);
        assert_eq!(h.state(), State::Idle);
        h.trigger();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 2, "a trigger wakes it");
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 3, "so does its interval");
        set.shutdown(Duration::from_secs(1)).await;
        assert_eq!(h.state(), State::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_up_to_the_ceiling() {
        let set = WorkerSet::default();
        let steps = Arc::new(AtomicU32::new(0));
        let opts = Options {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            ..Options::default()
        };
        let h = set.spawn(
            "f",
            Counting {
                steps: steps.clone(),
                fail_first: 10,
                next: Next::Done,
            },
            opts,
            None,
        );
        // Steps at 0, 1, 3, 7, 11, 15 s: back-offs 1, 2, 4, 4, 4.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 1);
        assert_eq!(h.state(), State::BackingOff);
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 6);
        set.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn busy_workers_are_throttled_and_stop_on_shutdown() {
        let set = WorkerSet::default();
        let steps = Arc::new(AtomicU32::new(0));
        let opts = Options {
            throttle: Duration::from_millis(100),
            ..Options::default()
        };
        set.spawn(
            "b",
            Counting {
                steps: steps.clone(),
                fail_first: 0,
                next: Next::Busy,
            },
            opts,
            None,
        );
        tokio::time::sleep(Duration::from_millis(1050)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 11);
        set.shutdown(Duration::from_secs(1)).await;
        let after = steps.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            steps.load(Ordering::SeqCst),
            after,
            "no step after shutdown"
        );
    }

    struct Stuck;
    impl Worker for Stuck {
        async fn step(&mut self) -> Result<Next, String> {
            // Not cancel-safe on purpose: blocks its thread-free future forever.
            std::future::pending::<()>().await;
            Ok(Next::Done)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_a_step_at_its_next_await() {
        let set = WorkerSet::default();
        let h = set.spawn("s", Stuck, Options::default(), None);
        tokio::time::sleep(Duration::from_millis(10)).await;
        set.shutdown(Duration::from_secs(1)).await;
        assert_eq!(h.state(), State::Stopped);
    }
}
