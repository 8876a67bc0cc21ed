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
mod error;
pub mod event_types;
mod execute;
pub mod ha;
pub mod ha_state;
pub mod limit;
mod links;
mod own;
pub mod pace;
mod prepare;
pub mod reconfigure;
mod session;
pub mod takeover;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::alert::LiveMessage;
use crate::backoff::Backoff;
use crate::config::{GpioConfig, MqttConfig, OutputConfig};
use crate::gpio::GpioCommand;
use crate::queue::QueueHandle;
use crate::stats::Stats;
use client::Client;
use correlate::{Correlator, PoisonWatch};
pub use error::PublishError;
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
/// Own messages waiting in that channel above which discovery and rule states wait
/// ([`Session::send_discovery`]).
const DISCOVERY_IN_CHANNEL: usize = 16;

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
    pub event_types: event_types::EventTypes,
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
                reason: e.into(),
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
        reason: PublishError,
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
    /// The discovery messages still to send ([`Session::send_discovery`]).
    discovery: Option<ha::Discovery>,
    /// The next rule whose state is still to send ([`Session::send_rule_states`]).
    rule_states_from: Option<usize>,
}
