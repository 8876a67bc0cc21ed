//! Dual delivery: the same alerts over the WebSocket and POST /webhook (VideoDB's recommended
//! setup for critical alerts) reach MQTT, and the GPIO rules, exactly once each. Real sockets
//! throughout: the upstream-protocol WebSocket server, the relay's HTTP listener driven by a
//! raw HTTP/1.1 client, and a real broker with a subscriber.

mod http_support;
#[path = "../examples/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_support::*;
use support::*;

const T: Duration = Duration::from_secs(30);

/// xorshift64*: enough randomness for interleavings; the seed is printed so a failure can be
/// replayed with `ALERT_RELAY_TEST_SEED=<seed>`.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("ALERT_RELAY_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("interleaving seed: ALERT_RELAY_TEST_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct WebRelay {
    s: Started,
    http: SocketAddr,
    token: String,
}

impl std::ops::Deref for WebRelay {
    type Target = Started;
    fn deref(&self) -> &Started {
        &self.s
    }
}

async fn setup(extra: &str) -> WebRelay {
    let s = Setup::new()
        .sub("alert-relay/alerts/#")
        .file("webhook.token", &format!("{TOKEN}\n"))
        .config_extra(extra)
        .config_extra(&http_section(
            0,
            std::path::Path::new("{dir}/webhook.token"),
            "",
        ))
        .start()
        .await;
    wait_until("the source connected", T, || {
        count(&s.relay.stats.source_connects) >= 1
    })
    .await;
    WebRelay {
        http: s.relay.http(),
        s,
        token: TOKEN.to_string(),
    }
}

fn event_ids(sub: &Subscriber) -> Vec<String> {
    sub.snapshot()
        .iter()
        .map(|m| m.json()["event_id"].as_str().unwrap_or("").to_string())
        .collect()
}

const SIM_GPIO: &str = r#"
[gpio]
backend = "sim"
[[gpio.outputs]]
name = "red"
pin = 17
[[gpio.rules]]
labels = ["*"]
output = "red"
pattern = { kind = "solid", duration = "10ms" }
"#;

#[tokio::test]
async fn same_alerts_over_socket_and_webhook_in_random_order_arrive_once_each() {
    let s = setup(SIM_GPIO).await;
    let mut rng = Rng::from_env_or_clock();
    const ALERTS: usize = 40;
    // Every alert goes over the socket once and over the webhook once or twice (a retry),
    // all in one random order; webhook posts run concurrently with each other and the socket.
    let mut actions: Vec<(usize, bool)> = Vec::new();
    let mut copies = 0u64;
    for i in 0..ALERTS {
        actions.push((i, true));
        actions.push((i, false));
        copies += 2;
        if rng.below(3) == 0 {
            actions.push((i, false));
            copies += 1;
        }
    }
    for i in (1..actions.len()).rev() {
        let j = rng.below(i + 1);
        actions.swap(i, j);
    }
    let stamps: Vec<String> = (0..ALERTS).map(|_| now_rfc3339()).collect();
    let mut posts = tokio::task::JoinSet::new();
    // Concurrent webhook senders, within the relay's connection limit (16 by default).
    let senders = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    for (i, socket) in actions {
        let id = format!("ev-{i}");
        if socket {
            s.ws.send_text(socket_frame(&id, "intrusion", &stamps[i]));
        } else {
            let (addr, token, body) = (
                s.http,
                s.token.clone(),
                webhook_body(&id, "intrusion", &stamps[i]),
            );
            let slot = senders.clone().acquire_owned().await.expect("semaphore");
            posts.spawn(async move {
                let r = post_webhook(addr, &token, &body).await;
                drop(slot);
                r
            });
        }
        if rng.below(4) == 0 {
            tokio::task::yield_now().await;
        }
    }
    while let Some(r) = posts.join_next().await {
        let r = r.expect("post task");
        assert_eq!(
            r.status,
            200,
            "every webhook copy is acknowledged: {}",
            r.text()
        );
        assert!(
            r.json()["seq"].as_u64().is_some_and(|n| n >= 1),
            "{}",
            r.text()
        );
    }
    let st = &s.relay.stats;
    wait_until("every copy accounted for", T, || {
        count(&st.queue_appended) + count(&st.alerts_duplicate) == copies
    })
    .await;
    wait_until("every alert on MQTT", T, || {
        s.sub().snapshot().len() >= ALERTS
    })
    .await;
    wait_until("every record acknowledged", T, || {
        count(&st.mqtt_acked) >= ALERTS as u64
    })
    .await;

    let ids = event_ids(s.sub());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!(seen.len(), ALERTS, "every alert arrived: {ids:?}");
    assert!(
        seen.values().all(|&n| n == 1),
        "exactly once each: {seen:?}"
    );
    assert_eq!(count(&st.queue_appended), ALERTS as u64);
    assert_eq!(count(&st.alerts_duplicate), copies - ALERTS as u64);
    assert_eq!(
        count(&st.gpio_rule_matches),
        ALERTS as u64,
        "the output was driven once per alert, not per copy"
    );
    for m in s.sub().snapshot() {
        let via = m.json()["relay"]["via"].clone();
        assert!(via == "websocket" || via == "webhook", "{via}");
    }
    // Still serving after the storm.
    assert_eq!(exchange(s.http, &get("/metrics")).await.status, 200);
    s.relay.stop().await;
}

#[tokio::test]
async fn webhook_retries_are_deduplicated_and_acknowledged_with_the_first_seq() {
    let s = setup("").await;
    let ts = now_rfc3339();
    let body = webhook_body("ev-retry", "smoke", &ts);
    let first = post_webhook(s.http, &s.token, &body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["status"], "queued");
    let seq = first.json()["seq"].as_u64().expect("seq");
    for _ in 0..3 {
        let again = post_webhook(s.http, &s.token, &body).await;
        assert_eq!(again.status, 200, "{}", again.text());
        assert_eq!(again.json()["status"], "duplicate");
        assert_eq!(again.json()["seq"].as_u64(), Some(seq));
    }
    // A later occurrence of the same event (new timestamp) is a new alert.
    let later = post_webhook(
        s.http,
        &s.token,
        &webhook_body("ev-retry", "smoke", &now_rfc3339()),
    )
    .await;
    assert_eq!(later.json()["status"], "queued", "{}", later.text());

    wait_until("two alerts on MQTT", T, || s.sub().snapshot().len() >= 2).await;
    assert_eq!(count(&s.relay.stats.alerts_duplicate), 3);
    // Give a stray duplicate the time the two real ones took to show up: there is none.
    wait_until("acks", T, || count(&s.relay.stats.mqtt_acked) >= 2).await;
    let got = s.sub().snapshot();
    assert_eq!(got.len(), 2, "{:?}", event_ids(s.sub()));
    assert_eq!(got[0].json()["timestamp"], ts.as_str());
    assert_eq!(got[0].json()["relay"]["via"], "webhook");
    assert_eq!(got[0].json()["relay"]["seq"].as_u64(), Some(seq));
    s.relay.stop().await;
}

#[tokio::test]
async fn relay_via_names_the_path_that_delivered_first() {
    let s = setup("").await;
    let ts = now_rfc3339();
    s.ws.send_text(socket_frame("ev-sock", "intrusion", &ts));
    wait_until("the socket copy on MQTT", T, || {
        !s.sub().snapshot().is_empty()
    })
    .await;
    let late = post_webhook(s.http, &s.token, &webhook_body("ev-sock", "intrusion", &ts)).await;
    assert_eq!(late.status, 200);
    assert_eq!(late.json()["status"], "duplicate");

    let ts2 = now_rfc3339();
    let early = post_webhook(
        s.http,
        &s.token,
        &webhook_body("ev-hook", "intrusion", &ts2),
    )
    .await;
    assert_eq!(early.json()["status"], "queued");
    s.ws.send_text(socket_frame("ev-hook", "intrusion", &ts2));
    wait_until("both duplicates counted", T, || {
        count(&s.relay.stats.alerts_duplicate) == 2
    })
    .await;
    wait_until("two alerts on MQTT", T, || s.sub().snapshot().len() >= 2).await;
    let got = s.sub().snapshot();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].json()["event_id"], "ev-sock");
    assert_eq!(got[0].json()["relay"]["via"], "websocket");
    assert_eq!(got[1].json()["event_id"], "ev-hook");
    assert_eq!(got[1].json()["relay"]["via"], "webhook");
    s.relay.stop().await;
}

#[tokio::test]
async fn alerts_without_event_id_are_never_deduplicated() {
    let s = setup("").await;
    let data = serde_json::json!({"label": "anonymous", "timestamp": now_rfc3339()});
    // The WebSocket (at most once upstream) takes such an alert, twice: both are relayed.
    let frame = serde_json::json!({"channel": "alert", "data": data}).to_string();
    s.ws.send_text(frame.clone());
    s.ws.send_text(frame);
    wait_until("both copies on MQTT", T, || s.sub().snapshot().len() >= 2).await;
    assert_eq!(count(&s.relay.stats.alerts_duplicate), 0);
    assert_eq!(count(&s.relay.stats.alerts_missing_event_id), 2);
    // The webhook (retried upstream) refuses it: a retry could not be recognised (issue 13).
    let r = post_webhook(s.http, &s.token, &data.to_string()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        s.sub().snapshot().len(),
        2,
        "the refused copy is not published"
    );
    s.relay.stop().await;
}
