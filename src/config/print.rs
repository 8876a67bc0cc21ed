//! The resolved config as TOML (`check-config`), derived from the typed config's `Serialize`:
//! every section's struct says how its keys print, next to their validation, so a new key is
//! printed without a line here.
//!
//! Secrets print as where they come from (`password_file = "PATH"`, `token_env = "VAR"`),
//! values as `<redacted>`, URLs without their query or userinfo. The text is a config that
//! `check-config` accepts again and that parses to the same config (`print_then_parse_*`).
//!
//! The writer goes through `serde_json::Value` (in the binary already) instead of `toml`'s
//! serializer, which would add its formatter to the binary. TOML's basic strings take JSON's
//! escapes, so JSON's string and number text are valid TOML.

use std::fmt::Write;
use std::time::Duration;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::units::fmt_duration;

/// `value` (a struct of sections) as TOML: each section a table, a struct or map in a section
/// a sub-table, a list of structs a `[[section.key]]` list, anything deeper inline. `null`
/// (an unset optional key) is left out; a key starting with `# ` is a note, written as a
/// comment line (`# password = <redacted>`).
/// Sections come in the order of `order` (any other after them); keys within a table in
/// alphabetical order.
pub(super) fn to_toml(value: &impl Serialize, order: &[&str]) -> String {
    let mut out = String::new();
    match serde_json::to_value(value) {
        Ok(Value::Object(sections)) => {
            for name in order {
                if let Some(Value::Object(t)) = sections.get(*name) {
                    table(&mut out, &format!("[{}]", key(name)), name, t, true);
                }
            }
            for (name, v) in sections
                .iter()
                .filter(|(k, _)| !order.contains(&k.as_str()))
            {
                if let Value::Object(t) = v {
                    table(&mut out, &format!("[{}]", key(name)), name, t, true);
                }
            }
        }
        Ok(_) => {}
        Err(e) => {
            let _ = writeln!(out, "# the config cannot be printed: {e}");
        }
    }
    out
}

fn table(out: &mut String, header: &str, path: &str, t: &Map<String, Value>, sub_tables: bool) {
    if !out.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "{header}");
    let is_table = |v: &Value| match v {
        Value::Object(_) => sub_tables,
        Value::Array(a) => sub_tables && !a.is_empty() && a.iter().all(Value::is_object),
        _ => false,
    };
    for (k, v) in t.iter().filter(|(_, v)| !v.is_null() && !is_table(v)) {
        match (k.strip_prefix("# "), v) {
            (Some(note), Value::String(s)) => writeln!(out, "# {note} = {s}"),
            _ => writeln!(out, "{} = {}", key(k), inline(v)),
        }
        .unwrap_or_default();
    }
    for (k, v) in t.iter().filter(|(_, v)| is_table(v)) {
        let path = format!("{path}.{}", key(k));
        match v {
            Value::Object(m) => table(out, &format!("[{path}]"), &path, m, false),
            Value::Array(a) => {
                for m in a.iter().filter_map(Value::as_object) {
                    table(out, &format!("[[{path}]]"), &path, m, false);
                }
            }
            _ => {}
        }
    }
}

/// A value on one line: strings and numbers as JSON writes them, lists and tables inline.
fn inline(v: &Value) -> String {
    match v {
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(inline).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// A bare key when TOML allows one, else a quoted one.
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
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

// `serialize_with` helpers for the section structs.

pub(super) fn url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

pub(super) fn opt_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_str(&redact_url(u)),
        None => s.serialize_none(),
    }
}

pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_duration(*d))
}

pub(super) fn opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&fmt_duration(*d)),
        None => s.serialize_none(),
    }
}

pub(super) fn duration_pairs<S: Serializer>(
    steps: &[(Duration, Duration)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(steps.len()))?;
    for (on, off) in steps {
        seq.serialize_element(&[fmt_duration(*on), fmt_duration(*off)])?;
    }
    seq.end()
}

/// A list of `(name, value)` as a table.
pub(super) fn named<S: Serializer, T: Serialize>(
    items: &[(String, T)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(items.len()))?;
    for (name, v) in items {
        map.serialize_entry(name, v)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use crate::config::*;

    /// The keys a raw section struct takes, from serde's own "expected one of" list.
    fn keys_of<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let e = serde_json::from_str::<T>(r#"{"__no_such_key": 0}"#).expect_err("unknown key");
        let e = e.to_string();
        let list = e.split("expected one of ").nth(1).unwrap_or(&e);
        list.split(", ")
            .map(|k| {
                k.trim_matches(|c: char| c == '`' || c.is_ascii_digit() || !c.is_ascii_graphic())
            })
            .map(|k| k.split('`').next().unwrap_or(k).to_string())
            .filter(|k| !k.is_empty() && !k.contains(' '))
            .collect()
    }

    /// `parse(print(c))` is `c` again (secrets compared by where they come from: their values
    /// are redacted in `Debug`), and printing is stable.
    fn assert_round_trip(text: &str) -> String {
        let cfg = Config::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let printed = cfg.redacted_toml();
        let again = Config::parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(
            format!("{again:?}"),
            format!("{cfg:?}"),
            "printed:\n{printed}"
        );
        assert_eq!(again.redacted_toml(), printed);
        printed
    }

    #[test]
    fn print_then_parse_gives_the_example_config_back() {
        assert_round_trip(include_str!("../../config/example.toml"));
    }

    #[test]
    fn print_then_parse_gives_back_a_config_using_every_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = write_file(dir.path(), name, text);
            format!("{:?}", p.display().to_string())
        };
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let ca = write("ca.pem", &ca.cert.pem());
        let pw = write("pw", "hunter2-file\n");
        let key = write("key", "sk-very-secret\n");
        std::env::set_var("ALERT_RELAY_PRINT_TEST_TOKEN", "token-0123456789abcdef");
        let common = format!(
            r#"max_frame_bytes = "128KiB"
connect_timeout = "5s"
backoff_initial = "1s"
backoff_max = "1m"
ca_file = {ca}
builtin_roots = true
insecure_skip_verify = true
ping_interval = "15s"
pong_timeout = "5s"
stable_after = "45s"
channels = ["transcript", "scene_index"]
durable_channels = ["transcript"]
transcript_interim = true

[queue]
dir = "/srv/q"
max_bytes = "8MiB"
on_full = "drop_newest"
fsync = "always"
segment_bytes = "256KiB"
max_records = 1000
max_age = "1h"

[mqtt]
host = "broker.lan"
port = 8884
client_id = "relay-1"
topic_prefix = "site/relay"
qos = 2
keep_alive = "20s"
max_inflight = 8
max_publish_rate = 50
stats_interval = "30s"
backoff_initial = "100ms"
backoff_max = "10s"
protocol = "5"
username = "relay"
password_file = {pw}
tls = true
ca_file = "/etc/ca.crt"
client_cert = "/etc/c.pem"
client_key = "/etc/c.key"
message_expiry = "10m"
max_message_bytes = "256KiB"
ha_discovery = true
ha_prefix = "ha"
ha_event_types = ["intrusion"]
ha_device_name = "Gate"
ha_event_max_age = "1m"

[gpio]
backend = "sim"
sim_trace = "/tmp/trace"
manual_priority = 50
snooze_lights = false

[[gpio.outputs]]
name = "red"
pin = 17
line = "GPIO17"
chip = "gpiochip0"
offset = 17
active_low = true
kind = "light"
max_on = "1m"

[[gpio.outputs]]
name = "horn"
pin = 18
kind = "passive_buzzer"

[[gpio.rules]]
name = "gate"
labels = ["intrusion*"]
min_confidence = 0.75
missing_confidence = "fire"
outputs = ["red", "horn"]
pattern = {{ kind = "sequence", steps = [["100ms", "50ms"]] }}
priority = 3
cooldown = "5s"
max_age = "20s"
rtstream_id = "rts-*"
quiet_hours = ["22:00-07:00", "12:00-13:30"]

[[gpio.rules]]
labels = ["fire"]
output = "horn"
pattern = {{ kind = "tone", frequency = 2000, duty = 0.25, duration = "2s" }}

[gpio.ack_button]
pin = 5
line = "GPIO5"
chip = "gpiochip0"
offset = 5
active_low = false
debounce = "20ms"

[gpio.patterns]
siren = {{ kind = "blink", on = "100ms", off = "100ms", duration = "3s" }}
steady = {{ kind = "solid", duration = "1500ms" }}
chirp = {{ kind = "blink", on = "50ms", off = "100ms", count = 3 }}

[http]
listen = "0.0.0.0:8787"
token_env = "ALERT_RELAY_PRINT_TEST_TOKEN"
max_body_bytes = "16KiB"
max_connections = 4
request_timeout = "2s"
"#
        );
        let generic = format!(
            "[source]\nurl = \"wss://rt.example:8443/ws\"\nheaders = {{ Authorization = \"Bearer x\", X-Site = \"3\" }}\n{common}"
        );
        let videodb = format!(
            r#"[source]
api_url = "https://api.example"
api_key_file = {key}
collection_id = "c-1"
state_file = "/srv/alerts.json"
auth_retry = "2m"
request_timeout = "7s"
{common}
[[source.alerts]]
rtstream_id = "rts-1"
index_id = "ix-1"
event_id = "ev-1"
callback_url = "https://hooks.example/in"

[[source.alerts]]
rtstream_id = "rts-2"
index_id = "ix-2"
event_id = "ev-2"
"#
        );
        // The other source of each secret.
        std::env::set_var("ALERT_RELAY_PRINT_TEST_KEY", "sk-very-secret-env");
        std::env::set_var("ALERT_RELAY_PRINT_TEST_PW", "hunter2-env");
        let token = write("token", "token-0123456789abcdef-file");
        let from_env = videodb
            .replace(
                &format!("api_key_file = {key}"),
                "api_key_env = \"ALERT_RELAY_PRINT_TEST_KEY\"",
            )
            .replace(
                &format!("password_file = {pw}"),
                "password_env = \"ALERT_RELAY_PRINT_TEST_PW\"",
            )
            .replace(
                "token_env = \"ALERT_RELAY_PRINT_TEST_TOKEN\"",
                &format!("token_file = {token}"),
            );
        let printed = [
            assert_round_trip(&generic),
            assert_round_trip(&videodb),
            assert_round_trip(&from_env),
        ];
        for shown in &printed {
            for secret in ["hunter2", "sk-very", "token-0123", "Bearer"] {
                assert!(!shown.contains(secret), "{secret} printed:\n{shown}");
            }
        }
        assert!(
            printed[0].contains("Authorization = \"<redacted>\""),
            "{}",
            printed[0]
        );
        assert!(
            printed[0].contains(&format!("password_file = {pw}")),
            "{}",
            printed[0]
        );
        assert!(
            printed[1].contains(&format!("api_key_file = {key}")),
            "{}",
            printed[1]
        );
        assert!(printed[1].contains("token_env = \"ALERT_RELAY_PRINT_TEST_TOKEN\""));
        assert!(printed[2].contains("password_env = \"ALERT_RELAY_PRINT_TEST_PW\""));
        assert!(printed[2].contains(&format!("token_file = {token}")));
        // Every key of every section is set above: a new key fails here until it is.
        let all = format!("{generic}{videodb}{from_env}");
        let sections = [
            keys_of::<super::super::source::RawSource>(),
            keys_of::<super::super::videodb::RawAlertBinding>(),
            keys_of::<super::super::queue::RawQueue>(),
            keys_of::<super::super::mqtt::RawMqtt>(),
            keys_of::<super::super::gpio::RawGpio>(),
            keys_of::<super::super::gpio::RawOutput>(),
            keys_of::<super::super::rule::RawRule>(),
            keys_of::<super::super::gpio::RawAckButton>(),
            keys_of::<super::super::pattern::RawPattern>(),
            keys_of::<super::super::http::RawHttp>(),
        ];
        assert!(sections.iter().all(|k| k.len() > 3), "{sections:?}");
        for key in sections.iter().flatten() {
            let set = all.contains(&format!("\n{key} = "))
                || all.contains(&format!(" {key} = "))
                || all.contains(&format!(".{key}]"));
            assert!(set, "key {key} is not set by the every-key config");
        }
    }
}
