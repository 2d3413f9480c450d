//! Test-only pause points (feature `test-hooks`): in the erasure-coding steps, so that a crash
//! test can SIGKILL a store process exactly there (ops/tests/ec_crash.rs), and in the write
//! path, so that a test can hold a replica's write while the photo is deleted
//! (ops/tests/late_writes.rs).
//!
//! A test arms point `P` of one store by creating the file `test-pause-P` in its data
//! directory. A store that reaches an armed point creates `test-paused-P` (the test waits for
//! it), then waits until `test-pause-P` is removed (at most ten minutes) and goes on. The test
//! either kills the process while it waits, or removes the file to let it go on. Points:
//! - `ec-build`: a build's staging files written and synced, before the staging directory's
//!   rename (docs/FORMAT.md, encode step 1 and re-encode step 1);
//! - `ec-install`: a shard fetched into its temporary file, before its check and rename
//!   (encode step 2, re-encode step 2);
//! - `ec-switch`: before the manifest's rename that switches the store to a shard or
//!   generation (encode step 2, re-encode step 3, a rebuild);
//! - `ec-switch-opened`: the new shard or generation opened (its delete log read), before it
//!   replaces the open one;
//! - `ec-drop`: before a retired replica's files are removed (encode step 4);
//! - `batch-write`: a batch write's body received and parsed, before it is written;
//! - `reseed-swap`: a re-seed's new copy downloaded and synced and the old copy quiesced,
//!   before the files are swapped (store/tests/http_api.rs).
//!
//! [`fail`] injects an error at a point the same way (`test-fail-P`).
//!
//! Without the feature (every production build) each point is an empty inline function.

use std::path::Path;

/// Waits at `point` if a test armed it in `data_dir` (blocking; call off the async workers).
#[cfg(feature = "test-hooks")]
pub(crate) fn blocking(data_dir: &Path, point: &str) {
    use std::time::{Duration, Instant};
    let armed = data_dir.join(format!("test-pause-{point}"));
    if !armed.exists() {
        return;
    }
    let paused = data_dir.join(format!("test-paused-{point}"));
    if let Err(e) = std::fs::write(&paused, b"") {
        tracing::warn!(point, error = %e, "test hook: writing the paused marker failed");
    }
    tracing::warn!(point, "test hook: paused");
    let until = Instant::now() + Duration::from_secs(600);
    while armed.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&paused);
    tracing::warn!(point, "test hook: going on");
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn blocking(_data_dir: &Path, _point: &str) {}

/// [`blocking`] from async code (on the blocking pool).
#[cfg(feature = "test-hooks")]
pub(crate) async fn at(data_dir: &Path, point: &'static str) {
    let d = data_dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || blocking(&d, point)).await;
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) async fn at(_data_dir: &Path, _point: &'static str) {}

/// A test's injected failure at `point`: an error when the file `test-fail-{point}` exists in
/// `data_dir` (test builds only; points: `reseed-unlink`, before a re-seed's swap removes the
/// old index files; `reseed-renamed`, right after its rename).
#[cfg(feature = "test-hooks")]
pub(crate) fn fail(data_dir: &Path, point: &str) -> std::io::Result<()> {
    if data_dir.join(format!("test-fail-{point}")).exists() {
        tracing::warn!(point, "test hook: failing");
        return Err(std::io::Error::other(format!(
            "test hook: failed at {point}"
        )));
    }
    Ok(())
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn fail(_data_dir: &Path, _point: &str) -> std::io::Result<()> {
    Ok(())
}
