//! `[mqtt]`: the broker, the session, TLS, the password and Home Assistant discovery.

use std::path::PathBuf;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::units::{backoff_pair, bounded, bounded_opt, names, ByteSize, DurationStr};
use super::{checks, identity, invalid, print, secret, ConfigError, Secret, SecretSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Serialize)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topic_prefix: String,
    pub qos: Qos,
    #[serde(serialize_with = "print::duration")]
    pub keep_alive: Duration,
    /// Publishes sent but not yet acknowledged by the broker, at most.
    pub max_inflight: u16,
    /// Queue records published per second, at most (`None`: as fast as the broker acks).
    pub max_publish_rate: Option<u32>,
    #[serde(serialize_with = "print::duration")]
    pub stats_interval: Duration,
    #[serde(serialize_with = "print::duration")]
    pub backoff_initial: Duration,
    #[serde(serialize_with = "print::duration")]
    pub backoff_max: Duration,
    /// `3.1.1` (default) or `5`.
    pub protocol: MqttProtocol,
    pub username: Option<String>,
    /// Read from `password_file` or `password_env`; never printed.
    #[serde(rename = "# password")]
    pub password: Option<Secret>,
    /// Where the password came from, for `check-config`.
    #[serde(flatten, serialize_with = "secret::print_password")]
    pub password_from: Option<SecretSource>,
    /// TLS to the broker; `None` = plain TCP.
    #[serde(flatten, serialize_with = "print_tls")]
    pub tls: Option<MqttTls>,
    /// MQTT 5 message expiry of alerts, so stale alerts do not pile up in offline sessions.
    #[serde(serialize_with = "print::duration")]
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
    #[serde(serialize_with = "print::duration")]
    pub ha_event_max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum MqttProtocol {
    V311,
    V5,
}

names!(MqttProtocol { "3.1.1" => V311, "3" => V311, "4" => V311, "5" => V5, "5.0" => V5 });

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    /// PEM CA bundle; `None` = the built-in web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for brokers that require client certificates.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Printed as `mqtt.qos`: the number.
impl Serialize for Qos {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

/// `tls = true|false` and, with TLS, the files: the flat `[mqtt]` keys.
fn print_tls<S: Serializer>(tls: &Option<MqttTls>, s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(None)?;
    map.serialize_entry("tls", &tls.is_some())?;
    if let Some(t) = tls {
        map.serialize_entry("ca_file", &t.ca_file)?;
        map.serialize_entry("client_cert", &t.client_cert)?;
        map.serialize_entry("client_key", &t.client_key)?;
    }
    map.end()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
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
    protocol: Option<MqttProtocol>,
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

pub(super) fn validate_mqtt(m: RawMqtt) -> Result<MqttConfig, ConfigError> {
    let topic_prefix = m.topic_prefix.unwrap_or_else(|| "alert-relay".into());
    if let Some(why) = checks::topic_prefix_problem(&topic_prefix) {
        return Err(invalid("mqtt.topic_prefix", why));
    }
    let port = bounded_opt("mqtt.port", m.port, 1.., "must be 1 to 65535")?;
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
    let max_inflight = bounded(
        "mqtt.max_inflight",
        m.max_inflight,
        64,
        1..,
        "must be at least 1",
    )?;
    let max_publish_rate = bounded_opt(
        "mqtt.max_publish_rate",
        m.max_publish_rate,
        1..,
        "must be at least 1 (leave it out for no limit)",
    )?;
    let at_least_1s = |key: &str, value: Option<DurationStr>, default: u64| {
        let default = Duration::from_secs(default);
        bounded(
            key,
            value,
            default,
            Duration::from_secs(1)..,
            "must be at least 1s",
        )
    };
    let keep_alive = at_least_1s("mqtt.keep_alive", m.keep_alive, 30)?;
    let stats_interval = at_least_1s("mqtt.stats_interval", m.stats_interval, 60)?;
    let (backoff_initial, backoff_max) = backoff_pair(
        "mqtt",
        m.backoff_initial,
        m.backoff_max,
        (Duration::from_millis(250), Duration::from_secs(30)),
    )?;
    let protocol = m.protocol.unwrap_or(MqttProtocol::V311);
    let password_from =
        SecretSource::from_keys("mqtt", "password", m.password_env, m.password_file)?;
    let password = password_from
        .as_ref()
        .map(|from| from.read_for("mqtt", "password"))
        .transpose()?;
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
    let message_expiry = bounded(
        "mqtt.message_expiry",
        m.message_expiry,
        Duration::from_secs(3600),
        Duration::from_secs(1)..=Duration::from_secs(u32::MAX.into()),
        "must be between 1s and about 136 years",
    )?;
    let max_message_bytes = bounded_opt(
        "mqtt.max_message_bytes",
        m.max_message_bytes,
        64..,
        "must be at least 64 B",
    )?;
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
        port: port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
        client_id,
        topic_prefix,
        qos,
        keep_alive,
        max_inflight,
        max_publish_rate,
        stats_interval,
        backoff_initial,
        backoff_max,
        protocol,
        username: m.username,
        password,
        password_from,
        tls,
        message_expiry,
        max_message_bytes,
        ha_discovery: m.ha_discovery.unwrap_or(false),
        ha_prefix,
        ha_event_types,
        ha_device_name: m.ha_device_name.filter(|n| !n.trim().is_empty()),
        ha_event_max_age: m
            .ha_event_max_age
            .map_or(Duration::from_secs(120), Duration::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    #[test]
    fn mqtt_password_comes_from_a_file_or_env_and_is_never_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = write_file(dir.path(), "pw", "hunter2-file\n");
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
            assert_refused_naming(&format!("{MINIMAL}{text}"), key);
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
}
