//! The WebSocket source: find the URL (given, or fetched from VideoDB before every connect),
//! connect over ws:// or wss:// (rustls, ring), read `connection_id`, bind the configured
//! alerts to it, keep the connection alive with pings, read frames and hand them on: alerts to
//! [`Ingest`], other relayed channels to the queue (durable ones) or to the publisher (best
//! effort). Reconnects forever with capped exponential backoff and full jitter.
//!
//! Owns: the socket, its liveness, the reconnect loop, and the current state shown in
//! `{prefix}/stats`. Never does: queueing, publishing or GPIO itself (it calls [`Ingest`] or
//! hands best-effort messages to a bounded channel); never sends application messages upstream
//! (SPEC §2), only WebSocket pings.
//!
//! Bad input never ends the connection: every skipped frame is counted and logged
//! rate-limited. An oversize frame or message, of any declared size, is discarded as it
//! streams ([`frames`]: tungstenite does the handshake, the relay reads the frames itself).
//!
//! # Liveness
//! A ping goes out every `ping_interval`; if nothing at all (pong or data) arrives within
//! `pong_timeout` after it, the connection is declared dead (half-open TCP after a Wi-Fi drop
//! never reports an error on its own) and replaced (`liveness.rs` decides; one timer, the only
//! one an idle connection runs).

pub mod admin;
pub mod frames;
mod liveness;
pub mod rest;
mod route;
pub mod videodb;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;

use crate::alert::{
    connection_id_of, parse_frame_bytes, Alert, Envelope, Frame, FrameError, LiveMessage,
    QueuedMessage, Via,
};
use crate::backoff::Backoff;
use crate::config::{redact_url, SourceConfig, SourceMode, VideoDbConfig};
use crate::ingest::Ingest;
use crate::stats::Stats;
use crate::tls;
use liveness::{Due, Liveness};
pub use route::{channel_topic_suffix, route, ChannelRoute};

/// Best-effort messages waiting for the publisher. Transcripts come a few per second per
/// stream; 256 rides out a broker hiccup of tens of seconds, then the oldest news is the least
/// useful, so new ones are dropped and counted rather than buffered without bound.
pub const LIVE_CHANNEL_CAPACITY: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("connecting to {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("connection to {url} failed: {reason}")]
    Read { url: String, reason: String },
    #[error("{url} sent no connection_id within {after:?} of connecting")]
    NoHello { url: String, after: Duration },
    #[error("{url} did not answer a ping within {after:?}: connection presumed dead")]
    PongTimeout { url: String, after: Duration },
    #[error(transparent)]
    Api(#[from] videodb::ApiError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Everything one connection needs, built once.
struct Ctx<'a> {
    cfg: &'a SourceConfig,
    ingest: &'a Ingest,
    stats: &'a Stats,
    live: &'a mpsc::Sender<LiveMessage>,
    tls: Arc<rustls::ClientConfig>,
    upstream: Upstream<'a>,
}

/// Where the WebSocket URL comes from.
enum Upstream<'a> {
    Generic {
        url: &'a str,
        headers: &'a [(String, crate::config::Secret)],
    },
    VideoDb {
        api: videodb::Api,
        cfg: &'a VideoDbConfig,
    },
}

impl<'a> Ctx<'a> {
    fn api(&self) -> Option<(&videodb::Api, &'a VideoDbConfig)> {
        match &self.upstream {
            Upstream::VideoDb { api, cfg } => Some((api, *cfg)),
            Upstream::Generic { .. } => None,
        }
    }
}

/// How one connection ended without an error.
enum End {
    Closed,
}

/// Runs the source until `shutdown` turns true. In VideoDB mode, a clean shutdown disables the
/// alerts bound to the closing socket (bounded by [`videodb::SHUTDOWN_DISABLE_GRACE`]).
pub async fn run(
    cfg: SourceConfig,
    ingest: Ingest,
    live: mpsc::Sender<LiveMessage>,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tls = match tls::client_config(&cfg.tls) {
        Ok(t) => t,
        Err(e) => {
            // Config validation read the CA file already; this only happens if it changed.
            log::error!("source: {e}; the source cannot start");
            stats.set_source_state("stopped", None, Some(e.to_string()));
            return;
        }
    };
    let upstream = match &cfg.mode {
        SourceMode::VideoDb(v) => Upstream::VideoDb {
            api: videodb::Api::new(v, rest::Client::new(tls.clone(), v.request_timeout)),
            cfg: v,
        },
        SourceMode::Generic { url, headers } => Upstream::Generic { url, headers },
    };
    let ctx = Ctx {
        cfg: &cfg,
        ingest: &ingest,
        stats: &stats,
        live: &live,
        tls,
        upstream,
    };
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    // A rejected key is logged once per streak, not at every retry.
    let mut reported_permanent = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        stats.set_source_state("connecting", None, None);
        let mut connected_at = None;
        let result = tokio::select! {
            r = connect_and_read(&ctx, &mut connected_at) => r,
            _ = shutdown.changed() => break,
        };
        stats.set_source_connected(false);
        let was_connected = connected_at.is_some();
        if connected_at.is_some_and(|t: Instant| t.elapsed() >= cfg.stable_after) {
            backoff.reset();
        }
        let mut delay = backoff.next_delay();
        let error = match result {
            Ok(End::Closed) => {
                log::warn!("source: the server closed the connection; reconnecting in {delay:?}");
                None
            }
            Err(SourceError::Api(e)) if e.is_permanent() => {
                stats.inc(&stats.source_auth_failures);
                let retry = ctx.api().map(|(_, v)| v.auth_retry).unwrap_or(delay);
                delay = retry;
                if !reported_permanent {
                    log::error!("source: {e}; retrying every {retry:?}");
                    reported_permanent = true;
                } else {
                    log::debug!("source: {e}; retrying in {retry:?}");
                }
                Some(e.to_string())
            }
            Err(e) => {
                if matches!(e, SourceError::Api(_)) {
                    stats.inc(&stats.videodb_api_errors);
                }
                stats.inc(&stats.source_connect_failures);
                log::warn!("source: {e}; reconnecting in {delay:?}");
                Some(e.to_string())
            }
        };
        if error.is_none() || was_connected {
            reported_permanent = false;
        }
        stats.set_source_state("backoff", None, error);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
    }
    stats.set_source_connected(false);
    stats.set_source_state("stopped", None, None);
    // Also when no bindings are configured any more: the state file may list earlier ones.
    if let Some((api, v)) = ctx.api() {
        match tokio::time::timeout(
            videodb::SHUTDOWN_DISABLE_GRACE,
            videodb::disable_all(api, &v.state_file, &stats),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("source: at shutdown: {e}; the next start disables them"),
            Err(_) => log::warn!(
                "source: disabling alerts at shutdown took over {:?}; the next start disables them",
                videodb::SHUTDOWN_DISABLE_GRACE
            ),
        }
    }
}

/// One connection, from finding the URL to its end; `connected_at` is set once it is up.
async fn connect_and_read(
    ctx: &Ctx<'_>,
    connected_at: &mut Option<Instant>,
) -> Result<End, SourceError> {
    let cfg = ctx.cfg;
    let stats = ctx.stats;
    // 1. Where to connect.
    let (url, headers): (String, &[(String, crate::config::Secret)]) = match &ctx.upstream {
        Upstream::Generic { url, headers } => (url.to_string(), headers),
        Upstream::VideoDb { api, cfg: v } => {
            if cfg.tls.insecure_skip_verify && v.api_url.starts_with("https://") {
                log::warn!("source: {}", tls::insecure_warning(&v.api_url));
            }
            (api.websocket_url().await?, &[])
        }
    };
    let shown = redact_url(&url);
    let connect_err = |reason: String| SourceError::Connect {
        url: shown.clone(),
        reason,
    };
    let request = handshake_request(&url, headers).map_err(connect_err)?;

    // 2. Connect.
    if url.starts_with("wss://") && cfg.tls.insecure_skip_verify {
        log::warn!("source: {}", tls::insecure_warning(&shown));
    }
    let connect = frames::connect(request, ctx.tls.clone());
    let mut ws = match tokio::time::timeout(cfg.connect_timeout, connect).await {
        Err(_) => {
            return Err(SourceError::Timeout {
                url: shown,
                after: cfg.connect_timeout,
            })
        }
        Ok(Err(e)) => return Err(connect_err(tls::explain(&e))),
        Ok(Ok((stream, tail))) => {
            frames::FrameStream::new(stream, &tail, cfg.max_frame_bytes, stats)
        }
    };

    // 3. VideoDB: the first message is the connection_id, which the alerts are bound to.
    let connection_id = match ctx.api() {
        Some(_) => match read_hello(&mut ws, ctx, &shown).await? {
            Some(id) => Some(id),
            None => return Ok(End::Closed),
        },
        None => None,
    };
    stats.inc(&stats.source_connects);
    if Stats::get(&stats.source_connects) > 1 {
        stats.inc(&stats.source_reconnects);
    }
    stats.set_source_connected(true);
    stats.set_source_state("connected", connection_id.as_deref(), None);
    *connected_at = Some(Instant::now());
    match &connection_id {
        Some(id) => log::info!("source: connected to {shown}, connection_id {id}"),
        None => log::info!("source: connected to {shown}"),
    }

    // 4. Bind alerts (VideoDB mode), concurrently with reading.
    let binding = async {
        match (ctx.api(), &connection_id) {
            // Even with no bindings configured: alerts of an earlier run still get disabled.
            (Some((api, v)), Some(id)) => bind_until_done(api, v, id, ctx).await,
            _ => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(binding);

    // 5. Read, ping, and watch for silence.
    let mut liveness = Liveness::new(Instant::now(), cfg.ping_interval, cfg.pong_timeout);
    loop {
        tokio::select! {
            msg = ws.next() => {
                let Some(msg) = msg else { return Ok(End::Closed) };
                let msg = msg.map_err(|e| SourceError::Read {
                    url: shown.clone(),
                    reason: e.to_string(),
                })?;
                // Anything from the server proves the path is alive.
                liveness.on_message();
                match msg {
                    Message::Text(text) => {
                        if let Some(id) = on_message(text.as_bytes(), false, ctx).await {
                            log::info!("source: connection_id {id}");
                            stats.set_source_state("connected", Some(&id), None);
                        }
                    }
                    // JSON in a binary frame is a frame like any other: both SDKs parse it
                    // (`json.loads` takes bytes, websocket_client.py line 57).
                    Message::Binary(b) => {
                        if let Some(id) = on_message(&b, true, ctx).await {
                            log::info!("source: connection_id {id}");
                            stats.set_source_state("connected", Some(&id), None);
                        }
                    }
                    Message::Close(_) => return Ok(End::Closed),
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
            _ = tokio::time::sleep_until(liveness.deadline()) => {
                match liveness.poll(Instant::now(), ws.bytes_read()) {
                    Due::Idle => {}
                    Due::Ping => {
                        stats.inc(&stats.source_pings);
                        // A peer that stopped reading can leave the send stuck behind a full
                        // buffer.
                        match tokio::time::timeout(cfg.pong_timeout, ws.send_ping()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return Err(SourceError::Read { url: shown, reason: e.to_string() }),
                            Err(_) => {
                                stats.inc(&stats.source_ping_timeouts);
                                return Err(SourceError::PongTimeout { url: shown, after: cfg.pong_timeout });
                            }
                        }
                    }
                    Due::PongOverdue => {
                        stats.inc(&stats.source_ping_timeouts);
                        return Err(SourceError::PongTimeout { url: shown, after: cfg.pong_timeout });
                    }
                }
            }
            () = &mut binding => {}
        }
    }
}

/// The handshake request for `url` with `source.headers` (marked sensitive); the error is the
/// reason shown after "cannot connect to URL:".
fn handshake_request(
    url: &str,
    headers: &[(String, crate::config::Secret)],
) -> Result<Request, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad header name source.headers.{name}"))?;
        let mut v = HeaderValue::from_str(value.expose())
            .map_err(|_| format!("bad value for source.headers.{name}"))?;
        v.set_sensitive(true);
        request.headers_mut().insert(n, v);
    }
    Ok(request)
}

/// VideoDB: reads until the hello, within `connect_timeout`; `None`: the server closed first.
/// The first frame that carries a `connection_id` is the hello, whatever else it holds
/// (`{"type":"connected","connection_id":"c1"}`; a number too): the Python SDK reads the id from
/// the first frame (websocket_client.py lines 33-35), the Node SDK from the first frame that
/// has one. Any other frame is handled like any frame, and the wait goes on.
async fn read_hello(
    ws: &mut frames::FrameStream<'_, frames::Transport>,
    ctx: &Ctx<'_>,
    shown: &str,
) -> Result<Option<String>, SourceError> {
    let (cfg, stats) = (ctx.cfg, ctx.stats);
    let deadline = Instant::now() + cfg.connect_timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                return Err(SourceError::NoHello {
                    url: shown.to_string(),
                    after: cfg.connect_timeout,
                })
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => {
                return Err(SourceError::Read {
                    url: shown.to_string(),
                    reason: e.to_string(),
                })
            }
            Ok(Some(Ok(m))) => m,
        };
        let bytes = match &msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b.as_ref(),
            Message::Close(_) => return Ok(None),
            _ => continue,
        };
        // `frames` never delivers a message above `max_frame_bytes`.
        if let Some(id) = connection_id_of(bytes) {
            stats.inc(&stats.frames_received);
            return Ok(Some(id));
        }
        on_message(bytes, matches!(msg, Message::Binary(_)), ctx).await;
    }
}

/// Binds the alerts to `connection_id`, retrying until done: with backoff on transient errors,
/// every `auth_retry` on permanent ones (logged once). Then pends until the connection ends.
async fn bind_until_done(
    api: &videodb::Api,
    v: &VideoDbConfig,
    connection_id: &str,
    ctx: &Ctx<'_>,
) {
    let stats = ctx.stats;
    let mut backoff = Backoff::new(ctx.cfg.backoff_initial, ctx.cfg.backoff_max);
    let mut reported = false;
    loop {
        match videodb::bind(api, &v.alerts, &v.state_file, connection_id, stats).await {
            Ok(()) => break,
            Err(e) if e.is_permanent() => {
                stats.inc(&stats.source_auth_failures);
                if !reported {
                    log::error!(
                        "source: binding alerts: {e}; retrying every {:?}",
                        v.auth_retry
                    );
                    reported = true;
                }
                stats.set_source_state("connected", Some(connection_id), Some(e.to_string()));
                tokio::time::sleep(v.auth_retry).await;
            }
            Err(e) => {
                stats.inc(&stats.videodb_api_errors);
                let delay = backoff.next_delay();
                stats.warn_limited(
                    "videodb_bind",
                    format_args!("source: binding alerts: {e}; retrying in {delay:?}"),
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
    std::future::pending::<()>().await
}

/// Counts and parses one text or binary message and passes it on; returns the
/// `connection_id` when the frame was a plain hello (`{"connection_id"}` and no channel).
/// Never fails: bad input is counted; a binary frame that is not JSON counts as binary.
/// Oversize messages never get here: `frames` discards and counts them as they stream.
async fn on_message(text: &[u8], binary: bool, ctx: &Ctx<'_>) -> Option<String> {
    let stats = ctx.stats;
    stats.inc(&stats.frames_received);
    match parse_frame_bytes(text) {
        Ok(Frame::Hello { connection_id }) => return Some(connection_id),
        Ok(Frame::Envelope(env)) if env.channel == "alert" => match Alert::from_envelope(env) {
            Ok(alert) => ctx.ingest.accept(alert, Via::Websocket).await,
            Err(e) => {
                stats.inc(&stats.alerts_invalid);
                stats.warn_limited("invalid_alert", format_args!("source: skipped alert: {e}"));
            }
        },
        Ok(Frame::Envelope(env)) => relay_channel(env, ctx).await,
        Err(FrameError::NoChannel) => {
            stats.inc(&stats.frames_no_channel);
            stats.warn_limited(
                "no_channel",
                format_args!("source: skipped frame: {}", FrameError::NoChannel),
            );
        }
        Err(FrameError::InvalidJson(_)) if binary => {
            stats.inc(&stats.frames_binary);
            stats.warn_limited(
                "binary",
                format_args!(
                    "source: skipped a binary frame of {} bytes (not JSON)",
                    text.len()
                ),
            );
        }
        Err(e) => {
            stats.inc(&stats.frames_invalid_json);
            stats.warn_limited("invalid_json", format_args!("source: skipped frame: {e}"));
        }
    }
    None
}

async fn relay_channel(env: Envelope, ctx: &Ctx<'_>) {
    let stats = ctx.stats;
    let route = route(ctx.cfg, &env);
    let suffix = channel_topic_suffix(&env);
    let mut body = env.data;
    if let Some(id) = env.rtstream_id {
        body.entry("rtstream_id").or_insert(Value::String(id));
    }
    match route {
        ChannelRoute::NotRelayed => stats.inc(&stats.frames_other_channel),
        ChannelRoute::InterimDropped => stats.inc(&stats.transcripts_interim_dropped),
        ChannelRoute::Durable => {
            let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
            let msg = QueuedMessage {
                topic_suffix: suffix,
                via: Via::Websocket,
                body,
            };
            ctx.ingest.accept_message(msg).await;
        }
        ChannelRoute::BestEffort => {
            let now = crate::clock::unix_micros(std::time::SystemTime::now());
            body.insert(
                "relay".into(),
                json!({"received_at": crate::clock::rfc3339_micros(now), "via": "websocket"}),
            );
            let payload = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
            match ctx.live.try_send((suffix, payload)) {
                Ok(()) => stats.inc(&stats.channel_published),
                Err(_) => {
                    stats.inc(&stats.channel_dropped);
                    stats.warn_limited(
                        "channel_dropped",
                        format_args!(
                            "source: MQTT is not keeping up; best-effort channel messages dropped"
                        ),
                    );
                }
            }
        }
    }
}
