//! Configuration: raw TOML structs (`deny_unknown_fields`) validated once into a typed
//! [`Config`].
//!
//! Owns: parsing durations and byte sizes, defaults, and every "is this value sensible" check.
//! Never does: I/O beyond reading the config file and secret files it names; never logs or
//! prints a secret ([`Config::redacted_toml`] is the only printable form).
//!
//! Every error names the key (`queue.max_bytes`, `gpio.rules[1].output`) and the reason.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod checks;
mod identity;
mod pieces;
mod sections;
mod units;

use pieces::{deserialize_pieces, load_in_pieces, OneRule};

pub use units::{fmt_duration, parse_duration};
use units::{ByteSize, DurationStr};

/// A config error: which key, and why. `alert-relay` exits with status 2 on one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Typed, validated configuration.

#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceConfig,
    pub queue: QueueConfig,
    pub mqtt: MqttConfig,
    pub gpio: GpioConfig,
    /// `None` when `[http] listen` is absent: no HTTP server.
    pub http: Option<HttpConfig>,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Where the WebSocket URL comes from: given (generic) or fetched from VideoDB's REST API.
    pub mode: SourceMode,
    /// Frames above this many bytes are skipped and counted (not a reason to reconnect).
    pub max_frame_bytes: usize,
    /// Bounds the TCP + TLS + WebSocket handshake, and the wait for `connection_id`.
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A connection that stayed up this long resets the backoff.
    pub stable_after: Duration,
    /// A WebSocket ping goes out this long after the previous one.
    pub ping_interval: Duration,
    /// No frame at all (pong or data) this long after a ping: the connection is dead.
    pub pong_timeout: Duration,
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
#[derive(Debug, Clone)]
pub enum SourceMode {
    /// `source.url` given: connect to it directly, with optional extra headers.
    Generic {
        url: String,
        /// Extra handshake headers (e.g. `Authorization`); values are secrets.
        headers: Vec<(String, Secret)>,
    },
    /// No `source.url`: ask VideoDB's REST API for a fresh URL before every connect and bind
    /// the configured alerts to every new `connection_id`.
    VideoDb(VideoDbConfig),
}

#[derive(Debug, Clone)]
pub struct VideoDbConfig {
    /// REST base, without a trailing `/`.
    pub api_url: String,
    pub api_key: Secret,
    /// Where the key came from, for error messages and `check-config`.
    pub api_key_from: ApiKeyOrigin,
    pub collection_id: String,
    pub alerts: Vec<AlertBinding>,
    /// The ids of the alerts this relay created, so they can be disabled after a reconnect
    /// or a restart.
    pub state_file: PathBuf,
    /// How long to wait before retrying after the API rejected the key (401/403) or the
    /// request (other 4xx): such errors do not fix themselves, so retry slowly.
    pub auth_retry: Duration,
    /// Bounds every REST call (connect, TLS, request, response).
    pub request_timeout: Duration,
}

/// `source.api_key_env` or `source.api_key_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyOrigin {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for ApiKeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiKeyOrigin::Env(name) => write!(f, "environment variable {name}"),
            ApiKeyOrigin::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// One `[[source.alerts]]` entry: an event to bind, on one index of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertBinding {
    pub rtstream_id: String,
    pub index_id: String,
    pub event_id: String,
    /// Also deliver this alert as a webhook (dual delivery).
    pub callback_url: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// Extra PEM certificates to trust (private deployments).
    pub ca_file: Option<PathBuf>,
    /// Trust the built-in Mozilla roots (default: yes without `ca_file`, no with it).
    pub builtin_roots: bool,
    /// Skip certificate verification entirely; logged as a warning at every connect.
    pub insecure_skip_verify: bool,
}

/// A secret string (API key, header value, MQTT password, webhook token): never printed by
/// `Debug`, logs or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    DropOldest,
    DropNewest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Group commit: every record written together shares one fsync, before publishing.
    Batch,
    /// One fsync per record.
    Always,
    /// Never fsync (tmpfs / RAM disks): a power cut loses what the kernel had not written.
    Never,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub on_full: OnFull,
    pub fsync: FsyncPolicy,
    /// Size at which a segment file is closed and a new one started.
    pub segment_bytes: u64,
    /// Most unpublished records held (None = bounded by `max_bytes` only).
    pub max_records: Option<u64>,
    /// Unpublished records older than this are dropped (and counted) instead of published.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topic_prefix: String,
    pub qos: Qos,
    pub keep_alive: Duration,
    /// Publishes sent but not yet acknowledged by the broker, at most.
    pub max_inflight: u16,
    /// Queue records published per second, at most (`None`: as fast as the broker acks).
    pub max_publish_rate: Option<u32>,
    pub stats_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// `3.1.1` (default) or `5`.
    pub protocol: MqttProtocol,
    pub username: Option<String>,
    /// Read from `password_file` or `password_env`; never printed.
    pub password: Option<Secret>,
    /// TLS to the broker; `None` = plain TCP.
    pub tls: Option<MqttTls>,
    /// MQTT 5 message expiry of alerts, so stale alerts do not pile up in offline sessions.
    pub message_expiry: Duration,
    /// The broker's message size limit, when known: larger records are set aside unsent.
    pub max_message_bytes: Option<usize>,
    /// Home Assistant MQTT discovery.
    pub ha_discovery: bool,
    pub ha_prefix: String,
    /// Event types announced for the alert event entity, besides the rules' exact labels.
    pub ha_event_types: Vec<String>,
    /// The device's name in Home Assistant (default: the client id).
    pub ha_device_name: Option<String>,
    /// Alerts older than this (since the relay received them) do not reach `{prefix}/event`.
    pub ha_event_max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttProtocol {
    V311,
    V5,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    /// PEM CA bundle; `None` = the built-in web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for brokers that require client certificates.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpioBackendKind {
    Rppal,
    Cdev,
    Sim,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Light,
    Buzzer,
    PassiveBuzzer,
}

#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub name: String,
    /// BCM pin number (rppal).
    pub pin: Option<u8>,
    /// Line name such as `GPIO17` (cdev).
    pub line: Option<String>,
    /// Chip label or path plus offset (cdev).
    pub chip: Option<String>,
    pub offset: Option<u32>,
    pub active_low: bool,
    pub kind: OutputKind,
    pub max_on: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pattern {
    Solid {
        duration: Duration,
    },
    Blink {
        on: Duration,
        off: Duration,
        /// Either a count or a total duration.
        count: Option<u32>,
        duration: Option<Duration>,
    },
    Sequence {
        steps: Vec<(Duration, Duration)>,
    },
    Tone {
        frequency: u32,
        duty: f64,
        duration: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// Optional name: a named rule can be armed and disarmed over MQTT (`rules/{name}/set`).
    pub name: Option<String>,
    pub labels: Vec<String>,
    pub min_confidence: f64,
    /// `missing_confidence = "fire"`: an alert with no `confidence` at all (VideoDB's real-time
    /// alert shape, `{"event_label", "timestamp", "text"}`) passes `min_confidence`. Default
    /// false ("skip"). A garbled confidence never passes.
    pub fire_without_confidence: bool,
    /// Indexes into `GpioConfig::outputs`.
    pub outputs: Vec<usize>,
    pub pattern: Pattern,
    pub priority: i32,
    pub cooldown: Duration,
    pub max_age: Duration,
    /// Fires only for alerts from this stream (exact or glob); `None` = any stream.
    pub rtstream_id: Option<String>,
    /// Local-time windows in which this rule's buzzer outputs stay silent (lights still fire).
    pub quiet_hours: Vec<QuietWindow>,
    /// Which of `outputs` are audible (`buzzer`, `passive_buzzer`): those quiet hours mute.
    pub audible: Vec<bool>,
}

/// A daily local-time window `start..end` in minutes after midnight; wraps midnight when
/// `end < start` (`22:00-07:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietWindow {
    pub start_min: u16,
    pub end_min: u16,
}

impl QuietWindow {
    /// Whether `minute` (0..1440, local time) lies in the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute)
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

impl fmt::Display for QuietWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

/// An input pin that silences every active pattern when pressed (an acknowledge button).
#[derive(Debug, Clone, PartialEq)]
pub struct AckButton {
    /// BCM number (rppal).
    pub pin: Option<u8>,
    /// Line name (cdev).
    pub line: Option<String>,
    /// Chip label or path plus offset (cdev).
    pub chip: Option<String>,
    pub offset: Option<u32>,
    /// Pressed pulls the pin low (the usual button to ground with a pull-up).
    pub active_low: bool,
    /// Contact bounce shorter than this is ignored.
    pub debounce: Duration,
}

#[derive(Debug, Clone)]
pub struct GpioConfig {
    pub backend: GpioBackendKind,
    pub sim_trace: Option<PathBuf>,
    pub outputs: Vec<OutputConfig>,
    /// Shared, not copied, by the rule engine and the publisher: 10,000 rules are megabytes.
    pub rules: std::sync::Arc<Vec<RuleConfig>>,
    pub ack_button: Option<AckButton>,
    /// Named patterns (`[gpio.patterns]`) that commands and Home Assistant (siren tones, light
    /// effects) pick by name, sorted by name.
    pub patterns: Vec<(String, Pattern)>,
    /// Priority of manual commands (`outputs/{name}/set`) against rule patterns.
    pub manual_priority: i32,
    /// Whether a snooze also keeps lights dark (else only buzzers are snoozed).
    pub snooze_lights: bool,
}

/// The HTTP listener: `POST /webhook`, `GET /healthz`, `GET /metrics`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: std::net::SocketAddr,
    /// Shared webhook token; `None` turns `POST /webhook` off (404), leaving health and metrics.
    pub token: Option<Secret>,
    /// Where the token came from, for `check-config` (`token_env = "NAME"` or `token_file = "PATH"`).
    pub token_source: Option<(&'static str, String)>,
    /// Larger webhook bodies get 413 without being read.
    pub max_body_bytes: usize,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also the keep-alive idle limit) and,
    /// separately, its body: slow clients are cut off.
    pub request_timeout: Duration,
}

// ---------------------------------------------------------------------------------------------
// Raw structs, exactly as written in TOML.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    source: RawSource,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    gpio: RawGpio,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    max_body_bytes: Option<ByteSize>,
    max_connections: Option<usize>,
    request_timeout: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Option<String>,
    max_frame_bytes: Option<ByteSize>,
    connect_timeout: Option<DurationStr>,
    backoff_initial: Option<DurationStr>,
    backoff_max: Option<DurationStr>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    api_url: Option<String>,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    collection_id: Option<String>,
    #[serde(default)]
    alerts: Vec<RawAlertBinding>,
    state_file: Option<PathBuf>,
    auth_retry: Option<DurationStr>,
    request_timeout: Option<DurationStr>,
    ca_file: Option<PathBuf>,
    builtin_roots: Option<bool>,
    insecure_skip_verify: Option<bool>,
    ping_interval: Option<DurationStr>,
    pong_timeout: Option<DurationStr>,
    stable_after: Option<DurationStr>,
    channels: Option<Vec<String>>,
    durable_channels: Option<Vec<String>>,
    transcript_interim: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertBinding {
    rtstream_id: String,
    index_id: String,
    event_id: String,
    callback_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    dir: Option<PathBuf>,
    max_bytes: Option<ByteSize>,
    on_full: Option<String>,
    fsync: Option<String>,
    segment_bytes: Option<ByteSize>,
    max_records: Option<u64>,
    max_age: Option<DurationStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    host: Option<String>,
    port: Option<u16>,
    client_id: Option<String>,
    topic_prefix: Option<String>,
    qos: Option<u8>,
    keep_alive: Option<DurationStr>,
    max_inflight: Option<u16>,
    max_publish_rate: Option<u32>,
    stats_interval: Option<DurationStr>,
    backoff_initial: Option<DurationStr>,
    backoff_max: Option<DurationStr>,
    protocol: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    tls: Option<bool>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    message_expiry: Option<DurationStr>,
    max_message_bytes: Option<ByteSize>,
    ha_discovery: Option<bool>,
    ha_prefix: Option<String>,
    ha_event_types: Option<Vec<String>>,
    ha_device_name: Option<String>,
    ha_event_max_age: Option<DurationStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpio {
    backend: Option<String>,
    sim_trace: Option<PathBuf>,
    #[serde(default)]
    outputs: Vec<RawOutput>,
    /// `None` when absent: the `[[gpio.rules]]` tables may be parsed apart (see `sections`).
    rules: Option<Vec<RawRule>>,
    ack_button: Option<RawAckButton>,
    #[serde(default)]
    patterns: std::collections::BTreeMap<String, RawPattern>,
    manual_priority: Option<i32>,
    snooze_lights: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAckButton {
    pin: Option<u8>,
    line: Option<String>,
    chip: Option<String>,
    offset: Option<u32>,
    active_low: Option<bool>,
    debounce: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    name: String,
    pin: Option<u8>,
    line: Option<String>,
    chip: Option<String>,
    offset: Option<u32>,
    #[serde(default)]
    active_low: bool,
    kind: Option<String>,
    max_on: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    labels: Vec<String>,
    min_confidence: Option<f64>,
    missing_confidence: Option<String>,
    output: Option<String>,
    outputs: Option<Vec<String>>,
    pattern: Option<RawPattern>,
    priority: Option<i32>,
    cooldown: Option<DurationStr>,
    max_age: Option<DurationStr>,
    rtstream_id: Option<String>,
    #[serde(default)]
    quiet_hours: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPattern {
    kind: String,
    duration: Option<DurationStr>,
    on: Option<DurationStr>,
    off: Option<DurationStr>,
    count: Option<u32>,
    steps: Option<Vec<(DurationStr, DurationStr)>>,
    frequency: Option<u32>,
    duty: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// Largest frame the relay accepts by default: VideoDB alerts are well under 2 KiB; 64 KiB leaves
/// room for verbose explanations without letting one frame balloon memory.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Where the queue lives unless `queue.dir` says otherwise (the systemd unit's StateDirectory).
pub const DEFAULT_QUEUE_DIR: &str = "/var/lib/alert-relay/queue";

impl Config {
    /// Reads and validates the config file at `path`.
    ///
    /// The file is read line by line, never whole, when `sections` can cut it (see
    /// [`Config::parse`]); otherwise, and for every error, it is read and parsed whole.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if let Some(result) = load_in_pieces(path) {
            return result;
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    ///
    /// The `[[gpio.rules]]` tables are parsed one at a time when `sections` can cut the text
    /// (memory: toml's document costs ~9 KiB a rule); any doubt, and every error, goes through
    /// the whole-text parse, so what is accepted and what each error says is the same either way.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        if let Some(pieces) = sections::split(text) {
            if let Some(raw) = deserialize_pieces(&pieces) {
                let rules = pieces
                    .rules
                    .iter()
                    .map(|p| deserialize::<OneRule>(p).map(|mut one| one.gpio.rules.remove(0)));
                return validate(raw, rules);
            }
        }
        let mut raw: RawConfig = deserialize(text)?;
        let rules = raw.gpio.rules.take().unwrap_or_default();
        validate(raw, rules.into_iter().map(Ok))
    }

    /// The resolved config as TOML, for `check-config`. Secrets never appear in it.
    pub fn redacted_toml(&self) -> String {
        let mut out = String::new();
        let s = &self.source;
        let q = &self.queue;
        let m = &self.mqtt;
        let g = &self.gpio;
        use fmt::Write;
        let _ = writeln!(out, "[source]");
        match &s.mode {
            SourceMode::Generic { url, headers } => {
                let _ = writeln!(out, "url = {:?}", redact_url(url));
                if !headers.is_empty() {
                    let h: Vec<String> = headers
                        .iter()
                        .map(|(k, _)| format!("{k:?} = \"<redacted>\""))
                        .collect();
                    let _ = writeln!(out, "headers = {{ {} }}", h.join(", "));
                }
            }
            SourceMode::VideoDb(v) => {
                let _ = writeln!(out, "api_url = {:?}", redact_url(&v.api_url));
                // Where the key comes from, never the key.
                let _ = match &v.api_key_from {
                    ApiKeyOrigin::Env(name) => writeln!(out, "api_key_env = {name:?}"),
                    ApiKeyOrigin::File(p) => {
                        writeln!(out, "api_key_file = {:?}", p.display().to_string())
                    }
                };
                let _ = writeln!(out, "collection_id = {:?}", v.collection_id);
                let _ = writeln!(out, "state_file = {:?}", v.state_file.display().to_string());
                let _ = writeln!(out, "auth_retry = \"{}\"", fmt_duration(v.auth_retry));
                let _ = writeln!(
                    out,
                    "request_timeout = \"{}\"",
                    fmt_duration(v.request_timeout)
                );
            }
        }
        if let Some(ca) = &s.tls.ca_file {
            let _ = writeln!(out, "ca_file = {:?}", ca.display().to_string());
        }
        let _ = writeln!(out, "builtin_roots = {}", s.tls.builtin_roots);
        if s.tls.insecure_skip_verify {
            let _ = writeln!(
                out,
                "insecure_skip_verify = true   # WARNING: certificates are not checked"
            );
        }
        let _ = writeln!(out, "ping_interval = \"{}\"", fmt_duration(s.ping_interval));
        let _ = writeln!(out, "pong_timeout = \"{}\"", fmt_duration(s.pong_timeout));
        let _ = writeln!(out, "stable_after = \"{}\"", fmt_duration(s.stable_after));
        let _ = writeln!(out, "channels = {:?}", s.channels);
        let _ = writeln!(out, "durable_channels = {:?}", s.durable_channels);
        let _ = writeln!(out, "transcript_interim = {}", s.transcript_interim);
        let _ = writeln!(out, "max_frame_bytes = {}", s.max_frame_bytes);
        let _ = writeln!(
            out,
            "connect_timeout = \"{}\"",
            fmt_duration(s.connect_timeout)
        );
        let _ = writeln!(
            out,
            "backoff_initial = \"{}\"",
            fmt_duration(s.backoff_initial)
        );
        let _ = writeln!(out, "backoff_max = \"{}\"", fmt_duration(s.backoff_max));
        if let SourceMode::VideoDb(v) = &s.mode {
            for a in &v.alerts {
                let _ = writeln!(
                    out,
                    "\n[[source.alerts]]\nrtstream_id = {:?}\nindex_id = {:?}\nevent_id = {:?}",
                    a.rtstream_id, a.index_id, a.event_id
                );
                if let Some(u) = &a.callback_url {
                    let _ = writeln!(out, "callback_url = {:?}", redact_url(u));
                }
            }
        }
        let _ = writeln!(out, "\n[queue]\ndir = {:?}", q.dir.display().to_string());
        let _ = writeln!(out, "max_bytes = {}", q.max_bytes);
        let _ = writeln!(
            out,
            "on_full = \"{}\"",
            match q.on_full {
                OnFull::DropOldest => "drop_oldest",
                OnFull::DropNewest => "drop_newest",
            }
        );
        let _ = writeln!(
            out,
            "fsync = \"{}\"",
            match q.fsync {
                FsyncPolicy::Batch => "batch",
                FsyncPolicy::Always => "always",
                FsyncPolicy::Never => "never",
            }
        );
        let _ = writeln!(out, "segment_bytes = {}", q.segment_bytes);
        if let Some(n) = q.max_records {
            let _ = writeln!(out, "max_records = {n}");
        }
        if let Some(d) = q.max_age {
            let _ = writeln!(out, "max_age = \"{}\"", fmt_duration(d));
        }
        let _ = writeln!(out, "\n[mqtt]\nhost = {:?}\nport = {}", m.host, m.port);
        let _ = writeln!(
            out,
            "client_id = {:?}\ntopic_prefix = {:?}",
            m.client_id, m.topic_prefix
        );
        let _ = writeln!(out, "qos = {}", m.qos as u8);
        let _ = writeln!(out, "keep_alive = \"{}\"", fmt_duration(m.keep_alive));
        let _ = writeln!(out, "max_inflight = {}", m.max_inflight);
        if let Some(r) = m.max_publish_rate {
            let _ = writeln!(out, "max_publish_rate = {r}");
        }
        let _ = writeln!(
            out,
            "stats_interval = \"{}\"",
            fmt_duration(m.stats_interval)
        );
        write_mqtt_extras(&mut out, m);
        let _ = writeln!(
            out,
            "\n[gpio]\nbackend = \"{}\"",
            match g.backend {
                GpioBackendKind::Rppal => "rppal",
                GpioBackendKind::Cdev => "cdev",
                GpioBackendKind::Sim => "sim",
                GpioBackendKind::None => "none",
            }
        );
        if let Some(t) = &g.sim_trace {
            let _ = writeln!(out, "sim_trace = {:?}", t.display().to_string());
        }
        let _ = writeln!(out, "manual_priority = {}", g.manual_priority);
        let _ = writeln!(out, "snooze_lights = {}", g.snooze_lights);
        for o in &g.outputs {
            let _ = writeln!(out, "\n[[gpio.outputs]]\nname = {:?}", o.name);
            if let Some(p) = o.pin {
                let _ = writeln!(out, "pin = {p}");
            }
            if let Some(l) = &o.line {
                let _ = writeln!(out, "line = {l:?}");
            }
            if let Some(c) = &o.chip {
                let _ = writeln!(out, "chip = {c:?}");
            }
            if let Some(off) = o.offset {
                let _ = writeln!(out, "offset = {off}");
            }
            let _ = writeln!(out, "active_low = {}", o.active_low);
            let _ = writeln!(
                out,
                "kind = \"{}\"",
                match o.kind {
                    OutputKind::Light => "light",
                    OutputKind::Buzzer => "buzzer",
                    OutputKind::PassiveBuzzer => "passive_buzzer",
                }
            );
            let _ = writeln!(out, "max_on = \"{}\"", fmt_duration(o.max_on));
        }
        for r in g.rules.iter() {
            let names: Vec<&str> = r
                .outputs
                .iter()
                .map(|&i| g.outputs[i].name.as_str())
                .collect();
            let _ = writeln!(out, "\n[[gpio.rules]]\nlabels = {:?}", r.labels);
            if let Some(n) = &r.name {
                let _ = writeln!(out, "name = {n:?}");
            }
            let _ = writeln!(out, "min_confidence = {}", r.min_confidence);
            if r.fire_without_confidence {
                let _ = writeln!(out, "missing_confidence = \"fire\"");
            }
            let _ = writeln!(out, "outputs = {names:?}");
            let _ = writeln!(out, "pattern = {}", fmt_pattern(&r.pattern));
            let _ = writeln!(out, "priority = {}", r.priority);
            let _ = writeln!(out, "cooldown = \"{}\"", fmt_duration(r.cooldown));
            let _ = writeln!(out, "max_age = \"{}\"", fmt_duration(r.max_age));
            if let Some(id) = &r.rtstream_id {
                let _ = writeln!(out, "rtstream_id = {id:?}");
            }
            if !r.quiet_hours.is_empty() {
                let w: Vec<String> = r.quiet_hours.iter().map(|w| w.to_string()).collect();
                let _ = writeln!(out, "quiet_hours = {w:?}");
            }
        }
        if !g.patterns.is_empty() {
            let _ = writeln!(out, "\n[gpio.patterns]");
            for (name, p) in &g.patterns {
                let _ = writeln!(out, "{name} = {}", fmt_pattern(p));
            }
        }
        if let Some(b) = &g.ack_button {
            let mut parts = Vec::new();
            if let Some(p) = b.pin {
                parts.push(format!("pin = {p}"));
            }
            if let Some(l) = &b.line {
                parts.push(format!("line = {l:?}"));
            }
            if let Some(c) = &b.chip {
                parts.push(format!("chip = {c:?}"));
            }
            if let Some(o) = b.offset {
                parts.push(format!("offset = {o}"));
            }
            parts.push(format!("active_low = {}", b.active_low));
            parts.push(format!("debounce = \"{}\"", fmt_duration(b.debounce)));
            let _ = writeln!(out, "\n[gpio.ack_button]\n{}", parts.join("\n"));
        }
        if let Some(h) = &self.http {
            let _ = writeln!(out, "\n[http]\nlisten = \"{}\"", h.listen);
            if let Some((key, from)) = &h.token_source {
                let _ = writeln!(out, "{key} = {from:?}");
            }
            let _ = writeln!(out, "max_body_bytes = {}", h.max_body_bytes);
            let _ = writeln!(out, "max_connections = {}", h.max_connections);
            let _ = writeln!(
                out,
                "request_timeout = \"{}\"",
                fmt_duration(h.request_timeout)
            );
        }
        out
    }
}

/// The `[mqtt]` keys beyond the basics, for `check-config`. The password itself is never
/// written, only whether one is set.
fn write_mqtt_extras(out: &mut String, m: &MqttConfig) {
    use fmt::Write;
    let _ = writeln!(
        out,
        "protocol = \"{}\"",
        match m.protocol {
            MqttProtocol::V311 => "3.1.1",
            MqttProtocol::V5 => "5",
        }
    );
    if let Some(u) = &m.username {
        let _ = writeln!(out, "username = {u:?}");
    }
    if m.password.is_some() {
        let _ = writeln!(out, "# password = <redacted> (set)");
    }
    let _ = writeln!(out, "tls = {}", m.tls.is_some());
    if let Some(t) = &m.tls {
        for (k, v) in [
            ("ca_file", &t.ca_file),
            ("client_cert", &t.client_cert),
            ("client_key", &t.client_key),
        ] {
            if let Some(p) = v {
                let _ = writeln!(out, "{k} = {:?}", p.display().to_string());
            }
        }
    }
    let _ = writeln!(
        out,
        "message_expiry = \"{}\"",
        fmt_duration(m.message_expiry)
    );
    if let Some(b) = m.max_message_bytes {
        let _ = writeln!(out, "max_message_bytes = {b}");
    }
    let _ = writeln!(out, "ha_discovery = {}", m.ha_discovery);
    let _ = writeln!(out, "ha_prefix = {:?}", m.ha_prefix);
    if !m.ha_event_types.is_empty() {
        let _ = writeln!(out, "ha_event_types = {:?}", m.ha_event_types);
    }
    if let Some(n) = &m.ha_device_name {
        let _ = writeln!(out, "ha_device_name = {n:?}");
    }
    let _ = writeln!(
        out,
        "ha_event_max_age = \"{}\"",
        fmt_duration(m.ha_event_max_age)
    );
}

/// Parses a pattern written as JSON in the config's pattern syntax (the MQTT `cmd/test`
/// payload), with the same checks as `gpio.rules[].pattern`; errors name the field.
pub fn pattern_from_json(value: &serde_json::Value) -> Result<Pattern, ConfigError> {
    let raw: RawPattern = serde_path_to_error::deserialize(value)
        .map_err(|e| invalid(format!("pattern.{}", e.path()), e.inner().to_string()))?;
    validate_pattern(raw, "pattern")
}

/// Deserializes TOML text; the error names the key path and the line.
fn deserialize<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        // toml's message carries the line and a caret; keep its first line compact.
        let reason = inner.message().to_string();
        let line = inner
            .span()
            .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        invalid(
            if key == "." {
                "(top level)".into()
            } else {
                key
            },
            format!("{reason}{line}"),
        )
    })
}

/// Hides query strings and userinfo: pre-authenticated URLs carry their token there.
pub fn redact_url(url: &str) -> String {
    let mut u = url.to_string();
    if let Some(q) = u.find('?') {
        u.truncate(q);
        u.push_str("?<redacted>");
    }
    if let Some(scheme_end) = u.find("://") {
        let rest = &u[scheme_end + 3..];
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            u = format!("{}<redacted>@{}", &u[..scheme_end + 3], &rest[at + 1..]);
        }
    }
    u
}

fn fmt_pattern(p: &Pattern) -> String {
    match p {
        Pattern::Solid { duration } => {
            format!(
                "{{ kind = \"solid\", duration = \"{}\" }}",
                fmt_duration(*duration)
            )
        }
        Pattern::Blink {
            on,
            off,
            count,
            duration,
        } => {
            let tail = match (count, duration) {
                (Some(c), _) => format!("count = {c}"),
                (None, Some(d)) => format!("duration = \"{}\"", fmt_duration(*d)),
                (None, None) => String::new(),
            };
            format!(
                "{{ kind = \"blink\", on = \"{}\", off = \"{}\", {tail} }}",
                fmt_duration(*on),
                fmt_duration(*off)
            )
        }
        Pattern::Sequence { steps } => {
            let s: Vec<String> = steps
                .iter()
                .map(|(a, b)| format!("[\"{}\", \"{}\"]", fmt_duration(*a), fmt_duration(*b)))
                .collect();
            format!("{{ kind = \"sequence\", steps = [{}] }}", s.join(", "))
        }
        Pattern::Tone {
            frequency,
            duty,
            duration,
        } => format!(
            "{{ kind = \"tone\", frequency = {frequency}, duty = {duty}, duration = \"{}\" }}",
            fmt_duration(*duration)
        ),
    }
}

fn validate(
    raw: RawConfig,
    rules: impl ExactSizeIterator<Item = Result<RawRule, ConfigError>>,
) -> Result<Config, ConfigError> {
    let source = validate_source(raw.source, raw.queue.dir.as_deref())?;
    let queue = validate_queue(raw.queue)?;
    let mqtt = validate_mqtt(raw.mqtt)?;
    let gpio = validate_gpio(raw.gpio, rules)?;
    let http = validate_http(raw.http)?;
    Ok(Config {
        source,
        queue,
        mqtt,
        gpio,
        http,
    })
}

/// Default webhook body limit: a VideoDB alert is well under 2 KiB; 64 KiB matches the frame
/// limit of the socket path.
pub const DEFAULT_HTTP_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default connections at once: health checks, a Prometheus scraper and a few webhook
/// deliveries need a handful; each costs a task and a 16 KiB buffer at most.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 16;
/// Default time to send headers, and separately a body (slowloris bound).
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn validate_http(h: RawHttp) -> Result<Option<HttpConfig>, ConfigError> {
    let Some(listen) = h.listen else {
        let set = h.token_env.is_some()
            || h.token_file.is_some()
            || h.max_body_bytes.is_some()
            || h.max_connections.is_some()
            || h.request_timeout.is_some();
        if set {
            return Err(invalid(
                "http.listen",
                "is required when other [http] keys are set (absent = no HTTP server)",
            ));
        }
        return Ok(None);
    };
    // A bare port binds loopback only: exposing the webhook takes an explicit address.
    let listen = if listen.chars().all(|c| c.is_ascii_digit()) && !listen.is_empty() {
        format!("127.0.0.1:{listen}")
    } else {
        listen
    };
    let listen: std::net::SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "http.listen",
            format!("{listen:?} is not an address:port such as \"127.0.0.1:8787\""),
        )
    })?;
    let (token, token_source) = match (h.token_env, h.token_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "http.token_file",
                "set either http.token_env or http.token_file, not both",
            ))
        }
        (Some(var), None) => {
            let v = std::env::var(&var).map_err(|_| {
                invalid(
                    "http.token_env",
                    format!("environment variable {var:?} is not set (or not UTF-8)"),
                )
            })?;
            (Some(v.trim().to_owned()), Some(("token_env", var)))
        }
        (None, Some(path)) => {
            let v = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    "http.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            (
                Some(v.trim().to_owned()),
                Some(("token_file", path.display().to_string())),
            )
        }
        (None, None) => (None, None),
    };
    if let (Some(t), Some((key, _))) = (&token, &token_source) {
        // Short tokens can be guessed over the network.
        if t.len() < 16 {
            return Err(invalid(
                format!("http.{key}"),
                "the token must be at least 16 characters",
            ));
        }
    }
    let max_body_bytes = h
        .max_body_bytes
        .map(|b| b.0 as usize)
        .unwrap_or(DEFAULT_HTTP_MAX_BODY_BYTES);
    if !(256..=1 << 20).contains(&max_body_bytes) {
        return Err(invalid(
            "http.max_body_bytes",
            "must be between 256 B and 1 MiB (the queue's record limit)",
        ));
    }
    let max_connections = h.max_connections.unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS);
    if !(1..=1024).contains(&max_connections) {
        return Err(invalid(
            "http.max_connections",
            "must be between 1 and 1024",
        ));
    }
    let request_timeout = h
        .request_timeout
        .map(|d| d.0)
        .unwrap_or(DEFAULT_HTTP_REQUEST_TIMEOUT);
    if request_timeout < Duration::from_millis(100) || request_timeout > Duration::from_secs(300) {
        return Err(invalid(
            "http.request_timeout",
            "must be between 100ms and 5m",
        ));
    }
    Ok(Some(HttpConfig {
        listen,
        token: token.map(Secret),
        token_source,
        max_body_bytes,
        max_connections,
        request_timeout,
    }))
}

fn validate_source(s: RawSource, queue_dir: Option<&Path>) -> Result<SourceConfig, ConfigError> {
    let max_frame_bytes = s
        .max_frame_bytes
        .map(|b| b.0 as usize)
        .unwrap_or(DEFAULT_MAX_FRAME_BYTES);
    if !(256..=16 << 20).contains(&max_frame_bytes) {
        return Err(invalid(
            "source.max_frame_bytes",
            "must be between 256 B and 16 MiB",
        ));
    }
    let backoff_initial = s
        .backoff_initial
        .map(|d| d.0)
        .unwrap_or(Duration::from_millis(500));
    let backoff_max = s
        .backoff_max
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(30));
    if backoff_initial.is_zero() || backoff_max < backoff_initial {
        return Err(invalid(
            "source.backoff_max",
            "must be at least source.backoff_initial, which must be above zero",
        ));
    }
    let connect_timeout = s
        .connect_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(10));
    if connect_timeout < Duration::from_millis(100) {
        return Err(invalid("source.connect_timeout", "must be at least 100ms"));
    }
    // 20 s keeps NAT and Wi-Fi middleboxes from forgetting an idle connection and is the
    // only timer an idle relay runs; 10 s for the pong covers a slow link's round trip.
    let ping_interval = s
        .ping_interval
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(20));
    let pong_timeout = s
        .pong_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(10));
    if ping_interval < Duration::from_millis(100) {
        return Err(invalid("source.ping_interval", "must be at least 100ms"));
    }
    if pong_timeout < Duration::from_millis(100) {
        return Err(invalid("source.pong_timeout", "must be at least 100ms"));
    }
    let stable_after = s
        .stable_after
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(30));
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

/// VideoDB's ids are short tokens; keeping them to this alphabet means they can go into URL
/// paths without escaping.
fn is_api_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks an id given on the command line or in the config (same rules as the config).
pub fn check_api_id(key: &str, value: &str) -> Result<(), ConfigError> {
    if is_api_id(value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{value:?} is not an id (1-128 letters, digits, - _ .)"),
        ))
    }
}

/// The environment variable the VideoDB SDKs read the key from.
pub const DEFAULT_API_KEY_ENV: &str = "VIDEO_DB_API_KEY";

fn validate_videodb(s: &RawSource, queue_dir: Option<&Path>) -> Result<VideoDbConfig, ConfigError> {
    let api_url = s
        .api_url
        .clone()
        .unwrap_or_else(|| "https://api.videodb.io".into());
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        return Err(invalid(
            "source.api_url",
            "must start with https:// or http://",
        ));
    }
    if let Some(why) = checks::url_host_problem(&api_url) {
        return Err(invalid("source.api_url", why));
    }
    let api_url = api_url.trim_end_matches('/').to_string();
    let (api_key, api_key_from) = match (&s.api_key_env, &s.api_key_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "source.api_key_file",
                "give either api_key_env or api_key_file, not both",
            ))
        }
        (_, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "source.api_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let key = text.trim();
            if key.is_empty() {
                return Err(invalid(
                    "source.api_key_file",
                    format!("{} is empty", path.display()),
                ));
            }
            (Secret::new(key), ApiKeyOrigin::File(path.clone()))
        }
        (env, None) => {
            let name = env.as_deref().unwrap_or(DEFAULT_API_KEY_ENV);
            let key = std::env::var(name).unwrap_or_default();
            let key = key.trim();
            if key.is_empty() {
                return Err(invalid(
                    "source.api_key_env",
                    format!(
                        "environment variable {name} is not set (VideoDB mode needs the API key; \
                         or set source.api_key_file, or source.url for generic mode)"
                    ),
                ));
            }
            (Secret::new(key), ApiKeyOrigin::Env(name.to_string()))
        }
    };
    let collection_id = s.collection_id.clone().unwrap_or_else(|| "default".into());
    check_api_id("source.collection_id", &collection_id)?;
    let mut alerts = Vec::new();
    for (i, a) in s.alerts.iter().enumerate() {
        let key = |k: &str| format!("source.alerts[{i}].{k}");
        check_api_id(&key("rtstream_id"), &a.rtstream_id)?;
        check_api_id(&key("index_id"), &a.index_id)?;
        check_api_id(&key("event_id"), &a.event_id)?;
        if let Some(u) = &a.callback_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(invalid(
                    key("callback_url"),
                    "must start with https:// or http://",
                ));
            }
            if let Some(why) = checks::url_host_problem(u) {
                return Err(invalid(key("callback_url"), why));
            }
        }
        let b = AlertBinding {
            rtstream_id: a.rtstream_id.clone(),
            index_id: a.index_id.clone(),
            event_id: a.event_id.clone(),
            callback_url: a.callback_url.clone(),
        };
        if alerts.contains(&b) {
            return Err(invalid(key("event_id"), "this binding is listed twice"));
        }
        alerts.push(b);
    }
    let state_file = s.state_file.clone().unwrap_or_else(|| {
        queue_dir
            .unwrap_or(Path::new(DEFAULT_QUEUE_DIR))
            .parent()
            .unwrap_or(Path::new("."))
            .join("videodb-alerts.json")
    });
    let auth_retry = s
        .auth_retry
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(300));
    if auth_retry < Duration::from_secs(1) {
        return Err(invalid("source.auth_retry", "must be at least 1s"));
    }
    let request_timeout = s
        .request_timeout
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(15));
    if request_timeout < Duration::from_millis(100) {
        return Err(invalid("source.request_timeout", "must be at least 100ms"));
    }
    Ok(VideoDbConfig {
        api_url,
        api_key,
        api_key_from,
        collection_id,
        alerts,
        state_file,
        auth_retry,
        request_timeout,
    })
}

fn validate_tls(
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

fn validate_channels(
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

fn validate_queue(q: RawQueue) -> Result<QueueConfig, ConfigError> {
    let max_bytes = q.max_bytes.map(|b| b.0).unwrap_or(64 << 20);
    if max_bytes < 64 << 10 {
        return Err(invalid("queue.max_bytes", "must be at least 64 KiB"));
    }
    let on_full = match q.on_full.as_deref().unwrap_or("drop_oldest") {
        "drop_oldest" => OnFull::DropOldest,
        "drop_newest" => OnFull::DropNewest,
        other => {
            return Err(invalid(
                "queue.on_full",
                format!("{other:?} is not one of \"drop_oldest\", \"drop_newest\""),
            ))
        }
    };
    let fsync = match q.fsync.as_deref().unwrap_or("batch") {
        "batch" => FsyncPolicy::Batch,
        "always" => FsyncPolicy::Always,
        "never" => FsyncPolicy::Never,
        other => {
            return Err(invalid(
                "queue.fsync",
                format!("{other:?} is not one of \"batch\", \"always\", \"never\""),
            ))
        }
    };
    // Segments are deleted whole, so drop_oldest frees at least one segment: keep at least
    // eight segments within max_bytes, and no segment larger than 4 MiB (cheap to rescan).
    let default_segment = (max_bytes / 8).clamp(16 << 10, 4 << 20);
    let segment_bytes = q.segment_bytes.map(|b| b.0).unwrap_or(default_segment);
    if segment_bytes < 4 << 10 || segment_bytes > max_bytes / 2 {
        return Err(invalid(
            "queue.segment_bytes",
            "must be at least 4 KiB and at most half of queue.max_bytes",
        ));
    }
    // drop_oldest frees whole segments, and segments are capped at max_records / 8 records, so
    // a bound below 16 would leave segments of one or two records (an fsync'd file each).
    if q.max_records.is_some_and(|n| n < 16) {
        return Err(invalid("queue.max_records", "must be at least 16"));
    }
    let max_age = q.max_age.map(|d| d.0);
    if max_age.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(invalid("queue.max_age", "must be at least 1s"));
    }
    Ok(QueueConfig {
        max_records: q.max_records,
        max_age,
        dir: q.dir.unwrap_or_else(|| PathBuf::from(DEFAULT_QUEUE_DIR)),
        max_bytes,
        on_full,
        fsync,
        segment_bytes,
    })
}

fn validate_mqtt(m: RawMqtt) -> Result<MqttConfig, ConfigError> {
    let topic_prefix = m.topic_prefix.unwrap_or_else(|| "alert-relay".into());
    if let Some(why) = checks::topic_prefix_problem(&topic_prefix) {
        return Err(invalid("mqtt.topic_prefix", why));
    }
    if m.port == Some(0) {
        return Err(invalid("mqtt.port", "must be 1 to 65535"));
    }
    let qos = match m.qos.unwrap_or(1) {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        2 => Qos::ExactlyOnce,
        n => return Err(invalid("mqtt.qos", format!("{n} is not 0, 1 or 2"))),
    };
    let host = m.host.unwrap_or_else(|| "127.0.0.1".into());
    if host.is_empty() {
        return Err(invalid("mqtt.host", "must not be empty"));
    }
    let client_id = m.client_id.unwrap_or_else(|| {
        let (id, warning) = identity::default_client_id();
        if let Some(w) = warning {
            log::warn!("{w}");
        }
        id
    });
    if client_id.is_empty() || client_id.len() > 128 {
        return Err(invalid("mqtt.client_id", "must be 1 to 128 characters"));
    }
    let max_inflight = m.max_inflight.unwrap_or(64);
    if max_inflight == 0 {
        return Err(invalid("mqtt.max_inflight", "must be at least 1"));
    }
    if m.max_publish_rate == Some(0) {
        return Err(invalid(
            "mqtt.max_publish_rate",
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    let keep_alive = m.keep_alive.map(|d| d.0).unwrap_or(Duration::from_secs(30));
    if keep_alive < Duration::from_secs(1) {
        return Err(invalid("mqtt.keep_alive", "must be at least 1s"));
    }
    let stats_interval = m
        .stats_interval
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(60));
    if stats_interval < Duration::from_secs(1) {
        return Err(invalid("mqtt.stats_interval", "must be at least 1s"));
    }
    let backoff_initial = m
        .backoff_initial
        .map(|d| d.0)
        .unwrap_or(Duration::from_millis(250));
    let backoff_max = m
        .backoff_max
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(30));
    if backoff_initial.is_zero() || backoff_max < backoff_initial {
        return Err(invalid(
            "mqtt.backoff_max",
            "must be at least mqtt.backoff_initial, which must be above zero",
        ));
    }
    let protocol = match m.protocol.as_deref().unwrap_or("3.1.1") {
        "3.1.1" | "3" | "4" => MqttProtocol::V311,
        "5" | "5.0" => MqttProtocol::V5,
        other => {
            return Err(invalid(
                "mqtt.protocol",
                format!("{other:?} is not \"3.1.1\" or \"5\""),
            ))
        }
    };
    let password = match (m.password_file, m.password_env) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "mqtt.password_file",
                "give either password_file or password_env, not both",
            ))
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    "mqtt.password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            // One line; a trailing newline from `echo pw > file` is not part of it.
            Some(Secret(text.trim_end_matches(['\r', '\n']).to_string()))
        }
        (None, Some(var)) => Some(Secret(std::env::var(&var).map_err(|_| {
            invalid(
                "mqtt.password_env",
                format!("environment variable {var} is not set (or not UTF-8)"),
            )
        })?)),
        (None, None) => None,
    };
    if password.is_some() && m.username.is_none() {
        return Err(invalid(
            "mqtt.username",
            "is required when a password is given",
        ));
    }
    let tls_wanted = m.tls.unwrap_or(false);
    let has_tls_files = m.ca_file.is_some() || m.client_cert.is_some() || m.client_key.is_some();
    if has_tls_files && !tls_wanted {
        return Err(invalid(
            "mqtt.tls",
            "must be true when ca_file, client_cert or client_key is given",
        ));
    }
    if m.client_cert.is_some() != m.client_key.is_some() {
        return Err(invalid(
            "mqtt.client_key",
            "client_cert and client_key go together",
        ));
    }
    let tls = tls_wanted.then_some(MqttTls {
        ca_file: m.ca_file,
        client_cert: m.client_cert,
        client_key: m.client_key,
    });
    let message_expiry = m
        .message_expiry
        .map(|d| d.0)
        .unwrap_or(Duration::from_secs(3600));
    if message_expiry < Duration::from_secs(1) || message_expiry.as_secs() > u32::MAX as u64 {
        return Err(invalid(
            "mqtt.message_expiry",
            "must be between 1s and about 136 years",
        ));
    }
    let max_message_bytes = m.max_message_bytes.map(|b| b.0 as usize);
    if max_message_bytes.is_some_and(|b| b < 64) {
        return Err(invalid("mqtt.max_message_bytes", "must be at least 64 B"));
    }
    let ha_prefix = m.ha_prefix.unwrap_or_else(|| "homeassistant".into());
    if ha_prefix.is_empty() || ha_prefix.contains(['+', '#', '\0']) {
        return Err(invalid(
            "mqtt.ha_prefix",
            "must be non-empty, without + # or NUL",
        ));
    }
    let ha_event_types = m.ha_event_types.unwrap_or_default();
    if ha_event_types.iter().any(|t| t.is_empty()) {
        return Err(invalid("mqtt.ha_event_types", "must not hold empty names"));
    }
    Ok(MqttConfig {
        host,
        port: m.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
        client_id,
        topic_prefix,
        qos,
        keep_alive,
        max_inflight,
        max_publish_rate: m.max_publish_rate,
        stats_interval,
        backoff_initial,
        backoff_max,
        protocol,
        username: m.username,
        password,
        tls,
        message_expiry,
        max_message_bytes,
        ha_discovery: m.ha_discovery.unwrap_or(false),
        ha_prefix,
        ha_event_types,
        ha_device_name: m.ha_device_name.filter(|n| !n.trim().is_empty()),
        ha_event_max_age: m
            .ha_event_max_age
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(120)),
    })
}

fn validate_gpio(
    g: RawGpio,
    raw_rules: impl ExactSizeIterator<Item = Result<RawRule, ConfigError>>,
) -> Result<GpioConfig, ConfigError> {
    let backend = match g.backend.as_deref().unwrap_or("none") {
        "rppal" => GpioBackendKind::Rppal,
        "cdev" => GpioBackendKind::Cdev,
        "sim" => GpioBackendKind::Sim,
        "none" => GpioBackendKind::None,
        other => {
            return Err(invalid(
                "gpio.backend",
                format!("{other:?} is not one of \"rppal\", \"cdev\", \"sim\", \"none\""),
            ))
        }
    };
    if g.sim_trace.is_some() && backend != GpioBackendKind::Sim {
        return Err(invalid(
            "gpio.sim_trace",
            "only applies to backend = \"sim\"",
        ));
    }
    let mut names = HashSet::new();
    let mut outputs = Vec::new();
    for (i, o) in g.outputs.into_iter().enumerate() {
        let key = |k: &str| format!("gpio.outputs[{i}].{k}");
        if o.name.is_empty()
            || !o
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                key("name"),
                "must be non-empty letters, digits, _ or -",
            ));
        }
        if !names.insert(o.name.clone()) {
            return Err(invalid(key("name"), format!("{:?} is used twice", o.name)));
        }
        match backend {
            GpioBackendKind::Rppal if o.pin.is_none() => {
                return Err(invalid(
                    key("pin"),
                    "is required with backend = \"rppal\" (BCM number)",
                ))
            }
            GpioBackendKind::Cdev
                if o.line.is_none() && (o.chip.is_none() || o.offset.is_none()) =>
            {
                return Err(invalid(
                    key("line"),
                    "backend = \"cdev\" needs line = \"GPIO17\" or chip + offset",
                ))
            }
            _ => {}
        }
        if let Some(p) = o.pin {
            if p > 53 {
                return Err(invalid(
                    key("pin"),
                    format!("{p} is not a BCM GPIO number (0-53)"),
                ));
            }
        }
        let kind = match o.kind.as_deref().unwrap_or("light") {
            "light" => OutputKind::Light,
            "buzzer" => OutputKind::Buzzer,
            "passive_buzzer" => OutputKind::PassiveBuzzer,
            other => {
                return Err(invalid(
                    key("kind"),
                    format!("{other:?} is not one of \"light\", \"buzzer\", \"passive_buzzer\""),
                ))
            }
        };
        let max_on = o.max_on.map(|d| d.0).unwrap_or(Duration::from_secs(30));
        if max_on.is_zero() {
            return Err(invalid(key("max_on"), "must be above zero"));
        }
        outputs.push(OutputConfig {
            name: o.name,
            pin: o.pin,
            line: o.line,
            chip: o.chip,
            offset: o.offset,
            active_low: o.active_low,
            kind,
            max_on,
        });
    }
    let mut rules = Vec::with_capacity(raw_rules.len());
    // Hashes, not copies, of the names seen: 10,000 names are cloned for nothing otherwise.
    let mut rule_names = HashSet::new();
    for (i, r) in raw_rules.enumerate() {
        let r = r?;
        let key = |k: &str| format!("gpio.rules[{i}].{k}");
        if let Some(n) = &r.name {
            if !is_entity_name(n) {
                return Err(invalid(
                    key("name"),
                    "must be non-empty letters, digits, _ or - (64 at most)",
                ));
            }
            let seen = !rule_names.insert(name_hash(n))
                && rules
                    .iter()
                    .any(|o: &RuleConfig| o.name.as_ref() == Some(n));
            if seen {
                return Err(invalid(key("name"), format!("{n:?} is used twice")));
            }
        }
        if r.labels.is_empty() || r.labels.iter().any(|l| l.is_empty()) {
            return Err(invalid(
                key("labels"),
                "needs at least one non-empty label or glob",
            ));
        }
        let min_confidence = r.min_confidence.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_confidence) {
            return Err(invalid(key("min_confidence"), "must be between 0 and 1"));
        }
        let fire_without_confidence = match r.missing_confidence.as_deref() {
            None | Some("skip") => false,
            Some("fire") => true,
            Some(_) => {
                return Err(invalid(
                    key("missing_confidence"),
                    "must be \"skip\" or \"fire\"",
                ))
            }
        };
        let wanted: Vec<String> = match (r.output, r.outputs) {
            (Some(o), None) => vec![o],
            (None, Some(os)) if !os.is_empty() => os,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("output"),
                    "give either output or outputs, not both",
                ))
            }
            _ => return Err(invalid(key("output"), "is required (or outputs = [...])")),
        };
        let mut idx = Vec::new();
        for name in &wanted {
            let pos = outputs
                .iter()
                .position(|o| &o.name == name)
                .ok_or_else(|| invalid(key("output"), format!("no output named {name:?}")))?;
            idx.push(pos);
        }
        let pattern = match r.pattern {
            Some(p) => validate_pattern(p, &key("pattern"))?,
            None => Pattern::Solid {
                duration: Duration::from_secs(1),
            },
        };
        if let Pattern::Tone { .. } = pattern {
            if let Some(&o) = idx
                .iter()
                .find(|&&o| outputs[o].kind != OutputKind::PassiveBuzzer)
            {
                return Err(invalid(
                    key("pattern"),
                    format!(
                        "a tone needs a passive_buzzer output, {:?} is not",
                        outputs[o].name
                    ),
                ));
            }
        }
        if r.rtstream_id.as_deref() == Some("") {
            return Err(invalid(key("rtstream_id"), "must not be empty"));
        }
        let quiet_hours = r
            .quiet_hours
            .iter()
            .enumerate()
            .map(|(j, w)| {
                parse_quiet_window(w)
                    .map_err(|e| invalid(format!("gpio.rules[{i}].quiet_hours[{j}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_age = r.max_age.map(|d| d.0).unwrap_or(Duration::from_secs(30));
        if max_age.is_zero() {
            return Err(invalid(
                key("max_age"),
                "must be above zero (a zero max_age would drop every alert)",
            ));
        }
        let audible = idx
            .iter()
            .map(|&o| outputs[o].kind != OutputKind::Light)
            .collect();
        rules.push(RuleConfig {
            name: r.name,
            labels: r.labels,
            min_confidence,
            fire_without_confidence,
            outputs: idx,
            pattern,
            priority: r.priority.unwrap_or(0),
            cooldown: r.cooldown.map(|d| d.0).unwrap_or(Duration::ZERO),
            max_age,
            rtstream_id: r.rtstream_id,
            quiet_hours,
            audible,
        });
    }
    let ack_button = g
        .ack_button
        .map(|b| validate_ack_button(b, backend))
        .transpose()?;
    if let Some((key, why)) = checks::duplicate_hardware(&outputs, ack_button.as_ref()) {
        return Err(invalid(key, why));
    }
    let mut patterns = Vec::new();
    for (name, p) in g.patterns {
        let key = format!("gpio.patterns.{name}");
        if !is_entity_name(&name) {
            return Err(invalid(
                key,
                "a pattern name must be letters, digits, _ or - (64 at most)",
            ));
        }
        patterns.push((name, validate_pattern(p, &key)?));
    }
    Ok(GpioConfig {
        backend,
        sim_trace: g.sim_trace,
        outputs,
        // Into an Arc without a copy (`Arc<[T]>` from a Vec copies: 2.5 MB more at the peak).
        rules: std::sync::Arc::new(rules),
        ack_button,
        patterns,
        manual_priority: g.manual_priority.unwrap_or(100),
        snooze_lights: g.snooze_lights.unwrap_or(true),
    })
}

fn name_hash(n: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(n)
}

/// Names that end up in MQTT topics and Home Assistant ids (rules, patterns).
fn is_entity_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses one pattern written as a TOML inline table (`alert-relay test-output --pattern`),
/// e.g. `{ kind = "blink", on = "200ms", off = "200ms", count = 3 }`. Errors name `key`.
pub fn parse_pattern(text: &str, key: &str) -> Result<Pattern, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct One {
        pattern: RawPattern,
    }
    let one: One = toml::from_str(&format!("pattern = {text}"))
        .map_err(|e| invalid(key, e.message().to_string()))?;
    validate_pattern(one.pattern, key)
}

/// Default acknowledge-button debounce: longer than the bounce of common tactile switches
/// (a few ms), far shorter than a deliberate press.
pub const DEFAULT_ACK_DEBOUNCE: Duration = Duration::from_millis(50);

fn validate_ack_button(
    b: RawAckButton,
    backend: GpioBackendKind,
) -> Result<AckButton, ConfigError> {
    match backend {
        GpioBackendKind::Rppal if b.pin.is_none() => {
            return Err(invalid(
                "gpio.ack_button.pin",
                "is required with backend = \"rppal\" (BCM number)",
            ))
        }
        GpioBackendKind::Cdev if b.line.is_none() && (b.chip.is_none() || b.offset.is_none()) => {
            return Err(invalid(
                "gpio.ack_button.line",
                "backend = \"cdev\" needs line = \"GPIO5\" or chip + offset",
            ))
        }
        _ => {}
    }
    if let Some(p) = b.pin.filter(|p| *p > 53) {
        return Err(invalid(
            "gpio.ack_button.pin",
            format!("{p} is not a BCM GPIO number (0-53)"),
        ));
    }
    let debounce = b.debounce.map(|d| d.0).unwrap_or(DEFAULT_ACK_DEBOUNCE);
    if debounce > Duration::from_secs(1) {
        return Err(invalid("gpio.ack_button.debounce", "must be at most 1s"));
    }
    Ok(AckButton {
        pin: b.pin,
        line: b.line,
        chip: b.chip,
        offset: b.offset,
        active_low: b.active_low.unwrap_or(true),
        debounce,
    })
}

/// Parses `"22:00-07:00"` (local time, 24-hour clock).
fn parse_quiet_window(s: &str) -> Result<QuietWindow, String> {
    let hm = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
    };
    let bad = || format!("{s:?} is not a window like \"22:00-07:00\"");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (start_min, end_min) = (hm(a).ok_or_else(bad)?, hm(b).ok_or_else(bad)?);
    let (start_min, end_min) = (start_min % 1440, end_min % 1440);
    if start_min == end_min {
        return Err(format!("{s:?} is empty (start equals end)"));
    }
    Ok(QuietWindow { start_min, end_min })
}

/// Shortest "on" (and blink "off") a pattern may have. The engine applies every edge that is
/// due at once, so a pattern of nanosecond steps (which `cmd/test` takes from the network)
/// would keep it toggling flat out for the whole `max_on`; at 1 ms an output changes at most
/// a thousand times a second, which the engine keeps up with (README, GPIO timing).
pub const MIN_PATTERN_STEP: Duration = Duration::from_millis(1);

fn validate_pattern(p: RawPattern, key: &str) -> Result<Pattern, ConfigError> {
    let need = |v: Option<DurationStr>, field: &str| {
        v.map(|d| d.0)
            .filter(|d| *d >= MIN_PATTERN_STEP)
            .ok_or_else(|| invalid(format!("{key}.{field}"), "is required and at least 1ms"))
    };
    let unexpected = |present: bool, field: &str| {
        if present {
            Err(invalid(
                format!("{key}.{field}"),
                format!("does not apply to kind = {:?}", p.kind),
            ))
        } else {
            Ok(())
        }
    };
    match p.kind.as_str() {
        "solid" => {
            unexpected(p.on.is_some() || p.off.is_some(), "on")?;
            unexpected(p.count.is_some(), "count")?;
            unexpected(p.steps.is_some(), "steps")?;
            unexpected(p.frequency.is_some() || p.duty.is_some(), "frequency")?;
            Ok(Pattern::Solid {
                duration: need(p.duration, "duration")?,
            })
        }
        "blink" => {
            unexpected(p.steps.is_some(), "steps")?;
            unexpected(p.frequency.is_some() || p.duty.is_some(), "frequency")?;
            let on = need(p.on, "on")?;
            let off = need(p.off, "off")?;
            let duration = p.duration.map(|d| d.0);
            match (p.count, duration) {
                (Some(0), _) => Err(invalid(format!("{key}.count"), "must be at least 1")),
                (Some(_), Some(_)) => Err(invalid(
                    format!("{key}.count"),
                    "give either count or duration, not both",
                )),
                (None, None) => Err(invalid(
                    format!("{key}.count"),
                    "blink needs count or duration",
                )),
                (count, duration) => Ok(Pattern::Blink {
                    on,
                    off,
                    count,
                    duration,
                }),
            }
        }
        "sequence" => {
            unexpected(p.on.is_some() || p.off.is_some(), "on")?;
            unexpected(p.count.is_some(), "count")?;
            unexpected(p.duration.is_some(), "duration")?;
            let steps: Vec<(Duration, Duration)> = p
                .steps
                .unwrap_or_default()
                .into_iter()
                .map(|(a, b)| (a.0, b.0))
                .collect();
            if steps.is_empty() || steps.iter().any(|(on, _)| *on < MIN_PATTERN_STEP) {
                return Err(invalid(
                    format!("{key}.steps"),
                    "needs at least one [on, off] pair, each on at least 1ms",
                ));
            }
            Ok(Pattern::Sequence { steps })
        }
        "tone" => {
            unexpected(p.on.is_some() || p.off.is_some(), "on")?;
            unexpected(p.count.is_some(), "count")?;
            unexpected(p.steps.is_some(), "steps")?;
            let frequency = p
                .frequency
                .filter(|f| (20..=20_000).contains(f))
                .ok_or_else(|| {
                    invalid(format!("{key}.frequency"), "is required, 20 to 20000 Hz")
                })?;
            let duty = p.duty.unwrap_or(0.5);
            if !(duty > 0.0 && duty < 1.0) {
                return Err(invalid(
                    format!("{key}.duty"),
                    "must be between 0 and 1 (exclusive)",
                ));
            }
            Ok(Pattern::Tone {
                frequency,
                duty,
                duration: need(p.duration, "duration")?,
            })
        }
        other => Err(invalid(
            format!("{key}.kind"),
            format!("{other:?} is not one of \"solid\", \"blink\", \"sequence\", \"tone\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[source]\nurl = \"ws://127.0.0.1:1/\"\n";

    fn err_of(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config should have been rejected:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn example_config_parses_and_matches_the_contract() {
        let text = include_str!("../config/example.toml");
        let cfg = Config::parse(text).expect("config/example.toml must stay valid");
        assert_eq!(cfg.mqtt.topic_prefix, "alert-relay");
        assert_eq!(cfg.queue.fsync, FsyncPolicy::Batch);
        assert!(!cfg.gpio.outputs.is_empty());
        assert!(!cfg.gpio.rules.is_empty());
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let cfg = Config::parse(MINIMAL).expect("minimal config");
        assert_eq!(cfg.mqtt.port, 1883);
        assert_eq!(cfg.mqtt.qos, Qos::AtLeastOnce);
        assert_eq!(cfg.queue.on_full, OnFull::DropOldest);
        assert_eq!(cfg.gpio.backend, GpioBackendKind::None);
        assert_eq!(cfg.source.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err_of(&format!("{MINIMAL}[queue]\nmax_bytez = 5\n"));
        assert!(e.contains("max_bytez"), "{e}");
        assert!(e.contains("queue"), "{e}");
    }

    #[test]
    fn configs_that_cannot_work_are_refused_naming_the_key() {
        let gpio = |backend: &str, outputs: &str| {
            format!("{MINIMAL}[gpio]\nbackend = \"{backend}\"\n{outputs}")
        };
        let out = |name: &str, hw: &str| format!("[[gpio.outputs]]\nname = \"{name}\"\n{hw}\n");
        let cases: Vec<(String, &str, &[&str])> = vec![
            (
                gpio(
                    "rppal",
                    &(out("red", "pin = 17") + &out("horn", "pin = 17")),
                ),
                "gpio.outputs[1].pin",
                &["\"red\"", "\"horn\"", "pin 17"],
            ),
            (
                gpio(
                    "sim",
                    &(out("a", "pin = 4") + &out("b", "pin = 5") + &out("c", "pin = 4")),
                ),
                "gpio.outputs[2].pin",
                &["\"a\"", "\"c\""],
            ),
            (
                gpio(
                    "cdev",
                    &(out("a", "line = \"GPIO17\"") + &out("b", "line = \"GPIO17\"")),
                ),
                "gpio.outputs[1].line",
                &["\"a\"", "\"b\"", "GPIO17"],
            ),
            (
                gpio(
                    "cdev",
                    &(out("a", "chip = \"gpiochip0\"\noffset = 3")
                        + &out("b", "chip = \"gpiochip0\"\noffset = 3")),
                ),
                "gpio.outputs[1].offset",
                &["\"a\"", "\"b\""],
            ),
            (
                gpio(
                    "rppal",
                    &(out("a", "pin = 5") + "[gpio.ack_button]\npin = 5\n"),
                ),
                "gpio.ack_button.pin",
                &["\"a\"", "ack button"],
            ),
            (
                format!("{MINIMAL}[mqtt]\ntopic_prefix = \"$SYS/x\"\n"),
                "mqtt.topic_prefix",
                &["$"],
            ),
            (
                format!("{MINIMAL}[mqtt]\ntopic_prefix = \"a/+/b\"\n"),
                "mqtt.topic_prefix",
                &["wildcard"],
            ),
            (format!("{MINIMAL}[mqtt]\nport = 0\n"), "mqtt.port", &[]),
            (
                "[source]\nurl = \"ws://\"\n".to_string(),
                "source.url",
                &["no host"],
            ),
            (
                "[source]\nurl = \"ws://:9000/x\"\n".to_string(),
                "source.url",
                &["no host"],
            ),
            (
                "[source]\napi_url = \"https://\"\n".to_string(),
                "source.api_url",
                &["no host"],
            ),
            (
                gpio(
                    "sim",
                    &(out("r", "")
                        + "[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\nmax_age = \"0s\"\n"),
                ),
                "gpio.rules[0].max_age",
                &["zero"],
            ),
        ];
        for (text, key, words) in cases {
            let e = err_of(&text);
            assert!(e.contains(key), "{key} not named in {e:?} for\n{text}");
            for w in words {
                assert!(e.contains(w), "{w} missing in {e:?}");
            }
        }
        // Distinct hardware is fine, and sim outputs without any pin are not duplicates.
        let ok = gpio(
            "sim",
            &(out("a", "") + &out("b", "") + &out("c", "pin = 4")),
        );
        Config::parse(&ok).expect("distinct outputs");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[source]\nurl = \"http://x\"\n", "source.url"),
            (&format!("{MINIMAL}[queue]\nfsync = \"sometimes\"\n"), "queue.fsync"),
            (&format!("{MINIMAL}[queue]\nmax_bytes = \"12 parsecs\"\n"), "queue.max_bytes"),
            (&format!("{MINIMAL}[mqtt]\nqos = 3\n"), "mqtt.qos"),
            (&format!("{MINIMAL}[mqtt]\ntopic_prefix = \"a/#\"\n"), "mqtt.topic_prefix"),
            (
                &format!("{MINIMAL}[gpio]\nbackend = \"sim\"\n[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"nope\"\n"),
                "gpio.rules[0].output",
            ),
            (
                &format!("{MINIMAL}[gpio]\nbackend = \"sim\"\n[[gpio.outputs]]\nname = \"r\"\n[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\npattern = {{ kind = \"blink\", on = \"1s\" }}\n"),
                "gpio.rules[0].pattern.off",
            ),
            (
                &format!("{MINIMAL}[gpio]\nbackend = \"sim\"\n[[gpio.outputs]]\nname = \"r\"\n[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\nmissing_confidence = \"maybe\"\n"),
                "gpio.rules[0].missing_confidence",
            ),
            (
                &format!("{MINIMAL}[gpio]\nbackend = \"rppal\"\n[[gpio.outputs]]\nname = \"r\"\n"),
                "gpio.outputs[0].pin",
            ),
        ];
        for (text, key) in cases {
            let e = err_of(text);
            assert!(e.contains(key), "expected {key} in {e:?}");
        }
    }

    #[test]
    fn gpio_keys_name_their_key() {
        let outputs = "[gpio]\nbackend = \"rppal\"\n[[gpio.outputs]]\nname = \"r\"\npin = 17\n";
        let rule = "[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\n";
        let cases = [
            (
                format!("{rule}quiet_hours = [\"22:00-25:00\"]\n"),
                "gpio.rules[0].quiet_hours[0]",
            ),
            (
                format!("{rule}quiet_hours = [\"07:00-07:00\"]\n"),
                "gpio.rules[0].quiet_hours[0]",
            ),
            (
                format!("{rule}rtstream_id = \"\"\n"),
                "gpio.rules[0].rtstream_id",
            ),
            (
                "[gpio.ack_button]\nline = \"GPIO5\"\n".to_string(),
                "gpio.ack_button.pin",
            ),
            (
                "[gpio.ack_button]\npin = 5\ndebounce = \"5s\"\n".to_string(),
                "gpio.ack_button.debounce",
            ),
            (
                "[gpio.ack_button]\npin = 5\nbounce = \"5ms\"\n".to_string(),
                "bounce",
            ),
        ];
        for (tail, key) in cases {
            let e = err_of(&format!("{MINIMAL}{outputs}{tail}"));
            assert!(e.contains(key), "expected {key} in {e:?}");
        }
    }

    #[test]
    fn gpio_extras_parse_with_defaults() {
        let cfg = Config::parse(&format!(
            "{MINIMAL}[gpio]\nbackend = \"cdev\"\n[[gpio.outputs]]\nname = \"r\"\nchip = \"pinctrl-rp1\"\noffset = 17\n\
             [[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\nrtstream_id = \"rts-*\"\nquiet_hours = [\"22:30-06:45\"]\n\
             [gpio.ack_button]\nline = \"GPIO5\"\n"
        ))
        .expect("config");
        let r = &cfg.gpio.rules[0];
        assert_eq!(r.rtstream_id.as_deref(), Some("rts-*"));
        assert_eq!(
            r.quiet_hours,
            vec![QuietWindow {
                start_min: 22 * 60 + 30,
                end_min: 6 * 60 + 45
            }]
        );
        let b = cfg.gpio.ack_button.as_ref().expect("button");
        assert!(b.active_low);
        assert_eq!(b.debounce, DEFAULT_ACK_DEBOUNCE);
        assert!(cfg
            .redacted_toml()
            .contains("quiet_hours = [\"22:30-06:45\"]"));
        assert_eq!(
            parse_pattern(
                "{ kind = \"tone\", frequency = 2000, duration = \"1s\" }",
                "p"
            )
            .expect("tone"),
            Pattern::Tone {
                frequency: 2000,
                duty: 0.5,
                duration: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn mqtt_password_comes_from_a_file_or_env_and_is_never_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2-file\n").expect("write");
        let cfg = Config::parse(&format!(
            "{MINIMAL}[mqtt]\nusername = \"relay\"\npassword_file = \"{}\"\n",
            pw.display()
        ))
        .expect("password_file");
        let secret = cfg.mqtt.password.as_ref().expect("password");
        assert_eq!(secret.expose(), "hunter2-file", "trailing newline dropped");
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let shown = cfg.redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password = <redacted>"), "{shown}");

        std::env::set_var("ALERT_RELAY_CONFIG_TEST_PW", "hunter2-env");
        let cfg = Config::parse(&format!(
            "{MINIMAL}[mqtt]\nusername = \"relay\"\npassword_env = \"ALERT_RELAY_CONFIG_TEST_PW\"\n"
        ))
        .expect("password_env");
        assert_eq!(
            cfg.mqtt.password.as_ref().map(Secret::expose),
            Some("hunter2-env")
        );
        assert!(!cfg.redacted_toml().contains("hunter2"));
    }

    #[test]
    fn bad_mqtt_keys_name_their_key() {
        let cases = [
            (
                "[mqtt]\npassword_file = \"/nonexistent/pw\"\nusername = \"u\"\n",
                "mqtt.password_file",
            ),
            (
                "[mqtt]\npassword_env = \"ALERT_RELAY_SURELY_UNSET_VAR\"\nusername = \"u\"\n",
                "mqtt.password_env",
            ),
            ("[mqtt]\npassword_env = \"HOME\"\n", "mqtt.username"),
            ("[mqtt]\npassword = \"inline\"\n", "password"),
            ("[mqtt]\nca_file = \"/ca.pem\"\n", "mqtt.tls"),
            (
                "[mqtt]\ntls = true\nclient_cert = \"/c.pem\"\n",
                "mqtt.client_key",
            ),
            ("[mqtt]\nprotocol = \"6\"\n", "mqtt.protocol"),
            ("[mqtt]\nmessage_expiry = \"0s\"\n", "mqtt.message_expiry"),
            ("[mqtt]\nmax_message_bytes = 10\n", "mqtt.max_message_bytes"),
            ("[mqtt]\nmax_publish_rate = 0\n", "mqtt.max_publish_rate"),
            ("[mqtt]\nha_prefix = \"home/#\"\n", "mqtt.ha_prefix"),
            ("[mqtt]\nha_event_types = [\"\"]\n", "mqtt.ha_event_types"),
        ];
        for (text, key) in cases {
            let e = err_of(&format!("{MINIMAL}{text}"));
            assert!(e.contains(key), "expected {key} in {e:?}");
        }
    }

    #[test]
    fn mqtt_defaults_and_tls_port() {
        let cfg = Config::parse(MINIMAL).expect("minimal");
        assert_eq!(cfg.mqtt.protocol, MqttProtocol::V311);
        assert_eq!(cfg.mqtt.tls, None);
        assert_eq!(cfg.mqtt.message_expiry, Duration::from_secs(3600));
        assert!(!cfg.mqtt.ha_discovery);
        assert_eq!(cfg.mqtt.ha_prefix, "homeassistant");
        let cfg = Config::parse(&format!("{MINIMAL}[mqtt]\ntls = true\nprotocol = \"5\"\n"))
            .expect("tls");
        assert_eq!(cfg.mqtt.port, 8883);
        assert_eq!(cfg.mqtt.protocol, MqttProtocol::V5);
        assert!(cfg.mqtt.tls.is_some());
    }

    #[test]
    fn test_patterns_parse_from_json_with_config_checks() {
        let p = pattern_from_json(
            &serde_json::json!({"kind": "blink", "on": "100ms", "off": "100ms", "count": 2}),
        )
        .expect("blink");
        assert_eq!(
            p,
            Pattern::Blink {
                on: Duration::from_millis(100),
                off: Duration::from_millis(100),
                count: Some(2),
                duration: None
            }
        );
        let e = pattern_from_json(&serde_json::json!({"kind": "blink", "on": "1s", "off": "1s"}))
            .expect_err("no count");
        assert!(e.to_string().contains("pattern.count"), "{e}");
        let e =
            pattern_from_json(&serde_json::json!({"kind": "solid", "duration": "1s", "colour": 1}))
                .expect_err("unknown field");
        assert!(e.to_string().contains("colour"), "{e}");
    }

    /// The old way: the whole text as one toml document.
    fn parse_whole(text: &str) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = deserialize(text)?;
        let rules = raw.gpio.rules.take().unwrap_or_default();
        validate(raw, rules.into_iter().map(Ok))
    }

    /// `Config::parse` (pieces in memory), `Config::load` (pieces read from the file) and the
    /// whole-document parse must agree, accepted or refused, on layouts that are cut and on
    /// ones that are not.
    #[test]
    fn rules_parsed_in_pieces_match_the_whole_document() {
        let example = include_str!("../config/example.toml");
        let head = "[source]\nurl = \"ws://127.0.0.1:1/\"\n[gpio]\nbackend = \"sim\"\n\
                    [[gpio.outputs]]\nname = \"r\"\n";
        let rule =
            |extra: &str| format!("[[gpio.rules]]\nlabels = [\"a\"]\noutput = \"r\"\n{extra}");
        let texts = [
            example.to_string(),
            format!("{head}{}{}", rule("name = \"x\"\n"), rule("cooldown = \"5s\"\n")),
            // A sub-table of a rule, a header after the rules, a rule at the end without "\n".
            format!(
                "{head}{}[gpio.rules.pattern]\nkind = \"blink\"\non = \"1s\"\noff = \"1s\"\ncount = 2\n\
                 [mqtt]\nport = 1884\n{}",
                rule(""),
                rule("priority = 3").trim_end()
            ),
            // Tricky text that is not a header.
            format!("{head}{}quiet_hours = [\n  \"22:00-06:00\",\n] # [[gpio.rules]]\n", rule("")),
            // Refused: an unknown key in the second rule, a bad value, a duplicate name.
            format!("{head}{}{}", rule(""), rule("colour = 1\n")),
            format!("{head}{}{}", rule(""), rule("cooldown = 5\n")),
            format!("{head}{}{}", rule("name = \"n\"\n"), rule("name = \"n\"\n")),
            // Refused by toml: an inline list and tables both, a rules table that is no list.
            format!("{head}rules = []\n{}", rule("")),
            format!("{head}[gpio.rules]\nlabels = [\"a\"]\n"),
            // Not cut here (a rule's sub-table away from its rule): the whole parse decides.
            format!("{head}{}[mqtt]\n[gpio.rules.pattern]\nkind = \"solid\"\nduration = \"1s\"\n", rule("")),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let shown = |r: Result<Config, ConfigError>| match r {
            Ok(c) => format!("ok: {} rules\n{}", c.gpio.rules.len(), c.redacted_toml()),
            Err(e) => format!("error: {e}"),
        };
        for (i, text) in texts.iter().enumerate() {
            let path = dir.path().join(format!("{i}.toml"));
            std::fs::write(&path, text).expect("write");
            let whole = shown(parse_whole(text));
            assert_eq!(shown(Config::parse(text)), whole, "parse of\n{text}");
            let loaded = shown(Config::load(&path)).replace(&path.display().to_string(), "");
            assert_eq!(
                loaded,
                whole.replace(&path.display().to_string(), ""),
                "load of\n{text}"
            );
        }
        assert!(shown(Config::parse(&texts[4])).contains("colour"));
        assert!(shown(Config::parse(&texts[6])).contains("gpio.rules[1].name"));
        assert!(shown(Config::parse(&texts[7])).starts_with("error"));
    }

    #[test]
    fn redaction_hides_url_tokens() {
        assert_eq!(
            redact_url("wss://user:pw@rt.example/ws?token=abc"),
            "wss://<redacted>@rt.example/ws?<redacted>"
        );
        let cfg =
            Config::parse("[source]\nurl = \"wss://rt.example/ws?token=s3cret\"\n").expect("cfg");
        assert!(!cfg.redacted_toml().contains("s3cret"));
    }

    #[test]
    fn http_is_off_unless_listen_is_set_and_a_bare_port_binds_loopback() {
        assert!(Config::parse(MINIMAL).expect("cfg").http.is_none());
        let cfg = Config::parse(&format!("{MINIMAL}[http]\nlisten = \"8787\"\n")).expect("cfg");
        let h = cfg.http.expect("http");
        assert_eq!(h.listen.to_string(), "127.0.0.1:8787");
        assert!(h.token.is_none(), "no token: the webhook is off");
        assert_eq!(h.max_body_bytes, DEFAULT_HTTP_MAX_BODY_BYTES);
        let e = err_of(&format!("{MINIMAL}[http]\nmax_connections = 4\n"));
        assert!(e.contains("http.listen"), "{e}");
    }

    #[test]
    fn http_token_comes_from_a_file_and_never_shows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token-0123456789\n").expect("write");
        let text = format!(
            "{MINIMAL}[http]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
            path.display().to_string()
        );
        let cfg = Config::parse(&text).expect("cfg");
        let h = cfg.http.as_ref().expect("http");
        assert_eq!(
            h.token.as_ref().map(Secret::expose),
            Some("s3cret-token-0123456789")
        );
        assert!(!cfg.redacted_toml().contains("s3cret"));
        assert!(!format!("{cfg:?}").contains("s3cret"));
        assert!(
            Config::parse(&cfg.redacted_toml()).is_ok(),
            "check-config output parses"
        );
    }

    #[test]
    fn bad_http_values_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short");
        std::fs::write(&short, "abc").expect("write");
        let cases = [
            ("listen = \"localhost\"".to_string(), "http.listen"),
            (
                "listen = \"127.0.0.1:1\"\ntoken_env = \"ALERT_RELAY_TEST_UNSET_VAR_8\"".into(),
                "http.token_env",
            ),
            (
                format!(
                    "listen = \"127.0.0.1:1\"\ntoken_file = {:?}",
                    short.display().to_string()
                ),
                "http.token_file",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"".into(),
                "http.token_file",
            ),
            (
                "listen = \"127.0.0.1:1\"\nmax_body_bytes = \"2MiB\"".into(),
                "http.max_body_bytes",
            ),
            (
                "listen = \"127.0.0.1:1\"\nmax_connections = 0".into(),
                "http.max_connections",
            ),
            (
                "listen = \"127.0.0.1:1\"\nrequest_timeout = \"1ms\"".into(),
                "http.request_timeout",
            ),
            (
                "listen = \"127.0.0.1:1\"\nlisten_backlog = 5".into(),
                "listen_backlog",
            ),
        ];
        for (body, key) in cases {
            let e = err_of(&format!("{MINIMAL}[http]\n{body}\n"));
            assert!(e.contains(key), "expected {key} in {e:?}");
        }
    }

    #[test]
    fn generic_and_videodb_keys_do_not_mix() {
        let e = err_of("[source]\nurl = \"ws://x/\"\napi_url = \"https://api.example\"\n");
        assert!(e.contains("source.api_url"), "{e}");
        let e = err_of(
            "[source]\nurl = \"ws://x/\"\n[[source.alerts]]\nrtstream_id = \"a\"\nindex_id = \"b\"\nevent_id = \"c\"\n",
        );
        assert!(e.contains("source.alerts"), "{e}");
        let e = err_of("[source]\napi_key_env = \"ALERT_RELAY_TEST_UNSET_VAR\"\n");
        assert!(
            e.contains("source.api_key_env") && e.contains("ALERT_RELAY_TEST_UNSET_VAR"),
            "{e}"
        );
    }

    #[test]
    fn videodb_key_comes_from_a_file_and_is_never_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-very-secret\n").expect("write");
        let text = format!(
            "[source]\napi_key_file = \"{}\"\n[[source.alerts]]\nrtstream_id = \"rt1\"\nindex_id = \"ix1\"\nevent_id = \"ev1\"\n[queue]\ndir = \"/srv/relay/queue\"\n",
            key.display()
        );
        let cfg = Config::parse(&text).expect("videodb config");
        let SourceMode::VideoDb(v) = &cfg.source.mode else {
            panic!("expected VideoDB mode");
        };
        assert_eq!(v.api_key.expose(), "sk-very-secret");
        assert_eq!(v.api_url, "https://api.videodb.io");
        assert_eq!(v.collection_id, "default");
        assert_eq!(
            v.state_file,
            PathBuf::from("/srv/relay/videodb-alerts.json")
        );
        assert_eq!(v.auth_retry, Duration::from_secs(300));
        assert_eq!(cfg.source.ping_interval, Duration::from_secs(20));
        assert_eq!(cfg.source.pong_timeout, Duration::from_secs(10));
        for shown in [cfg.redacted_toml(), format!("{cfg:?}")] {
            assert!(!shown.contains("sk-very-secret"), "{shown}");
        }
        // The printed form is itself a valid config.
        let again = Config::parse(&cfg.redacted_toml()).expect("reparse");
        assert!(matches!(again.source.mode, SourceMode::VideoDb(_)));

        let e = err_of(&format!(
            "{text}[[source.alerts]]\nrtstream_id = \"r/t\"\nindex_id = \"i\"\nevent_id = \"e\"\n"
        ));
        assert!(e.contains("source.alerts[1].rtstream_id"), "{e}");
    }

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
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let e = err_of(&format!("{MINIMAL}ca_file = \"{}\"\n", not_pem.display()));
        assert!(e.contains("source.ca_file"), "{e}");
        let e = err_of(&format!("{MINIMAL}ca_file = \"/nonexistent/ca.pem\"\n"));
        assert!(
            e.contains("source.ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn example_config_videodb_block_parses_when_uncommented() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "k").expect("write");
        let mut text = String::new();
        let mut in_block = false;
        for line in include_str!("../config/example.toml").lines() {
            in_block = (in_block || line.starts_with("# --- VideoDB mode"))
                && !line.starts_with("# --- Both modes");
            let setting = line
                .strip_prefix("# ")
                .filter(|r| in_block && (r.contains(" = ") || r.starts_with("[[")));
            match setting {
                _ if line.starts_with("url = ") => {}
                Some(r) if r.starts_with("api_key_env") => {}
                Some(r) if r.starts_with("api_key_file") => {
                    text.push_str(&format!("api_key_file = {:?}\n", key.display().to_string()))
                }
                Some(r) => text.push_str(&format!("{r}\n")),
                None => text.push_str(&format!("{line}\n")),
            }
        }
        let cfg = Config::parse(&text).expect("the VideoDB block of config/example.toml");
        let SourceMode::VideoDb(v) = cfg.source.mode else {
            panic!("expected VideoDB mode");
        };
        assert_eq!(v.alerts.len(), 1);
        assert_eq!(v.api_url, "https://api.videodb.io");
    }
}
