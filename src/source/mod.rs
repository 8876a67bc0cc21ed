//! The WebSocket source: connect, read frames, hand accepted alerts to the ingest stage,
//! reconnect forever with capped exponential backoff and full jitter.
//!
//! Owns: the socket and its reconnect loop. Never does: queueing, publishing or GPIO itself
//! (it calls [`Ingest`]); never sends application messages upstream (SPEC §2).
//!
//! Bad input never ends the connection: every skipped frame is counted and logged
//! rate-limited. An oversize frame is skipped; only frames beyond the transport limit (kept
//! [`TRANSPORT_LIMIT_FACTOR`] times above `max_frame_bytes`) make the socket fail.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

use crate::alert::{parse_frame, Alert, Frame, FrameError, Via};
use crate::backoff::Backoff;
use crate::config::{redact_url, SourceConfig};
use crate::ingest::Ingest;
use crate::stats::Stats;

/// The transport's own message limit, as a multiple of the relay's frame limit.
pub const TRANSPORT_LIMIT_FACTOR: usize = 16;
/// A connection that stayed up this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("connecting to {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("connection to {url} failed: {reason}")]
    Read { url: String, reason: String },
}

/// Builds the rustls connector: `ring` provider, Mozilla's roots built in.
pub fn tls_connector() -> Result<Connector, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(cfg)))
}

/// Runs the source until `shutdown` turns true.
pub async fn run(
    cfg: SourceConfig,
    ingest: Ingest,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let shown_url = redact_url(&cfg.url);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = connect_and_read(&cfg, &ingest, &stats) => r,
            _ = shutdown.changed() => return,
        };
        stats.set_source_connected(false);
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match result {
            Ok(()) => {
                log::warn!("source: {shown_url} closed the connection; reconnecting in {delay:?}")
            }
            Err(e) => {
                stats.inc(&stats.source_connect_failures);
                log::warn!("source: {e}; reconnecting in {delay:?}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn connect_and_read(
    cfg: &SourceConfig,
    ingest: &Ingest,
    stats: &Stats,
) -> Result<(), SourceError> {
    let shown = redact_url(&cfg.url);
    let transport_limit = cfg.max_frame_bytes.saturating_mul(TRANSPORT_LIMIT_FACTOR);
    let ws_cfg = WebSocketConfig::default()
        .max_message_size(Some(transport_limit))
        .max_frame_size(Some(transport_limit));
    let connector = if cfg.url.starts_with("wss://") {
        Some(tls_connector().map_err(|e| SourceError::Connect {
            url: shown.clone(),
            reason: format!("TLS setup: {e}"),
        })?)
    } else {
        None
    };
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        cfg.url.as_str(),
        Some(ws_cfg),
        true,
        connector,
    );
    let (mut ws, _resp) = match tokio::time::timeout(cfg.connect_timeout, connect).await {
        Err(_) => {
            return Err(SourceError::Timeout {
                url: shown,
                after: cfg.connect_timeout,
            })
        }
        Ok(Err(e)) => {
            return Err(SourceError::Connect {
                url: shown,
                reason: e.to_string(),
            })
        }
        Ok(Ok(x)) => x,
    };
    stats.inc(&stats.source_connects);
    stats.set_source_connected(true);
    log::info!("source: connected to {shown}");
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| SourceError::Read {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        match msg {
            Message::Text(text) => {
                stats.inc(&stats.frames_received);
                if text.len() > cfg.max_frame_bytes {
                    stats.inc(&stats.frames_oversize);
                    stats.warn_limited(
                        "oversize",
                        format_args!(
                            "source: skipped a {} byte frame (limit source.max_frame_bytes = {})",
                            text.len(),
                            cfg.max_frame_bytes
                        ),
                    );
                    continue;
                }
                handle_text(text.as_str(), ingest, stats).await;
            }
            Message::Binary(b) => {
                stats.inc(&stats.frames_received);
                stats.inc(&stats.frames_binary);
                stats.warn_limited(
                    "binary",
                    format_args!("source: skipped a binary frame of {} bytes", b.len()),
                );
            }
            Message::Close(_) => return Ok(()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Ok(())
}

/// Parses one text frame and passes an accepted alert on. Never fails: bad input is counted.
pub async fn handle_text(text: &str, ingest: &Ingest, stats: &Stats) {
    match parse_frame(text) {
        Ok(Frame::Hello { connection_id }) => {
            log::info!("source: connection_id {connection_id}");
        }
        Ok(Frame::Envelope(env)) if env.channel == "alert" => match Alert::from_envelope(env) {
            Ok(alert) => ingest.accept(alert, Via::Websocket).await,
            Err(e) => {
                stats.inc(&stats.alerts_invalid);
                stats.warn_limited("invalid_alert", format_args!("source: skipped alert: {e}"));
            }
        },
        Ok(Frame::Envelope(_)) => stats.inc(&stats.frames_other_channel),
        Err(FrameError::NoChannel) => {
            stats.inc(&stats.frames_no_channel);
            stats.warn_limited(
                "no_channel",
                format_args!("source: skipped frame: {}", FrameError::NoChannel),
            );
        }
        Err(e) => {
            stats.inc(&stats.frames_invalid_json);
            stats.warn_limited("invalid_json", format_args!("source: skipped frame: {e}"));
        }
    }
}
