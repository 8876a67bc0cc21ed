//! What happens to an accepted alert, whichever path it came by: the live GPIO branch first
//! (rules decide, the engine is told at once), then the durable queue.
//!
//! Owns: rule state (cooldowns). Never does: socket or broker I/O.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::alert::{Alert, Confidence, QueuedMessage, Via};
use crate::gpio::GpioCommand;
use crate::queue::QueueHandle;
use crate::rules::RuleEngine;
use crate::stats::Stats;

/// How long an alert may wait for room in the writer's channel before it is dropped and
/// counted. Long enough to ride out an SD card's write stall, short enough that the socket
/// keeps being read (and GPIO keeps firing) when the disk is gone.
pub const QUEUE_SEND_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Ingest {
    rules: Arc<Mutex<RuleEngine>>,
    gpio: Option<mpsc::Sender<GpioCommand>>,
    queue: QueueHandle,
    stats: Arc<Stats>,
}

impl Ingest {
    pub fn new(
        rules: RuleEngine,
        gpio: Option<mpsc::Sender<GpioCommand>>,
        queue: QueueHandle,
        stats: Arc<Stats>,
    ) -> Ingest {
        Ingest {
            rules: Arc::new(Mutex::new(rules)),
            gpio,
            queue,
            stats,
        }
    }

    pub async fn accept(&self, alert: Alert, via: Via) {
        let s = &self.stats;
        s.inc(&s.alerts_received);
        if alert.confidence == Confidence::Invalid {
            s.inc(&s.alerts_bad_confidence);
            s.warn_limited(
                "bad_confidence",
                format_args!("alert {:?}: confidence is not a number in 0..1; relayed, but threshold rules skip it", alert.label),
            );
        }
        if alert.event_id.is_none() {
            s.inc(&s.alerts_missing_event_id);
            s.warn_limited(
                "no_event_id",
                format_args!("alert {:?} has no event_id; relayed anyway", alert.label),
            );
        }
        let now = SystemTime::now();
        self.fire_gpio(&alert, now);
        let payload = QueuedMessage::from_alert(&alert, via).encode();
        let us = crate::clock::unix_micros(now);
        if tokio::time::timeout(QUEUE_SEND_TIMEOUT, self.queue.append(payload, us))
            .await
            .map_or(true, |r| r.is_err())
        {
            s.inc(&s.queue_append_failed);
            s.warn_limited(
                "queue_stalled",
                format_args!("alert {:?} dropped: the queue writer did not take it within {QUEUE_SEND_TIMEOUT:?}", alert.label),
            );
        }
    }

    fn fire_gpio(&self, alert: &Alert, now: SystemTime) {
        let Some(tx) = &self.gpio else { return };
        let decision = self.rules.lock().unwrap_or_else(|p| p.into_inner()).decide(
            alert,
            now,
            now,
            Instant::now(),
        );
        let s = &self.stats;
        for _ in 0..decision.stale {
            s.inc(&s.gpio_skipped_stale);
        }
        for _ in 0..decision.cooling_down {
            s.inc(&s.gpio_skipped_cooldown);
        }
        for &o in &decision.quiet {
            s.inc(&s.gpio_skipped_quiet);
            if let Some(c) = s.output(o) {
                s.inc(&c.quiet_skipped);
            }
        }
        for fire in decision.fires {
            s.inc(&s.gpio_rule_matches);
            if tx.try_send(GpioCommand::Fire(fire)).is_err() {
                s.inc(&s.gpio_errors);
                s.warn_limited(
                    "gpio_busy",
                    format_args!("gpio: engine busy, a pattern was skipped"),
                );
            }
        }
    }
}
