//! The queue's filesystem seam: every open, write, fsync, rename, unlink and directory fsync
//! the queue makes goes through [`Filesystem`] (after vector's disk buffer `Filesystem`
//! trait), so tests can swap the real one ([`OsFs`]) for [`FaultFs`], an in-memory filesystem
//! that fails chosen operations and models a power cut (tests only: `fault_fs.rs`).
//!
//! Owns: the I/O primitives. Never does: decide what to write (that is the queue's).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// An open file of the queue. All methods take `&self` so one handle can be shared between
/// the writer (appends) and the fsync that runs outside the queue's lock.
pub trait FsFile: Send + Sync + std::fmt::Debug {
    /// Appends `buf` at the end of the file.
    fn append(&self, buf: &[u8]) -> io::Result<()>;
    /// Overwrites `buf` at `off` (in place: no new blocks when the range exists).
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// fdatasync.
    fn sync_data(&self) -> io::Result<()>;
}

pub trait Filesystem: Send + Sync + std::fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens an existing file for appending.
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn FsFile>>;
    /// Opens an existing file to read and to overwrite in place.
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn FsFile>>;
    /// Creates (or truncates) a file for appending.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>>;
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsFile>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// fsyncs the directory, making creates, renames and unlinks in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// File names in `dir`.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> bool;
    /// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
    fn available_bytes(&self, dir: &Path) -> io::Result<u64>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

#[derive(Debug)]
struct OsFile(File);

impl FsFile for OsFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        (&self.0).write_all(buf)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.0.write_all_at(buf, off)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.0.read_at(buf, off)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

fn os(f: File) -> Arc<dyn FsFile> {
    Arc::new(OsFile(f))
}

impl Filesystem for OsFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn open_append(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        OpenOptions::new().append(true).open(path).map(os)
    }
    fn open_rw(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        OpenOptions::new().read(true).write(true).open(path).map(os)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        // O_APPEND cannot be combined with O_TRUNC through std: truncate after opening.
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        f.set_len(0)?;
        Ok(os(f))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsFile>> {
        File::open(path).map(os)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn available_bytes(&self, dir: &Path) -> io::Result<u64> {
        let st = rustix::fs::statvfs(dir)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}
