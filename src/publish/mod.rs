//! MQTT: publishes queue records in order, acknowledges each in the queue only when the broker
//! confirms exactly that publish, and is the relay's face to local consumers: `{prefix}/status`,
//! `{prefix}/stats`, `{prefix}/outputs/{name}`, commands on `{prefix}/cmd/...`, and (optionally)
//! Home Assistant discovery.
//!
//! Owns: the broker connection (MQTT 3.1.1 or 5, TCP or TLS). Never does: decide what is
//! durable (the queue does), match rules or drive pins (it only forwards commands to the GPIO
//! engine), or touch the upstream socket.
//!
//! # Correlating acknowledgements
//! See [`correlate`]: every publish we hand to rumqttc is pushed on a FIFO, each
//! `Outgoing::Publish(pkid)` pops it and maps `pkid -> seq`, each PUBACK (QoS 1) / PUBCOMP
//! (QoS 2) acks that seq. A fresh rumqttc event loop is built for every connection, so rumqttc
//! never replays anything on its own: after a reconnect the queue is rewound to the oldest
//! unacknowledged record and everything from there is sent again, in queue order.
//!
//! # Records the broker will not take
//! A record that can never be delivered must not wedge the queue. It is *set aside*: logged,
//! counted in `mqtt_set_aside`, and acknowledged in the queue so the rest flows. That happens
//! when
//! - it is larger than the broker's known limit: `mqtt.max_message_bytes` (payload bytes, like
//!   mosquitto's `message_size_limit`), or with MQTT 5 the maximum packet size in the CONNACK;
//! - with MQTT 5, the broker answers its PUBACK/PUBREC with a reason code >= 0x80 (not
//!   authorised, quota exceeded, packet too large, ...);
//! - the broker closes the connection whenever it is sent: a connection lost with nothing
//!   acknowledged makes its oldest unacknowledged record suspect; it is then sent alone, and
//!   [`correlate::POISON_STRIKES`] more such losses convict it ([`correlate::PoisonWatch`]).
//!   MQTT 3.1.1 cannot refuse one publish: mosquitto disconnects a client whose packet exceeds
//!   `max_packet_size`; and rumqttc ends the connection on MQTT 5 reason codes it does not
//!   know, such as 0x95 "packet too large" for a message above `message_size_limit`.
//!
//! With MQTT 3.1.1, mosquitto answers a publish that an ACL denies, or that exceeds
//! `message_size_limit`, with a normal PUBACK and drops it: the relay cannot tell, the record
//! leaves the queue as delivered. Use MQTT 5, or set `mqtt.max_message_bytes`, to have such
//! records counted.
//!
//! # Commands
//! See [`commands`]. Retained messages on command topics are ignored (a stale retained
//! `silence` must not act on every reconnect); each command is answered on `{prefix}/cmd/result`.

pub mod client;
pub mod commands;
pub mod correlate;
pub mod ha;
pub mod ha_state;
pub mod limit;
pub mod pace;
pub mod reconfigure;
pub mod takeover;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::alert::{LiveMessage, QueuedMessage};
use crate::backoff::Backoff;
use crate::config::{Config, GpioConfig, MqttConfig, MqttProtocol, OutputConfig, OutputKind, Qos};
use crate::gpio::GpioCommand;
use crate::queue::{QueueHandle, Record};
use crate::stats::{queue_json, Stats};
use client::{Client, Ev, EventLoop, Props, Reply};
use correlate::{Correlator, Outcome, PoisonWatch};
use limit::{SizeWatch, Verdict, Wire};
use pace::Pacer;
pub use reconfigure::Reconfigure;

/// How long after the first unpersisted ack the ack position is written to disk: the window of
/// re-published duplicates after a crash, traded against SD card wear.
pub const ACK_PERSIST_DELAY: Duration = Duration::from_secs(1);
/// How long a clean shutdown waits for `offline` and the DISCONNECT to go out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// A connection that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Most payload bytes read from the queue in one go (memory bound of a refill).
const READ_BATCH_BYTES: usize = 1 << 20;
/// How long after sending discovery events wait: Home Assistant subscribes to the event topic
/// only once it has applied the discovery (about half a second measured against HA 2025.4),
/// and an event before that is lost to the event entity.
const DISCOVERY_SETTLE: Duration = Duration::from_secs(1);
/// Events held at most while a discovery settles; beyond that they go out at once.
const MAX_HELD_EVENTS: usize = 256;

/// Room in rumqttc's request channel for our own messages (status, stats, discovery, command
/// answers) on top of the in-flight window and one state message per output.
const OWN_MESSAGE_ROOM: usize = 64;

pub fn status_topic(cfg: &MqttConfig) -> String {
    format!("{}/status", cfg.topic_prefix)
}

/// What the publisher needs from the rest of the relay besides the queue.
pub struct Links {
    /// Where `cmd/...` commands go; `None` when GPIO is off (commands are answered with an error).
    pub gpio: Option<mpsc::Sender<GpioCommand>>,
    /// Which outputs run a pattern, mirrored on `{prefix}/outputs/{name}`.
    pub activity: Option<watch::Receiver<Vec<bool>>>,
    /// The GPIO outputs, in the engine's order.
    pub outputs: Vec<OutputConfig>,
    /// Event types announced to Home Assistant from the config (learned labels come on top).
    pub event_types: Vec<String>,
    /// Named patterns, rules, manual priority, snooze scope: what commands need.
    pub gpio_config: GpioConfig,
    /// Where arming commands (`rules/{name}/set`) go; `None` when GPIO is off.
    pub ingest: Option<crate::ingest::Ingest>,
    /// What Home Assistant changed (arming, snooze, learned labels) and where it is kept.
    pub state: ha_state::HaState,
    pub state_path: std::path::PathBuf,
    /// Records below this seq were in the queue when the relay started: published again, so
    /// marked `relay.replayed` and kept off `{prefix}/event`.
    pub replay_below: u64,
    /// The highest seq handed to the broker by this process (replays after a reconnect).
    sent_high: u64,
    /// The named pattern each output was last told to run by a command (its light effect or
    /// siren tone), shown while the output is active.
    effects: Vec<Option<String>>,
    /// `configuration_url` for Home Assistant, when the HTTP server is on.
    pub configuration_url: Option<String>,
}

impl Links {
    /// Links without a GPIO engine; the caller fills `gpio`, `activity` and `ingest` when it
    /// runs one. Reads the state file (see [`ha_state`]).
    pub fn new(config: &Config) -> Links {
        let state_path = ha_state::path_for(&config.queue.dir);
        Links {
            gpio: None,
            activity: None,
            outputs: config.gpio.outputs.clone(),
            event_types: ha::event_types(&config.mqtt, &config.gpio.rules),
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
                    .is_some_and(|n| self.state.disarmed.contains(n))
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

    fn save_state(&self) {
        if let Err(e) = self.state.save(&self.state_path) {
            log::error!("state: cannot write {}: {e}", self.state_path.display());
        }
    }

    /// The event types announced now: configured plus learned.
    fn all_event_types(&self) -> Vec<String> {
        ha::with_learned(&self.event_types, &self.state.labels)
    }
}

/// How often `{prefix}/health` is looked at; it is published only when it changed.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until `shutdown` turns true; then publishes `offline` and disconnects cleanly.
pub async fn run(
    cfg: MqttConfig,
    mut links: Links,
    queue: QueueHandle,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
    mut live: mpsc::Receiver<LiveMessage>,
    mut reconf: mpsc::Receiver<Reconfigure>,
) {
    let mut cfg = cfg;
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let mut poison = PoisonWatch::default();
    let mut sizes = SizeWatch::default();
    let mut twins = takeover::TakeoverWatch::default();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let capacity = cfg.max_inflight as usize + OWN_MESSAGE_ROOM + 2 * links.outputs.len();
        let started = Instant::now();
        let end = match cfg.tls.as_ref().map(crate::tls::client_config).transpose() {
            Err(e) => SessionEnd::Lost {
                reason: e.to_string(),
                connected: false,
                head: None,
                acked_any: false,
                culprit: None,
                taken_over: false,
            },
            Ok(tls) => {
                let (client, mut el) = client::connect(&cfg, tls, capacity);
                let window = poison.window(cfg.max_inflight as usize);
                let mut session = Session::new(
                    cfg.clone(),
                    &mut links,
                    client,
                    queue.clone(),
                    stats.clone(),
                    window,
                    &mut sizes,
                );
                let end = session
                    .run(&mut el, &mut shutdown, &mut live, &mut reconf)
                    .await;
                // A reload may have changed it in place.
                cfg = session.cfg.clone();
                end
            }
        };
        stats.set_broker_connected(false);
        persist_ack(&queue).await;
        match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Reconnect => {
                log::info!(
                    "mqtt: reconnecting to {}:{} with the reloaded settings",
                    cfg.host,
                    cfg.port
                );
                backoff.reset();
                continue;
            }
            SessionEnd::Lost {
                reason,
                connected,
                head,
                acked_any,
                culprit,
                taken_over,
            } => {
                stats.inc(&stats.mqtt_connect_failures);
                if connected {
                    let verdict = sizes.lost(culprit);
                    let ours = verdict != Verdict::NotSize;
                    if let Some(line) = twins.lost(
                        started.elapsed(),
                        takeover::short_session(cfg.backoff_max),
                        ours,
                        taken_over,
                        &cfg.client_id,
                    ) {
                        log::warn!("{line}");
                    }
                    if ours {
                        // Our own packet broke the connection, not the broker or the network:
                        // reconnect at once, the packet is dealt with by then.
                        poison.clear();
                        backoff.reset();
                        on_size_verdict(&queue, &stats, verdict, culprit);
                    } else if let Some(seq) = poison.lost(head, acked_any) {
                        set_aside(
                            &queue,
                            &stats,
                            seq,
                            &format!(
                                "the broker closed the connection every time it was sent (the last {} times alone)",
                                correlate::POISON_STRIKES
                            ),
                        );
                    }
                } else {
                    poison.connect_failed();
                    sizes.connect_failed();
                    twins.clear();
                }
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
                    Some(r) = reconf.recv() => {
                        // Not connected: take it all and try the new settings at once.
                        links.reconfigure(&r);
                        cfg = r.mqtt;
                        backoff.reset();
                    }
                }
            }
        }
    }
    persist_ack(&queue).await;
}

async fn persist_ack(queue: &QueueHandle) {
    let q = queue.clone();
    let r = tokio::task::spawn_blocking(move || q.flush_acks()).await;
    if let Ok(Err(e)) = r {
        log::error!("queue: cannot persist the ack position: {e}");
    }
}

/// Acts on what a connection drop says about the broker's packet size limit.
fn on_size_verdict(
    queue: &QueueHandle,
    stats: &Stats,
    verdict: Verdict,
    culprit: Option<(usize, Option<u64>)>,
) {
    let size = culprit.map_or(0, |c| c.0);
    match verdict {
        Verdict::NotSize => {}
        Verdict::Suspect(seq) => log::warn!(
            "mqtt: the broker closed the connection right after record seq {seq} ({size} byte \
             packet, larger than any it has taken); suspecting it (above the broker's \
             max_packet_size?): one more such drop sets it aside"
        ),
        Verdict::SetAside { seq, size } => set_aside(
            queue,
            stats,
            seq,
            &format!(
                "the broker closed the connection twice right after its {size} byte packet \
                 (above the broker's max_packet_size); records this large are now set aside unsent"
            ),
        ),
        Verdict::OwnBudget(budget) => stats.warn_limited(
            "own_budget",
            format_args!(
                "mqtt: the broker closed the connection right after our own {size} byte message \
                 (stats or discovery; above its max_packet_size?): own messages now fit in \
                 {budget} bytes (stats trimmed)"
            ),
        ),
    }
}

/// Acknowledges a record that can never be delivered, so the rest can flow.
fn set_aside(queue: &QueueHandle, stats: &Stats, seq: u64, why: &str) {
    stats.inc(&stats.mqtt_set_aside);
    stats.warn_limited(
        "set_aside",
        format_args!("mqtt: record seq {seq} set aside: {why}"),
    );
    if let Err(e) = queue.lock().ack(seq) {
        log::error!("queue: {e}");
    }
}

enum SessionEnd {
    Shutdown,
    /// A reload changed a connection key: disconnected cleanly, connect again at once.
    Reconnect,
    Lost {
        reason: String,
        /// Whether the CONNACK arrived.
        connected: bool,
        /// The oldest record written on this connection and not acknowledged.
        head: Option<u64>,
        /// Whether any record was acknowledged on this connection.
        acked_any: bool,
        /// The packet to blame if the drop was about size ([`Wire::culprit`]).
        culprit: Option<(usize, Option<u64>)>,
        /// The broker said another client took the session over (MQTT 5).
        taken_over: bool,
    },
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

struct Session<'a> {
    cfg: MqttConfig,
    links: &'a mut Links,
    client: Client,
    queue: QueueHandle,
    stats: Arc<Stats>,
    corr: Correlator,
    /// Alerts in flight whose Home Assistant event goes out once the broker has them.
    ha_events: HashMap<u64, Vec<u8>>,
    /// Events due while Home Assistant may still be applying a discovery just sent (it
    /// subscribes to the event topic only then): published when `events_held_until` passes.
    held_events: Vec<Vec<u8>>,
    events_held_until: Option<Instant>,
    /// The broker's maximum packet size (MQTT 5 CONNACK).
    broker_max_packet: Option<usize>,
    /// Output states last published, to publish only changes.
    outputs_published: Vec<Option<bool>>,
    acked_any: bool,
    ack_flush_at: Option<Instant>,
    /// Set when the client can no longer take requests: the session ends with this reason.
    broken: Option<String>,
    /// Records in flight at most on this connection: `mqtt.max_inflight`, or 1 while a
    /// suspected poison record is probed.
    window: usize,
    /// `mqtt.max_publish_rate`, when set.
    pacer: Option<Pacer>,
    /// Packets written and not yet proven taken, for blaming a drop on one of them.
    wire: Wire,
    /// The broker's size limit as learned so far (kept across connections).
    sizes: &'a mut SizeWatch,
    /// Set when the broker's DISCONNECT said the session was taken over.
    taken_over: bool,
    /// Records up to this seq were handed to a broker before this connection: replays.
    replay_upto: u64,
    /// `{prefix}/health` last published.
    health_published: Option<Value>,
}

impl<'a> Session<'a> {
    fn new(
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
            broken: None,
            window,
            pacer,
            wire: Wire::default(),
            sizes,
            taken_over: false,
            replay_upto,
            health_published: None,
        }
    }

    fn lost(&self, reason: String, connected: bool) -> SessionEnd {
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

    async fn run(
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
            if let Some(reason) = self.broken.take() {
                return self.lost(reason, true);
            }
            let room = self.corr.records_in_flight() < self.window;
            let flush_at = self.ack_flush_at;
            let held_until = self.events_held_until;
            let paced_until = self.pacer.as_ref().and_then(Pacer::next_at);
            let watching = self.links.activity.is_some();
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
                _ = health_tick.tick() => {
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

    /// `{prefix}/rules/{name}/state` of every named rule, retained.
    fn publish_rule_states(&mut self) {
        let states: Vec<(String, bool)> = self
            .links
            .gpio_config
            .rules
            .iter()
            .filter_map(|r| r.name.clone())
            .map(|n| {
                let armed = !self.links.state.disarmed.contains(&n);
                (n, armed)
            })
            .collect();
        for (name, armed) in states {
            self.publish_rule_state(&name, armed);
        }
    }

    fn publish_rule_state(&mut self, name: &str, armed: bool) {
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
    fn publish_snooze(&mut self) {
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

    fn end_snooze_if_over(&mut self) {
        if self.links.state.snoozed_until.is_some() && self.links.snooze_left().is_none() {
            self.links.state.snoozed_until = None;
            self.links.save_state();
            log::info!("mqtt: snooze over");
            self.publish_snooze();
        }
    }

    /// `{prefix}/health` (retained) when it changed: source connectivity, queue depth,
    /// received, dropped and set-aside counts, for Home Assistant's diagnostic entities.
    fn publish_health(&mut self) {
        let snapshot = {
            let q = self.queue.lock();
            self.stats.snapshot(Some(queue_json(&q)))
        };
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
            if self.broken.is_some() {
                break;
            }
            self.publish_record(rec);
        }
        Ok(())
    }

    fn publish_record(&mut self, rec: Record) {
        let msg = match QueuedMessage::decode(&rec.payload) {
            Ok(m) => m,
            Err(e) => {
                self.stats.inc(&self.stats.mqtt_undecodable);
                self.set_aside(rec.seq, &e.to_string());
                return;
            }
        };
        let topic = format!("{}/{}", self.cfg.topic_prefix, msg.topic_suffix);
        let topic = crate::topic::safe_topic(&topic).into_owned();
        let mut payload = msg.render(rec.seq, rec.accepted_us);
        let replayed = rec.seq < self.links.replay_below || rec.seq <= self.replay_upto;
        if replayed {
            ha::mark_replayed(&mut payload);
        }
        if let Some(limit) = self.cfg.max_message_bytes {
            if payload.len() > limit {
                let why = format!(
                    "its {} byte payload exceeds mqtt.max_message_bytes ({limit})",
                    payload.len()
                );
                self.set_aside(rec.seq, &why);
                return;
            }
        }
        let is_v5 = self.cfg.protocol == MqttProtocol::V5;
        let meta = (is_v5 || self.cfg.ha_discovery).then(|| record_meta(&msg));
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
                expiry_secs: Some(self.cfg.message_expiry.as_secs().min(u32::MAX as u64) as u32),
                user,
                correlation: None,
            }
        });
        let size = limit::packet_size(
            topic.len(),
            payload.len(),
            self.cfg.qos != Qos::AtMostOnce,
            props
                .as_ref()
                .map(|p| limit::props_size(p.json, p.expiry_secs.is_some(), &p.user)),
        );
        if let Some(max) = self.broker_max_packet {
            if size > max {
                let why = format!(
                    "its {size} byte packet exceeds the broker's maximum packet size ({max})"
                );
                self.set_aside(rec.seq, &why);
                return;
            }
        }
        if let Some(refused) = self.sizes.record_limit() {
            if size >= refused {
                let why = format!(
                    "its {size} byte packet is at least as large as one the broker closed the \
                     connection on ({refused} bytes)"
                );
                self.set_aside(rec.seq, &why);
                return;
            }
        }
        if self.cfg.ha_discovery && msg.topic_suffix.starts_with("alerts/") {
            let label = meta
                .as_ref()
                .and_then(|m| m.label.clone())
                .unwrap_or_default();
            // The alert that brings a new label fires as that type: the discovery announcing
            // it goes out first, and events wait until Home Assistant has applied it.
            if self.links.state.learn(&label) {
                log::info!("mqtt: new alert label {label:?}: announcing it as an event type");
                self.links.save_state();
                self.publish_discovery();
            }
            let types = self.links.all_event_types();
            let now_us = crate::clock::unix_micros(std::time::SystemTime::now());
            let age = Duration::from_micros(now_us.saturating_sub(rec.accepted_us));
            if !replayed && age <= self.cfg.ha_event_max_age {
                if let Some(ev) = ha::event_payload(&payload, &label, &types) {
                    self.ha_events.insert(rec.seq, ev);
                }
            }
        }
        match self
            .client
            .try_publish(topic, self.cfg.qos, false, payload, props)
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

    fn is_v5(&self) -> bool {
        self.cfg.protocol == MqttProtocol::V5
    }

    /// The largest own packet the broker takes, as far as we know.
    fn own_limit(&self) -> Option<usize> {
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
    fn publish_own(&mut self, topic: String, payload: Vec<u8>, q: Qos, retain: bool) {
        let json = payload.first() == Some(&b'{');
        let props = Props {
            json,
            ..Props::default()
        };
        self.publish_own_props(topic, payload, q, retain, props);
    }

    /// An own message with MQTT 5 properties (an answer's correlation data), never retained.
    fn publish_own_with(&mut self, topic: String, payload: Vec<u8>, q: Qos, props: Props) {
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

    fn publish_stats(&mut self) {
        let snapshot = {
            let q = self.queue.lock();
            self.stats.snapshot(Some(queue_json(&q)))
        };
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
    fn publish_outputs(&mut self) {
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
    fn publish_output_state(&mut self, i: usize, active: bool) {
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
    fn release_held_events(&mut self) {
        self.events_held_until = None;
        for ev in std::mem::take(&mut self.held_events) {
            self.publish_own(ha::event_topic(&self.cfg), ev, self.cfg.qos, false);
        }
    }

    fn publish_discovery(&mut self) {
        self.events_held_until = Some(Instant::now() + DISCOVERY_SETTLE);
        let types = self.links.all_event_types();
        let input = ha::DiscoveryInput {
            gpio: &self.links.gpio_config,
            controls: self.links.gpio.is_some(),
            event_types: &types,
            configuration_url: self.links.configuration_url.as_deref(),
            snooze_for: ha::SNOOZE_BUTTON_FOR,
        };
        for (topic, payload) in ha::discovery(&self.cfg, &input) {
            self.publish_own(
                topic,
                payload.to_string().into_bytes(),
                Qos::AtLeastOnce,
                true,
            );
        }
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

    fn on_event(&mut self, ev: Ev) -> Result<(), String> {
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
                self.taken_over = reason.contains("SessionTakenOver");
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

    fn on_message(&mut self, topic: &str, payload: &[u8], reply: Option<Reply>, retain: bool) {
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
        let result = parsed.command.and_then(|c| self.execute(c));
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

    fn send_gpio(&self, cmd: GpioCommand) -> Result<(), String> {
        match &self.links.gpio {
            None => Err("gpio is off (gpio.backend = \"none\" or no outputs)".to_string()),
            Some(tx) => tx.try_send(cmd).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    "the gpio engine is busy; try again".to_string()
                }
                mpsc::error::TrySendError::Closed(_) => "the gpio engine has stopped".to_string(),
            }),
        }
    }

    /// Carries out one parsed command; what it changed is published (retained state topics)
    /// and, for arming and snooze, kept in the state file.
    fn execute(&mut self, c: commands::Command) -> Result<(), String> {
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
                    return Err("gpio is off (gpio.backend = \"none\" or no outputs)".into());
                };
                ingest.set_armed(rule, armed);
                let Some(name) = self.links.gpio_config.rules[rule].name.clone() else {
                    return Ok(());
                };
                let changed = if armed {
                    self.links.state.disarmed.remove(&name)
                } else {
                    self.links.state.disarmed.insert(name.clone())
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

async fn sleep_until_opt(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await
    }
}
