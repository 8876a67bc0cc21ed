//! The optional HTTP listener (`[http] listen`): `POST /webhook`, `GET /healthz`, `GET /metrics`.
//!
//! Owns: the listening socket, connection limits and timeouts, routing, status codes, and the
//! renderings of health (JSON) and metrics (Prometheus text). Never does: decide what an alert
//! is ([`crate::webhook`]), dedup or durability ([`crate::ingest`]), or touch the broker.
//!
//! Status codes of `POST /webhook`: 200 once the alert (or the copy seen first) is safe: synced
//! in the queue or acknowledged by the broker, whichever came first; 400 invalid JSON or missing fields (the body says which); 401 missing or wrong
//! token; 404 when no token is configured (the webhook is off); 408 body not sent within
//! `http.request_timeout`; 413 body above `http.max_body_bytes`; 503 when the queue refuses
//! (full with `drop_newest`, disk error, writer stalled): retry later.
//!
//! Hostile clients: at most `http.max_connections` connections (more are answered 503 and
//! closed), headers within [`MAX_HEADER_BYTES`] / [`MAX_HEADERS`], `http.request_timeout` to
//! send headers (also the keep-alive idle limit) and again for a body,
//! [`MAX_REQUESTS_PER_CONNECTION`] requests and [`MAX_CONNECTION_LIFETIME`] per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::alert::Via;
use crate::config::HttpConfig;
use crate::ingest::{Accepted, Ingest};
use crate::queue::QueueHandle;
use crate::stats::{queue_json, Stats};
use crate::webhook;

/// Request line plus headers, at most. Webhook senders and scrapers send a few hundred bytes;
/// a larger head gets 431.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// hyper's read buffer per connection (its minimum is 8 KiB); bounds memory per connection.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Header fields per request; more gets 431.
pub const MAX_HEADERS: usize = 32;
/// Requests served on one keep-alive connection before it is closed (`Connection: close`).
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 100;
/// A connection is closed gracefully after this long whatever it does, so that a client that
/// trickles valid requests cannot hold a connection slot forever.
pub const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long open connections get to finish at shutdown before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Queue fill (depth bytes / `queue.max_bytes`) from which `/healthz` reports unhealthy: the
/// broker has been away long enough that drops are near.
pub const HEALTH_QUEUE_FILL_LIMIT: f64 = 0.9;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Another process holds the port, or a privileged port without the capability.
    #[error("cannot listen on {addr} (http.listen): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What request handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The `[http]` section, replaced by a config reload: the token, `max_body_bytes` and
    /// `request_timeout` apply from the next request; `listen` and `max_connections` need a
    /// restart (the listener and its slots are made once).
    pub cfg: watch::Receiver<HttpConfig>,
    pub ingest: Ingest,
    pub queue: QueueHandle,
    pub queue_max_bytes: u64,
    pub stats: Arc<Stats>,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves connections on `listener` until `shutdown` turns true, then gives open connections
/// [`SHUTDOWN_GRACE`] to finish and cuts the rest. Returns once every connection task (and so
/// every queue handle it held) is gone.
pub async fn run(listener: TcpListener, state: HttpState, mut shutdown: watch::Receiver<bool>) {
    let max_connections = state.cfg.borrow().max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    let state = Arc::new(state);
    if let Ok(addr) = listener.local_addr() {
        log::info!("http: listening on {addr}");
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        state.stats.warn_limited("http_accept", format_args!("http: accept failed: {e}"));
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    let s = &state.stats;
                    s.inc(&s.http_connections_refused);
                    s.warn_limited("http_busy", format_args!(
                        "http: {} connections open (http.max_connections); refusing more",
                        max_connections));
                    // Best effort, never waits: a full socket buffer just gets the close.
                    let _ = tcp.try_write(BUSY_RESPONSE);
                    continue;
                };
                let state = state.clone();
                let stop = shutdown.clone();
                conns.spawn(async move {
                    serve_connection(tcp, state, stop).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Written straight to a refused socket; hyper never sees that connection.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 32\r\nretry-after: 1\r\nconnection: close\r\n\r\n{\"error\":\"too many connections\"}";

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    state: Arc<HttpState>,
    mut stop: watch::Receiver<bool>,
) {
    let request_timeout = state.cfg.borrow().request_timeout;
    let served = Arc::new(AtomicU32::new(0));
    let st = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let state = st.clone();
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let mut resp = route(req, &state).await;
            if n >= MAX_REQUESTS_PER_CONNECTION {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(request_timeout)
        .max_buf_size(READ_BUFFER_BYTES)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(MAX_CONNECTION_LIFETIME);
    tokio::pin!(lifetime);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                log::debug!("http: connection ended: {e}");
            }
            return;
        }
        _ = stop.changed() => {}
        _ = &mut lifetime => {}
    }
    // Finish the request in progress, if any, then close.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(request_timeout, conn).await;
}

async fn route(req: Request<Incoming>, state: &HttpState) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/webhook") => handle_webhook(req, state).await,
        (&Method::GET | &Method::HEAD, "/healthz") => healthz(state),
        (&Method::GET | &Method::HEAD, "/metrics") => metrics(state),
        (_, "/webhook") => method_not_allowed("POST"),
        (_, "/healthz" | "/metrics") => method_not_allowed("GET, HEAD"),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint (POST /webhook, GET /healthz, GET /metrics)",
        ),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": reason.to_string() }))
}

/// An error answered before the body was read: close, so that hyper does not read (or wait
/// for) a body we refused.
fn error_close(status: StatusCode, reason: impl std::fmt::Display) -> Response<Full<Bytes>> {
    let mut r = error(status, reason);
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error_close(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

async fn handle_webhook(req: Request<Incoming>, state: &HttpState) -> Response<Full<Bytes>> {
    let cfg = state.cfg.borrow().clone();
    let s = &state.stats;
    s.inc(&s.webhook_requests);
    let reject = |status: StatusCode, reason: &dyn std::fmt::Display, close: bool| {
        s.inc(&s.webhook_rejected);
        s.warn_limited(
            "webhook_rejected",
            format_args!("webhook: {} {reason}", status.as_u16()),
        );
        if close {
            error_close(status, reason)
        } else {
            error(status, reason)
        }
    };
    let Some(expected) = &cfg.token else {
        return reject(
            StatusCode::NOT_FOUND,
            &"the webhook is off: set http.token_env or http.token_file",
            true,
        );
    };
    let from_header = req
        .headers()
        .get(webhook::TOKEN_HEADER)
        .map(|v| v.as_bytes().to_vec());
    let got = from_header.or_else(|| req.uri().query().and_then(webhook::token_from_query));
    let authorised = got
        .as_deref()
        .is_some_and(|g| webhook::token_matches(expected.expose().as_bytes(), g));
    if !authorised {
        return reject(
            StatusCode::UNAUTHORIZED,
            &"missing or wrong token (header X-Relay-Token or query parameter token)",
            true,
        );
    }
    let max = cfg.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format_args!("body above {max} bytes (http.max_body_bytes)"),
            true,
        );
    }
    let body = Limited::new(req.into_body(), max);
    let body = match tokio::time::timeout(cfg.request_timeout, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format_args!("body above {max} bytes (http.max_body_bytes)"),
                true,
            )
        }
        Ok(Err(e)) => {
            return reject(
                StatusCode::BAD_REQUEST,
                &format_args!("cannot read the body: {e}"),
                true,
            )
        }
        Err(_) => {
            return reject(
                StatusCode::REQUEST_TIMEOUT,
                &format_args!(
                    "body not received within {:?} (http.request_timeout)",
                    cfg.request_timeout
                ),
                true,
            )
        }
    };
    let alert = match webhook::parse_payload(&body) {
        Ok(a) => a,
        Err(e) => {
            s.inc(&s.alerts_invalid);
            return reject(StatusCode::BAD_REQUEST, &e, false);
        }
    };
    match state.ingest.accept_durable(alert, Via::Webhook).await {
        Ok(Accepted::Durable(seq)) => {
            json_response(StatusCode::OK, &json!({"status": "queued", "seq": seq}))
        }
        Ok(Accepted::Duplicate(seq)) => {
            json_response(StatusCode::OK, &json!({"status": "duplicate", "seq": seq}))
        }
        Err(e) => {
            s.inc(&s.webhook_refused);
            s.warn_limited("webhook_refused", format_args!("webhook: 503 {e}"));
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &e);
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

/// The health document and whether it is healthy.
pub fn health(snapshot: &Value, queue_max_bytes: u64) -> (bool, Value) {
    let flag = |k: &str| snapshot.get(k).and_then(Value::as_bool).unwrap_or(false);
    let source = flag("source_connected");
    let broker = flag("broker_connected");
    let depth_bytes = snapshot
        .pointer("/queue/depth_bytes")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let depth_records = snapshot
        .pointer("/queue/depth_records")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let fill = depth_bytes as f64 / queue_max_bytes.max(1) as f64;
    let mut reasons = Vec::new();
    if !source {
        reasons.push("source disconnected".to_string());
    }
    if !broker {
        reasons.push("broker disconnected".to_string());
    }
    if fill >= HEALTH_QUEUE_FILL_LIMIT {
        reasons.push(format!(
            "queue {:.0}% full (limit {:.0}%)",
            fill * 100.0,
            HEALTH_QUEUE_FILL_LIMIT * 100.0
        ));
    }
    if let Some(e) = snapshot
        .pointer("/queue/append_error")
        .and_then(Value::as_str)
    {
        reasons.push(format!("queue appends failing: {e}"));
    }
    let healthy = reasons.is_empty();
    let doc = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "reasons": reasons,
        "source_connected": source,
        "broker_connected": broker,
        "clock_synced": flag("clock_synced"),
        "queue": {
            "depth_records": depth_records,
            "depth_bytes": depth_bytes,
            "max_bytes": queue_max_bytes,
            "fill": (fill * 10_000.0).round() / 10_000.0,
        },
    });
    (healthy, doc)
}

fn snapshot(state: &HttpState) -> Value {
    let now = crate::clock::unix_micros(std::time::SystemTime::now());
    let q = queue_json(&state.queue.lock().snapshot(now));
    state.stats.snapshot(Some(q))
}

fn healthz(state: &HttpState) -> Response<Full<Bytes>> {
    let (healthy, doc) = health(&snapshot(state), state.queue_max_bytes);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &doc)
}

fn metrics(state: &HttpState) -> Response<Full<Bytes>> {
    let text = prometheus_text(&snapshot(state));
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Metric name prefix.
pub const METRIC_PREFIX: &str = "alert_relay_";

/// Snapshot fields (flattened with `_`) that are gauges; every other number is a counter.
const GAUGES: &[(&str, &str)] = &[
    (
        "queue_log_appends_failing",
        "1 while queue appends fail with an I/O error (ENOSPC, EROFS, EACCES, EIO).",
    ),
    (
        "queue_log_fs_short_bytes",
        "How far the queue filesystem's free space plus the queue falls short of queue.max_bytes (0: it fits).",
    ),
    (
        "queue_log_fs_free_bytes",
        "Free bytes on the queue's filesystem, reported while it cannot hold queue.max_bytes.",
    ),
    (
        "fsync_latency_us_avg",
        "Mean fsync latency since start, microseconds.",
    ),
    (
        "fsync_latency_us_max",
        "Longest fsync since start, microseconds.",
    ),
    (
        "source_connected",
        "1 while the WebSocket source is connected.",
    ),
    ("broker_connected", "1 while the MQTT broker is connected."),
    (
        "queue_log_depth_records",
        "Records in the queue not yet acknowledged by the broker.",
    ),
    (
        "queue_log_depth_bytes",
        "Bytes in the queue not yet acknowledged by the broker.",
    ),
    (
        "queue_log_segments",
        "Segment files in the queue directory.",
    ),
    (
        "queue_log_write_amplification",
        "Bytes written to disk per payload byte.",
    ),
];

/// Prefixes for nested snapshot objects whose plain `{key}_` prefix would collide with
/// top-level counters (`queue.appended` vs `queue_appended`).
const NESTED_PREFIXES: &[(&str, &str)] = &[("queue", "queue_log_")];

/// Renders a stats snapshot (the `{prefix}/stats` JSON) in the Prometheus text format: nested
/// objects flattened with `_` (`queue.depth_records` is `queue_log_depth_records`, see
/// [`NESTED_PREFIXES`]), booleans as 0/1, counters with `_total`, every metric with HELP and
/// TYPE lines. A name that would repeat is left out (and logged), never emitted twice.
pub fn prometheus_text(snapshot: &Value) -> String {
    let mut flat = Vec::new();
    if let Value::Object(m) = snapshot {
        flatten("", m, &mut flat);
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for (name, v) in flat {
        if !seen.insert(name.clone()) {
            log::debug!("metrics: {name} appears twice in the stats snapshot; second left out");
            continue;
        }
        let gauge = GAUGES.iter().find(|(g, _)| *g == name);
        let help = match gauge {
            Some((_, h)) => (*h).to_string(),
            None => crate::stats::COUNTER_DOCS
                .iter()
                .find(|(c, _)| *c == name)
                .map(|(_, d)| (*d).to_string())
                .unwrap_or_else(|| format!("{name}, as in the {{prefix}}/stats snapshot.")),
        };
        let (kind, metric) = match gauge {
            Some(_) => ("gauge", format!("{METRIC_PREFIX}{name}")),
            None => ("counter", format!("{METRIC_PREFIX}{name}_total")),
        };
        use std::fmt::Write;
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        let _ = writeln!(out, "{metric} {v}");
    }
    out
}

fn flatten(prefix: &str, m: &Map<String, Value>, out: &mut Vec<(String, String)>) {
    for (k, v) in m {
        let name: String = format!("{prefix}{k}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        match v {
            Value::Object(inner) => {
                let nested = NESTED_PREFIXES
                    .iter()
                    .find(|(k, _)| prefix.is_empty() && *k == name)
                    .map_or_else(|| format!("{name}_"), |(_, p)| (*p).to_string());
                flatten(&nested, inner, out)
            }
            Value::Bool(b) => out.push((name, u8::from(*b).to_string())),
            Value::Number(n) => out.push((name, n.to_string())),
            // Strings and nulls are not samples.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_response_is_well_formed() {
        let text = std::str::from_utf8(BUSY_RESPONSE).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<Value>(body).is_ok());
    }

    #[test]
    fn health_names_every_reason() {
        let snap = json!({"source_connected": true, "broker_connected": false,
            "queue": {"depth_bytes": 950, "depth_records": 3}});
        let (ok, doc) = health(&snap, 1000);
        assert!(!ok);
        let reasons = doc["reasons"].as_array().expect("reasons");
        assert_eq!(reasons.len(), 2, "{doc}");
        assert_eq!(reasons[0], "broker disconnected");
        assert!(reasons[1]
            .as_str()
            .is_some_and(|r| r.starts_with("queue 95% full")));
        let snap = json!({"source_connected": true, "broker_connected": true,
            "queue": {"depth_bytes": 10, "depth_records": 1}});
        let (ok, doc) = health(&snap, 1000);
        assert!(ok, "{doc}");
        assert_eq!(doc["status"], "ok");
    }

    #[test]
    fn metrics_flatten_nested_objects_and_type_counters_and_gauges() {
        let stats = Stats::default();
        stats.inc(&stats.alerts_duplicate);
        stats.set_broker_connected(true);
        let snap = stats.snapshot(Some(
            json!({"depth_records": 2, "appended": 5, "write_amplification": 1.25}),
        ));
        let text = prometheus_text(&snap);
        assert!(text.contains("# TYPE alert_relay_alerts_duplicate_total counter\nalert_relay_alerts_duplicate_total 1\n"), "{text}");
        assert!(
            text.contains(
                "# TYPE alert_relay_broker_connected gauge\nalert_relay_broker_connected 1\n"
            ),
            "{text}"
        );
        for expected in [
            "alert_relay_queue_log_depth_records 2\n",
            "# TYPE alert_relay_queue_log_appended_total counter\nalert_relay_queue_log_appended_total 5\n",
            "alert_relay_queue_log_write_amplification 1.25\n",
            // The writer's own counter is not confused with the log's.
            "# TYPE alert_relay_queue_appended_total counter\nalert_relay_queue_appended_total 0\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        assert!(
            text.lines().filter(|l| l.starts_with("# HELP")).count()
                == text.lines().filter(|l| l.starts_with("# TYPE")).count()
        );
    }
}
