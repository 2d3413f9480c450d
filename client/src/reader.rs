//! [`StoreReader`]: needle reads (whole, or one byte range) from one store over a few
//! pipelined keep-alive HTTP/1.1 connections, for the cache's miss path and the S3 role's
//! object GETs (docs/ARCHITECTURE.md, "client"); [`StoreReaders`], one reader per store for
//! one runtime.
//!
//! A read is one request of one shape (`GET /v1/needles/...`, maybe with a `Range`, a body
//! with a `Content-Length`), so this reader writes the request line from the needle address,
//! parses the answer's head with `httparse` and reads the body straight into an allocation of
//! its exact size: no URL parsing, no request or header maps.
//!
//! Pipelining: each connection has one task that takes every read queued for it, writes them
//! in one `write`, then reads their answers in order (HTTP/1.1 answers come in request
//! order) and hands each to its caller. Concurrent reads of one worker thus share the
//! syscalls and wake-ups of both sides, which were most of a cache miss's cost (issue 18:
//! `send` alone was half the miss node's profile); a store answers a batch of pipelined GETs
//! for about half the CPU per request of one GET per round trip. A read goes to the
//! connection with the fewest reads queued, and a new connection (up to [`MAX_PIPES`]) is
//! opened when every one has some, so one slow answer holds up only its own connection's
//! queue. The tasks run on the runtime that made the reader, so a reader belongs to one
//! runtime (a server keeps one [`StoreReaders`] per worker thread).
//!
//! The answers mean what they mean for [`crate::StoreClient::get_needle`]: the same
//! [`NeedleBody`], the same [`ClientError::Api`] for an error status (with the JSON error
//! body), and [`ClientError::Conn`] for a connection that failed, timed out or answered
//! something that is not HTTP/1.1. A connection the store closed with reads unanswered (a stale
//! kept-alive one, or one closed after an answer that said `connection: close`) has them sent
//! again on a new connection (a GET is safe to repeat); a new connection closed before any
//! answer fails them, so the resends end. Everything
//! else a service asks a store goes through [`crate::StoreClient`] (reqwest), and so do https
//! stores: this reader speaks plain HTTP only.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use haystack_proto::{ErrorBody, NeedleAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::ConnFailure;
use crate::store::NeedleBody;
use crate::{ClientError, Credentials};

/// A reader's timeout when its maker names none ([`crate::StoreClient::readers`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections (each with its queue) kept per store and runtime, at most.
pub const MAX_PIPES: usize = 4;

/// Reads written to a connection in one batch, at most.
const MAX_DEPTH: usize = 32;

/// The largest response head accepted (the store's is a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;

/// The connection's read buffer (heads, and the start of a body), kept between reads.
const READ_BUF: usize = 8 * 1024;

/// Headers parsed in one response head, at most.
const MAX_HEADERS: usize = 24;

/// The largest body accepted; a needle is far smaller (the store's own limit).
const MAX_BODY: usize = 1 << 31;

/// A store's needle reads over pipelined keep-alive connections.
#[derive(Debug)]
pub struct StoreReader {
    target: Arc<Target>,
    pipes: Mutex<Vec<Arc<Pipe>>>,
}

/// Where a reader's connections go.
#[derive(Debug)]
struct Target {
    /// The base URL, as given (errors name it).
    base: String,
    /// `host[:port]` for the Host header.
    authority: String,
    /// The address to connect to, when the host is an IP address; else resolved per connect.
    addr: Option<SocketAddr>,
    /// How long one answer (or a connect) may take.
    timeout: Duration,
    creds: Credentials,
}

/// One connection's queue; its task owns the connection.
#[derive(Debug)]
struct Pipe {
    jobs: mpsc::UnboundedSender<Job>,
    /// Reads queued or in flight on it.
    load: AtomicUsize,
    /// Whether its task holds an open connection (`open_connections`).
    open: Arc<AtomicBool>,
}

/// One read waiting for its answer.
#[derive(Debug)]
struct Job {
    request: Vec<u8>,
    reply: oneshot::Sender<Result<Answer, (ConnFailure, String)>>,
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

/// Counts a read on its pipe until it is answered or given up.
struct Load(Arc<Pipe>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::AcqRel);
    }
}

impl StoreReader {
    /// A reader of the store at `base` (`http://host:port`, maybe with a trailing slash): a
    /// connect or an answer that takes longer than `timeout` fails its reads (a read waits at
    /// most twice that, queueing included). `None` for a URL this reader does not speak (https, or
    /// one with a path): use [`crate::StoreClient`] for those. Its connections are opened at
    /// the first reads, by tasks of the runtime those reads run on.
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
            target: Arc::new(Target {
                base: base.trim_end_matches('/').to_string(),
                authority: authority.to_string(),
                addr,
                timeout,
                creds,
            }),
            pipes: Mutex::new(Vec::new()),
        })
    }

    /// The base URL this reader reads from.
    pub fn base(&self) -> &str {
        &self.target.base
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.lock()
            .iter()
            .filter(|p| p.open.load(Ordering::Acquire))
            .count()
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Pipe>>> {
        self.pipes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection with the fewest reads queued; a new one when every one has some and
    /// there is room. Pipes whose task has ended are dropped.
    fn pick(&self) -> Load {
        let mut pipes = self.lock();
        pipes.retain(|p| !p.jobs.is_closed());
        let best = pipes
            .iter()
            .min_by_key(|p| p.load.load(Ordering::Acquire))
            .cloned();
        let pipe = match best {
            Some(p) if p.load.load(Ordering::Acquire) == 0 || pipes.len() >= MAX_PIPES => p,
            _ => {
                let p = Arc::new(Pipe::start(self.target.clone()));
                pipes.push(p.clone());
                p
            }
        };
        pipe.load.fetch_add(1, Ordering::AcqRel);
        Load(pipe)
    }

    async fn read(&self, request: Vec<u8>) -> Result<NeedleBody, ClientError> {
        let load = self.pick();
        let (reply, answer) = oneshot::channel();
        if load.0.jobs.send(Job { request, reply }).is_err() {
            return Err(self
                .target
                .fail(ConnFailure::Io, "the reader stopped".into()));
        }
        // The pipe's task bounds every connect and answer by the timeout (then drops the
        // connection and fails the reads written to it); this also bounds the wait behind
        // an earlier batch, so a read gives up after at most twice the timeout.
        let wait = self.target.timeout.saturating_mul(2);
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(Ok(a))) => a.into_result(&self.target.base),
            Ok(Ok(Err((kind, detail)))) => Err(self.target.fail(kind, detail)),
            Ok(Err(_)) => Err(self
                .target
                .fail(ConnFailure::Io, "the reader stopped".into())),
            Err(_) => Err(self
                .target
                .fail(ConnFailure::Timeout, format!("no answer within {wait:?}"))),
        }
    }

    fn request(&self, addr: &NeedleAddr, range: Option<(u64, u64)>) -> Vec<u8> {
        use std::io::Write;
        let mut r = Vec::with_capacity(192);
        // Writing to a Vec cannot fail.
        let _ = write!(
            r,
            "GET {addr} HTTP/1.1\r\nhost: {}\r\n",
            self.target.authority
        );
        if let Some((first, last)) = range {
            let _ = write!(r, "range: bytes={first}-{last}\r\n");
        }
        if let Some(h) = self.target.creds.header() {
            let _ = write!(r, "authorization: {h}\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r
    }
}

impl Target {
    fn fail(&self, kind: ConnFailure, detail: String) -> ClientError {
        ClientError::Conn {
            url: self.base.clone(),
            kind,
            detail,
        }
    }

    async fn connect(&self) -> Result<Conn, (ConnFailure, String)> {
        let connect = async {
            match self.addr {
                Some(a) => TcpStream::connect(a).await,
                None => TcpStream::connect(self.authority_with_port().as_str()).await,
            }
        };
        let stream = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err((ConnFailure::Connect, format!("connecting: {e}"))),
            Err(_) => {
                return Err((
                    ConnFailure::Timeout,
                    format!("no connection within {:?}", self.timeout),
                ))
            }
        };
        stream
            .set_nodelay(true)
            .map_err(|e| (ConnFailure::Connect, format!("setting TCP_NODELAY: {e}")))?;
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

impl Pipe {
    /// A queue and the task that serves it, on the current runtime.
    fn start(target: Arc<Target>) -> Pipe {
        let (jobs, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicBool::new(false));
        tokio::spawn(serve(target, rx, open.clone()));
        Pipe {
            jobs,
            load: AtomicUsize::new(0),
            open,
        }
    }
}

/// A connection's task: batches of queued reads written at once, their answers read in order.
/// Ends when the reader (every sender) is gone.
async fn serve(target: Arc<Target>, mut rx: mpsc::UnboundedReceiver<Job>, open: Arc<AtomicBool>) {
    let mut conn: Option<Conn> = None;
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut batch = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(j) => pending.push_back(j),
                None => return,
            }
        }
        while pending.len() < MAX_DEPTH {
            match rx.try_recv() {
                Ok(j) => pending.push_back(j),
                Err(_) => break,
            }
        }
        // Reads whose caller went away are not sent (those already sent are read off the
        // connection below, answer by answer, so that it stays in step).
        pending.retain(|j| !j.reply.is_closed());
        if pending.is_empty() {
            continue;
        }
        let fresh = conn.is_none();
        if fresh {
            match target.connect().await {
                Ok(c) => {
                    conn = Some(c);
                    open.store(true, Ordering::Release);
                }
                Err(e) => {
                    for j in pending.drain(..) {
                        let _ = j.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        batch.clear();
        for j in &pending {
            batch.extend_from_slice(&j.request);
        }
        match c.exchange_batch(&batch, &mut pending, &target).await {
            Batch::Done => {}
            Batch::Closed { answered } => {
                // The store closed the connection: the reads it did not answer go again on a
                // new one. After answers that is the normal end of a connection; before any,
                // a kept-alive one went stale. Only a new connection closed before any answer
                // fails its reads (a store that cannot answer), so every round answers a read
                // or is followed by a new connection: the resends end.
                conn = None;
                open.store(false, Ordering::Release);
                if answered == 0 && fresh {
                    for j in pending.drain(..) {
                        let _ = j.reply.send(Err((
                            ConnFailure::Io,
                            "the store closed the connection without answering".into(),
                        )));
                    }
                }
            }
            Batch::Failed(kind, detail) => {
                conn = None;
                open.store(false, Ordering::Release);
                for j in pending.drain(..) {
                    let _ = j.reply.send(Err((kind, detail.clone())));
                }
            }
        }
    }
}

/// How a batch ended.
enum Batch {
    /// Every read answered; the connection may be used again.
    Done,
    /// The connection was closed after `answered` answers (by the store, or after an answer
    /// that said `connection: close`); the rest are still in the queue.
    Closed { answered: usize },
    /// The connection failed; the reads still queued fail with this.
    Failed(ConnFailure, String),
}

/// An answer as read off the wire.
#[derive(Debug)]
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

/// Why one answer could not be read.
enum Read {
    /// The connection was closed before any byte of this answer.
    Closed,
    Failed(ConnFailure, String),
}

impl Conn {
    /// Writes `batch` (every queued read) and hands each read its answer, in order.
    async fn exchange_batch(
        &mut self,
        batch: &[u8],
        pending: &mut VecDeque<Job>,
        target: &Target,
    ) -> Batch {
        let sent = pending.len();
        if let Err(e) = self.stream.write_all(batch).await {
            return match e.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    Batch::Closed { answered: 0 }
                }
                _ => Batch::Failed(ConnFailure::Io, format!("sending: {e}")),
            };
        }
        for answered in 0..sent {
            let read = tokio::time::timeout(target.timeout, self.answer()).await;
            let (answer, keep) = match read {
                Ok(Ok(a)) => a,
                Ok(Err(Read::Closed)) => return Batch::Closed { answered },
                Ok(Err(Read::Failed(kind, detail))) => return Batch::Failed(kind, detail),
                Err(_) => {
                    return Batch::Failed(
                        ConnFailure::Timeout,
                        format!("no answer within {:?}", target.timeout),
                    )
                }
            };
            if let Some(j) = pending.pop_front() {
                let _ = j.reply.send(Ok(answer));
            }
            if !keep {
                return Batch::Closed {
                    answered: answered + 1,
                };
            }
        }
        if !self.buf.is_empty() {
            return Batch::Failed(
                ConnFailure::Protocol,
                "more bytes than the answers asked for".into(),
            );
        }
        Batch::Done
    }

    /// Reads one answer; also says whether the connection may be used again.
    async fn answer(&mut self) -> Result<(Answer, bool), Read> {
        let head = loop {
            if let Some(head) =
                parse_head(&self.buf).map_err(|d| Read::Failed(ConnFailure::Protocol, d))?
            {
                break head;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Read::Failed(
                    ConnFailure::Protocol,
                    format!("answer head longer than {MAX_HEAD} bytes"),
                ));
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(READ_BUF);
            }
            let n = match self.stream.read_buf(&mut self.buf).await {
                Ok(n) => n,
                Err(e)
                    if self.buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Err(Read::Closed)
                }
                Err(e) => return Err(Read::Failed(ConnFailure::Io, format!("reading: {e}"))),
            };
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    Read::Closed
                } else {
                    Read::Failed(
                        ConnFailure::Io,
                        "the store closed the connection mid-answer".into(),
                    )
                });
            }
        };
        // The body gets an allocation of its own, of its exact size (a cached needle holds
        // no more memory than its bytes); what the buffer holds of it is copied, and what
        // follows it (the next answers) stays in the buffer.
        let cl = head.content_length;
        let have = (self.buf.len() - head.len).min(cl);
        let mut body = BytesMut::with_capacity(cl);
        body.extend_from_slice(&self.buf[head.len..head.len + have]);
        self.buf.advance(head.len + have);
        while body.len() < cl {
            let want = (cl - body.len()) as u64;
            match (&mut self.stream).take(want).read_buf(&mut body).await {
                Ok(0) => {
                    return Err(Read::Failed(
                        ConnFailure::Io,
                        "the store closed the connection mid-body".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(Read::Failed(ConnFailure::Io, format!("reading: {e}"))),
            }
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
        Ok((answer, head.keep_alive))
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
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn only_plain_http_base_urls_make_a_reader() {
        let t = Duration::from_secs(1);
        let r = StoreReader::new("http://127.0.0.1:8080/", t, Credentials::None).unwrap();
        assert_eq!(r.target.addr, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(r.target.authority, "127.0.0.1:8080");
        assert_eq!(r.base(), "http://127.0.0.1:8080");
        let r = StoreReader::new("http://store-3:9000", t, Credentials::None).unwrap();
        assert_eq!(r.target.addr, None);
        assert_eq!(r.target.authority_with_port(), "store-3:9000");
        let r = StoreReader::new("http://[::1]:81", t, Credentials::None).unwrap();
        assert_eq!(r.target.addr, Some("[::1]:81".parse().unwrap()));
        let r = StoreReader::new("http://store", t, Credentials::None).unwrap();
        assert_eq!(r.target.authority_with_port(), "store:80");
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
                        // Read one request head (pipelined ones stay in the buffer).
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut b = [0u8; 1024];
                            match s.read(&mut b).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&b[..n]),
                            }
                        };
                        assert!(buf.starts_with(b"GET /v1/needles/1/2/0/"));
                        buf.drain(..end);
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
        assert_eq!(r.open_connections(), 1);
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

    /// A server on 127.0.0.1 that answers every request with its own path, and notes the most
    /// requests one `read` brought it.
    async fn echo_server() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (conns, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c2, m2) = (conns.clone(), most.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                c2.fetch_add(1, Ordering::SeqCst);
                let most = m2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut b = [0u8; 4096];
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                        let mut out = Vec::new();
                        let mut seen = 0;
                        while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..i + 4).collect();
                            let path = head.split(|b| *b == b' ').nth(1).unwrap().to_vec();
                            out.extend_from_slice(
                                format!(
                                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                                    path.len()
                                )
                                .as_bytes(),
                            );
                            out.extend_from_slice(&path);
                            seen += 1;
                        }
                        most.fetch_max(seen, Ordering::SeqCst);
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, conns, most)
    }

    #[tokio::test]
    async fn concurrent_reads_are_pipelined_and_each_gets_its_own_answer() {
        let (url, conns, most) = echo_server().await;
        let r = reader(&url);
        let addrs: Vec<NeedleAddr> = (0..40u64).map(|k| NeedleAddr::new(1, k, 0, 7)).collect();
        for _ in 0..3 {
            let reads = addrs.iter().map(|a| r.get_needle(a));
            let answers = futures_util::future::join_all(reads).await;
            for (a, n) in addrs.iter().zip(answers) {
                assert_eq!(n.unwrap().data, a.to_string().into_bytes());
            }
        }
        // A few connections, each written several reads at once.
        let c = conns.load(Ordering::SeqCst);
        assert!((1..=MAX_PIPES).contains(&c), "{c} connections");
        assert!(
            most.load(Ordering::SeqCst) > 1,
            "no batch reached the server"
        );
        assert_eq!(r.open_connections(), c);
    }

    #[tokio::test]
    async fn reads_a_closed_connection_left_unanswered_are_sent_again() {
        // Each connection answers one read, says `connection: close` and closes: the reads
        // pipelined behind it go again on a new connection.
        let (url, conns) = server(vec![
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
        ])
        .await;
        let r = reader(&url);
        let a = NeedleAddr::new(1, 2, 0, 3);
        let n = 3 * MAX_PIPES;
        let answers = futures_util::future::join_all((0..n).map(|_| r.get_needle(&a))).await;
        for x in answers {
            assert_eq!(&x.unwrap().data[..], b"hello");
        }
        assert_eq!(conns.load(Ordering::SeqCst), n);
        assert_eq!(r.open_connections(), 0);
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
        assert_eq!(r.open_connections(), 0);
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
        assert_eq!(r.open_connections(), 0);

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
