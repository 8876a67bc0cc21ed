//! The reference `examples/bench.rs` measures the relay against, run the same way (a separate
//! process, same feed, same broker, same subscriber): a 40-line tokio-tungstenite + rumqttc
//! forwarder that keeps nothing (no queue, no fsync, no dedup, no GPIO). Each alert frame's
//! `data` goes to `alert-relay/alerts/{label}` at QoS 1.
//!
//!   forwarder WS_URL MQTT_PORT

use futures_util::StreamExt;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: forwarder WS_URL MQTT_PORT");
    let port: u16 = args.next().and_then(|p| p.parse().ok()).expect("MQTT port");
    let mut opts = MqttOptions::new(
        format!("forwarder-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_inflight(256);
    let (client, mut el) = AsyncClient::new(opts, 256);
    tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let Some(label) = v["data"]["label"].as_str() else {
            continue;
        };
        let topic = format!("alert-relay/alerts/{label}");
        let payload = serde_json::to_vec(&v["data"]).unwrap_or_default();
        let _ = client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await;
    }
}
