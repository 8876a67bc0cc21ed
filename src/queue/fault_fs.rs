//! [`FaultFs`]: an in-memory [`Filesystem`] for tests that fails chosen operations and
//! models a power cut.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::fs::{Filesystem, FsFile};

/// Which operations [`FaultFs`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPlan {
    None,
    /// The operation with this number (counted from 1 since the plan was set) fails, once.
    Nth(u64, i32),
    /// The next `n` operations fail.
    Next(u64, i32),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    /// What a power cut keeps.
    synced: Vec<u8>,
}

/// A directory-entry change not yet made durable by a directory fsync.
#[derive(Debug, Clone)]
enum DirOp {
    Link(PathBuf, usize),
    Rename(PathBuf, PathBuf, usize),
    Unlink(PathBuf),
}

#[derive(Debug)]
struct FaultState {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    /// Directory changes since the last directory fsync, oldest first.
    journal: Vec<DirOp>,
    plan: FaultPlan,
    ops: u64,
    failed: u64,
    /// Total file bytes allowed (ENOSPC beyond), like a small tmpfs.
    capacity: Option<u64>,
    dirs: Vec<PathBuf>,
}

/// An in-memory filesystem that fails chosen operations (any of them, with any errno, and
/// later succeeds) and models a power cut: file contents fall back to what was last fsynced
/// (plus, optionally, a prefix of appended bytes: a torn tail), and directory changes not made
/// durable by a directory fsync are kept only up to a chosen prefix of their order (ordered
/// metadata journaling).
#[derive(Debug, Clone)]
pub struct FaultFs {
    state: Arc<Mutex<FaultState>>,
}

impl Default for FaultFs {
    fn default() -> Self {
        FaultFs::new()
    }
}

#[derive(Debug)]
struct FaultFile {
    fs: FaultFs,
    inode: usize,
    path: PathBuf,
}

impl FaultFs {
    pub fn new() -> FaultFs {
        FaultFs {
            state: Arc::new(Mutex::new(FaultState {
                inodes: Vec::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                journal: Vec::new(),
                plan: FaultPlan::None,
                ops: 0,
                failed: 0,
                capacity: None,
                dirs: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets which operations fail from now on (and restarts the operation count).
    pub fn set_plan(&self, plan: FaultPlan) {
        let mut s = self.lock();
        s.plan = plan;
        s.ops = 0;
    }

    /// Operations counted since the plan was set.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Operations failed so far.
    pub fn failed(&self) -> u64 {
        self.lock().failed
    }

    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Bytes held by files that have a name.
    pub fn used_bytes(&self) -> u64 {
        let s = self.lock();
        s.used()
    }

    /// A power cut: every file keeps what was fsynced plus up to `torn` of the bytes
    /// appended after it; the first `keep_dir_ops` directory changes since the last directory
    /// fsync survive, the rest are lost. Open handles must not be used afterwards (drop the
    /// queue first).
    pub fn power_cut(&self, keep_dir_ops: usize, torn: usize) {
        let mut s = self.lock();
        let journal = std::mem::take(&mut s.journal);
        let mut names = s.durable_names.clone();
        for op in journal.into_iter().take(keep_dir_ops) {
            match op {
                DirOp::Link(p, i) => {
                    names.insert(p, i);
                }
                DirOp::Rename(from, to, i) => {
                    names.remove(&from);
                    names.insert(to, i);
                }
                DirOp::Unlink(p) => {
                    names.remove(&p);
                }
            }
        }
        for inode in s.inodes.iter_mut() {
            let synced = inode.synced.len();
            let extends = inode.data.len() > synced && inode.data[..synced] == inode.synced[..];
            if extends {
                inode
                    .data
                    .truncate(synced + torn.min(inode.data.len() - synced));
            } else {
                inode.data = inode.synced.clone();
            }
            inode.synced = inode.data.clone();
        }
        s.names = names.clone();
        s.durable_names = names;
    }

    /// Counts one operation and fails it when the plan says so.
    fn op(&self, what: &str, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.ops += 1;
        let errno = match s.plan {
            FaultPlan::Nth(n, e) if s.ops == n => Some(e),
            FaultPlan::Next(n, e) if n > 0 => {
                s.plan = FaultPlan::Next(n - 1, e);
                Some(e)
            }
            _ => None,
        };
        match errno {
            Some(e) => {
                s.failed += 1;
                let err = io::Error::from_raw_os_error(e);
                Err(io::Error::new(
                    err.kind(),
                    format!("injected {what} {}: {err}", path.display()),
                ))
            }
            None => Ok(()),
        }
    }

    fn file(&self, path: &Path, inode: usize) -> Arc<dyn FsFile> {
        Arc::new(FaultFile {
            fs: self.clone(),
            inode,
            path: path.to_owned(),
        })
    }

    fn lookup(&self, path: &Path) -> io::Result<usize> {
        self.lock()
            .names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

impl FaultState {
    fn used(&self) -> u64 {
        let live: std::collections::BTreeSet<usize> = self.names.values().copied().collect();
        live.iter().map(|&i| self.inodes[i].data.len() as u64).sum()
    }

    /// ENOSPC when growing a file by `more` bytes would pass the capacity.
    fn room(&self, more: u64) -> io::Result<()> {
        match self.capacity {
            Some(cap) if self.used() + more > cap => Err(io::Error::from_raw_os_error(28)),
            _ => Ok(()),
        }
    }
}

impl FsFile for FaultFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        self.fs.op("write", &self.path)?;
        let mut s = self.fs.lock();
        s.room(buf.len() as u64)?;
        s.inodes[self.inode].data.extend_from_slice(buf);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.fs.op("write", &self.path)?;
        let mut s = self.fs.lock();
        let end = off as usize + buf.len();
        let grow = end.saturating_sub(s.inodes[self.inode].data.len());
        s.room(grow as u64)?;
        let data = &mut s.inodes[self.inode].data;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[off as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.fs.op("read", &self.path)?;
        let s = self.fs.lock();
        let data = &s.inodes[self.inode].data;
        let off = (off as usize).min(data.len());
        let n = buf.len().min(data.len() - off);
        buf[..n].copy_from_slice(&data[off..off + n]);
        Ok(n)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.op("truncate", &self.path)?;
        let mut s = self.fs.lock();
        let grow = (len as usize).saturating_sub(s.inodes[self.inode].data.len());
        s.room(grow as u64)?;
        s.inodes[self.inode].data.resize(len as usize, 0);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.fs.lock().inodes[self.inode].data.len() as u64)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.op("fsync", &self.path)?;
        let mut s = self.fs.lock();
        let inode = &mut s.inodes[self.inode];
        inode.synced = inode.data.clone();
        Ok(())
    }
}

impl Filesystem for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.op("mkdir", dir)?;
        let mut s = self.lock();
        if !s.dirs.iter().any(|d| d == dir) {
            s.dirs.push(dir.to_owned());
        }
        Ok(())
    }
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        self.op("open", path)?;
        let i = self.lookup(path)?;
        Ok(self.file(path, i))
    }
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        self.open_append(path)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        self.op("create", path)?;
        let mut s = self.lock();
        let i = s.inodes.len();
        s.inodes.push(Inode::default());
        s.names.insert(path.to_owned(), i);
        s.journal.push(DirOp::Link(path.to_owned(), i));
        drop(s);
        Ok(self.file(path, i))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        self.open_append(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.op("read", path)?;
        let i = self.lookup(path)?;
        Ok(self.lock().inodes[i].data.clone())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.op("rename", from)?;
        let mut s = self.lock();
        let i = s
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.names.insert(to.to_owned(), i);
        s.journal
            .push(DirOp::Rename(from.to_owned(), to.to_owned(), i));
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.op("unlink", path)?;
        let mut s = self.lock();
        s.names
            .remove(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.journal.push(DirOp::Unlink(path.to_owned()));
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.op("fsync dir", dir)?;
        let mut s = self.lock();
        s.journal.clear();
        s.durable_names = s.names.clone();
        Ok(())
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.op("readdir", dir)?;
        let s = self.lock();
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn exists(&self, path: &Path) -> bool {
        self.lock().names.contains_key(path)
    }
    fn available_bytes(&self, _dir: &Path) -> io::Result<u64> {
        let st = self.lock();
        Ok(st
            .capacity
            .map_or(u64::MAX, |c| c.saturating_sub(st.used())))
    }
}

/// Holds segment fsyncs at a gate the test opens, like an SD card that takes its time: a
/// [`GatedFs`] (the real filesystem underneath) waits in [`Gate::pass`] before every
/// `fdatasync` of a `*.seg` file while the gate is closed, and fails it when told to.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    /// fsyncs waiting at the gate now.
    waiting: usize,
    /// fsyncs that passed the gate since start.
    passed: u64,
    /// The errno the next fsyncs that pass fail with.
    fail: Option<i32>,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// Opens the gate; fsyncs that pass from now on fail with `fail` (when given).
    pub fn open(&self, fail: Option<i32>) {
        let mut s = self.lock();
        s.closed = false;
        s.fail = fail;
        self.changed.notify_all();
    }

    /// True while an fsync waits at the gate.
    pub fn holding(&self) -> bool {
        self.lock().waiting > 0
    }

    pub fn passed(&self) -> u64 {
        self.lock().passed
    }

    /// Waits (blocking, at most `timeout`) until an fsync waits at the gate.
    pub fn wait_holding(&self, timeout: std::time::Duration) -> bool {
        self.wait_for(timeout, |s| s.waiting > 0)
    }

    /// Waits (blocking, at most `timeout`) until `n` fsyncs in all have passed the gate.
    pub fn wait_passed(&self, n: u64, timeout: std::time::Duration) -> bool {
        self.wait_for(timeout, |s| s.passed >= n)
    }

    /// Waits (blocking, at most `timeout`) until `done` holds of the gate's state.
    fn wait_for(&self, timeout: std::time::Duration, done: impl Fn(&GateState) -> bool) -> bool {
        let (s, _) = self
            .changed
            .wait_timeout_while(self.lock(), timeout, |s| !done(s))
            .unwrap_or_else(|p| p.into_inner());
        done(&s)
    }

    fn pass(&self) -> io::Result<()> {
        let mut s = self.lock();
        s.waiting += 1;
        self.changed.notify_all();
        while s.closed {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.waiting -= 1;
        s.passed += 1;
        self.changed.notify_all();
        match s.fail {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

/// The real filesystem with segment fsyncs held at a [`Gate`].
#[derive(Debug, Default, Clone)]
pub struct GatedFs {
    pub gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn FsFile>,
    gate: Arc<Gate>,
}

impl FsFile for GatedFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        self.inner.append(buf)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.inner.write_at(buf, off)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.inner.read_at(buf, off)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn sync_data(&self) -> io::Result<()> {
        self.gate.pass()?;
        self.inner.sync_data()
    }
}

impl GatedFs {
    /// A queue in `dir` (1 MiB, 64 KiB segments, `fsync = "batch"`) over a new gated
    /// filesystem: the fixture of the tests that hold a group commit's fsync.
    pub fn open_queue(dir: &Path) -> (GatedFs, super::Queue) {
        let fs = GatedFs::default();
        let cfg = crate::config::QueueConfig {
            dir: dir.to_owned(),
            max_bytes: 1 << 20,
            on_full: crate::config::OnFull::DropOldest,
            fsync: crate::config::FsyncPolicy::Batch,
            segment_bytes: 1 << 16,
            max_records: None,
            max_age: None,
        };
        let queue = super::Queue::open_with(&cfg, Arc::new(fs.clone()))
            .expect("open")
            .0;
        (fs, queue)
    }

    fn gated(&self, path: &Path, f: Arc<dyn FsFile>) -> Arc<dyn FsFile> {
        match path.extension().is_some_and(|e| e == "seg") {
            true => Arc::new(GatedFile {
                inner: f,
                gate: self.gate.clone(),
            }),
            false => f,
        }
    }
}

impl Filesystem for GatedFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        super::fs::OsFs.create_dir_all(dir)
    }
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        Ok(self.gated(path, super::fs::OsFs.open_append(path)?))
    }
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        Ok(self.gated(path, super::fs::OsFs.open_rw(path)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        Ok(self.gated(path, super::fs::OsFs.create(path)?))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        super::fs::OsFs.open_read(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        super::fs::OsFs.read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        super::fs::OsFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        super::fs::OsFs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        super::fs::OsFs.sync_dir(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        super::fs::OsFs.list_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        super::fs::OsFs.exists(path)
    }
    fn available_bytes(&self, dir: &Path) -> io::Result<u64> {
        super::fs::OsFs.available_bytes(dir)
    }
}
