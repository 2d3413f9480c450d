//! Payloads: every one is a JPEG that decodes, of exactly the size asked for, unique per
//! seed and rebuilt identically from (size, seed); video bytes are consistent across ranges.

use haystack_loadtest::payload::{video_bytes, JpegPool};

#[test]
fn payloads_are_exact_valid_unique_and_reproducible() {
    let pool = JpegPool::generate(2 << 10, 300 << 10).unwrap();
    let lens = pool.base_lens();
    assert!(lens.len() >= 5, "bases {lens:?}");
    // steps between bases stay small, so padding stays a minor part of a payload
    for w in lens.windows(2) {
        assert!(w[1] as f64 / w[0] as f64 <= 1.6, "gap in bases {lens:?}");
    }
    for (i, size) in [2048u64, 4096, 5000, 65_536, 70_001, 100 << 10, 300 << 10]
        .into_iter()
        .enumerate()
    {
        let a = pool.payload(size, i as u64).unwrap();
        assert_eq!(a.len() as u64, size);
        assert_eq!(&a[..2], &[0xFF, 0xD8], "starts with SOI");
        assert_eq!(&a[a.len() - 2..], &[0xFF, 0xD9], "ends with EOI");
        let img = image::load_from_memory_with_format(&a, image::ImageFormat::Jpeg)
            .unwrap_or_else(|e| panic!("{size}-byte payload does not decode: {e}"));
        assert!(img.width() >= 8 && img.height() >= 8);
        assert_eq!(a, pool.payload(size, i as u64).unwrap(), "reproducible");
        assert_ne!(
            a,
            pool.payload(size, i as u64 + 1000).unwrap(),
            "unique per seed"
        );
    }
    // a large payload spans several comment segments (each at most 64 KiB)
    let big = JpegPool::generate(600 << 10, 600 << 10).unwrap();
    let p = big.payload(600 << 10, 5).unwrap();
    assert_eq!(p.len(), 600 << 10);
    image::load_from_memory_with_format(&p, image::ImageFormat::Jpeg).unwrap();
    // too small for any JPEG
    assert!(JpegPool::generate(100, 100).is_err());
    assert!(pool.payload(100, 1).is_err());
}

#[test]
fn payload_images_are_photo_sized() {
    // a ~100 KiB payload should be a picture of a few hundred thousand pixels, like a
    // photo of that size, not a tiny image padded with comments
    let pool = JpegPool::generate(100 << 10, 100 << 10).unwrap();
    let p = pool.payload(100 << 10, 1).unwrap();
    let img = image::load_from_memory(&p).unwrap();
    let px = img.width() as u64 * img.height() as u64;
    assert!(
        px >= 100_000,
        "{}x{} for 100 KiB",
        img.width(),
        img.height()
    );
}

#[test]
fn video_ranges_agree_with_the_whole() {
    let whole = video_bytes(42, 0, 10_000);
    assert_eq!(whole.len(), 10_000);
    for (a, len) in [
        (0u64, 1usize),
        (1, 7),
        (7, 9),
        (8, 8),
        (4093, 1000),
        (9_999, 1),
    ] {
        assert_eq!(
            video_bytes(42, a, len),
            whole[a as usize..a as usize + len],
            "range {a}+{len}"
        );
    }
    assert_ne!(video_bytes(43, 0, 64), whole[..64]);
}
