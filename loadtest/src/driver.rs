//! Whole runs: `run` (preload, videos, the measured phase, verify) and `compare` (the same
//! PUT and GET workloads against the store and nginx file-per-photo, in one process, with
//! the ratios), each turned into a report with its command, machine, date and load.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{LoadError, Result};
use crate::machine::{load_average, utc_now, Machine};
use crate::payload::JpegPool;
use crate::report::{ratios, CompareReport, RunReport};
use crate::target::{Target, TargetKind};
use crate::verify::verify;
use crate::workload::{Limits, Mix, Mode, Runner, Shape};

/// Everything a `run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: TargetKind,
    /// Allow non-loopback addresses (never in tests or benchmarks).
    pub allow_remote: bool,
    pub shape: Shape,
    pub mix: Mix,
    pub mode: Mode,
    /// Bounds of the measured phase.
    pub limits: Limits,
    /// Photos uploaded before the measured phase (closed-loop), so reads find content.
    pub preload: u64,
    /// S3 only: objects `{prefix}/0..existing` an earlier run uploaded, read without a
    /// preload (see [`Runner::adopt_s3_objects`]).
    pub existing: u64,
    /// Videos uploaded before the measured phase.
    pub videos: u64,
    /// Time bound of the preload and of the verify phase each.
    pub setup_limit: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Read every acknowledged upload back at the end.
    pub verify: bool,
    /// A shell command run after the preload, before the measured phase (`sh -c`); the run
    /// stops there, without a measured phase, if it fails.
    pub after_preload: Option<String>,
    /// A title for the benchmark page.
    pub title: String,
    /// The command line, recorded in the report.
    pub command: String,
}

impl RunConfig {
    /// A small default run against `target` (tests start from this).
    pub fn new(target: TargetKind) -> RunConfig {
        RunConfig {
            target,
            allow_remote: false,
            shape: Shape::default(),
            mix: Mix::default(),
            mode: Mode::Closed { concurrency: 16 },
            limits: Limits {
                count: 10_000,
                duration: Duration::from_secs(10),
            },
            preload: 100,
            existing: 0,
            videos: 0,
            setup_limit: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            verify: false,
            after_preload: None,
            title: String::new(),
            command: String::new(),
        }
    }

    /// Refuses combinations that cannot work, before any traffic.
    pub fn validate(&self) -> Result<()> {
        let uploader = matches!(self.target, TargetKind::Uploader { .. });
        let nginx = matches!(self.target, TargetKind::Nginx { .. });
        if (self.mix.video > 0 || self.videos > 0) && !uploader {
            return Err(LoadError::Config(
                "videos need the uploader (--uploader): only it answers POST /v1/videos".into(),
            ));
        }
        if self.mix.video > 0 && self.videos == 0 {
            return Err(LoadError::Config(
                "a mix with video reads needs --videos N > 0".into(),
            ));
        }
        if self.mix.delete > 0 && nginx {
            return Err(LoadError::Config(
                "the nginx baseline accepts PUT and GET only: use a mix without delete".into(),
            ));
        }
        if self.existing > 0 {
            let s3 = matches!(self.target, TargetKind::S3(_));
            let fixed = matches!(self.shape.sizes, crate::dist::SizeDist::Fixed(_));
            if !s3 || !fixed {
                return Err(LoadError::Config(
                    "existing objects need the S3 target and a fixed size (--size fixed:SIZE)"
                        .into(),
                ));
            }
        }
        if let Mode::Open { rate, .. } = self.mode {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(LoadError::Config(format!("rate {rate} must be > 0")));
            }
        }
        if self.mode.width() == 0 {
            return Err(LoadError::Config("concurrency must be > 0".into()));
        }
        if self.limits.count == 0 || self.limits.duration.is_zero() {
            return Err(LoadError::Config(
                "the measured phase needs a count and a duration above 0".into(),
            ));
        }
        Ok(())
    }

    fn workload(&self) -> String {
        let variants: Vec<String> = crate::target::VARIANTS
            .iter()
            .zip(self.shape.read_variants)
            .filter(|(_, w)| *w > 0)
            .map(|(n, w)| format!("{n}={w}"))
            .collect();
        let mut s = format!(
            "mix {}, sizes {}, reads Zipf s={} over recency, read variants {}, preload {} photos",
            self.mix.describe(),
            self.shape.sizes.describe(),
            self.shape.zipf,
            variants.join(","),
            self.preload
        );
        if self.existing > 0 {
            s.push_str(&format!(", {} objects uploaded before", self.existing));
        }
        if self.videos > 0 {
            s.push_str(&format!(
                ", {} videos of {} read in ranges of {}",
                self.videos,
                crate::dist::format_size(self.shape.video_size),
                crate::dist::format_size(self.shape.video_range)
            ));
        }
        s.push_str(&format!(
            ", limits {} requests / {:.0} s, seed {}",
            self.limits.count,
            self.limits.duration.as_secs_f64(),
            self.shape.seed
        ));
        s
    }
}

/// Runs the workload; the report and the runner (which knows every upload).
pub async fn run(cfg: &RunConfig) -> Result<(RunReport, Runner)> {
    cfg.validate()?;
    let target = Target::new(
        cfg.target.clone(),
        cfg.mode.width(),
        cfg.timeout,
        cfg.allow_remote,
    )?;
    let runner = Runner::new(target, cfg.shape.clone()).await?;
    if cfg.existing > 0 {
        runner.adopt_s3_objects(cfg.existing)?;
    }
    let report = run_with(cfg, &runner).await;
    Ok((report, runner))
}

/// Runs the workload with a runner made already.
pub async fn run_with(cfg: &RunConfig, runner: &Runner) -> RunReport {
    let mut report = RunReport {
        title: cfg.title.clone(),
        command: cfg.command.clone(),
        started_utc: utc_now(),
        machine: Machine::detect(),
        load_before: load_average(),
        target: cfg.target.describe(),
        mode: cfg.mode.describe(),
        workload: cfg.workload(),
        ..Default::default()
    };
    let setup_width = cfg.mode.width().clamp(1, 64);
    if cfg.preload > 0 {
        let p = runner
            .phase(
                "preload",
                Mix::PUT_ONLY,
                Mode::Closed {
                    concurrency: setup_width,
                },
                Limits {
                    count: cfg.preload,
                    duration: cfg.setup_limit,
                },
            )
            .await;
        report.phases.push(p);
    }
    if cfg.videos > 0 {
        let p = runner
            .upload_videos(cfg.videos, setup_width.min(4), cfg.setup_limit)
            .await;
        report.phases.push(p);
    }
    if let Some(cmd) = &cfg.after_preload {
        let c = cmd.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh").arg("-c").arg(&c).status()
        })
        .await;
        match status {
            Ok(Ok(s)) if s.success() => {
                tracing::info!(command = %cmd, "after-preload command done");
            }
            other => {
                tracing::error!(command = %cmd, outcome = ?other, "after-preload command failed; no measured phase");
                report.load_after = load_average();
                return report;
            }
        }
    }
    report
        .phases
        .push(runner.phase("run", cfg.mix, cfg.mode, cfg.limits).await);
    if cfg.verify {
        let (p, v) = verify(
            runner.target(),
            &runner.pool(),
            runner.photos(),
            runner.videos(),
            setup_width,
            cfg.setup_limit,
        )
        .await;
        report.phases.push(p);
        report.verify = Some(v);
    }
    report.load_after = load_average();
    report
}

/// A side-by-side run.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    /// The store: the uploader, or the directory and stores.
    pub haystack: TargetKind,
    /// nginx file-per-photo (WebDAV PUT enabled under /dav/).
    pub nginx_url: String,
    /// A tag that makes this run's nginx paths unique.
    pub tag: String,
    pub allow_remote: bool,
    pub shape: Shape,
    pub concurrency: usize,
    /// Uploads in the PUT phase (and objects the GET phase reads).
    pub put_count: u64,
    /// Reads in the GET phase.
    pub get_count: u64,
    /// Time bound of each phase.
    pub duration: Duration,
    pub timeout: Duration,
    pub title: String,
    pub command: String,
}

/// PUT then GET against the store, then the same against nginx (as many uploads as the
/// store took); ratios store / nginx.
pub async fn compare(cfg: &CompareConfig) -> Result<CompareReport> {
    let (min, max) = cfg.shape.sizes.bounds();
    let pool = Arc::new(
        tokio::task::spawn_blocking(move || JpegPool::generate(min, max))
            .await
            .map_err(|e| LoadError::Payload(format!("pool generation panicked: {e}")))??,
    );
    let nginx_kind = TargetKind::Nginx {
        url: cfg.nginx_url.trim_end_matches('/').to_string(),
        tag: cfg.tag.clone(),
    };
    // The store goes first; nginx then gets as many uploads as the store took (the PUT phase
    // is time-bounded), so both GET phases read the same number of objects of the same sizes.
    let mut sides: Vec<RunReport> = Vec::new();
    for kind in [cfg.haystack.clone(), nginx_kind] {
        let put_count = match sides.first() {
            Some(h) => match h.phases[0].ops.get("put").map(|o| o.ok) {
                Some(n) if n > 0 => n.min(cfg.put_count),
                _ => cfg.put_count,
            },
            None => cfg.put_count,
        };
        let target = Target::new(kind.clone(), cfg.concurrency, cfg.timeout, cfg.allow_remote)?;
        let runner = Runner::with_pool(target, cfg.shape.clone(), pool.clone());
        let mut r = RunReport {
            title: cfg.title.clone(),
            command: cfg.command.clone(),
            started_utc: utc_now(),
            machine: Machine::detect(),
            load_before: load_average(),
            target: kind.describe(),
            mode: Mode::Closed {
                concurrency: cfg.concurrency,
            }
            .describe(),
            workload: format!(
                "PUT up to {put_count} objects of {}, then GET up to {} by Zipf s={} over recency",
                cfg.shape.sizes.describe(),
                cfg.get_count,
                cfg.shape.zipf
            ),
            ..Default::default()
        };
        let mode = Mode::Closed {
            concurrency: cfg.concurrency,
        };
        r.phases.push(
            runner
                .phase(
                    "put",
                    Mix::PUT_ONLY,
                    mode,
                    Limits {
                        count: put_count,
                        duration: cfg.duration,
                    },
                )
                .await,
        );
        r.phases.push(
            runner
                .phase(
                    "get",
                    Mix::GET_ONLY,
                    mode,
                    Limits {
                        count: cfg.get_count,
                        duration: cfg.duration,
                    },
                )
                .await,
        );
        r.load_after = load_average();
        sides.push(r);
    }
    let nginx = sides.pop().expect("two sides");
    let haystack = sides.pop().expect("two sides");
    let ratios = ratios(&haystack, &nginx);
    Ok(CompareReport {
        haystack,
        nginx,
        ratios,
    })
}
