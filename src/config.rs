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
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `ws://` or `wss://` URL (generic mode).
    pub url: String,
    /// Frames above this many bytes are skipped and counted (not a reason to reconnect).
    pub max_frame_bytes: usize,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

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
    pub stats_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
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
    pub labels: Vec<String>,
    pub min_confidence: f64,
    /// Indexes into `GpioConfig::outputs`.
    pub outputs: Vec<usize>,
    pub pattern: Pattern,
    pub priority: i32,
    pub cooldown: Duration,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct GpioConfig {
    pub backend: GpioBackendKind,
    pub sim_trace: Option<PathBuf>,
    pub outputs: Vec<OutputConfig>,
    pub rules: Vec<RuleConfig>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Option<String>,
    max_frame_bytes: Option<ByteSize>,
    connect_timeout: Option<DurationStr>,
    backoff_initial: Option<DurationStr>,
    backoff_max: Option<DurationStr>,
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
    stats_interval: Option<DurationStr>,
    backoff_initial: Option<DurationStr>,
    backoff_max: Option<DurationStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGpio {
    backend: Option<String>,
    sim_trace: Option<PathBuf>,
    #[serde(default)]
    outputs: Vec<RawOutput>,
    #[serde(default)]
    rules: Vec<RawRule>,
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
    labels: Vec<String>,
    min_confidence: Option<f64>,
    output: Option<String>,
    outputs: Option<Vec<String>>,
    pattern: Option<RawPattern>,
    priority: Option<i32>,
    cooldown: Option<DurationStr>,
    max_age: Option<DurationStr>,
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

/// A duration written as a string with a unit: `250ms`, `10s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy)]
struct DurationStr(Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(DurationStr)
            .map_err(serde::de::Error::custom)
    }
}

/// A byte count: an integer, or a string with a unit (`64KiB`, `4MiB`, `1GiB`, `500kB`).
#[derive(Debug, Clone, Copy)]
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(ByteSize(n)),
            Either::S(s) => parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `250ms`, `10s`, `5m`, `2h`, `1d`, also `1.5s`. A bare number is an error: the unit is
/// required so that nobody has to guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h, d)"))?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "duration {s:?} has unknown unit {other:?} (ms, s, m, h, d)"
            ))
        }
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} does not start with a number"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "size {s:?} has unknown unit {other:?} (B, KiB, MiB, GiB, kB, MB, GB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {s:?} is out of range"))
}

// ---------------------------------------------------------------------------------------------
// Validation.

/// Largest frame the relay accepts by default: VideoDB alerts are well under 2 KiB; 64 KiB leaves
/// room for verbose explanations without letting one frame balloon memory.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
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
        })?;
        validate(raw)
    }

    /// The resolved config as TOML, for `check-config`. Secrets never appear in it.
    pub fn redacted_toml(&self) -> String {
        let mut out = String::new();
        let s = &self.source;
        let q = &self.queue;
        let m = &self.mqtt;
        let g = &self.gpio;
        use fmt::Write;
        let _ = writeln!(out, "[source]\nurl = {:?}", redact_url(&s.url));
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
        let _ = writeln!(
            out,
            "stats_interval = \"{}\"",
            fmt_duration(m.stats_interval)
        );
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
        for r in &g.rules {
            let names: Vec<&str> = r
                .outputs
                .iter()
                .map(|&i| g.outputs[i].name.as_str())
                .collect();
            let _ = writeln!(out, "\n[[gpio.rules]]\nlabels = {:?}", r.labels);
            let _ = writeln!(out, "min_confidence = {}", r.min_confidence);
            let _ = writeln!(out, "outputs = {names:?}");
            let _ = writeln!(out, "pattern = {}", fmt_pattern(&r.pattern));
            let _ = writeln!(out, "priority = {}", r.priority);
            let _ = writeln!(out, "cooldown = \"{}\"", fmt_duration(r.cooldown));
            let _ = writeln!(out, "max_age = \"{}\"", fmt_duration(r.max_age));
        }
        out
    }
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

pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 || ms == 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
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

fn default_client_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".into());
    let clean: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    format!("alert-relay-{clean}")
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let source = validate_source(raw.source)?;
    let queue = validate_queue(raw.queue)?;
    let mqtt = validate_mqtt(raw.mqtt)?;
    let gpio = validate_gpio(raw.gpio)?;
    Ok(Config {
        source,
        queue,
        mqtt,
        gpio,
    })
}

fn validate_source(s: RawSource) -> Result<SourceConfig, ConfigError> {
    let url = s
        .url
        .ok_or_else(|| invalid("source.url", "is required (a ws:// or wss:// URL)"))?;
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(invalid("source.url", "must start with ws:// or wss://"));
    }
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
    Ok(SourceConfig {
        url,
        max_frame_bytes,
        connect_timeout: s
            .connect_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
        backoff_initial,
        backoff_max,
    })
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
        dir: q
            .dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/alert-relay/queue")),
        max_bytes,
        on_full,
        fsync,
        segment_bytes,
    })
}

fn validate_mqtt(m: RawMqtt) -> Result<MqttConfig, ConfigError> {
    let topic_prefix = m.topic_prefix.unwrap_or_else(|| "alert-relay".into());
    if topic_prefix.is_empty()
        || topic_prefix.contains(['+', '#', '\0'])
        || topic_prefix.starts_with('/')
        || topic_prefix.ends_with('/')
    {
        return Err(invalid(
            "mqtt.topic_prefix",
            "must be non-empty, without + # or NUL, and not start or end with /",
        ));
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
    let client_id = m.client_id.unwrap_or_else(default_client_id);
    if client_id.is_empty() || client_id.len() > 128 {
        return Err(invalid("mqtt.client_id", "must be 1 to 128 characters"));
    }
    let max_inflight = m.max_inflight.unwrap_or(64);
    if max_inflight == 0 {
        return Err(invalid("mqtt.max_inflight", "must be at least 1"));
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
    Ok(MqttConfig {
        host,
        port: m.port.unwrap_or(1883),
        client_id,
        topic_prefix,
        qos,
        keep_alive,
        max_inflight,
        stats_interval,
        backoff_initial,
        backoff_max,
    })
}

fn validate_gpio(g: RawGpio) -> Result<GpioConfig, ConfigError> {
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
    let mut rules = Vec::new();
    for (i, r) in g.rules.into_iter().enumerate() {
        let key = |k: &str| format!("gpio.rules[{i}].{k}");
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
        rules.push(RuleConfig {
            labels: r.labels,
            min_confidence,
            outputs: idx,
            pattern,
            priority: r.priority.unwrap_or(0),
            cooldown: r.cooldown.map(|d| d.0).unwrap_or(Duration::ZERO),
            max_age: r.max_age.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
        });
    }
    Ok(GpioConfig {
        backend,
        sim_trace: g.sim_trace,
        outputs,
        rules,
    })
}

fn validate_pattern(p: RawPattern, key: &str) -> Result<Pattern, ConfigError> {
    let need = |v: Option<DurationStr>, field: &str| {
        v.map(|d| d.0).filter(|d| !d.is_zero()).ok_or_else(|| {
            invalid(
                format!("{key}.{field}"),
                "is required and must be above zero",
            )
        })
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
            if steps.is_empty() || steps.iter().any(|(on, _)| on.is_zero()) {
                return Err(invalid(
                    format!("{key}.steps"),
                    "needs at least one [on, off] pair with on above zero",
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
    fn durations_and_sizes_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 fortnights").is_err());
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("500kB"), Ok(500_000));
        assert!(parse_bytes("lots").is_err());
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
}
