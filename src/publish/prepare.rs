//! What one queue record becomes before it goes to the broker: the publish (topic, payload,
//! MQTT 5 properties, packet size, Home Assistant event), or why it is set aside. Pure: no
//! client, no queue, no clock (the time is passed in); the session only sends what this says.

use std::time::Duration;

use super::client::Props;
use super::{ha, limit};
use crate::alert::{DecodeError, QueuedMessage};
use crate::config::{MqttConfig, MqttProtocol, Qos};
use crate::queue::Record;

/// What bounds a record's publish on this connection, besides the config.
pub(super) struct Limits<'a> {
    pub(super) cfg: &'a MqttConfig,
    /// The broker's maximum packet size (MQTT 5 CONNACK).
    pub(super) broker_max_packet: Option<usize>,
    /// The smallest record packet the broker closed the connection on
    /// ([`limit::SizeWatch::record_limit`]).
    pub(super) refused_size: Option<usize>,
    /// Records below this seq were in the queue when the relay started.
    pub(super) replay_below: u64,
    /// Records up to this seq were handed to a broker before this connection.
    pub(super) replay_upto: u64,
    /// The wall clock now, µs since the epoch (how old an alert is for Home Assistant).
    pub(super) now_us: u64,
}

/// What to do with one record.
#[derive(Debug)]
pub(super) enum Prepared {
    Publish(Publish),
    /// Acknowledge it unsent (counted, logged): the broker would never take it.
    SetAside(SetAside),
}

/// A record ready for the client.
#[derive(Debug)]
pub(super) struct Publish {
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    /// MQTT 5 only: JSON, expiry, the `event_id` and `label` user properties.
    pub(super) props: Option<Props>,
    /// The whole packet's bytes on the wire.
    pub(super) size: usize,
    /// With Home Assistant discovery, an alert's label (learned as an event type if new).
    pub(super) ha_label: Option<String>,
    /// Whether the alert also goes out as a Home Assistant event (not a replay, and not older
    /// than `ha_event_max_age`).
    pub(super) ha_event: bool,
}

/// Why a record is set aside; `Display` is the reason logged after "set aside: ".
#[derive(Debug, PartialEq, thiserror::Error)]
pub(super) enum SetAside {
    /// The stored bytes are not a queued message (counted in `mqtt_undecodable` too).
    #[error("{0}")]
    Undecodable(DecodeError),
    #[error("its {size} byte payload exceeds mqtt.max_message_bytes ({limit})")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("its {size} byte packet exceeds the broker's maximum packet size ({max})")]
    PacketTooLarge { size: usize, max: usize },
    #[error(
        "its {size} byte packet is at least as large as one the broker closed the connection \
         on ({refused} bytes)"
    )]
    AboveRefused { size: usize, refused: usize },
}

/// Decides what `rec` becomes under `limits`: the first limit it breaks sets it aside.
pub(super) fn prepare(rec: &Record, limits: &Limits<'_>) -> Prepared {
    let cfg = limits.cfg;
    let msg = match QueuedMessage::decode(&rec.payload) {
        Ok(m) => m,
        Err(e) => return Prepared::SetAside(SetAside::Undecodable(e)),
    };
    let topic = format!("{}/{}", cfg.topic_prefix, msg.topic_suffix);
    let topic = crate::topic::safe_topic(&topic).into_owned();
    let mut payload = msg.render(rec.seq, rec.accepted_us);
    let replayed = rec.seq < limits.replay_below || rec.seq <= limits.replay_upto;
    if replayed {
        ha::mark_replayed(&mut payload);
    }
    if let Some(limit) = cfg.max_message_bytes {
        if payload.len() > limit {
            return Prepared::SetAside(SetAside::PayloadTooLarge {
                size: payload.len(),
                limit,
            });
        }
    }
    let is_v5 = cfg.protocol == MqttProtocol::V5;
    let meta = (is_v5 || cfg.ha_discovery).then(|| record_meta(&msg));
    let props = meta.as_ref().filter(|_| is_v5).map(|m| {
        let mut user = Vec::new();
        // UTF-8 strings on the wire: mosquitto refuses the packet for a non-character.
        if let Some(id) = &m.event_id {
            user.push((
                "event_id".to_string(),
                crate::topic::mqtt_string(id).into_owned(),
            ));
        }
        if let Some(l) = &m.label {
            user.push((
                "label".to_string(),
                crate::topic::mqtt_string(l).into_owned(),
            ));
        }
        Props {
            json: true,
            expiry_secs: Some(cfg.message_expiry.as_secs().min(u32::MAX as u64) as u32),
            user,
            correlation: None,
        }
    });
    let size = limit::packet_size(
        topic.len(),
        payload.len(),
        cfg.qos != Qos::AtMostOnce,
        props
            .as_ref()
            .map(|p| limit::props_size(p.json, p.expiry_secs.is_some(), &p.user)),
    );
    if let Some(max) = limits.broker_max_packet {
        if size > max {
            return Prepared::SetAside(SetAside::PacketTooLarge { size, max });
        }
    }
    if let Some(refused) = limits.refused_size {
        if size >= refused {
            return Prepared::SetAside(SetAside::AboveRefused { size, refused });
        }
    }
    let ha_label = (cfg.ha_discovery && msg.topic_suffix.starts_with("alerts/")).then(|| {
        meta.as_ref()
            .and_then(|m| m.label.clone())
            .unwrap_or_default()
    });
    let age = Duration::from_micros(limits.now_us.saturating_sub(rec.accepted_us));
    let ha_event = ha_label.is_some() && !replayed && age <= cfg.ha_event_max_age;
    Prepared::Publish(Publish {
        topic,
        payload,
        props,
        size,
        ha_label,
        ha_event,
    })
}

/// The parts of a record an MQTT 5 publish or a Home Assistant event needs.
struct RecordMeta {
    label: Option<String>,
    event_id: Option<String>,
}

fn record_meta(msg: &QueuedMessage) -> RecordMeta {
    #[derive(serde::Deserialize)]
    struct Fields {
        label: Option<serde_json::Value>,
        event_label: Option<serde_json::Value>,
        event_id: Option<serde_json::Value>,
    }
    let text = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match serde_json::from_slice::<Fields>(&msg.body) {
        Ok(f) => RecordMeta {
            label: text(f.label).or_else(|| text(f.event_label)),
            event_id: text(f.event_id),
        },
        Err(_) => RecordMeta {
            label: None,
            event_id: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Via;
    use crate::config::Config;

    const ACCEPTED: u64 = 1_700_000_000_000_000;

    fn mqtt(extra: &str) -> MqttConfig {
        Config::parse(&format!(
            "[source]\nurl = \"ws://127.0.0.1:1/\"\n[mqtt]\ntopic_prefix = \"ar\"\n{extra}\n"
        ))
        .expect("config")
        .mqtt
    }

    fn record(seq: u64, label: &str, body: &str) -> Record {
        let msg = QueuedMessage {
            topic_suffix: format!("alerts/{label}"),
            via: Via::Websocket,
            body: body.as_bytes().to_vec(),
        };
        Record {
            seq,
            accepted_us: ACCEPTED,
            payload: msg.encode(),
        }
    }

    fn alert(seq: u64) -> Record {
        record(
            seq,
            "person",
            r#"{"label":"person","event_id":"ev-1","confidence":0.9}"#,
        )
    }

    fn open(cfg: &MqttConfig) -> Limits<'_> {
        Limits {
            cfg,
            broker_max_packet: None,
            refused_size: None,
            replay_below: 0,
            replay_upto: 0,
            now_us: ACCEPTED,
        }
    }

    fn publish(p: Prepared) -> Publish {
        match p {
            Prepared::Publish(p) => p,
            Prepared::SetAside(why) => panic!("set aside: {why}"),
        }
    }

    fn set_aside(p: Prepared) -> SetAside {
        match p {
            Prepared::SetAside(why) => why,
            Prepared::Publish(p) => panic!("published on {}", p.topic),
        }
    }

    /// `p` is set aside as `want`, and the reason reads `says`.
    fn assert_set_aside(p: Prepared, want: SetAside, says: &str) {
        let why = set_aside(p);
        assert_eq!(why, want);
        assert_eq!(why.to_string(), says);
    }

    #[test]
    fn an_alert_goes_to_its_topic_with_the_relay_object_and_its_packet_size() {
        let cfg = mqtt("");
        let p = publish(prepare(&alert(7), &open(&cfg)));
        assert_eq!(p.topic, "ar/alerts/person");
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
        assert_eq!(v["label"], "person");
        assert_eq!(v["relay"]["seq"], 7);
        assert_eq!(v["relay"]["via"], "websocket");
        assert!(v["relay"].get("replayed").is_none(), "{v}");
        // MQTT 3.1.1: no properties; QoS 1 carries a packet id.
        assert!(p.props.is_none());
        assert_eq!(
            p.size,
            limit::packet_size(p.topic.len(), p.payload.len(), true, None)
        );
        assert_eq!(p.ha_label, None);
        assert!(!p.ha_event);
    }

    #[test]
    fn an_undecodable_record_is_set_aside_with_the_decode_error() {
        let cfg = mqtt("");
        for payload in [&b"xy"[..], b"\x09\x00\x01\x00a{}", b"\x01\x00\x05\x00ab"] {
            let rec = Record {
                seq: 1,
                accepted_us: ACCEPTED,
                payload: payload.to_vec(),
            };
            let why = set_aside(prepare(&rec, &open(&cfg)));
            assert!(matches!(why, SetAside::Undecodable(_)), "{why:?}");
            assert!(
                why.to_string()
                    .starts_with("queued record payload is malformed: "),
                "{why}"
            );
        }
        let rec = record(1, "person", "not json");
        assert_eq!(
            set_aside(prepare(&rec, &open(&cfg))).to_string(),
            "queued record payload is malformed: body is not a JSON object"
        );
    }

    #[test]
    fn a_payload_above_max_message_bytes_is_set_aside_before_any_packet_limit() {
        let cfg = mqtt("");
        let len = publish(prepare(&alert(1), &open(&cfg))).payload.len();
        let at = mqtt(&format!("max_message_bytes = {len}"));
        assert_eq!(publish(prepare(&alert(1), &open(&at))).payload.len(), len);
        let below = mqtt(&format!("max_message_bytes = {}", len - 1));
        let mut limits = open(&below);
        limits.broker_max_packet = Some(1);
        limits.refused_size = Some(1);
        assert_set_aside(
            prepare(&alert(1), &limits),
            SetAside::PayloadTooLarge {
                size: len,
                limit: len - 1,
            },
            &format!(
                "its {len} byte payload exceeds mqtt.max_message_bytes ({})",
                len - 1
            ),
        );
    }

    #[test]
    fn a_packet_above_the_brokers_maximum_is_set_aside_one_at_it_goes() {
        let cfg = mqtt("protocol = \"5\"");
        let size = publish(prepare(&alert(1), &open(&cfg))).size;
        let mut limits = open(&cfg);
        limits.broker_max_packet = Some(size);
        assert_eq!(publish(prepare(&alert(1), &limits)).size, size);
        limits.broker_max_packet = Some(size - 1);
        assert_set_aside(
            prepare(&alert(1), &limits),
            SetAside::PacketTooLarge {
                size,
                max: size - 1,
            },
            &format!(
                "its {size} byte packet exceeds the broker's maximum packet size ({})",
                size - 1
            ),
        );
    }

    #[test]
    fn a_packet_as_large_as_one_the_broker_dropped_is_set_aside_a_smaller_one_goes() {
        let cfg = mqtt("");
        let size = publish(prepare(&alert(1), &open(&cfg))).size;
        let mut limits = open(&cfg);
        limits.refused_size = Some(size + 1);
        assert_eq!(publish(prepare(&alert(1), &limits)).size, size);
        limits.refused_size = Some(size);
        assert_set_aside(
            prepare(&alert(1), &limits),
            SetAside::AboveRefused {
                size,
                refused: size,
            },
            &format!(
                "its {size} byte packet is at least as large as one the broker closed the \
                 connection on ({size} bytes)"
            ),
        );
    }

    #[test]
    fn replays_are_marked_and_never_become_home_assistant_events() {
        let cfg = mqtt("ha_discovery = true");
        let mut limits = open(&cfg);
        limits.replay_below = 10;
        limits.replay_upto = 20;
        for (seq, replayed) in [(9, true), (10, true), (20, true), (21, false)] {
            let p = publish(prepare(&alert(seq), &limits));
            let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
            assert_eq!(v["relay"]["replayed"] == true, replayed, "seq {seq}: {v}");
            // A replayed alert still teaches its label; it only fires no event.
            assert_eq!(p.ha_label.as_deref(), Some("person"), "seq {seq}");
            assert_eq!(p.ha_event, !replayed, "seq {seq}");
        }
    }

    #[test]
    fn an_alert_older_than_ha_event_max_age_is_published_but_fires_no_event() {
        let cfg = mqtt("ha_discovery = true\nha_event_max_age = \"2m\"");
        let mut limits = open(&cfg);
        limits.now_us = ACCEPTED + 120_000_000;
        assert!(publish(prepare(&alert(1), &limits)).ha_event);
        limits.now_us += 1;
        let p = publish(prepare(&alert(1), &limits));
        assert!(!p.ha_event);
        assert_eq!(p.ha_label.as_deref(), Some("person"));
        // A clock behind the accept time is age zero, not a wrap-around.
        limits.now_us = 0;
        assert!(publish(prepare(&alert(1), &limits)).ha_event);
    }

    #[test]
    fn only_alerts_carry_a_home_assistant_label_and_a_missing_label_is_empty() {
        let cfg = mqtt("ha_discovery = true");
        let transcript = QueuedMessage {
            topic_suffix: "transcript/rt-1".into(),
            via: Via::Websocket,
            body: br#"{"text":"hello"}"#.to_vec(),
        };
        let rec = Record {
            seq: 1,
            accepted_us: ACCEPTED,
            payload: transcript.encode(),
        };
        let p = publish(prepare(&rec, &open(&cfg)));
        assert_eq!(p.topic, "ar/transcript/rt-1");
        assert_eq!(p.ha_label, None);
        assert!(!p.ha_event);
        let nameless = record(2, "x", r#"{"confidence":1}"#);
        assert_eq!(
            publish(prepare(&nameless, &open(&cfg))).ha_label.as_deref(),
            Some("")
        );
    }

    #[test]
    fn mqtt5_properties_carry_event_id_and_label_as_valid_utf8_strings() {
        let cfg = mqtt("protocol = \"5\"\nmessage_expiry = \"90s\"");
        // U+FFFF is a non-character: mosquitto refuses a packet holding it.
        let rec = record(
            3,
            "cat",
            "{\"event_label\":\"cat\u{FFFF}\",\"event_id\":42}",
        );
        let p = publish(prepare(&rec, &open(&cfg)));
        let props = p.props.expect("MQTT 5 properties");
        assert!(props.json);
        assert_eq!(props.expiry_secs, Some(90));
        assert_eq!(
            props.user,
            [
                ("event_id".to_string(), "42".to_string()),
                ("label".to_string(), "cat\u{FFFD}".to_string()),
            ]
        );
        assert_eq!(
            p.size,
            limit::packet_size(
                p.topic.len(),
                p.payload.len(),
                true,
                Some(limit::props_size(true, true, &props.user))
            )
        );
    }
}
