//! Benchmark: one 12-megapixel JPEG (4000x3000, made here) to every default variant, on the
//! calling thread (run it under `taskset -c 1` for one core). Prints each run and the median.
//!
//!     cargo bench -p haystack-uploader --bench variants -- [--runs N] [--width W --height H]
//!         [--subsampling 420]
//!
//! Each run is timed twice: wall clock, and the CPU time of the process
//! (`CLOCK_PROCESS_CPUTIME_ID`), which other processes sharing the core do not inflate.
//!
//! It then times, once each, the alternatives the uploader does not use (the image crate's own
//! resize to 2048 and its own JPEG encoder on the 2048 variant) against the ones it does.

use std::time::Instant;

use haystack_uploader::config::default_variants;
use haystack_uploader::images::{process, EncodeOptions, ImageLimits};

/// CPU time the process has used (every thread: jpeg-decoder may start some), in ms.
fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

fn arg(args: &[String], name: &str, default: u32) -> u32 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 10).max(1);
    let (w, h) = (arg(&args, "--width", 4000), arg(&args, "--height", 3000));
    // jpeg-encoder writes 4:4:4 at q90; `--subsampling 420` makes the 4:2:0 that most cameras
    // write (half the blocks to decode).
    let subsampled = args
        .iter()
        .position(|a| a == "--subsampling")
        .and_then(|i| args.get(i + 1))
        .is_some_and(|v| v == "420");
    let mut jpeg = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, 90);
    if subsampled {
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    }
    encoder
        .encode(
            &haystack_uploader::images::test_picture(w, h),
            w as u16,
            h as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encode the test JPEG");
    println!(
        "source: {w}x{h} JPEG q90 {}, {} bytes; variants: {:?}",
        if subsampled { "4:2:0" } else { "4:4:4" },
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
    let (mut times, mut cpu_times) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (t, c) = (Instant::now(), process_cpu_ms());
        let p = process(&jpeg, &specs, limits, opts).expect("process");
        let (ms, cpu) = (t.elapsed().as_secs_f64() * 1e3, process_cpu_ms() - c);
        let (t, c) = (Instant::now(), process_cpu_ms());
        let decoded = image::load_from_memory(&jpeg).expect("decode");
        let (decode_ms, decode_cpu) = (t.elapsed().as_secs_f64() * 1e3, process_cpu_ms() - c);
        drop(decoded);
        println!(
            "run {run}: all variants {ms:.1} ms, CPU {cpu:.1} ms (whole decode alone {decode_ms:.1} ms, CPU {decode_cpu:.1} ms); {}",
            p.variants
                .iter()
                .map(|v| format!("{} {}x{} {} B", v.name, v.width, v.height, v.data.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        times.push(ms);
        cpu_times.push(cpu);
    }
    times.sort_by(f64::total_cmp);
    cpu_times.sort_by(f64::total_cmp);
    compare(&jpeg);
    println!(
        "median {:.1} ms, min {:.1} ms, max {:.1} ms over {runs} runs",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    println!(
        "process CPU: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        cpu_times[cpu_times.len() / 2],
        cpu_times[0],
        cpu_times[cpu_times.len() - 1]
    );
}

/// The image crate's resize and JPEG encoder against fast_image_resize and jpeg-encoder, on
/// the same decoded picture, median of 3 each.
fn compare(jpeg: &[u8]) {
    let img = image::load_from_memory(jpeg).expect("decode").into_rgb8();
    let (w, h) = haystack_uploader::images::fit(img.width(), img.height(), 2048);
    let median = |f: &mut dyn FnMut()| {
        let mut t: Vec<f64> = (0..3)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[1]
    };
    let image_resize = median(&mut || {
        std::hint::black_box(image::imageops::resize(
            &img,
            w,
            h,
            image::imageops::FilterType::CatmullRom,
        ));
    });
    let src = fast_image_resize::images::ImageRef::new(
        img.width(),
        img.height(),
        img.as_raw(),
        fast_image_resize::PixelType::U8x3,
    )
    .expect("view");
    let mut resizer = fast_image_resize::Resizer::new();
    let mut dst = fast_image_resize::images::Image::new(w, h, fast_image_resize::PixelType::U8x3);
    let opts = fast_image_resize::ResizeOptions::new().resize_alg(
        fast_image_resize::ResizeAlg::Convolution(fast_image_resize::FilterType::CatmullRom),
    );
    let fir_resize = median(&mut || {
        resizer.resize(&src, &mut dst, &opts).expect("resize");
    });
    let large = dst.buffer().to_vec();
    let image_jpeg = median(&mut || {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
            .encode(&large, w, h, image::ExtendedColorType::Rgb8)
            .expect("encode");
        std::hint::black_box(out);
    });
    let fast_jpeg = median(&mut || {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 85)
            .encode(&large, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .expect("encode");
        std::hint::black_box(out);
    });
    println!(
        "resize {}x{} -> {w}x{h} CatmullRom: image crate {image_resize:.1} ms, fast_image_resize {fir_resize:.1} ms",
        img.width(),
        img.height()
    );
    println!("JPEG q85 of {w}x{h}: image crate {image_jpeg:.1} ms, jpeg-encoder {fast_jpeg:.1} ms");
}
