//! `haystack-loadtest`: a thin entry point. Parses flags, builds a run, a comparison or the
//! benchmark page with the library, prints the result (a table, or JSON with `--json`),
//! and exits 1 when a run's verify fails or 2 on a configuration error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use haystack_loadtest::dist::{parse_size, SizeDist};
use haystack_loadtest::report::ResultFile;
use haystack_loadtest::s3::{PayloadSigning, S3Endpoint};
use haystack_loadtest::schedule::Arrivals;
use haystack_loadtest::target::TargetKind;
use haystack_loadtest::workload::{parse_variants, Limits, Mix, Mode, Shape};
use haystack_loadtest::{benchmarks, LoadError, Result};

#[derive(Parser)]
#[command(
    name = "haystack-loadtest",
    version,
    about = "Realistic photo-store workloads, the nginx comparison, and BENCHMARKS.md"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drive a running cluster: preload, the measured phase, optionally verify.
    Run(RunArgs),
    /// The same PUT and GET workloads against nginx file-per-photo and the store; ratios.
    Compare(CompareArgs),
    /// Render BENCHMARKS.md from bench/results/ (fragments and saved runs).
    Report(ReportArgs),
    /// The loopback round trip between two threads (blocking and spinning client): the
    /// floor under any hop a request adds, such as a cache miss's exchange with a store.
    Rtt(RttArgs),
    /// Serve objects from memory with one HTTP stack until a deadline (drive it with wrk):
    /// the ceiling of that stack on this machine.
    Floor(FloorArgs),
}

#[derive(Args)]
struct FloorArgs {
    #[arg(long, value_enum)]
    stack: haystack_loadtest::floor::Stack,
    #[arg(long, default_value = "127.0.0.1:18195")]
    addr: std::net::SocketAddr,
    /// Objects served, `GET /o/0` to `GET /o/{objects-1}`.
    #[arg(long, default_value_t = 20_000)]
    objects: usize,
    /// Bytes in each object.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Seconds to serve before stopping.
    #[arg(long, default_value_t = 60)]
    serve_secs: u64,
}

#[derive(Args)]
struct RttArgs {
    /// Round trips measured for each way of waiting.
    #[arg(long, default_value_t = 50_000)]
    rounds: usize,
    /// Repeat the pair of measurements this many times (the machine's spread shows).
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

#[derive(Args)]
struct TargetArgs {
    /// The uploader's base URL (writes and deletes; reads go to the URLs it returns).
    #[arg(long)]
    uploader: Option<String>,
    /// Without an uploader: the directory's base URL (assign, PUT to the replicas, commit;
    /// original bytes only, no variants).
    #[arg(long, conflicts_with = "uploader")]
    directory: Option<String>,
    /// With --directory: a token for the directory and the stores (`haystack token create
    /// --role admin`), when the cluster has a secret.
    #[arg(long, env = "HAYSTACK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Bearer key for the uploader's POST and DELETE.
    #[arg(long, env = "HAYSTACK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// An S3 endpoint's base URL (ours, `haystack s3`, or any other): objects are PUT, read
    /// and deleted by path in --s3-bucket, signed with SigV4.
    #[arg(long, conflicts_with_all = ["uploader", "directory"])]
    s3: Option<String>,
    /// With --s3: the bucket (it must exist, and the key may read and write it).
    #[arg(long, default_value = "loadtest")]
    s3_bucket: String,
    /// With --s3: the access key id.
    #[arg(long, env = "HAYSTACK_S3_ACCESS_KEY", hide_env_values = true)]
    s3_access_key: Option<String>,
    /// With --s3: the secret access key (better in the environment than on a command line).
    #[arg(long, env = "HAYSTACK_S3_SECRET_KEY", hide_env_values = true)]
    s3_secret_key: Option<String>,
    /// With --s3: the region signatures name.
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    /// With --s3: objects are PREFIX/N (default: a tag unique to the run).
    #[arg(long)]
    s3_prefix: Option<String>,
    /// With --s3: `signed` (the body's SHA-256 in x-amz-content-sha256, as awscli sends over
    /// HTTP) or `unsigned` (UNSIGNED-PAYLOAD).
    #[arg(long, default_value = "signed")]
    s3_payload: String,
    /// Allow traffic to non-loopback addresses (never for tests or benchmarks).
    #[arg(long)]
    allow_remote: bool,
}

impl TargetArgs {
    fn kind(&self, nginx: Option<&str>) -> Result<TargetKind> {
        let trim = |u: &str| u.trim_end_matches('/').to_string();
        if let Some(u) = &self.uploader {
            return Ok(TargetKind::Uploader {
                url: trim(u),
                api_key: self.api_key.clone(),
            });
        }
        if let Some(d) = &self.directory {
            return Ok(TargetKind::Direct {
                directory: trim(d),
                token: self.token.clone(),
            });
        }
        if let Some(u) = &self.s3 {
            let missing = || {
                LoadError::Config("--s3 needs --s3-access-key and --s3-secret-key (or HAYSTACK_S3_ACCESS_KEY and HAYSTACK_S3_SECRET_KEY)".into())
            };
            return Ok(TargetKind::S3(S3Endpoint {
                url: trim(u),
                bucket: self.s3_bucket.clone(),
                access_key: self.s3_access_key.clone().ok_or_else(missing)?,
                secret_key: self.s3_secret_key.clone().ok_or_else(missing)?,
                region: self.s3_region.clone(),
                prefix: self.s3_prefix.clone().unwrap_or_else(run_tag),
                payload: self.s3_payload.parse::<PayloadSigning>()?,
            }));
        }
        if let Some(n) = nginx {
            return Ok(TargetKind::Nginx {
                url: trim(n),
                tag: run_tag(),
            });
        }
        Err(LoadError::Config(
            "say what to drive: --uploader URL, --directory URL or --s3 URL".into(),
        ))
    }
}

#[derive(Args)]
struct ShapeArgs {
    /// Upload sizes: `lognormal:MEDIAN[,SIGMA[,MIN,MAX]]` or `fixed:SIZE`.
    #[arg(long, default_value = "lognormal:100KiB,0.7,4KiB,4MiB")]
    size: String,
    /// Small-object mode: every upload `fixed:4KiB` (overrides --size).
    #[arg(long)]
    small_objects: bool,
    /// Zipf exponent of read popularity over recency (newest = rank 1); 0 for uniform.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Which variants reads fetch, weighted: e.g. `original=1,thumb=4`.
    #[arg(long, default_value = "original=1")]
    read_variants: String,
    /// Seed of every random choice and payload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

impl ShapeArgs {
    fn shape(&self) -> Result<Shape> {
        let sizes = if self.small_objects {
            SizeDist::Fixed(4096)
        } else {
            SizeDist::parse(&self.size)?
        };
        Ok(Shape {
            sizes,
            zipf: self.zipf,
            read_variants: parse_variants(&self.read_variants)?,
            seed: self.seed,
            progress: !self.quiet,
            ..Shape::default()
        })
    }
}

#[derive(Args)]
struct OutArgs {
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file (bench/results/loadtest/NAME.json is
    /// what BENCHMARKS.md is rendered from).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Title of the run on the benchmark page.
    #[arg(long, default_value = "")]
    title: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    out: OutArgs,
    /// Operation weights of the measured phase.
    #[arg(long, default_value = "put=10,get=88,delete=2,video=0")]
    mix: String,
    /// Closed loop: requests in flight (ignored with --rate).
    #[arg(long, short = 'c', default_value_t = 32)]
    concurrency: usize,
    /// Open loop: requests per second, latency measured from the intended send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: `uniform` or `poisson` arrivals.
    #[arg(long, default_value = "poisson")]
    arrivals: String,
    /// Open loop: requests in flight at most (later ones wait, and their wait counts).
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Time bound of the measured phase, seconds.
    #[arg(long, short = 'd', default_value_t = 30.0)]
    duration: f64,
    /// Request bound of the measured phase.
    #[arg(long, short = 'n', default_value_t = 1_000_000)]
    count: u64,
    /// Photos uploaded before the measured phase.
    #[arg(long, default_value_t = 1000)]
    preload: u64,
    /// With --s3 and a fixed --size: objects PREFIX/0 .. PREFIX/N-1 an earlier run with the
    /// same --s3-prefix, --size and --seed uploaded; reads (and --verify) use them without a
    /// preload.
    #[arg(long, default_value_t = 0)]
    s3_existing: u64,
    /// Videos uploaded before the measured phase (uploader only).
    #[arg(long, default_value_t = 0)]
    videos: u64,
    /// Size of each video.
    #[arg(long, default_value = "8MiB")]
    video_size: String,
    /// Bytes per video range read.
    #[arg(long, default_value = "256KiB")]
    video_range: String,
    /// Time bound of the preload and of verify, seconds each.
    #[arg(long, default_value_t = 600.0)]
    setup_limit: f64,
    /// Read every acknowledged upload back at the end and compare it byte for byte.
    #[arg(long)]
    verify: bool,
    /// A shell command (`sh -c`) run after the preload, before the measured phase: e.g. seal
    /// and erasure-code the volumes the preload filled, or stop a store. The run stops there
    /// if it exits non-zero.
    #[arg(long)]
    after_preload: Option<String>,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    out: OutArgs,
    /// nginx file-per-photo with WebDAV PUT under /dav/ (../shared/bench/nginx.conf.tmpl).
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    nginx: String,
    /// Requests in flight.
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// Uploads in the PUT phase of each side (nginx keeps one file per upload: keep it bounded).
    #[arg(long, default_value_t = 20_000)]
    put_count: u64,
    /// Reads in the GET phase of each side.
    #[arg(long, default_value_t = 2_000_000)]
    get_count: u64,
    /// Time bound of each phase, seconds.
    #[arg(long, short = 'd', default_value_t = 20.0)]
    duration: f64,
}

#[derive(Args)]
struct ReportArgs {
    /// Fragments (`*.md`) and saved runs (`loadtest/*.json`).
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
    /// The page to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Do not write: exit 1 if the page is not what the results render to.
    #[arg(long)]
    check: bool,
}

fn run_tag() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("lt-{t}-{}", std::process::id())
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(LoadError::Config(format!("{what} must be > 0 seconds")))
    }
}

fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(a0) = args.first_mut() {
        if let Some(base) = std::path::Path::new(a0)
            .file_name()
            .and_then(|s| s.to_str())
        {
            *a0 = base.to_string();
        }
    }
    // never record a key in a results file
    let mut hide = false;
    for a in args.iter_mut() {
        if hide {
            *a = "***".into();
            hide = false;
        } else if a == "--api-key" || a == "--s3-secret-key" {
            hide = true;
        } else if let Some(flag) = ["--api-key=", "--s3-secret-key="]
            .into_iter()
            .find(|f| a.starts_with(f))
        {
            *a = format!("{flag}***");
        }
    }
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An argument as a shell would need it typed (single quotes when it has anything special).
fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,@%+*".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn save(path: &Option<PathBuf>, r: &ResultFile) -> Result<()> {
    if let Some(p) = path {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| LoadError::io("creating", dir, e))?;
        }
        let text = serde_json::to_string_pretty(r).expect("reports serialize");
        std::fs::write(p, text + "\n").map_err(|e| LoadError::io("writing", p, e))?;
    }
    Ok(())
}

async fn main_run(a: RunArgs) -> Result<ExitCode> {
    let mut shape = a.shape.shape()?;
    shape.video_size = parse_size(&a.video_size)?;
    shape.video_range = parse_size(&a.video_range)?;
    let mode = match a.rate {
        Some(rate) => Mode::Open {
            rate,
            arrivals: a.arrivals.parse::<Arrivals>()?,
            max_in_flight: a.max_in_flight,
        },
        None => Mode::Closed {
            concurrency: a.concurrency,
        },
    };
    let mut cfg = haystack_loadtest::RunConfig::new(a.target.kind(None)?);
    cfg.allow_remote = a.target.allow_remote;
    cfg.shape = shape;
    cfg.mix = Mix::parse(&a.mix)?;
    cfg.mode = mode;
    cfg.limits = Limits {
        count: a.count,
        duration: secs(a.duration, "--duration")?,
    };
    cfg.preload = a.preload;
    cfg.existing = a.s3_existing;
    cfg.videos = a.videos;
    cfg.setup_limit = secs(a.setup_limit, "--setup-limit")?;
    cfg.timeout = secs(a.shape.timeout, "--timeout")?;
    cfg.verify = a.verify;
    cfg.after_preload = a.after_preload.clone();
    cfg.title = a.out.title.clone();
    cfg.command = command_line();
    let (report, _runner) = haystack_loadtest::run(&cfg).await?;
    let file = ResultFile::Run(Box::new(report.clone()));
    save(&a.out.save, &file)?;
    if a.out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&file).expect("reports serialize")
        );
    } else {
        print!("{}", report.table());
    }
    Ok(match &report.verify {
        Some(v) if !v.passed() => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

async fn main_compare(a: CompareArgs) -> Result<ExitCode> {
    let cfg = haystack_loadtest::CompareConfig {
        haystack: a.target.kind(None)?,
        nginx_url: a.nginx.clone(),
        tag: run_tag(),
        allow_remote: a.target.allow_remote,
        shape: a.shape.shape()?,
        concurrency: a.concurrency,
        put_count: a.put_count,
        get_count: a.get_count,
        duration: secs(a.duration, "--duration")?,
        timeout: secs(a.shape.timeout, "--timeout")?,
        title: a.out.title.clone(),
        command: command_line(),
    };
    let report = haystack_loadtest::compare(&cfg).await?;
    let file = ResultFile::Compare(Box::new(report.clone()));
    save(&a.out.save, &file)?;
    if a.out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&file).expect("reports serialize")
        );
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}

fn main_report(a: ReportArgs) -> Result<ExitCode> {
    let page = benchmarks::render(&a.results)?;
    if a.check {
        let now = std::fs::read_to_string(&a.out).unwrap_or_default();
        if now != page {
            eprintln!(
                "{} is not what {} renders to: regenerate it with `{}`",
                a.out.display(),
                a.results.display(),
                benchmarks::REGENERATE
            );
            return Ok(ExitCode::from(1));
        }
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::write(&a.out, page).map_err(|e| LoadError::io("writing", &a.out, e))?;
    eprintln!("wrote {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

fn main_rtt(a: RttArgs) -> Result<ExitCode> {
    use haystack_loadtest::rtt::{measure, Wait, MESSAGE};
    if a.rounds == 0 || a.reps == 0 {
        return Err(LoadError::Config(
            "--rounds and --reps must be at least 1".into(),
        ));
    }
    println!(
        "loopback TCP round trip of {MESSAGE} bytes, {} rounds each, p50 / p90 / p99 in µs",
        a.rounds
    );
    for rep in 1..=a.reps {
        for (w, r) in measure(a.rounds, &[Wait::Block, Wait::Spin])? {
            let us = |ns: u64| ns as f64 / 1000.0;
            println!(
                "rep {rep} {:<5} {:6.1} {:6.1} {:6.1}",
                match w {
                    Wait::Block => "block",
                    Wait::Spin => "spin",
                },
                us(r.p50),
                us(r.p90),
                us(r.p99)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main_floor(a: FloorArgs) -> Result<ExitCode> {
    use haystack_loadtest::floor::{bounded, serve, Objects};
    let serve_for = bounded(std::time::Duration::from_secs(a.serve_secs))?;
    if a.objects == 0 || a.size == 0 || a.objects.saturating_mul(a.size) > 8 << 30 {
        return Err(LoadError::Config(
            "--objects and --size must be at least 1 and hold at most 8 GiB".into(),
        ));
    }
    let objects = Objects::new(a.objects, a.size);
    let listener = std::net::TcpListener::bind(a.addr)
        .map_err(|e| LoadError::Config(format!("floor: bind {}: {e}", a.addr)))?;
    // The server runs its own runtime(s): off this one's threads.
    std::thread::spawn(move || serve(a.stack, listener, objects, a.workers, serve_for))
        .join()
        .map_err(|_| LoadError::Config("floor: the server panicked".into()))??;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("haystack-loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => main_run(a).await,
            Cmd::Compare(a) => main_compare(a).await,
            Cmd::Report(a) => main_report(a),
            Cmd::Rtt(a) => main_rtt(a),
            Cmd::Floor(a) => main_floor(a),
        }
    });
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("haystack-loadtest: {e}");
            ExitCode::from(2)
        }
    }
}
