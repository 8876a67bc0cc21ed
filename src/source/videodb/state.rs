//! The state file: which alerts this relay created (so that only those are ever removed) and
//! which kind each bound index is. Written atomically (temp file, fsync, rename), off the
//! runtime thread.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::api::{IndexKind, IndexRef};
use crate::stats::Stats;

/// An alert this relay created and has not yet seen deleted or disabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnedAlert {
    pub rtstream_id: String,
    pub index_id: String,
    /// Files written before v2 indexes were known hold only v1 alerts.
    #[serde(default = "v1")]
    pub kind: IndexKind,
    pub event_id: String,
    pub alert_id: String,
    pub connection_id: String,
}

fn v1() -> IndexKind {
    IndexKind::V1
}

impl OwnedAlert {
    pub(super) fn index(&self) -> IndexRef {
        IndexRef {
            rtstream_id: self.rtstream_id.clone(),
            index_id: self.index_id.clone(),
            kind: self.kind,
        }
    }
}

/// An index whose kind the service told us.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownIndex {
    pub rtstream_id: String,
    pub index_id: String,
    pub kind: IndexKind,
}

/// The state file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub alerts: Vec<OwnedAlert>,
    #[serde(default)]
    pub indexes: Vec<KnownIndex>,
}

impl State {
    /// The remembered kind of an index, if any.
    pub fn kind_of(&self, rtstream_id: &str, index_id: &str) -> Option<IndexKind> {
        self.indexes
            .iter()
            .find(|k| k.rtstream_id == rtstream_id && k.index_id == index_id)
            .map(|k| k.kind)
    }

    pub(super) fn remember(&mut self, index: &IndexRef) {
        self.indexes
            .retain(|k| !(k.rtstream_id == index.rtstream_id && k.index_id == index.index_id));
        self.indexes.push(KnownIndex {
            rtstream_id: index.rtstream_id.clone(),
            index_id: index.index_id.clone(),
            kind: index.kind,
        });
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the alert state file {path}: {source}")]
pub struct StateError {
    path: PathBuf,
    source: std::io::Error,
}

/// The state as persisted. A missing file is an empty state; an unreadable one is set aside as
/// `*.corrupt` (its alerts can then only be removed by hand) and logged.
pub fn load_state(path: &Path) -> State {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return State::default(),
        Err(e) => {
            log::error!("videodb: cannot read {}: {e}", path.display());
            return State::default();
        }
    };
    match serde_json::from_slice::<State>(&text) {
        Ok(s) => s,
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            let _ = std::fs::rename(path, &aside);
            log::error!(
                "videodb: {} is not valid ({e}); moved to {}; alerts it listed must be disabled by hand (alert-relay alerts list)",
                path.display(),
                aside.display()
            );
            State::default()
        }
    }
}

/// Writes the state atomically: temp file, fsync, rename.
pub fn save_state(path: &Path, state: &State) -> Result<(), StateError> {
    use std::io::Write;
    let err = |source| StateError {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(state).unwrap_or_default();
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Saves off the runtime thread: an SD card's fsync can take long enough to delay socket
/// reads and GPIO timing.
pub(super) async fn persist(path: &Path, state: &State, stats: &Stats) {
    let p = path.to_owned();
    let s = State {
        alerts: state.alerts.clone(),
        indexes: state.indexes.clone(),
    };
    let r = tokio::task::spawn_blocking(move || save_state(&p, &s)).await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => stats.warn_limited("videodb_state", format_args!("videodb: {e}")),
        Err(e) => stats.warn_limited("videodb_state", format_args!("videodb: state file: {e}")),
    }
}
