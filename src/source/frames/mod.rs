//! The WebSocket frame layer (RFC 6455, client side), read by the relay itself once
//! tungstenite has done the opening handshake.
//!
//! Why not tungstenite's reader: it refuses a frame whose declared length is above
//! `max_frame_size` (and a message above `max_message_size`) with an error that ends the
//! connection, and it buffers a whole message before it can check it. Upstream is
//! at-most-once, so a reconnect loses alerts (SPEC §5). Here a message above
//! `source.max_frame_bytes` is discarded as its payload streams in, whatever its declared
//! length (1 GiB or 2^63 - 1) and however it is fragmented, while pings are still answered and a
//! close is still honoured: memory is bounded by the limit, never by the frame.
//!
//! Owns: [`Decoder`], a pure state machine (bytes in, [`Event`]s out; no I/O, no clock, no
//! allocation above the limit), and [`FrameStream`], the I/O around it: one fixed read buffer,
//! masked control frames out (pong, close reply, our pings). Never does: parse JSON or decide
//! what a message means; it hands complete text and binary messages up as
//! [`tungstenite::Message`]s, as tungstenite's own stream did.
//!
//! Errors that end the connection are real protocol violations only (a masked server frame,
//! reserved bits or opcodes, a fragmented or over-long control frame, a continuation out of
//! place): the peer is then not speaking WebSocket and nothing it sends can be trusted.

mod decode;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use crate::stats::Stats;
pub use decode::{Decoder, Event, ProtocolError};
use decode::{MAX_CONTROL, OP_CLOSE, OP_PING, OP_PONG};

/// Bytes read from the socket at a time. Bounds what the reader holds besides the message
/// being assembled; 16 KiB is one TLS record, so a TLS read fills it in one go.
pub const READ_BUF: usize = 16 * 1024;

/// One masked client frame (RFC 6455 §5.3: every client frame is masked), appended to `out`.
fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    debug_assert!(payload.len() as u64 <= MAX_CONTROL);
    out.push(0x80 | opcode);
    out.push(0x80 | payload.len().min(MAX_CONTROL as usize) as u8);
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .take(MAX_CONTROL as usize)
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
}

fn random_mask() -> [u8; 4] {
    let mut m = [0u8; 4];
    // The mask guards proxies against cache poisoning (RFC 6455 §10.3); it is not a secret the
    // relay depends on. Should the OS refuse randomness, a fixed mask is still valid framing.
    if getrandom::getrandom(&mut m).is_err() {
        m = [0x5A, 0xC3, 0x3C, 0xA5];
    }
    m
}

/// Why reading frames stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the server closed the TCP connection without a close frame")]
    Eof,
}

/// The frame layer over one connected socket (TCP or TLS). [`FrameStream::next`] is
/// cancellation safe: every byte read is in the decoder or the buffer, every control frame to
/// send is in `out` until written, so it can sit in a `select!` beside timers.
pub struct FrameStream<'a, S> {
    io: S,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    decoder: Decoder,
    /// Control frames waiting to be written (a pong, a close reply, our ping).
    out: Vec<u8>,
    out_pos: usize,
    /// The server's close, answered once the reply is written.
    close: Option<Option<(u16, String)>>,
    done: bool,
    bytes_read: u64,
    limit: usize,
    stats: &'a Stats,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> FrameStream<'a, S> {
    /// `tail`: bytes the handshake read past the HTTP response (the first frames, maybe).
    pub fn new(io: S, tail: &[u8], limit: usize, stats: &'a Stats) -> Self {
        let mut buf = vec![0u8; READ_BUF.max(tail.len())];
        buf[..tail.len()].copy_from_slice(tail);
        FrameStream {
            io,
            buf,
            pos: 0,
            end: tail.len(),
            decoder: Decoder::new(limit),
            out: Vec::new(),
            out_pos: 0,
            close: None,
            done: false,
            bytes_read: tail.len() as u64,
            limit,
            stats,
        }
    }

    /// Every byte read from the server so far: a frame still streaming in (an oversize one
    /// being skipped) proves the connection alive though no message comes out of it.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next complete message. Pings are answered (and also returned, as proof of life);
    /// a close is answered, returned, and then `None` follows. Oversize and non-UTF-8 text
    /// messages are counted, logged rate-limited and skipped.
    pub async fn next(&mut self) -> Option<Result<Message, ReadError>> {
        loop {
            if let Err(e) = self.flush_out().await {
                if self.close.is_none() {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
            if let Some(c) = self.close.take() {
                return Some(Ok(Message::Close(c.map(|(code, reason)| CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                }))));
            }
            if self.done {
                return None;
            }
            while self.pos < self.end {
                let (used, event) = match self.decoder.decode(&self.buf[self.pos..self.end]) {
                    Ok(x) => x,
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e.into()));
                    }
                };
                self.pos += used;
                if let Some(msg) = event.and_then(|e| self.on_event(e)) {
                    return Some(Ok(msg));
                }
                if self.close.is_some() {
                    break;
                }
            }
            if self.close.is_some() {
                continue;
            }
            self.pos = 0;
            self.end = 0;
            let n = match self.io.read(&mut self.buf).await {
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            };
            if n == 0 {
                self.done = true;
                return Some(Err(ReadError::Eof));
            }
            self.end = n;
            self.bytes_read += n as u64;
        }
    }

    /// Sends a ping (empty payload) and flushes it.
    pub async fn send_ping(&mut self) -> io::Result<()> {
        encode_client_frame(&mut self.out, OP_PING, &[], random_mask());
        self.flush_out().await
    }

    fn on_event(&mut self, event: Event) -> Option<Message> {
        let stats = self.stats;
        match event {
            Event::Text(t) => {
                log::trace!("source: text message of {} bytes", t.len());
                Some(Message::Text(t.into()))
            }
            Event::Binary(b) => {
                log::trace!("source: binary message of {} bytes", b.len());
                Some(Message::Binary(b.into()))
            }
            Event::Ping(p) => {
                log::trace!("source: ping ({} bytes); answering", p.len());
                encode_client_frame(&mut self.out, OP_PONG, &p, random_mask());
                Some(Message::Ping(p.into()))
            }
            Event::Pong(p) => {
                log::trace!("source: pong");
                Some(Message::Pong(p.into()))
            }
            Event::Close(c) => {
                log::debug!("source: close frame from the server: {c:?}");
                // Echo the status code (RFC 6455 §5.5.1); 1000 when the server gave none.
                let code = c.as_ref().map_or(1000, |(code, _)| *code);
                encode_client_frame(&mut self.out, OP_CLOSE, &code.to_be_bytes(), random_mask());
                self.close = Some(c);
                self.done = true;
                None
            }
            Event::Oversize { bytes, fragmented } => {
                stats.inc(&stats.frames_received);
                stats.inc(&stats.frames_oversize);
                let what = if fragmented {
                    "fragmented message of more than"
                } else {
                    "frame of"
                };
                stats.warn_limited(
                    "oversize",
                    format_args!(
                        "source: skipped a {what} {bytes} bytes (limit source.max_frame_bytes = {}); the connection stays up",
                        self.limit
                    ),
                );
                None
            }
            Event::NotUtf8 { bytes } => {
                stats.inc(&stats.frames_received);
                stats.inc(&stats.frames_invalid_json);
                stats.warn_limited(
                    "invalid_json",
                    format_args!("source: skipped a text frame of {bytes} bytes that is not UTF-8"),
                );
                None
            }
        }
    }

    /// Writes what is pending; resumable after cancellation (`out_pos` tracks progress).
    async fn flush_out(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        while self.out_pos < self.out.len() {
            let n = self.io.write(&self.out[self.out_pos..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.out_pos += n;
        }
        self.io.flush().await?;
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }
}

/// Records the bytes the handshake reads, so that what tungstenite read past the HTTP
/// response (frames the server sent at once, like VideoDB's `connection_id`) is not lost when
/// the stream is taken back from it.
pub struct Recorder<S> {
    inner: S,
    seen: Vec<u8>,
}

/// tungstenite refuses handshake responses above 64 KiB; a little more than that is recorded.
const RECORD_LIMIT: usize = 128 * 1024;

impl<S> Recorder<S> {
    pub fn new(inner: S) -> Self {
        Recorder {
            inner,
            seen: Vec::new(),
        }
    }

    /// The stream, and the bytes read past the HTTP response head (`None` if what was read
    /// does not hold one complete response head).
    pub fn finish(self) -> (S, Option<Vec<u8>>) {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        let tail = match resp.parse(&self.seen) {
            Ok(httparse::Status::Complete(n)) => Some(self.seen[n..].to_vec()),
            _ => None,
        };
        (self.inner, tail)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            if self.seen.len() + new.len() > RECORD_LIMIT {
                return Poll::Ready(Err(io::Error::other("handshake response too long")));
            }
            self.seen.extend_from_slice(new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The socket under the frames: TCP, or rustls over TCP for `wss://`.
pub type Transport = MaybeTlsStream<TcpStream>;

/// Opens the connection for `request`: TCP (no Nagle: alerts are small and latency counts),
/// rustls for `wss://`, then tungstenite's client handshake over a [`Recorder`]. Returns the
/// socket and the bytes already read past the handshake, for [`FrameStream::new`]. Errors are
/// what the caller shows after "cannot connect to URL:".
pub async fn connect(
    request: Request,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(Transport, Vec<u8>), String> {
    let uri = request.uri();
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err("the URL scheme must be ws:// or wss://".into()),
    };
    let host = uri
        .host()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let stream = if secure {
        let name = ServerName::try_from(host).map_err(|_| "bad host name".to_string())?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    let (ws, _response) = tokio_tungstenite::client_async(request, Recorder::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let (stream, tail) = ws.into_inner().finish();
    let tail = tail.ok_or("the handshake response could not be read back")?;
    Ok((stream, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_masked_and_decode_back() {
        let mask = [1, 2, 3, 4];
        let mut out = Vec::new();
        encode_client_frame(&mut out, OP_PONG, b"hello", mask);
        assert_eq!(out[0], 0x8A);
        assert_eq!(out[1], 0x80 | 5);
        assert_eq!(&out[2..6], &mask);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(unmasked, b"hello");
    }

    #[test]
    fn recorder_keeps_the_bytes_after_the_response_head() {
        let rec = Recorder {
            inner: (),
            seen: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"
                .to_vec(),
        };
        assert_eq!(rec.finish().1, Some(b"\x81\x02hi".to_vec()));
        let partial = Recorder {
            inner: (),
            seen: b"HTTP/1.1 101 Switching".to_vec(),
        };
        assert_eq!(partial.finish().1, None);
    }
}
