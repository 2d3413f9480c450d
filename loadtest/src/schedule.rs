//! When each request of an open-loop run is meant to be sent. The load generator measures
//! latency from this intended time, not from when it got round to sending, so a server that
//! stalls is charged for every request that should have gone out during the stall
//! (coordinated omission; Gil Tene's "How NOT to measure latency").

use std::time::Duration;

use rand::Rng;

use crate::error::{LoadError, Result};

/// How requests arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// One every 1/rate seconds exactly.
    Uniform,
    /// A Poisson process of the given rate (exponential gaps): independent users.
    Poisson,
}

impl std::str::FromStr for Arrivals {
    type Err = LoadError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "uniform" => Ok(Arrivals::Uniform),
            "poisson" => Ok(Arrivals::Poisson),
            _ => Err(LoadError::Config(format!(
                "arrivals {s:?}: expected uniform or poisson"
            ))),
        }
    }
}

/// The intended send times of an open-loop run, as offsets from its start.
#[derive(Clone, Debug)]
pub struct Schedule {
    rate: f64,
    arrivals: Arrivals,
    next: u64,
    /// Seconds since the start of the last Poisson arrival.
    poisson_t: f64,
}

impl Schedule {
    /// `rate` requests per second (> 0).
    pub fn new(rate: f64, arrivals: Arrivals) -> Result<Schedule> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(LoadError::Config(format!(
                "rate {rate} must be a positive number"
            )));
        }
        Ok(Schedule {
            rate,
            arrivals,
            next: 0,
            poisson_t: 0.0,
        })
    }

    /// The offset of request `i` in a uniform schedule: exactly `i / rate`, computed from
    /// `i` rather than summed, so it does not drift over millions of requests.
    pub fn uniform_offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// The next request's intended offset from the start.
    pub fn next_offset<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let i = self.next;
        self.next += 1;
        match self.arrivals {
            Arrivals::Uniform => self.uniform_offset(i),
            Arrivals::Poisson => {
                if i > 0 {
                    let u: f64 = 1.0 - rng.random::<f64>();
                    self.poisson_t += -u.ln() / self.rate;
                }
                Duration::from_secs_f64(self.poisson_t)
            }
        }
    }

    /// Requests scheduled so far.
    pub fn issued(&self) -> u64 {
        self.next
    }
}
