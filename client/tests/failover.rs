//! `DirectoryClient` over a list of directories, against tiny HTTP/1.1 servers on loopback
//! that count connections and requests and answer, fail, hang or cut the connection on
//! demand: a dead first URL costs one failover and the client then sticks to the live one; a
//! directory that dies mid-way is left for the next live one; requests that could be applied
//! twice move on only when the connection was refused; an answer of a directory ends a
//! request wherever it came from.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haystack_client::directory::{check_urls, resolve_urls, DEFAULT_DIRECTORY_URL};
use haystack_client::DirectoryClient;
use haystack_proto::directory::{DamageKind, DamageReport};
use haystack_proto::StoreRegistration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// What a fake directory does with each request it reads.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Answers 200 with a plausible body for the route.
    Answer,
    /// Answers this status with a JSON error body.
    Status(u16),
    /// Never answers (holds the connection).
    Hang,
    /// Closes the connection without answering (the request arrived).
    Cut,
}

struct Fake {
    url: String,
    connects: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Fake {
    async fn start(mode: Mode) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let connects = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (c, r, t) = (connects.clone(), requests.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let h = tokio::spawn(serve(s, mode, r.clone()));
                t.lock().expect("tasks").push(h.abort_handle());
            }
        });
        tasks.lock().expect("tasks").push(accept.abort_handle());
        Fake {
            url,
            connects,
            requests,
            tasks,
        }
    }

    /// Stops listening and drops every connection: connections are refused from then on.
    async fn stop(&self) {
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
        // Let the aborted tasks drop their sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn answer(method: &str, path: &str) -> (u16, &'static str) {
    match (method, path) {
        ("GET", "/v1/stores") => (200, "[]"),
        ("POST", "/v1/stores/register") => (200, r#"{"store_id":7,"heartbeat_interval_secs":1}"#),
        ("POST", "/v1/repairs") => (200, r#"{"queued":true}"#),
        ("PUT", p) if p.starts_with("/v1/kv/") => (200, r#"{"applied":true,"version":1}"#),
        _ => (404, r#"{"error":"not_found","message":"no such route"}"#),
    }
}

async fn serve(mut s: TcpStream, mode: Mode, requests: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + len);
        requests.fetch_add(1, Ordering::SeqCst);
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("");
        let target = first.next().unwrap_or("");
        let path = target.split('?').next().unwrap_or("");
        let (status, body) = match mode {
            Mode::Answer => answer(method, path),
            Mode::Status(code) => (code, r#"{"error":"backend_unavailable","message":"test"}"#),
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Mode::Cut => return,
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A loopback URL nothing listens on (a port bound, then closed).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

fn http(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

/// A client of `urls` and its failover count.
fn client(urls: &[&str], timeout: Duration) -> (DirectoryClient, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    let c = DirectoryClient::with_urls(&urls, http(timeout))
        .expect("valid URLs")
        .on_failover("test", move || {
            count.fetch_add(1, Ordering::SeqCst);
        });
    (c, n)
}

fn registration(store_id: Option<u64>) -> StoreRegistration {
    StoreRegistration {
        store_id,
        public_url: "http://127.0.0.1:1".into(),
        zone: None,
        rack: None,
        capacity_bytes: 1,
        free_bytes: 1,
    }
}

fn damage() -> DamageReport {
    DamageReport {
        volume: 1,
        key: 2,
        alt: 0,
        cookie: None,
        store_url: "http://127.0.0.1:1".into(),
        kind: DamageKind::Missing,
    }
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_dead_first_directory_costs_one_failover_then_the_client_sticks() {
    let live = Fake::start(Mode::Answer).await;
    let dead = dead_url();
    let (c, failovers) = client(&[&dead, &live.url], T);
    for _ in 0..5 {
        c.stores().await.expect("stores through the live directory");
    }
    assert_eq!(
        failovers.load(Ordering::SeqCst),
        1,
        "one failover, then sticky"
    );
    assert_eq!(live.requests(), 5);
    assert_eq!(c.base_url(), live.url);
    // Clones share the choice.
    c.clone().stores().await.expect("clone");
    assert_eq!(failovers.load(Ordering::SeqCst), 1);

    // The same with a first directory that accepts and drops every request: it sees only the
    // first one.
    let cutter = Fake::start(Mode::Cut).await;
    let (c, failovers) = client(&[&cutter.url, &live.url], T);
    for _ in 0..5 {
        c.stores().await.expect("stores through the live directory");
    }
    assert_eq!(
        cutter.requests(),
        1,
        "the dead-ish first directory is asked once"
    );
    assert_eq!(cutter.connects(), 1);
    assert_eq!(failovers.load(Ordering::SeqCst), 1);
    assert_eq!(live.requests(), 11);
}

#[tokio::test]
async fn a_directory_dying_midway_is_left_for_the_next_live_one() {
    let a = Fake::start(Mode::Answer).await;
    let b = Fake::start(Mode::Answer).await;
    let c3 = Fake::start(Mode::Answer).await;
    let (c, failovers) = client(&[&a.url, &b.url, &c3.url], T);
    for _ in 0..3 {
        c.stores().await.expect("stores");
    }
    assert_eq!((a.requests(), b.requests()), (3, 0));
    a.stop().await;
    for _ in 0..3 {
        c.stores()
            .await
            .expect("stores after the first directory died");
    }
    assert_eq!(b.requests(), 3, "the next directory took over");
    assert_eq!(c.base_url(), b.url);
    assert_eq!(failovers.load(Ordering::SeqCst), 1);
    // Non-idempotent requests move on too when the dead one refuses connections.
    b.stop().await;
    c.register(&registration(None))
        .await
        .expect("a first registration moves on past a refused connection");
    assert_eq!(c3.requests(), 1);
    assert_eq!(c.base_url(), c3.url);
    // The list wraps around: with the third one dead too, every URL was tried once.
    c3.stop().await;
    let e = c.stores().await.expect_err("every directory is down");
    assert!(e.is_connect(), "{e}");
    assert_eq!(failovers.load(Ordering::SeqCst), 2 + 2);
}

#[tokio::test]
async fn a_request_that_may_have_arrived_moves_on_only_if_repeating_it_is_safe() {
    let live = Fake::start(Mode::Answer).await;
    // The first directory reads the request and drops the connection.
    let cutter = Fake::start(Mode::Cut).await;
    let (c, _) = client(&[&cutter.url, &live.url], T);
    c.register(&registration(None))
        .await
        .expect_err("a first registration is not sent twice");
    c.kv_put(1, "k", None, "{}".into())
        .await
        .expect_err("a conditional put is not sent twice");
    assert_eq!(live.requests(), 0);
    assert_eq!(cutter.requests(), 2);
    c.report_damage(&damage())
        .await
        .expect("a damage report is idempotent: it moves on");
    assert_eq!(live.requests(), 1);
    let (c, _) = client(&[&cutter.url, &live.url], T);
    c.register(&registration(Some(7)))
        .await
        .expect("a registration with its id is an update: it moves on");

    // The first directory never answers: a timeout.
    let hang = Fake::start(Mode::Hang).await;
    let short = Duration::from_millis(300);
    let (c, _) = client(&[&hang.url, &live.url], short);
    let e = c
        .kv_put(1, "k", None, "{}".into())
        .await
        .expect_err("a timed-out conditional put is not sent twice");
    assert!(e.is_timeout(), "{e}");
    let before = live.requests();
    c.stores().await.expect("a timed-out read moves on");
    assert_eq!(live.requests(), before + 1);

    // A 503 moves a read on, not a conditional write.
    let busy = Fake::start(Mode::Status(503)).await;
    let (c, _) = client(&[&busy.url, &live.url], T);
    let e = c
        .kv_put(1, "k", None, "{}".into())
        .await
        .expect_err("not sent twice");
    assert_eq!(e.status(), Some(503));
    c.stores().await.expect("a read moves on after a 503");

    // Any other answer of a directory ends the request there.
    let nf = Fake::start(Mode::Status(404)).await;
    let before = live.requests();
    let (c, failovers) = client(&[&nf.url, &live.url], T);
    let e = c
        .stores()
        .await
        .expect_err("the directory's 404 is the answer");
    assert_eq!(e.status(), Some(404));
    assert_eq!(live.requests(), before);
    assert_eq!(failovers.load(Ordering::SeqCst), 0);

    // A refused connection moves every request on, first registrations and kv writes too.
    let (c, _) = client(&[&dead_url(), &live.url], T);
    c.register(&registration(None)).await.expect("register");
    let r = c.kv_put(1, "k", None, "{}".into()).await.expect("kv put");
    assert!(r.applied);
}

#[tokio::test]
async fn when_every_directory_fails_an_answer_beats_a_transport_error() {
    let busy = Fake::start(Mode::Status(503)).await;
    for urls in [
        [busy.url.clone(), dead_url()],
        [dead_url(), busy.url.clone()],
    ] {
        let (c, failovers) = client(&[&urls[0], &urls[1]], T);
        let e = c.stores().await.expect_err("nobody serves");
        assert_eq!(e.status(), Some(503), "{e}");
        assert_eq!(e.code(), Some("backend_unavailable"));
        assert_eq!(failovers.load(Ordering::SeqCst), 1);
    }
}

#[test]
fn directory_url_lists_are_checked() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        check_urls(&s(&["http://a:1/", "https://b:2"])).expect("valid"),
        s(&["http://a:1", "https://b:2"])
    );
    assert!(check_urls(&[]).is_err());
    let e = check_urls(&s(&["http://a:1", "ftp://b"])).expect_err("ftp");
    assert!(e.contains("ftp://b"), "{e}");
    assert!(check_urls(&s(&["http://"])).is_err());
    let e = check_urls(&s(&["http://a:1", "http://a:1/"])).expect_err("twice");
    assert!(e.contains("twice"), "{e}");
    assert_eq!(
        resolve_urls(None, None).expect("default"),
        s(&[DEFAULT_DIRECTORY_URL])
    );
    assert_eq!(
        resolve_urls(Some("http://x:1"), None).expect("one"),
        s(&["http://x:1"])
    );
    let list = s(&["http://x:1", "http://y:2"]);
    assert_eq!(resolve_urls(None, Some(&list)).expect("list"), list);
    assert!(resolve_urls(Some("http://x:1"), Some(&list)).is_err());
    assert!(resolve_urls(None, Some(&[])).is_err());
    assert!(DirectoryClient::with_urls(&[], reqwest::Client::new()).is_err());
}
