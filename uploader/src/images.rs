//! Image work, pure and synchronous (callers run it on a blocking thread): format sniffing,
//! header checks before any decode, decoding with EXIF orientation applied, resizing with
//! fast_image_resize, and encoding the variants (JPEG with jpeg-encoder, or PNG where the
//! upload was lossless and PNG is smaller or keeps transparency).
//!
//! A JPEG whose longest side is at least twice the largest variant is decoded at 1/2, 1/4 or
//! 1/8 scale in the IDCT (jpeg-decoder's DCT scaling): the largest reduction that still
//! leaves every variant at least as many pixels to be resized from. Every other image is
//! decoded whole (the image crate, zune-jpeg for JPEG). The variants' sizes always come from
//! the original's size, never from the reduced decode's.

use std::io::Cursor;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::config::VariantSpec;
use crate::error::UploaderError;

/// The photo formats the uploader takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    Jpeg,
    Png,
    /// WebP with a lossy (VP8) bitstream.
    WebpLossy,
    /// WebP with a lossless (VP8L) bitstream.
    WebpLossless,
    Gif,
}

impl SourceFormat {
    /// The media type stored with the original.
    pub fn mime(self) -> &'static str {
        match self {
            SourceFormat::Jpeg => "image/jpeg",
            SourceFormat::Png => "image/png",
            SourceFormat::WebpLossy | SourceFormat::WebpLossless => "image/webp",
            SourceFormat::Gif => "image/gif",
        }
    }

    /// Whether the upload carries every pixel exactly (its variants may stay lossless).
    pub fn lossless(self) -> bool {
        matches!(
            self,
            SourceFormat::Png | SourceFormat::WebpLossless | SourceFormat::Gif
        )
    }

    fn image_format(self) -> ImageFormat {
        match self {
            SourceFormat::Jpeg => ImageFormat::Jpeg,
            SourceFormat::Png => ImageFormat::Png,
            SourceFormat::WebpLossy | SourceFormat::WebpLossless => ImageFormat::WebP,
            SourceFormat::Gif => ImageFormat::Gif,
        }
    }
}

/// Limits an upload is held to before it is decoded.
#[derive(Clone, Copy, Debug)]
pub struct ImageLimits {
    pub max_pixels: u64,
    pub max_dimension: u32,
}

/// What the header says, read without decoding the pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub format: SourceFormat,
    /// As stored, before EXIF orientation.
    pub width: u32,
    pub height: u32,
}

/// Sniffs the format from the magic bytes and reads the dimensions from the header, then
/// checks them against the limits. Cheap whatever the header claims: nothing is allocated
/// for pixels.
pub fn probe(bytes: &[u8], limits: ImageLimits) -> Result<Probe, UploaderError> {
    let format = sniff(bytes)?;
    let reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| image_error("reading the header", e))?;
    if width == 0 || height == 0 {
        return Err(UploaderError::InvalidImage(
            "the image has no pixels".into(),
        ));
    }
    if width > limits.max_dimension || height > limits.max_dimension {
        return Err(UploaderError::TooManyPixels {
            width,
            height,
            limit: format!("{} pixels on a side", limits.max_dimension),
        });
    }
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(UploaderError::TooManyPixels {
            width,
            height,
            limit: format!("{} pixels", limits.max_pixels),
        });
    }
    Ok(Probe {
        format,
        width,
        height,
    })
}

/// An upper bound of the memory decoding and resizing a photo of `pixels` pixels sent as
/// `body_bytes` takes at its peak, bytes: 16 bytes a pixel (the decoded pixels at up to 8
/// bytes each, 16-bit RGBA being the widest the decoders produce, and a second such buffer:
/// the rotated copy an EXIF orientation makes, the 8-bit copy, or an animated GIF's frame
/// beside its canvas), a copy of the body (the JPEG decoder reads it whole), and 64 MiB for
/// the variants, the encoders and the decoders' own buffers.
pub fn decode_memory(pixels: u64, body_bytes: u64) -> u64 {
    pixels
        .saturating_mul(16)
        .saturating_add(body_bytes)
        .saturating_add(64 << 20)
}

/// Display size (EXIF orientation applied) from the start of a stored original, without
/// decoding pixels. None when the bytes do not hold a readable header.
pub fn display_size(bytes: &[u8]) -> Option<(u32, u32)> {
    use image::metadata::Orientation::*;
    let format = sniff(bytes).ok()?;
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format.image_format())
        .into_decoder()
        .ok()?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder.orientation().unwrap_or(NoTransforms);
    Some(match orientation {
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
        _ => (w, h),
    })
}

/// The format from the first bytes; formats image knows but the uploader does not take are
/// `UnsupportedFormat`, bytes that are no known image are `InvalidImage`.
pub fn sniff(bytes: &[u8]) -> Result<SourceFormat, UploaderError> {
    if bytes.is_empty() {
        return Err(UploaderError::InvalidImage("the body is empty".into()));
    }
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => Ok(SourceFormat::Jpeg),
        Ok(ImageFormat::Png) => Ok(SourceFormat::Png),
        Ok(ImageFormat::Gif) => Ok(SourceFormat::Gif),
        Ok(ImageFormat::WebP) => Ok(if webp_is_lossless(bytes) {
            SourceFormat::WebpLossless
        } else {
            SourceFormat::WebpLossy
        }),
        Ok(other) => Err(UploaderError::UnsupportedFormat(format!(
            "{other:?} images are not taken (JPEG, PNG, WebP and GIF are)"
        ))),
        Err(_) => Err(UploaderError::InvalidImage(
            "the body is not a JPEG, PNG, WebP or GIF image".into(),
        )),
    }
}

/// Whether a WebP file's image bitstream is VP8L (lossless): walks the RIFF chunks after the
/// header, at most 64 of them.
fn webp_is_lossless(b: &[u8]) -> bool {
    let mut at = 12usize;
    for _ in 0..64 {
        let Some(head) = b.get(at..at + 8) else {
            return false;
        };
        match &head[..4] {
            b"VP8L" => return true,
            b"VP8 " => return false,
            _ => {}
        }
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        at = match at.checked_add(8 + len + (len & 1)) {
            Some(n) => n,
            None => return false,
        };
    }
    false
}

fn image_error(action: &str, e: image::ImageError) -> UploaderError {
    match e {
        image::ImageError::Limits(l) => UploaderError::TooManyPixels {
            width: 0,
            height: 0,
            limit: format!("decoder limit while {action}: {l}"),
        },
        image::ImageError::Unsupported(u) => {
            UploaderError::UnsupportedFormat(format!("{action}: {u}"))
        }
        other => UploaderError::InvalidImage(format!("{action}: {other}")),
    }
}

/// One encoded variant.
#[derive(Clone, Debug)]
pub struct Rendition {
    pub name: String,
    pub alt: u32,
    pub width: u32,
    pub height: u32,
    pub content_type: &'static str,
    pub data: Vec<u8>,
}

/// A decoded, checked photo and its encoded variants.
#[derive(Clone, Debug)]
pub struct Processed {
    pub format: SourceFormat,
    /// Display size: after EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// In the order of the configured specs.
    pub variants: Vec<Rendition>,
}

/// How variants are encoded.
#[derive(Clone, Copy, Debug)]
pub struct EncodeOptions {
    pub jpeg_quality: u8,
}

/// Probes, decodes (EXIF orientation applied), and makes every variant of `specs`.
pub fn process(
    bytes: &[u8],
    specs: &[VariantSpec],
    limits: ImageLimits,
    opts: EncodeOptions,
) -> Result<Processed, UploaderError> {
    let probe = probe(bytes, limits)?;
    let largest = specs
        .iter()
        .map(|s| s.longest_side)
        .max()
        .unwrap_or(u32::MAX);
    let Decoded {
        pixels,
        width,
        height,
    } = decode(bytes, &probe, largest)?;
    let mut out: Vec<Option<Rendition>> = vec![None; specs.len()];
    // Largest first, each made from the smallest already-made image that is at least as large
    // (a cascade: the thumb comes from the medium, not from 12 megapixels).
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(specs[i].longest_side));
    let mut source = pixels.clone_ref();
    // The encoding of `source` when it is a variant already made: a variant of the same size
    // (an image smaller than two specs) shares it instead of encoding the pixels again.
    let mut source_encoded: Option<(&'static str, Vec<u8>)> = None;
    let mut resizer = fr::Resizer::new();
    for i in order {
        let spec = &specs[i];
        let (w, h) = fit(width, height, spec.longest_side);
        let same = (w, h) == (source.width, source.height);
        let (content_type, data) = match (&source_encoded, same) {
            (Some(enc), true) => enc.clone(),
            (_, true) => encode(&source, probe.format.lossless(), opts)?,
            (_, false) => {
                source = resize(&mut resizer, &source, w, h)?;
                encode(&source, probe.format.lossless(), opts)?
            }
        };
        source_encoded = Some((content_type, data.clone()));
        out[i] = Some(Rendition {
            name: spec.name.clone(),
            alt: spec.alt,
            width: w,
            height: h,
            content_type,
            data,
        });
    }
    Ok(Processed {
        format: probe.format,
        width,
        height,
        variants: out.into_iter().flatten().collect(),
    })
}

/// The size of a variant whose longest side is at most `side`, keeping the aspect ratio and
/// never upscaling. The short side is rounded and never below 1.
pub fn fit(width: u32, height: u32, side: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= side {
        return (width, height);
    }
    let scale = |x: u32| ((x as u64 * side as u64 + long as u64 / 2) / long as u64).max(1) as u32;
    if width >= height {
        (side, scale(height))
    } else {
        (scale(width), side)
    }
}

/// Decoded pixels, 8-bit RGB or RGBA (RGBA only when some pixel is not opaque).
#[derive(Clone)]
struct Pixels {
    width: u32,
    height: u32,
    alpha: bool,
    data: std::sync::Arc<Vec<u8>>,
}

impl Pixels {
    fn clone_ref(&self) -> Pixels {
        self.clone()
    }

    fn pixel_type(&self) -> fr::PixelType {
        if self.alpha {
            fr::PixelType::U8x4
        } else {
            fr::PixelType::U8x3
        }
    }
}

/// A decode: the pixels, maybe at a reduced scale, and the original's display size.
struct Decoded {
    pixels: Pixels,
    /// The original's size after EXIF orientation (the pixels' size when not reduced).
    width: u32,
    height: u32,
}

/// Decodes with EXIF orientation applied. `largest` is the longest side of the largest variant
/// wanted: a JPEG at least twice that large is decoded at a reduced scale (`dct_scale`).
fn decode(bytes: &[u8], probe: &Probe, largest: u32) -> Result<Decoded, UploaderError> {
    if probe.format == SourceFormat::Jpeg && !jpeg_complete(bytes) {
        // The JPEG decoder fills a truncated scan with grey rather than failing.
        return Err(UploaderError::InvalidImage(
            "the JPEG is truncated (no end-of-image marker after its scan)".into(),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), probe.format.image_format());
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(probe.width);
    limits.max_image_height = Some(probe.height);
    // Room for the decoded pixels at up to 16 bits per RGBA channel, plus slack.
    let max_alloc = probe.width as u64 * probe.height as u64 * 8 + (64 << 20);
    limits.max_alloc = Some(max_alloc);
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_error("opening the decoder", e))?;
    // A missing or unreadable EXIF block means no rotation, not a bad image.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let swap = matches!(
        orientation,
        image::metadata::Orientation::Rotate90
            | image::metadata::Orientation::Rotate270
            | image::metadata::Orientation::Rotate90FlipH
            | image::metadata::Orientation::Rotate270FlipH
    );
    let (width, height) = if swap {
        (probe.height, probe.width)
    } else {
        (probe.width, probe.height)
    };
    let denominator = match probe.format {
        SourceFormat::Jpeg => dct_scale(probe.width, probe.height, largest),
        _ => 1,
    };
    let mut img = match denominator {
        1 => None,
        d => decode_jpeg_scaled(bytes, probe, d, max_alloc)?,
    }
    .map_or_else(
        || DynamicImage::from_decoder(decoder).map_err(|e| image_error("decoding the image", e)),
        Ok,
    )?;
    img.apply_orientation(orientation);
    Ok(Decoded {
        pixels: into_pixels(img),
        width,
        height,
    })
}

/// The largest reduction of the IDCT (1, 2, 4 or 8) after which a `width` x `height` image
/// still has at least the pixels of its largest variant (longest side `largest`) on both
/// axes, so that every variant is still resized down, never up.
pub fn dct_scale(width: u32, height: u32, largest: u32) -> u32 {
    let (w, h) = fit(width, height, largest);
    [8, 4, 2]
        .into_iter()
        .find(|&d| width.div_ceil(d) >= w && height.div_ceil(d) >= h)
        .unwrap_or(1)
}

/// A JPEG decoded at 1/`denominator` scale by jpeg-decoder. None when jpeg-decoder cannot give
/// 8-bit RGB or grey at that scale (CMYK, 16-bit lossless): the caller decodes it whole.
fn decode_jpeg_scaled(
    bytes: &[u8],
    probe: &Probe,
    denominator: u32,
    max_alloc: u64,
) -> Result<Option<DynamicImage>, UploaderError> {
    let jpeg_error = |e: jpeg_decoder::Error| match e {
        jpeg_decoder::Error::Unsupported(u) => {
            UploaderError::UnsupportedFormat(format!("decoding the image: {u:?}"))
        }
        other => UploaderError::InvalidImage(format!("decoding the image: {other}")),
    };
    let (want_w, want_h) = (
        probe.width.div_ceil(denominator),
        probe.height.div_ceil(denominator),
    );
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(usize::try_from(max_alloc).unwrap_or(usize::MAX));
    let (Ok(req_w), Ok(req_h)) = (u16::try_from(want_w), u16::try_from(want_h)) else {
        return Ok(None);
    };
    decoder.read_info().map_err(jpeg_error)?;
    let info = decoder
        .info()
        .ok_or_else(|| UploaderError::Internal("jpeg-decoder read no header".into()))?;
    if (u32::from(info.width), u32::from(info.height)) != (probe.width, probe.height) {
        return Ok(None);
    }
    let (w, h) = decoder.scale(req_w, req_h).map_err(jpeg_error)?;
    if (u32::from(w), u32::from(h)) != (want_w, want_h) {
        return Ok(None);
    }
    let (w, h) = (u32::from(w), u32::from(h));
    Ok(match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            let raw = decoder.decode().map_err(jpeg_error)?;
            image::RgbImage::from_raw(w, h, raw).map(DynamicImage::ImageRgb8)
        }
        jpeg_decoder::PixelFormat::L8 => {
            let raw = decoder.decode().map_err(jpeg_error)?;
            image::GrayImage::from_raw(w, h, raw).map(DynamicImage::ImageLuma8)
        }
        _ => None,
    })
}

/// 8-bit RGB, or RGBA when some pixel is not opaque.
fn into_pixels(img: DynamicImage) -> Pixels {
    let (width, height) = (img.width(), img.height());
    let alpha = img.color().has_alpha();
    let data = if alpha {
        let rgba = img.into_rgba8().into_raw();
        if rgba.chunks_exact(4).all(|p| p[3] == 255) {
            rgba.chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect()
        } else {
            return Pixels {
                width,
                height,
                alpha: true,
                data: std::sync::Arc::new(rgba),
            };
        }
    } else {
        img.into_rgb8().into_raw()
    };
    Pixels {
        width,
        height,
        alpha: false,
        data: std::sync::Arc::new(data),
    }
}

/// Whether a JPEG has an end-of-image marker after its first scan: walks the marker
/// segments from SOI to the first SOS, then looks for `FF D9` in the entropy-coded data
/// (where a data byte `FF` is always followed by `00` or a restart marker, so `FF D9` is the
/// real end). Bytes after the end (some cameras append data) are allowed.
fn jpeg_complete(b: &[u8]) -> bool {
    let mut at = 2usize; // past SOI
    loop {
        // Fill bytes (FF FF ...) may precede a marker.
        while b.get(at) == Some(&0xff) && b.get(at + 1) == Some(&0xff) {
            at += 1;
        }
        let (Some(&0xff), Some(&marker)) = (b.get(at), b.get(at + 1)) else {
            return false;
        };
        if marker == 0xd9 {
            return false; // an end before any scan
        }
        let Some(len) = b
            .get(at + 2..at + 4)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
        else {
            return false;
        };
        at += 2 + len;
        if marker == 0xda {
            break;
        }
    }
    b.get(at..)
        .is_some_and(|rest| rest.windows(2).any(|w| w == [0xff, 0xd9]))
}

fn resize(
    resizer: &mut fr::Resizer,
    src: &Pixels,
    width: u32,
    height: u32,
) -> Result<Pixels, UploaderError> {
    let pt = src.pixel_type();
    let src_view = fr::images::ImageRef::new(src.width, src.height, &src.data, pt)
        .map_err(|e| UploaderError::Internal(format!("resize source: {e}")))?;
    let mut dst = fr::images::Image::new(width, height, pt);
    let opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
    resizer
        .resize(&src_view, &mut dst, &opts)
        .map_err(|e| UploaderError::Internal(format!("resize: {e}")))?;
    Ok(Pixels {
        width,
        height,
        alpha: src.alpha,
        data: std::sync::Arc::new(dst.into_vec()),
    })
}

/// JPEG, or PNG when the upload was lossless and PNG is smaller or the image is transparent.
fn encode(
    img: &Pixels,
    lossless_source: bool,
    opts: EncodeOptions,
) -> Result<(&'static str, Vec<u8>), UploaderError> {
    if lossless_source {
        let png = encode_png(img)?;
        if img.alpha {
            return Ok(("image/png", png));
        }
        let jpeg = encode_jpeg(img, opts.jpeg_quality)?;
        return Ok(if png.len() < jpeg.len() {
            ("image/png", png)
        } else {
            ("image/jpeg", jpeg)
        });
    }
    Ok(("image/jpeg", encode_jpeg(img, opts.jpeg_quality)?))
}

fn encode_jpeg(img: &Pixels, quality: u8) -> Result<Vec<u8>, UploaderError> {
    let (w, h) = (
        u16::try_from(img.width).map_err(|_| jpeg_too_big(img))?,
        u16::try_from(img.height).map_err(|_| jpeg_too_big(img))?,
    );
    let flat;
    let rgb: &[u8] = if img.alpha {
        // JPEG has no alpha: composite over white.
        flat = img
            .data
            .chunks_exact(4)
            .flat_map(|p| {
                let a = p[3] as u32;
                let over = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
                [over(p[0]), over(p[1]), over(p[2])]
            })
            .collect::<Vec<u8>>();
        &flat
    } else {
        &img.data
    };
    let mut out = Vec::with_capacity(rgb.len() / 8);
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| UploaderError::Internal(format!("JPEG encoding: {e}")))?;
    Ok(out)
}

fn jpeg_too_big(img: &Pixels) -> UploaderError {
    UploaderError::Internal(format!(
        "a {}x{} variant does not fit a JPEG (65535 pixels a side)",
        img.width, img.height
    ))
}

fn encode_png(img: &Pixels) -> Result<Vec<u8>, UploaderError> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    );
    let color = if img.alpha {
        image::ExtendedColorType::Rgba8
    } else {
        image::ExtendedColorType::Rgb8
    };
    enc.write_image(&img.data, img.width, img.height, color)
        .map_err(|e| UploaderError::Internal(format!("PNG encoding: {e}")))?;
    Ok(out)
}

/// A photo-like test picture as RGB bytes: smooth gradients, some texture and a little
/// seeded noise, so that its JPEG is neither trivially compressible nor pure noise. Shared by
/// the unit tests and the variants benchmark (not used by the upload path).
#[doc(hidden)]
pub fn test_picture(w: u32, h: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    let mut seed: u32 = 0x9e37_79b9;
    for y in 0..h {
        for x in 0..w {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let n = (seed % 17) as f32 - 8.0;
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let t = ((x as f32 * 0.05).sin() * (y as f32 * 0.03).cos()) * 30.0;
            px.push((fx * 200.0 + t + n).clamp(0.0, 255.0) as u8);
            px.push((fy * 180.0 + 40.0 - t + n).clamp(0.0, 255.0) as u8);
            px.push(((fx + fy) * 100.0 + t * 0.5 + n).clamp(0.0, 255.0) as u8);
        }
    }
    px
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_never_upscales_and_keeps_aspect() {
        assert_eq!(fit(4000, 3000, 2048), (2048, 1536));
        assert_eq!(fit(3000, 4000, 320), (240, 320));
        assert_eq!(fit(100, 50, 320), (100, 50));
        assert_eq!(fit(10000, 1, 320), (320, 1));
        assert_eq!(fit(320, 320, 320), (320, 320));
    }

    #[test]
    fn sniff_tells_formats_apart() {
        assert!(matches!(sniff(b""), Err(UploaderError::InvalidImage(_))));
        assert!(matches!(
            sniff(b"hello world, not an image"),
            Err(UploaderError::InvalidImage(_))
        ));
        assert!(matches!(
            sniff(b"BM\x00\x00\x00\x00\x00\x00\x00\x00"),
            Err(UploaderError::UnsupportedFormat(_))
        ));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0").unwrap(), SourceFormat::Jpeg);
        let mut webp = b"RIFF\0\0\0\0WEBPVP8L".to_vec();
        webp.extend_from_slice(&[0; 8]);
        assert_eq!(sniff(&webp).unwrap(), SourceFormat::WebpLossless);
    }

    #[test]
    fn jpeg_completeness() {
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 80)
            .encode(&[128u8; 16 * 16 * 3], 16, 16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        assert!(jpeg_complete(&jpeg));
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"camera data");
        assert!(jpeg_complete(&trailing));
        for cut in [3, 20, jpeg.len() / 2, jpeg.len() - 1] {
            assert!(!jpeg_complete(&jpeg[..cut]), "cut at {cut}");
        }
    }

    /// The test picture as a JPEG (q90).
    fn photo_jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_raw(w, h, test_picture(w, h)).unwrap();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .unwrap();
        jpeg
    }

    /// The variants' pixels (before encoding) as `process` makes them: largest first, each
    /// resized from the one before, sizes from the original's.
    fn variant_pixels(d: &Decoded, sides: &[u32]) -> Vec<Pixels> {
        let mut resizer = fr::Resizer::new();
        let mut source = d.pixels.clone_ref();
        let mut out = Vec::new();
        for &side in sides {
            let (w, h) = fit(d.width, d.height, side);
            if (w, h) != (source.width, source.height) {
                source = resize(&mut resizer, &source, w, h).unwrap();
            }
            out.push(source.clone_ref());
        }
        out
    }

    fn psnr(a: &Pixels, b: &Pixels) -> (f64, u8) {
        assert_eq!((a.width, a.height, a.alpha), (b.width, b.height, b.alpha));
        let (mut sq, mut max) = (0f64, 0u8);
        for (x, y) in a.data.iter().zip(b.data.iter()) {
            let e = x.abs_diff(*y);
            sq += f64::from(e) * f64::from(e);
            max = max.max(e);
        }
        let mse = sq / a.data.len() as f64;
        (10.0 * (255.0 * 255.0 / mse.max(1e-12)).log10(), max)
    }

    /// `jpeg` with an EXIF block (APP1 right after SOI) holding only `orientation`.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"II*\0".to_vec();
        tiff.extend_from_slice(&8u32.to_le_bytes()); // the first IFD follows the header
        tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes()); // one value
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xff, 0xe1]);
        out.extend_from_slice(&(app1.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// EXIF orientation is applied the same way whether the JPEG is decoded whole or at a
    /// reduced scale: same display size, and variants within the same PSNR bound.
    #[test]
    fn dct_scaled_decode_keeps_exif_orientation() {
        let limits = ImageLimits {
            max_pixels: 100_000_000,
            max_dimension: 30_000,
        };
        let (w, h) = (2048, 1536);
        let plain = photo_jpeg(w, h);
        for (orientation, display) in [(1, (w, h)), (3, (w, h)), (6, (h, w)), (8, (h, w))] {
            let jpeg = with_orientation(&plain, orientation);
            assert_eq!(
                display_size(&jpeg),
                Some(display),
                "orientation {orientation}"
            );
            let probe = probe(&jpeg, limits).unwrap();
            assert_eq!(dct_scale(w, h, 256), 8);
            let scaled = decode(&jpeg, &probe, 256).unwrap();
            let full = decode(&jpeg, &probe, u32::MAX).unwrap();
            assert_eq!((scaled.width, scaled.height), display);
            assert_eq!((full.width, full.height), display);
            assert_eq!(
                (scaled.pixels.width, scaled.pixels.height),
                (display.0 / 8, display.1 / 8),
                "orientation {orientation}: the reduced pixels are turned too"
            );
            let sides = [256, 64];
            for (side, (a, b)) in sides.iter().zip(
                variant_pixels(&scaled, &sides)
                    .iter()
                    .zip(&variant_pixels(&full, &sides)),
            ) {
                let (db, max) = psnr(a, b);
                println!(
                    "orientation {orientation}, variant {side}: PSNR {db:.1} dB, max error {max}"
                );
                assert!(db >= 40.0, "orientation {orientation} {side}: {db:.1} dB");
            }
        }
    }

    /// The reduced-scale decode gives variants within 40 dB PSNR of a full decode resized
    /// the same way (the bound the uploader holds the DCT scaling to).
    #[test]
    fn dct_scaled_variants_match_full_decode() {
        assert_eq!(dct_scale(4032, 3024, 2048), 1, "2016 < 2048: whole");
        assert_eq!(dct_scale(4096, 3072, 2048), 2);
        assert_eq!(dct_scale(3024, 4032, 320), 8);
        assert_eq!(dct_scale(6000, 4000, 1024), 4);
        assert_eq!(
            dct_scale(1000, 10, 320),
            2,
            "the short side may not drop below the fit"
        );
        assert_eq!(dct_scale(100, 50, 320), 1);
        let limits = ImageLimits {
            max_pixels: 100_000_000,
            max_dimension: 30_000,
        };
        for (w, h, sides, denominator) in [
            (4096, 3072, &[2048, 1024, 320][..], 2),
            (4032, 3024, &[320][..], 8),
            (4032, 3024, &[2048, 1024, 320][..], 1),
        ] {
            let jpeg = photo_jpeg(w, h);
            let probe = probe(&jpeg, limits).unwrap();
            let largest = sides[0];
            assert_eq!(dct_scale(w, h, largest), denominator);
            let scaled = decode(&jpeg, &probe, largest).unwrap();
            let full = decode(&jpeg, &probe, u32::MAX).unwrap();
            assert_eq!((scaled.width, scaled.height), (w, h));
            assert_eq!(
                (scaled.pixels.width, scaled.pixels.height),
                (w.div_ceil(denominator), h.div_ceil(denominator))
            );
            for (side, (a, b)) in sides.iter().zip(
                variant_pixels(&scaled, sides)
                    .iter()
                    .zip(&variant_pixels(&full, sides)),
            ) {
                let (db, max) = psnr(a, b);
                println!(
                    "{w}x{h} at 1/{denominator}, variant {side}: PSNR {db:.1} dB, max error {max}"
                );
                assert!(db >= 40.0, "{w}x{h} 1/{denominator} {side}: {db:.1} dB");
            }
        }
    }
}
