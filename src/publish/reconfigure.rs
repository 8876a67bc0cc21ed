//! A config reload reaching the publisher: what it changes in place and what makes it
//! reconnect.
//!
//! In place (the connection, and the records in flight on it, are untouched):
//! `stats_interval`, `max_publish_rate` (a fresh pacer), `message_expiry`,
//! `max_message_bytes`, the backoffs, Home Assistant discovery (its entries are published again
//! for the new outputs and rules), and what the publisher mirrors of GPIO (outputs, rules,
//! named patterns). Turning discovery off does not remove the retained entries already
//! published (as before: Home Assistant keeps them until they are cleared).
//!
//! Reconnect (a clean DISCONNECT, no Last Will, then a connect with the new settings): a
//! change of host, port, client_id, topic_prefix, qos, keep_alive, max_inflight, protocol,
//! username, password or `[mqtt.tls]`. The records in flight get [`super::SHUTDOWN_GRACE`] to be
//! acknowledged first; any still unacknowledged are sent again on the new connection (at least
//! once, as after any reconnect). TLS files are read for every
//! connection, so a renewed certificate at the same path is used from the next one.

use tokio::sync::watch;

use super::event_types::EventTypes;
use super::{ha, Links, Session};
use crate::config::{GpioConfig, MqttConfig};

/// What a reload hands the publisher.
pub struct Reconfigure {
    pub mqtt: MqttConfig,
    /// The GPIO section now running (the old one when its outputs could not be opened).
    pub gpio: GpioConfig,
    /// The new engine's activity, when the engine was restarted (`None`: unchanged).
    pub activity: Option<watch::Receiver<Vec<bool>>>,
}

/// Whether going from `old` to `new` needs a new connection.
pub fn needs_reconnect(old: &MqttConfig, new: &MqttConfig) -> bool {
    old.host != new.host
        || old.port != new.port
        || old.client_id != new.client_id
        || old.topic_prefix != new.topic_prefix
        || old.qos != new.qos
        || old.keep_alive != new.keep_alive
        || old.max_inflight != new.max_inflight
        || old.protocol != new.protocol
        || old.username != new.username
        || old.password != new.password
        || old.tls != new.tls
}

impl Links {
    /// Takes the GPIO side of a reload.
    pub(super) fn reconfigure(&mut self, r: &Reconfigure) {
        if let Some(rx) = &r.activity {
            self.activity = Some(rx.clone());
        }
        if self.outputs.len() != r.gpio.outputs.len() {
            self.effects = vec![None; r.gpio.outputs.len()];
        }
        self.outputs = r.gpio.outputs.clone();
        self.gpio_config = r.gpio.clone();
        self.event_types = EventTypes::new(&r.mqtt, &r.gpio.rules);
    }
}

impl Session<'_> {
    /// Applies a reload to the running session. Returns true when a connection key changed:
    /// the caller disconnects and connects again (see the module doc).
    pub(super) fn reconfigure(&mut self, r: Reconfigure) -> bool {
        self.links.reconfigure(&r);
        let reconnect = needs_reconnect(&self.cfg, &r.mqtt);
        let rate_changed = self.cfg.max_publish_rate != r.mqtt.max_publish_rate;
        let discovery_on = !self.cfg.ha_discovery && r.mqtt.ha_discovery;
        self.cfg = r.mqtt;
        if reconnect {
            return true;
        }
        if rate_changed {
            self.pacer = self
                .cfg
                .max_publish_rate
                .map(|rate| super::Pacer::new(rate, tokio::time::Instant::now()));
        }
        // Every output's state again, under the (possibly new) names.
        self.outputs_published = vec![None; self.links.outputs.len()];
        if self.cfg.ha_discovery {
            if discovery_on {
                if let Err(e) = self.client.try_subscribe(
                    ha::ha_status_topic(&self.cfg),
                    crate::config::Qos::AtLeastOnce,
                ) {
                    log::warn!("mqtt: cannot subscribe to Home Assistant's status: {e}");
                }
            }
            self.publish_discovery();
        }
        self.publish_outputs();
        self.publish_rule_states();
        log::info!("mqtt: reloaded settings applied on the running connection");
        false
    }
}
