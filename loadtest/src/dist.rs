//! The random distributions of a workload: upload sizes (log-normal or fixed) and read
//! popularity (Zipf over recency: the newest upload is rank 1, the hottest, as Haystack and
//! f4 measured), plus the parsing of sizes like `100KiB`.

use rand::Rng;

use crate::error::{LoadError, Result};

/// How big uploads are.
#[derive(Clone, Debug, PartialEq)]
pub enum SizeDist {
    /// Every upload has this many bytes (small-object mode: `fixed:4KiB`).
    Fixed(u64),
    /// Log-normal with this median and shape (sigma of the underlying normal), clamped to
    /// `[min, max]`.
    LogNormal {
        median: u64,
        sigma: f64,
        min: u64,
        max: u64,
    },
}

impl Default for SizeDist {
    /// Log-normal around 100 KiB (sigma 0.7: half of the photos between 62 and 160 KiB,
    /// mean 128 KiB), clamped to 4 KiB..4 MiB.
    fn default() -> Self {
        SizeDist::LogNormal {
            median: 100 << 10,
            sigma: 0.7,
            min: 4 << 10,
            max: 4 << 20,
        }
    }
}

impl SizeDist {
    /// Parses `fixed:SIZE`, `lognormal:MEDIAN[,SIGMA[,MIN,MAX]]`, or a bare `SIZE` (fixed).
    pub fn parse(s: &str) -> Result<SizeDist> {
        let bad = |why: &str| LoadError::Config(format!("size distribution {s:?}: {why}"));
        if let Some(rest) = s.strip_prefix("lognormal:") {
            let parts: Vec<&str> = rest.split(',').map(str::trim).collect();
            let SizeDist::LogNormal {
                mut sigma,
                mut min,
                mut max,
                ..
            } = SizeDist::default()
            else {
                unreachable!("the default is log-normal")
            };
            let median = parse_size(parts[0])?;
            if parts.len() >= 2 {
                sigma = parts[1].parse().map_err(|_| bad("sigma is not a number"))?;
            }
            match parts.len() {
                1 | 2 => {}
                4 => {
                    min = parse_size(parts[2])?;
                    max = parse_size(parts[3])?;
                }
                _ => return Err(bad("expected lognormal:MEDIAN[,SIGMA[,MIN,MAX]]")),
            }
            if !(sigma.is_finite() && sigma >= 0.0) {
                return Err(bad("sigma must be a finite number >= 0"));
            }
            if median == 0 || min == 0 || min > max || median < min || median > max {
                return Err(bad("need 0 < MIN <= MEDIAN <= MAX"));
            }
            return Ok(SizeDist::LogNormal {
                median,
                sigma,
                min,
                max,
            });
        }
        let n = parse_size(s.strip_prefix("fixed:").unwrap_or(s))?;
        if n == 0 {
            return Err(bad("size must be > 0"));
        }
        Ok(SizeDist::Fixed(n))
    }

    /// One size in bytes.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::LogNormal {
                median,
                sigma,
                min,
                max,
            } => {
                let x = (median as f64) * (sigma * standard_normal(rng)).exp();
                (x.round() as u64).clamp(min, max)
            }
        }
    }

    /// Smallest and largest size this distribution produces.
    pub fn bounds(&self) -> (u64, u64) {
        match *self {
            SizeDist::Fixed(n) => (n, n),
            SizeDist::LogNormal { min, max, .. } => (min, max),
        }
    }

    /// `fixed:4096` or `lognormal:102400,0.7,4096,4194304`: the canonical spelling.
    pub fn describe(&self) -> String {
        match *self {
            SizeDist::Fixed(n) => format!("fixed:{}", format_size(n)),
            SizeDist::LogNormal {
                median,
                sigma,
                min,
                max,
            } => format!(
                "lognormal:{},{sigma},{},{}",
                format_size(median),
                format_size(min),
                format_size(max)
            ),
        }
    }
}

/// A standard normal variate (Box-Muller; one of the pair is thrown away, which is cheap
/// enough next to an HTTP request).
pub fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // u1 in (0, 1] so that ln(u1) is finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Parses `4096`, `4KiB`, `4k`, `1.5MiB`, `2G` (binary multiples; `B` optional).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(LoadError::Config(format!("size {s:?}: unknown unit"))),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| LoadError::Config(format!("size {s:?} is not a number")))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(LoadError::Config(format!("size {s:?} is out of range")));
    }
    Ok((v * mult as f64).round() as u64)
}

/// `4KiB`, `100KiB`, `1.5MiB`, `123B`: short and exact when it can be.
pub fn format_size(n: u64) -> String {
    for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= m {
            return if n % m == 0 {
                format!("{}{unit}", n / m)
            } else {
                format!("{:.1}{unit}", n as f64 / m as f64)
            };
        }
    }
    format!("{n}B")
}

/// Zipf's law over ranks `1..=n`: P(k) ∝ 1 / k^s. Sampled in constant time by
/// rejection-inversion (Hörmann and Derflinger, 1996), so `n` may change between samples
/// (the population grows while the load runs) at the cost of a few logarithms.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_x1: f64,
    h_n: f64,
    cut: f64,
}

impl Zipf {
    /// `n >= 1` ranks, exponent `s > 0`.
    pub fn new(n: u64, s: f64) -> Result<Zipf> {
        if n == 0 {
            return Err(LoadError::Config("zipf: need at least one rank".into()));
        }
        if !(s.is_finite() && s > 0.0) {
            return Err(LoadError::Config(format!(
                "zipf exponent {s} must be finite and > 0"
            )));
        }
        let mut z = Zipf {
            n: n as f64,
            s,
            h_x1: 0.0,
            h_n: 0.0,
            cut: 0.0,
        };
        z.h_x1 = z.h_integral(1.5) - 1.0;
        z.h_n = z.h_integral(z.n + 0.5);
        z.cut = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        Ok(z)
    }

    /// A rank in `1..=n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        loop {
            let u = self.h_n + rng.random::<f64>() * (self.h_x1 - self.h_n);
            let x = self.h_integral_inv(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.cut || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    /// The exact probability of rank `k` (for tests and reports; O(n)).
    pub fn pmf(&self, k: u64) -> f64 {
        let norm: f64 = (1..=self.n as u64).map(|i| (i as f64).powf(-self.s)).sum();
        (k as f64).powf(-self.s) / norm
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    /// ∫ x^-s, shifted so that it is continuous at s = 1: ((x^(1-s)) - 1) / (1 - s).
    fn h_integral(&self, x: f64) -> f64 {
        let lx = x.ln();
        expm1_over_x((1.0 - self.s) * lx) * lx
    }

    fn h_integral_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (ln1p_over_x(t) * x).exp()
    }
}

/// ln(1 + x) / x, accurate near 0.
fn ln1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (e^x - 1) / x, accurate near 0.
fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

/// Picks an index into a list ordered oldest first, by Zipf over recency: the last element
/// (the newest) is rank 1.
#[derive(Clone, Copy, Debug)]
pub struct RecencyPicker {
    /// The Zipf exponent; 0 means uniform.
    pub exponent: f64,
}

impl RecencyPicker {
    /// An index in `0..len` (`None` when `len` is 0).
    pub fn pick<R: Rng + ?Sized>(&self, len: usize, rng: &mut R) -> Option<usize> {
        if len == 0 {
            return None;
        }
        if self.exponent <= 0.0 {
            return Some(rng.random_range(0..len));
        }
        let z = Zipf::new(len as u64, self.exponent).expect("len > 0 and exponent > 0");
        let rank = z.sample(rng) as usize;
        Some(len - rank)
    }
}
