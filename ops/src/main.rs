//! `haystack`: the one command of the photo store, with a subcommand per role and operator tool.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use haystack_service::auth::Security;
use haystack_store::{EngineKind, StoreConfig};

#[derive(Parser)]
#[command(
    name = "haystack",
    version,
    about = "A Haystack-style photo and video store"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "HAYSTACK_LOG_JSON")]
    log_json: bool,
    /// File holding the cluster secret (`haystack server` makes DATA/cluster.secret). The
    /// secret may instead be given in HAYSTACK_CLUSTER_SECRET. Roles use it to prove
    /// themselves to each other; tools mint an admin token from it unless --token is given.
    #[arg(long, global = true, env = "HAYSTACK_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// A token for the operator tools (`haystack token create`).
    #[arg(long, global = true, env = "HAYSTACK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Roles append admin actions (who, what, when) to this file as JSON lines.
    #[arg(long, global = true, env = "HAYSTACK_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// TLS: this process's PEM certificate chain. With --tls-key and --tls-ca, every listener
    /// speaks HTTPS and every internal client trusts only that CA (use https:// URLs).
    #[arg(long, global = true, env = "HAYSTACK_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// TLS: the certificate's PEM private key.
    #[arg(long, global = true, env = "HAYSTACK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS: the PEM CA certificate(s) the cluster's certificates are signed by.
    #[arg(long, global = true, env = "HAYSTACK_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: listeners ask for a client certificate signed by --tls-ca, and clients
    /// present --tls-cert.
    #[arg(
        long,
        global = true,
        env = "HAYSTACK_TLS_CLIENT_AUTH",
        requires = "tls_cert"
    )]
    tls_client_auth: bool,
    /// Signed read URLs (private photos): read URLs carry an expiry and an HMAC and live this
    /// many seconds (rounded up by at most a quarter); stores and caches serve reads only on
    /// a valid signature. Every role of a cluster must be given the same value.
    #[arg(long, global = true, env = "HAYSTACK_SIGNED_READS_TTL", value_parser = clap::value_parser!(u64).range(1..))]
    signed_reads_ttl: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a store machine: volumes of needles served over HTTP (`haystack store --listen
    /// ADDR ...`), or take one out of the cluster (`haystack store drain ID`, `haystack store
    /// remove ID`).
    #[command(args_conflicts_with_subcommands = true)]
    Store {
        #[command(subcommand)]
        command: Option<StoreCommand>,
        #[command(flatten)]
        args: StoreArgs,
    },
    /// Run a directory: photo → volume → replicas, placement, liveness, read URLs.
    Directory(DirectoryArgs),
    /// Run a cache node: hot photos and videos in memory in front of the stores.
    Cache(CacheArgs),
    /// Run the upload API: photos with resized variants, streamed videos.
    Uploader(UploaderArgs),
    /// Run the S3-compatible API (`haystack s3 --listen ADDR`), or manage its access keys and
    /// buckets (`haystack s3 key create --bucket NAME --read --write`).
    #[command(args_conflicts_with_subcommands = true)]
    S3 {
        #[command(subcommand)]
        command: Option<S3Command>,
        #[command(flatten)]
        args: S3Args,
    },
    /// Show the cluster: machines (up or down, free space) and logical volumes (replicas,
    /// state, fill, dead bytes).
    Status(StatusArgs),
    /// Quick manual work on one photo (the original only; variants are the uploader's job).
    Photo {
        #[command(subcommand)]
        command: PhotoCommand,
        /// The directory's URL; several equivalent directories comma-separated (or the flag
        /// repeated), tried in order.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8082",
            env = "HAYSTACK_DIRECTORY",
            value_delimiter = ',',
            global = true
        )]
        directory: Vec<String>,
    },
    /// Operator tools on one logical volume.
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
        /// The directory's URL; several equivalent directories comma-separated (or the flag
        /// repeated), tried in order.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8082",
            env = "HAYSTACK_DIRECTORY",
            value_delimiter = ',',
            global = true
        )]
        directory: Vec<String>,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Move replicas from the fullest stores to the emptiest until disk use (fraction of
    /// capacity held in replicas) is within the spread: prints the plan, then runs it (each
    /// move a bulk copy, the volume read-only meanwhile).
    Rebalance {
        /// The directory's URL; several equivalent directories comma-separated (or the flag
        /// repeated), tried in order.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8082",
            env = "HAYSTACK_DIRECTORY",
            value_delimiter = ','
        )]
        directory: Vec<String>,
        /// Only show the plan.
        #[arg(long)]
        dry_run: bool,
        /// The spread to reach (default: the directory's `rebalance_spread`).
        #[arg(long)]
        spread: Option<f64>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Garbage collection: delete needles that no photo references (failed uploads, deleted
    /// photos whose store deletes were missed).
    Gc {
        /// The directory's URL; several equivalent directories comma-separated (or the flag
        /// repeated), tried in order.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8082",
            env = "HAYSTACK_DIRECTORY",
            value_delimiter = ','
        )]
        directory: Vec<String>,
        /// Needles of photos younger than this (seconds) are left alone: their upload may
        /// still be running.
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
        /// S3 data no S3 record names is deleted only this long (seconds) after its commit,
        /// and never sooner than --grace-secs. Keep it well above the S3 role's record
        /// deadline (60 s) plus a directory request's timeouts and the clock skew between
        /// this host and the directory.
        #[arg(long, default_value_t = haystack_s3::gc::MIN_AGE.as_secs(), value_parser = clap::value_parser!(u64).range(600..))]
        s3_min_age_secs: u64,
        /// Tests only: allow --s3-min-age-secs below 600, which can delete the data of an S3
        /// write in flight.
        #[arg(long, hide = true)]
        unsafe_s3_min_age: Option<u64>,
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Tokens for operators and their tools (needs the cluster secret).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run a whole local cluster on loopback: a directory (embedded metadata) and stores, each
    /// its own process of this binary. Ctrl-C stops it; its data stays in --data-dir.
    Server(ServerArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new token: `admin` (everything), `ops` (maintenance: seal, compact, verify,
    /// repair, gc, and reads; no needle writes or photo commits) or `read` (listings and
    /// lookups). Pass it as --token or HAYSTACK_TOKEN; it is valid until it expires or the
    /// cluster secret changes.
    Create {
        /// admin, ops or read.
        #[arg(long)]
        role: String,
        /// Who holds it: shown in the audit log. Letters, digits and -_@: only.
        #[arg(long, default_value = "operator")]
        subject: String,
        /// Lifetime in seconds. Default one day.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Empty a store machine: the directory stops placing replicas on it and moves every
    /// replica it holds onto other machines (placement rules kept, each volume read-only while
    /// its copy is made), then marks it retired. Waits for that unless --no-wait.
    Drain {
        /// The store: its id or URL (see `haystack status`).
        id: String,
        #[command(flatten)]
        tool: StoreToolArgs,
        /// Return once the drain is started.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (the drain goes on).
        #[arg(long, default_value_t = 86_400)]
        timeout_secs: u64,
    },
    /// Remove a drained (retired), stopped store from the directory's records; refused while
    /// it holds data or still heartbeats.
    Remove {
        /// The store: its id or URL.
        id: String,
        #[command(flatten)]
        tool: StoreToolArgs,
    },
}

#[derive(Args)]
struct StoreToolArgs {
    /// The directory's URL; several equivalent directories comma-separated (or the flag
    /// repeated), tried in order.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8082",
        env = "HAYSTACK_DIRECTORY",
        value_delimiter = ','
    )]
    directory: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum S3Command {
    /// Access keys (SigV4 credentials) of the S3 API.
    Key {
        #[command(subcommand)]
        command: S3KeyCommand,
        #[command(flatten)]
        tool: S3ToolArgs,
    },
    /// Buckets of the S3 API.
    Bucket {
        #[command(subcommand)]
        command: S3BucketCommand,
        #[command(flatten)]
        tool: S3ToolArgs,
    },
}

#[derive(Subcommand)]
enum S3KeyCommand {
    /// Create a key with rights on one bucket (`*`: every bucket); prints the secret once.
    Create {
        #[arg(long)]
        bucket: String,
        #[arg(long)]
        read: bool,
        #[arg(long)]
        write: bool,
        /// May also create buckets of any name.
        #[arg(long)]
        create_buckets: bool,
    },
    /// Delete a key.
    Delete { id: String },
}

#[derive(Subcommand)]
enum S3BucketCommand {
    /// Create a bucket.
    Create { name: String },
    /// Let anyone read a bucket (GET, HEAD, list) without a signature, or stop it.
    AnonymousRead {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Args)]
struct S3ToolArgs {
    /// TOML config file; the [s3] section is read (directory URL, master key file).
    #[arg(long, global = true, env = "HAYSTACK_CONFIG")]
    config: Option<PathBuf>,
    /// The directory's URL; several equivalent directories comma-separated (or the flag
    /// repeated), tried in order. Default http://127.0.0.1:8082.
    #[arg(long, global = true, env = "HAYSTACK_DIRECTORY", value_delimiter = ',')]
    directory: Option<Vec<String>>,
    /// The master key file that seals secrets (the S3 servers' own). Default
    /// ./data/s3/master.key.
    #[arg(long, global = true, env = "HAYSTACK_S3_MASTER_KEY")]
    master_key_file: Option<PathBuf>,
}

#[derive(Args)]
struct S3Args {
    /// TOML config file; the [s3] section is read (flags and environment win).
    #[arg(long, env = "HAYSTACK_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8083", env = "HAYSTACK_S3_LISTEN")]
    listen: SocketAddr,
    /// The directory's URL; several equivalent directories comma-separated (or the flag
    /// repeated), tried in order. Default http://127.0.0.1:8082.
    #[arg(long, env = "HAYSTACK_DIRECTORY", value_delimiter = ',')]
    directory: Option<Vec<String>>,
    /// The master key file that seals access keys' secrets. Default ./data/s3/master.key.
    #[arg(long, env = "HAYSTACK_S3_MASTER_KEY")]
    master_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a config file with every option, its default and what it does.
    Example,
}

#[derive(Subcommand)]
enum PhotoCommand {
    /// Store a file as a new photo (written to every replica, then committed); prints it.
    Put { file: PathBuf },
    /// Write a photo's variant (alternate key) to a file.
    Get {
        id: String,
        #[arg(long, default_value_t = 0)]
        alt: u32,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print a photo as the directory records it.
    Info { id: String },
    /// Delete a photo.
    Delete { id: String },
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Full CRC scan of every replica; corrupt needles are reported and rewritten from a
    /// replica that holds them intact.
    Verify {
        /// Logical volume id.
        id: u32,
        /// Only report; do not repair.
        #[arg(long)]
        no_repair: bool,
    },
    /// Seal a logical volume: no more uploads; every replica becomes read-only for good with
    /// its index in a mapped sorted file.
    Seal {
        /// Logical volume id.
        id: u32,
    },
    /// Online compaction of every replica, one at a time: dead space (deleted and
    /// overwritten needles) comes back while reads, writes and deletes go on.
    Compact {
        /// Logical volume id.
        id: u32,
    },
    /// Rebuild every replica's index from a full scan of its volume file.
    RebuildIndex {
        /// Logical volume id.
        id: u32,
    },
    /// Erasure-code a sealed volume (f4 warm storage): k data and m parity shards on k + m
    /// distinct stores; the replicas are dropped once every shard is written, synced and
    /// checked and the directory switched. Again on an encoded volume: finishes the drops.
    Encode {
        /// Logical volume id.
        id: u32,
        /// Data shards.
        #[arg(long, default_value_t = 10)]
        k: u8,
        /// Parity shards (up to m lost shards are survived).
        #[arg(long, default_value_t = 4)]
        m: u8,
        /// Block size: a needle lies inside one block (f4: 1 GiB).
        #[arg(long, default_value_t = 1 << 30)]
        block_bytes: u64,
        /// The volume is erasure-coded already: encode its live needles again as a new
        /// generation (online), so that deleted needles' space comes back.
        #[arg(long)]
        reencode: bool,
    },
    /// Make an asynchronous remote replica a replica of the volume: after every local
    /// replica was lost, it serves reads and re-replication copies from it. Whatever it had
    /// not received yet (its lag in `haystack status`) is lost.
    Promote {
        /// Logical volume id.
        id: u32,
        /// The remote replica's store: its id or URL (see `haystack status`).
        #[arg(long)]
        store: String,
    },
    /// Copy the volume from a healthy replica onto another machine (bulk copy) and switch
    /// the directory to it. For an erasure-coded volume: rebuild shard `--shard` from k
    /// others onto `--to` (or a store the directory picks).
    Repair {
        /// Logical volume id.
        id: u32,
        /// The store to copy onto: its id or URL (see `haystack status`).
        #[arg(long)]
        to: Option<String>,
        /// Erasure-coded volumes: the shard to rebuild.
        #[arg(long)]
        shard: Option<u16>,
        /// The replica to replace: store id or URL (default: the one whose store is down).
        #[arg(long)]
        from: Option<String>,
    },
}

#[derive(Args)]
struct StatusArgs {
    /// The directory's URL; several equivalent directories comma-separated (or the flag
    /// repeated), tried in order.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8082",
        env = "HAYSTACK_DIRECTORY",
        value_delimiter = ','
    )]
    directory: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct ServerArgs {
    /// TOML config file (`haystack config example` prints one); its [server] section lays out
    /// the cluster and every role reads its own section.
    #[arg(long, env = "HAYSTACK_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Where every role keeps its data (directory/, store0/, store1/, ...). Default ./data.
    #[arg(long, env = "HAYSTACK_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Number of store machines. Default 3.
    #[arg(long)]
    pub(crate) stores: Option<u16>,
    /// Replicas per logical volume. Default 2.
    #[arg(long)]
    pub(crate) replication: Option<usize>,
    /// Directory port; stores use --store-port, --store-port + 1, ... Default 8082.
    #[arg(long)]
    pub(crate) directory_port: Option<u16>,
    /// First store port. Default 8090.
    #[arg(long)]
    pub(crate) store_port: Option<u16>,
    /// Cache port. Default 8081.
    #[arg(long)]
    pub(crate) cache_port: Option<u16>,
    /// Upload API port. Default 8080.
    #[arg(long)]
    pub(crate) uploader_port: Option<u16>,
    /// S3 API port. Default 8083.
    #[arg(long)]
    pub(crate) s3_port: Option<u16>,
    /// Maximum size of each volume, bytes. Default 1 GiB.
    #[arg(long)]
    pub(crate) max_volume_bytes: Option<u64>,
}

#[derive(Args)]
struct DirectoryArgs {
    /// TOML config file; the [directory] section is read (flags and environment win).
    #[arg(long, env = "HAYSTACK_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(
        long,
        default_value = "127.0.0.1:8082",
        env = "HAYSTACK_DIRECTORY_LISTEN"
    )]
    listen: SocketAddr,
    /// Metadata store: embedded:DIR (redb, the default: embedded:./data/directory) or
    /// scylla://host:port[,host:port]/keyspace.
    #[arg(long, env = "HAYSTACK_METADATA")]
    metadata: Option<String>,
    /// Replicas per logical volume. Default 3.
    #[arg(long)]
    replication: Option<usize>,
    /// Base URL of the cache tier, for read URLs.
    #[arg(long, env = "HAYSTACK_CACHE_URL")]
    cache_url: Option<String>,
    /// CDN prefix for read URLs (takes precedence over --cache-url).
    #[arg(long, env = "HAYSTACK_CDN_PREFIX")]
    cdn_prefix: Option<String>,
    /// A store silent this long (ms) is marked down and its volumes turn read-only. Default
    /// 20000.
    #[arg(long)]
    store_timeout_ms: Option<u64>,
    /// Seconds between heartbeats the stores are told to keep. Default 5.
    #[arg(long)]
    heartbeat_secs: Option<u64>,
    /// Size planned for a new logical volume, bytes. Default 1 GiB.
    #[arg(long)]
    volume_capacity_bytes: Option<u64>,
    /// A store down this long (ms) has its replicas copied elsewhere; 0: never. Default
    /// 900000.
    #[arg(long)]
    rereplicate_after_ms: Option<u64>,
}

#[derive(Args)]
struct CacheArgs {
    /// TOML config file; the [cache] section is read (flags and environment win).
    #[arg(long, env = "HAYSTACK_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081", env = "HAYSTACK_CACHE_LISTEN")]
    listen: SocketAddr,
    /// The directory's URL; several equivalent directories comma-separated (or the flag
    /// repeated), tried in order. Default http://127.0.0.1:8082.
    #[arg(long, env = "HAYSTACK_DIRECTORY", value_delimiter = ',')]
    directory: Option<Vec<String>>,
    /// Memory for cached needles: bytes, or a size such as 1GiB or 512MiB. Default 1GiB.
    #[arg(long, env = "HAYSTACK_CACHE_CAPACITY", value_parser = parse_size)]
    capacity: Option<u64>,
    /// Every cache node's URL, this one included (comma-separated), for consistent hashing.
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// This node's URL as it appears in --peers.
    #[arg(long)]
    self_url: Option<String>,
    /// Which needles are kept: haystack (direct user requests on write-enabled volumes), all
    /// or none. Default haystack.
    #[arg(long)]
    admission: Option<String>,
}

#[derive(Args)]
struct UploaderArgs {
    /// TOML config file; the [uploader] section is read (flags and environment win).
    #[arg(long, env = "HAYSTACK_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        env = "HAYSTACK_UPLOADER_LISTEN"
    )]
    listen: SocketAddr,
    /// The directory's URL; several equivalent directories comma-separated (or the flag
    /// repeated), tried in order. Default http://127.0.0.1:8082.
    #[arg(long, env = "HAYSTACK_DIRECTORY", value_delimiter = ',')]
    directory: Option<Vec<String>>,
    /// POST and DELETE then need `Authorization: Bearer KEY`.
    #[arg(long, env = "HAYSTACK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Serve a non-loopback address without an API key (refused otherwise).
    #[arg(long)]
    allow_public_without_key: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    haystack_cache::parse_size(s).map_err(|e| e.to_string())
}

#[derive(Args)]
struct StoreArgs {
    /// TOML config file; the [store] section is read (flags and environment win).
    #[arg(long, env = "HAYSTACK_CONFIG")]
    config: Option<PathBuf>,
    /// Directory holding the volume files. Default data/store.
    #[arg(long, env = "HAYSTACK_STORE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090", env = "HAYSTACK_STORE_LISTEN")]
    listen: SocketAddr,
    /// I/O engine: auto, io_uring or sync. Default auto.
    #[arg(long, env = "HAYSTACK_STORE_ENGINE")]
    engine: Option<EngineKind>,
    /// Maximum size of a new volume, bytes. Default 32 GiB.
    #[arg(long)]
    max_volume_bytes: Option<u64>,
    /// Largest needle accepted, bytes. Default 64 MiB.
    #[arg(long)]
    max_needle_bytes: Option<u64>,
    /// Volume files grow by preallocated steps of this many bytes. Default 1 GiB.
    #[arg(long)]
    prealloc_step: Option<u64>,
    /// Volumes to create at start if missing (comma-separated ids).
    #[arg(long, value_delimiter = ',')]
    create_volumes: Vec<u32>,
    /// HTTP worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Directory to register with and heartbeat to (e.g. http://127.0.0.1:8082); several
    /// equivalent directories comma-separated (or the flag repeated): the first that answers,
    /// kept while it answers. None: run standalone.
    #[arg(long, env = "HAYSTACK_DIRECTORY", value_delimiter = ',')]
    directory: Option<Vec<String>>,
    /// URL other services use to reach this store (default: http://LISTEN).
    #[arg(long)]
    public_url: Option<String>,
    /// Zone label for replica placement.
    #[arg(long)]
    zone: Option<String>,
    /// Rack label for replica placement.
    #[arg(long)]
    rack: Option<String>,
    /// Seconds between heartbeats until the directory names its own interval.
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    /// Automatic compaction of volumes whose dead bytes pass this fraction of their size
    /// (0: off). Default 0.3.
    #[arg(long)]
    auto_compact_ratio: Option<f64>,
    /// Benchmarks only: also serve this many bytes from memory at /bench/memory/... (the
    /// ceiling of the HTTP stack).
    #[arg(long, hide = true)]
    bench_memory_ceiling: Option<usize>,
}

mod client;
mod cluster;
mod config;
mod ec_tool;
mod gc_tool;
mod photo_tool;
mod s3_tool;
mod security;
mod status;
mod store_tool;
mod volume_tool;

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Overwrites `slot` with a flag's value when the flag (or its environment variable) was
/// given: flags win over the config file.
pub(crate) fn set<T>(slot: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *slot = v;
    }
}

/// `--directory` (or `HAYSTACK_DIRECTORY`) wins over both keys of a role's config file.
fn set_directories(
    one: &mut Option<String>,
    list: &mut Option<Vec<String>>,
    flag: Option<Vec<String>>,
) {
    if let Some(d) = flag {
        *one = None;
        *list = Some(d);
    }
}

async fn run_store(a: StoreArgs, security: Security) -> Result<(), String> {
    let mut cfg: StoreConfig = config::load(a.config.as_deref())?.store;
    set(&mut cfg.data_dir, a.data_dir);
    set(&mut cfg.engine, a.engine);
    set(&mut cfg.max_volume_bytes, a.max_volume_bytes);
    set(&mut cfg.max_needle_bytes, a.max_needle_bytes);
    set(&mut cfg.prealloc_step, a.prealloc_step);
    set(&mut cfg.auto_compact_dead_ratio, a.auto_compact_ratio);
    cfg.security = security;
    let listener =
        TcpListener::bind(a.listen).map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    let scheme = if cfg.security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let directory_urls = a
        .directory
        .map(|d| {
            haystack_client::directory::check_urls(&d).map_err(|e| format!("--directory: {e}"))
        })
        .transpose()?;
    let heartbeat =
        directory_urls.map(
            |directory_urls| haystack_store::heartbeat::HeartbeatConfig {
                directory_urls,
                public_url: a.public_url.unwrap_or_else(|| {
                    format!("{scheme}://{}", listener.local_addr().unwrap_or(a.listen))
                }),
                zone: a.zone,
                rack: a.rack,
                interval: std::time::Duration::from_secs(a.heartbeat_secs.max(1)),
            },
        );
    let scrub = haystack_store::ScrubConfig {
        bytes_per_sec: cfg.scrub_mib_per_sec.map(|m| m.saturating_mul(1 << 20)),
        slow_read: std::time::Duration::from_millis(cfg.scrub_slow_read_ms),
        ..Default::default()
    };
    let run = haystack_store::RunConfig {
        store: cfg,
        scrub,
        http: haystack_store::http::ServerOptions {
            workers: a.workers,
            memory_ceiling_bytes: a.bench_memory_ceiling,
            ..Default::default()
        },
        heartbeat,
        create_volumes: a.create_volumes,
    };
    haystack_store::run(listener, run, shutdown_signal())
        .await
        .map_err(|e| format!("store failed: {e}"))
}

async fn run_directory(a: DirectoryArgs, security: Security) -> Result<(), String> {
    let mut cfg = config::load(a.config.as_deref())?.directory;
    set(&mut cfg.metadata, a.metadata);
    set(&mut cfg.replication_factor, a.replication);
    set(&mut cfg.cache_url, a.cache_url.map(Some));
    set(&mut cfg.cdn_prefix, a.cdn_prefix.map(Some));
    set(&mut cfg.store_timeout_ms, a.store_timeout_ms);
    set(&mut cfg.heartbeat_interval_secs, a.heartbeat_secs);
    set(&mut cfg.volume_capacity_bytes, a.volume_capacity_bytes);
    set(&mut cfg.rereplicate_after_ms, a.rereplicate_after_ms);
    cfg.security = security;
    let listener =
        TcpListener::bind(a.listen).map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    haystack_directory::run(listener, cfg, shutdown_signal())
        .await
        .map_err(|e| format!("directory failed: {e}"))
}

async fn run_cache(a: CacheArgs, security: Security) -> Result<(), String> {
    let mut cfg = config::load(a.config.as_deref())?.cache;
    set_directories(&mut cfg.directory_url, &mut cfg.directory_urls, a.directory);
    set(&mut cfg.capacity_bytes, a.capacity);
    set(&mut cfg.peers, a.peers);
    set(&mut cfg.self_url, a.self_url.map(Some));
    cfg.security = security;
    if let Some(adm) = a.admission {
        cfg.admission = serde_json::from_value(serde_json::Value::String(adm.clone()))
            .map_err(|_| format!("--admission {adm:?}: expected haystack, all or none"))?;
    }
    let listener =
        TcpListener::bind(a.listen).map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    haystack_cache::run(listener, cfg, shutdown_signal())
        .await
        .map_err(|e| format!("cache failed: {e}"))
}

async fn run_uploader(a: UploaderArgs, security: Security) -> Result<(), String> {
    let mut cfg = config::load(a.config.as_deref())?.uploader;
    set_directories(&mut cfg.directory_url, &mut cfg.directory_urls, a.directory);
    set(&mut cfg.api_key, a.api_key.map(Some));
    if a.allow_public_without_key {
        cfg.allow_public_without_key = true;
    }
    cfg.security = security;
    let listener =
        TcpListener::bind(a.listen).map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    haystack_uploader::run(listener, cfg, shutdown_signal())
        .await
        .map_err(|e| format!("uploader failed: {e}"))
}

fn s3_tool_config(t: S3ToolArgs) -> Result<haystack_s3::S3Config, String> {
    let mut cfg = config::load(t.config.as_deref())?.s3;
    set_directories(&mut cfg.directory_url, &mut cfg.directory_urls, t.directory);
    set(&mut cfg.master_key_file, t.master_key_file);
    Ok(cfg)
}

async fn run_s3(command: Option<S3Command>, a: S3Args, security: Security) -> Result<(), String> {
    match command {
        None => {
            let mut cfg = config::load(a.config.as_deref())?.s3;
            set_directories(&mut cfg.directory_url, &mut cfg.directory_urls, a.directory);
            set(&mut cfg.master_key_file, a.master_key_file);
            cfg.security = security;
            let listener = TcpListener::bind(a.listen)
                .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
            haystack_s3::run(listener, cfg, shutdown_signal())
                .await
                .map_err(|e| format!("s3 failed: {e}"))
        }
        Some(S3Command::Key { command, tool }) => {
            let cfg = s3_tool_config(tool)?;
            match command {
                S3KeyCommand::Create {
                    bucket,
                    read,
                    write,
                    create_buckets,
                } => s3_tool::key_create(cfg, &bucket, read, write, create_buckets).await,
                S3KeyCommand::Delete { id } => s3_tool::key_delete(cfg, &id).await,
            }
        }
        Some(S3Command::Bucket { command, tool }) => {
            let cfg = s3_tool_config(tool)?;
            match command {
                S3BucketCommand::Create { name } => s3_tool::bucket_create(cfg, &name).await,
                S3BucketCommand::AnonymousRead { name, state } => {
                    s3_tool::bucket_anonymous_read(cfg, &name, state == "on").await
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Status(_)
            | Command::Photo { .. }
            | Command::Volume { .. }
            | Command::Gc { .. }
            | Command::Rebalance { .. }
            | Command::Token { .. }
            | Command::Config { .. }
            | Command::S3 {
                command: Some(_),
                ..
            }
            | Command::Store {
                command: Some(_),
                ..
            }
    ) {
        // Command-line tools die quietly when their output pipe closes (`haystack status |
        // head`), as Unix tools do. Servers keep Rust's default (SIGPIPE ignored), so that a
        // closed socket is an error, not death.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    init_logs(cli.log_json);
    let tls = match (cli.tls_cert, cli.tls_key, cli.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(haystack_service::tls::TlsFiles {
            cert,
            key,
            ca,
            client_auth: cli.tls_client_auth,
        }),
        _ => None,
    };
    let security = match security::load(
        cli.cluster_secret_file.as_deref(),
        cli.audit_log,
        tls,
        cli.signed_reads_ttl,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("haystack: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !matches!(cli.command, Command::Server(_)) {
        if let Err(e) = security::check_signed_reads(&security) {
            eprintln!("haystack: {e}");
            return ExitCode::FAILURE;
        }
    }
    client::set_tls(security.tls.clone());
    client::set_credentials(security::tool_credentials(
        cli.token.as_deref(),
        security.keys.as_ref(),
    ));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("haystack: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Store {
                command: None,
                args,
            } => run_store(args, security).await,
            Command::Store {
                command:
                    Some(StoreCommand::Drain {
                        id,
                        tool,
                        no_wait,
                        timeout_secs,
                    }),
                ..
            } => {
                store_tool::drain(
                    &tool.directory,
                    &id,
                    no_wait,
                    std::time::Duration::from_secs(timeout_secs),
                    tool.json,
                )
                .await
            }
            Command::Store {
                command: Some(StoreCommand::Remove { id, tool }),
                ..
            } => store_tool::remove(&tool.directory, &id, tool.json).await,
            Command::Directory(a) => run_directory(a, security).await,
            Command::Cache(a) => run_cache(a, security).await,
            Command::Uploader(a) => run_uploader(a, security).await,
            Command::S3 { command, args } => run_s3(command, args, security).await,
            Command::Server(a) => cluster::run(a, security.signed_reads_ttl_secs).await,
            Command::Token {
                command:
                    TokenCommand::Create {
                        role,
                        subject,
                        ttl_secs,
                    },
            } => security::create_token(security.keys.as_ref(), &role, &subject, ttl_secs),
            Command::Config {
                command: ConfigCommand::Example,
            } => {
                print!("{}", config::EXAMPLE);
                Ok(())
            }
            Command::Status(a) => status::run(&a.directory, a.json).await,
            Command::Photo { command, directory } => match command {
                PhotoCommand::Put { file } => photo_tool::put(&directory, &file).await,
                PhotoCommand::Get { id, alt, output } => {
                    photo_tool::get(&directory, &id, alt, &output).await
                }
                PhotoCommand::Info { id } => photo_tool::info(&directory, &id).await,
                PhotoCommand::Delete { id } => photo_tool::delete(&directory, &id).await,
            },
            Command::Volume {
                command,
                directory,
                json,
            } => match command {
                VolumeCommand::Seal { id } => volume_tool::seal(&directory, id, json).await,
                VolumeCommand::Verify { id, no_repair } => {
                    volume_tool::verify(&directory, id, !no_repair, json).await
                }
                VolumeCommand::Compact { id } => volume_tool::compact(&directory, id, json).await,
                VolumeCommand::RebuildIndex { id } => {
                    volume_tool::rebuild_index(&directory, id, json).await
                }
                VolumeCommand::Promote { id, store } => {
                    volume_tool::promote(&directory, id, &store, json).await
                }
                VolumeCommand::Repair {
                    id,
                    to,
                    shard,
                    from,
                } => match shard {
                    Some(shard) => {
                        volume_tool::repair_shard(&directory, id, shard, to.as_deref(), json).await
                    }
                    None => match to {
                        Some(to) => {
                            volume_tool::repair(&directory, id, &to, from.as_deref(), json).await
                        }
                        None => Err("--to STORE is required to repair a replica".to_string()),
                    },
                },
                VolumeCommand::Encode {
                    id,
                    k,
                    m,
                    block_bytes,
                    reencode,
                } => {
                    ec_tool::encode(
                        &directory,
                        id,
                        haystack_proto::directory::EncodeRequest {
                            k,
                            m,
                            block_bytes,
                            reencode,
                        },
                        json,
                    )
                    .await
                }
            },
            Command::Rebalance {
                directory,
                dry_run,
                spread,
                json,
            } => volume_tool::rebalance(&directory, spread, dry_run, json).await,
            Command::Gc {
                directory,
                grace_secs,
                s3_min_age_secs,
                unsafe_s3_min_age,
                dry_run,
                json,
            } => {
                let s3_min_age = unsafe_s3_min_age.unwrap_or(s3_min_age_secs);
                gc_tool::run(&directory, grace_secs, s3_min_age, dry_run, json).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "haystack failed");
            eprintln!("haystack: {e}");
            ExitCode::FAILURE
        }
    }
}
