//! MQTT: publishes queue records in order, acknowledges each in the queue only when the broker
//! confirms exactly that publish, and keeps `{prefix}/status` and `{prefix}/stats` current.
//!
//! Owns: the broker connection. Never does: decide what is durable (the queue does) or touch
//! the upstream socket.
//!
//! # Correlating acknowledgements
//! rumqttc gives no per-publish completion handle. It does process requests in the order they
//! are sent and reports each as `Outgoing::Publish(pkid)` in that order, so every publish we
//! send pushes its queue sequence number (or `None` for status/stats messages) onto a FIFO;
//! each `Outgoing::Publish(pkid)` pops the FIFO and maps `pkid -> seq`; each `PubAck(pkid)` (or
//! `PubComp` at QoS 2) acks that seq. A fresh rumqttc event loop is built for every connection,
//! so rumqttc never replays anything on its own: after a reconnect, the queue is rewound to the
//! oldest unacknowledged record and everything from there is sent again, in queue order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::alert::QueuedMessage;
use crate::backoff::Backoff;
use crate::config::{MqttConfig, Qos};
use crate::queue::{QueueHandle, Record};
use crate::stats::{queue_json, Stats};

/// Largest MQTT packet we send or accept. Records are capped well below this by the queue.
const MAX_PACKET_BYTES: usize = 2 << 20;
/// How long after the first unpersisted ack the ack position is written to disk: the window of
/// re-published duplicates after a crash, traded against SD card wear.
pub const ACK_PERSIST_DELAY: Duration = Duration::from_secs(1);
/// How long a clean shutdown waits for `offline` and the DISCONNECT to go out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// A connection that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub fn status_topic(cfg: &MqttConfig) -> String {
    format!("{}/status", cfg.topic_prefix)
}

fn options(cfg: &MqttConfig) -> MqttOptions {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive)
        .set_clean_session(true)
        .set_inflight(cfg.max_inflight)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_last_will(LastWill::new(
            status_topic(cfg),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    o
}

/// Runs until `shutdown` turns true; then publishes `offline` and disconnects cleanly.
pub async fn run(
    cfg: MqttConfig,
    queue: QueueHandle,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
    mut live: mpsc::Receiver<crate::source::LiveMessage>,
) {
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (client, mut el) = AsyncClient::new(options(&cfg), cfg.max_inflight as usize + 16);
        el.network_options.set_connection_timeout(10);
        let started = Instant::now();
        let mut session = Session::new(&cfg, client, queue.clone(), stats.clone());
        let end = session.run(&mut el, &mut shutdown, &mut live).await;
        stats.set_broker_connected(false);
        persist_ack(&queue).await;
        match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Lost(reason) => {
                stats.inc(&stats.mqtt_connect_failures);
                if started.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                log::warn!(
                    "mqtt: {}:{}: {reason}; retrying in {delay:?}",
                    cfg.host,
                    cfg.port
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    persist_ack(&queue).await;
}

async fn persist_ack(queue: &QueueHandle) {
    let q = queue.clone();
    let r = tokio::task::spawn_blocking(move || q.lock().persist_ack()).await;
    if let Ok(Err(e)) = r {
        log::error!("queue: cannot persist the ack position: {e}");
    }
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

struct Session<'a> {
    cfg: &'a MqttConfig,
    client: AsyncClient,
    queue: QueueHandle,
    stats: Arc<Stats>,
    qos: QoS,
    /// Sent to rumqttc, not yet seen as `Outgoing::Publish`: queue seq, or None for our own
    /// status/stats messages.
    unassigned: VecDeque<Option<u64>>,
    /// pkid -> queue seq, awaiting PUBACK/PUBCOMP.
    inflight: HashMap<u16, u64>,
    ack_flush_at: Option<Instant>,
}

impl<'a> Session<'a> {
    fn new(
        cfg: &'a MqttConfig,
        client: AsyncClient,
        queue: QueueHandle,
        stats: Arc<Stats>,
    ) -> Session<'a> {
        Session {
            cfg,
            client,
            queue,
            stats,
            qos: qos(cfg.qos),
            unassigned: VecDeque::new(),
            inflight: HashMap::new(),
            ack_flush_at: None,
        }
    }

    async fn run(
        &mut self,
        el: &mut EventLoop,
        shutdown: &mut watch::Receiver<bool>,
        live: &mut mpsc::Receiver<crate::source::LiveMessage>,
    ) -> SessionEnd {
        // Connect: poll until CONNACK.
        loop {
            tokio::select! {
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => return SessionEnd::Lost(e.to_string()),
                },
                _ = shutdown.changed() => return SessionEnd::Shutdown,
            }
        }
        self.stats.inc(&self.stats.mqtt_connects);
        self.stats.set_broker_connected(true);
        log::info!("mqtt: connected to {}:{}", self.cfg.host, self.cfg.port);
        self.publish_own(status_topic(self.cfg), b"online".to_vec(), QoS::AtLeastOnce);
        self.queue.lock().rewind();
        let mut stats_tick = tokio::time::interval(self.cfg.stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Err(e) = self.fill_window() {
                log::error!("mqtt: reading the queue failed: {e}");
            }
            let room = self.used() < self.cfg.max_inflight as usize;
            let flush_at = self.ack_flush_at;
            tokio::select! {
                ev = el.poll() => {
                    if let Err(reason) = self.on_event(ev) {
                        return SessionEnd::Lost(reason);
                    }
                }
                _ = self.queue.readable(), if room => {}
                _ = stats_tick.tick() => self.publish_stats(),
                Some((suffix, payload)) = live.recv() => {
                    // Best-effort channels: QoS 0, no queue record, no ack to track.
                    let topic = format!("{}/{suffix}", self.cfg.topic_prefix);
                    if self.client.try_publish(topic, QoS::AtMostOnce, false, payload).is_ok() {
                        self.unassigned.push_back(None);
                    } else {
                        self.stats.inc(&self.stats.channel_dropped);
                    }
                }
                _ = sleep_until_opt(flush_at), if flush_at.is_some() => {
                    self.ack_flush_at = None;
                    persist_ack(&self.queue).await;
                }
                _ = shutdown.changed() => {
                    self.shutdown(el).await;
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    fn used(&self) -> usize {
        self.unassigned.iter().filter(|s| s.is_some()).count() + self.inflight.len()
    }

    /// Reads as many records as the in-flight window has room for and publishes them.
    fn fill_window(&mut self) -> Result<(), crate::queue::QueueError> {
        let room = (self.cfg.max_inflight as usize).saturating_sub(self.used());
        if room == 0 {
            return Ok(());
        }
        let records = self.queue.read_batch(room, 1 << 20)?;
        for rec in records {
            self.publish_record(rec);
        }
        Ok(())
    }

    fn publish_record(&mut self, rec: Record) {
        let msg = match QueuedMessage::decode(&rec.payload) {
            Ok(m) => m,
            Err(e) => {
                self.set_aside(rec.seq, &e.to_string());
                return;
            }
        };
        let topic = format!("{}/{}", self.cfg.topic_prefix, msg.topic_suffix);
        let payload = msg.render(rec.seq, rec.accepted_us);
        match self.client.try_publish(topic, self.qos, false, payload) {
            Ok(()) => {
                self.unassigned.push_back(Some(rec.seq));
                self.stats.inc(&self.stats.mqtt_published);
            }
            Err(e) => self.set_aside(rec.seq, &e.to_string()),
        }
    }

    /// A record that can never be published is acknowledged so the rest can flow.
    fn set_aside(&mut self, seq: u64, why: &str) {
        self.stats.inc(&self.stats.mqtt_undecodable);
        self.stats.warn_limited(
            "set_aside",
            format_args!("mqtt: record seq {seq} set aside: {why}"),
        );
        self.ack(seq);
    }

    fn publish_own(&mut self, topic: String, payload: Vec<u8>, q: QoS) {
        if self.client.try_publish(topic, q, true, payload).is_ok() {
            self.unassigned.push_back(None);
        }
    }

    fn publish_stats(&mut self) {
        let snapshot = {
            let q = self.queue.lock();
            self.stats.snapshot(Some(queue_json(&q)))
        };
        let topic = format!("{}/stats", self.cfg.topic_prefix);
        self.publish_own(topic, snapshot.to_string().into_bytes(), QoS::AtMostOnce);
    }

    fn ack(&mut self, seq: u64) {
        let mut q = self.queue.lock();
        if let Err(e) = q.ack(seq) {
            log::error!("queue: {e}");
        }
        if q.ack_dirty() && self.ack_flush_at.is_none() {
            self.ack_flush_at = Some(Instant::now() + ACK_PERSIST_DELAY);
        }
    }

    fn on_event(&mut self, ev: Result<Event, rumqttc::ConnectionError>) -> Result<(), String> {
        match ev.map_err(|e| e.to_string())? {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Some(seq)) = self.unassigned.pop_front() {
                    if self.qos == QoS::AtMostOnce {
                        self.stats.inc(&self.stats.mqtt_acked);
                        self.ack(seq);
                    } else {
                        self.inflight.insert(pkid, seq);
                    }
                }
            }
            Event::Incoming(Packet::PubAck(a)) if self.qos == QoS::AtLeastOnce => {
                self.on_ack(a.pkid)
            }
            Event::Incoming(Packet::PubComp(c)) if self.qos == QoS::ExactlyOnce => {
                self.on_ack(c.pkid)
            }
            Event::Incoming(Packet::Disconnect) => return Err("broker sent DISCONNECT".into()),
            _ => {}
        }
        Ok(())
    }

    fn on_ack(&mut self, pkid: u16) {
        if let Some(seq) = self.inflight.remove(&pkid) {
            self.stats.inc(&self.stats.mqtt_acked);
            self.ack(seq);
        }
    }

    async fn shutdown(&mut self, el: &mut EventLoop) {
        self.publish_own(
            status_topic(self.cfg),
            b"offline".to_vec(),
            QoS::AtLeastOnce,
        );
        let _ = self.client.try_disconnect();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
                Ok(ev @ Ok(_)) => {
                    let _ = self.on_event(ev);
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        log::info!("mqtt: disconnected cleanly");
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await
    }
}
