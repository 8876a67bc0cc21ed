//! One broker connection: wait for the CONNACK, then the event loop that fills the in-flight
//! window from the queue, maps the broker's acknowledgements back to queue records, and ends
//! with why ([`SessionEnd`]) for [`run`](super::run) to act on.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::client::{Client, Ev, EventLoop};
use super::correlate::{Correlator, Outcome};
use super::limit::{self, SizeWatch, Wire};
use super::pace::Pacer;
use super::prepare::{prepare, Limits, Prepared, SetAside};
use super::{
    ha, persist_ack, set_aside, status_topic, Links, PublishError, Reconfigure, Session,
    SessionEnd, ACK_PERSIST_DELAY, HEALTH_INTERVAL, MAX_HELD_EVENTS, READ_BATCH_BYTES,
    SHUTDOWN_GRACE,
};
use crate::alert::LiveMessage;
use crate::config::{MqttConfig, MqttProtocol, Qos};
use crate::queue::{QueueHandle, Record};
use crate::stats::Stats;
use crate::timer::sleep_until_opt;

impl<'a> Session<'a> {
    pub(super) fn new(
        cfg: MqttConfig,
        links: &'a mut Links,
        client: Client,
        queue: QueueHandle,
        stats: Arc<Stats>,
        window: usize,
        sizes: &'a mut SizeWatch,
    ) -> Session<'a> {
        let n = links.outputs.len();
        let replay_upto = links.sent_high;
        let corr = Correlator::new(cfg.qos == Qos::AtMostOnce);
        let pacer = cfg
            .max_publish_rate
            .map(|rate| Pacer::new(rate, Instant::now()));
        Session {
            cfg,
            links,
            client,
            queue,
            stats,
            corr,
            ha_events: HashMap::new(),
            held_events: Vec::new(),
            events_held_until: None,
            broker_max_packet: None,
            outputs_published: vec![None; n],
            acked_any: false,
            ack_flush_at: None,
            window,
            pacer,
            wire: Wire::default(),
            sizes,
            taken_over: false,
            replay_upto,
            health_published: None,
            discovery: None,
            rule_states_from: None,
        }
    }

    fn lost(&self, reason: PublishError, connected: bool) -> SessionEnd {
        SessionEnd::Lost {
            reason,
            connected,
            head: self.corr.oldest_written(),
            acked_any: self.acked_any,
            // A session taken over by a twin says nothing about our packets.
            culprit: (connected && !self.taken_over)
                .then(|| {
                    self.wire
                        .culprit(self.sizes.accepted(), Instant::now().into_std())
                })
                .flatten(),
            taken_over: self.taken_over,
        }
    }

    pub(super) async fn run(
        &mut self,
        el: &mut EventLoop,
        shutdown: &mut watch::Receiver<bool>,
        live: &mut mpsc::Receiver<LiveMessage>,
        reconf: &mut mpsc::Receiver<Reconfigure>,
    ) -> SessionEnd {
        // Connect: poll until CONNACK.
        loop {
            tokio::select! {
                ev = el.poll() => match ev {
                    Ok(Ev::Connected { max_packet }) => {
                        self.broker_max_packet = max_packet.map(|m| m as usize);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => return self.lost(e, false),
                },
                _ = shutdown.changed() => return SessionEnd::Shutdown,
                Some(r) = reconf.recv() => {
                    // Nothing is in flight yet: connect again with the new settings.
                    self.links.reconfigure(&r);
                    self.cfg = r.mqtt;
                    return SessionEnd::Reconnect;
                }
            }
        }
        self.stats.inc(&self.stats.mqtt_connects);
        self.stats.set_broker_connected(true);
        log::info!(
            "mqtt: connected to {}:{}{}",
            self.cfg.host,
            self.cfg.port,
            if self.cfg.tls.is_some() { " (tls)" } else { "" }
        );
        self.on_connected();
        let mut stats_tick = tokio::time::interval(self.cfg.stats_interval);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health_tick = tokio::time::interval(HEALTH_INTERVAL);
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Err(e) = self.fill_window() {
                self.stats.log_queue_error(&e);
            }
            self.send_discovery();
            self.send_rule_states();
            let room = self.corr.records_in_flight() < self.window;
            let flush_at = self.ack_flush_at;
            let held_until = self.events_held_until;
            let paced_until = self.pacer.as_ref().and_then(Pacer::next_at);
            let watching = self.links.activity.is_some();
            // Nothing to look at without discovery or a snooze: no wake-up every second.
            let health_due = self.cfg.ha_discovery || self.links.state.snoozed_until.is_some();
            tokio::select! {
                ev = el.poll() => match ev {
                    Ok(ev) => {
                        if let Err(reason) = self.on_event(ev) {
                            return self.lost(reason, true);
                        }
                    }
                    Err(e) => return self.lost(e, true),
                },
                _ = self.queue.readable(), if room => {}
                _ = sleep_until_opt(paced_until), if paced_until.is_some() => {}
                _ = stats_tick.tick() => self.publish_stats(),
                _ = health_tick.tick(), if health_due => {
                    self.end_snooze_if_over();
                    if self.cfg.ha_discovery {
                        self.publish_health();
                    }
                }
                Some((suffix, payload)) = live.recv() => {
                    // Best-effort channels: QoS 0, no queue record, no ack to track.
                    let topic = format!("{}/{suffix}", self.cfg.topic_prefix);
                    let topic = crate::topic::safe_topic(&topic).into_owned();
                    let size = limit::packet_size(topic.len(), payload.len(), false, self.is_v5().then_some(0));
                    if self.own_limit().is_some_and(|max| size > max) {
                        self.stats.inc(&self.stats.channel_dropped);
                        continue;
                    }
                    match self.client.try_publish(topic, Qos::AtMostOnce, false, payload, None) {
                        Ok(()) => {
                            self.corr.sent(None);
                            self.wire.sent(size, None);
                        }
                        Err(_) => self.stats.inc(&self.stats.channel_dropped),
                    }
                }
                _ = sleep_until_opt(held_until), if held_until.is_some() => self.release_held_events(),
                _ = sleep_until_opt(flush_at), if flush_at.is_some() => {
                    self.ack_flush_at = None;
                    persist_ack(&self.queue).await;
                }
                changed = activity_changed(&mut self.links.activity), if watching => {
                    if changed {
                        self.publish_outputs();
                    } else {
                        // The engine is gone: nothing more to mirror.
                        self.links.activity = None;
                    }
                }
                Some(r) = reconf.recv() => {
                    let interval = self.cfg.stats_interval;
                    if self.reconfigure(r) {
                        self.drain(el).await;
                        self.disconnect(el).await;
                        return SessionEnd::Reconnect;
                    }
                    if self.cfg.stats_interval != interval {
                        stats_tick = tokio::time::interval(self.cfg.stats_interval);
                        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
                _ = shutdown.changed() => {
                    self.shutdown(el).await;
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    /// Birth: discovery, `online`, output states, command subscriptions, then the queue from
    /// the oldest unacknowledged record.
    fn on_connected(&mut self) {
        let prefix = &self.cfg.topic_prefix;
        for filter in [
            format!("{prefix}/cmd/#"),
            format!("{prefix}/outputs/+/set"),
            format!("{prefix}/rules/+/set"),
        ] {
            if let Err(e) = self.client.try_subscribe(filter.clone(), Qos::AtLeastOnce) {
                log::warn!("mqtt: cannot subscribe to {filter}: {e}");
            }
        }
        if self.cfg.ha_discovery {
            if let Err(e) = self
                .client
                .try_subscribe(ha::ha_status_topic(&self.cfg), Qos::AtLeastOnce)
            {
                log::warn!("mqtt: cannot subscribe to Home Assistant's status: {e}");
            }
            self.publish_discovery();
        }
        self.publish_own(
            status_topic(&self.cfg),
            b"online".to_vec(),
            Qos::AtLeastOnce,
            true,
        );
        self.publish_outputs();
        self.publish_rule_states();
        self.publish_snooze();
        self.queue.lock().rewind();
    }

    /// Reads as many records as the in-flight window has room for and publishes them.
    fn fill_window(&mut self) -> Result<(), crate::queue::QueueError> {
        if self.window == 1 && self.acked_any {
            // The probed record went through: back to the full window.
            self.window = self.cfg.max_inflight as usize;
        }
        let mut room = self.window.saturating_sub(self.corr.records_in_flight());
        if let Some(p) = &mut self.pacer {
            room = room.min(p.allowance(Instant::now()));
        }
        if room == 0 {
            return Ok(());
        }
        let records = self.queue.read_batch(room, READ_BATCH_BYTES)?;
        if let Some(p) = &mut self.pacer {
            p.spend(records.len());
        }
        for rec in records {
            self.publish_record(rec);
        }
        Ok(())
    }

    fn publish_record(&mut self, rec: Record) {
        let limits = Limits {
            cfg: &self.cfg,
            broker_max_packet: self.broker_max_packet,
            refused_size: self.sizes.record_limit(),
            replay_below: self.links.replay_below,
            replay_upto: self.replay_upto,
            now_us: crate::clock::unix_micros(std::time::SystemTime::now()),
        };
        let p = match prepare(&rec, &limits) {
            Prepared::Publish(p) => p,
            Prepared::SetAside(why) => {
                if matches!(why, SetAside::Undecodable(_)) {
                    self.stats.inc(&self.stats.mqtt_undecodable);
                }
                self.set_aside(rec.seq, &why.to_string());
                return;
            }
        };
        if let Some(label) = &p.ha_label {
            // The alert that brings a new label fires as that type: the discovery announcing
            // it goes out first, and events wait until Home Assistant has applied it.
            if self.links.state.learn(label) {
                log::info!("mqtt: new alert label {label:?}: announcing it as an event type");
                self.links.save_state();
                self.publish_discovery();
            }
            if p.ha_event {
                let known = self.links.announced().contains(label);
                if let Some(ev) = ha::event_payload(&p.payload, label, known) {
                    self.ha_events.insert(rec.seq, ev);
                }
            }
        }
        let size = p.size;
        match self
            .client
            .try_publish(p.topic, self.cfg.qos, false, p.payload, p.props)
        {
            Ok(()) => {
                self.corr.sent(Some(rec.seq));
                self.wire.sent(size, Some(rec.seq));
                self.stats.inc(&self.stats.mqtt_published);
                self.links.sent_high = self.links.sent_high.max(rec.seq);
            }
            Err(e) => {
                // The request channel has room for the whole window, so this is a bug or a
                // client that has gone away; the record stays in the queue for the next try.
                self.ha_events.remove(&rec.seq);
                log::error!(
                    "mqtt: cannot hand record seq {} to the client: {e}",
                    rec.seq
                );
                self.queue.lock().rewind();
            }
        }
    }

    fn set_aside(&mut self, seq: u64, why: &str) {
        self.ha_events.remove(&seq);
        set_aside(&self.queue, &self.stats, seq, why);
        self.note_ack();
    }

    pub(super) fn is_v5(&self) -> bool {
        self.cfg.protocol == MqttProtocol::V5
    }

    fn ack(&mut self, seq: u64) {
        self.stats.inc(&self.stats.mqtt_acked);
        self.acked_any = true;
        if let Some(ev) = self.ha_events.remove(&seq) {
            if self.events_held_until.is_some_and(|t| Instant::now() < t)
                && self.held_events.len() < MAX_HELD_EVENTS
            {
                self.held_events.push(ev);
            } else {
                self.publish_own(ha::event_topic(&self.cfg), ev, self.cfg.qos, false);
            }
        }
        if let Err(e) = self.queue.lock().ack(seq) {
            log::error!("queue: {e}");
        }
        self.note_ack();
    }

    fn note_ack(&mut self) {
        if self.queue.lock().ack_dirty() && self.ack_flush_at.is_none() {
            self.ack_flush_at = Some(Instant::now() + ACK_PERSIST_DELAY);
        }
    }

    fn on_event(&mut self, ev: Ev) -> Result<(), PublishError> {
        if let Ev::PubAck(pkid) | Ev::PubComp(pkid) = ev {
            // The broker read everything up to this packet: those sizes are proven taken.
            if let Some(size) = self.wire.acknowledged(pkid) {
                self.sizes.proven(size);
            }
        }
        match ev {
            Ev::Written(pkid) => {
                self.wire.written(pkid, Instant::now().into_std());
                if let Outcome::Done(seq) = self.corr.written(pkid) {
                    self.ack(seq);
                }
            }
            Ev::PubAck(pkid) if self.cfg.qos == Qos::AtLeastOnce => {
                if let Outcome::Done(seq) = self.corr.acknowledged(pkid) {
                    self.ack(seq);
                }
            }
            Ev::PubComp(pkid) if self.cfg.qos == Qos::ExactlyOnce => {
                if let Outcome::Done(seq) = self.corr.acknowledged(pkid) {
                    self.ack(seq);
                }
            }
            Ev::Refused { pkid, reason } => {
                if let Outcome::Done(seq) = self.corr.acknowledged(pkid) {
                    self.stats.inc(&self.stats.mqtt_refused);
                    self.set_aside(seq, &format!("the broker refused it: {reason}"));
                }
            }
            Ev::Message {
                topic,
                payload,
                reply,
                retain,
            } => self.on_message(&topic, &payload, reply, retain),
            Ev::BrokerDisconnect(reason) => {
                self.taken_over = reason.taken_over();
                return Err(reason);
            }
            Ev::Connected { .. }
            | Ev::DisconnectSent
            | Ev::PubAck(_)
            | Ev::PubComp(_)
            | Ev::Other => {}
        }
        Ok(())
    }

    async fn shutdown(&mut self, el: &mut EventLoop) {
        self.publish_own(
            status_topic(&self.cfg),
            b"offline".to_vec(),
            Qos::AtLeastOnce,
            true,
        );
        self.disconnect(el).await;
    }

    /// Reads the broker's answers until every record in flight is acknowledged (or
    /// [`SHUTDOWN_GRACE`] is up), publishing nothing new: a reconnect for a reload then sends
    /// nothing twice that the broker already took.
    async fn drain(&mut self, el: &mut EventLoop) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.corr.records_in_flight() > 0 {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Ok(Ok(ev)) => {
                    if self.on_event(ev).is_err() {
                        return;
                    }
                }
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    /// Sends DISCONNECT (no Last Will) and gives what is queued in rumqttc, acks included,
    /// [`SHUTDOWN_GRACE`] to go through.
    async fn disconnect(&mut self, el: &mut EventLoop) {
        let _ = self.client.try_disconnect();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            match tokio::time::timeout_at(deadline, el.poll()).await {
                Ok(Ok(Ev::DisconnectSent)) => break,
                Ok(Ok(ev)) => {
                    let _ = self.on_event(ev);
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
        log::info!("mqtt: disconnected cleanly");
    }
}

/// Resolves with true when the activity changed, false when its sender is gone.
async fn activity_changed(rx: &mut Option<watch::Receiver<Vec<bool>>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}
