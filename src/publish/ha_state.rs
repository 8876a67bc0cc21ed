//! What Home Assistant changed and the relay must remember across restarts: which named rules
//! are disarmed, until when the relay is snoozed, and the alert labels seen so far (the event
//! entity's `event_types`). One small JSON file next to the queue directory
//! (`{queue.dir}.state.json`), written whole and atomically: a temporary file, fsync, rename
//! over the old one, fsync of the directory. A crash leaves the old or the new file, never a
//! mix. A missing file is a fresh start; an unreadable one is logged and ignored (the relay
//! then starts armed, unsnoozed, with the configured event types), never a reason not to run.
//!
//! Writes are rare (a user flips a switch, a label is seen for the first time) and small, so
//! they run where the change happens.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Labels learned at most: each one is an event type in the discovery message, which must stay
/// well below brokers' packet limits (a label is at most 64 bytes: 256 of them ~ 20 KiB).
pub const MAX_LEARNED_LABELS: usize = 256;
/// A learned label longer than this is not learned (its alert still reaches HA as `other`).
pub const MAX_LABEL_LEN: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HaState {
    /// Names of disarmed rules (every other rule is armed).
    pub disarmed: BTreeSet<String>,
    /// Unix seconds until which the relay is snoozed.
    pub snoozed_until: Option<u64>,
    /// Labels seen in alerts, learned at run time.
    pub labels: BTreeSet<String>,
}

/// Where the state of the queue in `queue_dir` lives: beside it, not in it (the queue owns
/// its directory).
pub fn path_for(queue_dir: &Path) -> PathBuf {
    let mut name = queue_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "queue".into());
    name.push(".state.json");
    queue_dir.with_file_name(name)
}

impl HaState {
    /// Reads the state file; a missing or unreadable file gives the default state.
    pub fn load(path: &Path) -> HaState {
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!(
                        "state: {} is not a state file ({e}); starting armed and unsnoozed",
                        path.display()
                    );
                    HaState::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HaState::default(),
            Err(e) => {
                log::warn!("state: cannot read {}: {e}", path.display());
                HaState::default()
            }
        }
    }

    /// Writes the state atomically and durably (tmp + fsync + rename + directory fsync).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }

    /// Learns `label`; true when it is new (then the discovery must be sent again).
    pub fn learn(&mut self, label: &str) -> bool {
        if label.is_empty()
            || label.len() > MAX_LABEL_LEN
            || self.labels.len() >= MAX_LEARNED_LABELS
            || self.labels.contains(label)
        {
            return false;
        }
        self.labels.insert(label.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_sits_beside_the_queue_dir() {
        assert_eq!(
            path_for(Path::new("/var/lib/alert-relay/queue")),
            Path::new("/var/lib/alert-relay/queue.state.json")
        );
        assert_eq!(
            path_for(Path::new("q/")),
            Path::new("q.state.json"),
            "a trailing slash names the same directory"
        );
    }

    #[test]
    fn saved_state_loads_back_and_garbage_loads_as_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("queue.state.json");
        assert_eq!(HaState::load(&p), HaState::default(), "missing file");
        let mut s = HaState::default();
        s.disarmed.insert("porch".into());
        s.snoozed_until = Some(1_900_000_000);
        assert!(s.learn("person"));
        assert!(!s.learn("person"));
        s.save(&p).expect("save");
        assert_eq!(HaState::load(&p), s);
        assert!(!dir.path().join("queue.state.json.tmp").exists());
        std::fs::write(&p, b"{\"disarmed\": 5").expect("write");
        assert_eq!(HaState::load(&p), HaState::default());
    }

    #[test]
    fn learning_is_bounded() {
        let mut s = HaState::default();
        for i in 0..MAX_LEARNED_LABELS + 10 {
            s.learn(&format!("l{i}"));
        }
        assert_eq!(s.labels.len(), MAX_LEARNED_LABELS);
        assert!(!s.learn(&"x".repeat(MAX_LABEL_LEN + 1)));
        assert!(!s.learn(""));
    }
}
