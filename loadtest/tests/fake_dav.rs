//! A stand-in for nginx file-per-photo in tests: a minimal HTTP/1.1 server on loopback that
//! keeps PUT bodies in memory and serves them back on GET (keep-alive, Content-Length only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// Starts the server; its base URL and the files it holds.
pub async fn start() -> (String, Files) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let files: Files = Arc::default();
    let f = files.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let f = f.clone();
            tokio::spawn(async move {
                let _ = serve(sock, f).await;
            });
        }
    });
    (url, files)
}

async fn serve(sock: tokio::net::TcpStream, files: Files) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        let (status, out) = match method.as_str() {
            "PUT" => {
                files.lock().unwrap().insert(path, body);
                ("201 Created", Vec::new())
            }
            "GET" => match files.lock().unwrap().get(&path) {
                Some(b) => ("200 OK", b.clone()),
                None => ("404 Not Found", Vec::new()),
            },
            _ => ("405 Method Not Allowed", Vec::new()),
        };
        // one write per answer (a second small write would wait on the delayed ACK)
        let mut answer =
            format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n", out.len()).into_bytes();
        answer.extend_from_slice(&out);
        w.write_all(&answer).await?;
    }
}
