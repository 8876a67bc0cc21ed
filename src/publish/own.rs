//! The relay's own messages: `status`, `stats`, `health`, the output, rule and snooze states,
//! Home Assistant discovery and events. None is sent above the broker's known size limit.

use serde_json::Value;
use tokio::time::Instant;

use super::client::Props;
use super::limit;
use super::{ha, Session, DISCOVERY_IN_CHANNEL, DISCOVERY_SETTLE};
use crate::config::{OutputKind, Qos};
use crate::stats::queue_json;

impl Session<'_> {
    /// `{prefix}/rules/{name}/state` of every named rule, retained, (re)started from the first.
    pub(super) fn publish_rule_states(&mut self) {
        self.rule_states_from = Some(0);
        self.send_rule_states();
    }

    /// Sends what is left of the rule states, bounded like [`Session::send_discovery`]:
    /// 10,000 named rules never overflow rumqttc's request channel.
    pub(super) fn send_rule_states(&mut self) {
        let Some(mut i) = self.rule_states_from.take() else {
            return;
        };
        let rules = self.links.gpio_config.rules.clone();
        while self.corr.own_unwritten() < DISCOVERY_IN_CHANNEL {
            let Some(rule) = rules.get(i) else { return };
            i += 1;
            if let Some(name) = &rule.name {
                let armed = !self.links.state.disarmed.contains(&**name);
                self.publish_rule_state(name, armed);
            }
        }
        self.rule_states_from = Some(i);
    }

    pub(super) fn publish_rule_state(&mut self, name: &str, armed: bool) {
        self.publish_own(
            ha::rule_state_topic(&self.cfg.topic_prefix, name),
            if armed {
                b"ON".to_vec()
            } else {
                b"OFF".to_vec()
            },
            Qos::AtLeastOnce,
            true,
        );
    }

    /// `{prefix}/snooze`, retained: `{"until": <RFC 3339>}` while snoozed, else `null`.
    pub(super) fn publish_snooze(&mut self) {
        let until = self
            .links
            .snooze_left()
            .and(self.links.state.snoozed_until)
            .map(|s| crate::clock::rfc3339_micros(s.saturating_mul(1_000_000)));
        self.publish_own(
            ha::snooze_topic(&self.cfg.topic_prefix),
            serde_json::json!({ "until": until })
                .to_string()
                .into_bytes(),
            Qos::AtLeastOnce,
            true,
        );
    }

    pub(super) fn end_snooze_if_over(&mut self) {
        if self.links.state.snoozed_until.is_some() && self.links.snooze_left().is_none() {
            self.links.state.snoozed_until = None;
            self.links.save_state();
            log::info!("mqtt: snooze over");
            self.publish_snooze();
        }
    }

    /// `{prefix}/health` (retained) when it changed: source connectivity, queue depth,
    /// received, dropped and set-aside counts, for Home Assistant's diagnostic entities.
    pub(super) fn publish_health(&mut self) {
        let snapshot = self.stats_snapshot();
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let q = &snapshot["queue"];
        let health = serde_json::json!({
            "source_connected": snapshot["source_connected"].as_bool().unwrap_or(false),
            "queue_depth": n(&q["depth_records"]),
            "received": n(&snapshot["alerts_received"]),
            "dropped": n(&q["dropped_oldest"]) + n(&q["dropped_newest"])
                + n(&q["dropped_max_age"]) + n(&q["dropped_io_error"]),
            "set_aside": n(&snapshot["mqtt_set_aside"]),
        });
        if self.health_published.as_ref() == Some(&health) {
            return;
        }
        self.publish_own(
            ha::health_topic(&self.cfg.topic_prefix),
            health.to_string().into_bytes(),
            Qos::AtMostOnce,
            true,
        );
        self.health_published = Some(health);
    }

    /// The largest own packet the broker takes, as far as we know.
    pub(super) fn own_limit(&self) -> Option<usize> {
        match (self.broker_max_packet, self.sizes.own_limit()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes of an own publish on `topic` with a payload of `payload` bytes.
    fn own_packet_size(&self, topic: &str, payload: usize, json: bool, q: Qos) -> usize {
        let props = (self.is_v5() && json).then(|| limit::props_size(true, false, &[]));
        limit::packet_size(topic.len(), payload, q != Qos::AtMostOnce, props)
    }

    /// Publishes one of the relay's own messages, unless it is larger than the broker takes
    /// (`mqtt.max_message_bytes`, the CONNACK's maximum packet size, or the learned limit):
    /// then it is skipped with a warning, never sent to get the connection closed.
    pub(super) fn publish_own(&mut self, topic: String, payload: Vec<u8>, q: Qos, retain: bool) {
        let json = payload.first() == Some(&b'{');
        let props = Props {
            json,
            ..Props::default()
        };
        self.publish_own_props(topic, payload, q, retain, props);
    }

    /// An own message with MQTT 5 properties (an answer's correlation data), never retained.
    pub(super) fn publish_own_with(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        q: Qos,
        props: Props,
    ) {
        self.publish_own_props(topic, payload, q, false, props);
    }

    fn publish_own_props(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        q: Qos,
        retain: bool,
        props: Props,
    ) {
        let json = props.json;
        let size = self.own_packet_size(&topic, payload.len(), json, q)
            + props.correlation.as_ref().map_or(0, |c| c.len() + 3);
        let too_big = self
            .cfg
            .max_message_bytes
            .is_some_and(|m| payload.len() > m)
            || self.own_limit().is_some_and(|m| size > m);
        if too_big {
            self.stats.warn_limited(
                "own_too_big",
                format_args!(
                    "mqtt: not publishing {topic}: its {size} byte packet is larger than the \
                     broker takes (mqtt.max_message_bytes, or the broker's packet size limit)"
                ),
            );
            return;
        }
        let props = (self.is_v5() && (json || props.correlation.is_some())).then_some(props);
        match self.client.try_publish(topic, q, retain, payload, props) {
            Ok(()) => {
                self.corr.sent(None);
                self.wire.sent(size, None);
            }
            Err(e) => log::warn!("mqtt: cannot queue an own message: {e}"),
        }
    }

    /// The stats snapshot with the queue's part, as `{prefix}/stats` and `/health` show it.
    fn stats_snapshot(&self) -> Value {
        let now = crate::clock::unix_micros(std::time::SystemTime::now());
        let queue = self.queue.lock().snapshot(now);
        self.stats.snapshot(Some(queue_json(&queue)))
    }

    pub(super) fn publish_stats(&mut self) {
        let snapshot = self.stats_snapshot();
        let topic = format!("{}/stats", self.cfg.topic_prefix);
        // Room for the payload under every limit we know of: trimmed to fit, never above.
        let overhead = self.own_packet_size(&topic, 0, true, Qos::AtMostOnce) + 3;
        let room = [
            self.cfg.max_message_bytes,
            self.own_limit().map(|m| m.saturating_sub(overhead)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(usize::MAX);
        match limit::fit_stats(snapshot, room) {
            Some(payload) => self.publish_own(topic, payload, Qos::AtMostOnce, true),
            None => self.stats.warn_limited(
                "own_too_big",
                format_args!(
                    "mqtt: not publishing {topic}: not even a trimmed one fits in {room} bytes"
                ),
            ),
        }
    }

    /// Publishes `{prefix}/outputs/{name}` for every output whose state changed (all of them
    /// after a connect), retained, so a consumer joining later sees the current state.
    pub(super) fn publish_outputs(&mut self) {
        let now: Vec<bool> = match &mut self.links.activity {
            Some(rx) => rx.borrow_and_update().clone(),
            None => vec![false; self.links.outputs.len()],
        };
        for i in 0..self.links.outputs.len() {
            let active = now.get(i).copied().unwrap_or(false);
            if self.outputs_published[i] == Some(active) {
                continue;
            }
            self.outputs_published[i] = Some(active);
            let topic = format!(
                "{}/outputs/{}",
                self.cfg.topic_prefix, self.links.outputs[i].name
            );
            let payload = if active { "active" } else { "idle" };
            self.publish_own(topic, payload.as_bytes().to_vec(), Qos::AtLeastOnce, true);
            if !active {
                self.links.effects[i] = None;
            }
            self.publish_output_state(i, active);
        }
    }

    /// `{prefix}/outputs/{name}/state`, retained, as Home Assistant's JSON light and siren
    /// read it: `{"state": "ON", "effect": <pattern>}` (`"tone"` for a siren).
    pub(super) fn publish_output_state(&mut self, i: usize, active: bool) {
        let o = &self.links.outputs[i];
        let key = if o.kind == OutputKind::Light {
            "effect"
        } else {
            "tone"
        };
        let mut v = serde_json::json!({ "state": if active { "ON" } else { "OFF" } });
        match (&self.links.effects[i], o.kind) {
            (Some(e), _) if active => v[key] = Value::from(e.clone()),
            // A light clears its effect; a siren's tone stays until the next one.
            (_, OutputKind::Light) => v[key] = Value::Null,
            _ => {}
        }
        let topic = ha::output_state_topic(&self.cfg.topic_prefix, &o.name);
        self.publish_own(topic, v.to_string().into_bytes(), Qos::AtLeastOnce, true);
    }

    /// Publishes the events held while a discovery settled, in order.
    pub(super) fn release_held_events(&mut self) {
        self.events_held_until = None;
        for ev in std::mem::take(&mut self.held_events) {
            self.publish_own(ha::event_topic(&self.cfg), ev, self.cfg.qos, false);
        }
    }

    /// (Re)starts sending discovery from its first message.
    pub(super) fn publish_discovery(&mut self) {
        self.discovery = Some(ha::Discovery::default());
        self.send_discovery();
    }

    /// Sends what is left of the discovery (10,000 named rules are 10,000 messages) while
    /// fewer than [`DISCOVERY_IN_CHANNEL`] own messages wait in rumqttc's request channel:
    /// each is rendered when it is sent, none is dropped for want of room, and records and
    /// other own messages keep theirs. Called again on every turn of the session loop (room
    /// frees as rumqttc writes). Events are held until the last one has had time to apply.
    pub(super) fn send_discovery(&mut self) {
        let Some(mut cursor) = self.discovery.take() else {
            return;
        };
        let mut buf = Vec::new();
        while self.corr.own_unwritten() < DISCOVERY_IN_CHANNEL {
            let input = ha::DiscoveryInput {
                gpio: &self.links.gpio_config,
                controls: self.links.gpio.is_some(),
                event_types: self.links.announced(),
                configuration_url: self.links.configuration_url.as_deref(),
                snooze_for: ha::SNOOZE_BUTTON_FOR,
            };
            let Some(topic) = cursor.next(&self.cfg, &input, &mut buf) else {
                return;
            };
            // Taken, not cloned: the event entity's message alone lists every event type.
            self.publish_own(topic, std::mem::take(&mut buf), Qos::AtLeastOnce, true);
            self.events_held_until = Some(Instant::now() + DISCOVERY_SETTLE);
        }
        self.discovery = Some(cursor);
    }
}
