//! A minimal HTTP/1.1 client for VideoDB's REST calls: one request per connection
//! (`Connection: close`), over TCP or rustls, reading `Content-Length`, chunked, or
//! read-to-close bodies, every step bounded by one deadline and by size limits.
//!
//! Why not a crate: the relay makes a handful of small JSON calls per reconnect; tokio,
//! tokio-rustls, httparse and `http::Uri` are already in the binary for the WebSocket, so this
//! adds a few KiB where an HTTP client crate adds its own stack (README, "Binary size").
//!
//! Owns: one request/response exchange. Never does: retries, redirects, connection reuse,
//! logging (callers decide what to log, and headers carrying secrets never reach an error).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;

/// Largest response head accepted: VideoDB's are a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest response body accepted: an alert list for one index is a few KiB; 1 MiB leaves
/// room for hundreds of alerts without letting a broken server fill a Pi's memory.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest body accepted for a list (`alerts list`, `events list`): an index that collected
/// alerts for years (one per binding per reconnect, before they were deleted) can pass 1 MiB;
/// 16 MiB holds about 100,000 alerts and still fits a Pi Zero's memory (the list is parsed
/// into its few fields, never into a JSON tree).
pub const MAX_LIST_BODY_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("{url} did not answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("reading from {url} failed: {reason}")]
    Io { url: String, reason: String },
    #[error("malformed response from {url}: {reason}")]
    Malformed { url: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl Client {
    pub fn new(tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Client {
        Client { tls, timeout }
    }

    /// Sends one request; `headers` may carry secrets and never appear in errors.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        self.request_limited(method, url, headers, body, MAX_BODY_BYTES)
            .await
    }

    /// [`Client::request`] with its own response body limit.
    pub async fn request_limited(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        max_body: usize,
    ) -> Result<Response, HttpError> {
        let shown = crate::config::redact_url(url);
        let bad = |reason: &str| HttpError::Url {
            url: shown.clone(),
            reason: reason.into(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("cannot parse"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let authority = authority.rsplit('@').next().unwrap_or(authority);

        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
             User-Agent: alert-relay/{}\r\nAccept: application/json\r\n",
            env!("CARGO_PKG_VERSION")
        );
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }

        let host_bare = host.trim_start_matches('[').trim_end_matches(']');
        let exchange = async {
            let addr = format!("{host}:{port}");
            let tcp =
                TcpStream::connect((host_bare, port))
                    .await
                    .map_err(|e| HttpError::Connect {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?;
            let _ = tcp.set_nodelay(true);
            if https {
                let name = ServerName::try_from(host_bare.to_string())
                    .map_err(|_| bad("bad host name"))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| HttpError::Tls {
                        host: addr,
                        reason: crate::tls::explain(&e.to_string()),
                    })?;
                exchange(tls, &bytes, &shown, max_body).await
            } else {
                exchange(tcp, &bytes, &shown, max_body).await
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                url: shown.clone(),
                after: self.timeout,
            })?
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
    url: &str,
    max_body: usize,
) -> Result<Response, HttpError> {
    let io = |e: std::io::Error| HttpError::Io {
        url: url.to_string(),
        reason: e.to_string(),
    };
    let malformed = |reason: &str| HttpError::Malformed {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    s.write_all(request).await.map_err(io)?;
    s.flush().await.map_err(io)?;

    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    // Head.
    let (status, head_len, framing) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.ok_or_else(|| malformed("no status code"))?;
                let mut framing = Framing::UntilClose;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("transfer-encoding")
                        && String::from_utf8_lossy(h.value)
                            .to_ascii_lowercase()
                            .contains("chunked")
                    {
                        framing = Framing::Chunked;
                        break;
                    }
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let n: usize = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| malformed("bad Content-Length"))?;
                        framing = Framing::Length(n);
                    }
                }
                break (status, n, framing);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(malformed("response head too large"));
                }
            }
            Err(e) => return Err(malformed(&e.to_string())),
        }
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(malformed("connection closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    buf.drain(..head_len);
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Response {
            status,
            body: Vec::new(),
        });
    }
    // Body.
    loop {
        match framing {
            Framing::Length(n) if buf.len() >= n => {
                buf.truncate(n);
                return Ok(Response { status, body: buf });
            }
            Framing::Length(n) if n > max_body => return Err(malformed("response body too large")),
            Framing::Chunked => {
                if let Some(body) = dechunk(&buf, max_body).map_err(malformed)? {
                    return Ok(Response { status, body });
                }
            }
            _ => {}
        }
        if buf.len() > max_body + MAX_HEAD_BYTES {
            return Err(malformed("response body too large"));
        }
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // Servers that close without TLS close_notify: fine when reading until close.
            Err(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    && matches!(framing, Framing::UntilClose) =>
            {
                0
            }
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            return match framing {
                Framing::UntilClose => Ok(Response { status, body: buf }),
                _ => Err(malformed("connection closed in the middle of the body")),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Decodes a complete chunked body; `Ok(None)` while more bytes are needed.
fn dechunk(mut b: &[u8], max_body: usize) -> Result<Option<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
        if size > max_body || out.len() + size > max_body {
            return Err("response body too large");
        }
        let rest = &b[eol + 2..];
        if size == 0 {
            // Trailers (rare) end with an empty line; we only need to know the body is done.
            return Ok(Some(out));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF");
        }
        b = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_only_when_complete() {
        let full = b"4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\n\r\n";
        let max = MAX_BODY_BYTES;
        assert_eq!(dechunk(full, max), Ok(Some(b"Wikipedia ".to_vec())));
        for cut in 0..full.len() - 3 {
            assert_eq!(dechunk(&full[..cut], max), Ok(None), "cut at {cut}");
        }
        assert!(dechunk(b"zz\r\n", max).is_err());
        assert!(dechunk(b"2\r\nabXY", max).is_err());
        assert!(dechunk(full, 9).is_err(), "over the limit");
    }
}
