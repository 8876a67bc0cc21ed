//! A local stand-in for VideoDB's real-time API, speaking its protocol (SPEC §2) over real
//! sockets: a REST endpoint (`x-access-token` auth, `{"success","data"}` responses) that hands
//! out a pre-authenticated `websocket_url` and records alert create / list / status calls and
//! event creation, and a WebSocket server that sends `{"connection_id"}` first on every new
//! socket. Both plain (http/ws) or TLS (https/wss) with a throw-away test CA made by `rcgen`.
//!
//! Test controls: send frames to the live socket, drop every socket (the server "goes away"),
//! pause every socket (stops reading and writing, so no pong ever comes back: a half-open
//! connection as seen from the client).

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

    async fn start_with(key: &str, tls: Option<Arc<rustls::ServerConfig>>) -> VideoDb {
        let rest = TcpListener::bind("127.0.0.1:0").await.expect("bind REST");
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
        };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);

        let a = acceptor.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = rest.accept().await {
                let (state, ws_url, a) = (state.clone(), ws_url.clone(), a.clone());
                tokio::spawn(async move {
                    match a {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                serve_rest(s, &state, &ws_url).await
                            }
                        }
                        None => serve_rest(tcp, &state, &ws_url).await,
                    }
                });
            }
        });

        let (conns, counter, headers, hello) = (
            v.conns.clone(),
            v.connections.clone(),
            v.ws_headers.clone(),
            v.hello.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = ws.accept().await {
                let (conns, counter, headers, a) = (
                    conns.clone(),
                    counter.clone(),
                    headers.clone(),
                    acceptor.clone(),
                );
                let hello = hello.load(Ordering::SeqCst);
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
        let id = format!("alert-{}", s.alerts.len() + 1);
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
        let conns = self.conns.lock().expect("lock");
        if let Some(c) = conns.iter().rev().find(|c| !c.tx.is_closed()) {
            let _ = c.tx.send(Ctl::Send(m));
        }
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

async fn serve_ws<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    conns: Arc<Mutex<Vec<Conn>>>,
    counter: Arc<AtomicU64>,
    headers: HandshakeLog,
    hello: bool,
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
    let id = format!("conn-{n}");
    let (tx, mut rx) = mpsc::unbounded_channel();
    if hello
        && ws
            .send(Message::text(json!({ "connection_id": id }).to_string()))
            .await
            .is_err()
    {
        return;
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
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (method, path, token, head_len, content_len) = loop {
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
    let (status, reply, chunked) = route(state, &method, &path, token.as_deref(), body, ws_url);
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
    });
    if !authorized {
        return (
            401,
            json!({"success": false, "message": "Invalid API key"}),
            false,
        );
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ok = |data: Value| (200, json!({"success": true, "data": data}), false);
    let not_found = (
        404,
        json!({"success": false, "message": "not found"}),
        false,
    );
    match (method, parts.as_slice()) {
        ("GET", ["collection", _, "websocket"]) => ok(json!({ "websocket_url": ws_url })),
        ("POST", ["rtstream", "event"]) => {
            let id = format!("event-{}", s.events.len() + 1);
            let label = body["label"].as_str().unwrap_or("").to_string();
            let prompt = body["event_prompt"].as_str().unwrap_or("").to_string();
            s.events.push((id.clone(), label, prompt));
            ok(json!({ "event_id": id }))
        }
        ("POST", ["rtstream", rt, "index", idx, "alert"]) => {
            let Some(event_id) = body["event_id"].as_str() else {
                return (
                    400,
                    json!({"success": false, "message": "event_id required"}),
                    false,
                );
            };
            let id = format!("alert-{}", s.alerts.len() + 1);
            s.alerts.push(StoredAlert {
                alert_id: id.clone(),
                rtstream_id: rt.to_string(),
                index_id: idx.to_string(),
                event_id: event_id.into(),
                callback_url: body["callback_url"].as_str().map(str::to_owned),
                ws_connection_id: body["ws_connection_id"].as_str().map(str::to_owned),
                enabled: true,
            });
            ok(json!({ "alert_id": id }))
        }
        ("GET", ["rtstream", rt, "index", idx, "alert"]) => {
            let list: Vec<Value> = s
                .alerts
                .iter()
                .filter(|a| a.rtstream_id == *rt && a.index_id == *idx)
                .map(|a| {
                    json!({
                        "alert_id": a.alert_id, "event_id": a.event_id, "label": "intrusion",
                        "callback_url": a.callback_url,
                        "status": if a.enabled { "enabled" } else { "disabled" },
                    })
                })
                .collect();
            let (st, v, _) = ok(json!({ "alerts": list }));
            (st, v, true)
        }
        ("PATCH", ["rtstream", rt, "index", idx, "alert", id, "status"]) => {
            let enabled = match body["action"].as_str() {
                Some("enable") => true,
                Some("disable") => false,
                _ => {
                    return (
                        400,
                        json!({"success": false, "message": "bad action"}),
                        false,
                    )
                }
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
        _ => not_found,
    }
}
