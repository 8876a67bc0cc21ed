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
    let mut opts = MqttOptions::new(format!("v5-sub-{}", unique_id()), "127.0.0.1", port);
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
    let broker = Mosquitto::new().start_any();
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

#[tokio::test]
async fn a_command_with_a_response_topic_is_answered_there_with_its_correlation_data() {
    let test = "a_command_with_a_response_topic_is_answered_there_with_its_correlation_data";
    if !Mosquitto::available(test) {
        return;
    }
    let broker = Broker::start_any();
    let port = broker.port();
    let status = v5_subscriber(port, "alert-relay/status").await;
    let replies = v5_subscriber(port, "app/replies/#").await;
    let results = v5_subscriber(port, "alert-relay/cmd/result").await;
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&relay_config(
        &ws.url(),
        port,
        dir.path(),
        "protocol = \"5\"",
    ));
    wait_until("the relay online", T, || {
        status
            .lock()
            .expect("lock")
            .iter()
            .any(|p| &p.payload[..] == b"online")
    })
    .await;

    // A requester as MQTT 5 describes it: response topic + correlation data on the request.
    let opts = MqttOptions::new(format!("v5-req-{}", unique_id()), "127.0.0.1", port);
    let (client, mut el) = AsyncClient::new(opts, 10);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let request = |topic: &'static str, reply_to: &'static str, corr: &'static [u8]| {
        let client = client.clone();
        async move {
            let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                response_topic: Some(reply_to.to_string()),
                correlation_data: Some(corr.to_vec().into()),
                ..Default::default()
            };
            client
                .publish_with_properties(
                    topic,
                    QoS::AtLeastOnce,
                    false,
                    b"{\"transaction\":\"t-9\"}".to_vec(),
                    props,
                )
                .await
                .expect("publish the request");
        }
    };
    request(
        "alert-relay/cmd/silence",
        "app/replies/7",
        b"\x00corr-7\xff",
    )
    .await;
    wait_until("the answer on the response topic", T, || {
        !replies.lock().expect("lock").is_empty()
    })
    .await;
    let answer = replies.lock().expect("lock")[0].clone();
    assert_eq!(answer.topic, "app/replies/7");
    let body: serde_json::Value = serde_json::from_slice(&answer.payload).expect("json");
    // (No GPIO in this config: the answer is an error, which is answered all the same.)
    assert_eq!(body["command"], "silence", "{body}");
    assert_eq!(body["transaction"], "t-9", "{body}");
    let props = answer.properties.expect("MQTT 5 properties");
    assert_eq!(
        props.correlation_data.as_deref(),
        Some(&b"\x00corr-7\xff"[..]),
        "correlation data echoed byte for byte"
    );
    // cmd/result still gets every answer, for consumers that do not use request/response.
    wait_until("the answer on cmd/result too", T, || {
        !results.lock().expect("lock").is_empty()
    })
    .await;
    assert_eq!(results.lock().expect("lock")[0].payload, answer.payload);

    // A response topic one cannot publish to: answered on cmd/result only, relay unharmed.
    request("alert-relay/cmd/silence", "app/+/bad", b"c2").await;
    wait_until("the second answer on cmd/result", T, || {
        results.lock().expect("lock").len() >= 2
    })
    .await;
    assert_eq!(
        replies.lock().expect("lock").len(),
        1,
        "nothing published to a wildcard"
    );
    relay.stop().await;
}
