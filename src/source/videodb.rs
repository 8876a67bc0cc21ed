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
//! delivery, and disable them. So the relay disables only ids it wrote down itself: every id is
//! persisted (write, fsync, rename) right after its creation, before anything else happens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::http::{Client, HttpError};
use crate::config::{AlertBinding, VideoDbConfig};
use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401/403: the key is wrong, expired or lacks the permission. Fix the key where the
    /// message says it came from; the relay retries every `source.auth_retry`.
    #[error("videodb {what}: the API key was rejected (HTTP {status}{message}); check the key in {key_from}")]
    Unauthorized {
        what: String,
        status: u16,
        message: String,
        key_from: String,
    },
    #[error("videodb {what}: HTTP {status}{message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error("videodb {what}: {source}")]
    Http { what: String, source: HttpError },
    #[error("videodb {what}: unexpected response: {reason}")]
    Response { what: String, reason: String },
}

impl ApiError {
    pub fn is_auth(&self) -> bool {
        matches!(self, ApiError::Unauthorized { .. })
    }

    /// Errors that retrying within seconds cannot fix (the key, a missing stream or index):
    /// retried every `source.auth_retry`, not hammered.
    pub fn is_permanent(&self) -> bool {
        match self {
            ApiError::Unauthorized { .. } => true,
            ApiError::Status { status, .. } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            _ => false,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            ApiError::Unauthorized { status, .. } | ApiError::Status { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// The REST client for one account.
#[derive(Clone)]
pub struct Api {
    http: Client,
    base: String,
    key: crate::config::Secret,
    key_from: String,
    collection_id: String,
}

/// One alert as `GET .../alert` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedAlert {
    pub alert_id: String,
    pub event_id: String,
    pub label: String,
    pub callback_url: String,
    pub status: String,
}

impl Api {
    pub fn new(cfg: &VideoDbConfig, http: Client) -> Api {
        Api {
            http,
            base: cfg.api_url.clone(),
            key: cfg.api_key.clone(),
            key_from: cfg.api_key_from.to_string(),
            collection_id: cfg.collection_id.clone(),
        }
    }

    /// Calls `method path`, returns the response's `data`.
    async fn call(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string().into_bytes());
        let resp = self
            .http
            .request(
                method,
                &url,
                &[("x-access-token", self.key.expose())],
                body.as_deref(),
            )
            .await
            .map_err(|source| ApiError::Http {
                what: what.into(),
                source,
            })?;
        let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
        let message = parsed
            .as_ref()
            .and_then(|v| v.get("message").or_else(|| v.get("error")))
            .and_then(Value::as_str)
            .map(|m| format!(": {}", m.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        if resp.status == 401 || resp.status == 403 {
            return Err(ApiError::Unauthorized {
                what: what.into(),
                status: resp.status,
                message,
                key_from: self.key_from.clone(),
            });
        }
        if !(200..300).contains(&resp.status) {
            return Err(ApiError::Status {
                what: what.into(),
                status: resp.status,
                message,
            });
        }
        let bad = |reason: &str| ApiError::Response {
            what: what.into(),
            reason: reason.into(),
        };
        let v = parsed.ok_or_else(|| bad("body is not JSON"))?;
        if v.get("success").and_then(Value::as_bool) == Some(false) {
            return Err(ApiError::Status {
                what: what.into(),
                status: resp.status,
                message: if message.is_empty() {
                    ": success = false".into()
                } else {
                    message
                },
            });
        }
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    }

    /// `GET /collection/{id}/websocket` -> `data.websocket_url`.
    pub async fn websocket_url(&self) -> Result<String, ApiError> {
        let what = "websocket url";
        let data = self
            .call(
                what,
                "GET",
                &format!("/collection/{}/websocket", self.collection_id),
                None,
            )
            .await?;
        let url = data
            .get("websocket_url")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::Response {
                what: what.into(),
                reason: "no data.websocket_url".into(),
            })?;
        if !(url.starts_with("wss://") || url.starts_with("ws://")) {
            return Err(ApiError::Response {
                what: what.into(),
                reason: "data.websocket_url is not a ws:// or wss:// URL".into(),
            });
        }
        Ok(url.to_string())
    }

    /// `POST /rtstream/{rt}/index/{idx}/alert` -> `data.alert_id`.
    pub async fn create_alert(
        &self,
        b: &AlertBinding,
        ws_connection_id: Option<&str>,
    ) -> Result<String, ApiError> {
        let what = format!("create alert for event {}", b.event_id);
        let mut body = json!({ "event_id": b.event_id });
        if let Some(u) = &b.callback_url {
            body["callback_url"] = json!(u);
        }
        if let Some(c) = ws_connection_id {
            body["ws_connection_id"] = json!(c);
        }
        let data = self
            .call(
                &what,
                "POST",
                &format!("/rtstream/{}/index/{}/alert", b.rtstream_id, b.index_id),
                Some(body),
            )
            .await?;
        id_field(&data, "alert_id").ok_or(ApiError::Response {
            what,
            reason: "no data.alert_id".into(),
        })
    }

    /// `GET /rtstream/{rt}/index/{idx}/alert`.
    pub async fn list_alerts(
        &self,
        rtstream_id: &str,
        index_id: &str,
    ) -> Result<Vec<ListedAlert>, ApiError> {
        let what = "list alerts";
        let data = self
            .call(
                what,
                "GET",
                &format!("/rtstream/{rtstream_id}/index/{index_id}/alert"),
                None,
            )
            .await?;
        let items = data
            .get("alerts")
            .or_else(|| data.get("items"))
            .unwrap_or(&data)
            .as_array()
            .ok_or_else(|| ApiError::Response {
                what: what.into(),
                reason: "data holds no alert list".into(),
            })?;
        let text = |v: &Value, k: &str| id_field(v, k).unwrap_or_default();
        Ok(items
            .iter()
            .map(|a| ListedAlert {
                alert_id: text(a, "alert_id"),
                event_id: text(a, "event_id"),
                label: text(a, "label"),
                callback_url: text(a, "callback_url"),
                status: text(a, "status"),
            })
            .collect())
    }

    /// `PATCH /rtstream/{rt}/index/{idx}/alert/{id}/status` with `{"action"}`.
    pub async fn set_alert_enabled(
        &self,
        rtstream_id: &str,
        index_id: &str,
        alert_id: &str,
        enabled: bool,
    ) -> Result<(), ApiError> {
        let action = if enabled { "enable" } else { "disable" };
        self.call(
            &format!("{action} alert {alert_id}"),
            "PATCH",
            &format!("/rtstream/{rtstream_id}/index/{index_id}/alert/{alert_id}/status"),
            Some(json!({ "action": action })),
        )
        .await
        .map(|_| ())
    }

    /// `POST /rtstream/event` -> `data.event_id`.
    pub async fn create_event(&self, label: &str, prompt: &str) -> Result<String, ApiError> {
        let what = "create event";
        let data = self
            .call(
                what,
                "POST",
                "/rtstream/event",
                Some(json!({ "event_prompt": prompt, "label": label })),
            )
            .await?;
        id_field(&data, "event_id").ok_or(ApiError::Response {
            what: what.into(),
            reason: "no data.event_id".into(),
        })
    }
}

fn id_field(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The state file.

/// An alert this relay created and has not yet seen disabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnedAlert {
    pub rtstream_id: String,
    pub index_id: String,
    pub event_id: String,
    pub alert_id: String,
    pub connection_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    alerts: Vec<OwnedAlert>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the alert state file {path}: {source}")]
pub struct StateError {
    path: PathBuf,
    source: std::io::Error,
}

/// The ids this relay created, as persisted. A missing file is an empty list; an unreadable one
/// is set aside as `*.corrupt` (its alerts can then only be disabled by hand) and logged.
pub fn load_owned(path: &Path) -> Vec<OwnedAlert> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            log::error!("videodb: cannot read {}: {e}", path.display());
            return Vec::new();
        }
    };
    match serde_json::from_slice::<StateFile>(&text) {
        Ok(s) => s.alerts,
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            let _ = std::fs::rename(path, &aside);
            log::error!(
                "videodb: {} is not valid ({e}); moved to {}; alerts it listed must be disabled by hand (alert-relay alerts list)",
                path.display(),
                aside.display()
            );
            Vec::new()
        }
    }
}

/// Writes the list atomically: temp file, fsync, rename.
pub fn save_owned(path: &Path, alerts: &[OwnedAlert]) -> Result<(), StateError> {
    use std::io::Write;
    let err = |source| StateError {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(&StateFile {
        alerts: alerts.to_vec(),
    })
    .unwrap_or_default();
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Binds every configured alert to `connection_id`, then disables the alerts this relay created
/// for earlier connections. Idempotent: a retry after a failure skips bindings already made
/// for this connection, and a failed disable stays in the state file for the next round.
pub async fn bind(
    api: &Api,
    bindings: &[AlertBinding],
    state_file: &Path,
    connection_id: &str,
    stats: &Stats,
) -> Result<(), ApiError> {
    let mut owned = load_owned(state_file);
    for b in bindings {
        let done = owned.iter().any(|o| {
            o.connection_id == connection_id
                && o.rtstream_id == b.rtstream_id
                && o.index_id == b.index_id
                && o.event_id == b.event_id
        });
        if done {
            continue;
        }
        let alert_id = api.create_alert(b, Some(connection_id)).await?;
        stats.inc(&stats.videodb_alerts_created);
        log::info!(
            "videodb: alert {alert_id} binds event {} on {}/{} to connection {connection_id}",
            b.event_id,
            b.rtstream_id,
            b.index_id
        );
        owned.push(OwnedAlert {
            rtstream_id: b.rtstream_id.clone(),
            index_id: b.index_id.clone(),
            event_id: b.event_id.clone(),
            alert_id,
            connection_id: connection_id.to_string(),
        });
        persist(state_file, &owned, stats).await;
    }
    disable_owned(
        api,
        state_file,
        &mut owned,
        |o| o.connection_id != connection_id,
        stats,
    )
    .await
}

/// Disables every owned alert (clean shutdown: the socket they are bound to is closing).
pub async fn disable_all(api: &Api, state_file: &Path, stats: &Stats) -> Result<(), ApiError> {
    let mut owned = load_owned(state_file);
    disable_owned(api, state_file, &mut owned, |_| true, stats).await
}

async fn disable_owned(
    api: &Api,
    state_file: &Path,
    owned: &mut Vec<OwnedAlert>,
    which: impl Fn(&OwnedAlert) -> bool,
    stats: &Stats,
) -> Result<(), ApiError> {
    let mut first_error = None;
    let old: Vec<OwnedAlert> = owned.iter().filter(|o| which(o)).cloned().collect();
    for o in old {
        match api
            .set_alert_enabled(&o.rtstream_id, &o.index_id, &o.alert_id, false)
            .await
        {
            // 404: already deleted upstream; nothing left to disable.
            Ok(()) | Err(ApiError::Status { status: 404, .. }) => {
                stats.inc(&stats.videodb_alerts_disabled);
                log::info!(
                    "videodb: disabled alert {} (was bound to connection {})",
                    o.alert_id,
                    o.connection_id
                );
                owned.retain(|x| x != &o);
                persist(state_file, owned, stats).await;
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

/// Saves off the runtime thread: an SD card's fsync can take long enough to delay socket
/// reads and GPIO timing.
async fn persist(path: &Path, owned: &[OwnedAlert], stats: &Stats) {
    let (p, o) = (path.to_owned(), owned.to_vec());
    let r = tokio::task::spawn_blocking(move || save_owned(&p, &o)).await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => stats.warn_limited("videodb_state", format_args!("videodb: {e}")),
        Err(e) => stats.warn_limited("videodb_state", format_args!("videodb: state file: {e}")),
    }
}

/// How long a clean shutdown waits for the relay's alerts to be disabled.
pub const SHUTDOWN_DISABLE_GRACE: Duration = Duration::from_secs(3);
