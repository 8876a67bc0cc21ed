//! Counters every stage updates, and one JSON snapshot of them for `{prefix}/stats` (and later
//! the HTTP endpoints).
//!
//! Owns: the counters and the rate limiter for log lines about bad input. Never does: I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Monotonic counters since start. Each field's doc says what it counts.
        #[derive(Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $name: AtomicU64,)*
            source_connected: AtomicU64,
            broker_connected: AtomicU64,
            log_limiter: Mutex<LogLimiter>,
            source_status: Mutex<SourceStatus>,
            /// Per-output GPIO counters, set once by the GPIO engine (`gpio_outputs` in JSON).
            gpio_outputs: OnceLock<Vec<OutputCounters>>,
        }

        /// Every counter's name and doc, in declaration order (HELP lines of `/metrics`).
        pub const COUNTER_DOCS: &[(&str, &str)] = &[$((stringify!($name), $doc),)*];

        impl Stats {
            fn counters_json(&self) -> Map<String, Value> {
                let mut m = Map::new();
                $(m.insert(stringify!($name).into(), json!(self.$name.load(Ordering::Relaxed)));)*
                m
            }
        }
    };
}

counters! {
    frames_received: "Text frames read from the WebSocket.",
    frames_invalid_json: "Frames that were not JSON, or not a JSON object.",
    frames_binary: "Binary frames (skipped).",
    frames_oversize: "Frames above `source.max_frame_bytes` (skipped).",
    frames_no_channel: "Envelopes without a channel field.",
    frames_other_channel: "Envelopes on channels that are not relayed.",
    alerts_received: "Alerts accepted from any path.",
    alerts_invalid: "Alert envelopes rejected (no label, bad types).",
    alerts_bad_confidence: "Alerts relayed with a confidence that is not a number in 0..1.",
    alerts_missing_event_id: "Alerts relayed without an event_id.",
    source_connects: "Successful WebSocket connections.",
    source_connect_failures: "Failed WebSocket connection attempts.",
    queue_appended: "Records made durable in the queue.",
    queue_append_failed: "Records the queue could not take (full with drop_newest, disk errors).",
    mqtt_connects: "Successful broker connections.",
    mqtt_connect_failures: "Failed or lost broker connections.",
    mqtt_published: "Queue records sent to the broker (replays included).",
    mqtt_acked: "Queue records acknowledged by the broker.",
    mqtt_undecodable: "Queue records that could not be decoded and were set aside.",
    mqtt_set_aside: "Queue records acknowledged without delivery so the rest can flow: undecodable, above the broker's size limit, refused by the broker (MQTT 5), or closing the connection every time they are sent.",
    mqtt_refused: "Publishes the broker refused with an MQTT 5 reason code (not authorised, too large, quota).",
    mqtt_commands: "Commands received on {prefix}/cmd/...",
    mqtt_command_errors: "Commands answered with an error (bad payload, unknown output, GPIO off).",
    gpio_rule_matches: "Rule matches that started or extended a pattern.",
    gpio_skipped_stale: "Rule matches skipped because the alert was older than max_age.",
    gpio_skipped_cooldown: "Rule matches skipped because the rule was cooling down.",
    gpio_edges: "Output level changes driven.",
    gpio_errors: "Backend errors while driving an output.",
    alerts_duplicate: "Alerts dropped because a copy with the same event_id and timestamp was seen already (either path).",
    webhook_requests: "POST /webhook requests received.",
    webhook_rejected: "Webhook requests answered 4xx (bad token, oversize, bad JSON, missing fields).",
    webhook_refused: "Webhook alerts answered 503 because the queue did not make them durable.",
    http_connections_refused: "HTTP connections closed at once because http.max_connections were open.",
    source_reconnects: "WebSocket connections after the first one.",
    source_pings: "WebSocket pings sent.",
    source_ping_timeouts: "Connections declared dead because nothing came back after a ping.",
    source_auth_failures: "REST calls rejected with 401/403 (or another 4xx) by VideoDB.",
    videodb_api_errors: "Other failed VideoDB REST calls (network, 5xx, bad responses).",
    videodb_alerts_created: "Alerts bound to a new connection_id.",
    videodb_alerts_disabled: "Alerts of earlier connections removed (deleted, or disabled where the service cannot delete).",
    channel_queued: "Non-alert channel messages handed to the queue (durable_channels).",
    channel_published: "Non-alert channel messages handed to MQTT best-effort (QoS 0).",
    channel_dropped: "Best-effort channel messages dropped because MQTT was not keeping up.",
    transcripts_interim_dropped: "Interim transcripts (is_final = false) not relayed.",
    gpio_skipped_quiet: "Buzzer fires skipped because their rule was in quiet hours.",
    gpio_quiet_unsynced: "Buzzer fires not held back by quiet hours because the clock was not synchronised.",
    gpio_age_by_timestamp: "Alerts whose max_age was judged by their own timestamp (clock synchronised).",
    gpio_age_by_receipt: "Alerts whose max_age was judged by their receipt time (clock not synchronised, or no timestamp).",
    gpio_silenced: "Silence commands (MQTT or the acknowledge button).",
}

/// What the source is doing now, for `{prefix}/stats`.
#[derive(Debug, Clone, Default)]
struct SourceStatus {
    state: &'static str,
    connection_id: Option<String>,
    since_us: u64,
    last_error: Option<String>,
}

/// What one GPIO output did since start (`gpio_outputs.{name}` in the snapshot).
#[derive(Default)]
pub struct OutputCounters {
    pub name: String,
    /// Level changes driven on this output.
    pub edges: AtomicU64,
    /// Patterns started (fresh, not extensions).
    pub patterns_started: AtomicU64,
    /// Re-triggers of the running rule that extended its pattern.
    pub extended: AtomicU64,
    /// Patterns replaced by one of equal or higher priority before they ended.
    pub preempted: AtomicU64,
    /// Fires ignored because a higher-priority pattern was running.
    pub ignored_lower_priority: AtomicU64,
    /// Patterns stopped by a silence command.
    pub silenced: AtomicU64,
    /// Patterns cut short by the output's `max_on`.
    pub max_on_cuts: AtomicU64,
    /// Fires skipped because the rule was in quiet hours (buzzers only).
    pub quiet_skipped: AtomicU64,
    /// Backend errors on this output.
    pub errors: AtomicU64,
}

impl OutputCounters {
    fn json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "edges": g(&self.edges),
            "patterns_started": g(&self.patterns_started),
            "extended": g(&self.extended),
            "preempted": g(&self.preempted),
            "ignored_lower_priority": g(&self.ignored_lower_priority),
            "silenced": g(&self.silenced),
            "max_on_cuts": g(&self.max_on_cuts),
            "quiet_skipped": g(&self.quiet_skipped),
            "errors": g(&self.errors),
        })
    }
}

/// At most one line per category per interval; the rest are counted and summarised.
#[derive(Default)]
struct LogLimiter {
    last: Vec<(&'static str, Instant, u64)>,
}

/// How often one category of bad-input warning may be logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Stats {
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Creates the per-output counters (first call wins: outputs do not change at runtime).
    pub fn register_outputs<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let _ = self.gpio_outputs.set(
            names
                .into_iter()
                .map(|n| OutputCounters {
                    name: n.to_string(),
                    ..OutputCounters::default()
                })
                .collect(),
        );
    }

    /// Output `i`'s counters, once registered.
    pub fn output(&self, i: usize) -> Option<&OutputCounters> {
        self.gpio_outputs.get().and_then(|v| v.get(i))
    }

    pub fn set_source_connected(&self, up: bool) {
        self.source_connected.store(up as u64, Ordering::Relaxed);
    }

    pub fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up as u64, Ordering::Relaxed);
    }

    /// Records the source's state (`connecting`, `connected`, `backoff`), its `connection_id`
    /// when known, and the last error (never holding a secret).
    pub fn set_source_state(
        &self,
        state: &'static str,
        connection_id: Option<&str>,
        last_error: Option<String>,
    ) {
        let mut s = self.source_status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = state;
        s.connection_id = connection_id.map(str::to_owned);
        s.since_us = crate::clock::unix_micros(std::time::SystemTime::now());
        if last_error.is_some() {
            s.last_error = last_error;
        }
    }

    /// The source part of a snapshot: `{"state", "connection_id", "since", "last_error"}`.
    pub fn source_json(&self) -> Value {
        let s = self
            .source_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        json!({
            "state": if s.state.is_empty() { "starting" } else { s.state },
            "connection_id": s.connection_id,
            "since": (s.since_us > 0).then(|| crate::clock::rfc3339_micros(s.since_us)),
            "last_error": s.last_error,
        })
    }

    /// Logs `msg` at warn level unless `category` was logged within [`LOG_INTERVAL`]; then it
    /// is only counted, and the next line that gets through says how many were suppressed.
    pub fn warn_limited(&self, category: &'static str, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        let mut lim = self.log_limiter.lock().unwrap_or_else(|p| p.into_inner());
        let entry = match lim.last.iter_mut().position(|(c, _, _)| *c == category) {
            Some(i) => &mut lim.last[i],
            None => {
                lim.last.push((category, now - LOG_INTERVAL * 2, 0));
                let i = lim.last.len() - 1;
                &mut lim.last[i]
            }
        };
        if now.duration_since(entry.1) >= LOG_INTERVAL {
            if entry.2 > 0 {
                log::warn!(
                    "{msg} ({} similar suppressed in the last {}s)",
                    entry.2,
                    LOG_INTERVAL.as_secs()
                );
            } else {
                log::warn!("{msg}");
            }
            entry.1 = now;
            entry.2 = 0;
        } else {
            entry.2 += 1;
        }
    }

    /// A queue error (the writer's, the publisher's reads), rate-limited as one category.
    pub fn log_queue_error(&self, e: &dyn std::fmt::Display) {
        self.warn_limited("queue", format_args!("queue: {e}"));
    }

    /// Everything as one JSON object; `queue` is filled by the caller, which holds the lock.
    pub fn snapshot(&self, queue: Option<Value>) -> Value {
        let mut m = self.counters_json();
        // One fsync counter, the queue's own: its figures keep their top-level names too.
        for (top, key) in [
            ("queue_fsyncs", "fsyncs"),
            ("fsync_latency_us_avg", "fsync_latency_us_avg"),
            ("fsync_latency_us_max", "fsync_latency_us_max"),
        ] {
            if let Some(v) = queue.as_ref().and_then(|q| q.get(key)) {
                m.insert(top.into(), v.clone());
            }
        }
        m.insert(
            "source_connected".into(),
            json!(self.source_connected.load(Ordering::Relaxed) == 1),
        );
        m.insert(
            "broker_connected".into(),
            json!(self.broker_connected.load(Ordering::Relaxed) == 1),
        );
        m.insert("clock_synced".into(), json!(crate::timesync::synced()));
        m.insert("source".into(), self.source_json());
        if let Some(outs) = self.gpio_outputs.get() {
            let o: Map<String, Value> = outs.iter().map(|c| (c.name.clone(), c.json())).collect();
            m.insert("gpio_outputs".into(), Value::Object(o));
        }
        if let Some(q) = queue {
            m.insert("queue".into(), q);
        }
        Value::Object(m)
    }
}

/// The queue part of a snapshot: what `Queue::snapshot` reports, serialised as it is (stats
/// names no stage; the field names are the keys).
pub fn queue_json(q: &impl serde::Serialize) -> Value {
    serde_json::to_value(q).unwrap_or(Value::Null)
}
