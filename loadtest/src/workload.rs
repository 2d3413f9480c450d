//! The workload itself: a mix of uploads, reads (Zipf over recency), deletes and video range
//! reads, run closed-loop (a fixed number of requests in flight) or open-loop (a fixed rate,
//! latency from the intended send time), every phase bounded by a request count and a
//! deadline, with a progress line while it runs.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;

use crate::dist::{RecencyPicker, SizeDist};
use crate::error::{LoadError, Result};
use crate::payload::{video_bytes, JpegPool};
use crate::report::PhaseReport;
use crate::schedule::{Arrivals, Schedule};
use crate::stats::{Failure, Op, Recorder};
use crate::target::{ObjState, Object, Target, TargetKind, VARIANTS};

/// Relative weights of the operations of the measured phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    pub put: u32,
    pub get: u32,
    pub delete: u32,
    pub video: u32,
}

impl Default for Mix {
    /// Read-heavy, as a photo store is: 10 uploads, 88 reads and 2 deletes in 100.
    fn default() -> Self {
        Mix {
            put: 10,
            get: 88,
            delete: 2,
            video: 0,
        }
    }
}

impl Mix {
    /// Uploads only.
    pub const PUT_ONLY: Mix = Mix {
        put: 1,
        get: 0,
        delete: 0,
        video: 0,
    };
    /// Photo reads only.
    pub const GET_ONLY: Mix = Mix {
        put: 0,
        get: 1,
        delete: 0,
        video: 0,
    };

    /// Parses `put=10,get=88,delete=2,video=0` (missing names weigh 0).
    pub fn parse(s: &str) -> Result<Mix> {
        let mut m = Mix {
            put: 0,
            get: 0,
            delete: 0,
            video: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| LoadError::Config(format!("mix {s:?}: expected name=weight")))?;
            let w: u32 = v
                .trim()
                .parse()
                .map_err(|_| LoadError::Config(format!("mix {s:?}: weight {v:?}")))?;
            match k.trim() {
                "put" => m.put = w,
                "get" => m.get = w,
                "delete" => m.delete = w,
                "video" => m.video = w,
                other => {
                    return Err(LoadError::Config(format!(
                        "mix: unknown operation {other:?} (put, get, delete, video)"
                    )))
                }
            }
        }
        if m.total() == 0 {
            return Err(LoadError::Config(format!("mix {s:?}: every weight is 0")));
        }
        Ok(m)
    }

    fn total(&self) -> u32 {
        self.put + self.get + self.delete + self.video
    }

    /// Draws an operation.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Op {
        let mut x = rng.random_range(0..self.total());
        for (w, op) in [
            (self.put, Op::Put),
            (self.get, Op::Get),
            (self.delete, Op::Delete),
        ] {
            if x < w {
                return op;
            }
            x -= w;
        }
        Op::Video
    }

    /// `put=10,get=88,delete=2,video=0`.
    pub fn describe(&self) -> String {
        format!(
            "put={},get={},delete={},video={}",
            self.put, self.get, self.delete, self.video
        )
    }
}

/// How requests are issued.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// `concurrency` requests in flight; each worker sends its next when the last answers.
    Closed { concurrency: usize },
    /// `rate` requests per second whatever the answers do, at most `max_in_flight` at once
    /// (beyond that a request waits for a slot, and its latency includes the wait).
    Open {
        rate: f64,
        arrivals: Arrivals,
        max_in_flight: usize,
    },
}

impl Mode {
    /// `closed-loop, 32 in flight` or `open-loop, 500/s poisson (at most 1024 in flight)`.
    pub fn describe(&self) -> String {
        match *self {
            Mode::Closed { concurrency } => format!("closed-loop, {concurrency} in flight"),
            Mode::Open {
                rate,
                arrivals,
                max_in_flight,
            } => format!(
                "open-loop, {rate}/s {} arrivals (at most {max_in_flight} in flight; latency from the intended send time)",
                match arrivals {
                    Arrivals::Uniform => "uniform",
                    Arrivals::Poisson => "poisson",
                }
            ),
        }
    }

    /// Requests in flight at most.
    pub fn width(&self) -> usize {
        match *self {
            Mode::Closed { concurrency } => concurrency,
            Mode::Open { max_in_flight, .. } => max_in_flight,
        }
    }
}

/// When a phase stops: whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Requests started.
    pub count: u64,
    /// Wall time.
    pub duration: Duration,
}

/// The parts of a workload that do not change between phases.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Upload sizes.
    pub sizes: SizeDist,
    /// Zipf exponent over recency for reads (0: uniform).
    pub zipf: f64,
    /// Relative weights of reading each of [`VARIANTS`] (a photo without the variant is
    /// read as its original).
    pub read_variants: [u32; 4],
    /// Bytes per video range read.
    pub video_range: u64,
    /// Video size.
    pub video_size: u64,
    /// Seed of every random choice and payload.
    pub seed: u64,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            sizes: SizeDist::default(),
            zipf: 1.0,
            read_variants: [1, 0, 0, 0],
            video_range: 256 << 10,
            video_size: 8 << 20,
            seed: 1,
            progress: false,
        }
    }
}

/// Parses `original=1,thumb=3` into weights over [`VARIANTS`].
pub fn parse_variants(s: &str) -> Result<[u32; 4]> {
    let mut w = [0u32; 4];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, "1"));
        let i = VARIANTS
            .iter()
            .position(|n| *n == k.trim())
            .ok_or_else(|| {
                LoadError::Config(format!(
                    "read variant {k:?}: expected one of {}",
                    VARIANTS.join(", ")
                ))
            })?;
        w[i] = v
            .trim()
            .parse()
            .map_err(|_| LoadError::Config(format!("read variant weight {v:?}")))?;
    }
    if w.iter().all(|x| *x == 0) {
        return Err(LoadError::Config(format!("read variants {s:?}: all 0")));
    }
    Ok(w)
}

/// The uploads a run has made, oldest first, for reads to pick from by recency.
#[derive(Default)]
pub struct Population {
    inner: Mutex<PopInner>,
}

#[derive(Default)]
struct PopInner {
    /// Live objects oldest first; `None` where one was deleted (compacted from time to time).
    slots: Vec<Option<Arc<Object>>>,
    live: usize,
    /// Every acknowledged upload, deleted or not (for `--verify`).
    all: Vec<Arc<Object>>,
}

impl Population {
    /// Adds a new upload (the newest).
    pub fn push(&self, o: Arc<Object>) {
        let mut p = self.inner.lock().expect("population lock");
        p.slots.push(Some(o.clone()));
        p.live += 1;
        p.all.push(o);
    }

    /// Live objects.
    pub fn live(&self) -> usize {
        self.inner.lock().expect("population lock").live
    }

    /// A live object by recency popularity.
    pub fn pick<R: Rng + ?Sized>(&self, picker: RecencyPicker, rng: &mut R) -> Option<Arc<Object>> {
        let p = self.inner.lock().expect("population lock");
        for _ in 0..16 {
            let i = picker.pick(p.slots.len(), rng)?;
            if let Some(o) = &p.slots[i] {
                return Some(o.clone());
            }
        }
        None
    }

    /// Takes a live object (uniformly) out of the readable set, to delete it.
    pub fn take_for_delete<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<Arc<Object>> {
        let mut p = self.inner.lock().expect("population lock");
        if p.live == 0 {
            return None;
        }
        for _ in 0..16 {
            let i = rng.random_range(0..p.slots.len());
            if let Some(o) = p.slots[i].take() {
                p.live -= 1;
                if p.slots.len() > 64 && p.live < p.slots.len() / 2 {
                    p.slots.retain(Option::is_some);
                }
                if o.start_delete() {
                    return Some(o);
                }
            }
        }
        None
    }

    /// Every acknowledged upload, oldest first.
    pub fn all(&self) -> Vec<Arc<Object>> {
        self.inner.lock().expect("population lock").all.clone()
    }
}

struct Shared {
    target: Target,
    pool: Arc<JpegPool>,
    shape: Shape,
    photos: Population,
    videos: Population,
    uploads: AtomicU64,
}

/// Drives phases of a workload against one target, keeping what was uploaded.
#[derive(Clone)]
pub struct Runner {
    s: Arc<Shared>,
}

impl Runner {
    /// Makes the payload pool (on a blocking thread: JPEG encoding) and gets ready.
    pub async fn new(target: Target, shape: Shape) -> Result<Runner> {
        let (min, max) = shape.sizes.bounds();
        let pool = tokio::task::spawn_blocking(move || JpegPool::generate(min, max))
            .await
            .map_err(|e| LoadError::Payload(format!("pool generation panicked: {e}")))??;
        Ok(Runner::with_pool(target, shape, Arc::new(pool)))
    }

    /// With a pool made already (shared between the targets of a comparison).
    pub fn with_pool(target: Target, shape: Shape, pool: Arc<JpegPool>) -> Runner {
        Runner {
            s: Arc::new(Shared {
                target,
                pool,
                shape,
                photos: Population::default(),
                videos: Population::default(),
                uploads: AtomicU64::new(0),
            }),
        }
    }

    /// The payload pool.
    pub fn pool(&self) -> Arc<JpegPool> {
        self.s.pool.clone()
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.s.target
    }

    /// Every acknowledged photo upload.
    pub fn photos(&self) -> Vec<Arc<Object>> {
        self.s.photos.all()
    }

    /// Every acknowledged video upload.
    pub fn videos(&self) -> Vec<Arc<Object>> {
        self.s.videos.all()
    }

    /// Takes the S3 objects `{prefix}/0` .. `{prefix}/{count - 1}`, all of the run's one fixed
    /// size, as uploaded already (by an earlier run with the same prefix, seed and size), so a
    /// read-only phase can run on its own; this run's uploads are numbered from `count` on.
    pub fn adopt_s3_objects(&self, count: u64) -> Result<()> {
        let TargetKind::S3(e) = &self.s.target.kind else {
            return Err(LoadError::Config(
                "existing objects are for the S3 target only".into(),
            ));
        };
        let SizeDist::Fixed(size) = self.s.shape.sizes else {
            return Err(LoadError::Config(
                "existing S3 objects need a fixed size (--size fixed:SIZE)".into(),
            ));
        };
        for n in 0..count {
            let mut urls: [Option<Box<str>>; 4] = Default::default();
            urls[0] = Some(e.object_url(n).into());
            let seed = upload_seed(&self.s.shape, n);
            self.s
                .photos
                .push(Arc::new(Object::new(n.to_string(), urls, size, seed)));
        }
        self.s.uploads.fetch_max(count, Ordering::Relaxed);
        Ok(())
    }

    /// Runs one phase of `mix` under `mode` until `limits`.
    pub async fn phase(&self, name: &str, mix: Mix, mode: Mode, limits: Limits) -> PhaseReport {
        let rec = Arc::new(Recorder::new());
        let started = Instant::now();
        let deadline = started + limits.duration;
        let progress = Progress::start(name, rec.clone(), limits, self.s.shape.progress);
        match mode {
            Mode::Closed { concurrency } => {
                let issued = Arc::new(AtomicU64::new(0));
                let mut tasks = Vec::new();
                for w in 0..concurrency.max(1) {
                    let s = self.s.clone();
                    let rec = rec.clone();
                    let issued = issued.clone();
                    let seed = self.s.shape.seed ^ ((w as u64 + 1) << 40) ^ hash(name);
                    tasks.push(tokio::spawn(async move {
                        let mut rng = SmallRng::seed_from_u64(seed);
                        while Instant::now() < deadline
                            && issued.fetch_add(1, Ordering::Relaxed) < limits.count
                        {
                            let op = mix.pick(&mut rng);
                            exec(&s, &rec, op, None, &mut rng).await;
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            }
            Mode::Open {
                rate,
                arrivals,
                max_in_flight,
            } => {
                let mut sched = Schedule::new(rate, arrivals).expect("rate checked at start");
                let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
                let mut rng = SmallRng::seed_from_u64(self.s.shape.seed ^ hash(name));
                let start = tokio::time::Instant::now();
                while sched.issued() < limits.count {
                    let intended = start + sched.next_offset(&mut rng);
                    if intended.into_std() >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(intended).await;
                    let permit = match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    };
                    if Instant::now() >= deadline {
                        break;
                    }
                    let op = mix.pick(&mut rng);
                    let s = self.s.clone();
                    let rec = rec.clone();
                    let mut op_rng = SmallRng::seed_from_u64(rng.random());
                    tokio::spawn(async move {
                        let intended = intended.into_std();
                        rec.send_lag(Instant::now().saturating_duration_since(intended));
                        exec(&s, &rec, op, Some(intended), &mut op_rng).await;
                        drop(permit);
                    });
                }
                // every request in flight answers (or times out) before the phase ends
                let _ = slots.acquire_many(max_in_flight.max(1) as u32).await;
            }
        }
        progress.finish().await;
        rec.snapshot(name, started.elapsed())
    }

    /// Uploads `n` videos (`concurrency` at a time), bounded by `duration`.
    pub async fn upload_videos(
        &self,
        n: u64,
        concurrency: usize,
        duration: Duration,
    ) -> PhaseReport {
        let rec = Arc::new(Recorder::new());
        let started = Instant::now();
        let deadline = started + duration;
        let issued = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let s = self.s.clone();
            let rec = rec.clone();
            let issued = issued.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < n {
                    let seed = s.shape.seed
                        ^ 0x7669_6465_6f00_0000
                        ^ s.uploads.fetch_add(1, Ordering::Relaxed);
                    let body = video_bytes(seed, 0, s.shape.video_size as usize);
                    let t0 = Instant::now();
                    match s.target.upload_video(body, seed).await {
                        Ok(o) => {
                            rec.ok(Op::VideoPut, t0.elapsed(), o.size);
                            s.videos.push(Arc::new(o));
                        }
                        Err(f) => rec.fail(Op::VideoPut, &f),
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        rec.snapshot("videos", started.elapsed())
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// One operation; latency from `intended` (open loop) or from just before the request.
async fn exec(s: &Shared, rec: &Recorder, op: Op, intended: Option<Instant>, rng: &mut SmallRng) {
    let picker = RecencyPicker {
        exponent: s.shape.zipf,
    };
    match op {
        Op::Get => {
            let Some(obj) = s.photos.pick(picker, rng) else {
                return upload(s, rec, intended, rng).await;
            };
            let v = pick_variant(&s.shape.read_variants, rng);
            let url = obj.url(v);
            let t0 = intended.unwrap_or_else(Instant::now);
            match s.target.get(url, None).await {
                Ok(b) => {
                    // the original must come back as uploaded (its length, here; bytes in --verify)
                    let exact = v == 0 || obj.urls[v].is_none();
                    if b.is_empty() || (exact && b.len() as u64 != obj.size) {
                        rec.fail(Op::Get, &Failure::Mismatch);
                    } else {
                        rec.ok(Op::Get, t0.elapsed(), b.len() as u64);
                    }
                }
                Err(Failure::Status(404)) if obj.state() != ObjState::Live => {
                    rec.raced_delete(Op::Get)
                }
                Err(f) => rec.fail(Op::Get, &f),
            }
        }
        Op::Put => upload(s, rec, intended, rng).await,
        Op::Delete => {
            let Some(obj) = s.photos.take_for_delete(rng) else {
                return upload(s, rec, intended, rng).await;
            };
            let t0 = intended.unwrap_or_else(Instant::now);
            match s.target.delete(&obj).await {
                Ok(()) => {
                    obj.set_state(ObjState::Deleted);
                    rec.ok(Op::Delete, t0.elapsed(), 0);
                }
                Err(f) => {
                    obj.set_state(ObjState::Unknown);
                    rec.fail(Op::Delete, &f);
                }
            }
        }
        Op::Video => {
            let Some(obj) = s.videos.pick(picker, rng) else {
                rec.fail(Op::Video, &Failure::Status(0));
                return;
            };
            let len = s.shape.video_range.min(obj.size).max(1);
            let start = rng.random_range(0..=obj.size - len);
            let t0 = intended.unwrap_or_else(Instant::now);
            match s.target.get(obj.url(0), Some((start, start + len))).await {
                Ok(b) => {
                    if b[..] == video_bytes(obj.seed, start, len as usize)[..] {
                        rec.ok(Op::Video, t0.elapsed(), len);
                    } else {
                        rec.fail(Op::Video, &Failure::Mismatch);
                    }
                }
                Err(f) => rec.fail(Op::Video, &f),
            }
        }
        Op::VideoPut | Op::Verify => {}
    }
}

async fn upload(s: &Shared, rec: &Recorder, intended: Option<Instant>, rng: &mut SmallRng) {
    let n = s.uploads.fetch_add(1, Ordering::Relaxed);
    let size = s.shape.sizes.sample(rng);
    let seed = upload_seed(&s.shape, n);
    let body = match s.pool.payload(size, seed) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, size, "cannot make a payload");
            rec.fail(Op::Put, &Failure::Mismatch);
            return;
        }
    };
    let t0 = intended.unwrap_or_else(Instant::now);
    match s.target.upload(body, n, seed).await {
        Ok(o) => {
            rec.ok(Op::Put, t0.elapsed(), size);
            s.photos.push(Arc::new(o));
        }
        Err(f) => rec.fail(Op::Put, &f),
    }
}

/// The payload seed of the run's `n`-th upload.
fn upload_seed(shape: &Shape, n: u64) -> u64 {
    shape.seed.wrapping_mul(0x1000_0000_01b3) ^ n
}

fn pick_variant<R: Rng + ?Sized>(w: &[u32; 4], rng: &mut R) -> usize {
    let total: u32 = w.iter().sum();
    let mut x = rng.random_range(0..total.max(1));
    for (i, wi) in w.iter().enumerate() {
        if x < *wi {
            return i;
        }
        x -= wi;
    }
    0
}

/// The progress line: a spinner with counts and rate on a terminal, a plain line every
/// 5 s otherwise; off when not wanted.
struct Progress {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(name: &str, rec: Arc<Recorder>, limits: Limits, on: bool) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if !on {
            return Progress { stop, task: None };
        }
        let name = name.to_string();
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b
        });
        let st = stop.clone();
        let task = tokio::spawn(async move {
            let mut last_plain = Instant::now();
            let mut prev = (0u64, Instant::now());
            while !st.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let (ok, failed) = rec.totals();
                let now = Instant::now();
                let rate = (ok + failed - prev.0) as f64
                    / now.duration_since(prev.1).as_secs_f64().max(1e-3);
                prev = (ok + failed, now);
                let msg = format!(
                    "{name}: {ok} ok, {failed} failed, {rate:.0} req/s (limits: {} requests, {:.0} s)",
                    if limits.count == u64::MAX {
                        "no".to_string()
                    } else {
                        limits.count.to_string()
                    },
                    limits.duration.as_secs_f64()
                );
                match &bar {
                    Some(b) => {
                        b.set_message(msg);
                        b.tick();
                    }
                    None if last_plain.elapsed() >= Duration::from_secs(5) => {
                        last_plain = Instant::now();
                        eprintln!("{:>6.1}s {msg}", rec.elapsed().as_secs_f64());
                    }
                    None => {}
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        Progress {
            stop,
            task: Some(task),
        }
    }

    async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
