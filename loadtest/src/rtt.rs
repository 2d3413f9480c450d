//! The floor under any added hop: one small message and its echo between two threads over a
//! loopback TCP connection, the way a cache miss adds an exchange with a store (issue 18).
//! Measured twice over the same connection: the client waiting in a blocking read (its thread
//! sleeps and is woken, as a server's worker is), and the client spinning on non-blocking
//! reads (its CPU never idles, so only the echo side is woken). Bounded by a count; plain
//! std threads, no runtime, so that nothing but the kernel and the machine is measured.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use crate::{LoadError, Result};

/// Bytes in each message (a request line and a few headers are about this size).
pub const MESSAGE: usize = 256;

/// Percentiles of one way of waiting, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtt {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
}

/// How the client waits for the echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Block,
    Spin,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> LoadError + '_ {
    move |e| LoadError::Config(format!("rtt: {what}: {e}"))
}

/// Measures `rounds` round trips for each of `waits` in turn, over one loopback connection
/// to an echo thread of this process (warm-up rounds first, not counted).
pub fn measure(rounds: usize, waits: &[Wait]) -> Result<Vec<(Wait, Rtt)>> {
    if rounds == 0 {
        return Err(LoadError::Config("rtt: at least one round".into()));
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let addr = listener.local_addr().map_err(io("address"))?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; MESSAGE];
        loop {
            match s.read_exact(&mut b) {
                Ok(()) => s.write_all(&b)?,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut c = TcpStream::connect(addr).map_err(io("connect"))?;
    c.set_nodelay(true).map_err(io("nodelay"))?;
    let mut out = Vec::new();
    for &w in waits {
        c.set_nonblocking(w == Wait::Spin).map_err(io("mode"))?;
        let warm = (rounds / 10).max(100);
        let mut lat = Vec::with_capacity(rounds);
        let mut b = [7u8; MESSAGE];
        for i in 0..warm + rounds {
            let t = Instant::now();
            write_all(&mut c, &b)?;
            read_all(&mut c, &mut b, w)?;
            if i >= warm {
                lat.push(t.elapsed().as_nanos() as u64);
            }
        }
        lat.sort_unstable();
        let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        out.push((
            w,
            Rtt {
                p50: at(0.5),
                p90: at(0.9),
                p99: at(0.99),
            },
        ));
    }
    drop(c);
    echo.join()
        .map_err(|_| LoadError::Config("rtt: the echo thread panicked".into()))?
        .map_err(io("echo"))?;
    Ok(out)
}

fn write_all(c: &mut TcpStream, b: &[u8]) -> Result<()> {
    let mut at = 0;
    while at < b.len() {
        match c.write(&b[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(io("send")(e)),
        }
    }
    Ok(())
}

fn read_all(c: &mut TcpStream, b: &mut [u8], w: Wait) -> Result<()> {
    let mut at = 0;
    while at < b.len() {
        match c.read(&mut b[at..]) {
            Ok(0) => return Err(LoadError::Config("rtt: the echo side closed".into())),
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock && w == Wait::Spin => {
                std::hint::spin_loop()
            }
            Err(e) => return Err(io("receive")(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_of_waiting_are_measured_in_the_order_asked() {
        let r = measure(200, &[Wait::Spin, Wait::Block]).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].0, r[1].0), (Wait::Spin, Wait::Block));
        for (_, x) in r {
            // A round trip through the kernel takes time: a zero is a measure that ran nothing.
            assert!(x.p50 > 0, "{x:?}");
        }
        assert!(measure(0, &[Wait::Block]).is_err());
    }
}
