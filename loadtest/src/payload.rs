//! Upload bodies, made cheaply: a pool of real JPEGs is encoded once at start (sizes in
//! geometric steps across the size distribution's range), and each upload is the largest
//! of them that fits, grown to the exact size wanted with JPEG comment (COM) segments of
//! seeded random bytes. Every payload is a valid JPEG that the uploader can decode, its
//! pixels are those of a real image of about the right size (so decoding and resizing cost
//! what a photo of that size costs), and its bytes are unique per seed and can be rebuilt
//! from (size, seed) alone, which is how `--verify` checks them without keeping them.
//!
//! Videos are not decoded by anyone, so their bytes are a pure function of (seed, offset):
//! any range can be rebuilt to check a `Range` answer.

use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder, RgbImage};

use crate::error::{LoadError, Result};

/// Steps between base image sizes: a payload is at most this much padding over its image.
const STEP: f64 = 1.25;
/// Bytes of padding every payload carries at least (its seed and some random bytes), so
/// that no two payloads are equal.
const MIN_PAD: usize = 24;
/// A COM segment: FF FE, a big-endian length that counts itself, then up to 65533 bytes.
const COM_MAX: usize = 4 + 65533;
/// JPEG quality of the bases: that of a typical camera or phone upload.
const QUALITY: u8 = 85;

/// The JPEGs payloads are made from.
#[derive(Clone)]
pub struct JpegPool {
    /// Sorted by length.
    bases: Vec<Bytes>,
}

impl std::fmt::Debug for JpegPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<usize> = self.bases.iter().map(|b| b.len()).collect();
        f.debug_struct("JpegPool").field("bases", &lens).finish()
    }
}

impl JpegPool {
    /// Encodes the bases for payloads of `min..=max` bytes.
    pub fn generate(min: u64, max: u64) -> Result<JpegPool> {
        if min > max {
            return Err(LoadError::Config(format!(
                "payload sizes: min {min} > max {max}"
            )));
        }
        let mut nominal = Vec::new();
        let mut n = max as f64;
        while n > min as f64 {
            nominal.push(n as usize);
            n /= STEP;
        }
        nominal.push(min as usize);
        // bytes per pixel of this kind of image at this quality, measured once
        let probe = encode(&picture(256, 192, 1))?;
        let mut bpp = probe.len() as f64 / (256.0 * 192.0);
        let mut bases = Vec::new();
        for (i, &target) in nominal.iter().enumerate() {
            let want = target.saturating_sub(MIN_PAD);
            if let Some(b) = fit(want, &mut bpp, i as u64)? {
                bases.push(Bytes::from(b));
            }
        }
        bases.sort_by_key(|b| b.len());
        bases.dedup_by_key(|b| b.len());
        if bases.is_empty() || bases[0].len() + MIN_PAD > min as usize {
            return Err(LoadError::Payload(format!(
                "no JPEG is small enough for a {min}-byte payload (the smallest is {} bytes)",
                bases.first().map(|b| b.len()).unwrap_or(0)
            )));
        }
        Ok(JpegPool { bases })
    }

    /// Lengths of the base images, smallest first.
    pub fn base_lens(&self) -> Vec<usize> {
        self.bases.iter().map(|b| b.len()).collect()
    }

    /// A valid JPEG of exactly `size` bytes, unique to `seed`.
    pub fn payload(&self, size: u64, seed: u64) -> Result<Vec<u8>> {
        let size = size as usize;
        let base = self
            .bases
            .iter()
            .rev()
            .find(|b| b.len() + MIN_PAD <= size)
            .ok_or_else(|| {
                LoadError::Payload(format!(
                    "{size} bytes is smaller than the smallest JPEG of the pool ({} + {MIN_PAD})",
                    self.bases[0].len()
                ))
            })?;
        let at = insert_point(base);
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&base[..at]);
        let mut pad = size - base.len();
        let mut rng = SplitMix(seed);
        let mut first = true;
        while pad > 0 {
            let mut seg = pad.min(COM_MAX);
            if (1..4).contains(&(pad - seg)) {
                // leave room for one more whole segment header
                seg -= 4;
            }
            out.extend_from_slice(&[0xFF, 0xFE]);
            out.extend_from_slice(&((seg - 2) as u16).to_be_bytes());
            let mut body = seg - 4;
            if first {
                let tag = seed.to_le_bytes();
                let n = body.min(tag.len());
                out.extend_from_slice(&tag[..n]);
                body -= n;
                first = false;
            }
            rng.fill(&mut out, body);
            pad -= seg;
        }
        out.extend_from_slice(&base[at..]);
        debug_assert_eq!(out.len(), size);
        Ok(out)
    }
}

/// Where comment segments go: after SOI and, when present, the JFIF APP0 segment.
fn insert_point(jpeg: &[u8]) -> usize {
    if jpeg.len() >= 6 && jpeg[2] == 0xFF && jpeg[3] == 0xE0 {
        let len = u16::from_be_bytes([jpeg[4], jpeg[5]]) as usize;
        if 4 + len <= jpeg.len() {
            return 4 + len;
        }
    }
    2
}

/// Encodes a picture of at most `want` bytes (and, when the estimate allows, not much less),
/// learning bytes per pixel as it goes. `None` when even a tiny picture is too big.
fn fit(want: usize, bpp: &mut f64, seed: u64) -> Result<Option<Vec<u8>>> {
    let mut pixels = (want as f64 / *bpp * 0.95).max(64.0);
    for _ in 0..6 {
        let w = ((pixels * 4.0 / 3.0).sqrt() as u32).max(8);
        let h = ((w as f64) * 3.0 / 4.0) as u32;
        let h = h.max(8);
        let jpeg = encode(&picture(w, h, seed))?;
        *bpp = jpeg.len() as f64 / (w as f64 * h as f64);
        if jpeg.len() <= want {
            return Ok(Some(jpeg));
        }
        if w == 8 {
            return Ok(None);
        }
        pixels = (w as f64 * h as f64) * (want as f64 / jpeg.len() as f64) * 0.92;
    }
    Ok(None)
}

fn encode(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, QUALITY)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| LoadError::Payload(format!("encoding a JPEG: {e}")))?;
    Ok(buf)
}

/// Something photo-like to the encoder: smooth gradients, a few soft shapes and some sensor
/// noise (about 0.3-0.6 bytes per pixel at quality 85, where random noise would be ~3).
fn picture(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = SplitMix(seed.wrapping_mul(0x9E37_79B9) ^ 0x5EED);
    let cx = [rng.next_u64() % w as u64, rng.next_u64() % w as u64];
    let cy = [rng.next_u64() % h as u64, rng.next_u64() % h as u64];
    let mut noise = SplitMix(seed ^ 0xABCD);
    RgbImage::from_fn(w, h, |x, y| {
        let fx = x as f64 / w as f64;
        let fy = y as f64 / h as f64;
        let d0 = ((x as f64 - cx[0] as f64).powi(2) + (y as f64 - cy[0] as f64).powi(2)).sqrt();
        let d1 = ((x as f64 - cx[1] as f64).powi(2) + (y as f64 - cy[1] as f64).powi(2)).sqrt();
        let ring = ((d0 / 9.0).sin() * 30.0) + ((d1 / 23.0).cos() * 25.0);
        let n = noise.next_u64();
        let jitter = |shift: u32| ((n >> shift) & 0x1F) as f64 - 16.0;
        let r = 120.0 + 90.0 * fx + ring + jitter(0);
        let g = 80.0 + 100.0 * fy - ring * 0.5 + jitter(8);
        let b = 60.0 + 60.0 * (fx * fy) + ring * 0.8 + jitter(16);
        image::Rgb([clamp8(r), clamp8(g), clamp8(b)])
    })
}

fn clamp8(v: f64) -> u8 {
    v.clamp(0.0, 255.0) as u8
}

/// A tiny fast generator (SplitMix64): payload padding and video bytes, reproducible.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Appends `n` bytes.
    pub fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        let mut left = n;
        while left >= 8 {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
            left -= 8;
        }
        if left > 0 {
            out.extend_from_slice(&self.next_u64().to_le_bytes()[..left]);
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes `offset..offset + len` of the video made from `seed` (each aligned 8-byte word is
/// a hash of the seed and its index, so any range is cheap to rebuild).
pub fn video_bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut word = offset / 8;
    let skip = (offset % 8) as usize;
    while out.len() < len + skip {
        out.extend_from_slice(&mix(seed ^ word.wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes());
        word += 1;
    }
    out.drain(..skip);
    out.truncate(len);
    out
}
