//! The process-wide Prometheus recorder behind the `metrics` facade, rendered on /metrics.
//!
//! One recorder per process: `haystack server` runs every role in one process and they all
//! share it (every metric name carries its service prefix).

use std::sync::OnceLock;

/// Installs the process's recorder (`haystack_service::metrics`) once.
pub fn install() {
    haystack_service::metrics::install();
}

/// The Prometheus text exposition of every metric of this process.
pub fn render() -> String {
    install();
    let hot = hot();
    for c in [
        &hot.gets,
        &hot.disk_reads,
        &hot.bytes_read,
        &hot.get_disk_reads,
    ] {
        c.publish();
    }
    haystack_service::metrics::render()
}

/// A counter split over cache-line-sized shards, one per thread slot, so that cores counting
/// every GET do not fight over one cache line. Its total is handed to the recorder when
/// /metrics is rendered.
pub struct Sharded {
    shards: Box<[Padded]>,
    counter: metrics::Counter,
}

#[repr(align(128))]
struct Padded(std::sync::atomic::AtomicU64);

const SHARDS: usize = 16;

static NEXT_SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS;
}

impl Sharded {
    fn new(counter: metrics::Counter) -> Self {
        Sharded {
            shards: (0..SHARDS)
                .map(|_| Padded(std::sync::atomic::AtomicU64::new(0)))
                .collect(),
            counter,
        }
    }

    pub fn increment(&self, n: u64) {
        let i = SLOT.with(|s| *s);
        self.shards[i]
            .0
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn publish(&self) {
        let total = self
            .shards
            .iter()
            .map(|s| s.0.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        self.counter.absolute(total);
    }
}

/// The counters touched on every GET, registered once. Installs the recorder first, so the
/// handles are live.
pub struct Hot {
    pub gets: Sharded,
    pub disk_reads: Sharded,
    pub bytes_read: Sharded,
    /// Read operations issued by GETs: divided by `gets`, the disk reads per GET (the Haystack
    /// promise: exactly one).
    pub get_disk_reads: Sharded,
}

static HOT: OnceLock<Hot> = OnceLock::new();

pub fn hot() -> &'static Hot {
    HOT.get_or_init(|| {
        install();
        Hot {
            gets: Sharded::new(metrics::counter!("haystack_store_gets_total")),
            disk_reads: Sharded::new(metrics::counter!("haystack_store_disk_reads_total")),
            bytes_read: Sharded::new(metrics::counter!("haystack_store_bytes_read_total")),
            get_disk_reads: Sharded::new(metrics::counter!("haystack_store_get_disk_reads_total")),
        }
    })
}

/// Counts one HTTP request and records its latency (`haystack_store_http_*`).
pub fn record_request(
    route: &'static str,
    method: &actix_web::http::Method,
    status: u16,
    secs: f64,
) {
    haystack_service::metrics::record_request(
        "haystack_store",
        route,
        method.as_str(),
        status,
        secs,
    );
}
