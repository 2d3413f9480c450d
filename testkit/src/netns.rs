//! A multi-host test network made of Linux network namespaces: every "host" is a namespace
//! with its own address on one bridge, and the roles run on it as real `haystack` processes
//! (`ip netns exec HOST haystack ...`), so a test can cut a host off the network, kill -9 its
//! processes, restart them and fill its disk, and see what the rest of the cluster does.
//!
//! The layout, all of it made by [`Net::create`] and removed by its `Drop` (processes killed
//! first, tmpfs disks unmounted, then the namespaces deleted, which deletes their veths):
//!
//! ```text
//!   root namespace (the test process)        "switch" namespace            host namespaces
//!   {id}r 10.77.S.1/24  ───veth───  {id}s ─┐
//!                                          ├─ bridge {id}br
//!   {id}-h0  {id}h0 10.77.S.10/24 ─veth─ {id}p0 ┤
//!   {id}-h1  {id}h1 10.77.S.11/24 ─veth─ {id}p1 ┘   ...
//! ```
//!
//! The bridge lives in a namespace of its own, so the root namespace gains nothing but one
//! veth end with an address in the private range 10.77.S.0/24: the test process talks to the
//! services through it with its ordinary HTTP clients. `S` is picked per network so that tests
//! running at once (threads of one test binary, or other processes) never share a subnet, and
//! every name carries a per-network id (`h{pid}x{n}` in hex; interface names stay
//! within Linux's 15 characters). Traffic never leaves the namespaces the test made.
//!
//! A host is cut off by taking its switch-side veth down (both directions, established TCP
//! connections hang as on a real partition: no reset is sent) and healed by bringing it up.
//! A small disk is a tmpfs of a given size mounted on a directory of the test.
//!
//! Namespaces need root (CI runs the tests as root) and iproute2: [`Net::create`] returns why
//! it cannot make them, and [`Net::create_or_skip`] says SKIPPED loudly on stderr so that a
//! machine without them never passes such a test silently.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Networks made by this process so far (part of every name).
static NETS: AtomicU32 = AtomicU32::new(0);
/// Held while a network picks its subnet and makes its root-side veth.
static SUBNETS: Mutex<()> = Mutex::new(());

/// A host of the network: a namespace, its address, the switch-side end of its veth.
#[derive(Debug)]
struct Host {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    port: String,
}

/// A process started on a host: what it is, how to start it again, and the running child.
struct Proc {
    host: usize,
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// A test network of namespaces; see the module documentation. Everything it made is removed
/// when it is dropped, also when the test panics (the processes' logs are then printed).
pub struct Net {
    id: String,
    subnet: u8,
    switch_ns: String,
    root_veth: String,
    hosts: Vec<Host>,
    procs: Mutex<Vec<Proc>>,
    mounts: Mutex<Vec<PathBuf>>,
    dir: tempfile::TempDir,
}

/// A process started with [`Net::spawn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId(usize);

/// A host added with [`Net::add_host`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostId(usize);

/// Runs `ip ARGS...`; the error says which command failed and why.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip -n NS ARGS...`.
fn ip_in(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

/// The third octet of a 10.77.S.0/24 subnet that no interface of the root namespace uses.
fn free_subnet(start: u32) -> Result<u8, String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map_err(|e| format!("cannot run `ip -4 -o addr show`: {e}"))?;
    let used = String::from_utf8_lossy(&out.stdout).to_string();
    (0..250u32)
        .map(|i| ((start + i) % 250 + 1) as u8)
        .find(|s| !used.contains(&format!("10.77.{s}.")))
        .ok_or_else(|| "every 10.77.S.0/24 subnet is in use".to_string())
}

/// Deletes the namespaces (and root veths) of networks whose test process is gone: a test
/// killed from outside (a timeout's SIGKILL) never ran its `Drop`.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        // Ours: h{pid hex}x{n hex}-{host}.
        let Some(rest) = name.strip_prefix('h') else {
            continue;
        };
        let Some((id, _host)) = rest.split_once('-') else {
            continue;
        };
        let Some((pid, n)) = id.split_once('x') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (u32::from_str_radix(pid, 16), u32::from_str_radix(n, 16)) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = ip(&["link", "del", &format!("h{id}r")]);
        if ip(&["netns", "del", name]).is_ok() {
            eprintln!("netns: removed {name}, left behind by dead process {pid}");
        }
    }
}

/// Free bytes of the file system holding `dir` (`df`, no libc needed).
pub fn free_bytes(dir: &Path) -> Result<u64, String> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run df: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "df {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

impl Net {
    /// Makes the switch namespace with its bridge and the root namespace's veth onto it.
    /// `Err` says why namespaces cannot be made here (not root, no `ip`, no kernel support).
    pub fn create() -> Result<Net, String> {
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        remove_stale();
        // The whole pid (at most 0x400000 on Linux), so that a later run can tell whether the
        // process that made a network is still alive.
        let id = format!("h{:x}x{:x}", std::process::id(), n & 0xf);
        let dir = tempfile::Builder::new()
            .prefix("haystack-netns-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let switch_ns = format!("{id}-sw");
        ip(&["netns", "add", &switch_ns])?;
        let mut net = Net {
            id: id.clone(),
            subnet: 0,
            switch_ns: switch_ns.clone(),
            root_veth: format!("{id}r"),
            hosts: Vec::new(),
            procs: Mutex::new(Vec::new()),
            mounts: Mutex::new(Vec::new()),
            dir,
        };
        let br = format!("{id}br");
        let sw_end = format!("{id}s");
        ip_in(&switch_ns, &["link", "set", "lo", "up"])?;
        ip_in(&switch_ns, &["link", "add", &br, "type", "bridge"])?;
        ip_in(&switch_ns, &["link", "set", &br, "up"])?;
        {
            let _held = SUBNETS.lock().unwrap_or_else(|p| p.into_inner());
            net.subnet = free_subnet(std::process::id().wrapping_add(n * 7))?;
            ip(&[
                "link",
                "add",
                &net.root_veth,
                "type",
                "veth",
                "peer",
                "name",
                &sw_end,
                "netns",
                &switch_ns,
            ])?;
            let addr = format!("10.77.{}.1/24", net.subnet);
            ip(&["addr", "add", &addr, "dev", &net.root_veth])?;
        }
        ip(&["link", "set", &net.root_veth, "up"])?;
        ip_in(&switch_ns, &["link", "set", &sw_end, "master", &br])?;
        ip_in(&switch_ns, &["link", "set", &sw_end, "up"])?;
        Ok(net)
    }

    /// [`Net::create`], or `None` after printing a loud SKIPPED line naming `test` and why.
    pub fn create_or_skip(test: &str) -> Option<Net> {
        match Net::create() {
            Ok(n) => Some(n),
            Err(why) => {
                eprintln!(
                    "SKIPPED: {test}: cannot make network namespaces ({why}) \
                     (needs root and network namespaces)"
                );
                None
            }
        }
    }

    /// The id every name of this network starts with (namespaces `{id}-...`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A scratch directory of this network (logs, data directories), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The address the test process has on the network.
    pub fn test_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// Adds a host: a namespace `{id}-{name}` with loopback up and one veth onto the bridge,
    /// address 10.77.S.(10 + its index).
    pub fn add_host(&mut self, name: &str) -> Result<HostId, String> {
        let i = self.hosts.len();
        assert!(i < 200, "too many hosts");
        let ns = format!("{}-{name}", self.id);
        let inner = format!("{}h{i}", self.id);
        let port = format!("{}p{i}", self.id);
        let ip_addr = Ipv4Addr::new(10, 77, self.subnet, 10 + i as u8);
        ip(&["netns", "add", &ns])?;
        self.hosts.push(Host {
            name: name.to_string(),
            ns: ns.clone(),
            ip: ip_addr,
            port: port.clone(),
        });
        ip_in(&ns, &["link", "set", "lo", "up"])?;
        ip_in(
            &self.switch_ns,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ],
        )?;
        ip_in(
            &self.switch_ns,
            &["link", "set", &port, "master", &format!("{}br", self.id)],
        )?;
        ip_in(&self.switch_ns, &["link", "set", &port, "up"])?;
        ip_in(
            &ns,
            &["addr", "add", &format!("{ip_addr}/24"), "dev", &inner],
        )?;
        ip_in(&ns, &["link", "set", &inner, "up"])?;
        Ok(HostId(i))
    }

    /// The host's address.
    pub fn ip(&self, h: HostId) -> Ipv4Addr {
        self.hosts[h.0].ip
    }

    /// Starts `program ARGS...` on host `h` (inside its namespace), its stdout and stderr
    /// appended to `{dir}/{name}.log`.
    pub fn spawn(&self, h: HostId, name: &str, program: &Path, args: &[String]) -> ProcId {
        let log = self.dir().join(format!("{name}.log"));
        let mut p = Proc {
            host: h.0,
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            log,
            child: None,
        };
        p.child = Some(self.start(&p));
        let mut procs = self.procs();
        procs.push(p);
        ProcId(procs.len() - 1)
    }

    fn start(&self, p: &Proc) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .expect("a log file in the network's directory");
        // `ip netns exec` enters the namespace and execs the program: the child's pid is the
        // program's own. It gets SIGKILL when the test process dies (the death signal survives
        // exec), so a test killed from outside leaves no server behind.
        let mut cmd = Command::new("ip");
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.args(["netns", "exec", &self.hosts[p.host].ns])
            .arg(&p.program)
            .args(&p.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle of the log"))
            .stderr(log)
            .spawn()
            .expect("ip netns exec starts")
    }

    /// The process id of a running process (what its /health reports).
    pub fn pid(&self, p: ProcId) -> Option<u32> {
        self.procs()[p.0].child.as_ref().map(|c| c.id())
    }

    /// Panics, naming the process and its exit status, when a process that was started (and
    /// not killed by the test) has exited: a role that refused to start fails the test at
    /// once, not at a timeout.
    pub fn assert_running(&self) {
        let mut procs = self.procs();
        for p in procs.iter_mut() {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    p.child = None;
                    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    panic!("{} exited ({status}): {tail:?}", p.name);
                }
            }
        }
    }

    /// The process's log file.
    pub fn log(&self, p: ProcId) -> PathBuf {
        self.procs()[p.0].log.clone()
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// SIGKILL to the process (kill -9), and waits for it to be gone.
    pub fn kill9(&self, p: ProcId) {
        let child = self.procs()[p.0].child.take();
        if let Some(mut c) = child {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// SIGKILL to every process on host `h`.
    pub fn kill_host(&self, h: HostId) {
        let n = self.procs().len();
        for i in 0..n {
            if self.procs()[i].host == h.0 {
                self.kill9(ProcId(i));
            }
        }
    }

    /// Starts the process again with the same arguments (killing it first if it runs).
    pub fn restart(&self, p: ProcId) {
        self.kill9(p);
        let mut procs = self.procs();
        let child = self.start(&procs[p.0]);
        procs[p.0].child = Some(child);
    }

    /// Cuts host `h` off the network: its port on the bridge goes down.
    pub fn cut(&self, h: HostId) {
        ip_in(
            &self.switch_ns,
            &["link", "set", &self.hosts[h.0].port, "down"],
        )
        .expect("link down");
    }

    /// Heals a cut: the host's port on the bridge comes back up.
    pub fn heal(&self, h: HostId) {
        ip_in(
            &self.switch_ns,
            &["link", "set", &self.hosts[h.0].port, "up"],
        )
        .expect("link up");
    }

    /// A small disk for host `h`: a tmpfs of `bytes` mounted on a fresh directory of the
    /// network (unmounted on drop); returns the directory.
    pub fn small_disk(&self, h: HostId, bytes: u64) -> Result<PathBuf, String> {
        let mut mounts = self.mounts.lock().unwrap_or_else(|p| p.into_inner());
        let d = self
            .dir()
            .join(format!("disk-{}-{}", self.hosts[h.0].name, mounts.len()));
        std::fs::create_dir_all(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&d)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount tmpfs on {}: {}",
                d.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        mounts.push(d.clone());
        Ok(d)
    }

    /// Fills the file system holding `dir` until at most `leave` bytes are free, with a
    /// ballast file `dir/ballast` (what a disk filling up with other data looks like).
    pub fn fill_disk(&self, dir: &Path, leave: u64) -> Result<(), String> {
        use std::io::Write;
        let path = dir.join("ballast");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        let chunk = vec![0xa5u8; 64 << 10];
        loop {
            let free = free_bytes(dir)?;
            if free <= leave {
                break;
            }
            let mut todo = (free - leave) as usize;
            while todo > 0 {
                let n = todo.min(chunk.len());
                match f.write_all(&chunk[..n]) {
                    Ok(()) => todo -= n,
                    // ENOSPC: full already.
                    Err(e) if e.raw_os_error() == Some(28) => return Ok(()),
                    Err(e) => return Err(format!("write {}: {e}", path.display())),
                }
            }
            f.sync_all()
                .map_err(|e| format!("sync {}: {e}", path.display()))?;
        }
        f.sync_all()
            .map_err(|e| format!("sync {}: {e}", path.display()))
    }

    /// Waits (up to `timeout`) until `f` answers `Some`, polling every 100 ms; panics with
    /// `what` on timeout.
    pub async fn until<T>(
        what: &str,
        timeout: Duration,
        mut f: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "gave up after {timeout:?} waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints the last lines of every process's log (a failing test's evidence).
    fn dump_logs(&self) {
        for p in self.procs().iter() {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            eprintln!(
                "----- {} on {} (last {} lines) -----",
                p.name,
                self.hosts[p.host].name,
                lines.len() - from
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in self.procs().iter_mut() {
            if let Some(mut c) = p.child.take() {
                c.kill().ok();
                c.wait().ok();
            }
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
        let mounts = std::mem::take(&mut *self.mounts.lock().unwrap_or_else(|p| p.into_inner()));
        for m in mounts {
            let ok = Command::new("umount")
                .arg(&m)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                // Busy for a moment after its last user died: detach it lazily.
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        for h in self.hosts.drain(..) {
            if let Err(e) = ip(&["netns", "del", &h.ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
        // Deleting the switch namespace deletes the bridge and the root veth's peer, and with
        // it the root veth; delete that explicitly too in case the namespace lingers.
        let _ = ip(&["link", "del", &self.root_veth]);
        if let Err(e) = ip(&["netns", "del", &self.switch_ns]) {
            eprintln!("netns cleanup: {e}");
        }
    }
}
