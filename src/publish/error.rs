//! Why a broker connection failed or ended, or a request could not be handed to rumqttc.
//! `Display` gives the text the relay has always logged (`mqtt: {host}:{port}: {error};
//! retrying in ...`).

use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;

use crate::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `[mqtt.tls]` could not be loaded: a file unreadable, or without the PEM it should hold.
    /// Fix the file or its path; it is read again for every connection.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// MQTT 3.1.1: the connection could not be made (refused, timed out, TLS, CONNACK with
    /// an error: a wrong password, an unknown client) or broke while up.
    #[error(transparent)]
    Connection(Box<rumqttc::ConnectionError>),
    /// The same with MQTT 5.
    #[error(transparent)]
    ConnectionV5(Box<rumqttc::v5::ConnectionError>),
    /// MQTT 3.1.1: rumqttc's request channel took no more requests (full, or its event loop
    /// is gone).
    #[error(transparent)]
    Request(Box<rumqttc::ClientError>),
    /// The same with MQTT 5.
    #[error(transparent)]
    RequestV5(Box<rumqttc::v5::ClientError>),
    /// The broker sent DISCONNECT (MQTT 3.1.1 gives no reason).
    #[error("broker sent DISCONNECT")]
    BrokerDisconnect,
    /// The broker sent DISCONNECT with this MQTT 5 reason; `SessionTakenOver` means another
    /// client connected with our client id (`mqtt.client_id` must be unique per relay).
    #[error("broker sent DISCONNECT ({0:?})")]
    BrokerDisconnectV5(DisconnectReasonCode),
}

/// rumqttc's errors are large (a request carries its publish): boxed, so every `Result` of the
/// session stays small.
macro_rules! boxed_from {
    ($($t:ty => $v:ident,)*) => {
        $(impl From<$t> for PublishError {
            fn from(e: $t) -> PublishError {
                PublishError::$v(Box::new(e))
            }
        })*
    };
}

boxed_from! {
    rumqttc::ConnectionError => Connection,
    rumqttc::v5::ConnectionError => ConnectionV5,
    rumqttc::ClientError => Request,
    rumqttc::v5::ClientError => RequestV5,
}

impl PublishError {
    /// The broker said another client took the session over (MQTT 5).
    pub fn taken_over(&self) -> bool {
        matches!(
            self,
            PublishError::BrokerDisconnectV5(DisconnectReasonCode::SessionTakenOver)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_disconnects_read_as_before_and_only_a_takeover_is_one() {
        let v4 = PublishError::BrokerDisconnect;
        assert_eq!(v4.to_string(), "broker sent DISCONNECT");
        assert!(!v4.taken_over());
        let twin = PublishError::BrokerDisconnectV5(DisconnectReasonCode::SessionTakenOver);
        assert_eq!(
            twin.to_string(),
            "broker sent DISCONNECT (SessionTakenOver)"
        );
        assert!(twin.taken_over());
        let other = PublishError::BrokerDisconnectV5(DisconnectReasonCode::PacketTooLarge);
        assert_eq!(other.to_string(), "broker sent DISCONNECT (PacketTooLarge)");
        assert!(!other.taken_over());
    }
}
