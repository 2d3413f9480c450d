//! The test harness: a testkit cluster plus an uploader on a loopback port, each test with its
//! own; helpers to make test images and to read needles from every replica.

use std::io::Cursor;
use std::net::TcpListener;
use std::thread::JoinHandle;

use haystack_proto::directory::PhotoInfo;
use haystack_testkit::{Cluster, ClusterOptions};
use haystack_uploader::UploaderConfig;
use tokio::sync::watch;

/// A cluster and an uploader in front of it.
pub struct Harness {
    pub cluster: Cluster,
    pub url: String,
    pub http: reqwest::Client,
    /// A client with an admin token of the cluster, for calls to the directory and stores.
    pub admin: reqwest::Client,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// The uploader configuration the tests start from: small limits so that "too large" is cheap
/// to provoke, 1 MiB video chunks.
pub fn test_config(directory_url: String) -> UploaderConfig {
    UploaderConfig {
        directory_url: Some(directory_url),
        max_photo_bytes: 4 << 20,
        video_chunk_bytes: 1 << 20,
        max_video_bytes: 32 << 20,
        image_workers: 2,
        store_timeout_ms: 10_000,
        ..Default::default()
    }
}

impl Harness {
    /// Two stores, replication 2, and an uploader with [`test_config`].
    pub async fn start() -> Harness {
        Harness::start_with(ClusterOptions::default(), |_| {}).await
    }

    /// A cluster with `opts` and an uploader whose config `tweak` adjusts.
    pub async fn start_with(
        opts: ClusterOptions,
        tweak: impl FnOnce(&mut UploaderConfig),
    ) -> Harness {
        let cluster = Cluster::start(opts).await;
        let mut cfg = test_config(cluster.directory_url());
        cfg.security = cluster.security();
        tweak(&mut cfg);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("uploader".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("uploader runtime");
                rt.block_on(async move {
                    haystack_uploader::run(listener, cfg, haystack_testkit::stopped(rx))
                        .await
                        .expect("uploader runs");
                });
            })
            .expect("uploader thread");
        let h = Harness {
            url,
            http: reqwest::Client::new(),
            admin: cluster.admin_http(),
            cluster,
            stop,
            thread: Some(thread),
        };
        h.wait_up().await;
        h
    }

    async fn wait_up(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(format!("{}/health", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the uploader did not answer /health within 10 s");
    }

    /// POST a raw photo body.
    pub async fn post_photo(&self, body: Vec<u8>, content_type: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/photos", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /v1/photos")
    }

    /// The directory's record of a photo.
    pub async fn lookup(&self, id: &str) -> PhotoInfo {
        let r = self
            .admin
            .get(format!("{}/v1/photos/{id}", self.cluster.directory_url()))
            .send()
            .await
            .expect("directory lookup");
        assert!(
            r.status().is_success(),
            "directory lookup of {id}: {}",
            r.status()
        );
        r.json().await.expect("PhotoInfo")
    }

    /// GET of a needle from one replica: the status and the bytes.
    pub async fn read_needle(&self, replica: &str, info: &PhotoInfo, alt: u32) -> (u16, Vec<u8>) {
        let url = format!(
            "{replica}/v1/needles/{}/{}/{alt}/{}",
            info.volume_id,
            info.id,
            haystack_proto::format_cookie(info.cookie)
        );
        let r = self.http.get(url).send().await.expect("needle GET");
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("needle body").to_vec())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A photo-like RGB picture: gradients and a pattern, deterministic.
pub fn rgb_picture(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let t = ((x as f32 * 0.07).sin() * (y as f32 * 0.05).cos() * 40.0) as i32;
        image::Rgb([
            (x * 255 / w.max(1)) as u8,
            ((y * 200 / h.max(1)) as i32 + 30 + t).clamp(0, 255) as u8,
            (128 + t).clamp(0, 255) as u8,
        ])
    })
}

pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&rgb_picture(w, h))
        .expect("encode JPEG");
    out
}

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode test image");
    out.into_inner()
}

/// A PNG with a transparent half.
pub fn png_with_alpha(w: u32, h: u32) -> Vec<u8> {
    let rgb = rgb_picture(w, h);
    let rgba = image::RgbaImage::from_fn(w, h, |x, y| {
        let p = rgb.get_pixel(x, y);
        image::Rgba([p[0], p[1], p[2], if x < w / 2 { 255 } else { 0 }])
    });
    encode(
        image::DynamicImage::ImageRgba8(rgba),
        image::ImageFormat::Png,
    )
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    encode(
        image::DynamicImage::ImageRgb8(rgb_picture(w, h)),
        image::ImageFormat::Png,
    )
}

/// Lossless WebP (the image crate encodes lossless only).
pub fn webp(w: u32, h: u32) -> Vec<u8> {
    encode(
        image::DynamicImage::ImageRgb8(rgb_picture(w, h)),
        image::ImageFormat::WebP,
    )
}

pub fn gif(w: u32, h: u32) -> Vec<u8> {
    encode(
        image::DynamicImage::ImageRgba8(
            image::DynamicImage::ImageRgb8(rgb_picture(w, h)).to_rgba8(),
        ),
        image::ImageFormat::Gif,
    )
}

/// A JPEG of `w`x`h` stored pixels with an EXIF APP1 segment whose Orientation tag is
/// `orientation` (6 = rotate 90° clockwise to display), built by hand: the TIFF header and
/// one IFD entry, inserted right after SOI.
pub fn jpeg_with_orientation(w: u32, h: u32, orientation: u16) -> Vec<u8> {
    let plain = jpeg(w, h);
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\x00\x2a\x00\x00\x00\x08"); // big-endian TIFF, IFD0 at 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count 1
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding to 4 bytes
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = plain[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}
