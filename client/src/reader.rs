//! [`StoreReader`]: needle reads (whole, or one byte range) from one store over its own pool
//! of keep-alive HTTP/1.1 connections, for the cache's miss path and the S3 role's object
//! GETs (docs/ARCHITECTURE.md, "client"); [`StoreReaders`], one reader per store for one
//! runtime.
//!
//! A read is one request of one shape (`GET /v1/needles/...`, maybe with a `Range`, a body
//! with a `Content-Length`), so this reader writes the request line from the needle address, parses
//! the answer's head with `httparse` and reads the body straight into the buffer the needle
//! keeps: no URL parsing, no per-connection task, no request or header maps. The exchange runs
//! in the caller's task, on the caller's runtime; a pool therefore belongs to one runtime (the
//! cache keeps one per worker thread). Everything else a service asks a store goes through
//! [`crate::StoreClient`] (reqwest), and so do https stores: this reader speaks plain HTTP only.
//!
//! The answers mean what they mean for [`crate::StoreClient::get_needle`]: the same
//! [`NeedleBody`], the same [`ClientError::Api`] for an error status (with the JSON error
//! body), and [`ClientError::Conn`] for a connection that failed, timed out or answered
//! something that is not HTTP/1.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use haystack_proto::{ErrorBody, NeedleAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::ConnFailure;
use crate::store::NeedleBody;
use crate::{ClientError, Credentials};

/// Idle connections kept per store (more are closed when they come back).
pub const MAX_IDLE: usize = 64;

/// The largest response head accepted (the store's is a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;

/// The connection's read buffer (heads, and the start of a body), kept between reads.
const READ_BUF: usize = 8 * 1024;

/// Headers parsed in one response head, at most.
const MAX_HEADERS: usize = 24;

/// The largest body accepted; a needle is far smaller (the store's own limit).
const MAX_BODY: usize = 1 << 31;

/// A store's whole-needle reads over pooled keep-alive connections.
#[derive(Debug)]
pub struct StoreReader {
    /// The base URL, as given (errors name it).
    base: String,
    /// `host[:port]` for the Host header.
    authority: String,
    /// The address to connect to, when the host is an IP address; else resolved per connect.
    addr: Option<SocketAddr>,
    idle: Mutex<Vec<Conn>>,
    timeout: Duration,
    creds: Credentials,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// A parsed response head.
struct Head {
    status: u16,
    len: usize,
    content_length: usize,
    keep_alive: bool,
    content_type: Option<bytes::Bytes>,
    etag: Option<bytes::Bytes>,
}

impl StoreReader {
    /// A reader of the store at `base` (`http://host:port`, maybe with a trailing slash), each
    /// read given up after `timeout`. `None` for a URL this reader does not speak (https, or
    /// one with a path): use [`crate::StoreClient`] for those.
    pub fn new(base: &str, timeout: Duration, creds: Credentials) -> Option<StoreReader> {
        let authority = base.strip_prefix("http://")?.trim_end_matches('/');
        if authority.is_empty()
            || authority.contains(['/', '?', '#', '@', ' '])
            || authority.bytes().any(|b| !b.is_ascii_graphic())
        {
            return None;
        }
        let addr = authority.parse::<SocketAddr>().ok().or_else(|| {
            // An IP address without a port is port 80.
            authority
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 80))
        });
        Some(StoreReader {
            base: base.trim_end_matches('/').to_string(),
            authority: authority.to_string(),
            addr,
            idle: Mutex::new(Vec::new()),
            timeout,
            creds,
        })
    }

    /// The base URL this reader reads from.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Connections idle in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// Reads a needle whole (`GET /v1/needles/...`).
    pub async fn get_needle(&self, addr: &NeedleAddr) -> Result<NeedleBody, ClientError> {
        self.read(self.request(addr, None)).await
    }

    /// Reads bytes `first..=last` of a needle (fewer when it is shorter), as
    /// [`crate::StoreClient::get_needle_range`] does.
    pub async fn get_needle_range(
        &self,
        addr: &NeedleAddr,
        first: u64,
        last: u64,
    ) -> Result<NeedleBody, ClientError> {
        self.read(self.request(addr, Some((first, last)))).await
    }

    async fn read(&self, request: Vec<u8>) -> Result<NeedleBody, ClientError> {
        match tokio::time::timeout(self.timeout, self.exchange(&request)).await {
            Ok(r) => r,
            Err(_) => Err(self.fail(
                ConnFailure::Timeout,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }

    fn request(&self, addr: &NeedleAddr, range: Option<(u64, u64)>) -> Vec<u8> {
        use std::io::Write;
        let mut r = Vec::with_capacity(192);
        // Writing to a Vec cannot fail.
        let _ = write!(r, "GET {addr} HTTP/1.1\r\nhost: {}\r\n", self.authority);
        if let Some((first, last)) = range {
            let _ = write!(r, "range: bytes={first}-{last}\r\n");
        }
        if let Some(h) = self.creds.header() {
            let _ = write!(r, "authorization: {h}\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r
    }

    fn fail(&self, kind: ConnFailure, detail: String) -> ClientError {
        ClientError::Conn {
            url: self.base.clone(),
            kind,
            detail,
        }
    }

    /// One exchange on an idle connection, or on a new one. A kept-alive connection the store
    /// closed meanwhile fails before any answer byte; the read is then sent once more on a new
    /// connection (a GET is safe to repeat).
    async fn exchange(&self, request: &[u8]) -> Result<NeedleBody, ClientError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        if let Some(mut conn) = idle {
            match conn.exchange(request).await {
                Ok((body, keep)) => {
                    self.give_back(conn, keep);
                    return body.into_result(&self.base);
                }
                Err(Exchange::Stale) => {}
                Err(Exchange::Failed(kind, detail)) => return Err(self.fail(kind, detail)),
            }
        }
        let mut conn = self.connect().await?;
        match conn.exchange(request).await {
            Ok((body, keep)) => {
                self.give_back(conn, keep);
                body.into_result(&self.base)
            }
            Err(Exchange::Stale) => Err(self.fail(
                ConnFailure::Io,
                "the store closed the connection without answering".into(),
            )),
            Err(Exchange::Failed(kind, detail)) => Err(self.fail(kind, detail)),
        }
    }

    fn give_back(&self, conn: Conn, keep: bool) {
        if keep {
            if let Ok(mut v) = self.idle.lock() {
                if v.len() < MAX_IDLE {
                    v.push(conn);
                }
            }
        }
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        let stream = match self.addr {
            Some(a) => TcpStream::connect(a).await,
            None => TcpStream::connect(self.authority_with_port().as_str()).await,
        }
        .map_err(|e| self.fail(ConnFailure::Connect, format!("connecting: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| self.fail(ConnFailure::Connect, format!("setting TCP_NODELAY: {e}")))?;
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
        })
    }

    fn authority_with_port(&self) -> String {
        // `host` or `host:port`; a bracketed IPv6 literal without a port parsed above.
        match self.authority.rsplit_once(':') {
            Some((_, p)) if p.parse::<u16>().is_ok() => self.authority.clone(),
            _ => format!("{}:80", self.authority),
        }
    }
}

/// One [`StoreReader`] per store base URL, made at first use, for one runtime: a reader's
/// connections belong to the runtime that opened them, so a server keeps one set per worker
/// thread. Clones share the set.
#[derive(Clone, Debug)]
pub struct StoreReaders {
    readers: Arc<Mutex<HashMap<String, Option<Arc<StoreReader>>>>>,
    timeout: Duration,
    creds: Credentials,
}

impl StoreReaders {
    /// Readers whose reads give up after `timeout` and prove `creds` to the stores.
    pub fn new(timeout: Duration, creds: Credentials) -> Self {
        Self {
            readers: Arc::default(),
            timeout,
            creds,
        }
    }

    /// The reader of the store at `url` (`None` for a store a [`StoreReader`] cannot speak
    /// to: https; use [`crate::StoreClient`] there).
    pub fn get(&self, url: &str) -> Option<Arc<StoreReader>> {
        let mut m = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = m.get(url) {
            return r.clone();
        }
        let r = StoreReader::new(url, self.timeout, self.creds.clone()).map(Arc::new);
        m.insert(url.to_string(), r.clone());
        r
    }
}

/// An answer as read off the wire.
enum Answer {
    Ok(NeedleBody),
    Error { status: u16, body: bytes::Bytes },
}

impl Answer {
    fn into_result(self, base: &str) -> Result<NeedleBody, ClientError> {
        match self {
            Answer::Ok(b) => Ok(b),
            Answer::Error { status, body } => Err(ClientError::Api {
                url: base.to_string(),
                status,
                body: serde_json::from_slice(&body).unwrap_or_else(|_| ErrorBody {
                    error: "http".to_string(),
                    message: String::from_utf8_lossy(&body).into_owned(),
                }),
            }),
        }
    }
}

/// Why an exchange did not give an answer.
enum Exchange {
    /// The connection was closed before any byte of the answer (a stale keep-alive one).
    Stale,
    Failed(ConnFailure, String),
}

impl Conn {
    /// Sends one request and reads its answer; also says whether the connection may be used
    /// again.
    async fn exchange(&mut self, request: &[u8]) -> Result<(Answer, bool), Exchange> {
        // Bytes left from an earlier answer would be a desynchronized connection.
        if !self.buf.is_empty() {
            return Err(Exchange::Failed(
                ConnFailure::Protocol,
                "unexpected bytes on an idle connection".into(),
            ));
        }
        if let Err(e) = self.stream.write_all(request).await {
            return Err(match e.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    Exchange::Stale
                }
                _ => Exchange::Failed(ConnFailure::Io, format!("sending: {e}")),
            });
        }
        let head = loop {
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(READ_BUF);
            }
            let n = match self.stream.read_buf(&mut self.buf).await {
                Ok(n) => n,
                Err(e)
                    if self.buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Err(Exchange::Stale)
                }
                Err(e) => return Err(Exchange::Failed(ConnFailure::Io, format!("reading: {e}"))),
            };
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    Exchange::Stale
                } else {
                    Exchange::Failed(
                        ConnFailure::Io,
                        "the store closed the connection mid-answer".into(),
                    )
                });
            }
            if let Some(head) =
                parse_head(&self.buf).map_err(|d| Exchange::Failed(ConnFailure::Protocol, d))?
            {
                break head;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Exchange::Failed(
                    ConnFailure::Protocol,
                    format!("answer head longer than {MAX_HEAD} bytes"),
                ));
            }
        };
        // The body gets an allocation of its own, of its exact size (a cached needle holds
        // no more memory than its bytes); what the head's read brought of it is copied.
        let cl = head.content_length;
        let have = (self.buf.len() - head.len).min(cl);
        let mut body = BytesMut::with_capacity(cl);
        body.extend_from_slice(&self.buf[head.len..head.len + have]);
        self.buf.advance(head.len + have);
        // More than the answer: the connection cannot be trusted again.
        let keep = head.keep_alive && self.buf.is_empty();
        self.buf.clear();
        while body.len() < cl {
            match self.stream.read_buf(&mut body).await {
                Ok(0) => {
                    return Err(Exchange::Failed(
                        ConnFailure::Io,
                        "the store closed the connection mid-body".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(Exchange::Failed(ConnFailure::Io, format!("reading: {e}"))),
            }
        }
        if body.len() > cl {
            return Err(Exchange::Failed(
                ConnFailure::Protocol,
                "more bytes than the Content-Length".into(),
            ));
        }
        let body = body.freeze();
        let answer = if (200..300).contains(&head.status) {
            Answer::Ok(NeedleBody {
                content_type: head.content_type,
                etag: head.etag,
                data: body,
            })
        } else {
            Answer::Error {
                status: head.status,
                body,
            }
        };
        Ok((answer, keep))
    }
}

/// Parses a response head: `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP/1.1 answer: {e}")),
    };
    let status = r.code.unwrap_or(0);
    if !(200..600).contains(&status) {
        return Err(format!("unexpected status {status}"));
    }
    let mut keep_alive = r.version == Some(1);
    let mut content_length = None;
    let (mut content_type, mut etag) = (None, None);
    for h in r.headers.iter() {
        let v = h.value;
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .filter(|n| *n <= MAX_BODY)
                .ok_or_else(|| "bad content-length".to_string())?;
            if content_length.is_some_and(|m| m != n) {
                return Err("conflicting content-length headers".into());
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked answer (a whole-needle read has a Content-Length)".into());
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(v).to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-type") {
            content_type = Some(bytes::Bytes::copy_from_slice(v));
        } else if h.name.eq_ignore_ascii_case("etag") {
            etag = Some(bytes::Bytes::copy_from_slice(v));
        }
    }
    let content_length = match (content_length, status) {
        (Some(n), _) => n,
        (None, 204 | 304) => 0,
        (None, _) => return Err("an answer without Content-Length".into()),
    };
    Ok(Some(Head {
        status,
        len,
        content_length,
        keep_alive,
        content_type,
        etag,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_base_urls_make_a_reader() {
        let t = Duration::from_secs(1);
        let r = StoreReader::new("http://127.0.0.1:8080/", t, Credentials::None).unwrap();
        assert_eq!(r.addr, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(r.authority, "127.0.0.1:8080");
        assert_eq!(r.base(), "http://127.0.0.1:8080");
        let r = StoreReader::new("http://store-3:9000", t, Credentials::None).unwrap();
        assert_eq!(r.addr, None);
        assert_eq!(r.authority_with_port(), "store-3:9000");
        let r = StoreReader::new("http://[::1]:81", t, Credentials::None).unwrap();
        assert_eq!(r.addr, Some("[::1]:81".parse().unwrap()));
        let r = StoreReader::new("http://store", t, Credentials::None).unwrap();
        assert_eq!(r.authority_with_port(), "store:80");
        for bad in [
            "https://127.0.0.1:1",
            "http://",
            "http://h/x",
            "ftp://h",
            "http://a b",
        ] {
            assert!(
                StoreReader::new(bad, t, Credentials::None).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn heads_parse_as_the_store_sends_them() {
        let h = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: image/jpeg\r\netag: \"x\"\r\n\r\nhello";
        let head = parse_head(h).unwrap().unwrap();
        assert_eq!(
            (head.status, head.len, head.content_length, head.keep_alive),
            (200, h.len() - 5, 5, true)
        );
        assert_eq!(head.content_type.as_deref(), Some(&b"image/jpeg"[..]));
        assert_eq!(head.etag.as_deref(), Some(&b"\"x\""[..]));
        assert!(parse_head(&h[..20]).unwrap().is_none());
        let close =
            parse_head(b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(!close.keep_alive);
        let old = parse_head(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!old.keep_alive);
        for bad in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A server on 127.0.0.1 that answers each connection's requests with `answers` in
    /// turn (then closes it), and counts connections.
    async fn server(
        answers: Vec<&'static [u8]>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let conns = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for a in answers {
                        // Read one request head.
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut b = [0u8; 1024];
                            match s.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        }
                        assert!(buf.starts_with(b"GET /v1/needles/1/2/0/"));
                        buf.clear();
                        if a.is_empty() {
                            // Never answer.
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        if s.write_all(a).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, conns)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: image/jpeg\r\netag: \"e\"\r\n\r\nhello";

    fn reader(url: &str) -> StoreReader {
        StoreReader::new(url, Duration::from_secs(2), Credentials::None).unwrap()
    }

    #[tokio::test]
    async fn reads_reuse_a_kept_alive_connection() {
        let (url, conns) = server(vec![OK, OK, OK]).await;
        let r = reader(&url);
        let a = NeedleAddr::new(1, 2, 0, 3);
        for _ in 0..3 {
            let n = r.get_needle(&a).await.unwrap();
            assert_eq!(&n.data[..], b"hello");
            assert_eq!(n.content_type.as_deref(), Some(&b"image/jpeg"[..]));
            assert_eq!(n.etag.as_deref(), Some(&b"\"e\""[..]));
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(r.idle_connections(), 1);
    }

    #[tokio::test]
    async fn a_range_read_asks_for_its_bytes_and_takes_the_206() {
        let r = reader("http://127.0.0.1:1");
        let a = NeedleAddr::new(1, 2, 0, 3);
        let req = String::from_utf8(r.request(&a, Some((5, 9)))).unwrap();
        assert!(req.starts_with("GET /v1/needles/1/2/0/"), "{req}");
        assert!(req.contains("\r\nrange: bytes=5-9\r\n"), "{req}");
        assert!(!String::from_utf8(r.request(&a, None))
            .unwrap()
            .contains("range"));
        let (url, conns) = server(vec![
            b"HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 5-9/20\r\ncontent-length: 5\r\n\r\nworld",
            OK,
        ])
        .await;
        let r = reader(&url);
        assert_eq!(
            &r.get_needle_range(&a, 5, 9).await.unwrap().data[..],
            b"world"
        );
        // The connection stays usable after a 206.
        assert_eq!(&r.get_needle(&a).await.unwrap().data[..], b"hello");
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_reader_set_makes_one_reader_per_store_and_none_for_https() {
        let rs = StoreReaders::new(Duration::from_secs(1), Credentials::None);
        let a = rs.get("http://127.0.0.1:8080").unwrap();
        let b = rs.get("http://127.0.0.1:8080").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = rs.clone().get("http://127.0.0.1:8081").unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(rs.get("https://127.0.0.1:8443").is_none());
        // Clones share the set.
        assert!(Arc::ptr_eq(
            &rs.clone().get("http://127.0.0.1:8081").unwrap(),
            &c
        ));
    }

    #[tokio::test]
    async fn a_connection_the_store_closed_is_replaced_and_the_read_sent_again() {
        // Each connection answers once and is then closed by the server, without saying so.
        let (url, conns) = server(vec![OK]).await;
        let r = reader(&url);
        let a = NeedleAddr::new(1, 2, 0, 3);
        for _ in 0..3 {
            // Let the server's close reach this side first.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(&r.get_needle(&a).await.unwrap().data[..], b"hello");
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn error_answers_keep_their_status_and_json_code() {
        let (url, _) = server(vec![
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 43\r\n\r\n{\"error\":\"not_found\",\"message\":\"no needle\"}",
            b"HTTP/1.1 500 Oops\r\ncontent-length: 4\r\nconnection: close\r\n\r\noops",
        ])
        .await;
        let r = reader(&url);
        let a = NeedleAddr::new(1, 2, 0, 3);
        let e = r.get_needle(&a).await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert_eq!(e.code(), Some("not_found"));
        let e = r.get_needle(&a).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(500), Some("http")), "{e}");
        // `connection: close` was honoured.
        assert_eq!(r.idle_connections(), 0);
    }

    #[tokio::test]
    async fn silence_times_out_and_garbage_is_a_protocol_error() {
        let (url, _) = server(vec![b""]).await;
        let r = StoreReader::new(&url, Duration::from_millis(200), Credentials::None).unwrap();
        let e = r
            .get_needle(&NeedleAddr::new(1, 2, 0, 3))
            .await
            .unwrap_err();
        assert!(e.is_timeout() && e.is_retryable(), "{e}");
        assert_eq!(r.idle_connections(), 0);

        let (url, _) = server(vec![b"SSH-2.0-OpenSSH_9.2\r\n\r\n"]).await;
        let e = reader(&url)
            .get_needle(&NeedleAddr::new(1, 2, 0, 3))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Conn {
                    kind: ConnFailure::Protocol,
                    ..
                }
            ),
            "{e}"
        );

        // A body cut short by a close.
        let (url, _) = server(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhel"]).await;
        let e = reader(&url)
            .get_needle(&NeedleAddr::new(1, 2, 0, 3))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Conn {
                    kind: ConnFailure::Io,
                    ..
                }
            ),
            "{e}"
        );

        // Nothing listening.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let e = reader(&url)
            .get_needle(&NeedleAddr::new(1, 2, 0, 3))
            .await
            .unwrap_err();
        assert!(e.is_connect(), "{e}");
    }
}
