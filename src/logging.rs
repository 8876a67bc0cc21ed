//! The process logger: env_logger (`RUST_LOG`, default `info`), with the library targets whose
//! output carries secrets capped below the level where they print them.
//!
//! Owns: [`init`] and the cap list. Never does: decide what the relay's own modules log (they
//! never format a secret: config values are [`crate::config::Secret`]s, URLs go through
//! [`crate::config::redact_url`]).
//!
//! Why a cap list and not redaction by value: the secret that leaked is known only at run
//! time (the token in VideoDB's pre-authenticated `websocket_url`, fetched before every
//! connect), and a library formats it inside its own `{:?}` (escaped) text. Checked, for the
//! libraries in the tree, at every level:
//! - `tungstenite::handshake::client` traces the whole handshake request: the URL's query
//!   (VideoDB's token, a generic `?token=`) and every header value (`source.headers`). Capped at
//!   debug; its debug lines ("Client handshake done.") say nothing secret.
//! - rumqttc logs packet ids and reason codes, never the CONNECT packet (username/password).
//! - rustls logs handshake steps; application data (the `x-access-token` header of the REST
//!   client, the MQTT password inside TLS) is never logged, and no key log is configured.
//! - hyper (the webhook server) logs through `tracing`, which is not compiled in; the relay's
//!   HTTP code never logs a request's query or headers (the webhook token travels there).
//! - `source::rest` (the REST client) logs nothing; its errors name the URL without query.
//!
//! `tests/secrets_in_logs.rs` runs the binary at `RUST_LOG=trace` with every secret in use.

use log::{LevelFilter, Log, Metadata, Record};

/// Library targets (module path prefixes) and the most verbose level each may log at.
const CAPS: &[(&str, LevelFilter)] = &[("tungstenite::handshake", LevelFilter::Debug)];

/// Whether a record of `target` at `level` may be logged, by [`CAPS`].
pub fn allowed(target: &str, level: log::Level) -> bool {
    CAPS.iter()
        .filter(|(prefix, _)| {
            target == *prefix
                || target
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
        .all(|(_, cap)| level <= *cap)
}

struct Capped(env_logger::Logger);

impl Log for Capped {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        allowed(m.target(), m.level()) && self.0.enabled(m)
    }
    fn log(&self, r: &Record<'_>) {
        if allowed(r.target(), r.level()) {
            self.0.log(r);
        }
    }
    fn flush(&self) {
        self.0.flush();
    }
}

/// Installs the logger: `RUST_LOG` (default `info`), microsecond timestamps, [`CAPS`] applied.
pub fn init() {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Capped(inner))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Level;

    #[test]
    fn the_handshake_request_trace_is_dropped_and_the_rest_passes() {
        assert!(!allowed("tungstenite::handshake::client", Level::Trace));
        assert!(!allowed("tungstenite::handshake", Level::Trace));
        assert!(allowed("tungstenite::handshake::client", Level::Debug));
        assert!(allowed("tungstenite::handshake::client", Level::Warn));
        assert!(allowed("tungstenite::protocol", Level::Trace));
        assert!(allowed("tungstenite::handshakes_elsewhere", Level::Trace));
        assert!(allowed("alert_relay::source", Level::Trace));
        assert!(allowed("rumqttc::state", Level::Trace));
    }
}
