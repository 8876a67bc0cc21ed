//! `[source]`: where the alerts come from (a WebSocket URL, or VideoDB's REST API: see
//! `videodb`), its timers, TLS trust and the channels relayed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{backoff_pair, bounded, ByteSize, DurationStr};
use super::videodb::{validate_videodb, RawAlertBinding, VideoDbConfig};
use super::{checks, invalid, print, ConfigError, Secret};

#[derive(Debug, Clone, Serialize)]
pub struct SourceConfig {
    /// Where the WebSocket URL comes from: given (generic) or fetched from VideoDB's REST API.
    #[serde(flatten)]
    pub mode: SourceMode,
    /// Frames above this many bytes are skipped and counted (not a reason to reconnect).
    pub max_frame_bytes: usize,
    /// Bounds the TCP + TLS + WebSocket handshake, and the wait for `connection_id`.
    #[serde(serialize_with = "print::duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "print::duration")]
    pub backoff_initial: Duration,
    #[serde(serialize_with = "print::duration")]
    pub backoff_max: Duration,
    /// A connection that stayed up this long resets the backoff.
    #[serde(serialize_with = "print::duration")]
    pub stable_after: Duration,
    /// A WebSocket ping goes out this long after the previous one.
    #[serde(serialize_with = "print::duration")]
    pub ping_interval: Duration,
    /// No frame at all (pong or data) this long after a ping: the connection is dead.
    #[serde(serialize_with = "print::duration")]
    pub pong_timeout: Duration,
    #[serde(flatten)]
    pub tls: TlsConfig,
    /// Channels relayed besides `alert` (normalised: `visual_index` is `scene_index`).
    pub channels: Vec<String>,
    /// Channels that go through the on-disk queue (`alert` always does); the rest of
    /// `channels` are published QoS 0, best effort.
    pub durable_channels: Vec<String>,
    /// Relay interim transcripts (`is_final = false`) too.
    pub transcript_interim: bool,
}

/// The two ways to find the WebSocket.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SourceMode {
    /// `source.url` given: connect to it directly, with optional extra headers.
    Generic {
        #[serde(serialize_with = "print::url")]
        url: String,
        /// Extra handshake headers (e.g. `Authorization`); values are secrets.
        #[serde(serialize_with = "print::named", skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, Secret)>,
    },
    /// No `source.url`: ask VideoDB's REST API for a fresh URL before every connect and bind
    /// the configured alerts to every new `connection_id`.
    VideoDb(VideoDbConfig),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsConfig {
    /// Extra PEM certificates to trust (private deployments).
    pub ca_file: Option<PathBuf>,
    /// Trust the built-in Mozilla roots (default: yes without `ca_file`, no with it).
    pub builtin_roots: bool,
    /// Skip certificate verification entirely; logged as a warning at every connect.
    pub insecure_skip_verify: bool,
}

/// Channels that can be relayed besides `alert` (SPEC §2; `visual_index` is accepted as an
/// alias of `scene_index`).
pub const RELAYABLE_CHANNELS: &[&str] = &[
    "transcript",
    "scene_index",
    "audio_index",
    "spoken_index",
    "capture_session",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) url: Option<String>,
    pub(super) max_frame_bytes: Option<ByteSize>,
    pub(super) connect_timeout: Option<DurationStr>,
    pub(super) backoff_initial: Option<DurationStr>,
    pub(super) backoff_max: Option<DurationStr>,
    pub(super) headers: Option<std::collections::BTreeMap<String, String>>,
    pub(super) api_url: Option<String>,
    pub(super) api_key_env: Option<String>,
    pub(super) api_key_file: Option<PathBuf>,
    pub(super) collection_id: Option<String>,
    #[serde(default)]
    pub(super) alerts: Vec<RawAlertBinding>,
    pub(super) state_file: Option<PathBuf>,
    pub(super) auth_retry: Option<DurationStr>,
    pub(super) request_timeout: Option<DurationStr>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) builtin_roots: Option<bool>,
    pub(super) insecure_skip_verify: Option<bool>,
    pub(super) ping_interval: Option<DurationStr>,
    pub(super) pong_timeout: Option<DurationStr>,
    pub(super) stable_after: Option<DurationStr>,
    pub(super) channels: Option<Vec<String>>,
    pub(super) durable_channels: Option<Vec<String>>,
    pub(super) transcript_interim: Option<bool>,
}

/// Shortest connect, ping, pong and REST timeout: below it a slow link never connects.
pub(super) const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// Largest frame the relay accepts by default: VideoDB alerts are well under 2 KiB; 64 KiB leaves
/// room for verbose explanations without letting one frame balloon memory.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

pub(super) fn validate_source(
    s: RawSource,
    queue_dir: Option<&Path>,
) -> Result<SourceConfig, ConfigError> {
    let max_frame_bytes = bounded(
        "source.max_frame_bytes",
        s.max_frame_bytes,
        DEFAULT_MAX_FRAME_BYTES,
        256..=16 << 20,
        "must be between 256 B and 16 MiB",
    )?;
    let (backoff_initial, backoff_max) = backoff_pair(
        "source",
        s.backoff_initial,
        s.backoff_max,
        (Duration::from_millis(500), Duration::from_secs(30)),
    )?;
    let at_least_100ms = |key: &str, value: Option<DurationStr>, default: u64| {
        let default = Duration::from_secs(default);
        bounded(key, value, default, MIN_TIMEOUT.., "must be at least 100ms")
    };
    let connect_timeout = at_least_100ms("source.connect_timeout", s.connect_timeout, 10)?;
    // 20 s keeps NAT and Wi-Fi middleboxes from forgetting an idle connection and is the
    // only timer an idle relay runs; 10 s for the pong covers a slow link's round trip.
    let ping_interval = at_least_100ms("source.ping_interval", s.ping_interval, 20)?;
    let pong_timeout = at_least_100ms("source.pong_timeout", s.pong_timeout, 10)?;
    let stable_after = s
        .stable_after
        .map_or(Duration::from_secs(30), Duration::from);
    let tls = validate_tls(s.ca_file.clone(), s.builtin_roots, s.insecure_skip_verify)?;
    let (channels, durable_channels) =
        validate_channels(s.channels.clone(), s.durable_channels.clone())?;

    let videodb_keys = [
        ("source.api_url", s.api_url.is_some()),
        ("source.api_key_env", s.api_key_env.is_some()),
        ("source.api_key_file", s.api_key_file.is_some()),
        ("source.collection_id", s.collection_id.is_some()),
        ("source.alerts", !s.alerts.is_empty()),
        ("source.state_file", s.state_file.is_some()),
        ("source.auth_retry", s.auth_retry.is_some()),
        ("source.request_timeout", s.request_timeout.is_some()),
    ];
    let mode = match s.url.clone() {
        Some(url) => {
            if let Some((key, _)) = videodb_keys.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    *key,
                    "is a VideoDB-mode key, but source.url is set (generic mode); remove one of them",
                ));
            }
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(invalid("source.url", "must start with ws:// or wss://"));
            }
            if let Some(why) = checks::url_host_problem(&url) {
                return Err(invalid("source.url", why));
            }
            let mut headers = Vec::new();
            for (name, value) in s.headers.unwrap_or_default() {
                let ok_name = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                if !ok_name {
                    return Err(invalid(
                        format!("source.headers.{name}"),
                        "is not a valid header name (letters, digits, - and _)",
                    ));
                }
                if value.bytes().any(|b| b.is_ascii_control()) {
                    return Err(invalid(
                        format!("source.headers.{name}"),
                        "value must not contain control characters",
                    ));
                }
                headers.push((name, Secret(value)));
            }
            SourceMode::Generic { url, headers }
        }
        None => {
            if s.headers.is_some() {
                return Err(invalid(
                    "source.headers",
                    "only applies with source.url (generic mode)",
                ));
            }
            SourceMode::VideoDb(validate_videodb(&s, queue_dir)?)
        }
    };
    Ok(SourceConfig {
        mode,
        max_frame_bytes,
        connect_timeout,
        backoff_initial,
        backoff_max,
        stable_after,
        ping_interval,
        pong_timeout,
        tls,
        channels,
        durable_channels,
        transcript_interim: s.transcript_interim.unwrap_or(false),
    })
}

pub(super) fn validate_tls(
    ca_file: Option<PathBuf>,
    builtin_roots: Option<bool>,
    insecure: Option<bool>,
) -> Result<TlsConfig, ConfigError> {
    if let Some(path) = &ca_file {
        crate::tls::check_ca_file(path).map_err(|e| invalid("source.ca_file", e.to_string()))?;
    }
    let builtin_roots = builtin_roots.unwrap_or(ca_file.is_none());
    if !builtin_roots && ca_file.is_none() {
        return Err(invalid(
            "source.builtin_roots",
            "false needs source.ca_file (otherwise nothing would be trusted)",
        ));
    }
    Ok(TlsConfig {
        ca_file,
        builtin_roots,
        insecure_skip_verify: insecure.unwrap_or(false),
    })
}

pub(super) fn validate_channels(
    channels: Option<Vec<String>>,
    durable: Option<Vec<String>>,
) -> Result<(Vec<String>, Vec<String>), ConfigError> {
    let norm = |key: &str, c: &str| -> Result<String, ConfigError> {
        let c = crate::alert::normalize_channel(c);
        if c == "alert" || RELAYABLE_CHANNELS.contains(&c) {
            Ok(c.to_string())
        } else {
            Err(invalid(
                key,
                format!(
                    "{c:?} is not one of \"alert\", {}",
                    RELAYABLE_CHANNELS.join(", ")
                ),
            ))
        }
    };
    let mut out = Vec::new();
    for c in channels.unwrap_or_default() {
        let c = norm("source.channels", &c)?;
        if c != "alert" && !out.contains(&c) {
            out.push(c);
        }
    }
    let mut dur = Vec::new();
    for c in durable.unwrap_or_default() {
        let c = norm("source.durable_channels", &c)?;
        if c == "alert" {
            continue; // always durable
        }
        if !out.contains(&c) {
            return Err(invalid(
                "source.durable_channels",
                format!("{c:?} is not in source.channels"),
            ));
        }
        if !dur.contains(&c) {
            dur.push(c);
        }
    }
    Ok((out, dur))
}

#[cfg(test)]
mod tests {
    use crate::config::*;

    #[test]
    fn generic_headers_are_redacted() {
        let cfg = Config::parse(
            "[source]\nurl = \"wss://rt.example/\"\nheaders = { Authorization = \"Bearer hunter2\" }\n",
        )
        .expect("config");
        let shown = cfg.redacted_toml();
        assert!(shown.contains("Authorization"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let e = err_of("[source]\nurl = \"ws://x/\"\nheaders = { \"Bad Name\" = \"v\" }\n");
        assert!(e.contains("source.headers.Bad Name"), "{e}");
    }

    #[test]
    fn channel_lists_are_checked_and_normalised() {
        let cfg = Config::parse(&format!(
            "{MINIMAL}channels = [\"visual_index\", \"transcript\", \"alert\"]\ndurable_channels = [\"scene_index\", \"alert\"]\n"
        ))
        .expect("config");
        assert_eq!(cfg.source.channels, vec!["scene_index", "transcript"]);
        assert_eq!(cfg.source.durable_channels, vec!["scene_index"]);
        let e = err_of(&format!("{MINIMAL}channels = [\"transcipt\"]\n"));
        assert!(e.contains("source.channels"), "{e}");
        let e = err_of(&format!(
            "{MINIMAL}channels = [\"transcript\"]\ndurable_channels = [\"audio_index\"]\n"
        ));
        assert!(e.contains("source.durable_channels"), "{e}");
    }

    #[test]
    fn tls_keys_are_checked() {
        let e = err_of(&format!("{MINIMAL}builtin_roots = false\n"));
        assert!(e.contains("source.builtin_roots"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = write_file(dir.path(), "ca.pem", "hello");
        let e = err_of(&format!("{MINIMAL}ca_file = \"{}\"\n", not_pem.display()));
        assert!(e.contains("source.ca_file"), "{e}");
        let e = err_of(&format!("{MINIMAL}ca_file = \"/nonexistent/ca.pem\"\n"));
        assert!(
            e.contains("source.ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }
}
