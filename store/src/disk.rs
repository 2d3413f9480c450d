//! File-system operations of the volume code (open, positioned reads and writes, syncs,
//! preallocation, renames, directory syncs), in one place so that the power-loss simulator
//! (`sim`, behind the `test-hooks` feature) sees every one of them.
//!
//! In production builds `Disk` is a zero-sized handle and every method is the plain system
//! call. With `test-hooks`, a `Disk` may carry a [`SimDisk`](crate::sim::SimDisk): writes are
//! then recorded as unsynced until a sync, faults are injected where its plan says, and a
//! power cut forgets what was not synced (see `sim`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[cfg(feature = "test-hooks")]
use std::sync::Arc;

/// Which kind of operation, for the simulator's fault plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Open,
    Read,
    Write,
    Sync,
    Alloc,
    Rename,
    Remove,
    SyncDir,
}

/// The file-system handle of a store's volumes; cheap to clone.
#[derive(Clone, Default)]
pub struct Disk {
    #[cfg(feature = "test-hooks")]
    pub(crate) sim: Option<Arc<crate::sim::SimDisk>>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Disk")
    }
}

/// Runs `$plain` directly, or through the simulator when one is attached.
macro_rules! via_sim {
    ($self:ident, $sim:ident => $simulated:expr, $plain:expr) => {{
        #[cfg(feature = "test-hooks")]
        if let Some($sim) = &$self.sim {
            return $simulated;
        }
        $plain
    }};
}

impl Disk {
    /// A disk whose every operation goes through the power-loss simulator.
    #[cfg(feature = "test-hooks")]
    pub fn simulated(sim: Arc<crate::sim::SimDisk>) -> Disk {
        Disk { sim: Some(sim) }
    }

    /// Whether a simulator is attached (engines then run their I/O through this handle).
    pub fn is_simulated(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        if self.sim.is_some() {
            return true;
        }
        false
    }

    /// Opens (or creates, as `opts` says) a file.
    pub fn open(&self, path: &Path, opts: &OpenOptions) -> io::Result<File> {
        via_sim!(self, s => s.open(path, opts), opts.open(path))
    }

    /// Creates (or truncates) a file for reading and writing.
    pub fn create(&self, path: &Path) -> io::Result<File> {
        self.open(
            path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
        )
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        via_sim!(self, s => s.read_exact_at(file, buf, offset), file.read_exact_at(buf, offset))
    }

    /// Reads up to `buf.len()` bytes at `offset` (short only at the end of the file).
    pub fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        via_sim!(self, s => s.read_at(file, buf, offset), {
            let mut got = 0;
            while got < buf.len() {
                let n = file.read_at(&mut buf[got..], offset + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            Ok(got)
        })
    }

    /// Reads a whole (small) file from its start.
    pub fn read_all(&self, file: &File) -> io::Result<Vec<u8>> {
        via_sim!(self, s => s.read_all(file), {
            let mut raw = Vec::new();
            (&*file).read_to_end(&mut raw)?;
            Ok(raw)
        })
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        via_sim!(self, s => s.write_all_at(file, buf, offset), file.write_all_at(buf, offset))
    }

    /// Appends all of `buf` at the end of the file.
    pub fn append(&self, file: &File, buf: &[u8]) -> io::Result<()> {
        via_sim!(self, s => s.append(file, buf), {
            let at = file.metadata()?.len();
            file.write_all_at(buf, at)
        })
    }

    /// fdatasync.
    pub fn sync_data(&self, file: &File) -> io::Result<()> {
        via_sim!(self, s => s.sync(file), file.sync_data())
    }

    /// fsync (data and metadata).
    pub fn sync_all(&self, file: &File) -> io::Result<()> {
        via_sim!(self, s => s.sync(file), file.sync_all())
    }

    /// Sets the file's length.
    pub fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        via_sim!(self, s => s.set_len(file, len), file.set_len(len))
    }

    /// fallocate(2) with `mode` (0: allocate and extend; `FALLOC_FL_ZERO_RANGE`, ...).
    pub fn fallocate(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        mode: libc::c_int,
    ) -> io::Result<()> {
        via_sim!(self, s => s.fallocate(file, offset, len, mode), fallocate(file, offset, len, mode))
    }

    /// Renames `from` over `to`.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        via_sim!(self, s => s.rename(from, to), std::fs::rename(from, to))
    }

    /// Removes a file.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        via_sim!(self, s => s.remove(path), std::fs::remove_file(path))
    }

    /// Makes the directory's entries (creates, renames, removes) durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        via_sim!(self, s => s.sync_dir(dir), File::open(dir)?.sync_all())
    }
}

/// fallocate(2) on an open file.
pub fn fallocate(file: &File, offset: u64, len: u64, mode: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on an owned descriptor.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
