//! Sizes and popularity: the log-normal sizes have the median and spread asked for, the
//! Zipf sampler matches its exact law, and the recency picker favours the newest uploads.

use haystack_loadtest::dist::{format_size, parse_size, RecencyPicker, SizeDist, Zipf};
use rand::rngs::SmallRng;
use rand::SeedableRng;

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_size("4KiB").unwrap(), 4096);
    assert_eq!(parse_size("4k").unwrap(), 4096);
    assert_eq!(parse_size("1.5MiB").unwrap(), 3 << 19);
    assert_eq!(parse_size("2G").unwrap(), 2 << 30);
    assert!(parse_size("4 parsecs").is_err());
    assert!(parse_size("-1").is_err());
    assert_eq!(format_size(4096), "4KiB");
    assert_eq!(format_size(100 << 10), "100KiB");
    assert_eq!(format_size(1536), "1.5KiB");
    assert_eq!(format_size(17), "17B");
}

#[test]
fn size_distributions_parse() {
    assert_eq!(
        SizeDist::parse("fixed:4KiB").unwrap(),
        SizeDist::Fixed(4096)
    );
    assert_eq!(SizeDist::parse("4096").unwrap(), SizeDist::Fixed(4096));
    assert_eq!(
        SizeDist::parse("lognormal:100KiB,0.5,1KiB,1MiB").unwrap(),
        SizeDist::LogNormal {
            median: 100 << 10,
            sigma: 0.5,
            min: 1 << 10,
            max: 1 << 20
        }
    );
    let d = SizeDist::parse("lognormal:64KiB").unwrap();
    assert!(matches!(d, SizeDist::LogNormal { median: 65536, .. }));
    assert_eq!(SizeDist::parse(&d.describe()).unwrap(), d);
    for bad in [
        "fixed:0",
        "lognormal:100KiB,-1",
        "lognormal:100KiB,0.5,200KiB,1MiB",
        "lognormal:100KiB,0.5,1KiB",
        "lognormal:x",
    ] {
        assert!(SizeDist::parse(bad).is_err(), "{bad} should not parse");
    }
}

#[test]
fn lognormal_has_its_median_and_spread_and_stays_in_bounds() {
    let d = SizeDist::LogNormal {
        median: 100 << 10,
        sigma: 0.7,
        min: 4 << 10,
        max: 4 << 20,
    };
    let mut rng = SmallRng::seed_from_u64(7);
    let mut v: Vec<u64> = (0..100_000).map(|_| d.sample(&mut rng)).collect();
    v.sort_unstable();
    assert!(v[0] >= 4 << 10 && *v.last().unwrap() <= 4 << 20);
    let median = v[v.len() / 2] as f64;
    assert!(
        (median / 102_400.0 - 1.0).abs() < 0.03,
        "median {median} is not ~100 KiB"
    );
    // ln(size) is normal with sigma 0.7: the quartiles sit at median * e^(±0.674 * 0.7)
    let q1 = v[v.len() / 4] as f64 / 102_400.0;
    let q3 = v[v.len() * 3 / 4] as f64 / 102_400.0;
    let want = (0.6745f64 * 0.7).exp();
    assert!(
        (q3 / want - 1.0).abs() < 0.04,
        "upper quartile ratio {q3}, want {want}"
    );
    assert!(
        (q1 * want - 1.0).abs() < 0.04,
        "lower quartile ratio {q1}, want {}",
        1.0 / want
    );
    // sigma 0 is a fixed size
    let fixed = SizeDist::LogNormal {
        median: 5000,
        sigma: 0.0,
        min: 1,
        max: 10_000,
    };
    assert!((0..100).all(|_| fixed.sample(&mut rng) == 5000));
}

/// Observed frequencies of ranks against the exact law, for several exponents and sizes
/// (including s = 1, where the sampler's helpers take their series branch).
#[test]
fn zipf_matches_its_law() {
    for (n, s) in [(10u64, 1.0), (100, 0.8), (1000, 1.2), (5, 2.5), (1, 1.0)] {
        let z = Zipf::new(n, s).unwrap();
        let mut rng = SmallRng::seed_from_u64(n ^ 99);
        let draws = 200_000;
        let mut counts = vec![0u64; n as usize + 1];
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!((1..=n).contains(&k), "rank {k} outside 1..={n}");
            counts[k as usize] += 1;
        }
        for k in 1..=n.min(10) {
            let p = z.pmf(k);
            let got = counts[k as usize] as f64 / draws as f64;
            // 5 standard deviations of a binomial proportion, plus a little
            let tol = 5.0 * (p * (1.0 - p) / draws as f64).sqrt() + 1e-4;
            assert!(
                (got - p).abs() <= tol,
                "n={n} s={s} rank {k}: frequency {got:.5}, law {p:.5}"
            );
        }
    }
    assert!(Zipf::new(0, 1.0).is_err());
    assert!(Zipf::new(10, 0.0).is_err());
    assert!(Zipf::new(10, f64::NAN).is_err());
}

#[test]
fn recency_favours_the_newest() {
    let p = RecencyPicker { exponent: 1.0 };
    let mut rng = SmallRng::seed_from_u64(3);
    let len = 10_000;
    let mut newest = 0;
    let mut newest_tenth = 0;
    let mut oldest_half = 0;
    let draws = 100_000;
    for _ in 0..draws {
        let i = p.pick(len, &mut rng).unwrap();
        assert!(i < len);
        if i == len - 1 {
            newest += 1;
        }
        if i >= len - len / 10 {
            newest_tenth += 1;
        }
        if i < len / 2 {
            oldest_half += 1;
        }
    }
    // H(10000) ~ 9.79: the newest alone is ~10% of reads, the newest tenth ~76%
    let f = |c: u64| c as f64 / draws as f64;
    assert!((f(newest) - 0.102).abs() < 0.01, "newest {}", f(newest));
    assert!(
        (f(newest_tenth) - 0.765).abs() < 0.02,
        "newest tenth {}",
        f(newest_tenth)
    );
    assert!(f(oldest_half) < 0.1, "oldest half {}", f(oldest_half));
    assert_eq!(p.pick(0, &mut rng), None);
    assert_eq!(p.pick(1, &mut rng), Some(0));
    // exponent 0 is uniform
    let u = RecencyPicker { exponent: 0.0 };
    let old = (0..draws)
        .filter(|_| u.pick(len, &mut rng).unwrap() < len / 2)
        .count();
    assert!((f(old as u64) - 0.5).abs() < 0.02);
}
