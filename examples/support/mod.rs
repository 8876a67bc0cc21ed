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

/// A port that was free a moment ago, and not handed out before in this process; another
/// process may still take it before its listener exists. Only for a peer whose port must be
/// known before it listens (a broker started late, a process given the port in its config):
/// brokers started at once take [`Broker::start_any`], the relay's HTTP listener is bound by
/// [`Relay::start`].
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("lock");
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind an ephemeral port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A number no other call in this process returns, and unlikely in another: for MQTT client
/// ids and environment variable names (not a port).
pub fn unique_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (u64::from(std::process::id()) << 20) + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether the socket listening on 127.0.0.1:`port` is one of process `pid`'s (Linux
/// `/proc`): a broker that could not bind its port must not pass for one that did because
/// someone else listens there.
fn listener_is_owned_by(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, state 0A (LISTEN), inode
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()))
}

/// Starts a broker on a port of its own: a fresh port is tried again (up to 20 times) when
/// `start` on it could not listen, or the listener there is not the one `start` made.
fn on_a_port_of_its_own(mut start: impl FnMut(u16) -> Option<Broker>) -> Broker {
    for _ in 0..20 {
        if let Some(b) = start(free_port()) {
            return b;
        }
    }
    panic!("no broker could listen on a port of its own in 20 tries");
}

/// Waits (10 s at most) until `pid` listens on `port`; false when `gone` says the broker
/// stopped trying (it could not bind) or the time ran out.
fn owned_listener(pid: u32, port: u16, mut gone: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if listener_is_owned_by(pid, port) {
            return true;
        }
        if gone() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
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
        tls_port: Option<u16>,
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

    /// Starts a broker (embedded, or mosquitto when asked for) on a port of its own.
    pub fn start_any() -> Broker {
        on_a_port_of_its_own(|port| match Self::kind_from_env() {
            "mosquitto" => {
                let mut b = Self::start_mosquitto(port);
                let Broker::Mosquitto { child, .. } = &mut b else {
                    unreachable!("start_mosquitto makes a Mosquitto");
                };
                let pid = child.id();
                owned_listener(pid, port, || matches!(child.try_wait(), Ok(Some(_)))).then_some(b)
            }
            _ => {
                let (b, stopped) = Self::spawn_embedded(port);
                // rumqttd's start returns once its listener thread ended: it could not bind.
                owned_listener(std::process::id(), port, || stopped.is_finished()).then_some(b)
            }
        })
    }

    /// Starts a broker on `port` and waits until it accepts connections. For a broker started
    /// late, on the port the relay was given before; otherwise [`Broker::start_any`].
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
        Self::spawn_embedded(port).0
    }

    /// rumqttd on its own thread; the thread ends only if rumqttd could not listen.
    fn spawn_embedded(port: u16) -> (Broker, std::thread::JoinHandle<()>) {
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
        let thread = std::thread::Builder::new()
            .name(format!("rumqttd-{port}"))
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(cfg);
                if let Err(e) = broker.start() {
                    eprintln!("rumqttd on {port} stopped: {e}");
                }
            })
            .expect("spawn broker thread");
        (Broker::Embedded { port }, thread)
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

    /// A configured mosquitto's TLS listener ([`Mosquitto::tls`]).
    pub fn tls_port(&self) -> u16 {
        match self {
            Broker::Configured {
                tls_port: Some(p), ..
            } => *p,
            _ => panic!("this broker has no TLS listener"),
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
    tls: Option<bool>,
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

    /// Adds a TLS listener ([`Broker::tls_port`]) with a fresh test CA (`ca.crt` in
    /// [`Broker::dir`]); with `require_client_cert`, clients must show a certificate signed by
    /// that CA (`client.crt` / `client.key`).
    pub fn tls(mut self, require_client_cert: bool) -> Self {
        self.tls = Some(require_client_cert);
        self
    }

    /// Keeps messages for offline persistent sessions across a graceful restart.
    pub fn persistent(mut self) -> Self {
        self.persistence = true;
        self
    }

    /// Starts mosquitto on `port` (known before it listens, as a benchmark's config needs).
    pub fn start(self, port: u16) -> Broker {
        self.start_on(port)
            .unwrap_or_else(|| panic!("mosquitto did not listen on {port}"))
    }

    /// Starts mosquitto on ports of its own (the TLS listener's too).
    pub fn start_any(self) -> Broker {
        on_a_port_of_its_own(|port| self.start_on(port))
    }

    /// One try: mosquitto on `port`, or None if the listeners there are not its own.
    fn start_on(&self, port: u16) -> Option<Broker> {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // `user root`: when the tests run as root, mosquitto would otherwise switch to the
        // `mosquitto` user and could not read the files in our private temp dir.
        let mut common = String::from(
            "per_listener_settings false\nuser root\nlog_dest stderr\nlog_type error\n",
        );
        if self.persistence {
            common.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                d.display()
            ));
        } else {
            common.push_str("persistence false\n");
        }
        if self.users.is_empty() {
            common.push_str("allow_anonymous true\n");
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
            common.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                pw.display()
            ));
        }
        if let Some(acl) = &self.acl {
            let f = d.join("acl");
            std::fs::write(&f, acl).expect("write acl");
            common.push_str(&format!("acl_file {}\n", f.display()));
        }
        for l in &self.lines {
            common.push_str(l);
            common.push('\n');
        }
        if self.tls.is_some() {
            make_test_pki(d);
        }
        let conf_path = d.join("mosquitto.conf");
        let mut conf = common;
        conf.push_str(&format!("listener {port} 127.0.0.1\n"));
        let tls_port = self.tls.map(|require| {
            let tls_port = free_port();
            conf.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\nrequire_certificate {require}\n",
                d.display()
            ));
            tls_port
        });
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let mut child = spawn_mosquitto(&conf_path);
        let pid = child.id();
        let mut exited = || matches!(child.try_wait(), Ok(Some(_)));
        let ours = owned_listener(pid, port, &mut exited)
            && tls_port.is_none_or(|t| owned_listener(pid, t, &mut exited));
        if !ours {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        Some(Broker::Configured {
            port,
            tls_port,
            child: Some(child),
            dir,
            conf: conf_path,
        })
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
        let id = format!("test-sub-{}", unique_id());
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
        unique_id()
    )
}

type Configure = Box<dyn FnOnce(&mut MqttOptions) + Send>;

/// The setup most integration tests share: a [`WsServer`], a temp dir, a broker, a
/// [`Subscriber`] and the relay started on [`relay_config`]. Its backoffs are short (source
/// and MQTT: 50 ms to 500 ms), so a peer started late is found at once.
///
/// `Setup::new().sub("alert-relay/alerts/#").config_extra("qos = 2").start().await`
#[derive(Default)]
pub struct Setup {
    extra: Vec<String>,
    replace: Vec<(String, String)>,
    files: Vec<(String, String)>,
    broker_later: bool,
    mosquitto: Option<Mosquitto>,
    sub: Option<(String, Option<Configure>)>,
}

/// What [`Setup::start`] started; the broker and subscriber are absent until
/// [`Started::start_broker`] when the setup said [`Setup::broker_later`].
pub struct Started {
    pub ws: WsServer,
    pub dir: tempfile::TempDir,
    /// The relay's broker port (free until the broker starts, with [`Setup::broker_later`]).
    pub mqtt_port: u16,
    pub broker: Option<Broker>,
    pub sub: Option<Subscriber>,
    /// The relay's config text, to start it again.
    pub config: String,
    pub relay: Relay,
    /// The subscriber [`Started::start_broker`] starts with the late broker.
    sub_later: Option<(String, Option<Configure>)>,
}

impl Setup {
    pub fn new() -> Setup {
        Setup::default()
    }

    /// TOML added after the `[mqtt]` keys (more `[mqtt]` keys, or whole sections); `{dir}`
    /// stands for the temp dir's path.
    pub fn config_extra(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_string());
        self
    }

    /// Replaces `from` by `to` in the config text (e.g. one of [`relay_config`]'s defaults).
    pub fn replace(mut self, from: &str, to: &str) -> Self {
        self.replace.push((from.to_string(), to.to_string()));
        self
    }

    /// A file written into the temp dir before the relay starts (a password, a token).
    pub fn file(mut self, name: &str, contents: &str) -> Self {
        self.files.push((name.to_string(), contents.to_string()));
        self
    }

    /// A subscriber to `filter`, started before the relay (or with the late broker).
    pub fn sub(mut self, filter: &str) -> Self {
        self.sub = Some((filter.to_string(), None));
        self
    }

    /// [`Setup::sub`] with extra MQTT options (a login, a persistent session).
    pub fn sub_with(
        mut self,
        filter: &str,
        configure: impl FnOnce(&mut MqttOptions) + Send + 'static,
    ) -> Self {
        self.sub = Some((filter.to_string(), Some(Box::new(configure))));
        self
    }

    /// The relay starts with no broker on its port; [`Started::start_broker`] starts one.
    pub fn broker_later(mut self) -> Self {
        self.broker_later = true;
        self
    }

    /// A configured mosquitto instead of [`Broker::start_any`] (the caller checked
    /// [`Mosquitto::available`]).
    pub fn mosquitto(mut self, m: Mosquitto) -> Self {
        self.mosquitto = Some(m);
        self
    }

    /// The config text for these parts (the queue in `{dir}/q`).
    fn config(&self, ws: &WsServer, mqtt_port: u16, dir: &std::path::Path) -> String {
        let extra = self
            .extra
            .join("\n")
            .replace("{dir}", &dir.display().to_string());
        let mut text = relay_config(&ws.url(), mqtt_port, &dir.join("q"), &extra);
        for (from, to) in &self.replace {
            assert!(text.contains(from.as_str()), "the config has no {from:?}");
            text = text.replace(from.as_str(), to);
        }
        text
    }

    pub async fn start(mut self) -> Started {
        let ws = WsServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, contents) in &self.files {
            std::fs::write(dir.path().join(name), contents).expect("write a setup file");
        }
        let (broker, mqtt_port) = if self.broker_later {
            // The relay must be told the port before anything listens on it.
            (None, free_port())
        } else {
            let b = match self.mosquitto.take() {
                Some(m) => m.start_any(),
                None => Broker::start_any(),
            };
            let port = b.port();
            (Some(b), port)
        };
        let (sub, sub_later) = match (&broker, self.sub.take()) {
            (Some(_), Some(wanted)) => (Some(subscribe(mqtt_port, wanted).await), None),
            (None, wanted) => (None, wanted),
            (Some(_), None) => (None, None),
        };
        let config = self.config(&ws, mqtt_port, dir.path());
        let relay = Relay::start(&config);
        Started {
            ws,
            dir,
            mqtt_port,
            broker,
            sub,
            config,
            relay,
            sub_later,
        }
    }
}

async fn subscribe(port: u16, (filter, configure): (String, Option<Configure>)) -> Subscriber {
    match configure {
        Some(c) => Subscriber::start_with(port, &filter, c).await,
        None => Subscriber::start(port, &filter).await,
    }
}

impl Started {
    /// The queue directory.
    pub fn queue(&self) -> std::path::PathBuf {
        self.dir.path().join("q")
    }

    /// The subscriber; panics when none was asked for or the broker is not started yet.
    pub fn sub(&self) -> &Subscriber {
        self.sub.as_ref().expect("a subscriber (Setup::sub)")
    }

    pub fn broker(&mut self) -> &mut Broker {
        self.broker.as_mut().expect("a broker")
    }

    /// Starts the broker on the relay's port (after [`Setup::broker_later`]), and the
    /// subscriber if one was asked for.
    pub async fn start_broker(&mut self) -> &mut Broker {
        assert!(self.broker.is_none(), "the broker runs already");
        self.broker = Some(Broker::start(self.mqtt_port));
        if let Some(wanted) = self.sub_later.take() {
            self.sub = Some(subscribe(self.mqtt_port, wanted).await);
        }
        self.broker()
    }
}

/// The relay running in-process, stopped on drop.
pub struct Relay {
    pub stats: Arc<alert_relay::stats::Stats>,
    /// Where its HTTP listener listens (a config with `[http]`): bound here on 127.0.0.1:0 and
    /// handed to the relay, whatever `http.listen` says.
    http_addr: Option<SocketAddr>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Relay {
    pub fn start(config_text: &str) -> Relay {
        let cfg = alert_relay::config::Config::parse(config_text).expect("relay config");
        let http_listener = cfg.http.as_ref().map(|_| {
            let l = StdListener::bind("127.0.0.1:0").expect("bind the relay's HTTP listener");
            l.set_nonblocking(true).expect("nonblocking listener");
            TcpListener::from_std(l).expect("a tokio listener")
        });
        let http_addr = http_listener
            .as_ref()
            .map(|l| l.local_addr().expect("listener address"));
        let stats = Arc::new(alert_relay::stats::Stats::default());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let options = alert_relay::RunOptions {
            stats: stats.clone(),
            http_listener,
            ..Default::default()
        };
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            alert_relay::run(cfg, shutdown, options)
                .await
                .expect("relay run");
        });
        Relay {
            stats,
            http_addr,
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        }
    }

    /// The HTTP listener's address; panics when the config has no `[http]`.
    pub fn http(&self) -> SocketAddr {
        self.http_addr.expect("the relay's config has [http]")
    }

    /// Graceful stop; waits for the relay to finish.
    pub async fn stop(&self) {
        self.begin_stop();
        let task = self.task.lock().expect("lock").take();
        if let Some(t) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    fn begin_stop(&self) {
        if let Some(s) = self.stop.lock().expect("lock").take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.begin_stop();
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

/// Sends signal `name` (`TERM`, `HUP`, ...) to process `pid` with `kill`.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// (output, on) for every complete line of a sim backend's trace file. The relay may be
/// writing while this reads, so a last line without its newline is not there yet.
pub fn sim_trace_edges(trace: &std::path::Path) -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("trace line is JSON");
            (
                v["output"].as_str().expect("output").to_string(),
                v["on"].as_bool().expect("on"),
            )
        })
        .collect()
}

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A tmpfs of a given size mounted on a temp dir, unmounted on drop: a real small disk.
pub struct SmallFs(tempfile::TempDir);

impl SmallFs {
    /// Mounts it (needs root); otherwise says `test` is skipped and returns None.
    pub fn mount(test: &str, size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = is_root()
            && Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            skipped(test, "cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(SmallFs(dir))
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }

    /// `mount -o remount,{mode}` (`ro`, `rw`).
    pub fn remount(&self, mode: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount {mode}");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}
