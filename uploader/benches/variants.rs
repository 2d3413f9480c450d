//! Benchmark: one 12-megapixel JPEG (4000x3000, made here) to every default variant, on the
//! calling thread (run it under `taskset -c 1` for one core). Prints each run and the median.
//!
//!     cargo bench -p haystack-uploader --bench variants -- [--runs N] [--width W --height H]

use std::time::Instant;

use haystack_uploader::config::default_variants;
use haystack_uploader::images::{process, EncodeOptions, ImageLimits};

fn arg(args: &[String], name: &str, default: u32) -> u32 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A photo-like test picture: smooth gradients, some texture and a little noise, so the JPEG
/// is neither trivially compressible nor pure noise.
fn picture(w: u32, h: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    let mut seed: u32 = 0x9e37_79b9;
    for y in 0..h {
        for x in 0..w {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let n = (seed % 17) as f32 - 8.0;
            let fx = x as f32 / w as f32;
            let fy = y as f32 / h as f32;
            let t = ((x as f32 * 0.05).sin() * (y as f32 * 0.03).cos()) * 30.0;
            px.push((fx * 200.0 + t + n).clamp(0.0, 255.0) as u8);
            px.push((fy * 180.0 + 40.0 - t + n).clamp(0.0, 255.0) as u8);
            px.push(((fx + fy) * 100.0 + t * 0.5 + n).clamp(0.0, 255.0) as u8);
        }
    }
    px
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 10).max(1);
    let (w, h) = (arg(&args, "--width", 4000), arg(&args, "--height", 3000));
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 90)
        .encode(
            &picture(w, h),
            w as u16,
            h as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encode the test JPEG");
    println!(
        "source: {w}x{h} JPEG q90, {} bytes; variants: {:?}",
        jpeg.len(),
        default_variants()
            .iter()
            .map(|v| (v.name.as_str(), v.longest_side))
            .collect::<Vec<_>>()
    );
    let limits = ImageLimits {
        max_pixels: 100_000_000,
        max_dimension: 30_000,
    };
    let opts = EncodeOptions { jpeg_quality: 85 };
    let specs = default_variants();
    let mut times = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        let p = process(&jpeg, &specs, limits, opts).expect("process");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let decoded = image::load_from_memory(&jpeg).expect("decode");
        let decode_ms = t.elapsed().as_secs_f64() * 1e3;
        drop(decoded);
        println!(
            "run {run}: all variants {ms:.1} ms (decode alone {decode_ms:.1} ms); {}",
            p.variants
                .iter()
                .map(|v| format!("{} {}x{} {} B", v.name, v.width, v.height, v.data.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "median {:.1} ms, min {:.1} ms, max {:.1} ms over {runs} runs",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}
