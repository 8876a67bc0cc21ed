//! Real components for the demo and the integration tests: an MQTT broker (embedded rumqttd, or
//! a mosquitto process when `ALERT_RELAY_TEST_BROKER=mosquitto`), a WebSocket server that speaks
//! the upstream protocol (sends `{"connection_id"}` first, then envelopes), and an MQTT
//! subscriber that records what arrives. Everything listens on 127.0.0.1.
//!
//! Shared by `examples/demo.rs` and `tests/*.rs` (`#[path]`), so both run the same code.
#![allow(dead_code)]

pub mod videodb;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Waits until `cond` holds, polling every 10 ms, or panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub enum Broker {
    /// rumqttd runs on its own threads until the process exits; it cannot be stopped.
    Embedded { port: u16 },
    Mosquitto {
        port: u16,
        child: Child,
        _dir: tempfile::TempDir,
    },
}

impl Broker {
    pub fn kind_from_env() -> &'static str {
        match std::env::var("ALERT_RELAY_TEST_BROKER").as_deref() {
            Ok("mosquitto") => "mosquitto",
            _ => "embedded",
        }
    }

    /// Starts a broker on `port` and waits until it accepts connections.
    pub fn start(port: u16) -> Broker {
        let b = match Self::kind_from_env() {
            "mosquitto" => Self::start_mosquitto(port),
            _ => Self::start_embedded(port),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not listen on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        b
    }

    fn start_embedded(port: u16) -> Broker {
        let cfg = format!(
            r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 2097152
max_inflight_count = 500
dynamic_filters = true
"#
        );
        let cfg: rumqttd::Config = toml::from_str(&cfg).expect("rumqttd config");
        std::thread::Builder::new()
            .name(format!("rumqttd-{port}"))
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(cfg);
                if let Err(e) = broker.start() {
                    eprintln!("rumqttd on {port} stopped: {e}");
                }
            })
            .expect("spawn broker thread");
        Broker::Embedded { port }
    }

    fn start_mosquitto(port: u16) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n"),
        )
        .expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (is it installed? apt-get install mosquitto)");
        Broker::Mosquitto {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Broker::Embedded { port } | Broker::Mosquitto { port, .. } => *port,
        }
    }

    /// Stops the broker (mosquitto only; returns false for the embedded one).
    pub fn stop(&mut self) -> bool {
        match self {
            Broker::Mosquitto { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
                true
            }
            Broker::Embedded { .. } => false,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A WebSocket server speaking the upstream protocol: each new connection gets
/// `{"connection_id": "conn-N"}` first, then whatever [`WsServer::send`] queues.
pub struct WsServer {
    pub addr: SocketAddr,
    tx: mpsc::UnboundedSender<Message>,
    pub connections: Arc<AtomicU64>,
}

impl WsServer {
    pub async fn start() -> WsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel::<Message>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let connections = Arc::new(AtomicU64::new(0));
        let conns = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let rx = rx.clone();
                let n = conns.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let hello = format!("{{\"connection_id\":\"conn-{n}\"}}");
                    if ws.send(Message::text(hello)).await.is_err() {
                        return;
                    }
                    // One connection reads the shared queue at a time (the relay has one).
                    let mut rx = rx.lock().await;
                    loop {
                        tokio::select! {
                            m = rx.recv() => match m {
                                Some(m) => if ws.send(m).await.is_err() { return },
                                None => return,
                            },
                            incoming = ws.next() => match incoming {
                                Some(Ok(_)) => {}
                                _ => return,
                            },
                        }
                    }
                });
            }
        });
        WsServer {
            addr,
            tx,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/alerts", self.addr)
    }

    pub fn send_text(&self, text: impl Into<String>) {
        let _ = self.tx.send(Message::text(text.into()));
    }

    pub fn send(&self, m: Message) {
        let _ = self.tx.send(m);
    }
}

/// An alert envelope in VideoDB's shape.
pub fn alert_frame(event_id: &str, label: &str, confidence: f64) -> String {
    serde_json::json!({
        "channel": "alert",
        "rtstream_id": "rts-demo-1",
        "rtstream_name": "front door",
        "data": {
            "event_id": event_id,
            "label": label,
            "confidence": confidence,
            "explanation": format!("{label} detected"),
            "timestamp": now_rfc3339(),
            "start_time": 12.5,
            "end_time": 14.0,
            "stream_url": "https://stream.example/rts-demo-1",
            "player_url": "https://player.example/rts-demo-1"
        }
    })
    .to_string()
}

pub fn now_rfc3339() -> String {
    alert_relay::clock::rfc3339_micros(
        alert_relay::clock::unix_micros(std::time::SystemTime::now()),
    )
}

#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// An MQTT client subscribed to `filter`, recording every message. Reconnects on its own.
pub struct Subscriber {
    pub messages: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(port: u16, filter: &str) -> Subscriber {
        let id = format!("test-sub-{}", free_port());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut el) = AsyncClient::new(opts, 100);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let m = messages.clone();
        let filter = filter.to_string();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
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
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        m.lock().expect("lock").push(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            at: Instant::now(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
        Subscriber { messages, task }
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.messages.lock().expect("lock").clone()
    }

    /// Messages whose topic starts with `prefix`.
    pub fn on(&self, prefix: &str) -> Vec<Received> {
        self.snapshot()
            .into_iter()
            .filter(|m| m.topic.starts_with(prefix))
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A relay config for local runs.
pub fn relay_config(
    ws_url: &str,
    mqtt_port: u16,
    queue_dir: &std::path::Path,
    extra: &str,
) -> String {
    format!(
        r#"
[source]
url = "{ws_url}"
backoff_initial = "50ms"
backoff_max = "500ms"
max_frame_bytes = "16KiB"

[queue]
dir = "{}"
max_bytes = "8MiB"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "relay-under-test-{}"
backoff_initial = "50ms"
backoff_max = "500ms"
stats_interval = "1s"
{extra}
"#,
        queue_dir.display(),
        free_port()
    )
}

/// The relay running in-process, stopped on drop.
pub struct Relay {
    pub stats: Arc<alert_relay::stats::Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    pub fn start(config_text: &str) -> Relay {
        let cfg = alert_relay::config::Config::parse(config_text).expect("relay config");
        let stats = Arc::new(alert_relay::stats::Stats::default());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let s = stats.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            alert_relay::run_with_stats(cfg, shutdown, s)
                .await
                .expect("relay run");
        });
        Relay {
            stats,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful stop; waits for the relay to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
