//! A deliberately tiny HTTP/1.1 client over a raw `TcpStream`, so the tests see exactly the
//! bytes a webhook sender or a scraper would send and receive.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How long one exchange may take before the test fails (a loaded CI machine included).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `raw` (a complete request; it should say `Connection: close`) and reads the response
/// until the server closes.
pub async fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    match try_exchange(addr, raw).await {
        Ok(r) => r,
        Err(e) => panic!("HTTP exchange with {addr} failed: {e}"),
    }
}

/// [`exchange`] that reports failure (refused, reset, no response) instead of panicking.
pub async fn try_exchange(addr: SocketAddr, raw: &[u8]) -> Result<Reply, String> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(raw).await.map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        parse_reply(&buf)
            .ok_or_else(|| format!("not an HTTP response: {:?}", String::from_utf8_lossy(&buf)))
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

pub fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if parts.next()? != "HTTP/1.1" {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Some(Reply {
        status,
        headers,
        body,
    })
}

pub fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n").into_bytes()
}

/// POST /webhook with the token in the header.
pub async fn post_webhook(addr: SocketAddr, token: &str, body: &str) -> Reply {
    exchange(
        addr,
        &post("/webhook", &[("X-Relay-Token", token)], body.as_bytes()),
    )
    .await
}

/// The alert `data` object as VideoDB's webhook posts it.
pub fn webhook_body(event_id: &str, label: &str, timestamp: &str) -> String {
    serde_json::json!({
        "event_id": event_id,
        "label": label,
        "confidence": 0.93,
        "explanation": format!("{label} detected"),
        "timestamp": timestamp,
        "start_time": 12.5,
        "end_time": 14.0,
        "stream_url": "https://stream.example/rts-demo-1",
        "player_url": "https://player.example/rts-demo-1"
    })
    .to_string()
}

/// The same alert as a WebSocket envelope.
pub fn socket_frame(event_id: &str, label: &str, timestamp: &str) -> String {
    let data: serde_json::Value =
        serde_json::from_str(&webhook_body(event_id, label, timestamp)).expect("json");
    serde_json::json!({"channel": "alert", "rtstream_id": "rts-demo-1", "data": data}).to_string()
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A token file in `dir`, returned with the token.
/// The webhook token [`token_file`] writes.
pub const TOKEN: &str = "test-token-0123456789abcdef";

pub fn token_file(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let token = TOKEN.to_string();
    let path = dir.join("webhook.token");
    std::fs::write(&path, format!("{token}\n")).expect("write token file");
    (path, token)
}

/// The `[http]` section for a relay config (port 0 for an in-process relay: `Relay::start`
/// binds the listener itself).
pub fn http_section(port: u16, token_file: &std::path::Path, extra: &str) -> String {
    format!(
        "\n[http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = {:?}\n{extra}\n",
        token_file.display().to_string()
    )
}
