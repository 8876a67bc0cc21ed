//! VideoDB's REST side (SPEC §2): the pre-authenticated WebSocket URL, alerts bound to one
//! socket's `connection_id`, events; and the small state file that remembers which alerts this
//! relay created, so that they never pile up across reconnects and restarts.
//!
//! Owns: the API key on the wire (header `x-access-token`, never in a log line or an error),
//! the alert-id state file. Never does: WebSocket I/O, retries (callers decide when to retry:
//! [`ApiError::is_permanent`] tells them whether retrying soon can help).
//!
//! # Why a state file and not `GET .../alert`
//! The list endpoint returns `alert_id, event_id, label, callback_url, status`, but not the
//! `ws_connection_id` an alert is bound to. Matching on `event_id` + `callback_url` would also
//! catch alerts an installer created by hand (`alert-relay alerts create`) for webhook
//! delivery, and disable them. So the relay removes only ids it wrote down itself: every id is
//! persisted (write, fsync, rename) right after its creation, before anything else happens.
//! The same file remembers which kind each bound index is (v1 `/index/`, v2 `/indexes/`), as
//! the service answered [`Api::index_kind`].
//!
//! Every request mirrors VideoDB's Python SDK 0.5.1 (PyPI `videodb`); the comments cite the
//! SDK line each one follows. `.ci/videodb-sdk.sh` proves the stand-in the tests use against
//! that SDK.
//!
//! Here: binding the configured alerts to each `connection_id` and removing the relay's own;
//! the REST calls are in `api.rs`, the state file in `state.rs`.

mod api;
mod state;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use api::{Api, ApiError, IndexKind, IndexRef, ListedAlert, ListedEvent, CLIENT_HEADER};
pub use state::{load_state, save_state, KnownIndex, OwnedAlert, State, StateError};

use crate::config::AlertBinding;
use crate::stats::Stats;
use state::persist;

/// The index with its kind: remembered, or asked from the service and remembered.
async fn index_of(
    api: &Api,
    state: &mut State,
    state_file: &Path,
    rtstream_id: &str,
    index_id: &str,
    stats: &Stats,
) -> Result<IndexRef, ApiError> {
    if let Some(kind) = state.kind_of(rtstream_id, index_id) {
        return Ok(IndexRef {
            rtstream_id: rtstream_id.into(),
            index_id: index_id.into(),
            kind,
        });
    }
    let index = api.resolve(rtstream_id, index_id).await?;
    log::info!(
        "videodb: index {index_id} of stream {rtstream_id} is a {} index",
        index.kind.as_str()
    );
    state.remember(&index);
    persist(state_file, state, stats).await;
    Ok(index)
}

/// Binds every configured alert to `connection_id`, then removes the alerts this relay created
/// for earlier connections. Idempotent: a retry after a failure skips bindings already made
/// for this connection, and a failed removal stays in the state file for the next round.
pub async fn bind(
    api: &Api,
    bindings: &[AlertBinding],
    state_file: &Path,
    connection_id: &str,
    stats: &Stats,
) -> Result<(), ApiError> {
    let mut state = load_state(state_file);
    for b in bindings {
        let done = state.alerts.iter().any(|o| {
            o.connection_id == connection_id
                && o.rtstream_id == b.rtstream_id
                && o.index_id == b.index_id
                && o.event_id == b.event_id
        });
        if done {
            continue;
        }
        let remembered = state.kind_of(&b.rtstream_id, &b.index_id).is_some();
        let mut index = index_of(
            api,
            &mut state,
            state_file,
            &b.rtstream_id,
            &b.index_id,
            stats,
        )
        .await?;
        let create = |index: IndexRef| async move {
            api.create_alert(
                &index,
                &b.event_id,
                b.callback_url.as_deref(),
                Some(connection_id),
            )
            .await
        };
        let alert_id = match create(index.clone()).await {
            // A remembered kind may be stale (the index was recreated the other way): ask again.
            Err(ApiError::Status { status: 404, .. }) if remembered => {
                let fresh = api.resolve(&b.rtstream_id, &b.index_id).await?;
                state.remember(&fresh);
                persist(state_file, &state, stats).await;
                index = fresh;
                create(index.clone()).await?
            }
            r => r?,
        };
        stats.inc(&stats.videodb_alerts_created);
        log::info!(
            "videodb: alert {alert_id} binds event {} on {}/{} ({}) to connection {connection_id}",
            b.event_id,
            b.rtstream_id,
            b.index_id,
            index.kind.as_str()
        );
        state.alerts.push(OwnedAlert {
            rtstream_id: b.rtstream_id.clone(),
            index_id: b.index_id.clone(),
            kind: index.kind,
            event_id: b.event_id.clone(),
            alert_id,
            connection_id: connection_id.to_string(),
        });
        persist(state_file, &state, stats).await;
    }
    remove_owned(
        api,
        state_file,
        &mut state,
        |o| o.connection_id != connection_id,
        stats,
    )
    .await
}

/// Removes every owned alert (clean shutdown: the socket they are bound to is closing).
pub async fn disable_all(api: &Api, state_file: &Path, stats: &Stats) -> Result<(), ApiError> {
    let mut state = load_state(state_file);
    remove_owned(api, state_file, &mut state, |_| true, stats).await
}

/// How [`remove_alert`] got rid of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Deleted,
    /// The service has no delete for it (404/405 to the DELETE): disabled instead.
    Disabled,
    /// Neither delete nor disable found it: already gone upstream.
    Gone,
}

/// Deletes an alert where the service allows it, else disables it.
pub async fn remove_alert(
    api: &Api,
    index: &IndexRef,
    alert_id: &str,
) -> Result<Removed, ApiError> {
    let mut delete_answer = None;
    if !api.delete_unsupported.load(Ordering::Relaxed) {
        match api.delete_alert(index, alert_id).await {
            Ok(()) => return Ok(Removed::Deleted),
            Err(ApiError::Status { status: 405, .. }) => {
                api.delete_unsupported.store(true, Ordering::Relaxed);
            }
            Err(ApiError::Status { status: 404, .. }) => delete_answer = Some(404),
            Err(e) => return Err(e),
        }
    }
    match api.set_alert_enabled(index, alert_id, false).await {
        Ok(()) => {
            if delete_answer == Some(404) {
                // The alert exists, so the 404 was for the route: no DELETE on this service.
                api.delete_unsupported.store(true, Ordering::Relaxed);
            }
            Ok(Removed::Disabled)
        }
        Err(ApiError::Status { status: 404, .. }) => Ok(Removed::Gone),
        Err(e) => Err(e),
    }
}

async fn remove_owned(
    api: &Api,
    state_file: &Path,
    state: &mut State,
    which: impl Fn(&OwnedAlert) -> bool,
    stats: &Stats,
) -> Result<(), ApiError> {
    let mut first_error = None;
    let old: Vec<OwnedAlert> = state.alerts.iter().filter(|o| which(o)).cloned().collect();
    for o in old {
        match remove_alert(api, &o.index(), &o.alert_id).await {
            Ok(how) => {
                stats.inc(&stats.videodb_alerts_disabled);
                log::info!(
                    "videodb: {} alert {} (was bound to connection {})",
                    match how {
                        Removed::Deleted => "deleted",
                        Removed::Disabled => "disabled",
                        Removed::Gone => "forgot (already gone upstream)",
                    },
                    o.alert_id,
                    o.connection_id
                );
                state.alerts.retain(|x| x != &o);
                persist(state_file, state, stats).await;
            }
            Err(e) if e.is_auth() => return Err(e),
            Err(e) => {
                log::debug!(
                    "videodb: {e} (status {:?}); kept for the next round",
                    e.status()
                );
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// How long a clean shutdown waits for the relay's alerts to be disabled.
pub const SHUTDOWN_DISABLE_GRACE: Duration = Duration::from_secs(3);
