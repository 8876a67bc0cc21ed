//! Delivery against a real mosquitto: exactly the acknowledged records leave the queue, a broker
//! restarted over and over loses nothing, and a record the broker will not take is set aside
//! instead of wedging the queue, and `max_publish_rate` keeps a burst within a slow consumer's
//! reach. Mosquitto-only (restarts, size limits, ACLs): these tests
//! return early unless ALERT_RELAY_TEST_BROKER=mosquitto.

#[path = "../examples/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(60);

fn seqs(msgs: &[Received]) -> Vec<u64> {
    msgs.iter()
        .filter_map(|m| m.json()["relay"]["seq"].as_u64())
        .collect()
}

fn event_ids(msgs: &[Received]) -> HashSet<String> {
    msgs.iter()
        .filter_map(|m| m.json()["event_id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_alert_is_lost_while_the_broker_restarts_every_second_or_two() {
    if !Mosquitto::available("no_alert_is_lost_while_the_broker_restarts_every_second_or_two") {
        return;
    }
    alerts_flow_through_broker_restarts("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_alert_is_lost_while_the_broker_restarts_with_mqtt5() {
    if !Mosquitto::available("no_alert_is_lost_while_the_broker_restarts_with_mqtt5") {
        return;
    }
    alerts_flow_through_broker_restarts("protocol = \"5\"").await;
}

/// 3000 alerts at about 300 a second while mosquitto restarts every 1-2 s: every one reaches a
/// subscriber with a persistent session, first appearances in queue order.
async fn alerts_flow_through_broker_restarts(extra: &str) {
    const N: u64 = 3000;
    let mut broker = Mosquitto::new().persistent().start_any();
    let port = broker.port();
    // A persistent session: the broker keeps what the relay delivered while we reconnect.
    let sub = Subscriber::start_with(port, "alert-relay/alerts/#", |o| {
        o.set_clean_session(false);
    })
    .await;
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&relay_config(&ws.url(), port, dir.path(), extra));

    // About 300 alerts a second for ten seconds, while the broker restarts every 1-2 s.
    let sender = {
        let ws = std::sync::Arc::new(ws);
        let w = ws.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                w.send_text(alert_frame(&format!("ev-{i}"), "intrusion", 0.9));
                if i % 30 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            w
        })
    };
    let mut restarts = 0;
    let mut jitter = 7u64;
    while support::count(&relay.stats.mqtt_acked) < N && restarts < 40 {
        jitter = (jitter * 1103515245 + 12345) % 1000;
        tokio::time::sleep(Duration::from_millis(1000 + jitter)).await;
        broker.restart();
        restarts += 1;
    }
    let _ws = sender.await.expect("sender");
    assert!(restarts >= 4, "the broker restarted only {restarts} times");
    wait_until("every alert acked", T, || {
        support::count(&relay.stats.mqtt_acked) >= N
    })
    .await;
    wait_until("every alert at the subscriber", T, || {
        seqs(&sub.snapshot())
            .into_iter()
            .collect::<HashSet<_>>()
            .len() as u64
            >= N
    })
    .await;
    let got = seqs(&sub.snapshot());
    let unique: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(unique, (1..=N).collect::<HashSet<_>>(), "0 lost");
    // Order: each seq seen for the first time is the next one; anything else is a replay.
    let mut max = 0;
    for &s in &got {
        if s > max {
            assert_eq!(
                s,
                max + 1,
                "seq {s} arrived before {} ({restarts} restarts)",
                max + 1
            );
            max = s;
        }
    }
    assert_eq!(
        support::count(&relay.stats.mqtt_set_aside),
        0,
        "no false poison"
    );
    assert!(support::count(&relay.stats.mqtt_connects) as usize > restarts / 2);
    eprintln!(
        "{extra:?}: {N} alerts, {restarts} broker restarts, {} deliveries ({} replays)",
        got.len(),
        got.len() as u64 - N
    );
    relay.stop().await;
}

/// Sends 5 small alerts, one of `big` bytes, 5 more small ones; waits until the small ones
/// arrive and the big one is set aside; returns the relay's stats.
async fn one_oversize_alert_among_small_ones(
    broker: Mosquitto,
    extra: &str,
    big: usize,
) -> std::sync::Arc<alert_relay::stats::Stats> {
    let s = Setup::new()
        .mosquitto(broker)
        .sub("alert-relay/alerts/#")
        .config_extra(extra)
        .start()
        .await;
    let (ws, sub, relay) = (&s.ws, s.sub(), &s.relay);
    for i in 0..5 {
        ws.send_text(alert_frame(&format!("small-{i}"), "intrusion", 0.9));
    }
    ws.send_text(sized_alert_frame("big", big));
    for i in 5..10 {
        ws.send_text(alert_frame(&format!("small-{i}"), "intrusion", 0.9));
    }
    wait_until("the 10 small alerts", T, || {
        event_ids(&sub.snapshot()).len() >= 10
    })
    .await;
    wait_until("the queue is empty", T, || {
        support::count(&relay.stats.mqtt_acked) + support::count(&relay.stats.mqtt_set_aside) >= 11
    })
    .await;
    let ids = event_ids(&sub.snapshot());
    assert!(!ids.contains("big"), "the oversize alert was delivered");
    assert_eq!(ids.len(), 10, "{ids:?}");
    let stats = relay.stats.clone();
    relay.stop().await;
    stats
}

#[tokio::test]
async fn alert_above_max_packet_size_is_set_aside_and_the_rest_arrive() {
    if !Mosquitto::available("alert_above_max_packet_size_is_set_aside_and_the_rest_arrive") {
        return;
    }
    // MQTT 3.1.1: mosquitto closes the connection of a client whose packet is too large.
    let broker = Mosquitto::new().conf("max_packet_size 2048");
    let stats = one_oversize_alert_among_small_ones(broker, "", 4096).await;
    assert_eq!(support::count(&stats.mqtt_set_aside), 1);
    // Suspected at the first drop, set aside at the second (publish::limit).
    let drops = support::count(&stats.mqtt_connect_failures);
    assert!((2..=3).contains(&drops), "{drops} drops");
}

#[tokio::test]
async fn alert_above_message_size_limit_is_set_aside_with_mqtt5() {
    if !Mosquitto::available("alert_above_message_size_limit_is_set_aside_with_mqtt5") {
        return;
    }
    // MQTT 5: mosquitto answers with PUBACK reason 0x95 (packet too large).
    let broker = Mosquitto::new().conf("message_size_limit 2048");
    let stats = one_oversize_alert_among_small_ones(broker, "protocol = \"5\"", 4096).await;
    assert_eq!(support::count(&stats.mqtt_set_aside), 1);
}

#[tokio::test]
async fn alert_above_the_configured_broker_limit_is_set_aside_unsent() {
    if !Mosquitto::available("alert_above_the_configured_broker_limit_is_set_aside_unsent") {
        return;
    }
    let broker = Mosquitto::new().conf("message_size_limit 2048");
    let stats = one_oversize_alert_among_small_ones(broker, "max_message_bytes = 2048", 4096).await;
    assert_eq!(support::count(&stats.mqtt_set_aside), 1);
    assert_eq!(support::count(&stats.mqtt_connect_failures), 0);
}

#[tokio::test]
async fn alert_above_the_brokers_mqtt5_maximum_packet_size_is_set_aside_unsent() {
    if !Mosquitto::available(
        "alert_above_the_brokers_mqtt5_maximum_packet_size_is_set_aside_unsent",
    ) {
        return;
    }
    // MQTT 5: the CONNACK states the broker's maximum packet size; nothing larger is sent.
    let broker = Mosquitto::new().conf("max_packet_size 2048");
    let stats = one_oversize_alert_among_small_ones(broker, "protocol = \"5\"", 4096).await;
    assert_eq!(support::count(&stats.mqtt_set_aside), 1);
    assert_eq!(support::count(&stats.mqtt_connect_failures), 0);
}

#[tokio::test]
async fn with_mqtt311_mosquitto_acks_and_drops_an_alert_above_message_size_limit() {
    if !Mosquitto::available(
        "with_mqtt311_mosquitto_acks_and_drops_an_alert_above_message_size_limit",
    ) {
        return;
    }
    // Documented limitation: MQTT 3.1.1 has no negative acknowledgement; mosquitto PUBACKs
    // and drops. The rest flows; the relay cannot count it (use protocol 5 or
    // max_message_bytes).
    let broker = Mosquitto::new().conf("message_size_limit 2048");
    let stats = one_oversize_alert_among_small_ones(broker, "", 4096).await;
    assert_eq!(support::count(&stats.mqtt_set_aside), 0);
    assert_eq!(support::count(&stats.mqtt_acked), 11);
}

/// Anonymous clients may read everything but write only the relay's own topics and the
/// `intrusion` alerts: `secret` alerts are denied.
const ACL: &str = "topic read alert-relay/#\n\
topic write alert-relay/status\n\
topic write alert-relay/stats\n\
topic write alert-relay/cmd/#\n\
topic write alert-relay/alerts/intrusion\n";

async fn one_denied_alert_among_allowed_ones(
    extra: &str,
) -> std::sync::Arc<alert_relay::stats::Stats> {
    let s = Setup::new()
        .mosquitto(Mosquitto::new().acl(ACL))
        .sub("alert-relay/alerts/#")
        .config_extra(extra)
        .start()
        .await;
    let (ws, sub, relay) = (&s.ws, s.sub(), &s.relay);
    for i in 0..5 {
        ws.send_text(alert_frame(&format!("ok-{i}"), "intrusion", 0.9));
    }
    ws.send_text(alert_frame("denied", "secret", 0.9));
    for i in 5..10 {
        ws.send_text(alert_frame(&format!("ok-{i}"), "intrusion", 0.9));
    }
    wait_until("the 10 allowed alerts", T, || {
        event_ids(&sub.snapshot()).len() >= 10
    })
    .await;
    wait_until("the queue is empty", T, || {
        support::count(&relay.stats.mqtt_acked) + support::count(&relay.stats.mqtt_set_aside) >= 11
    })
    .await;
    assert!(!event_ids(&sub.snapshot()).contains("denied"));
    let stats = relay.stats.clone();
    relay.stop().await;
    stats
}

#[tokio::test]
async fn acl_denied_alert_is_set_aside_and_counted_with_mqtt5() {
    if !Mosquitto::available("acl_denied_alert_is_set_aside_and_counted_with_mqtt5") {
        return;
    }
    // MQTT 5: PUBACK reason 0x87 (not authorised).
    let stats = one_denied_alert_among_allowed_ones("protocol = \"5\"").await;
    assert_eq!(support::count(&stats.mqtt_set_aside), 1);
    assert_eq!(support::count(&stats.mqtt_refused), 1);
    assert_eq!(support::count(&stats.mqtt_acked), 10);
}

#[tokio::test]
async fn with_mqtt311_mosquitto_acks_and_drops_an_acl_denied_alert() {
    if !Mosquitto::available("with_mqtt311_mosquitto_acks_and_drops_an_acl_denied_alert") {
        return;
    }
    // Documented limitation: with 3.1.1 mosquitto PUBACKs a denied publish and drops it; the
    // rest flows, the relay cannot tell.
    let stats = one_denied_alert_among_allowed_ones("").await;
    assert_eq!(support::count(&stats.mqtt_set_aside), 0);
    assert_eq!(support::count(&stats.mqtt_acked), 11);
}

#[tokio::test]
async fn qos2_records_leave_the_queue_on_pubcomp() {
    let s = Setup::new()
        .sub("alert-relay/alerts/#")
        .config_extra("qos = 2\nmax_inflight = 4")
        .start()
        .await;
    let (ws, sub, relay) = (&s.ws, s.sub(), &s.relay);
    for i in 0..50 {
        ws.send_text(alert_frame(&format!("ev-{i}"), "intrusion", 0.9));
    }
    wait_until("50 acked", T, || {
        support::count(&relay.stats.mqtt_acked) == 50
    })
    .await;
    wait_until("50 delivered", T, || event_ids(&sub.snapshot()).len() == 50).await;
    assert_eq!(seqs(&sub.snapshot()), (1..=50).collect::<Vec<_>>());
    relay.stop().await;
}

/// A consumer slower than a burst or a backlog drain: mosquitto queues at most
/// `max_queued_messages` for it (1000 by default, 200 here to keep the test short) and drops
/// the rest, after it has acknowledged them to the relay. Unpaced, the slow consumer misses
/// alerts; with `max_publish_rate` below its pace it gets every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_drain_reaches_a_slow_consumer_that_an_unpaced_one_overruns() {
    if !Mosquitto::available("a_paced_drain_reaches_a_slow_consumer_that_an_unpaced_one_overruns") {
        return;
    }
    const N: usize = 600;
    let unpaced = burst_to_slow_consumer(N, "").await;
    assert!(
        unpaced < N,
        "unpaced, the slow consumer should miss some: got {unpaced} of {N}"
    );
    let paced = burst_to_slow_consumer(N, "max_publish_rate = 200").await;
    eprintln!("slow consumer got {unpaced} of {N} alerts unpaced, {paced} of {N} paced");
    assert_eq!(paced, N, "paced, the slow consumer gets every alert");
}

/// Sends `n` alerts at once through a relay to a consumer taking 1 ms a message (under 1000/s)
/// behind a mosquitto with `max_queued_messages 200`; returns how many distinct alerts it got.
async fn burst_to_slow_consumer(n: usize, extra: &str) -> usize {
    let _broker = Mosquitto::new().conf("max_queued_messages 200").start_any();
    let port = _broker.port();
    let sub = Subscriber::start_slow(port, "alert-relay/alerts/#", Duration::from_millis(1)).await;
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&relay_config(&ws.url(), port, dir.path(), extra));
    wait_until("relay connected", T, || {
        support::count(&relay.stats.mqtt_connects) >= 1
    })
    .await;
    for i in 0..n {
        ws.send_text(alert_frame(&format!("ev-{i}"), "intrusion", 0.9));
    }
    wait_until("every alert acked by the broker", T, || {
        support::count(&relay.stats.mqtt_acked) == n as u64
    })
    .await;
    // The broker has them all; wait until the consumer has read what the broker kept for it.
    let mut last = (0, std::time::Instant::now());
    wait_until("the consumer caught up", T, || {
        let got = sub.snapshot().len();
        if got != last.0 {
            last = (got, std::time::Instant::now());
        }
        got >= n || last.1.elapsed() > Duration::from_secs(2)
    })
    .await;
    relay.stop().await;
    event_ids(&sub.snapshot()).len()
}
