//! The open-loop schedule: intended send times are fixed in advance (uniform: exactly
//! i / rate, with no drift; Poisson: exponential gaps with the right mean), whatever the
//! server does, and a stalled server is charged from those times.

use std::time::Duration;

use haystack_loadtest::schedule::{Arrivals, Schedule};
use haystack_loadtest::stats::{Op, Recorder};
use rand::rngs::SmallRng;
use rand::SeedableRng;

#[test]
fn uniform_times_are_exact_and_do_not_drift() {
    let mut s = Schedule::new(1000.0, Arrivals::Uniform).unwrap();
    let mut rng = SmallRng::seed_from_u64(1);
    let times: Vec<Duration> = (0..2_000_001).map(|_| s.next_offset(&mut rng)).collect();
    assert_eq!(times[0], Duration::ZERO);
    assert_eq!(times[1], Duration::from_millis(1));
    assert_eq!(times[1000], Duration::from_secs(1));
    // after two million requests the schedule is still exactly on time
    assert_eq!(times[2_000_000], Duration::from_secs(2000));
    assert!(times.windows(2).all(|w| w[1] > w[0]));
    assert_eq!(s.issued(), 2_000_001);
    assert_eq!(
        Schedule::new(3.0, Arrivals::Uniform)
            .unwrap()
            .uniform_offset(3),
        Duration::from_secs(1)
    );
}

#[test]
fn poisson_gaps_have_the_rate_and_the_spread() {
    let rate = 500.0;
    let mut s = Schedule::new(rate, Arrivals::Poisson).unwrap();
    let mut rng = SmallRng::seed_from_u64(2);
    let n = 200_000;
    let times: Vec<f64> = (0..n)
        .map(|_| s.next_offset(&mut rng).as_secs_f64())
        .collect();
    assert_eq!(times[0], 0.0);
    assert!(times.windows(2).all(|w| w[1] >= w[0]));
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    assert!((mean * rate - 1.0).abs() < 0.01, "mean gap {mean}");
    // exponential: standard deviation equals the mean, P(gap > mean) = 1/e
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    assert!((var.sqrt() / mean - 1.0).abs() < 0.02);
    let over = gaps.iter().filter(|g| **g > mean).count() as f64 / gaps.len() as f64;
    assert!(
        (over - (-1.0f64).exp()).abs() < 0.01,
        "P(gap > mean) = {over}"
    );
}

#[test]
fn bad_rates_are_refused() {
    for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(Schedule::new(r, Arrivals::Uniform).is_err(), "rate {r}");
    }
    assert_eq!("poisson".parse::<Arrivals>().unwrap(), Arrivals::Poisson);
    assert!("bursty".parse::<Arrivals>().is_err());
}

/// The point of measuring from the intended time: a server that stalls for a second
/// under a 100/s schedule shows the stall in the latency of every request that should
/// have gone out during it, not in one request only.
#[test]
fn a_stall_is_charged_to_every_request_it_delays() {
    let mut s = Schedule::new(100.0, Arrivals::Uniform).unwrap();
    let mut rng = SmallRng::seed_from_u64(3);
    let rec = Recorder::new();
    // the server answers in 1 ms, except that it is stalled from t=1.0 s to t=2.0 s:
    // requests are sent one after another (one connection), as a closed loop would
    let mut free_at = 0.0f64;
    for _ in 0..300 {
        let intended = s.next_offset(&mut rng).as_secs_f64();
        let send = intended.max(free_at);
        let service = if (1.0..2.0).contains(&send) {
            2.0 - send + 0.001
        } else {
            0.001
        };
        free_at = send + service;
        rec.ok(Op::Get, Duration::from_secs_f64(free_at - intended), 0);
    }
    let r = rec.snapshot("run", Duration::from_secs(3));
    let l = &r.ops["get"].latency_us;
    // ~100 requests were due during the stall: more than 10% of 300 saw > 100 ms
    assert!(l.p90 > 100_000, "p90 {} us hides the stall", l.p90);
    assert!(l.max >= 999_000, "max {} us", l.max);
    assert!(l.p50 < 5_000, "p50 {} us", l.p50);
}
