//! An HTTP/1.1 server on hyper for the roles whose answers are mostly bodies of bytes (the S3
//! role): hyper writes a body's chunks to the socket as they are (vectored writes), where
//! actix-web copies every chunk into its write buffer first, which a profile of S3 GET 1 MiB
//! showed as the S3 role's largest cost after the kernel's own copies (docs/ARCHITECTURE.md,
//! "Dependencies"). It runs as actix-web runs: one acceptor hands each connection in turn to
//! one of `workers` threads, each with a single-threaded runtime of its own (per-thread state
//! such as needle readers lives there), and it keeps the actix servers' limits: the request
//! head timeout (which also closes idle kept-alive connections), a connection cap per worker,
//! TLS from the process's certificate, and a graceful stop (in-flight requests finish within
//! the stop deadline; idle connections close at once).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{mpsc, watch};

/// A request as a handler gets it.
pub type Request = hyper::Request<hyper::body::Incoming>;
/// A handler's answer.
pub type Response = hyper::Response<Body>;
/// The error a body stream may end with (the connection is then cut: the head went out).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: nothing, bytes in memory, or a stream of bytes of a known length.
pub struct Body(Kind);

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>>>>;

enum Kind {
    Full(Option<Bytes>),
    Stream { left: u64, stream: ByteStream },
}

impl Body {
    pub fn empty() -> Body {
        Body(Kind::Full(None))
    }

    pub fn full(b: impl Into<Bytes>) -> Body {
        let b = b.into();
        Body(Kind::Full((!b.is_empty()).then_some(b)))
    }

    /// `len` bytes from `stream` (hyper sends `Content-Length: len`). A stream that ends early
    /// or with an error cuts the connection, so a client never takes a short body for a whole
    /// one.
    pub fn sized_stream<E>(len: u64, stream: impl Stream<Item = Result<Bytes, E>> + 'static) -> Body
    where
        E: Into<BoxError> + 'static,
    {
        use futures_util::StreamExt;
        if len == 0 {
            return Body::empty();
        }
        Body(Kind::Stream {
            left: len,
            stream: Box::pin(stream.map(|r| r.map_err(Into::into))),
        })
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream { left, stream } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                match stream.as_mut().poll_next(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(b))) => {
                        if b.len() as u64 > *left {
                            *left = 0;
                            return Poll::Ready(Some(Err("a body stream gave more bytes than \
                                                         its length"
                                .into())));
                        }
                        *left -= b.len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        Poll::Ready(Some(Err("a body stream ended before its length".into())))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(b) => b.is_none(),
            Kind::Stream { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

/// How a server runs.
#[derive(Clone)]
pub struct Options {
    /// The role's name (thread names, logs).
    pub name: &'static str,
    /// Worker threads (at least one).
    pub workers: usize,
    /// How long a request's head may take, counted from when the connection waits for it (so
    /// an idle kept-alive connection closes after it too).
    pub head_timeout: Duration,
    /// How long in-flight requests may take to finish once the stop begins.
    pub shutdown_timeout: Duration,
    /// Connections a worker serves at once; more are closed on arrival.
    pub max_connections_per_worker: usize,
    /// Serve TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Options {
    /// The defaults of the actix servers: the request head timeout of every server, a 30 s
    /// stop, actix's 25,000 connections per worker.
    pub fn new(name: &'static str, workers: usize) -> Options {
        Options {
            name,
            workers,
            head_timeout: crate::REQUEST_HEAD_TIMEOUT,
            shutdown_timeout: Duration::from_secs(30),
            max_connections_per_worker: 25_000,
            tls: None,
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then stops: no new connection, idle ones
/// closed, in-flight requests given `shutdown_timeout` to finish. `make` runs once on each
/// worker thread, inside its runtime, and gives that worker's handler (which may hold the
/// thread's own state); the handler answers every request of that worker's connections.
pub async fn serve<M, H, F>(
    listener: std::net::TcpListener,
    opts: Options,
    make: M,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    M: Fn() -> H + Send + Sync + 'static,
    H: Fn(Request) -> F + 'static,
    F: Future<Output = Response> + 'static,
{
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let workers = opts.workers.max(1);
    let opts = Arc::new(opts);
    let make = Arc::new(make);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut queues = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        queues.push(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (opts, make, stop) = (opts.clone(), make.clone(), stop_rx.clone());
        let t = std::thread::Builder::new()
            .name(format!("{}-http-{i}", opts.name))
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, worker(rx, stop, opts, make));
            })?;
        threads.push(t);
    }
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        let s = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                // A connection that died before it was accepted, or no file descriptor left
                // for now: the server goes on.
                Err(e) => {
                    tracing::warn!(server = opts.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = s.set_nodelay(true);
        if let Ok(s) = s.into_std() {
            let _ = queues[next % workers].send(s);
            next = next.wrapping_add(1);
        }
    }
    drop(listener);
    tracing::info!(server = opts.name, "stopping: in-flight requests finish");
    let _ = stop_tx.send(true);
    drop(queues);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            if t.join().is_err() {
                tracing::error!("an HTTP worker thread panicked");
            }
        }
    })
    .await
    .map_err(std::io::Error::other)
}

/// One worker thread: serves the connections it is handed until the acceptor stops, then
/// waits for them (up to the stop deadline) and drops what is left.
async fn worker<M, H, F>(
    mut rx: mpsc::UnboundedReceiver<std::net::TcpStream>,
    stop: watch::Receiver<bool>,
    opts: Arc<Options>,
    make: Arc<M>,
) where
    M: Fn() -> H + Send + Sync + 'static,
    H: Fn(Request) -> F + 'static,
    F: Future<Output = Response> + 'static,
{
    let handler = Rc::new(make());
    let live = Rc::new(Cell::new(0usize));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            s = rx.recv() => match s {
                Some(s) => {
                    if live.get() >= opts.max_connections_per_worker {
                        tracing::warn!(server = opts.name, "too many connections: one closed");
                        continue;
                    }
                    live.set(live.get() + 1);
                    let (h, o, st, l) = (handler.clone(), opts.clone(), stop.clone(), live.clone());
                    conns.spawn_local(async move {
                        connection(s, h, o, st).await;
                        l.set(l.get() - 1);
                    });
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let drained = tokio::time::timeout(opts.shutdown_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            server = opts.name,
            left = conns.len(),
            "stop deadline passed: connections cut"
        );
        conns.abort_all();
    }
}

async fn connection<H, F>(
    s: std::net::TcpStream,
    handler: Rc<H>,
    opts: Arc<Options>,
    stop: watch::Receiver<bool>,
) where
    H: Fn(Request) -> F + 'static,
    F: Future<Output = Response> + 'static,
{
    let Ok(s) = tokio::net::TcpStream::from_std(s) else {
        return;
    };
    match &opts.tls {
        None => http1(TokioIo::new(s), handler, &opts, stop).await,
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
            match tokio::time::timeout(opts.head_timeout, acceptor.accept(s)).await {
                Ok(Ok(t)) => http1(TokioIo::new(t), handler, &opts, stop).await,
                Ok(Err(e)) => {
                    tracing::debug!(server = opts.name, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(server = opts.name, "TLS handshake timed out"),
            }
        }
    }
}

async fn http1<I, H, F>(io: I, handler: Rc<H>, opts: &Options, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    H: Fn(Request) -> F + 'static,
    F: Future<Output = Response> + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request| {
        let answer = (*handler)(req);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.head_timeout)
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stop.wait_for(|s| *s) => None,
    };
    let r = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(server = opts.name, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serves a handler on a loopback port with `opts`; the sender stops it.
    async fn start(
        opts: Options,
    ) -> (
        String,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            l,
            opts,
            || {
                // Per-worker state, not Send: the handler runs on its worker only.
                let served = Rc::new(Cell::new(0u64));
                move |req: Request| {
                    served.set(served.get() + 1);
                    async move {
                        let mut r = Response::new(Body::empty());
                        match req.uri().path() {
                            "/whole" => {
                                let parts =
                                    ["ab", "cde", "f"].map(|p| Ok::<_, BoxError>(Bytes::from(p)));
                                *r.body_mut() =
                                    Body::sized_stream(6, futures_util::stream::iter(parts));
                            }
                            "/short" => {
                                // Claims 10 bytes, has 3.
                                let parts = [Ok::<_, BoxError>(Bytes::from("abc"))];
                                *r.body_mut() =
                                    Body::sized_stream(10, futures_util::stream::iter(parts));
                            }
                            "/slow" => {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                *r.body_mut() = Body::full("slow");
                            }
                            _ => *r.status_mut() = hyper::StatusCode::NOT_FOUND,
                        }
                        r
                    }
                }
            },
            async move {
                let _ = rx.await;
            },
        ));
        (addr, tx, server)
    }

    /// Sends one request on a new connection and reads until the server closes it.
    fn exchange(addr: &str, request: &str) -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sized_stream_is_sent_whole_and_a_short_one_cuts_the_connection() {
        let (addr, stop, server) = start(Options::new("test", 2)).await;
        let a = addr.clone();
        let (whole, short, missing) = tokio::task::spawn_blocking(move || {
            (
                exchange(
                    &a,
                    "GET /whole HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                ),
                exchange(
                    &a,
                    "GET /short HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                ),
                exchange(
                    &a,
                    "GET /nothing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                ),
            )
        })
        .await
        .expect("client");
        let whole = whole.expect("whole");
        assert!(whole.starts_with("HTTP/1.1 200"), "{whole}");
        assert!(whole.contains("content-length: 6\r\n"), "{whole}");
        assert!(whole.ends_with("\r\n\r\nabcdef"), "{whole}");
        // The head (if it went out) promised 10 bytes; the connection ends before them (or
        // is reset), so no client takes the answer for whole.
        let short = short.unwrap_or_default();
        if let Some((head, body)) = short.split_once("\r\n\r\n") {
            assert!(head.contains("content-length: 10"), "{short}");
            assert!(body.len() < 10, "{short}");
        }
        assert!(missing.expect("404").starts_with("HTTP/1.1 404"));
        stop.send(()).expect("stop");
        server.await.expect("join").expect("served");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_lets_the_request_in_flight_finish_and_then_refuses_connections() {
        let (addr, stop, server) = start(Options::new("test", 1)).await;
        let a = addr.clone();
        let slow = tokio::task::spawn_blocking(move || {
            exchange(&a, "GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        stop.send(()).expect("stop");
        server.await.expect("join").expect("served");
        // The slow request was answered (and its kept-alive connection then closed).
        let slow = slow.await.expect("client").expect("slow");
        assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");
        assert!(slow.ends_with("slow"), "{slow}");
        assert!(std::net::TcpStream::connect(&addr).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_over_the_cap_are_closed_and_idle_ones_time_out() {
        let mut opts = Options::new("test", 1);
        opts.max_connections_per_worker = 1;
        opts.head_timeout = Duration::from_millis(300);
        let (addr, stop, server) = start(opts).await;
        let a = addr.clone();
        tokio::task::spawn_blocking(move || {
            // The first connection sends nothing: it holds the worker's one place.
            let mut first = std::net::TcpStream::connect(&a).expect("connect");
            std::thread::sleep(Duration::from_millis(100));
            // The second is closed on arrival, unanswered.
            let second = exchange(&a, "GET /whole HTTP/1.1\r\nhost: x\r\n\r\n");
            assert!(second.unwrap_or_default().is_empty());
            // The idle first one is closed after the head timeout (hyper may say 408).
            first
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut out = Vec::new();
            first.read_to_end(&mut out).expect("closed, not timed out");
            let out = String::from_utf8_lossy(&out);
            assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
            // Its place is free again.
            let third = exchange(
                &a,
                "GET /whole HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .expect("third");
            assert!(third.ends_with("abcdef"), "{third}");
        })
        .await
        .expect("client");
        stop.send(()).expect("stop");
        server.await.expect("join").expect("served");
    }
}
