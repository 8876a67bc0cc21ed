//! A local stand-in for VideoDB's real-time API, speaking its protocol (SPEC §2) over real
//! sockets: a REST endpoint (`x-access-token` auth, `{"success","data"}` responses) that hands
//! out a pre-authenticated `websocket_url` and records alert create / list / status / delete
//! calls and events, and a WebSocket server that sends a hello carrying `connection_id` first
//! on every new socket. Both plain (http/ws) or TLS (https/wss) with a throw-away test CA made
//! by `rcgen`.
//!
//! As strict as the service looks from VideoDB's Python SDK 0.5.1 (PyPI `videodb`; every rule
//! below cites the SDK line it mirrors; `.ci/videodb-sdk.sh` drives this stand-in with that SDK
//! to prove it): a create-alert body without `callback_url` is a 400; v1 indexes answer on
//! `/rtstream/{rt}/index/{id}/...` only and v2 indexes (registered with [`VideoDb::add_v2_index`])
//! on `/rtstream/{rt}/indexes/{id}/...` only; DELETE of an alert is a 405 unless
//! [`VideoDb::allow_delete`] (the SDK has no delete).
//!
//! Test controls: send frames to the live socket (text or binary), choose the hello's shape,
//! drop every socket (the server "goes away"), pause every socket (stops reading and writing,
//! so no pong ever comes back: a half-open connection as seen from the client). The same
//! sending is reachable over REST (`POST /_standin/send`) for the standalone
//! `examples/videodb_standin.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::Message;

/// A throw-away CA and a server certificate for `localhost` / `127.0.0.1` signed by it.
pub struct Pki {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let key = KeyPair::generate().expect("server key");
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = p
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("sign the server cert");
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server cert");
        Pki {
            ca_pem: ca_cert.pem(),
            server_config: Arc::new(server_config),
        }
    }

    /// Writes the CA certificate as PEM into `dir`; returns its path (for `source.ca_file`).
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.ca_pem).expect("write CA PEM");
        path
    }
}

/// One REST call as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub authorized: bool,
    /// The `x-videodb-client` header, when sent.
    pub client: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StoredAlert {
    pub alert_id: String,
    pub rtstream_id: String,
    pub index_id: String,
    pub event_id: String,
    pub callback_url: Option<String>,
    pub ws_connection_id: Option<String>,
    pub enabled: bool,
}

#[derive(Default)]
struct State {
    key: String,
    calls: Vec<Call>,
    alerts: Vec<StoredAlert>,
    events: Vec<(String, String, String)>,
    /// (rtstream_id, index_id) of the v2 indexes; every other index id is a v1 one.
    v2_indexes: Vec<(String, String)>,
    delete_allowed: bool,
    /// Alerts ever created (ids stay unique after deletes).
    created: u64,
}

/// The shape of the first frame on a new socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// `{"connection_id": "conn-N"}`.
    Plain,
    /// `{"type": "connected", "connection_id": "conn-N"}`: the SDK takes the id from the
    /// first frame whatever else it holds (websocket_client.py lines 33-35).
    Typed,
    /// `{"connection_id": N}`, a number.
    Numeric,
    /// The same typed hello in a binary frame (`json.loads` takes bytes).
    Binary,
}

enum Ctl {
    Send(Message),
    Drop,
    Pause,
}

struct Conn {
    id: String,
    tx: mpsc::UnboundedSender<Ctl>,
}

/// The stand-in; its tasks live as long as the test's runtime.
pub struct VideoDb {
    pub api_url: String,
    /// The pre-authenticated URL that `GET /collection/{id}/websocket` hands out.
    pub ws_url: String,
    state: Arc<Mutex<State>>,
    conns: Arc<Mutex<Vec<Conn>>>,
    /// WebSocket handshakes accepted so far.
    pub connections: Arc<AtomicU64>,
    /// The request headers of every accepted WebSocket handshake.
    pub ws_headers: HandshakeLog,
    /// Whether new sockets get `{"connection_id"}` first (off: a server that never says hello).
    pub hello: Arc<std::sync::atomic::AtomicBool>,
    hello_shape: Arc<Mutex<Hello>>,
}

/// The request headers of each WebSocket handshake, in order.
pub type HandshakeLog = Arc<Mutex<Vec<Vec<(String, String)>>>>;

const WS_TOKEN: &str = "ws-token-1234";

impl VideoDb {
    /// http:// and ws:// on 127.0.0.1; `key` is the only API key accepted.
    pub async fn start(key: &str) -> VideoDb {
        Self::start_with(key, None).await
    }

    /// https:// and wss:// with a certificate from `pki`.
    pub async fn start_tls(key: &str, pki: &Pki) -> VideoDb {
        Self::start_with(key, Some(pki.server_config.clone())).await
    }

    /// http:// on `rest_port` of 127.0.0.1 (0: any), ws:// on a free port.
    pub async fn start_on(key: &str, rest_port: u16) -> VideoDb {
        Self::start_full(key, None, rest_port).await
    }

    async fn start_with(key: &str, tls: Option<Arc<rustls::ServerConfig>>) -> VideoDb {
        Self::start_full(key, tls, 0).await
    }

    async fn start_full(
        key: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        rest_port: u16,
    ) -> VideoDb {
        let rest = TcpListener::bind(("127.0.0.1", rest_port))
            .await
            .expect("bind REST");
        let ws = TcpListener::bind("127.0.0.1:0").await.expect("bind WS");
        let (http_s, ws_s) = if tls.is_some() {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        let api_url = format!(
            "{http_s}://127.0.0.1:{}",
            rest.local_addr().expect("addr").port()
        );
        let ws_url = format!(
            "{ws_s}://127.0.0.1:{}/ws?token={WS_TOKEN}",
            ws.local_addr().expect("addr").port()
        );
        let state = Arc::new(Mutex::new(State {
            key: key.to_string(),
            ..Default::default()
        }));
        let v = VideoDb {
            api_url,
            ws_url: ws_url.clone(),
            state: state.clone(),
            conns: Arc::new(Mutex::new(Vec::new())),
            connections: Arc::new(AtomicU64::new(0)),
            ws_headers: Arc::new(Mutex::new(Vec::new())),
            hello: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            hello_shape: Arc::new(Mutex::new(Hello::Plain)),
        };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);

        let a = acceptor.clone();
        let rest_conns = v.conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = rest.accept().await {
                let (state, ws_url, a, conns) =
                    (state.clone(), ws_url.clone(), a.clone(), rest_conns.clone());
                tokio::spawn(async move {
                    match a {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                serve_rest(s, &state, &ws_url, &conns).await
                            }
                        }
                        None => serve_rest(tcp, &state, &ws_url, &conns).await,
                    }
                });
            }
        });

        let (conns, counter, headers, hello, shape) = (
            v.conns.clone(),
            v.connections.clone(),
            v.ws_headers.clone(),
            v.hello.clone(),
            v.hello_shape.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = ws.accept().await {
                let (conns, counter, headers, a) = (
                    conns.clone(),
                    counter.clone(),
                    headers.clone(),
                    acceptor.clone(),
                );
                let hello = hello
                    .load(Ordering::SeqCst)
                    .then(|| *shape.lock().expect("lock"));
                tokio::spawn(async move {
                    match a {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                serve_ws(s, conns, counter, headers, hello).await
                            }
                        }
                        None => serve_ws(tcp, conns, counter, headers, hello).await,
                    }
                });
            }
        });
        v
    }

    /// The shape of the hello new sockets get.
    pub fn set_hello(&self, shape: Hello) {
        *self.hello_shape.lock().expect("lock") = shape;
    }

    /// Makes `index_id` of `rtstream_id` a v2 index (`rtstream.index()`, `RTStreamIndex`).
    pub fn add_v2_index(&self, rtstream_id: &str, index_id: &str) {
        self.state
            .lock()
            .expect("lock")
            .v2_indexes
            .push((rtstream_id.into(), index_id.into()));
    }

    /// Lets `DELETE .../alert/{id}` delete (default: 405, as a service without delete).
    pub fn allow_delete(&self, allowed: bool) {
        self.state.lock().expect("lock").delete_allowed = allowed;
    }

    pub fn set_key(&self, key: &str) {
        self.state.lock().expect("lock").key = key.to_string();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("lock").calls.clone()
    }

    /// Calls whose method is `method` and whose path ends with `suffix`.
    pub fn count_calls(&self, method: &str, suffix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.method == method && c.path.ends_with(suffix))
            .count()
    }

    pub fn alerts(&self) -> Vec<StoredAlert> {
        self.state.lock().expect("lock").alerts.clone()
    }

    pub fn enabled_alerts(&self) -> Vec<StoredAlert> {
        self.alerts().into_iter().filter(|a| a.enabled).collect()
    }

    /// Adds an alert as if someone created it by hand (no socket binding).
    pub fn add_manual_alert(&self, rtstream_id: &str, index_id: &str, event_id: &str) -> String {
        let mut s = self.state.lock().expect("lock");
        s.created += 1;
        let id = format!("alert-{}", s.created);
        s.alerts.push(StoredAlert {
            alert_id: id.clone(),
            rtstream_id: rtstream_id.into(),
            index_id: index_id.into(),
            event_id: event_id.into(),
            callback_url: Some("https://hooks.example/manual".into()),
            ws_connection_id: None,
            enabled: true,
        });
        id
    }

    pub fn events(&self) -> Vec<(String, String, String)> {
        self.state.lock().expect("lock").events.clone()
    }

    /// The connection ids of the sockets open now, oldest first.
    pub fn live_connections(&self) -> Vec<String> {
        self.conns
            .lock()
            .expect("lock")
            .iter()
            .filter(|c| !c.tx.is_closed())
            .map(|c| c.id.clone())
            .collect()
    }

    /// Sends a text frame on the newest open socket.
    pub fn send_text(&self, text: impl Into<String>) {
        let conns = self.conns.lock().expect("lock");
        if let Some(c) = conns.iter().rev().find(|c| !c.tx.is_closed()) {
            let _ = c.tx.send(Ctl::Send(Message::text(text.into())));
        }
    }

    pub fn send(&self, m: Message) {
        send_newest(&self.conns, m);
    }

    /// Sends a binary frame on the newest open socket.
    pub fn send_binary(&self, bytes: impl Into<Vec<u8>>) {
        self.send(Message::binary(bytes.into()));
    }

    /// Drops every open socket without a closing handshake (a server restart).
    pub fn drop_connections(&self) {
        for c in self.conns.lock().expect("lock").iter() {
            let _ = c.tx.send(Ctl::Drop);
        }
    }

    /// Every open socket stops reading and writing but stays open: no pong comes back.
    pub fn pause_connections(&self) {
        for c in self.conns.lock().expect("lock").iter() {
            let _ = c.tx.send(Ctl::Pause);
        }
    }
}

/// Sends `m` on the newest open socket; false when none is open.
fn send_newest(conns: &Mutex<Vec<Conn>>, m: Message) -> bool {
    let conns = conns.lock().expect("lock");
    match conns.iter().rev().find(|c| !c.tx.is_closed()) {
        Some(c) => c.tx.send(Ctl::Send(m)).is_ok(),
        None => false,
    }
}

async fn serve_ws<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    conns: Arc<Mutex<Vec<Conn>>>,
    counter: Arc<AtomicU64>,
    headers: HandshakeLog,
    hello: Option<Hello>,
) {
    // The handshake callback's error type is tungstenite's, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let h: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        headers.lock().expect("lock").push(h);
        if req.uri().query() == Some(&format!("token={WS_TOKEN}")) {
            Ok(resp)
        } else {
            let mut r = ErrorResponse::new(Some("bad token".into()));
            *r.status_mut() = http::StatusCode::UNAUTHORIZED;
            Err(r)
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
    let mut id = format!("conn-{n}");
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The first frame carries the id the alerts are bound to: the SDK reads it from the first
    // frame, `data.get("connection_id")` (websocket_client.py lines 33-35).
    let first = match hello {
        None => None,
        Some(Hello::Plain) => Some(Message::text(json!({ "connection_id": id }).to_string())),
        Some(Hello::Typed) => Some(Message::text(
            json!({ "type": "connected", "connection_id": id }).to_string(),
        )),
        Some(Hello::Numeric) => {
            id = n.to_string();
            Some(Message::text(json!({ "connection_id": n }).to_string()))
        }
        Some(Hello::Binary) => Some(Message::binary(
            json!({ "type": "connected", "connection_id": id })
                .to_string()
                .into_bytes(),
        )),
    };
    if let Some(m) = first {
        if ws.send(m).await.is_err() {
            return;
        }
    }
    conns.lock().expect("lock").push(Conn { id, tx });
    loop {
        tokio::select! {
            ctl = rx.recv() => match ctl {
                Some(Ctl::Send(m)) => if ws.send(m).await.is_err() { return },
                Some(Ctl::Drop) | None => return,
                Some(Ctl::Pause) => {
                    // Hold the socket, read nothing (so no pong), until told to drop it.
                    while let Some(c) = rx.recv().await {
                        if matches!(c, Ctl::Drop) {
                            return;
                        }
                    }
                    return;
                }
            },
            incoming = ws.next() => match incoming {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

/// Serves one HTTP/1.1 request, then closes.
async fn serve_rest<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    state: &Mutex<State>,
    ws_url: &str,
    conns: &Mutex<Vec<Conn>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (method, path, token, client, head_len, content_len) = loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut h);
        if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
            let get = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let cl = get("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            break (
                req.method.unwrap_or("").to_string(),
                req.path.unwrap_or("").to_string(),
                get("x-access-token"),
                get("x-videodb-client"),
                len,
                cl,
            );
        }
    };
    while buf.len() < head_len + content_len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Value =
        serde_json::from_slice(&buf[head_len..head_len + content_len]).unwrap_or(Value::Null);
    let (status, reply, chunked) = match (method.as_str(), path.as_str()) {
        // Test control for the standalone stand-in: `{"text": "..."}` or `{"binary": "..."}`
        // (its UTF-8 bytes as a binary frame) on the newest socket.
        ("POST", "/_standin/send") => {
            let m = match (body["text"].as_str(), body["binary"].as_str()) {
                (Some(t), _) => Some(Message::text(t.to_string())),
                (None, Some(b)) => Some(Message::binary(b.as_bytes().to_vec())),
                _ => None,
            };
            match m.map(|m| send_newest(conns, m)) {
                Some(true) => (200, json!({"success": true, "data": {}}), false),
                Some(false) => (
                    409,
                    json!({"success": false, "message": "no open socket"}),
                    false,
                ),
                None => (
                    400,
                    json!({"success": false, "message": "text or binary required"}),
                    false,
                ),
            }
        }
        _ => route(
            state,
            &method,
            &path,
            token.as_deref(),
            client,
            body,
            ws_url,
        ),
    };
    let payload = reply.to_string();
    let head = if chunked {
        format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    } else {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        )
    };
    let mut out = head.into_bytes();
    if chunked {
        // Two chunks, to exercise the client's decoder.
        let (a, b) = payload.as_bytes().split_at(payload.len() / 2);
        for part in [a, b] {
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(payload.as_bytes());
    }
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

fn route(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    token: Option<&str>,
    client: Option<String>,
    body: Value,
    ws_url: &str,
) -> (u16, Value, bool) {
    let mut s = state.lock().expect("lock");
    let authorized = token == Some(s.key.as_str());
    s.calls.push(Call {
        method: method.into(),
        path: path.into(),
        body: body.clone(),
        authorized,
        client,
    });
    // Every reply is `{"success", "data"?, "message"?}`: the SDK raises on a 4xx with
    // `message` (_http_client.py line 112) and returns `data` when `success`
    // (_http_client.py lines 210-211). 401 is its AuthenticationError (line 116).
    if !authorized {
        return (
            401,
            json!({"success": false, "message": "Invalid API key"}),
            false,
        );
    }
    let path = path.split('?').next().unwrap_or(path);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ok = |data: Value| (200, json!({"success": true, "data": data}), false);
    let fail =
        |status: u16, message: &str| (status, json!({"success": false, "message": message}), false);
    let not_found = fail(404, "not found");
    // v1 routes use `index` (RTStreamSceneIndex, rtstream.py lines 333, 345, 357, 369), v2
    // routes `indexes` (RTStreamIndex, rtstream.py lines 583, 595, 602, 609); an index answers
    // on its own kind's routes only.
    let kind_ok = |s: &State, rt: &str, seg: &str, idx: &str| {
        let v2 = s.v2_indexes.iter().any(|(r, i)| r == rt && i == idx);
        match seg {
            "index" => !v2,
            "indexes" => v2,
            _ => false,
        }
    };
    match (method, parts.as_slice()) {
        // `connect_websocket`: GET collection/{id}/websocket -> data.websocket_url
        // (client.py lines 660-662).
        ("GET", ["collection", _, "websocket"]) => ok(json!({ "websocket_url": ws_url })),
        // `get_collection` (client.py lines 69-77).
        ("GET", ["collection", id]) => ok(json!({ "id": id, "name": "stand-in" })),
        // `Collection.get_rtstream` (collection.py lines 293-296).
        ("GET", ["rtstream", rt]) if *rt != "event" => {
            ok(json!({ "id": rt, "name": "stand-in stream", "status": "connected" }))
        }
        // `create_event`: POST rtstream/event {"event_prompt","label"} -> data.event_id
        // (client.py lines 175-180).
        ("POST", ["rtstream", "event"]) => {
            let (Some(label), Some(prompt)) =
                (body["label"].as_str(), body["event_prompt"].as_str())
            else {
                return fail(400, "label and event_prompt are required");
            };
            let id = format!("event-{}", s.events.len() + 1);
            s.events.push((id.clone(), label.into(), prompt.into()));
            ok(json!({ "event_id": id }))
        }
        // `list_events`: GET rtstream/event -> data.events (client.py lines 188-189).
        ("GET", ["rtstream", "event"]) => {
            let list: Vec<Value> = s
                .events
                .iter()
                .map(|(id, label, prompt)| {
                    json!({"event_id": id, "label": label, "event_prompt": prompt})
                })
                .collect();
            ok(json!({ "events": list }))
        }
        // `get_scene_index`: GET rtstream/{rt}/index/{id} (rtstream.py lines 1082-1087).
        ("GET", ["rtstream", rt, "index", idx]) if kind_ok(&s, rt, "index", idx) => ok(json!({
            "rtstream_index_id": idx, "name": "stand-in v1 index", "status": "connected",
        })),
        // `get_index`: GET rtstream/{rt}/indexes/{id} (rtstream.py lines 1204-1210).
        ("GET", ["rtstream", rt, "indexes", idx]) if kind_ok(&s, rt, "indexes", idx) => {
            ok(json!({ "index_id": idx, "rtstream_id": rt, "status": "running" }))
        }
        // `create_alert`: the body always has `callback_url` (rtstream.py lines 326-329 and
        // 579; `None` is sent as null), `ws_connection_id` only when given (lines 330-331).
        ("POST", ["rtstream", rt, seg, idx, "alert"]) if kind_ok(&s, rt, seg, idx) => {
            let Some(event_id) = body["event_id"].as_str() else {
                return fail(400, "event_id is required");
            };
            let callback_url = match body.get("callback_url") {
                None => return fail(400, "callback_url is required (\"\" for WebSocket only)"),
                Some(Value::String(u)) => Some(u.clone()).filter(|u| !u.is_empty()),
                Some(Value::Null) => None,
                Some(_) => return fail(400, "callback_url must be a string"),
            };
            s.created += 1;
            let id = format!("alert-{}", s.created);
            s.alerts.push(StoredAlert {
                alert_id: id.clone(),
                rtstream_id: rt.to_string(),
                index_id: idx.to_string(),
                event_id: event_id.into(),
                callback_url,
                ws_connection_id: body["ws_connection_id"].as_str().map(str::to_owned),
                enabled: true,
            });
            ok(json!({ "alert_id": id }))
        }
        // `list_alerts` -> data.alerts (rtstream.py lines 344-347 and 594-597).
        ("GET", ["rtstream", rt, seg, idx, "alert"]) if kind_ok(&s, rt, seg, idx) => {
            let labels: std::collections::HashMap<&str, &str> = s
                .events
                .iter()
                .map(|(id, label, _)| (id.as_str(), label.as_str()))
                .collect();
            let list: Vec<Value> = s
                .alerts
                .iter()
                .filter(|a| a.rtstream_id == *rt && a.index_id == *idx)
                .map(|a| {
                    json!({
                        "alert_id": a.alert_id, "event_id": a.event_id,
                        "label": labels.get(a.event_id.as_str()).copied().unwrap_or("intrusion"),
                        "callback_url": a.callback_url,
                        "status": if a.enabled { "enabled" } else { "disabled" },
                    })
                })
                .collect();
            let (st, v, _) = ok(json!({ "alerts": list }));
            (st, v, true)
        }
        // `enable_alert` / `disable_alert`: PATCH .../alert/{id}/status {"action"}
        // (rtstream.py lines 356-359, 368-371, 601-604, 608-611).
        ("PATCH", ["rtstream", rt, seg, idx, "alert", id, "status"])
            if kind_ok(&s, rt, seg, idx) =>
        {
            let enabled = match body["action"].as_str() {
                Some("enable") => true,
                Some("disable") => false,
                _ => return fail(400, "action must be enable or disable"),
            };
            match s
                .alerts
                .iter_mut()
                .find(|a| a.alert_id == *id && a.rtstream_id == *rt && a.index_id == *idx)
            {
                Some(a) => {
                    a.enabled = enabled;
                    ok(json!({}))
                }
                None => not_found,
            }
        }
        // No delete in SDK 0.5.1: 405 unless a test allows it.
        ("DELETE", ["rtstream", rt, seg, idx, "alert", id]) if kind_ok(&s, rt, seg, idx) => {
            if !s.delete_allowed {
                return fail(405, "method not allowed");
            }
            let before = s.alerts.len();
            s.alerts
                .retain(|a| !(a.alert_id == *id && a.rtstream_id == *rt && a.index_id == *idx));
            if s.alerts.len() < before {
                ok(json!({}))
            } else {
                not_found
            }
        }
        _ => not_found,
    }
}
