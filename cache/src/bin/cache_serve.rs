//! `cache_serve`: a standalone cache node for benchmarks and manual runs (production runs
//! `haystack cache`). Prints `listening on ADDR` once bound; stops on SIGTERM or Ctrl-C.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use haystack_cache::{parse_size, Admission, CacheConfig};

#[derive(Parser)]
#[command(about = "A haystack cache node")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// A JSON file with a CacheConfig (fields given here as flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The directory's URL, or several comma-separated (tried in order).
    #[arg(long)]
    directory: Option<String>,
    /// Memory for cached needles, e.g. 1GiB or 512MiB.
    #[arg(long, value_parser = parse_size)]
    capacity: Option<u64>,
    /// Admission policy: haystack, all or none.
    #[arg(long, value_parser = parse_admission)]
    admission: Option<Admission>,
    /// HTTP worker threads (0: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Every cache node of the tier, comma-separated base URLs (this one included).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// This node's URL as listed in --peers.
    #[arg(long)]
    self_url: Option<String>,
}

fn parse_admission(s: &str) -> Result<Admission, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?}: expected haystack, all or none"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut cfg = match &args.config {
        Some(p) => match std::fs::read(p)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<CacheConfig>(&b).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cache_serve: reading {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => CacheConfig::default(),
    };
    if let Some(d) = args.directory {
        cfg.directory_url = None;
        cfg.directory_urls = Some(d.split(',').map(str::to_string).collect());
    }
    if let Some(c) = args.capacity {
        cfg.capacity_bytes = c;
    }
    if let Some(a) = args.admission {
        cfg.admission = a;
    }
    if let Some(w) = args.workers {
        cfg.http_workers = w;
    }
    if !args.peers.is_empty() {
        cfg.peers = args.peers;
    }
    if args.self_url.is_some() {
        cfg.self_url = args.self_url;
    }
    let listener = match TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cache_serve: binding {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {}", args.listen);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cache_serve: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    match rt.block_on(haystack_cache::run(listener, cfg, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cache_serve: {e}");
            ExitCode::FAILURE
        }
    }
}
