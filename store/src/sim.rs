//! The power-loss simulator (test builds only): a disk that keeps what was synced and, at a
//! power cut, an arbitrary part of what was not.
//!
//! Every file-system operation of the volume code goes through [`Disk`](crate::disk::Disk);
//! with a `SimDisk` attached, the operation is done on the real file (so the process sees
//! its own writes, as it would through the page cache) and recorded:
//! - each 4 KiB page written since the file's last sync keeps every version it had since
//!   then (the first is the durable one);
//! - each file's length since its last sync keeps its versions too;
//! - creates, renames and removes in a directory since its last directory sync are kept in
//!   order (a file replaced or removed is kept aside by a hard link, so it can come back).
//!
//! [`SimDisk::power_cut`] then makes the disk what it could be after a power cut: every
//! unsynced page takes any one of its versions, possibly torn (a prefix of 512-byte sectors
//! of the next version over it), chosen independently of every other page, so writes come
//! back in any order; each file takes any of its unsynced lengths; each directory keeps a
//! prefix of its unsynced operations (a journalled file system's metadata order). Sectors
//! are atomic, as on real disks.
//!
//! A fault plan makes the n-th operation of some kinds fail (EIO, ENOSPC, a short write,
//! a hang) or cut the power at that point: from then on every operation fails with EIO until
//! [`SimDisk::power_cut`] has rewritten the files, as if the machine stopped there.
//!
//! What it does not model: the io_uring engine's own submission path (the simulated engine
//! runs the pread/pwrite engine's code), a disk that lies about syncs, bit rot, and the
//! sealed index file's own atomic write (it is written under a temporary name, synced and
//! renamed by `SortedIndex::write`, outside this layer).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::{Rng, RngCore};

use crate::disk::OpKind;

const PAGE: u64 = 4096;
const SECTOR: usize = 512;

/// What a planned fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The operation fails with EIO and does nothing.
    Eio,
    /// The operation fails with ENOSPC and does nothing.
    Enospc,
    /// A write writes only its first half, then fails with EIO.
    ShortWrite,
    /// The operation waits this long, then goes on normally.
    Hang(Duration),
    /// The power goes at this operation: it and every later one fail with EIO.
    PowerCut,
}

/// Fail the `nth` (0-based) operation of one of `kinds` from now on.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    pub nth: u64,
    pub kinds: Vec<OpKind>,
    pub fault: FaultKind,
}

struct SimFile {
    /// A handle of its own on the inode, to rewrite it at the power cut whatever its name.
    handle: File,
    /// Versions of each page written since the last sync; `[0]` is the durable one.
    pages: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Lengths since the last sync; `[0]` is the durable one.
    lens: Vec<u64>,
}

enum NsOp {
    Create(PathBuf),
    Rename {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
    Remove {
        path: PathBuf,
        kept: PathBuf,
    },
}

#[derive(Default)]
struct State {
    // Ordered maps: a cut's random choices are then the same for the same seed.
    files: BTreeMap<(u64, u64), SimFile>,
    dirs: BTreeMap<PathBuf, Vec<NsOp>>,
    plan: Option<FaultPlan>,
    /// Operations of the plan's kinds seen since the plan was set.
    counted: u64,
    /// Faults fired since the last `power_cut` or `take_fired`.
    fired: Vec<FaultKind>,
}

/// A simulated disk shared by the engines and volumes of one test.
pub struct SimDisk {
    /// Where replaced and removed files are kept while their removal is not durable (same
    /// file system as the volumes, outside their directory).
    attic: PathBuf,
    next_attic: AtomicU64,
    dead: AtomicBool,
    state: Mutex<State>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn inode(f: &File) -> io::Result<(u64, u64)> {
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

fn read_page(f: &File, page: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; PAGE as usize];
    let mut got = 0;
    while got < buf.len() {
        let n = f.read_at(&mut buf[got..], page * PAGE + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(buf)
}

impl SimDisk {
    /// A simulated disk; `attic` must be a directory on the same file system as the volumes
    /// and outside their directory.
    pub fn new(attic: &Path) -> io::Result<SimDisk> {
        std::fs::create_dir_all(attic)?;
        Ok(SimDisk {
            attic: attic.to_path_buf(),
            next_attic: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        haystack_service::sync::lock(&self.state)
    }

    /// Arms a fault (replacing any armed one); counting starts now.
    pub fn plan(&self, plan: FaultPlan) {
        let mut st = self.lock();
        st.plan = Some(plan);
        st.counted = 0;
    }

    /// Disarms the plan.
    pub fn clear_plan(&self) {
        self.lock().plan = None;
    }

    /// The faults that fired since the last call (or power cut).
    pub fn take_fired(&self) -> Vec<FaultKind> {
        std::mem::take(&mut self.lock().fired)
    }

    /// Whether the power is off (a planned cut fired, or `cut_now`).
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// The power goes now: every operation from here fails with EIO.
    pub fn cut_now(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    /// Counts an operation against the plan and says which fault, if any, hits it.
    fn gate(&self, kind: OpKind) -> io::Result<Option<FaultKind>> {
        if self.is_dead() {
            return Err(eio());
        }
        let mut st = self.lock();
        let Some(plan) = &st.plan else {
            return Ok(None);
        };
        if !plan.kinds.contains(&kind) {
            return Ok(None);
        }
        let (nth, fault) = (plan.nth, plan.fault);
        st.counted += 1;
        if st.counted - 1 != nth {
            return Ok(None);
        }
        st.plan = None;
        st.fired.push(fault);
        drop(st);
        match fault {
            FaultKind::Eio => Err(eio()),
            FaultKind::Enospc => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            FaultKind::PowerCut => {
                self.cut_now();
                Err(eio())
            }
            FaultKind::Hang(d) => {
                std::thread::sleep(d);
                Ok(None)
            }
            FaultKind::ShortWrite => Ok(Some(FaultKind::ShortWrite)),
        }
    }

    /// Starts tracking `f` (as durable as it is now) if it is not tracked yet.
    fn track<'a>(st: &'a mut State, f: &File) -> io::Result<&'a mut SimFile> {
        let id = inode(f)?;
        Ok(match st.files.entry(id) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let len = f.metadata()?.len();
                e.insert(SimFile {
                    handle: f.try_clone()?,
                    pages: BTreeMap::new(),
                    lens: vec![len],
                })
            }
        })
    }

    /// Does `op` on the file, recording the versions of the pages in `[from, to)`.
    fn mutate(
        &self,
        f: &File,
        from: u64,
        to: u64,
        op: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let mut st = self.lock();
        let sf = Self::track(&mut st, f)?;
        let pages = if to > from {
            from / PAGE..to.div_ceil(PAGE)
        } else {
            0..0
        };
        for p in pages.clone() {
            if let std::collections::btree_map::Entry::Vacant(e) = sf.pages.entry(p) {
                e.insert(vec![read_page(f, p)?]);
            }
        }
        let r = op();
        for p in pages {
            let now = read_page(f, p)?;
            let v = sf.pages.get_mut(&p).expect("recorded above");
            if v.last() != Some(&now) {
                v.push(now);
            }
        }
        let len = f.metadata()?.len();
        if sf.lens.last() != Some(&len) {
            sf.lens.push(len);
        }
        r
    }

    pub(crate) fn open(&self, path: &Path, opts: &OpenOptions) -> io::Result<File> {
        self.gate(OpKind::Open)?;
        let existed = path.exists();
        let f = opts.open(path)?;
        let mut st = self.lock();
        if !existed {
            // A new file: nothing of it is durable, its name included.
            let id = inode(&f)?;
            st.files.insert(
                id,
                SimFile {
                    handle: f.try_clone()?,
                    pages: BTreeMap::new(),
                    lens: vec![0],
                },
            );
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            st.dirs
                .entry(dir)
                .or_default()
                .push(NsOp::Create(path.to_path_buf()));
        } else {
            // Opened with truncate: the old length is what is durable.
            let sf = Self::track(&mut st, &f)?;
            let len = f.metadata()?.len();
            if sf.lens.last() != Some(&len) {
                sf.lens.push(len);
            }
        }
        Ok(f)
    }

    pub(crate) fn read_exact_at(&self, f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.gate(OpKind::Read)?;
        f.read_exact_at(buf, offset)
    }

    pub(crate) fn read_at(&self, f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.gate(OpKind::Read)?;
        let mut got = 0;
        while got < buf.len() {
            let n = f.read_at(&mut buf[got..], offset + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }

    pub(crate) fn read_all(&self, f: &File) -> io::Result<Vec<u8>> {
        self.gate(OpKind::Read)?;
        let len = f.metadata()?.len() as usize;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }

    pub(crate) fn write_all_at(&self, f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let fault = self.gate(OpKind::Write)?;
        let end = offset + buf.len() as u64;
        if fault == Some(FaultKind::ShortWrite) {
            let half = &buf[..buf.len() / 2];
            self.mutate(f, offset, end, || f.write_all_at(half, offset))?;
            return Err(eio());
        }
        self.mutate(f, offset, end, || f.write_all_at(buf, offset))
    }

    pub(crate) fn append(&self, f: &File, buf: &[u8]) -> io::Result<()> {
        let at = f.metadata()?.len();
        self.write_all_at(f, buf, at)
    }

    pub(crate) fn sync(&self, f: &File) -> io::Result<()> {
        self.gate(OpKind::Sync)?;
        // Durability is what this simulator decides: no real sync (it would only slow the
        // tens of thousands of cuts a test run makes).
        let mut st = self.lock();
        let len = f.metadata()?.len();
        let sf = Self::track(&mut st, f)?;
        sf.pages.clear();
        sf.lens = vec![len];
        Ok(())
    }

    pub(crate) fn set_len(&self, f: &File, len: u64) -> io::Result<()> {
        self.gate(OpKind::Alloc)?;
        let old = f.metadata()?.len();
        let (from, to) = (old.min(len), old.max(len));
        self.mutate(f, from, to, || f.set_len(len))
    }

    pub(crate) fn fallocate(
        &self,
        f: &File,
        offset: u64,
        len: u64,
        mode: libc::c_int,
    ) -> io::Result<()> {
        self.gate(OpKind::Alloc)?;
        if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            // Zeroing changes content: record it page by page (tests keep volumes small).
            let end = (offset + len).min(f.metadata()?.len());
            return self.mutate(f, offset, end.max(offset), || {
                crate::disk::fallocate(f, offset, len, mode)
            });
        }
        self.mutate(f, 0, 0, || crate::disk::fallocate(f, offset, len, mode))
    }

    /// Keeps `path` (an inode about to lose its name) in the attic by a hard link.
    fn keep(&self, path: &Path) -> io::Result<PathBuf> {
        let n = self.next_attic.fetch_add(1, Ordering::Relaxed);
        let kept = self.attic.join(format!("kept-{n}"));
        std::fs::hard_link(path, &kept)?;
        Ok(kept)
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.gate(OpKind::Rename)?;
        let replaced = if to.exists() {
            Some(self.keep(to)?)
        } else {
            None
        };
        std::fs::rename(from, to)?;
        let dir = to.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.lock().dirs.entry(dir).or_default().push(NsOp::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            replaced,
        });
        Ok(())
    }

    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        self.gate(OpKind::Remove)?;
        let kept = self.keep(path)?;
        std::fs::remove_file(path)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.lock().dirs.entry(dir).or_default().push(NsOp::Remove {
            path: path.to_path_buf(),
            kept,
        });
        Ok(())
    }

    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.gate(OpKind::SyncDir)?;
        if let Some(ops) = self.lock().dirs.remove(dir) {
            for op in ops {
                let kept = match op {
                    NsOp::Rename {
                        replaced: Some(k), ..
                    } => k,
                    NsOp::Remove { kept, .. } => kept,
                    _ => continue,
                };
                let _ = std::fs::remove_file(kept);
            }
        }
        Ok(())
    }

    /// Turns the files into what a power cut could leave (see the module docs), then turns
    /// the power back on with nothing unsynced. The volumes that used the disk must be
    /// dropped first (their engines fail every operation once the power is off).
    pub fn power_cut(&self, rng: &mut dyn RngCore) -> io::Result<CutReport> {
        self.cut_now();
        let mut st = self.lock();
        let mut report = CutReport::default();
        // Namespace first: a prefix of each directory's unsynced operations survives.
        for (_, ops) in std::mem::take(&mut st.dirs) {
            let keep = rng.random_range(0..=ops.len());
            report.ns_ops_lost += ops.len() - keep;
            for op in ops.into_iter().skip(keep).rev() {
                match op {
                    NsOp::Create(p) => {
                        let _ = std::fs::remove_file(p);
                    }
                    NsOp::Rename { from, to, replaced } => {
                        std::fs::rename(&to, &from)?;
                        if let Some(k) = replaced {
                            std::fs::rename(k, &to)?;
                        }
                    }
                    NsOp::Remove { path, kept } => std::fs::rename(kept, path)?,
                }
            }
        }
        // Then every inode's content and length.
        for (_, sf) in std::mem::take(&mut st.files) {
            let len = sf.lens[rng.random_range(0..sf.lens.len())];
            for (page, versions) in &sf.pages {
                let pick = rng.random_range(0..versions.len());
                let mut content = versions[pick].clone();
                if pick + 1 < versions.len() && rng.random_bool(0.25) {
                    // Torn: the first sectors of the next version reached the disk.
                    let sectors = rng.random_range(1..PAGE as usize / SECTOR);
                    let next = &versions[pick + 1];
                    content[..sectors * SECTOR].copy_from_slice(&next[..sectors * SECTOR]);
                    report.pages_torn += 1;
                }
                if pick + 1 < versions.len() {
                    report.pages_lost += 1;
                }
                report.pages_unsynced += 1;
                sf.handle.write_all_at(&content, page * PAGE)?;
            }
            sf.handle.set_len(len)?;
        }
        st.plan = None;
        st.counted = 0;
        st.fired.clear();
        drop(st);
        self.dead.store(false, Ordering::SeqCst);
        Ok(report)
    }
}

/// What one power cut did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CutReport {
    /// Pages written since their file's last sync.
    pub pages_unsynced: u64,
    /// Of those, pages that lost their newest version.
    pub pages_lost: u64,
    /// Pages left torn between two versions.
    pub pages_torn: u64,
    /// Directory operations undone.
    pub ns_ops_lost: usize,
}
