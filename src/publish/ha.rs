//! Home Assistant MQTT discovery (`mqtt.ha_discovery = true`): the retained config messages that
//! make the relay appear in Home Assistant as one device, and the payload of its alert events.
//! Pure: the session publishes what these functions build.
//!
//! The device (identifiers = the node id, derived from `mqtt.client_id`; named
//! `mqtt.ha_device_name`, else the client id) has:
//! - an `event` entity "Alert" on `{prefix}/event`: acknowledged alerts younger than
//!   `mqtt.ha_event_max_age`, not replayed, as `{"event_type": <label>, ...the alert's fields}`.
//!   The announced `event_types` are the rules' exact labels, `mqtt.ha_event_types`, the labels
//!   seen so far (learned, persisted: [`super::ha_state`]) and `other`;
//! - per output: a `binary_sensor` on `{prefix}/outputs/{name}` (`active` / `idle`); a `siren`
//!   (buzzers; tones = the named patterns that fit) or a `light` (lights; effects = the named
//!   patterns) driven through `{prefix}/outputs/{name}/set`, state on `{prefix}/outputs/{name}/state`;
//!   a `button` "Test {name}" on `{prefix}/cmd/test/{name}`;
//! - `button`s "Silence" (`cmd/silence`) and "Snooze 30m" (`cmd/snooze`), a
//!   timestamp `sensor` "Silenced until" on `{prefix}/snooze`;
//! - per named rule, a `switch` "Rule {name}" on `{prefix}/rules/{name}/set` and `/state`;
//! - diagnostics from `{prefix}/health` (published on change, at most once a second): a
//!   connectivity `binary_sensor` for the alert source, sensors for queue depth and the alerts
//!   received, dropped and set aside.
//!
//! All are available while `{prefix}/status` is `online`. Discovery is re-sent whenever
//! `{ha_prefix}/status` says `online` (Home Assistant restarted) and when a label is learned.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::event_types::Announced;
use crate::config::{GpioConfig, MqttConfig, OutputKind, Pattern};

/// The event type for labels that were not announced.
pub const OTHER_EVENT_TYPE: &str = "other";

/// What the snooze button sends to `cmd/snooze` (any other length: publish there).
pub const SNOOZE_BUTTON_FOR: &str = "30m";

/// Home Assistant's birth topic.
pub fn ha_status_topic(cfg: &MqttConfig) -> String {
    format!("{}/status", cfg.ha_prefix)
}

/// Where alert events go (the event entity's state and attributes topic).
pub fn event_topic(cfg: &MqttConfig) -> String {
    format!("{}/event", cfg.topic_prefix)
}

/// The retained state of output `name` for its siren or light.
pub fn output_state_topic(prefix: &str, name: &str) -> String {
    format!("{prefix}/outputs/{name}/state")
}

/// The retained state of a named rule (`ON` armed, `OFF` disarmed).
pub fn rule_state_topic(prefix: &str, name: &str) -> String {
    format!("{prefix}/rules/{name}/state")
}

/// The retained snooze state: `{"until": <RFC 3339> | null}`.
pub fn snooze_topic(prefix: &str) -> String {
    format!("{prefix}/snooze")
}

/// The retained health summary the diagnostic entities read.
pub fn health_topic(prefix: &str) -> String {
    format!("{prefix}/health")
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

#[derive(Serialize)]
struct Device<'a> {
    identifiers: [&'a str; 1],
    name: &'a str,
    model: &'static str,
    manufacturer: &'static str,
    sw_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    configuration_url: Option<&'a str>,
}

#[derive(Serialize)]
struct Origin {
    name: &'static str,
    sw_version: &'static str,
}

/// What discovery needs besides the MQTT config.
pub struct DiscoveryInput<'a> {
    pub gpio: &'a GpioConfig,
    /// Whether the GPIO engine runs (else no controls are announced).
    pub controls: bool,
    pub event_types: Announced<'a>,
    /// `http://host:port/healthz` when the HTTP server is on.
    pub configuration_url: Option<&'a str>,
    /// The snooze button's duration, as `cmd/snooze` takes it (`"30m"`).
    pub snooze_for: &'a str,
}

/// One entity's config: the fields every entity shares (identity, availability on
/// `{prefix}/status`, the device, the origin) and its own `fields`. `default_entity_id`
/// (`{platform}.{slug}`) replaced `object_id` in Home Assistant 2025.10 (`object_id` stops
/// working in 2026.4), so only the new key is sent; older versions ignore it and derive the
/// entity id from the device and entity names.
#[derive(Serialize)]
struct Entity<'a, F: Serialize> {
    name: &'a str,
    unique_id: String,
    default_entity_id: String,
    availability_topic: String,
    payload_available: &'static str,
    payload_not_available: &'static str,
    device: Device<'a>,
    origin: Origin,
    #[serde(flatten)]
    fields: F,
}

/// A named rule's switch: the one entity there are thousands of, so a struct, not a `Value`.
#[derive(Serialize)]
struct RuleSwitch {
    command_topic: String,
    state_topic: String,
    payload_on: &'static str,
    payload_off: &'static str,
    icon: &'static str,
    entity_category: &'static str,
}

/// The event entity's own fields: a struct, as its `event_types` list every exact label of
/// every rule (written straight from the rules, not copied into a `Value` first).
#[derive(Serialize)]
struct EventFields<'a> {
    state_topic: String,
    event_types: Announced<'a>,
    json_attributes_topic: String,
    icon: &'static str,
}

/// Writes entity `object` of `platform` as JSON into `buf` (cleared first) and returns its
/// retained config topic.
fn render<F: Serialize>(
    cfg: &MqttConfig,
    input: &DiscoveryInput<'_>,
    (platform, object, name): (&str, &str, &str),
    fields: F,
    buf: &mut Vec<u8>,
) -> Option<String> {
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
    let entity = Entity {
        name,
        unique_id: format!("{node}_{object}"),
        default_entity_id: format!("{platform}.{slug}"),
        availability_topic: format!("{}/status", cfg.topic_prefix),
        payload_available: "online",
        payload_not_available: "offline",
        device: Device {
            identifiers: [&node],
            name: cfg.ha_device_name.as_deref().unwrap_or(&cfg.client_id),
            model: "alert-relay",
            manufacturer: "alert-relay project",
            sw_version: env!("CARGO_PKG_VERSION"),
            configuration_url: input.configuration_url,
        },
        origin: Origin {
            name: "alert-relay",
            sw_version: env!("CARGO_PKG_VERSION"),
        },
        fields,
    };
    buf.clear();
    serde_json::to_writer(&mut *buf, &entity).ok()?;
    Some(format!(
        "{}/{platform}/{node}/{object}/config",
        cfg.ha_prefix
    ))
}

/// Named patterns that output `kind` can play (tones only on a passive buzzer).
pub fn patterns_for(gpio: &GpioConfig, kind: OutputKind) -> Vec<String> {
    gpio.patterns
        .iter()
        .filter(|(_, p)| kind == OutputKind::PassiveBuzzer || !matches!(p, Pattern::Tone { .. }))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Where a [`Discovery`] is in the list of entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Event,
    /// Output `i`: its binary sensor (0), light or siren (1), test button (2).
    Output(usize, u8),
    Silence,
    Snooze,
    SilencedUntil,
    /// The switch of rule `i` (unnamed rules have none).
    Rule(usize),
    Source,
    /// The diagnostic sensor `i` of [`SENSORS`].
    Sensor(usize),
    Done,
}

/// The diagnostic sensors on `{prefix}/health`: object, name, key, state class, icon.
const SENSORS: [(&str, &str, &str, &str, &str); 4] = [
    (
        "queue_depth",
        "Queue depth",
        "queue_depth",
        "measurement",
        "mdi:tray-full",
    ),
    (
        "received",
        "Alerts received",
        "received",
        "total_increasing",
        "mdi:bell-ring",
    ),
    (
        "dropped",
        "Alerts dropped",
        "dropped",
        "total_increasing",
        "mdi:delete-alert",
    ),
    (
        "set_aside",
        "Alerts set aside",
        "set_aside",
        "total_increasing",
        "mdi:tray-remove",
    ),
];

/// The discovery messages, one at a time: each payload is rendered into the caller's buffer
/// when it is sent, so 10,000 named rules never exist as 10,000 payloads at once (and the
/// sender can wait for room in the client's channel between two). The input is passed to each
/// [`Discovery::next`]: a reload in between shows in the rest.
#[derive(Debug)]
pub struct Discovery {
    step: Step,
}

impl Default for Discovery {
    fn default() -> Discovery {
        Discovery { step: Step::Event }
    }
}

impl Discovery {
    /// Renders the next message's payload into `buf` and returns its retained config topic;
    /// `None` when all have been rendered.
    pub fn next(
        &mut self,
        cfg: &MqttConfig,
        input: &DiscoveryInput<'_>,
        buf: &mut Vec<u8>,
    ) -> Option<String> {
        loop {
            let step = self.step;
            if step == Step::Done {
                return None;
            }
            self.step = advance(step, input);
            if let Some(topic) = render_step(step, cfg, input, buf) {
                return Some(topic);
            }
        }
    }
}

fn advance(step: Step, input: &DiscoveryInput<'_>) -> Step {
    let outputs = input.gpio.outputs.len();
    match step {
        Step::Event => Step::Output(0, 0),
        Step::Output(i, _) if i >= outputs => {
            if input.controls {
                Step::Silence
            } else {
                Step::Source
            }
        }
        Step::Output(i, 0) if input.controls => Step::Output(i, 1),
        Step::Output(i, 1) => Step::Output(i, 2),
        Step::Output(i, _) => Step::Output(i + 1, 0),
        Step::Silence => Step::Snooze,
        Step::Snooze => Step::SilencedUntil,
        Step::SilencedUntil => Step::Rule(0),
        Step::Rule(i) if i >= input.gpio.rules.len() => Step::Source,
        Step::Rule(i) => Step::Rule(i + 1),
        Step::Source => Step::Sensor(0),
        Step::Sensor(i) if i + 1 < SENSORS.len() => Step::Sensor(i + 1),
        Step::Sensor(_) | Step::Done => Step::Done,
    }
}

/// The message of `step`, if it has one (an output index past the end, an unnamed rule: none).
fn render_step(
    step: Step,
    cfg: &MqttConfig,
    input: &DiscoveryInput<'_>,
    buf: &mut Vec<u8>,
) -> Option<String> {
    let prefix = &cfg.topic_prefix;
    let health = || health_topic(prefix);
    match step {
        Step::Event => render(
            cfg,
            input,
            ("event", "alert", "Alert"),
            EventFields {
                state_topic: event_topic(cfg),
                event_types: input.event_types,
                json_attributes_topic: event_topic(cfg),
                icon: "mdi:cctv",
            },
            buf,
        ),
        Step::Output(i, part) => {
            let o = input.gpio.outputs.get(i)?;
            let name = &o.name;
            let set = format!("{prefix}/outputs/{name}/set");
            let state = output_state_topic(prefix, name);
            match part {
                0 => render(
                    cfg,
                    input,
                    (
                        "binary_sensor",
                        &format!("output_{name}"),
                        &format!("Output {name}"),
                    ),
                    json!({
                        "state_topic": format!("{prefix}/outputs/{name}"),
                        "payload_on": "active",
                        "payload_off": "idle",
                        "device_class": "running",
                        "entity_category": "diagnostic",
                    }),
                    buf,
                ),
                1 if o.kind == OutputKind::Light => {
                    let named = patterns_for(input.gpio, o.kind);
                    let mut fields = json!({
                        "schema": "json",
                        "command_topic": set,
                        "state_topic": state,
                        "supported_color_modes": ["onoff"],
                        "icon": "mdi:alarm-light",
                    });
                    if !named.is_empty() {
                        fields["effect"] = json!(true);
                        fields["effect_list"] = json!(named);
                    }
                    render(
                        cfg,
                        input,
                        ("light", &format!("light_{name}"), name),
                        fields,
                        buf,
                    )
                }
                1 => {
                    let named = patterns_for(input.gpio, o.kind);
                    let mut fields = json!({
                        "command_topic": set,
                        "state_topic": state,
                        "support_duration": true,
                        "support_volume_set": false,
                        "icon": "mdi:bullhorn",
                    });
                    if !named.is_empty() {
                        fields["available_tones"] = json!(named);
                    }
                    render(
                        cfg,
                        input,
                        ("siren", &format!("siren_{name}"), name),
                        fields,
                        buf,
                    )
                }
                _ => render(
                    cfg,
                    input,
                    ("button", &format!("test_{name}"), &format!("Test {name}")),
                    json!({
                        "command_topic": format!("{prefix}/cmd/test/{name}"),
                        "payload_press": "",
                        "device_class": "identify",
                        "entity_category": "diagnostic",
                    }),
                    buf,
                ),
            }
        }
        Step::Silence => render(
            cfg,
            input,
            ("button", "silence", "Silence"),
            json!({
                "command_topic": format!("{prefix}/cmd/silence"),
                "payload_press": "{}",
                "icon": "mdi:volume-off",
            }),
            buf,
        ),
        Step::Snooze => render(
            cfg,
            input,
            ("button", "snooze", &format!("Snooze {}", input.snooze_for)),
            json!({
                "command_topic": format!("{prefix}/cmd/snooze"),
                "payload_press": json!({"for": input.snooze_for}).to_string(),
                "icon": "mdi:alarm-snooze",
            }),
            buf,
        ),
        Step::SilencedUntil => render(
            cfg,
            input,
            ("sensor", "silenced_until", "Silenced until"),
            json!({
                "state_topic": snooze_topic(prefix),
                "value_template": "{{ value_json.until }}",
                "device_class": "timestamp",
                "icon": "mdi:alarm-snooze",
            }),
            buf,
        ),
        Step::Rule(i) => {
            let name = input.gpio.rules.get(i)?.name.as_deref()?;
            render(
                cfg,
                input,
                ("switch", &format!("rule_{name}"), &format!("Rule {name}")),
                RuleSwitch {
                    command_topic: format!("{prefix}/rules/{name}/set"),
                    state_topic: rule_state_topic(prefix, name),
                    payload_on: "ON",
                    payload_off: "OFF",
                    icon: "mdi:shield-check",
                    entity_category: "config",
                },
                buf,
            )
        }
        Step::Source => render(
            cfg,
            input,
            ("binary_sensor", "source", "Alert source"),
            json!({
                "state_topic": health(),
                "value_template": "{{ 'ON' if value_json.source_connected else 'OFF' }}",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
            }),
            buf,
        ),
        Step::Sensor(i) => {
            let (object, name, key, class, icon) = *SENSORS.get(i)?;
            render(
                cfg,
                input,
                ("sensor", object, name),
                json!({
                    "state_topic": health(),
                    "value_template": format!("{{{{ value_json.{key} }}}}"),
                    "unit_of_measurement": "alerts",
                    "state_class": class,
                    "icon": icon,
                    "entity_category": "diagnostic",
                }),
                buf,
            )
        }
        Step::Done => None,
    }
}

/// Every discovery message at once, as (retained config topic, JSON): for tests and tools
/// that look at them whole (the session streams them with [`Discovery`]).
pub fn discovery(cfg: &MqttConfig, input: &DiscoveryInput<'_>) -> Vec<(String, Value)> {
    let mut cursor = Discovery::default();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while let Some(topic) = cursor.next(cfg, input, &mut buf) {
        if let Ok(v) = serde_json::from_slice(&buf) {
            out.push((topic, v));
        }
    }
    out
}

/// Adds `"replayed": true` to the `relay` object that closes a rendered record
/// (`...,"relay":{...}}`): the record was in the queue at start-up or was sent before a
/// reconnect, so a consumer may have it already.
pub fn mark_replayed(payload: &mut Vec<u8>) {
    if payload.ends_with(b"}}") {
        let at = payload.len() - 2;
        payload.splice(at..at, b",\"replayed\":true".iter().copied());
    }
}

/// The event entity's payload for one alert: `event_type` (the label when announced, else
/// [`OTHER_EVENT_TYPE`]) plus the alert's fields. `None` if `payload` is not a JSON object.
/// `announced`: whether `label` is one of the announced event types.
pub fn event_payload(payload: &[u8], label: &str, announced: bool) -> Option<Vec<u8>> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(payload) else {
        return None;
    };
    let event_type = if announced { label } else { OTHER_EVENT_TYPE };
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
mod tests;
