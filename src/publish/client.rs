//! One face over rumqttc's MQTT 3.1.1 and MQTT 5 clients, so the session logic exists once:
//! [`connect`] builds a client and event loop for either protocol, [`Client`] publishes and
//! subscribes, and [`EventLoop::poll`] reports what happened as an [`Ev`].
//! The TLS configuration comes from [`crate::tls`].

use std::sync::Arc;

use rumqttc::v5::mqttbytes::v5 as m5;
use rumqttc::{Outgoing, TlsConfiguration, Transport};

use super::PublishError;
use crate::config::{MqttConfig, MqttProtocol, Qos};

/// Largest MQTT packet we send or accept. Records are capped well below this by the queue.
pub const MAX_PACKET_BYTES: usize = 2 << 20;
/// Seconds to wait for TCP + TLS + CONNACK.
const CONNECT_TIMEOUT_SECS: u64 = 10;

/// A client of either protocol version.
pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop of either protocol version.
pub enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// MQTT 5 properties of a record's publish (ignored with 3.1.1).
#[derive(Debug, Default, Clone)]
pub struct Props {
    pub json: bool,
    pub expiry_secs: Option<u32>,
    pub user: Vec<(String, String)>,
    /// MQTT 5 correlation data, echoed on an answer to a request.
    pub correlation: Option<Vec<u8>>,
}

/// Where an MQTT 5 request wants its answer: its response topic and correlation data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub topic: String,
    pub correlation: Option<Vec<u8>>,
}

/// What the event loop reported, the same for both protocol versions.
#[derive(Debug)]
pub enum Ev {
    /// CONNACK; with MQTT 5 the broker may state its maximum packet size.
    Connected {
        max_packet: Option<u32>,
    },
    /// The next publish handed to the client went out with this packet id (0 at QoS 0).
    Written(u16),
    /// PUBACK (QoS 1) with success.
    PubAck(u16),
    /// PUBCOMP (QoS 2).
    PubComp(u16),
    /// MQTT 5 PUBACK or PUBREC with a reason code >= 0x80: the broker refused this publish.
    Refused {
        pkid: u16,
        reason: String,
    },
    /// A message on a subscribed topic.
    Message {
        topic: String,
        payload: Vec<u8>,
        /// MQTT 5 only: the sender asked for the answer on this topic.
        reply: Option<Reply>,
        retain: bool,
    },
    /// Our DISCONNECT went out.
    DisconnectSent,
    /// The broker sent DISCONNECT: [`PublishError::BrokerDisconnect`] or `BrokerDisconnectV5`.
    BrokerDisconnect(PublishError),
    Other,
}

fn will(cfg: &MqttConfig) -> (String, &'static str) {
    (format!("{}/status", cfg.topic_prefix), "offline")
}

/// Builds a fresh client and event loop (nothing carried over from an earlier connection).
pub fn connect(
    cfg: &MqttConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    capacity: usize,
) -> (Client, EventLoop) {
    let transport = tls.map(|t| Transport::tls_with_config(TlsConfiguration::Rustls(t)));
    let (will_topic, will_payload) = will(cfg);
    // A password without a user name is refused by the config; a user without one sends "".
    let credentials = cfg.username.clone().map(|user| {
        let password = cfg.password.as_ref().map_or("", |p| p.expose());
        (user, password)
    });
    match cfg.protocol {
        MqttProtocol::V311 => {
            let mut o =
                rumqttc::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            o.set_keep_alive(cfg.keep_alive)
                .set_clean_session(true)
                .set_inflight(cfg.max_inflight)
                .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
                .set_last_will(rumqttc::LastWill::new(
                    will_topic,
                    will_payload,
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            if let Some((user, password)) = credentials {
                o.set_credentials(user, password);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, mut el) = rumqttc::AsyncClient::new(o, capacity);
            el.network_options
                .set_connection_timeout(CONNECT_TIMEOUT_SECS);
            (Client::V4(c), EventLoop::V4(Box::new(el)))
        }
        MqttProtocol::V5 => {
            let mut o =
                rumqttc::v5::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            o.set_keep_alive(cfg.keep_alive)
                .set_clean_start(true)
                .set_outgoing_inflight_upper_limit(cfg.max_inflight)
                .set_max_packet_size(Some(MAX_PACKET_BYTES as u32))
                .set_connection_timeout(CONNECT_TIMEOUT_SECS)
                .set_last_will(m5::LastWill::new(
                    will_topic,
                    will_payload,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            if let Some((user, password)) = credentials {
                o.set_credentials(user, password);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, el) = rumqttc::v5::AsyncClient::new(o, capacity);
            (Client::V5(c), EventLoop::V5(Box::new(el)))
        }
    }
}

fn qos4(q: Qos) -> rumqttc::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: Qos) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        Qos::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl Client {
    /// Hands a publish to the event loop without waiting; fails when its channel is full.
    pub fn try_publish(
        &self,
        topic: String,
        qos: Qos,
        retain: bool,
        payload: Vec<u8>,
        props: Option<Props>,
    ) -> Result<(), PublishError> {
        match self {
            Client::V4(c) => Ok(c.try_publish(topic, qos4(qos), retain, payload)?),
            Client::V5(c) => {
                let r = match props {
                    Some(p) => c.try_publish_with_properties(
                        topic,
                        qos5(qos),
                        retain,
                        payload,
                        m5::PublishProperties {
                            payload_format_indicator: p.json.then_some(1),
                            message_expiry_interval: p.expiry_secs,
                            content_type: p.json.then(|| "application/json".to_string()),
                            user_properties: p.user,
                            correlation_data: p.correlation.map(hyper::body::Bytes::from),
                            ..Default::default()
                        },
                    ),
                    None => c.try_publish(topic, qos5(qos), retain, payload),
                };
                Ok(r?)
            }
        }
    }

    pub fn try_subscribe(&self, filter: String, qos: Qos) -> Result<(), PublishError> {
        match self {
            Client::V4(c) => Ok(c.try_subscribe(filter, qos4(qos))?),
            Client::V5(c) => Ok(c.try_subscribe(filter, qos5(qos))?),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), PublishError> {
        match self {
            Client::V4(c) => Ok(c.try_disconnect()?),
            Client::V5(c) => Ok(c.try_disconnect()?),
        }
    }
}

impl EventLoop {
    /// The next event; an error means the connection is gone.
    pub async fn poll(&mut self) -> Result<Ev, PublishError> {
        match self {
            EventLoop::V4(el) => {
                use rumqttc::{Event, Packet};
                Ok(match el.poll().await? {
                    Event::Incoming(Packet::ConnAck(_)) => Ev::Connected { max_packet: None },
                    Event::Incoming(Packet::PubAck(a)) => Ev::PubAck(a.pkid),
                    Event::Incoming(Packet::PubComp(c)) => Ev::PubComp(c.pkid),
                    Event::Incoming(Packet::Publish(p)) => Ev::Message {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                        reply: None,
                        retain: p.retain,
                    },
                    Event::Incoming(Packet::Disconnect) => {
                        Ev::BrokerDisconnect(PublishError::BrokerDisconnect)
                    }
                    Event::Outgoing(o) => outgoing(o),
                    Event::Incoming(_) => Ev::Other,
                })
            }
            EventLoop::V5(el) => {
                use m5::Packet;
                use rumqttc::v5::Event;
                Ok(match el.poll().await? {
                    Event::Incoming(Packet::ConnAck(c)) => Ev::Connected {
                        max_packet: c.properties.and_then(|p| p.max_packet_size),
                    },
                    Event::Incoming(Packet::PubAck(a)) => match a.reason {
                        m5::PubAckReason::Success | m5::PubAckReason::NoMatchingSubscribers => {
                            Ev::PubAck(a.pkid)
                        }
                        r => Ev::Refused {
                            pkid: a.pkid,
                            reason: format!("PUBACK reason {r:?}"),
                        },
                    },
                    Event::Incoming(Packet::PubRec(a)) => match a.reason {
                        m5::PubRecReason::Success | m5::PubRecReason::NoMatchingSubscribers => {
                            Ev::Other
                        }
                        r => Ev::Refused {
                            pkid: a.pkid,
                            reason: format!("PUBREC reason {r:?}"),
                        },
                    },
                    Event::Incoming(Packet::PubComp(c)) => Ev::PubComp(c.pkid),
                    Event::Incoming(Packet::Publish(p)) => Ev::Message {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        reply: p.properties.as_ref().and_then(|props| {
                            props.response_topic.as_ref().map(|t| Reply {
                                topic: t.clone(),
                                correlation: props.correlation_data.as_ref().map(|c| c.to_vec()),
                            })
                        }),
                        retain: p.retain,
                    },
                    Event::Incoming(Packet::Disconnect(d)) => {
                        Ev::BrokerDisconnect(PublishError::BrokerDisconnectV5(d.reason_code))
                    }
                    Event::Outgoing(o) => outgoing(o),
                    Event::Incoming(_) => Ev::Other,
                })
            }
        }
    }
}

fn outgoing(o: Outgoing) -> Ev {
    match o {
        Outgoing::Publish(pkid) => Ev::Written(pkid),
        Outgoing::Disconnect => Ev::DisconnectSent,
        _ => Ev::Other,
    }
}
