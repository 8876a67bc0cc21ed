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

/// Says that `test` skipped a step or itself, and why, where `cargo test` shows it: libtest
/// captures `eprintln!` of a passing test, so this writes to the stderr handle directly and a
/// skip never passes silently.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
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
    /// A mosquitto process from [`Mosquitto`]: extra config, users, ACL, TLS; restartable.
    Configured {
        port: u16,
        child: Option<Child>,
        dir: tempfile::TempDir,
        conf: std::path::PathBuf,
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

    /// `max_queued_messages 0`: by default mosquitto drops QoS 1 messages for a subscriber
    /// more than 1000 behind, which a test's subscriber can be when the machine stalls it
    /// (CI stops and continues processes); that loss would not be the relay's.
    fn start_mosquitto(port: u16) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nlog_dest stderr\nlog_type error\n"),
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
            Broker::Embedded { port }
            | Broker::Mosquitto { port, .. }
            | Broker::Configured { port, .. } => *port,
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
            Broker::Configured { child, .. } => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                true
            }
            Broker::Embedded { .. } => false,
        }
    }

    /// The directory holding a configured broker's files (`ca.crt`, `client.crt`, ...).
    pub fn dir(&self) -> Option<&std::path::Path> {
        match self {
            Broker::Configured { dir, .. } => Some(dir.path()),
            _ => None,
        }
    }

    /// Stops a configured mosquitto gracefully (SIGTERM: it saves its persistence file, as on
    /// a service restart), then starts it again with the same config and waits until it listens.
    pub fn restart(&mut self) {
        let Broker::Configured {
            port, child, conf, ..
        } = self
        else {
            panic!("only a configured mosquitto can be restarted");
        };
        if let Some(mut c) = child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
        *child = Some(spawn_mosquitto(conf));
        wait_listening(*port);
    }
}

/// A mosquitto started by a test never outlives it.
impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_mosquitto(conf: &std::path::Path) -> Child {
    Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto (is it installed? apt-get install mosquitto)")
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "broker did not listen on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Builds a mosquitto process for tests of mosquitto-only features (users, ACLs, size limits,
/// TLS). Tests using it run only when `ALERT_RELAY_TEST_BROKER=mosquitto`.
#[derive(Default)]
pub struct Mosquitto {
    lines: Vec<String>,
    users: Vec<(String, String)>,
    acl: Option<String>,
    tls_port: Option<(u16, bool)>,
    persistence: bool,
}

impl Mosquitto {
    /// True when the tests may use mosquitto; otherwise prints why the caller skips.
    pub fn available(test: &str) -> bool {
        if Broker::kind_from_env() == "mosquitto" {
            return true;
        }
        skipped(
            test,
            "needs ALERT_RELAY_TEST_BROKER=mosquitto (a mosquitto-only feature)",
        );
        false
    }

    pub fn new() -> Mosquitto {
        Mosquitto::default()
    }

    /// A line for mosquitto.conf (applies to every listener: `per_listener_settings false`).
    pub fn conf(mut self, line: &str) -> Self {
        self.lines.push(line.to_string());
        self
    }

    /// Requires a login; adds this user to the password file (`mosquitto_passwd -b`).
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.into(), password.into()));
        self
    }

    /// ACL file contents (mosquitto's acl_file syntax).
    pub fn acl(mut self, text: &str) -> Self {
        self.acl = Some(text.to_string());
        self
    }

    /// Adds a TLS listener on `port` with a fresh test CA (`ca.crt` in [`Broker::dir`]); with
    /// `require_client_cert`, clients must show a certificate signed by that CA
    /// (`client.crt` / `client.key`).
    pub fn tls(mut self, port: u16, require_client_cert: bool) -> Self {
        self.tls_port = Some((port, require_client_cert));
        self
    }

    /// Keeps messages for offline persistent sessions across a graceful restart.
    pub fn persistent(mut self) -> Self {
        self.persistence = true;
        self
    }

    pub fn start(self, port: u16) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // `user root`: when the tests run as root, mosquitto would otherwise switch to the
        // `mosquitto` user and could not read the files in our private temp dir.
        let mut conf = format!(
            "per_listener_settings false\nuser root\nlog_dest stderr\nlog_type error\nlistener {port} 127.0.0.1\n"
        );
        if self.persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                d.display()
            ));
        } else {
            conf.push_str("persistence false\n");
        }
        if self.users.is_empty() {
            conf.push_str("allow_anonymous true\n");
        } else {
            let pw = d.join("passwd");
            for (i, (u, p)) in self.users.iter().enumerate() {
                let mut cmd = Command::new("mosquitto_passwd");
                cmd.arg("-b");
                if i == 0 {
                    cmd.arg("-c");
                }
                run_ok(cmd.arg(&pw).arg(u).arg(p));
            }
            conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                pw.display()
            ));
        }
        if let Some(acl) = &self.acl {
            let f = d.join("acl");
            std::fs::write(&f, acl).expect("write acl");
            conf.push_str(&format!("acl_file {}\n", f.display()));
        }
        if let Some((tls_port, require)) = self.tls_port {
            make_test_pki(d);
            conf.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\nrequire_certificate {require}\n",
                d.display()
            ));
        }
        for l in &self.lines {
            conf.push_str(l);
            conf.push('\n');
        }
        let conf_path = d.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let child = spawn_mosquitto(&conf_path);
        wait_listening(port);
        if let Some((tls_port, _)) = self.tls_port {
            wait_listening(tls_port);
        }
        Broker::Configured {
            port,
            child: Some(child),
            dir,
            conf: conf_path,
        }
    }
}

/// A test CA plus a server certificate for 127.0.0.1/localhost and a client certificate, made
/// with `rcgen` (ring), written as PEM files into `d`.
fn make_test_pki(d: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let write = |name: &str, text: String| std::fs::write(d.join(name), text).expect("write pem");
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "alert-relay test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
    write("ca.crt", ca_cert.pem());
    for (who, usage) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        p.distinguished_name.push(
            DnType::CommonName,
            if who == "server" {
                "localhost"
            } else {
                "relay-client"
            },
        );
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).expect("sign");
        write(&format!("{who}.crt"), cert.pem());
        write(&format!("{who}.key"), key.serialize_pem());
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
/// An alert frame whose explanation makes it (and its MQTT payload) about `bytes` long.
pub fn sized_alert_frame(event_id: &str, bytes: usize) -> String {
    serde_json::json!({
        "channel": "alert",
        "data": {"event_id": event_id, "label": "intrusion", "confidence": 0.9,
                 "explanation": "x".repeat(bytes)}
    })
    .to_string()
}

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
        Self::start_with(port, filter, |_| {}).await
    }

    /// [`Subscriber::start`] with extra options (a login, a persistent session).
    pub async fn start_with(
        port: u16,
        filter: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> Subscriber {
        Self::start_inner(port, filter, configure, Duration::ZERO).await
    }

    /// A slow consumer: takes `per_message` over each message before reading the next.
    pub async fn start_slow(port: u16, filter: &str, per_message: Duration) -> Subscriber {
        Self::start_inner(port, filter, |_| {}, per_message).await
    }

    async fn start_inner(
        port: u16,
        filter: &str,
        configure: impl FnOnce(&mut MqttOptions),
        per_message: Duration,
    ) -> Subscriber {
        let id = format!("test-sub-{}", free_port());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        configure(&mut opts);
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
                        if !per_message.is_zero() {
                            tokio::time::sleep(per_message).await;
                        }
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

/// A command running `bin`, prefixed with `ALERT_RELAY_TEST_RUNNER` when set: CI runs the
/// aarch64 test suite under qemu-user (`qemu-aarch64 -L /usr/aarch64-linux-gnu`), which does
/// not follow `execve` into another aarch64 binary, so tests start the relay through this.
pub fn command_for(bin: impl AsRef<std::ffi::OsStr>) -> Command {
    match std::env::var("ALERT_RELAY_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or("env"));
            c.args(parts).arg(bin);
            c
        }
        _ => Command::new(bin),
    }
}

/// Runs `cmd` to the end and checks that it succeeded (its stderr is the failure message).
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run the command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`command_for`] as a tokio command.
pub fn tokio_command_for(bin: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    tokio::process::Command::from(command_for(bin))
}
