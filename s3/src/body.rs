//! Request bodies as S3 clients send them: plain, or `aws-chunked` (signed chunks chained from
//! the request's signature, optionally with signed trailers, or unsigned chunks with a
//! trailing checksum). [`BodyReader`] yields the decoded bytes while computing the MD5 (the
//! ETag), the SHA-256 when the request signed its payload hash, and an `x-amz-checksum-*`
//! when one was sent (header or trailer); [`BodyReader::finish`] checks them all and the
//! declared length. Nothing is committed by a caller before `finish` succeeds.

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use md5::{Digest as _, Md5};
use sha2::Sha256;

use crate::error::S3Error;
use crate::sigv4;

/// Longest chunk header or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Largest aws-chunked chunk accepted. A chunk is buffered whole (its signature covers all of
/// it), so without this a header alone would have the process wait for and hold up to
/// `max_object_bytes`; clients send 64 KiB to 1 MiB chunks.
const MAX_CHUNK: usize = 16 << 20;

/// Most trailer lines, and most bytes of them in all, accepted after the last chunk (clients
/// send one or two: a checksum and a signature).
const MAX_TRAILERS: usize = 16;
const MAX_TRAILER_BYTES: usize = 8 << 10;

/// How the body is framed.
#[derive(Clone, Debug)]
pub enum Framing {
    Plain,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD(-TRAILER)`: every chunk signed, chained from `seed`.
    Signed {
        key: Vec<u8>,
        amz_date: String,
        scope: String,
        seed: String,
        trailer: bool,
    },
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`.
    UnsignedTrailer,
}

/// A checksum algorithm of `x-amz-checksum-*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgo {
    Crc32,
    Crc32c,
    Sha1,
    Sha256,
}

impl ChecksumAlgo {
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "crc32" => Some(Self::Crc32),
            "crc32c" => Some(Self::Crc32c),
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            _ => None,
        }
    }

    pub fn header(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }
}

enum Hasher {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl Hasher {
    fn new(a: ChecksumAlgo) -> Self {
        match a {
            ChecksumAlgo::Crc32 => Self::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgo::Crc32c => Self::Crc32c(0),
            ChecksumAlgo::Sha1 => Self::Sha1(sha1::Sha1::new()),
            ChecksumAlgo::Sha256 => Self::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, d: &[u8]) {
        match self {
            Self::Crc32(h) => h.update(d),
            Self::Crc32c(c) => *c = crc32c::crc32c_append(*c, d),
            Self::Sha1(h) => h.update(d),
            Self::Sha256(h) => h.update(d),
        }
    }

    fn finish_b64(self) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match self {
            Self::Crc32(h) => b64(&h.finalize().to_be_bytes()),
            Self::Crc32c(c) => b64(&c.to_be_bytes()),
            Self::Sha1(h) => b64(&h.finalize()),
            Self::Sha256(h) => b64(&h.finalize()),
        }
    }
}

/// What the request says the body must be.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    /// The decoded length (Content-Length, or x-amz-decoded-content-length when chunked).
    pub length: Option<u64>,
    /// Content-MD5 (base64).
    pub md5_b64: Option<String>,
    /// The signed payload hash (hex), when the request signed one.
    pub sha256_hex: Option<String>,
    /// A checksum algorithm and, unless it comes in a trailer, its value (base64).
    pub checksum: Option<(ChecksumAlgo, Option<String>)>,
    /// Largest decoded body accepted.
    pub max: u64,
}

/// What a finished body was.
#[derive(Clone, Debug)]
pub struct Finished {
    pub len: u64,
    pub md5: [u8; 16],
    /// The checksum that was sent and verified: its header name and base64 value.
    pub checksum: Option<(ChecksumAlgo, String)>,
}

enum State {
    Header,
    Data { left: usize, sig: Option<String> },
    Trailers,
    Done,
}

/// Decodes and checks a body while it streams.
pub struct BodyReader<S> {
    stream: S,
    framing: Framing,
    expect: Expectations,
    buf: BytesMut,
    state: State,
    previous_sig: String,
    ended: bool,
    len: u64,
    md5: Md5,
    sha256: Option<Sha256>,
    checksum: Option<Hasher>,
    trailers: Vec<(String, String)>,
    /// Bytes of trailer lines read so far.
    trailer_bytes: usize,
}

impl<S, E> BodyReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(stream: S, framing: Framing, expect: Expectations) -> Self {
        let previous_sig = match &framing {
            Framing::Signed { seed, .. } => seed.clone(),
            _ => String::new(),
        };
        let state = match framing {
            Framing::Plain => State::Data {
                left: usize::MAX,
                sig: None,
            },
            _ => State::Header,
        };
        Self {
            stream,
            sha256: expect.sha256_hex.as_ref().map(|_| Sha256::new()),
            checksum: expect.checksum.as_ref().map(|(a, _)| Hasher::new(*a)),
            framing,
            expect,
            buf: BytesMut::new(),
            state,
            previous_sig,
            ended: false,
            len: 0,
            md5: Md5::new(),
            trailers: Vec::new(),
            trailer_bytes: 0,
        }
    }

    /// Pulls more raw bytes into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool, S3Error> {
        match self.pull().await? {
            Some(b) => {
                self.buf.extend_from_slice(&b);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next piece of the raw stream (empty pieces skipped); None at its end.
    async fn pull(&mut self) -> Result<Option<Bytes>, S3Error> {
        while !self.ended {
            let next = haystack_service::body::next_within(
                &mut self.stream,
                haystack_service::body::BODY_IDLE_TIMEOUT,
            )
            .await
            .map_err(|_| S3Error::RequestTimeout)?;
            match next {
                Some(Ok(b)) if b.is_empty() => {}
                Some(Ok(b)) => return Ok(Some(b)),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "reading a request body failed");
                    return Err(S3Error::IncompleteBody);
                }
                None => self.ended = true,
            }
        }
        Ok(None)
    }

    /// A line without its CRLF, once one is buffered.
    async fn line(&mut self) -> Result<String, S3Error> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(i);
                self.buf.advance(2);
                return String::from_utf8(line.to_vec())
                    .map_err(|_| S3Error::InvalidRequest("a chunk header is not UTF-8".into()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(S3Error::InvalidRequest("a chunk header is too long".into()));
            }
            if !self.fill().await? {
                return Err(S3Error::IncompleteBody);
            }
        }
    }

    fn take(&mut self, data: &[u8]) -> Result<(), S3Error> {
        self.len += data.len() as u64;
        if self.len > self.expect.max {
            return Err(S3Error::EntityTooLarge);
        }
        if let Some(l) = self.expect.length {
            if self.len > l {
                return Err(S3Error::InvalidRequest(
                    "the body is longer than its declared length".into(),
                ));
            }
        }
        self.md5.update(data);
        if let Some(h) = &mut self.sha256 {
            h.update(data);
        }
        if let Some(h) = &mut self.checksum {
            h.update(data);
        }
        Ok(())
    }

    fn check_chunk_sig(&mut self, sig: Option<String>, data: &[u8]) -> Result<(), S3Error> {
        if let Framing::Signed {
            key,
            amz_date,
            scope,
            ..
        } = &self.framing
        {
            let want = sigv4::chunk_signature(key, amz_date, scope, &self.previous_sig, data);
            match sig {
                Some(s) if sigv4::same(&s, &want) => self.previous_sig = want,
                _ => return Err(S3Error::SignatureDoesNotMatch),
            }
        }
        Ok(())
    }

    /// The next piece of decoded body; None at its end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, S3Error> {
        loop {
            match &mut self.state {
                State::Done => return Ok(None),
                State::Data { left, sig } if *left == usize::MAX => {
                    let _ = sig;
                    // Plain body: pass on whatever arrives, as it arrived (no copy).
                    let piece = if self.buf.is_empty() {
                        match self.pull().await? {
                            Some(b) => b,
                            None => {
                                self.state = State::Done;
                                return Ok(None);
                            }
                        }
                    } else {
                        self.buf.split().freeze()
                    };
                    self.take(&piece)?;
                    return Ok(Some(piece));
                }
                State::Data { left, .. } => {
                    let need = *left + 2;
                    while self.buf.len() < need {
                        if !self.fill().await? {
                            return Err(S3Error::IncompleteBody);
                        }
                    }
                    let State::Data { left, sig } =
                        std::mem::replace(&mut self.state, State::Header)
                    else {
                        unreachable!()
                    };
                    let data = self.buf.split_to(left).freeze();
                    if &self.buf[..2] != b"\r\n" {
                        return Err(S3Error::InvalidRequest(
                            "a chunk does not end with CRLF".into(),
                        ));
                    }
                    self.buf.advance(2);
                    self.check_chunk_sig(sig, &data)?;
                    self.take(&data)?;
                    return Ok(Some(data));
                }
                State::Header => {
                    let line = self.line().await?;
                    let (size, sig) = match line.split_once(';') {
                        Some((s, ext)) => (
                            s.to_string(),
                            ext.trim()
                                .strip_prefix("chunk-signature=")
                                .map(str::to_string),
                        ),
                        None => (line.clone(), None),
                    };
                    let size = usize::from_str_radix(size.trim(), 16)
                        .map_err(|_| S3Error::InvalidRequest(format!("bad chunk size {size:?}")))?;
                    if size as u64 > self.expect.max {
                        return Err(S3Error::EntityTooLarge);
                    }
                    if size > MAX_CHUNK {
                        return Err(S3Error::InvalidRequest(format!(
                            "a chunk of {size} bytes is larger than the {MAX_CHUNK} accepted"
                        )));
                    }
                    if size > 0 {
                        self.state = State::Data { left: size, sig };
                        continue;
                    }
                    self.check_chunk_sig(sig, &[])?;
                    let trailer = matches!(
                        self.framing,
                        Framing::UnsignedTrailer | Framing::Signed { trailer: true, .. }
                    );
                    if trailer {
                        self.state = State::Trailers;
                    } else {
                        // The final CRLF (some clients leave it out).
                        if self.buf.len() < 2 {
                            let _ = self.fill().await?;
                        }
                        if self.buf.starts_with(b"\r\n") {
                            self.buf.advance(2);
                        }
                        self.state = State::Done;
                    }
                }
                State::Trailers => {
                    let at_end = self.buf.is_empty() && !self.fill().await?;
                    let line = if at_end {
                        String::new()
                    } else {
                        self.line().await?
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                        continue;
                    }
                    self.trailer_bytes += line.len();
                    if self.trailers.len() == MAX_TRAILERS || self.trailer_bytes > MAX_TRAILER_BYTES
                    {
                        return Err(S3Error::InvalidRequest(format!(
                            "more than {MAX_TRAILERS} trailer lines or {MAX_TRAILER_BYTES} bytes of them"
                        )));
                    }
                    let (k, v) = line
                        .split_once(':')
                        .ok_or_else(|| S3Error::InvalidRequest(format!("bad trailer {line:?}")))?;
                    self.trailers
                        .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
        }
    }

    /// Checks the length, Content-MD5, payload hash, checksum and trailer signature.
    pub fn finish(mut self) -> Result<Finished, S3Error> {
        if !matches!(self.state, State::Done) {
            return Err(S3Error::IncompleteBody);
        }
        if let Some(l) = self.expect.length {
            if self.len != l {
                return Err(S3Error::IncompleteBody);
            }
        }
        let md5: [u8; 16] = self.md5.finalize().into();
        if let Some(want) = &self.expect.md5_b64 {
            let want = base64::engine::general_purpose::STANDARD
                .decode(want.trim())
                .map_err(|_| S3Error::InvalidDigest)?;
            if want.len() != 16 {
                return Err(S3Error::InvalidDigest);
            }
            if want != md5 {
                return Err(S3Error::BadDigest);
            }
        }
        if let (Some(h), Some(want)) = (self.sha256.take(), &self.expect.sha256_hex) {
            if hex::encode(h.finalize()) != want.to_ascii_lowercase() {
                return Err(S3Error::ContentSha256Mismatch);
            }
        }
        // Signed trailers: the trailer signature covers the trailing headers.
        if let Framing::Signed {
            key,
            amz_date,
            scope,
            trailer: true,
            ..
        } = &self.framing
        {
            let mut canonical = String::new();
            let mut sig = None;
            for (k, v) in &self.trailers {
                if k == "x-amz-trailer-signature" {
                    sig = Some(v.clone());
                } else {
                    canonical.push_str(&format!("{k}:{v}\n"));
                }
            }
            let want =
                sigv4::trailer_signature(key, amz_date, scope, &self.previous_sig, &canonical);
            if !sig.is_some_and(|s| sigv4::same(&s, &want)) {
                return Err(S3Error::SignatureDoesNotMatch);
            }
        }
        let checksum = match (self.checksum.take(), &self.expect.checksum) {
            (Some(h), Some((algo, given))) => {
                let got = h.finish_b64();
                let sent = given.clone().or_else(|| {
                    self.trailers
                        .iter()
                        .find(|(k, _)| k == algo.header())
                        .map(|(_, v)| v.clone())
                });
                match sent {
                    Some(s) if s == got => Some((*algo, got)),
                    Some(_) => return Err(S3Error::BadChecksum(algo.header()[15..].to_string())),
                    None => {
                        return Err(S3Error::InvalidRequest(format!(
                            "{} was announced but not sent",
                            algo.header()
                        )))
                    }
                }
            }
            _ => None,
        };
        Ok(Finished {
            len: self.len,
            md5,
            checksum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(
        parts: Vec<&'static [u8]>,
        framing: Framing,
        expect: Expectations,
    ) -> BodyReader<impl Stream<Item = Result<Bytes, String>> + Unpin> {
        let s = futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, String>(Bytes::from_static(p))),
        );
        BodyReader::new(s, framing, expect)
    }

    async fn all<S: Stream<Item = Result<Bytes, String>> + Unpin>(
        r: &mut BodyReader<S>,
    ) -> Result<Vec<u8>, S3Error> {
        let mut out = Vec::new();
        while let Some(b) = r.next().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    fn expect(len: u64) -> Expectations {
        Expectations {
            length: Some(len),
            max: 1 << 20,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn unsigned_trailer_with_crc32() {
        // crc32("hello world") = 0x0d4a1185
        let mut e = expect(11);
        e.checksum = Some((ChecksumAlgo::Crc32, None));
        let mut r = reader(
            vec![
                b"6\r\nhello \r\n5\r",
                b"\nworld\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n",
            ],
            Framing::UnsignedTrailer,
            e,
        );
        assert_eq!(all(&mut r).await.expect("body"), b"hello world");
        let f = r.finish().expect("finish");
        assert_eq!(f.len, 11);
        assert_eq!(f.checksum.expect("checksum").1, "DUoRhQ==");
    }

    #[tokio::test]
    async fn wrong_trailer_checksum_and_short_bodies_fail() {
        let mut e = expect(5);
        e.checksum = Some((ChecksumAlgo::Crc32, None));
        let mut r = reader(
            vec![b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"],
            Framing::UnsignedTrailer,
            e,
        );
        all(&mut r).await.expect("body");
        assert!(matches!(r.finish(), Err(S3Error::BadChecksum(_))));
        let mut r = reader(vec![b"a\r\nhello"], Framing::UnsignedTrailer, expect(10));
        assert!(matches!(all(&mut r).await, Err(S3Error::IncompleteBody)));
        let mut r = reader(vec![b"hello"], Framing::Plain, expect(10));
        all(&mut r).await.expect("body");
        assert!(matches!(r.finish(), Err(S3Error::IncompleteBody)));
    }

    #[tokio::test]
    async fn content_md5_is_checked() {
        let mut e = expect(5);
        e.md5_b64 = Some("XUFAKrxLKna5cZ2REBfFkg==".into()); // md5("hello")
        let mut r = reader(vec![b"hel", b"lo"], Framing::Plain, e.clone());
        all(&mut r).await.expect("body");
        r.finish().expect("md5 matches");
        let mut r = reader(vec![b"hellO"], Framing::Plain, e);
        all(&mut r).await.expect("body");
        assert!(matches!(r.finish(), Err(S3Error::BadDigest)));
    }
}
