//! Writable headroom: how fast the cluster is being written, and the volumes made ahead of that
//! rate, so that a burst of uploads finds room instead of waiting for a volume to be created.
//!
//! The rate is the higher of two measures, both taken once per maintenance tick over the last
//! [`WriteRate::window_ms`]:
//! - the bytes assigned by this instance (the `size_hint_bytes` of its assigns), the highest
//!   per-tick rate in the window: it sees a burst at the next tick;
//! - the growth of the bytes the stores report in their volumes, averaged over the window: it
//!   sees what every instance assigned, a heartbeat late.
//!
//! The room wanted is `max(min_writable_free_bytes, rate * writable_headroom_secs)`; a volume
//! on its way counts for its planned capacity. Up to [`MAX_CREATES_PER_TICK`] volumes are made
//! in one tick.

use std::collections::VecDeque;

use super::*;

/// Most volumes one maintenance tick creates.
pub const MAX_CREATES_PER_TICK: usize = 4;

/// One tick's totals.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_ms: u64,
    /// Bytes assigned by this instance since it started.
    assigned: u64,
    /// Bytes the stores report in every volume.
    used: u64,
}

/// The recent write rate, from one sample per maintenance tick.
#[derive(Debug, Default)]
pub struct WriteRate {
    samples: VecDeque<Sample>,
}

impl WriteRate {
    /// How far back the rate looks: 10 s, or two heartbeats when they are further apart (the
    /// reported sizes move once per heartbeat).
    pub fn window_ms(heartbeat_interval_secs: u64) -> u64 {
        (2 * heartbeat_interval_secs * 1_000).max(10_000)
    }

    /// Records the totals at `at_ms` and returns the rate in bytes per second.
    pub fn sample(&mut self, at_ms: u64, assigned: u64, used: u64, window_ms: u64) -> u64 {
        // A clock that did not move, or went back: samples from its "future" go, so that
        // every pair kept is in time order.
        while self.samples.back().is_some_and(|s| at_ms <= s.at_ms) {
            self.samples.pop_back();
        }
        self.samples.push_back(Sample {
            at_ms,
            assigned,
            used,
        });
        while self
            .samples
            .front()
            .is_some_and(|s| at_ms.saturating_sub(s.at_ms) > window_ms)
        {
            self.samples.pop_front();
        }
        self.rate()
    }

    /// Bytes per second: the highest of the per-tick assign rates and the average growth of
    /// the reported sizes over the window (0 with fewer than two samples).
    pub fn rate(&self) -> u64 {
        let per_sec = |bytes: u64, ms: u64| bytes.saturating_mul(1_000) / ms.max(1);
        let assigned = self
            .samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .map(|(a, b)| per_sec(b.assigned.saturating_sub(a.assigned), b.at_ms - a.at_ms))
            .max()
            .unwrap_or(0);
        let used = match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if b.at_ms > a.at_ms => {
                per_sec(b.used.saturating_sub(a.used), b.at_ms - a.at_ms)
            }
            _ => 0,
        };
        assigned.max(used)
    }
}

impl Directory {
    /// Counts an assign's size hint in the write rate.
    pub(super) fn note_assigned(&self, bytes: u64) {
        self.assigned_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One tick's sample of the write rate (the maintenance loop takes one per round); returns
    /// the rate in bytes per second.
    pub fn sample_write_rate(&self) -> u64 {
        let used: u64 = self
            .view()
            .volumes
            .values()
            .map(|v| v.info.used_bytes)
            .sum();
        let window = WriteRate::window_ms(self.config.heartbeat_interval_secs);
        let rate = haystack_service::sync::lock(&self.write_rate).sample(
            self.clock.now_ms(),
            self.assigned_bytes.load(Ordering::Relaxed),
            used,
            window,
        );
        metrics::gauge!("haystack_directory_write_rate_bytes").set(rate as f64);
        rate
    }

    /// The writable room wanted now: `min_writable_free_bytes`, or `writable_headroom_secs` of
    /// the recent write rate when that is more.
    pub fn wanted_writable_bytes(&self) -> u64 {
        let rate = haystack_service::sync::lock(&self.write_rate).rate();
        let ahead = rate.saturating_mul(self.config.writable_headroom_secs);
        self.config.min_writable_free_bytes.max(ahead)
    }

    /// Creates a volume when fewer than `min_writable_volumes` are writable or on their way,
    /// or when the writable ones and those on their way (at their planned capacity) have less
    /// room than [`Directory::wanted_writable_bytes`]. Returns the new volume's id.
    pub async fn ensure_capacity(&self) -> Result<Option<u32>, DirectoryError> {
        let view = self.view();
        let pending = view.volumes.values().filter(|v| v.pending).count();
        let free: u64 = view
            .writable
            .iter()
            .filter_map(|id| view.volumes.get(id))
            .map(|v| v.free_bytes())
            .sum();
        let coming = (pending as u64).saturating_mul(self.config.volume_capacity_bytes);
        let wanted = self.wanted_writable_bytes();
        metrics::gauge!("haystack_directory_writable_wanted_bytes").set(wanted as f64);
        let enough_volumes = view.writable.len() + pending >= self.config.min_writable_volumes;
        let enough_space = free.saturating_add(coming) >= wanted;
        if enough_volumes && enough_space {
            return Ok(None);
        }
        if !enough_space {
            tracing::info!(
                free_bytes = free,
                coming_bytes = coming,
                wanted_bytes = wanted,
                "writable room below what is wanted (min_writable_free_bytes, or the write rate's headroom); creating a volume"
            );
        }
        let info = self.create_volume().await?;
        Ok(Some(info.id))
    }

    /// Creates volumes until [`Directory::ensure_capacity`] is satisfied, at most
    /// [`MAX_CREATES_PER_TICK`]. Returns how many were made.
    pub async fn ensure_capacity_all(&self) -> Result<usize, DirectoryError> {
        let mut made = 0;
        while made < MAX_CREATES_PER_TICK {
            match self.ensure_capacity().await? {
                Some(_) => made += 1,
                None => break,
            }
        }
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::WriteRate;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_burst_of_assigns_shows_at_the_next_tick_and_fades_after_the_window() {
        let mut r = WriteRate::default();
        assert_eq!(r.sample(0, 0, 0, 10_000), 0, "one sample: no rate");
        assert_eq!(r.sample(1_000, 0, 0, 10_000), 0);
        assert_eq!(r.sample(2_000, 200 * MIB, 0, 10_000), 200 * MIB);
        // The burst stops: the rate holds while the tick that saw it is in the window.
        for t in 3..=11 {
            assert_eq!(
                r.sample(t * 1_000, 200 * MIB, 0, 10_000),
                200 * MIB,
                "t={t}"
            );
        }
        assert_eq!(r.sample(12_000, 200 * MIB, 0, 10_000), 0);
    }

    #[test]
    fn reported_growth_is_averaged_over_the_window() {
        let mut r = WriteRate::default();
        r.sample(0, 0, 0, 10_000);
        // Heartbeats every 5 s report 500 MiB more each time: 100 MiB/s.
        assert_eq!(r.sample(5_000, 0, 500 * MIB, 10_000), 100 * MIB);
        assert_eq!(r.sample(10_000, 0, 1_000 * MIB, 10_000), 100 * MIB);
        // Compaction shrinks the volumes: no negative rate.
        assert_eq!(r.sample(20_000, 0, 100 * MIB, 10_000), 0);
    }

    #[test]
    fn a_clock_that_goes_back_starts_over_from_there() {
        // Regression: only the newest sample was dropped, so a clock set back past two samples
        // left a pair out of order, and the rate's `b.at_ms - a.at_ms` underflowed (a panic
        // in debug builds, a wrapped duration in release ones).
        let mut r = WriteRate::default();
        r.sample(10_000, 0, 0, 10_000);
        r.sample(11_000, 100 * MIB, 0, 10_000);
        assert_eq!(r.sample(5_000, 100 * MIB, 0, 10_000), 0, "one sample left");
        assert_eq!(r.sample(6_000, 300 * MIB, 0, 10_000), 200 * MIB);
    }

    #[test]
    fn a_clock_that_does_not_move_keeps_one_sample() {
        let mut r = WriteRate::default();
        r.sample(1_000, 0, 0, 10_000);
        r.sample(1_000, 50 * MIB, 0, 10_000);
        assert_eq!(r.sample(2_000, 150 * MIB, 0, 10_000), 100 * MIB);
    }
}
