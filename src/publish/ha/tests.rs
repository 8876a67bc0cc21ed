use super::*;
use crate::config::Config;

/// A config with Home Assistant discovery on and the sim GPIO backend: `mqtt` goes into
/// `[mqtt]`, `gpio` after `[gpio]`.
fn discovery_cfg(mqtt: &str, gpio: &str) -> Config {
    Config::parse(&format!(
        "[source]\nurl = \"ws://127.0.0.1:1/\"\n[mqtt]\nha_discovery = true\n{mqtt}\n\
         [gpio]\nbackend = \"sim\"\n{gpio}"
    ))
    .expect("config")
}

fn cfg() -> Config {
    discovery_cfg(
        r#"client_id = "relay.kitchen 1"
ha_event_types = ["doorbell", "intrusion"]"#,
        r#"
[[gpio.outputs]]
name = "red"
[[gpio.rules]]
labels = ["intrusion", "fire*", "smoke"]
output = "red"
"#,
    )
}

#[test]
fn alert_events_carry_event_type_and_fields() {
    let p = event_payload(
        br#"{"label":"intrusion","confidence":0.9}"#,
        "intrusion",
        true,
    )
    .expect("object");
    let v: Value = serde_json::from_slice(&p).expect("json");
    assert_eq!(
        v,
        json!({"event_type": "intrusion", "label": "intrusion", "confidence": 0.9})
    );
    let p = event_payload(br#"{"label":"cat"}"#, "cat", false).expect("object");
    let v: Value = serde_json::from_slice(&p).expect("json");
    assert_eq!(v["event_type"], "other");
    assert_eq!(event_payload(b"[1]", "x", false), None);
}

fn gpio_cfg() -> Config {
    discovery_cfg(
        r#"client_id = "relay1"
ha_device_name = "Porch relay""#,
        r#"
[gpio.patterns]
alarm = { kind = "blink", on = "100ms", off = "100ms", count = 5 }
beep = { kind = "tone", frequency = 880, duration = "1s" }
[[gpio.outputs]]
name = "lamp"
[[gpio.outputs]]
name = "horn"
kind = "buzzer"
[[gpio.outputs]]
name = "piezo"
kind = "passive_buzzer"
[[gpio.rules]]
name = "porch"
labels = ["person"]
output = "lamp"
[[gpio.rules]]
labels = ["car"]
output = "lamp"
"#,
    )
}

fn find<'a>(d: &'a [(String, Value)], topic: &str) -> Option<&'a Value> {
    d.iter().find(|(t, _)| t == topic).map(|(_, v)| v)
}

#[test]
fn controls_are_sirens_lights_buttons_and_rule_switches() {
    let c = gpio_cfg();
    let types = crate::publish::event_types::EventTypes::new(&c.mqtt, &c.gpio.rules);
    let learned = std::collections::BTreeSet::new();
    let input = DiscoveryInput {
        gpio: &c.gpio,
        controls: true,
        event_types: types.with_learned(&learned),
        configuration_url: Some("http://relay:8787/healthz"),
        snooze_for: SNOOZE_BUTTON_FOR,
    };
    let d = discovery(&c.mqtt, &input);
    let light = find(&d, "homeassistant/light/relay1/light_lamp/config").expect("light");
    assert_eq!(light["schema"], "json");
    assert_eq!(light["command_topic"], "alert-relay/outputs/lamp/set");
    assert_eq!(light["state_topic"], "alert-relay/outputs/lamp/state");
    assert_eq!(
        light["effect_list"],
        json!(["alarm"]),
        "no tones on a light"
    );
    assert_eq!(light["device"]["name"], "Porch relay");
    assert_eq!(
        light["device"]["configuration_url"],
        "http://relay:8787/healthz"
    );
    let horn = find(&d, "homeassistant/siren/relay1/siren_horn/config").expect("siren");
    assert_eq!(horn["available_tones"], json!(["alarm"]));
    assert_eq!(horn["support_duration"], true);
    let piezo = find(&d, "homeassistant/siren/relay1/siren_piezo/config").expect("siren");
    assert_eq!(piezo["available_tones"], json!(["alarm", "beep"]));
    let test = find(&d, "homeassistant/button/relay1/test_horn/config").expect("button");
    assert_eq!(test["command_topic"], "alert-relay/cmd/test/horn");
    assert_eq!(test["device_class"], "identify");
    assert!(find(&d, "homeassistant/button/relay1/silence/config").is_some());
    let snooze = find(&d, "homeassistant/button/relay1/snooze/config").expect("snooze");
    assert_eq!(snooze["payload_press"], r#"{"for":"30m"}"#);
    let rule = find(&d, "homeassistant/switch/relay1/rule_porch/config").expect("switch");
    assert_eq!(rule["command_topic"], "alert-relay/rules/porch/set");
    assert_eq!(rule["state_topic"], "alert-relay/rules/porch/state");
    let switches = d.iter().filter(|(t, _)| t.contains("/switch/")).count();
    assert_eq!(switches, 1, "only named rules are switches");
    let source = find(&d, "homeassistant/binary_sensor/relay1/source/config").expect("source");
    assert_eq!(source["device_class"], "connectivity");
    let until = find(&d, "homeassistant/sensor/relay1/silenced_until/config").expect("until");
    assert_eq!(until["device_class"], "timestamp");
    for (topic, v) in &d {
        assert!(v["unique_id"].is_string(), "{topic}");
        assert_eq!(v["availability_topic"], "alert-relay/status", "{topic}");
    }
    // Without a GPIO engine nothing is offered that could not act.
    let input = DiscoveryInput {
        controls: false,
        configuration_url: None,
        ..input
    };
    let d = discovery(&c.mqtt, &input);
    for platform in ["/light/", "/siren/", "/button/", "/switch/"] {
        assert!(!d.iter().any(|(t, _)| t.contains(platform)), "{platform}");
    }
    assert!(d
        .iter()
        .all(|(_, v)| v["device"].get("configuration_url").is_none()));
}

#[test]
fn replayed_records_say_so_in_their_relay_object() {
    let mut p = br#"{"label":"x","relay":{"seq":3,"via":"ws"}}"#.to_vec();
    mark_replayed(&mut p);
    let v: Value = serde_json::from_slice(&p).expect("json");
    assert_eq!(v["relay"], json!({"seq": 3, "via": "ws", "replayed": true}));
}

#[test]
fn node_id_is_safe_for_discovery_topics() {
    assert_eq!(node_id(&cfg().mqtt), "relay_kitchen_1");
}
