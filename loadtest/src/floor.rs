//! The ceiling of an HTTP stack on this machine (issue 18, part 3): a server that answers
//! `GET /o/{i}` with object `i` of a set held in memory, with the headers a cache hit sends
//! (Content-Type, Content-Length, ETag, Cache-Control), and nothing else to do. Run under wrk
//! beside nginx, it shows how fast each candidate stack can answer a 4 KiB or 1 MiB GET here
//! when the answer costs nothing to find: the limit a cache hit or a store read built on that
//! stack cannot pass.
//!
//! Stacks: `actix` (actix-web, what every role serves with today: one single-threaded
//! runtime per worker), `hyper` (hyper's HTTP/1.1 server, the other well-kept Rust server,
//! run the same way: an acceptor handing connections in turn to single-threaded workers), and `raw` (request heads parsed with `httparse`, pipelined
//! answers written with one vectored write: the body is never copied into a write buffer; GET
//! only: a request body would be read as the next head, which closes the connection).
//! Each serves until its deadline and then stops by itself.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{LoadError, Result};

/// The HTTP stack a floor server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stack {
    Actix,
    Hyper,
    Raw,
}

/// The objects served: `GET /o/{i}` answers `bodies[i]` with `etags[i]`.
pub struct Objects {
    bodies: Vec<Bytes>,
    etags: Vec<String>,
}

impl Objects {
    /// `count` objects of `size` bytes each, every one different (its index in its first
    /// bytes), so that a client could check what it got.
    pub fn new(count: usize, size: usize) -> Objects {
        let mut bodies = Vec::with_capacity(count);
        let mut etags = Vec::with_capacity(count);
        for i in 0..count {
            let mut b = vec![0x5au8; size];
            let tag = (i as u64).to_le_bytes();
            let n = tag.len().min(size);
            b[..n].copy_from_slice(&tag[..n]);
            bodies.push(Bytes::from(b));
            etags.push(format!("\"{i:016x}\""));
        }
        Objects { bodies, etags }
    }

    /// The object a path names, if any.
    pub fn get(&self, path: &str) -> Option<(&Bytes, &str)> {
        let i: usize = path.strip_prefix("/o/")?.parse().ok()?;
        Some((self.bodies.get(i)?, self.etags.get(i)?.as_str()))
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> LoadError {
    move |e| LoadError::Config(format!("floor: {what}: {e}"))
}

/// Serves `objects` on `listener` with `stack` and `workers` threads for `serve_for`, then
/// stops.
pub fn serve(
    stack: Stack,
    listener: std::net::TcpListener,
    objects: Objects,
    workers: usize,
    serve_for: Duration,
) -> Result<()> {
    let objects = Arc::new(objects);
    let workers = workers.max(1);
    match stack {
        Stack::Actix => serve_actix(listener, objects, workers, serve_for),
        Stack::Hyper | Stack::Raw => serve_threads(stack, listener, objects, workers, serve_for),
    }
}

/// hyper and raw the way actix-web runs: one thread accepts and hands each connection, in
/// turn, to one of `workers` threads, each with a single-threaded runtime of its own (a
/// work-stealing runtime parks and wakes its threads far more, which on this VM costs more
/// than the HTTP stack itself and would not compare the stacks).
fn serve_threads(
    stack: Stack,
    listener: std::net::TcpListener,
    objects: Arc<Objects>,
    workers: usize,
    serve_for: Duration,
) -> Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("runtime"))
    };
    let mut queues = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        queues.push(tx);
        let (rt, objects) = (runtime()?, objects.clone());
        threads.push(std::thread::spawn(move || {
            rt.block_on(async move {
                let mut conns = tokio::task::JoinSet::new();
                while let Some(s) = rx.recv().await {
                    let Ok(s) = TcpStream::from_std(s) else {
                        continue;
                    };
                    match stack {
                        Stack::Hyper => conns.spawn(hyper_conn(s, objects.clone())),
                        _ => conns.spawn(raw_conn(s, objects.clone())),
                    };
                }
                // The acceptor is done (the deadline): the connections go with the runtime.
                conns.abort_all();
            })
        }));
    }
    let accepted = runtime()?.block_on(async move {
        listener.set_nonblocking(true).map_err(io("listener"))?;
        let listener = TcpListener::from_std(listener).map_err(io("listener"))?;
        let deadline = tokio::time::sleep(serve_for);
        tokio::pin!(deadline);
        let mut next = 0usize;
        loop {
            let s = tokio::select! {
                _ = &mut deadline => return Ok(()),
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    // A connection that died before it was accepted, or no file descriptor
                    // left for now: the server goes on.
                    Err(e) => {
                        tracing::warn!(error = %e, "floor: accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = s.set_nodelay(true);
            if let Ok(s) = s.into_std() {
                let _ = queues[next % queues.len()].send(s);
                next += 1;
            }
        }
    });
    // Dropping the queues (with the acceptor's future) ends every worker.
    for t in threads {
        t.join()
            .map_err(|_| LoadError::Config("floor: a worker panicked".into()))?;
    }
    accepted
}

fn serve_actix(
    listener: std::net::TcpListener,
    objects: Arc<Objects>,
    workers: usize,
    serve_for: Duration,
) -> Result<()> {
    use actix_web::{http::header, web, App, HttpRequest, HttpResponse, HttpServer};
    async fn get(req: HttpRequest, objects: web::Data<Arc<Objects>>) -> HttpResponse {
        match objects.get(req.path()) {
            Some((body, etag)) => HttpResponse::Ok()
                .insert_header((header::CONTENT_TYPE, "image/jpeg"))
                .insert_header((header::ETAG, etag))
                .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
                .body(body.clone()),
            None => HttpResponse::NotFound().finish(),
        }
    }
    let sys = actix_web::rt::System::new();
    sys.block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(objects.clone()))
                .default_service(web::get().to(get))
        })
        .workers(workers)
        .disable_signals()
        // At the deadline, kept-alive connections (wrk's) are closed, not waited for.
        .shutdown_timeout(0)
        .listen(listener)
        .map_err(io("listen"))?
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            actix_web::rt::time::sleep(serve_for).await;
            handle.stop(false).await;
        });
        server.await.map_err(io("serve"))
    })
}

async fn hyper_conn(s: TcpStream, objects: Arc<Objects>) {
    use http_body_util::Full;
    use hyper::{header, Response, StatusCode};
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let objects = objects.clone();
        async move {
            let resp = match objects.get(req.uri().path()) {
                Some((body, etag)) => Response::builder()
                    .header(header::CONTENT_TYPE, "image/jpeg")
                    .header(header::ETAG, etag)
                    .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
                    .body(Full::new(body.clone())),
                None => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::new())),
            };
            resp
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
        .await;
}

/// The `Date` header's value, formatted at most once a second per connection (actix and
/// hyper send one too, from a cache of their own, so the answers are the same size).
struct DateCache {
    at: u64,
    value: String,
}

impl DateCache {
    fn get(&mut self) -> &str {
        let now = std::time::SystemTime::now();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.at || self.value.is_empty() {
            self.at = secs;
            self.value = httpdate::fmt_http_date(now);
        }
        &self.value
    }
}

/// One answer's head, as the raw stack writes it.
fn raw_head(out: &mut Vec<u8>, date: &str, found: Option<(&Bytes, &str)>) {
    use std::io::Write;
    let _ = match found {
        Some((body, etag)) => write!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\netag: {etag}\r\ncache-control: public, max-age=31536000, immutable\r\ndate: {date}\r\n\r\n",
            body.len()
        ),
        None => write!(
            out,
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n"
        ),
    };
}

async fn raw_conn(mut s: TcpStream, objects: Arc<Objects>) {
    let mut buf = BytesMut::with_capacity(8192);
    let mut heads: Vec<Vec<u8>> = Vec::new();
    let mut bodies: Vec<Bytes> = Vec::new();
    let mut date = DateCache {
        at: 0,
        value: String::new(),
    };
    loop {
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Every whole request head in the buffer, answered in order with one vectored write.
        heads.clear();
        bodies.clear();
        loop {
            let mut h = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut h);
            let n = match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            };
            let found = match (req.method, req.path) {
                (Some("GET"), Some(p)) => objects.get(p),
                _ => None,
            };
            let mut head = Vec::with_capacity(160);
            raw_head(&mut head, date.get(), found);
            heads.push(head);
            bodies.push(found.map(|(b, _)| b.clone()).unwrap_or_default());
            let _ = buf.split_to(n);
        }
        if heads.is_empty() {
            if buf.len() > 64 * 1024 {
                return;
            }
            continue;
        }
        if write_all_vectored(&mut s, &heads, &bodies).await.is_err() {
            return;
        }
    }
}

async fn write_all_vectored(
    s: &mut TcpStream,
    heads: &[Vec<u8>],
    bodies: &[Bytes],
) -> std::io::Result<()> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(heads.len() * 2);
    for (h, b) in heads.iter().zip(bodies) {
        parts.push(h);
        if !b.is_empty() {
            parts.push(b);
        }
    }
    let (mut i, mut off) = (0usize, 0usize);
    while i < parts.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&parts[i][off..]))
            .chain(parts[i + 1..].iter().take(63).map(|p| IoSlice::new(p)))
            .collect();
        let mut n = s.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while i < parts.len() && n > 0 {
            let left = parts[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// How long a server built by [`serve`] has been asked to run, checked by the CLI.
pub fn bounded(serve_for: Duration) -> Result<Duration> {
    if serve_for.is_zero() || serve_for > Duration::from_secs(3600) {
        return Err(LoadError::Config(
            "floor: --serve-secs must be between 1 and 3600".into(),
        ));
    }
    Ok(serve_for)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn answers(stack: Stack, request: &[u8], want: usize) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            serve(stack, l, Objects::new(3, 16), 1, Duration::from_secs(3))
        });
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(request).unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while complete_answers(&got) < want {
            let n = c.read(&mut b).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        drop(c);
        server.join().unwrap().unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Whole answers (head and Content-Length bytes of body) at the start of `got`.
    fn complete_answers(mut got: &[u8]) -> usize {
        let mut n = 0;
        loop {
            let mut h = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut h);
            let Ok(httparse::Status::Complete(head)) = r.parse(got) else {
                return n;
            };
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap_or(0);
            if got.len() < head + len {
                return n;
            }
            got = &got[head + len..];
            n += 1;
        }
    }

    #[test]
    fn every_stack_answers_an_object_with_its_bytes_and_an_unknown_path_with_404() {
        let each = [Stack::Actix, Stack::Hyper, Stack::Raw].map(|stack| {
            std::thread::spawn(move || {
                let a = answers(stack, b"GET /o/2 HTTP/1.1\r\nhost: x\r\n\r\n", 1);
                assert!(a.starts_with("HTTP/1.1 200 OK"), "{stack:?}: {a}");
                assert!(a.contains("\"0000000000000002\""), "{stack:?}: {a}");
                assert!(
                    a.ends_with("\u{2}\0\0\0\0\0\0\0ZZZZZZZZ"),
                    "{stack:?}: {a:?}"
                );
                let a = answers(stack, b"GET /o/3 HTTP/1.1\r\nhost: x\r\n\r\n", 1);
                assert!(a.starts_with("HTTP/1.1 404"), "{stack:?}: {a}");
            })
        });
        for t in each {
            t.join().unwrap();
        }
    }

    #[test]
    fn the_raw_stack_answers_pipelined_requests_in_order() {
        let a = answers(
            Stack::Raw,
            b"GET /o/1 HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\nGET /o/0 HTTP/1.1\r\n\r\n",
            3,
        );
        let heads: Vec<_> = a
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &a[i + 9..i + 12])
            .collect();
        assert_eq!(heads, ["200", "404", "200"], "{a}");
        let one = a.find("\u{1}\0\0\0").unwrap();
        let zero = a.rfind("\0\0\0\0\0\0\0\0ZZZZ").unwrap();
        assert!(
            one < a.find("404").unwrap() && a.find("404").unwrap() < zero,
            "{a:?}"
        );
    }

    #[test]
    fn the_raw_stack_waits_for_a_split_head_and_finishes_a_large_answer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            serve(
                Stack::Raw,
                l,
                Objects::new(2, 8 << 20),
                1,
                Duration::from_secs(4),
            )
        });
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(b"GET /o/1 HT").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c.write_all(b"TP/1.1\r\n\r\nGET /o/0 HTTP/1.1\r\n\r\n")
            .unwrap();
        // Read slowly at first, so that the server's socket fills and its writes come short.
        std::thread::sleep(Duration::from_millis(200));
        let mut got = Vec::new();
        let mut b = vec![0u8; 1 << 16];
        while complete_answers(&got) < 2 {
            let n = c.read(&mut b).unwrap();
            assert!(n > 0, "closed early after {} bytes", got.len());
            got.extend_from_slice(&b[..n]);
        }
        drop(c);
        server.join().unwrap().unwrap();
        let first = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&got[first..first + 8], &1u64.to_le_bytes());
        assert!(got[first + 8..first + (8 << 20)].iter().all(|&x| x == 0x5a));
        let rest = &got[first + (8 << 20)..];
        assert!(rest.starts_with(b"HTTP/1.1 200 OK"));
        let second = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(rest.len(), second + (8 << 20));
        assert_eq!(&rest[second..second + 8], &0u64.to_le_bytes());
    }
}
