//! The I/O engine: positioned reads through io_uring (or, when the kernel refuses io_uring,
//! pread on the blocking pool), writes and fdatasyncs with pwrite and fdatasync on the
//! blocking pool.
//!
//! The engine is chosen once at start-up ([`IoEngine::new`]); its kind is logged and exported
//! as the `haystack_store_io_engine` metric. Every storage test runs over both kinds.
//!
//! io_uring design: four rings per engine; each thread submits to one of them (assigned
//! round-robin on its first submission). A caller pushes its SQE and calls `io_uring_enter`
//! itself under its ring's short lock, then drains whatever completions are ready. A
//! buffered read of a page-cached needle completes inside that call, so the common GET costs
//! no thread hop at all. A read that did not complete inline (a cold read) is counted as
//! pending; each ring's reaper thread sleeps in `io_uring_enter(GETEVENTS)` only while
//! something is pending, and wakes the waiting task. Buffers and file handles of in-flight
//! reads live in the engine's table until their completion arrives, so a caller that gives
//! up (a dropped request) cannot free memory the kernel still writes to. Completions with
//! EINTR or EAGAIN are submitted again. Every operation fails with `TimedOut` past the
//! engine's timeout (a read that completed inline pays no timer). Writes and fdatasyncs left
//! the ring after a submitted write went without a completion for over 30 s in test runs
//! (docs/ARCHITECTURE.md, "I/O engine"); one the blocking pool had not started when it timed
//! out never runs.
//!
//! With the `test-hooks` feature, [`IoEngine::simulated`] runs the pread/pwrite code over the
//! power-loss simulator (`crate::sim`).

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types, IoUring};

/// Which engine to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// io_uring when the kernel allows it, else pread/pwrite.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// pread/pwrite/fdatasync on the blocking thread pool.
    Sync,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::IoUring => "io_uring",
            EngineKind::Sync => "sync",
        }
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EngineKind::Auto),
            "io_uring" | "uring" => Ok(EngineKind::IoUring),
            "sync" | "pread" => Ok(EngineKind::Sync),
            other => Err(format!(
                "unknown I/O engine {other:?} (auto, io_uring, sync)"
            )),
        }
    }
}

/// A failure to inject, for tests of the error paths (an inert atomic check otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    /// Every read fails with EIO.
    Reads = 1,
    /// Every write fails with EIO.
    Writes = 2,
    /// Every fdatasync fails with EIO.
    Syncs = 3,
}

/// The error inside a `TimedOut` for a write or sync that the blocking pool had not started
/// when the engine gave up on it: it never runs, so nothing of it reaches the file (see
/// [`never_started`]).
#[derive(Debug)]
pub struct NeverStarted(String);

impl std::fmt::Display for NeverStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NeverStarted {}

/// Whether `e` is a write or sync given up on before it started: the file is as it was.
pub fn never_started(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        && e.get_ref().is_some_and(|inner| inner.is::<NeverStarted>())
}

/// The engine in use; cheap to clone.
#[derive(Clone)]
pub struct IoEngine {
    inner: Inner,
    fault: Arc<std::sync::atomic::AtomicU8>,
    /// The file-system operations of the volume code (opens, syncs, renames, recovery's
    /// reads); the power-loss simulator hooks in here.
    disk: crate::disk::Disk,
    /// An operation that has not completed by then fails with `TimedOut` (a write or sync
    /// turns the volume read-only; a read fails like a read error), so a hung device cannot
    /// hold a volume's append lock or gate forever.
    timeout: std::time::Duration,
}

/// Default for [`IoEngine::with_timeout`].
pub const DEFAULT_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How often an io_uring operation that completed with EINTR or EAGAIN is submitted again.
const RETRIES: u32 = 8;

/// Whether a completion asks to be submitted again.
fn retryable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted || e.raw_os_error() == Some(libc::EAGAIN)
}

#[derive(Clone)]
enum Inner {
    Uring(Arc<UringHandle>),
    Sync,
}

/// Rings per engine. Each thread submits to one of them (assigned round-robin on its first
/// submission), so the actix workers rarely share a ring and never wait on each other's
/// `io_uring_enter` under the same lock.
const RINGS: usize = 4;

/// Owns the rings for the engine's clones; when the last one goes, the reaper threads stop.
struct UringHandle(Vec<Arc<Uring>>);

static NEXT_THREAD_SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: usize = NEXT_THREAD_SLOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl std::ops::Deref for UringHandle {
    type Target = Uring;
    fn deref(&self) -> &Uring {
        let slot = THREAD_SLOT.with(|s| *s);
        &self.0[slot % self.0.len()]
    }
}

impl UringHandle {
    fn start() -> io::Result<Self> {
        let mut rings = Vec::with_capacity(RINGS);
        for _ in 0..RINGS {
            rings.push(Uring::start()?);
        }
        Ok(UringHandle(rings))
    }
}

impl Drop for UringHandle {
    fn drop(&mut self) {
        for u in &self.0 {
            let mut st = u.lock();
            st.stop = true;
            // Wake the reaper whether it sleeps on the condvar or in the kernel.
            let sqe = opcode::Nop::new().build().user_data(u64::MAX);
            // SAFETY: queues only touched under the state lock (held).
            if unsafe { u.ring.submission_shared().push(&sqe) }.is_ok() {
                let _ = u.ring.submit();
            }
            st.pending += 1;
            u.wake.notify_one();
        }
    }
}

impl std::fmt::Debug for IoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoEngine({})", self.kind().as_str())
    }
}

impl IoEngine {
    /// Starts the engine of the wanted kind. `Auto` falls back to `Sync` when io_uring cannot
    /// be set up (old kernel, seccomp, `io_uring_disabled`), with a warning.
    pub fn new(kind: EngineKind) -> io::Result<Self> {
        let engine = match kind {
            EngineKind::Sync => IoEngine::with(Inner::Sync),
            EngineKind::IoUring => IoEngine::with(Inner::Uring(Arc::new(UringHandle::start()?))),
            EngineKind::Auto => match UringHandle::start() {
                Ok(u) => IoEngine::with(Inner::Uring(Arc::new(u))),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring refused; falling back to pread/pwrite");
                    IoEngine::with(Inner::Sync)
                }
            },
        };
        Ok(engine)
    }

    fn with(inner: Inner) -> Self {
        IoEngine {
            inner,
            fault: Arc::new(std::sync::atomic::AtomicU8::new(Fault::None as u8)),
            disk: crate::disk::Disk::default(),
            timeout: DEFAULT_IO_TIMEOUT,
        }
    }

    /// The same engine with another write and sync timeout.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs a write or sync on the blocking pool under the engine's timeout. Past it, the
    /// error says where the thread doing it waits in the kernel (its `wchan`: a hung device
    /// shows there), or, when the blocking pool had not started it, that it never will: a
    /// write the caller gave up on must not land later (over a delete flag set meanwhile).
    async fn blocking_timed<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        use std::sync::atomic::{AtomicI32, Ordering};
        // 0: not started; CANCELLED: given up before it started; else the thread's id.
        const CANCELLED: i32 = -1;
        let state = Arc::new(AtomicI32::new(0));
        let on = state.clone();
        let op = blocking(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            if on
                .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "given up before it started",
                ));
            }
            f()
        });
        match tokio::time::timeout(self.timeout, op).await {
            Ok(r) => r,
            Err(_) => {
                metrics::counter!("haystack_store_io_timeouts_total").increment(1);
                let cancelled =
                    state.compare_exchange(0, CANCELLED, Ordering::AcqRel, Ordering::Acquire);
                let never_ran = cancelled.is_ok();
                let at = match cancelled {
                    Ok(_) => "not started by the blocking pool; it will not run".to_string(),
                    Err(t) => {
                        let wchan = std::fs::read_to_string(format!("/proc/self/task/{t}/wchan"))
                            .ok()
                            .map(|w| w.trim().to_string());
                        match wchan.as_deref() {
                            // "0": not sleeping (on a CPU, or done by now).
                            Some("0") => format!("thread {t} is running"),
                            Some(w) if !w.is_empty() => format!("thread {t} waits in {w}"),
                            _ => format!("thread {t}, its wait unknown"),
                        }
                    }
                };
                tracing::error!(what, timeout = ?self.timeout, %at, "I/O timed out");
                let msg = format!("{what} did not complete within {:?} ({at})", self.timeout);
                Err(if never_ran {
                    io::Error::new(io::ErrorKind::TimedOut, NeverStarted(msg))
                } else {
                    io::Error::new(io::ErrorKind::TimedOut, msg)
                })
            }
        }
    }

    /// The pread/pwrite engine over the power-loss simulator: every operation, the engine's
    /// own reads, writes and syncs included, goes through `sim` (see `crate::sim`).
    #[cfg(feature = "test-hooks")]
    pub fn simulated(sim: Arc<crate::sim::SimDisk>) -> Self {
        IoEngine {
            disk: crate::disk::Disk::simulated(sim),
            ..IoEngine::with(Inner::Sync)
        }
    }

    /// The file-system handle the volume code uses.
    pub fn disk(&self) -> &crate::disk::Disk {
        &self.disk
    }

    /// Makes every later operation of that kind fail with EIO (tests only; `Fault::None`
    /// clears it). Shared by all clones of this engine.
    pub fn inject_fault(&self, f: Fault) {
        self.fault
            .store(f as u8, std::sync::atomic::Ordering::SeqCst);
    }

    fn check(&self, f: Fault) -> io::Result<()> {
        if self.fault.load(std::sync::atomic::Ordering::Relaxed) == f as u8 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// The kind actually running (never `Auto`).
    pub fn kind(&self) -> EngineKind {
        match self.inner {
            Inner::Uring(_) => EngineKind::IoUring,
            Inner::Sync => EngineKind::Sync,
        }
    }

    /// Reads up to `len` bytes at `offset`; shorter only at end of file.
    pub async fn read_at(&self, file: &Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        Ok(self.read_at_counted(file, offset, len).await?.0)
    }

    /// As [`read_at`](Self::read_at), and says how many read operations reached the disk
    /// layer (1 unless the kernel returned a short read).
    pub async fn read_at_counted(
        &self,
        file: &Arc<File>,
        offset: u64,
        len: usize,
    ) -> io::Result<(Vec<u8>, u32)> {
        self.check(Fault::Reads)?;
        let disk_reads = &crate::metrics::hot().disk_reads;
        match &self.inner {
            Inner::Uring(u) => {
                let mut buf = Vec::with_capacity(len);
                let mut got = 0usize;
                let mut ops = 0u32;
                // A regular file reads short only at EOF, but loop to be exact.
                loop {
                    disk_reads.increment(1);
                    ops += 1;
                    let (res, b) = u
                        .submit(
                            Op::Read {
                                file: file.clone(),
                                offset: offset + got as u64,
                                buf,
                                len: len - got,
                            },
                            self.timeout,
                        )
                        .await?;
                    buf = b;
                    let n = match res {
                        Err(e) if retryable(&e) && ops <= RETRIES => continue,
                        r => r?,
                    };
                    got += n;
                    if n == 0 || got >= len {
                        break;
                    }
                }
                Ok((buf, ops))
            }
            Inner::Sync => {
                // One pread (a regular file reads short only at its end; `Disk::read_at`
                // loops for the rest), through the simulator when one is attached.
                // A read left running past the timeout does no harm when it ends (unlike a
                // write, which `blocking_timed` keeps from starting late): a plain timeout,
                // without the per-call start bookkeeping, on the GET path.
                let (file, disk) = (file.clone(), self.disk.clone());
                let read = blocking(move || {
                    crate::metrics::hot().disk_reads.increment(1);
                    let mut buf = vec![0u8; len];
                    let got = disk.read_at(&file, &mut buf, offset)?;
                    buf.truncate(got);
                    Ok((buf, 1))
                });
                match tokio::time::timeout(self.timeout, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        metrics::counter!("haystack_store_io_timeouts_total").increment(1);
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("a read did not complete within {:?}", self.timeout),
                        ))
                    }
                }
            }
        }
    }

    /// Writes all of `buf` at `offset`, within the engine's timeout.
    pub async fn write_all_at(
        &self,
        file: &Arc<File>,
        offset: u64,
        buf: Vec<u8>,
    ) -> io::Result<()> {
        self.check(Fault::Writes)?;
        // Both engines write with pwrite on tokio's blocking pool: writes left the ring after
        // a write submitted to it went without a completion for over 30 s, three times in
        // test runs (docs/ARCHITECTURE.md, "I/O engine"). A volume's writes are group
        // commits, so the thread hop is paid once per batch, as io-wq's was for a punted
        // write.
        let (file, disk) = (file.clone(), self.disk.clone());
        self.blocking_timed("a write", move || disk.write_all_at(&file, &buf, offset))
            .await
    }

    /// fdatasync: everything written to `file` before this call is durable when it returns
    /// (within the engine's timeout).
    pub async fn fdatasync(&self, file: &Arc<File>) -> io::Result<()> {
        metrics::counter!("haystack_store_fsyncs_total").increment(1);
        self.check(Fault::Syncs)?;
        // On the blocking pool for both engines, as writes are.
        let (file, disk) = (file.clone(), self.disk.clone());
        self.blocking_timed("an fdatasync", move || disk.sync_data(&file))
            .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking I/O task failed: {e}")))?
}

/// An operation on the ring (reads only; see the module comment).
enum Op {
    Read {
        file: Arc<File>,
        offset: u64,
        buf: Vec<u8>,
        len: usize,
    },
}

type Completion = (io::Result<usize>, Vec<u8>);

/// One entry of the in-flight table; its index is the SQE's user_data.
enum Slot {
    Free,
    Waiting {
        op: Op,
        waker: Option<Waker>,
        /// Did not complete inside its own submit call; the reaper waits for it.
        pending: bool,
        /// Its future was dropped: free the slot when the completion arrives.
        abandoned: bool,
    },
    Done(Completion),
}

struct State {
    slots: Vec<Slot>,
    free: Vec<usize>,
    pending: usize,
    /// The last engine handle is gone: the reaper exits once nothing is in flight.
    stop: bool,
}

impl State {
    fn in_flight(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Waiting { .. }))
            .count()
    }
}

struct Uring {
    ring: IoUring,
    state: Mutex<State>,
    wake: Condvar,
}

const RING_ENTRIES: u32 = 1024;
/// user_data of the NOP that wakes the reaper on stop.
const STOP_TOKEN: u64 = u64::MAX;

impl Uring {
    fn start() -> io::Result<Arc<Self>> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let u = Arc::new(Uring {
            ring,
            state: Mutex::new(State {
                slots: Vec::new(),
                free: Vec::new(),
                pending: 0,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        // Probe: a NOP must complete, or the kernel refuses the ring in practice.
        {
            let _st = u.lock();
            let sqe = opcode::Nop::new().build().user_data(STOP_TOKEN - 1);
            // SAFETY: the queues are only touched under the state lock.
            unsafe { u.ring.submission_shared().push(&sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full at start"))?;
            u.ring.submit_and_wait(1)?;
            let cq = unsafe { u.ring.completion_shared() };
            for cqe in cq {
                if cqe.result() < 0 {
                    return Err(io::Error::from_raw_os_error(-cqe.result()));
                }
            }
        }
        let reaper = u.clone();
        std::thread::Builder::new()
            .name("io-uring-reaper".into())
            .spawn(move || reaper.reap_loop())?;
        Ok(u)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the table half-updated in a way that
        // matters more than losing the engine; recover the guard.
        haystack_service::sync::lock(&self.state)
    }

    /// Submits `op`; a completion that arrives inside the submit call (a page-cache hit) is
    /// returned at once, without a waker or a channel.
    /// One that did not complete inline fails with `TimedOut` after `timeout` (its buffer
    /// stays in the table until the kernel is done with it).
    async fn submit(&self, op: Op, timeout: std::time::Duration) -> io::Result<Completion> {
        let id = {
            let mut st = self.lock();
            let id = match st.free.pop() {
                Some(i) => i,
                None => {
                    st.slots.push(Slot::Free);
                    st.slots.len() - 1
                }
            };
            st.slots[id] = Slot::Waiting {
                op,
                waker: None,
                pending: false,
                abandoned: false,
            };
            let Slot::Waiting { op, .. } = &mut st.slots[id] else {
                unreachable!("slot was just filled")
            };
            let Op::Read {
                file,
                offset,
                buf,
                len,
            } = op;
            let start = buf.len();
            buf.reserve(*len);
            // SAFETY: the spare capacity stays allocated (the Vec is kept in the table) until
            // the completion is reaped.
            let ptr = unsafe { buf.as_mut_ptr().add(start) };
            let sqe = opcode::Read::new(types::Fd(file.as_raw_fd()), ptr, *len as u32)
                .offset(*offset)
                .build();
            let sqe = sqe.user_data(id as u64);
            // SAFETY: queues only touched under the state lock (held).
            let mut pushed = unsafe { self.ring.submission_shared().push(&sqe).is_ok() };
            if !pushed {
                // Full submission queue: flush it and retry once. (Our SQE is not queued, so
                // on failure its slot can be freed at once.)
                if self.ring.submit().is_ok() {
                    pushed = unsafe { self.ring.submission_shared().push(&sqe).is_ok() };
                }
            }
            if !pushed {
                st.slots[id] = Slot::Free;
                st.free.push(id);
                return Err(io::Error::other("io_uring submission queue full"));
            }
            if let Err(e) = self.ring.submit() {
                // The SQE may still be queued: leave it to the reaper rather than free its
                // buffer now.
                tracing::warn!(error = %e, "io_uring submit failed");
            }
            Self::drain(&self.ring, &mut st);
            if let Slot::Done(_) = st.slots[id] {
                let Slot::Done(c) = std::mem::replace(&mut st.slots[id], Slot::Free) else {
                    unreachable!("checked above")
                };
                st.free.push(id);
                return Ok(c);
            }
            if let Slot::Waiting { pending, .. } = &mut st.slots[id] {
                *pending = true;
            }
            st.pending += 1;
            self.wake.notify_one();
            id
        };
        // A completion the kernel never posts must not hold its caller (a delete holds its
        // volume's gate while it reads the needle's header) forever; only an operation that
        // did not complete inline pays for the timer.
        let waiting = OpFuture {
            uring: self,
            id,
            finished: false,
        };
        match tokio::time::timeout(timeout, waiting).await {
            Ok(c) => Ok(c),
            Err(_) => {
                metrics::counter!("haystack_store_io_timeouts_total").increment(1);
                tracing::error!(?timeout, "an io_uring read timed out");
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("a read did not complete within {timeout:?}"),
                ))
            }
        }
    }

    /// Completes every CQE in the completion queue. Caller holds the state lock.
    fn drain(ring: &IoUring, st: &mut State) {
        // SAFETY: queues only touched under the state lock.
        let cq = unsafe { ring.completion_shared() };
        for cqe in cq {
            let id = cqe.user_data();
            if id == STOP_TOKEN {
                st.pending = st.pending.saturating_sub(1);
                continue;
            }
            let Some(slot) = st.slots.get_mut(id as usize) else {
                continue;
            };
            let Slot::Waiting {
                op,
                waker,
                pending,
                abandoned,
            } = std::mem::replace(slot, Slot::Free)
            else {
                *slot = Slot::Free;
                continue;
            };
            if pending {
                st.pending -= 1;
            }
            let res = cqe.result();
            let out = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as usize)
            };
            let Op::Read { mut buf, .. } = op;
            if let Ok(n) = out {
                // SAFETY: the kernel initialised n bytes past the old length.
                unsafe { buf.set_len(buf.len() + n) };
            }
            if abandoned {
                st.free.push(id as usize);
                continue;
            }
            st.slots[id as usize] = Slot::Done((out, buf));
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    fn reap_loop(self: Arc<Self>) {
        loop {
            {
                let mut st = self.lock();
                while st.pending == 0 {
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            }
            // Wait outside the lock so that submitters are not blocked; any new completion,
            // ours or not, wakes us.
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!(error = %e, "io_uring wait failed");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            let mut st = self.lock();
            Self::drain(&self.ring, &mut st);
            if st.stop {
                let n = st.in_flight();
                if n == 0 {
                    return;
                }
                // The wake-up NOP was reaped; keep waiting for the real operations.
                st.pending = n;
            }
        }
    }
}

/// Waits for an operation that did not complete inline.
struct OpFuture<'a> {
    uring: &'a Uring,
    id: usize,
    finished: bool,
}

impl Future for OpFuture<'_> {
    type Output = Completion;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion> {
        let mut st = self.uring.lock();
        let id = self.id;
        match &mut st.slots[id] {
            Slot::Done(_) => {
                let Slot::Done(c) = std::mem::replace(&mut st.slots[id], Slot::Free) else {
                    unreachable!("checked above")
                };
                st.free.push(id);
                drop(st);
                self.finished = true;
                Poll::Ready(c)
            }
            Slot::Waiting { waker, .. } => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Slot::Free => {
                drop(st);
                self.finished = true;
                Poll::Ready((Err(io::Error::other("io_uring operation lost")), Vec::new()))
            }
        }
    }
}

impl Drop for OpFuture<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut st = self.uring.lock();
        match &mut st.slots[self.id] {
            Slot::Waiting { abandoned, .. } => *abandoned = true,
            Slot::Done(_) => {
                st.slots[self.id] = Slot::Free;
                st.free.push(self.id);
            }
            Slot::Free => {}
        }
    }
}
