//! One relay per queue directory: an exclusive `flock` on `{dir}/lock`, held for as long as
//! the [`super::Queue`] lives (the kernel drops it when the process dies, even on SIGKILL, so
//! a stale lock never blocks a restart). The file holds the holder's PID, for the message the
//! second instance prints. `queue stats|dump` never take it: they only read.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use super::QueueError;

/// Takes the lock on `dir` or says who holds it.
pub(super) fn acquire(dir: &Path) -> Result<File, QueueError> {
    let path = dir.join("lock");
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path);
    let mut f = match opened {
        // A read-only filesystem: flock works on a file opened for reading (when it is there).
        Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
            File::open(&path).map_err(|_| QueueError::Io {
                path: path.clone(),
                source: e,
            })?
        }
        other => other.map_err(|source| QueueError::Io {
            path: path.clone(),
            source,
        })?,
    };
    if let Err(e) = try_lock(&f) {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown".to_owned(),
                p => p.to_owned(),
            };
            return Err(QueueError::Locked {
                path: dir.to_owned(),
                pid,
            });
        }
        return Err(QueueError::Io { path, source: e });
    }
    // Best effort (a full disk may refuse the block): the lock itself is what counts.
    let written = f
        .set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| writeln!(f, "{}", std::process::id()));
    if let Err(e) = written {
        log::warn!("queue: cannot write the PID into {}: {e}", path.display());
    }
    Ok(f)
}

#[cfg(target_os = "linux")]
fn try_lock(f: &File) -> std::io::Result<()> {
    use rustix::fs::{flock, FlockOperation};
    flock(f, FlockOperation::NonBlockingLockExclusive).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn try_lock(_f: &File) -> std::io::Result<()> {
    Ok(())
}

/// The name of the effective user (from /proc and /etc/passwd), or its uid.
pub(super) fn user_name() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        });
    let Some(uid) = uid else {
        return "(unknown)".to_owned();
    };
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?;
            (id == uid).then(|| name.to_owned())
        })
    });
    name.unwrap_or(uid)
}
