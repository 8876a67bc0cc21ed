//! What happens to an accepted alert, whichever path it came by: deduplication first (a copy
//! already seen on either path is counted and dropped, see [`crate::dedup`]), then the live
//! GPIO branch (rules decide, the engine is told at once), then the durable queue.
//!
//! Owns: rule state (cooldowns) and the dedup window. Never does: socket or broker I/O.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::alert::{Alert, Confidence, QueuedMessage, Via};
use crate::dedup::{self, Admit, KeyHasher, State, Window};
use crate::gpio::GpioCommand;
use crate::queue::{OnOutcome, QueueError, QueueHandle, Then, WriteOutcome};
use crate::rules::RuleEngine;
use crate::stats::Stats;

/// How long an alert may wait for room in the writer's channel before it is dropped and
/// counted. Long enough to ride out an SD card's write stall, short enough that the socket
/// keeps being read (and GPIO keeps firing) when the disk is gone.
pub const QUEUE_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`Ingest::accept_durable`] waits for an alert to be safe (its fsync, or the broker's
/// PUBACK). An SD card stalls for seconds at worst; past this the webhook answers 503 and the
/// sender retries (the retry is deduplicated against this copy once it turns safe).
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to [`Ingest::accept_durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// This copy was appended and is safe under `seq`: synced, or acknowledged by the broker.
    Durable(u64),
    /// A copy seen earlier (either path) is safe under `seq`; this one was dropped.
    Duplicate(u64),
}

/// Why [`Ingest::accept_durable`] could not make an alert durable. Each is a 503 to a webhook.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("the queue refused the alert: {0}")]
    Refused(Arc<QueueError>),
    #[error("the queue writer did not take the alert within {0:?}")]
    Stalled(Duration),
    #[error("the alert was not confirmed durable within {0:?}")]
    NotConfirmed(Duration),
    #[error("the queue writer has stopped")]
    Closed,
}

/// The dedup window plus a generation counter bumped whenever an append is answered, which
/// copies waiting on their first copy's outcome watch.
struct Dedup {
    window: Mutex<Window>,
    keys: KeyHasher,
    settled: watch::Sender<u64>,
}

impl Dedup {
    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, key: Option<dedup::Key>, seq: Option<u64>) {
        if let Some(k) = key {
            self.window().settle(k, seq);
            self.settled.send_modify(|g| *g = g.wrapping_add(1));
        }
    }
}

/// The writer thread settles the window as soon as an append is answered.
impl OnOutcome for Dedup {
    fn on_outcome(&self, key: u64, seq: Option<u64>) {
        self.settle(Some(key), seq);
    }
}

/// What [`Ingest::submit`] did with one copy.
enum Submitted {
    Duplicate(dedup::Key),
    /// Handed to the writer, which settles the dedup window when the append is answered; with
    /// a receipt, the receiver then gets the outcome.
    Queued(Option<tokio::sync::oneshot::Receiver<WriteOutcome>>),
    Failed(IngestError),
}

#[derive(Clone)]
pub struct Ingest {
    rules: Arc<Mutex<RuleEngine>>,
    gpio: Option<mpsc::Sender<GpioCommand>>,
    queue: QueueHandle,
    stats: Arc<Stats>,
    dedup: Arc<Dedup>,
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
            dedup: Arc::new(Dedup {
                window: Mutex::new(Window::new()),
                keys: KeyHasher::default(),
                settled: watch::channel(0).0,
            }),
        }
    }

    /// Takes one alert from the live stream: dedup, GPIO, queue. Returns once the writer has
    /// the alert (not after its fsync), so the socket keeps being read.
    pub async fn accept(&self, alert: Alert, via: Via) {
        // The outcome is counted by the writer and settles the dedup window on its own.
        let _ = self.submit(&alert, via, false).await;
    }

    /// Like [`Ingest::accept`], but returns only once the alert (or the copy of it seen first)
    /// is safe, with its seq: what a webhook may acknowledge. Safe is whichever comes first:
    /// the fsync that covers it, or the broker's PUBACK (the publisher's [`Queue::ack`]
    /// answers it while the fsync runs).
    ///
    /// [`Queue::ack`]: crate::queue::Queue::ack
    pub async fn accept_durable(&self, alert: Alert, via: Via) -> Result<Accepted, IngestError> {
        let deadline = tokio::time::Instant::now() + DURABLE_TIMEOUT;
        // A duplicate whose first copy failed is submitted again, once.
        for _ in 0..2 {
            let key = match self.submit(&alert, via, true).await {
                Submitted::Failed(e) => return Err(e),
                Submitted::Queued(None) => return Err(IngestError::Closed),
                Submitted::Queued(Some(rx)) => {
                    return match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(Ok(seq))) => Ok(Accepted::Durable(seq)),
                        Ok(Ok(Err(e))) => Err(IngestError::Refused(e)),
                        Ok(Err(_)) => Err(IngestError::Closed),
                        Err(_) => Err(IngestError::NotConfirmed(DURABLE_TIMEOUT)),
                    }
                }
                Submitted::Duplicate(key) => key,
            };
            match self.wait_settled(key, deadline).await {
                Some(State::Durable(seq)) => return Ok(Accepted::Duplicate(seq)),
                Some(State::Failed) => continue,
                // Evicted while pending, or still pending at the deadline.
                Some(State::Pending) | None => {
                    return Err(IngestError::NotConfirmed(DURABLE_TIMEOUT))
                }
            }
        }
        Err(IngestError::NotConfirmed(DURABLE_TIMEOUT))
    }

    /// Waits until the first copy of `key` is durable or failed, or `deadline` passes.
    async fn wait_settled(&self, key: dedup::Key, deadline: tokio::time::Instant) -> Option<State> {
        let mut settled = self.dedup.settled.subscribe();
        loop {
            let state = self.dedup.window().state(key);
            if state != Some(State::Pending) {
                return state;
            }
            match tokio::time::timeout_at(deadline, settled.changed()).await {
                Ok(Ok(())) => {}
                _ => return state,
            }
        }
    }

    async fn submit(&self, alert: &Alert, via: Via, receipt: bool) -> Submitted {
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
        // Dedup before anything the user would notice twice: the buzzer and the MQTT message.
        let key = self.dedup.keys.key(alert);
        if let Some(k) = key {
            let admitted = self.dedup.window().admit(k);
            if let Admit::Duplicate(_) = admitted {
                s.inc(&s.alerts_duplicate);
                log::debug!(
                    "alert {:?} (event_id {:?}) via {} is a duplicate; dropped",
                    alert.label,
                    alert.event_id,
                    via.as_str()
                );
                return Submitted::Duplicate(k);
            }
        }
        let now = SystemTime::now();
        self.fire_gpio(alert, now);
        let payload = QueuedMessage::from_alert(alert, via).encode();
        let us = crate::clock::unix_micros(now);
        let dedup: Arc<dyn OnOutcome> = self.dedup.clone();
        let then = key.map(|k| Then::new(dedup, k));
        let sent = tokio::time::timeout(
            QUEUE_SEND_TIMEOUT,
            self.queue.append_then(payload, us, then, receipt),
        )
        .await;
        match sent {
            Ok(Ok(rx)) => Submitted::Queued(rx),
            failed => {
                let e = match failed {
                    Ok(Err(_)) => IngestError::Closed,
                    _ => IngestError::Stalled(QUEUE_SEND_TIMEOUT),
                };
                s.inc(&s.queue_append_failed);
                s.warn_limited(
                    "queue_stalled",
                    format_args!("alert {:?} dropped: {e}", alert.label),
                );
                // A later copy (a webhook retry) may then be admitted and try again: the
                // request's `Then`, dropped unsent, has settled the key as failed.
                Submitted::Failed(e)
            }
        }
    }

    /// Makes a non-alert channel message durable (`source.durable_channels`): same queue, same
    /// bounded wait as alerts, no GPIO.
    pub async fn accept_message(&self, msg: QueuedMessage) {
        let s = &self.stats;
        let us = crate::clock::unix_micros(SystemTime::now());
        if tokio::time::timeout(QUEUE_SEND_TIMEOUT, self.queue.append(msg.encode(), us))
            .await
            .map_or(true, |r| r.is_err())
        {
            s.inc(&s.queue_append_failed);
            s.warn_limited(
                "queue_stalled",
                format_args!("{} message dropped: the queue writer did not take it within {QUEUE_SEND_TIMEOUT:?}", msg.topic_suffix),
            );
        } else {
            s.inc(&s.channel_queued);
        }
    }

    /// Arms or disarms rule `rule` (its index in `gpio.rules`); takes effect for the next alert.
    pub fn set_armed(&self, rule: usize, armed: bool) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_armed(rule, armed);
    }

    /// Replaces the rules (a config reload), carrying arming and cooldowns over by rule name
    /// ([`RuleEngine::reloaded`]); the next alert is decided by the new rules.
    pub fn replace_rules(&self, rules: std::sync::Arc<Vec<crate::config::RuleConfig>>) {
        let mut engine = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        *engine = engine.reloaded(rules);
    }

    fn fire_gpio(&self, alert: &Alert, now: SystemTime) {
        let Some(tx) = &self.gpio else { return };
        let synced = crate::timesync::synced();
        let decision = self
            .rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .decide_at(alert, now, now, Instant::now(), synced);
        let s = &self.stats;
        if decision.age_by_timestamp {
            s.inc(&s.gpio_age_by_timestamp);
        } else {
            s.inc(&s.gpio_age_by_receipt);
        }
        for _ in &decision.quiet_unsynced {
            s.inc(&s.gpio_quiet_unsynced);
        }
        if decision.stale > 0 {
            log::debug!(
                "alert {:?}: older than max_age by {} (clock {})",
                alert.label,
                if decision.age_by_timestamp {
                    "its own timestamp"
                } else {
                    "its receipt time"
                },
                if synced {
                    "synchronised"
                } else {
                    "not synchronised"
                }
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::fault_fs::GatedFs;
    use crate::queue::spawn_writer;

    const T: Duration = Duration::from_secs(20);

    fn alert(event_id: &str) -> Alert {
        crate::dedup::test_alert(serde_json::json!({
            "event_id": event_id,
            "label": "intrusion",
            "timestamp": "2026-01-01T00:00:00Z",
            "confidence": 0.9,
        }))
    }

    /// An ingest over a queue whose segment fsyncs wait at `fs.gate` (a slow SD card), with
    /// the segment made and a first alert made durable already.
    async fn gated_ingest(dir: &std::path::Path) -> (GatedFs, Ingest, QueueHandle) {
        let (fs, queue) = GatedFs::open_queue(dir);
        let stats = Arc::new(Stats::default());
        let (handle, _join) = spawn_writer(queue, stats.clone()).expect("writer");
        let ingest = Ingest::new(RuleEngine::new(Vec::new()), None, handle.clone(), stats);
        let first = ingest.accept_durable(alert("warm-up"), Via::Webhook).await;
        assert!(matches!(first, Ok(Accepted::Durable(_))), "{first:?}");
        for r in handle.read_batch(10, 1 << 20).expect("read") {
            handle.lock().ack(r.seq).expect("ack");
        }
        (fs, ingest, handle)
    }

    /// Plays the publisher: reads what is readable (once the writer's fsync waits at the
    /// gate) and, with `ack`, acknowledges it as a PUBACK would. Returns the seqs read.
    async fn publish_while_held(fs: &GatedFs, queue: &QueueHandle, ack: bool) -> Vec<u64> {
        let gate = fs.gate.clone();
        let held = tokio::task::spawn_blocking(move || gate.wait_holding(T))
            .await
            .expect("join");
        assert!(held, "the fsync never reached the gate");
        let seqs: Vec<u64> = queue
            .read_batch(100, 1 << 20)
            .expect("read")
            .iter()
            .map(|r| r.seq)
            .collect();
        if ack {
            for &s in &seqs {
                queue.lock().ack(s).expect("ack");
            }
        }
        seqs
    }

    #[tokio::test]
    async fn a_webhook_alert_the_broker_acknowledged_is_accepted_before_its_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fs, ingest, queue) = gated_ingest(dir.path()).await;
        fs.gate.close();
        let i = ingest.clone();
        let sender = tokio::spawn(async move { i.accept_durable(alert("a"), Via::Webhook).await });
        let seqs = publish_while_held(&fs, &queue, true).await;
        assert_eq!(seqs.len(), 1);
        let answer = tokio::time::timeout(T, sender).await.expect("answered");
        assert_eq!(
            answer.expect("join").expect("safe"),
            Accepted::Durable(seqs[0])
        );
        assert!(fs.gate.holding(), "the fsync is still running");
        // The dedup window knows it is safe: a retry is a duplicate of it at once.
        let retry = ingest.accept_durable(alert("a"), Via::Webhook).await;
        assert_eq!(retry.expect("duplicate"), Accepted::Duplicate(seqs[0]));
        assert!(fs.gate.holding(), "the fsync is still running");
        fs.gate.open(None);
    }

    #[tokio::test]
    async fn an_alert_neither_synced_nor_acknowledged_waits_and_a_failed_one_is_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fs, ingest, queue) = gated_ingest(dir.path()).await;
        fs.gate.close();
        let i = ingest.clone();
        let sender = tokio::spawn(async move { i.accept_durable(alert("b"), Via::Webhook).await });
        // Published, not acknowledged: the sender is not answered while the fsync runs.
        let seqs = publish_while_held(&fs, &queue, false).await;
        assert_eq!(seqs.len(), 1);
        assert!(!sender.is_finished(), "answered before the fsync or an ack");
        // The fsync fails: the sender hears so, and the window forgets the copy as failed...
        fs.gate.open(Some(5));
        let answer = tokio::time::timeout(T, sender).await.expect("answered");
        assert!(
            matches!(answer.expect("join"), Err(IngestError::Refused(_))),
            "a failed fsync is a refusal"
        );
        // ...so the sender's retry is appended anew (a new segment: the failed one is left).
        fs.gate.open(None);
        let retry = ingest.accept_durable(alert("b"), Via::Webhook).await;
        match retry {
            Ok(Accepted::Durable(seq)) => assert!(seq > seqs[0]),
            other => panic!("the retry was not appended: {other:?}"),
        }
    }
}
