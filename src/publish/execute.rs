//! Commands received: carrying out what [`commands`](super::commands) parsed (GPIO, arming,
//! snooze) and answering on `cmd/result`, and on an MQTT 5 response topic when asked.

use tokio::sync::mpsc;

use super::client::{Props, Reply};
use super::commands::{self, CommandError};
use super::{ha, Session};
use crate::config::Qos;
use crate::gpio::GpioCommand;

impl Session<'_> {
    pub(super) fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        reply: Option<Reply>,
        retain: bool,
    ) {
        if self.cfg.ha_discovery && topic == ha::ha_status_topic(&self.cfg) {
            if payload == b"online" {
                log::info!("mqtt: Home Assistant is online; sending discovery");
                self.publish_discovery();
            }
            return;
        }
        let Some(parsed) = commands::parse(
            &self.cfg.topic_prefix,
            topic,
            payload,
            &self.links.gpio_config,
        ) else {
            return;
        };
        if retain {
            log::warn!("mqtt: ignoring a retained command on {topic} (clear it with an empty retained message)");
            return;
        }
        self.stats.inc(&self.stats.mqtt_commands);
        let command = parsed.name;
        let result = parsed
            .command
            .map_err(CommandError::Invalid)
            .and_then(|c| self.execute(c));
        match &result {
            Ok(()) => log::info!("mqtt: command {command} accepted"),
            Err(e) => {
                self.stats.inc(&self.stats.mqtt_command_errors);
                self.stats.warn_limited(
                    "command",
                    format_args!("mqtt: command {command} refused: {e}"),
                );
            }
        }
        let answer = commands::answer(&command, parsed.transaction.as_ref(), &result);
        // MQTT 5 request/response: the answer also goes where the request asked, with its
        // correlation data (a topic with wildcards cannot be published to: ignored, logged).
        if let Some(reply) = reply {
            if commands::valid_reply_topic(&reply.topic) {
                let props = Props {
                    json: true,
                    correlation: reply.correlation,
                    ..Props::default()
                };
                self.publish_own_with(reply.topic, answer.clone(), Qos::AtLeastOnce, props);
            } else {
                self.stats.warn_limited(
                    "reply_topic",
                    format_args!(
                        "mqtt: command {command}: response topic {:?} is not a topic one can publish to; answered on cmd/result only",
                        reply.topic
                    ),
                );
            }
        }
        self.publish_own(
            commands::result_topic(&self.cfg.topic_prefix),
            answer,
            Qos::AtLeastOnce,
            false,
        );
    }

    fn send_gpio(&self, cmd: GpioCommand) -> Result<(), CommandError> {
        match &self.links.gpio {
            None => Err(CommandError::GpioOff),
            Some(tx) => tx.try_send(cmd).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => CommandError::GpioBusy,
                mpsc::error::TrySendError::Closed(_) => CommandError::GpioStopped,
            }),
        }
    }

    /// Carries out one parsed command; what it changed is published (retained state topics)
    /// and, for arming and snooze, kept in the state file.
    fn execute(&mut self, c: commands::Command) -> Result<(), CommandError> {
        match c {
            commands::Command::Gpio(cmd) => self.send_gpio(cmd),
            commands::Command::Output {
                output,
                pattern,
                effect,
            } => {
                let on = pattern.is_some();
                self.send_gpio(GpioCommand::Manual {
                    output,
                    pattern,
                    priority: self.links.gpio_config.manual_priority,
                })?;
                if on {
                    self.links.effects[output] = effect;
                    // Already active: the activity does not change, the effect does.
                    if self.outputs_published[output] == Some(true) {
                        self.publish_output_state(output, true);
                    }
                }
                Ok(())
            }
            commands::Command::Arm { rule, armed } => {
                let Some(ingest) = &self.links.ingest else {
                    return Err(CommandError::GpioOff);
                };
                ingest.set_armed(rule, armed);
                let Some(name) = self.links.gpio_config.rules[rule].name.clone() else {
                    return Ok(());
                };
                let changed = if armed {
                    self.links.state.disarmed.remove(&*name)
                } else {
                    self.links.state.disarmed.insert(name.to_string())
                };
                if changed {
                    self.links.save_state();
                }
                log::info!(
                    "mqtt: rule {name} {}",
                    if armed { "armed" } else { "disarmed" }
                );
                self.publish_rule_state(&name, armed);
                Ok(())
            }
            commands::Command::Snooze(for_) => {
                self.send_gpio(GpioCommand::Snooze {
                    for_,
                    lights: self.links.gpio_config.snooze_lights,
                })?;
                let now = crate::clock::unix_micros(std::time::SystemTime::now()) / 1_000_000;
                self.links.state.snoozed_until =
                    (!for_.is_zero()).then(|| now.saturating_add(for_.as_secs().max(1)));
                self.links.save_state();
                self.publish_snooze();
                Ok(())
            }
        }
    }
}
