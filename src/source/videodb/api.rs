//! VideoDB's REST calls (SPEC §2), each mirroring VideoDB's Python SDK 0.5.1 (the comments
//! cite the SDK line it follows): the pre-authenticated WebSocket URL, which kind an index is,
//! alerts (create, list, enable/disable, delete) and events. The API key travels in the
//! `x-access-token` header only, never in a log line or an error.
//!
//! Never does: retries (callers decide; [`ApiError::is_permanent`] tells them whether retrying
//! soon can help), or touch the state file.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::VideoDbConfig;
use crate::source::rest::{self, Client, HttpError};

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

    pub(super) fn status(&self) -> Option<u16> {
        match self {
            ApiError::Unauthorized { status, .. } | ApiError::Status { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// Which API made an index, and so which routes reach its alerts. Found out from the service
/// ([`Api::index_kind`]), never from the id's shape, and remembered in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// `rtstream.index_scenes()` etc.: `RTStreamSceneIndex`, alerts under
    /// `/rtstream/{rt}/index/{id}/alert` (SDK 0.5.1 `rtstream.py` line 333).
    V1,
    /// `rtstream.index()` (SDK >= 0.5.0): `RTStreamIndex`, alerts under
    /// `/rtstream/{rt}/indexes/{id}/alert` (SDK 0.5.1 `rtstream.py` line 583).
    V2,
}

impl IndexKind {
    fn segment(self) -> &'static str {
        match self {
            IndexKind::V1 => "index",
            IndexKind::V2 => "indexes",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::V1 => "v1",
            IndexKind::V2 => "v2",
        }
    }
}

/// One index of one stream, with the kind the service said it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRef {
    pub rtstream_id: String,
    pub index_id: String,
    pub kind: IndexKind,
}

impl IndexRef {
    fn alerts_path(&self) -> String {
        format!(
            "/rtstream/{}/{}/{}/alert",
            self.rtstream_id,
            self.kind.segment(),
            self.index_id
        )
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
    /// Set once the service showed it has no DELETE for alerts (405, or a 404 to a delete of
    /// an alert that a disable then found): later clean-ups only disable.
    pub(super) delete_unsupported: Arc<AtomicBool>,
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

/// One event as `GET /rtstream/event` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedEvent {
    pub event_id: String,
    pub label: String,
    pub prompt: String,
}

/// The `x-videodb-client` header: the SDK sends `videodb-python/{version}` (SDK 0.5.1
/// `_utils/_http_client.py` line 60); the relay names itself the same way.
pub const CLIENT_HEADER: &str = concat!("alert-relay/", env!("CARGO_PKG_VERSION"));

/// What the relay reads of an error reply (`{"success": false, "message": ...}`, SDK
/// `_http_client.py` lines 112 and 210-216). Unknown fields, `data` too, are skipped unparsed.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

/// A list reply parsed into the few fields the relay shows, never into a JSON tree: a 16 MiB
/// list costs its bytes plus its ids, not ten times its size.
#[derive(Deserialize)]
struct ListReply<T> {
    #[serde(default = "Option::default")]
    data: Option<ListData<T>>,
}

// Not an untagged enum: serde buffers those into a tree first, which is what this avoids.
#[derive(Deserialize)]
struct ListData<T> {
    // `alert_data.get("alerts", [])` (rtstream.py line 347), `event_data.get("events", [])`
    // (client.py line 189); `items` was seen in older answers.
    #[serde(alias = "items", alias = "events", default = "Vec::new")]
    alerts: Vec<T>,
}

/// A scalar field that may come as a string or a number; anything else reads as empty.
#[derive(Default)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        Ok(Text(match Value::deserialize(d)? {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        }))
    }
}

#[derive(Deserialize)]
struct RawAlert {
    #[serde(default)]
    alert_id: Text,
    #[serde(default)]
    event_id: Text,
    #[serde(default)]
    label: Text,
    #[serde(default)]
    callback_url: Text,
    #[serde(default)]
    status: Text,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    event_id: Text,
    #[serde(default)]
    label: Text,
    #[serde(default)]
    event_prompt: Text,
}

impl Api {
    pub fn new(cfg: &VideoDbConfig, http: Client) -> Api {
        Api {
            http,
            base: cfg.api_url.clone(),
            key: cfg.api_key.clone(),
            key_from: cfg.api_key_from.to_string(),
            collection_id: cfg.collection_id.clone(),
            delete_unsupported: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sends `method path` with the SDK's headers (`x-access-token`, `x-videodb-client`:
    /// `_http_client.py` lines 59-60); returns the body of a 2xx reply whose `success` is not
    /// false.
    async fn send(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        max_body: usize,
    ) -> Result<Vec<u8>, ApiError> {
        let url = format!("{}{path}", self.base);
        let body = body.map(|b| b.to_string().into_bytes());
        let resp = self
            .http
            .request_limited(
                method,
                &url,
                &[
                    ("x-access-token", self.key.expose()),
                    ("x-videodb-client", CLIENT_HEADER),
                ],
                body.as_deref(),
                max_body,
            )
            .await
            .map_err(|source| ApiError::Http {
                what: what.into(),
                source,
            })?;
        let reply: Option<Reply> = serde_json::from_slice(&resp.body).ok();
        let message = reply
            .as_ref()
            .and_then(|r| r.message.as_ref().or(r.error.as_ref()))
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
        let Some(reply) = reply else {
            return Err(ApiError::Response {
                what: what.into(),
                reason: "body is not JSON".into(),
            });
        };
        if reply.success == Some(false) {
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
        Ok(resp.body)
    }

    /// Calls `method path`, returns the response's `data`.
    async fn call(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let bytes = self
            .send(what, method, path, body, rest::MAX_BODY_BYTES)
            .await?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
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

    /// Asks the service which kind `index_id` is: `GET /rtstream/{rt}/indexes/{id}` answers for
    /// a v2 index (`RTStream.get_index`, rtstream.py line 1204), `GET /rtstream/{rt}/index/{id}`
    /// for a v1 one (`RTStream.get_scene_index`, rtstream.py line 1082). Neither: the v1 error
    /// (a 404 for an id that exists nowhere).
    pub async fn index_kind(
        &self,
        rtstream_id: &str,
        index_id: &str,
    ) -> Result<IndexKind, ApiError> {
        let what = format!("look up index {index_id} of stream {rtstream_id}");
        match self
            .call(
                &what,
                "GET",
                &format!("/rtstream/{rtstream_id}/indexes/{index_id}"),
                None,
            )
            .await
        {
            Ok(_) => return Ok(IndexKind::V2),
            Err(e) if e.is_permanent() && !e.is_auth() => {}
            Err(e) => return Err(e),
        }
        self.call(
            &what,
            "GET",
            &format!("/rtstream/{rtstream_id}/index/{index_id}"),
            None,
        )
        .await
        .map(|_| IndexKind::V1)
    }

    /// The index with its kind, asked from the service.
    pub async fn resolve(&self, rtstream_id: &str, index_id: &str) -> Result<IndexRef, ApiError> {
        Ok(IndexRef {
            rtstream_id: rtstream_id.into(),
            index_id: index_id.into(),
            kind: self.index_kind(rtstream_id, index_id).await?,
        })
    }

    /// `POST .../alert` -> `data.alert_id`. The body always carries `callback_url`, `""` for
    /// WebSocket-only (the SDK always sends the key: rtstream.py lines 328 and 579; VideoDB's
    /// docs call it required); `ws_connection_id` only when given (rtstream.py lines 330-331).
    pub async fn create_alert(
        &self,
        index: &IndexRef,
        event_id: &str,
        callback_url: Option<&str>,
        ws_connection_id: Option<&str>,
    ) -> Result<String, ApiError> {
        let what = format!("create alert for event {event_id}");
        let mut body = json!({ "event_id": event_id, "callback_url": callback_url.unwrap_or("") });
        if let Some(c) = ws_connection_id {
            body["ws_connection_id"] = json!(c);
        }
        let data = self
            .call(&what, "POST", &index.alerts_path(), Some(body))
            .await?;
        id_field(&data, "alert_id").ok_or(ApiError::Response {
            what,
            reason: "no data.alert_id".into(),
        })
    }

    /// `GET .../alert` (rtstream.py lines 345 and 595), up to
    /// [`rest::MAX_LIST_BODY_BYTES`].
    pub async fn list_alerts(&self, index: &IndexRef) -> Result<Vec<ListedAlert>, ApiError> {
        let what = "list alerts";
        let bytes = self
            .send(
                what,
                "GET",
                &index.alerts_path(),
                None,
                rest::MAX_LIST_BODY_BYTES,
            )
            .await?;
        let items = parse_list::<RawAlert>(what, &bytes)?;
        Ok(items
            .into_iter()
            .map(|a| ListedAlert {
                alert_id: a.alert_id.0,
                event_id: a.event_id.0,
                label: a.label.0,
                callback_url: a.callback_url.0,
                status: a.status.0,
            })
            .collect())
    }

    /// `PATCH .../alert/{id}/status` with `{"action": "enable"|"disable"}` (rtstream.py lines
    /// 357-358, 369-370, 602-603, 609-610).
    pub async fn set_alert_enabled(
        &self,
        index: &IndexRef,
        alert_id: &str,
        enabled: bool,
    ) -> Result<(), ApiError> {
        let action = if enabled { "enable" } else { "disable" };
        self.call(
            &format!("{action} alert {alert_id}"),
            "PATCH",
            &format!("{}/{alert_id}/status", index.alerts_path()),
            Some(json!({ "action": action })),
        )
        .await
        .map(|_| ())
    }

    /// `DELETE .../alert/{id}`. The SDK 0.5.1 has no delete (only the seed's docs show
    /// `delete_alert`), so a service may answer 404 or 405: callers fall back to disabling.
    pub async fn delete_alert(&self, index: &IndexRef, alert_id: &str) -> Result<(), ApiError> {
        self.call(
            &format!("delete alert {alert_id}"),
            "DELETE",
            &format!("{}/{alert_id}", index.alerts_path()),
            None,
        )
        .await
        .map(|_| ())
    }

    /// `POST /rtstream/event` `{"event_prompt", "label"}` -> `data.event_id` (client.py lines
    /// 175-180).
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

    /// `GET /rtstream/event` -> `data.events` (client.py lines 188-189).
    pub async fn list_events(&self) -> Result<Vec<ListedEvent>, ApiError> {
        let what = "list events";
        let bytes = self
            .send(
                what,
                "GET",
                "/rtstream/event",
                None,
                rest::MAX_LIST_BODY_BYTES,
            )
            .await?;
        Ok(parse_list::<RawEvent>(what, &bytes)?
            .into_iter()
            .map(|e| ListedEvent {
                event_id: e.event_id.0,
                label: e.label.0,
                prompt: e.event_prompt.0,
            })
            .collect())
    }
}

fn parse_list<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<Vec<T>, ApiError> {
    let reply: ListReply<T> = serde_json::from_slice(bytes).map_err(|e| ApiError::Response {
        what: what.into(),
        reason: format!("data holds no list: {e}"),
    })?;
    Ok(match reply.data {
        Some(ListData { alerts }) => alerts,
        // `(alert_data or {}).get("alerts", [])` (rtstream.py line 597): no data, no alerts.
        None => Vec::new(),
    })
}

fn id_field(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
