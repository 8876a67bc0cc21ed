//! Home Assistant MQTT discovery (`mqtt.ha_discovery = true`): the retained config messages that
//! make the relay appear in Home Assistant as one device, and the payload of its alert events.
//! Pure: the session publishes what these functions build.
//!
//! The device (identifiers = the node id, derived from `mqtt.client_id`) has:
//! - an `event` entity "Alert" on `{prefix}/event`: every acknowledged alert is published there
//!   as `{"event_type": <label>, ...the alert's fields}`. HA accepts only the announced
//!   `event_types`: the rules' exact labels plus `mqtt.ha_event_types`, and `other` for any
//!   label not among them;
//! - a `binary_sensor` per GPIO output, on `{prefix}/outputs/{name}` (`active` / `idle`);
//! - a `sensor` "Queue depth" from `{prefix}/stats` (`value_json.queue.depth_records`).
//!
//! All are available while `{prefix}/status` is `online`. Discovery is re-sent whenever
//! `{ha_prefix}/status` says `online` (Home Assistant restarted).

use serde_json::{json, Map, Value};

use crate::config::{MqttConfig, RuleConfig};

/// The event type for labels that were not announced.
pub const OTHER_EVENT_TYPE: &str = "other";

/// Home Assistant's birth topic.
pub fn ha_status_topic(cfg: &MqttConfig) -> String {
    format!("{}/status", cfg.ha_prefix)
}

/// Where alert events go (the event entity's state and attributes topic).
pub fn event_topic(cfg: &MqttConfig) -> String {
    format!("{}/event", cfg.topic_prefix)
}

/// The node id: the client id with everything but `[A-Za-z0-9_-]` replaced, as HA requires.
pub fn node_id(cfg: &MqttConfig) -> String {
    cfg.client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The announced event types: exact labels of the rules (globs cannot be listed), the
/// configured extras, and [`OTHER_EVENT_TYPE`]; sorted, without duplicates.
pub fn event_types(cfg: &MqttConfig, rules: &[RuleConfig]) -> Vec<String> {
    let mut v: Vec<String> = rules
        .iter()
        .flat_map(|r| r.labels.iter())
        .filter(|l| !l.contains(['*', '?', '[']))
        .cloned()
        .chain(cfg.ha_event_types.iter().cloned())
        .chain([OTHER_EVENT_TYPE.to_string()])
        .collect();
    v.sort();
    v.dedup();
    v
}

fn device(cfg: &MqttConfig) -> Value {
    json!({
        "identifiers": [node_id(cfg)],
        "name": cfg.client_id,
        "model": "alert-relay",
        "manufacturer": "alert-relay",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

/// Fields every entity shares: identity, availability on `{prefix}/status`, the device, the
/// origin. `default_entity_id` (`{platform}.{slug}`) replaced `object_id` in Home Assistant
/// 2025.10 (`object_id` stops working in 2026.4), so only the new key is sent.
fn common(cfg: &MqttConfig, platform: &str, object: &str, name: &str) -> Map<String, Value> {
    let node = node_id(cfg);
    let slug: String = format!("{node}_{object}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("unique_id".into(), json!(format!("{node}_{object}")));
    m.insert(
        "default_entity_id".into(),
        json!(format!("{platform}.{slug}")),
    );
    m.insert(
        "availability_topic".into(),
        json!(format!("{}/status", cfg.topic_prefix)),
    );
    m.insert("payload_available".into(), json!("online"));
    m.insert("payload_not_available".into(), json!("offline"));
    m.insert("device".into(), device(cfg));
    m.insert(
        "origin".into(),
        json!({"name": "alert-relay", "sw_version": env!("CARGO_PKG_VERSION")}),
    );
    m
}

/// Every discovery message: (retained config topic, JSON payload).
pub fn discovery(
    cfg: &MqttConfig,
    outputs: &[String],
    event_types: &[String],
) -> Vec<(String, Value)> {
    let node = node_id(cfg);
    let ha = &cfg.ha_prefix;
    let prefix = &cfg.topic_prefix;
    let mut out = Vec::new();

    let mut event = common(cfg, "event", "alert", "Alert");
    event.insert("state_topic".into(), json!(event_topic(cfg)));
    event.insert("event_types".into(), json!(event_types));
    event.insert("json_attributes_topic".into(), json!(event_topic(cfg)));
    out.push((
        format!("{ha}/event/{node}/alert/config"),
        Value::Object(event),
    ));

    for name in outputs {
        let mut s = common(
            cfg,
            "binary_sensor",
            &format!("output_{name}"),
            &format!("Output {name}"),
        );
        s.insert(
            "state_topic".into(),
            json!(format!("{prefix}/outputs/{name}")),
        );
        s.insert("payload_on".into(), json!("active"));
        s.insert("payload_off".into(), json!("idle"));
        out.push((
            format!("{ha}/binary_sensor/{node}/output_{name}/config"),
            Value::Object(s),
        ));
    }

    let mut depth = common(cfg, "sensor", "queue_depth", "Queue depth");
    depth.insert("state_topic".into(), json!(format!("{prefix}/stats")));
    depth.insert(
        "value_template".into(),
        json!("{{ value_json.queue.depth_records }}"),
    );
    depth.insert("unit_of_measurement".into(), json!("alerts"));
    depth.insert("state_class".into(), json!("measurement"));
    depth.insert("entity_category".into(), json!("diagnostic"));
    out.push((
        format!("{ha}/sensor/{node}/queue_depth/config"),
        Value::Object(depth),
    ));
    out
}

/// The event entity's payload for one alert: `event_type` (the label when announced, else
/// [`OTHER_EVENT_TYPE`]) plus the alert's fields. `None` if `payload` is not a JSON object.
pub fn event_payload(payload: &[u8], label: &str, event_types: &[String]) -> Option<Vec<u8>> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(payload) else {
        return None;
    };
    let event_type = if event_types.iter().any(|t| t == label) {
        label
    } else {
        OTHER_EVENT_TYPE
    };
    let mut m = Map::new();
    m.insert("event_type".into(), json!(event_type));
    for (k, v) in fields {
        if k != "event_type" {
            m.insert(k, v);
        }
    }
    serde_json::to_vec(&Value::Object(m)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> Config {
        Config::parse(
            r#"
[source]
url = "ws://127.0.0.1:1/"
[mqtt]
client_id = "relay.kitchen 1"
ha_discovery = true
ha_event_types = ["doorbell", "intrusion"]
[gpio]
backend = "sim"
[[gpio.outputs]]
name = "red"
[[gpio.rules]]
labels = ["intrusion", "fire*", "smoke"]
output = "red"
"#,
        )
        .expect("config")
    }

    #[test]
    fn event_types_are_exact_labels_extras_and_other() {
        let c = cfg();
        assert_eq!(
            event_types(&c.mqtt, &c.gpio.rules),
            ["doorbell", "intrusion", "other", "smoke"]
        );
    }

    #[test]
    fn alert_events_carry_event_type_and_fields() {
        let types = vec!["intrusion".to_string(), "other".to_string()];
        let p = event_payload(
            br#"{"label":"intrusion","confidence":0.9}"#,
            "intrusion",
            &types,
        )
        .expect("object");
        let v: Value = serde_json::from_slice(&p).expect("json");
        assert_eq!(
            v,
            json!({"event_type": "intrusion", "label": "intrusion", "confidence": 0.9})
        );
        let p = event_payload(br#"{"label":"cat"}"#, "cat", &types).expect("object");
        let v: Value = serde_json::from_slice(&p).expect("json");
        assert_eq!(v["event_type"], "other");
        assert_eq!(event_payload(b"[1]", "x", &types), None);
    }

    #[test]
    fn node_id_is_safe_for_discovery_topics() {
        assert_eq!(node_id(&cfg().mqtt), "relay_kitchen_1");
    }
}
