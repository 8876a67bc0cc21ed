//! MQTT 5 (`protocol = "5"`): alerts carry content type, payload format, user properties
//! `event_id` and `label`, and a message expiry; the PUBACK correlation works as with 3.1.1.
//! Mosquitto-only (the embedded test broker speaks 3.1.1).

#[path = "../examples/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use support::*;

const T: Duration = Duration::from_secs(30);

/// An MQTT 5 subscriber keeping whole publishes (with their properties).
async fn v5_subscriber(port: u16, filter: &str) -> Arc<Mutex<Vec<Publish>>> {
    let mut opts = MqttOptions::new(format!("v5-sub-{}", free_port()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(Some(1 << 20));
    let (client, mut el) = AsyncClient::new(opts, 10);
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let filter = filter.to_string();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => g.lock().expect("lock").push(p),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let _ = tokio::time::timeout(T, ready_rx).await;
    got
}

#[tokio::test]
async fn mqtt5_alerts_carry_content_type_user_properties_and_expiry() {
    if !Mosquitto::available("mqtt5_alerts_carry_content_type_user_properties_and_expiry") {
        return;
    }
    let broker = Mosquitto::new().start(free_port());
    let got = v5_subscriber(broker.port(), "alert-relay/alerts/#").await;
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&relay_config(
        &ws.url(),
        broker.port(),
        dir.path(),
        "protocol = \"5\"\nmessage_expiry = \"10m\"\nmax_inflight = 8",
    ));
    for i in 0..200 {
        ws.send_text(alert_frame(&format!("ev-{i}"), "intrusion", 0.9));
    }
    wait_until("200 alerts acked", T, || {
        support::count(&relay.stats.mqtt_acked) == 200
    })
    .await;
    wait_until("200 alerts delivered", T, || {
        got.lock().expect("lock").len() >= 200
    })
    .await;
    let msgs = got.lock().expect("lock").clone();
    for (i, p) in msgs.iter().enumerate() {
        let body: serde_json::Value = serde_json::from_slice(&p.payload).expect("json");
        assert_eq!(body["relay"]["seq"], i as u64 + 1, "queue order");
        let props = p.properties.as_ref().expect("MQTT 5 properties");
        assert_eq!(props.content_type.as_deref(), Some("application/json"));
        assert_eq!(props.payload_format_indicator, Some(1));
        let expiry = props.message_expiry_interval.expect("message expiry");
        assert!(expiry > 0 && expiry <= 600, "{expiry}");
        assert!(props
            .user_properties
            .contains(&("event_id".to_string(), format!("ev-{i}"))));
        assert!(props
            .user_properties
            .contains(&("label".to_string(), "intrusion".to_string())));
    }
    assert_eq!(support::count(&relay.stats.mqtt_set_aside), 0);
    relay.stop().await;
}
