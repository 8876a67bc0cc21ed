//! What the publisher holds of the rest of the relay ([`Links`]): where commands go, the
//! outputs and rules it mirrors, and what Home Assistant changed (the state file).

use std::time::Duration;

use super::event_types::{Announced, EventTypes};
use super::{ha_state, Links};
use crate::config::Config;

impl Links {
    /// Links without a GPIO engine; the caller fills `gpio`, `activity` and `ingest` when it
    /// runs one. Reads the state file (see [`ha_state`]).
    pub fn new(config: &Config) -> Links {
        let state_path = ha_state::path_for(&config.queue.dir);
        Links {
            gpio: None,
            activity: None,
            outputs: config.gpio.outputs.clone(),
            event_types: EventTypes::new(&config.mqtt, &config.gpio.rules),
            gpio_config: config.gpio.clone(),
            ingest: None,
            state: ha_state::HaState::load(&state_path),
            state_path,
            replay_below: 0,
            sent_high: 0,
            effects: vec![None; config.gpio.outputs.len()],
            configuration_url: config.http.as_ref().map(|h| {
                let host = if h.listen.ip().is_unspecified() {
                    std::fs::read_to_string("/etc/hostname")
                        .ok()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "localhost".into())
                } else {
                    match h.listen.ip() {
                        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                        ip => ip.to_string(),
                    }
                };
                format!("http://{host}:{}/healthz", h.listen.port())
            }),
        }
    }

    /// Index of each named rule that the state file says is disarmed.
    pub fn disarmed_rules(&self) -> Vec<usize> {
        self.gpio_config
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.name
                    .as_ref()
                    .is_some_and(|n| self.state.disarmed.contains(&**n))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// How long the snooze in the state file still runs.
    pub fn snooze_left(&self) -> Option<Duration> {
        let until = self.state.snoozed_until?;
        let now = crate::clock::unix_micros(std::time::SystemTime::now()) / 1_000_000;
        (until > now).then(|| Duration::from_secs(until - now))
    }

    pub(super) fn save_state(&self) {
        if let Err(e) = self.state.save(&self.state_path) {
            log::error!("state: cannot write {}: {e}", self.state_path.display());
        }
    }

    /// The event types announced now: configured plus learned.
    pub fn announced(&self) -> Announced<'_> {
        self.event_types.with_learned(&self.state.labels)
    }
}
