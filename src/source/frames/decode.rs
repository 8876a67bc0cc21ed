//! The RFC 6455 client-side frame decoder: a pure state machine (bytes in, [`Event`]s out; no
//! I/O, no clock, no allocation above the limit). A message above the limit is reported at the header that takes it over and its
//! payload discarded as it arrives, whatever its declared length and however it is fragmented.
//!
//! Errors are real protocol violations only ([`ProtocolError`]): the peer is then not speaking
//! WebSocket and nothing it sends can be trusted.

/// RFC 6455 §5.5: control frames carry at most 125 payload bytes.
pub(super) const MAX_CONTROL: u64 = 125;
/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// A violation of RFC 6455 by the server: the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the server sent a masked frame (RFC 6455 §5.1)")]
    Masked,
    #[error("a frame has reserved bits set and no extension was negotiated")]
    ReservedBits,
    #[error("a frame has the reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("a control frame of {0} bytes (at most 125 are allowed)")]
    ControlTooLong(u64),
    #[error("a control frame is fragmented")]
    FragmentedControl,
    #[error("a continuation frame arrived with no message to continue")]
    UnexpectedContinuation,
    #[error("a new message started before the fragmented one ended")]
    ExpectedContinuation,
    #[error("a frame length has its most significant bit set")]
    LengthTooLarge,
    #[error("a close frame has a 1-byte payload")]
    BadClose,
}

/// What the decoder found in the bytes it was fed.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The server's close: code and reason, if it gave them. Nothing after it is decoded.
    Close(Option<(u16, String)>),
    /// A message above the limit; its payload (the rest of this frame and every later fragment
    /// of the message) is discarded as it arrives. `bytes` is what was known when it went over:
    /// the frame's declared length, plus the fragments before it.
    Oversize {
        bytes: u64,
        fragmented: bool,
    },
    /// A complete text message that is not UTF-8 (dropped).
    NotUtf8 {
        bytes: usize,
    },
}

/// The frame whose payload is arriving.
#[derive(Debug)]
struct Current {
    opcode: u8,
    fin: bool,
    remaining: u64,
}

/// The data message being assembled, across its fragments.
#[derive(Debug)]
struct Partial {
    text: bool,
    payload: Vec<u8>,
    /// Payload bytes declared so far, all fragments.
    declared: u64,
    /// Over the limit: everything up to its final fragment is dropped.
    discarding: bool,
    fragments: u32,
}

/// RFC 6455 client-side frame decoder: feed it bytes, get [`Event`]s. Pure.
///
/// Holds at most `limit` payload bytes of a data message, 125 of a control frame and 14 of a
/// header, whatever the peer declares.
#[derive(Debug)]
pub struct Decoder {
    limit: usize,
    head: [u8; MAX_HEADER],
    head_len: usize,
    frame: Option<Current>,
    message: Option<Partial>,
    control: Vec<u8>,
    closed: bool,
}

impl Decoder {
    /// `limit`: the largest message (all fragments together) that is delivered.
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            limit,
            head: [0; MAX_HEADER],
            head_len: 0,
            frame: None,
            message: None,
            control: Vec::new(),
            closed: false,
        }
    }

    /// Bytes held for the message being assembled (its buffer's capacity).
    pub fn buffered(&self) -> usize {
        self.message.as_ref().map_or(0, |m| m.payload.capacity()) + self.control.capacity()
    }

    /// Decodes from `input` until one event is complete or the input is used up. Returns how
    /// many bytes were used (all of them when no event came out) and the event. After a close,
    /// every byte is used and nothing comes out.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), ProtocolError> {
        let mut used = 0;
        while !self.closed {
            if let Some(cur) = &mut self.frame {
                let avail = &input[used..];
                // At most `avail.len()`, so the cast cannot truncate.
                let n = cur.remaining.min(avail.len() as u64) as usize;
                let chunk = &avail[..n];
                cur.remaining -= n as u64;
                used += n;
                let done = cur.remaining == 0;
                if is_control(cur.opcode) {
                    self.control.extend_from_slice(chunk);
                } else if let Some(m) = &mut self.message {
                    if !m.discarding {
                        m.payload.extend_from_slice(chunk);
                    }
                }
                if !done {
                    return Ok((used, None));
                }
                if let Some(ev) = self.finish_frame()? {
                    return Ok((used, Some(ev)));
                }
                continue;
            }
            // A header: take bytes until its length is known and reached.
            let need = header_len(&self.head[..self.head_len]);
            let take = (need - self.head_len).min(input.len() - used);
            self.head[self.head_len..self.head_len + take]
                .copy_from_slice(&input[used..used + take]);
            self.head_len += take;
            used += take;
            if self.head_len == 2 {
                check_first_bytes(self.head[0], self.head[1])?;
            }
            if self.head_len < header_len(&self.head[..self.head_len]) {
                if used == input.len() {
                    return Ok((used, None));
                }
                continue; // the second byte said how long the rest is
            }
            let ev = self.start_frame()?;
            if ev.is_some() {
                return Ok((used, ev));
            }
        }
        Ok((input.len(), None))
    }

    /// The header is complete: set up the frame; an oversize message is reported here, before
    /// its payload.
    fn start_frame(&mut self) -> Result<Option<Event>, ProtocolError> {
        let (fin, opcode) = (self.head[0] & 0x80 != 0, self.head[0] & 0x0F);
        let len = match self.head[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        self.head_len = 0;
        if len >> 63 != 0 {
            return Err(ProtocolError::LengthTooLarge);
        }
        let mut event = None;
        if is_control(opcode) {
            // check_first_bytes refused anything over 125 already.
            self.control.clear();
        } else {
            let limit = self.limit as u64;
            let m = match (opcode, &mut self.message) {
                (OP_CONTINUATION, None) => return Err(ProtocolError::UnexpectedContinuation),
                (OP_CONTINUATION, Some(m)) => m,
                (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
                (_, None) => self.message.insert(Partial {
                    text: opcode == OP_TEXT,
                    payload: Vec::new(),
                    declared: 0,
                    discarding: false,
                    fragments: 0,
                }),
            };
            m.declared = m.declared.saturating_add(len);
            m.fragments = m.fragments.saturating_add(1);
            if !m.discarding && m.declared > limit {
                m.discarding = true;
                m.payload = Vec::new();
                event = Some(Event::Oversize {
                    bytes: m.declared,
                    fragmented: !(fin && m.fragments == 1),
                });
            } else if !m.discarding {
                // At most `limit` in all: what the peer declares is never reserved beyond it.
                m.payload.reserve_exact(len as usize);
            }
        }
        self.frame = Some(Current {
            opcode,
            fin,
            remaining: len,
        });
        if len == 0 && event.is_none() {
            return self.finish_frame();
        }
        Ok(event)
    }

    /// The frame's payload is complete (a zero-length frame right after an oversize report
    /// finishes on the next call).
    fn finish_frame(&mut self) -> Result<Option<Event>, ProtocolError> {
        let Some(cur) = self.frame.take() else {
            return Ok(None);
        };
        match cur.opcode {
            OP_PING => Ok(Some(Event::Ping(std::mem::take(&mut self.control)))),
            OP_PONG => Ok(Some(Event::Pong(std::mem::take(&mut self.control)))),
            OP_CLOSE => {
                let p = std::mem::take(&mut self.control);
                let close = match p.len() {
                    0 => None,
                    1 => return Err(ProtocolError::BadClose),
                    _ => Some((
                        u16::from_be_bytes([p[0], p[1]]),
                        String::from_utf8_lossy(&p[2..]).into_owned(),
                    )),
                };
                self.closed = true;
                self.message = None;
                Ok(Some(Event::Close(close)))
            }
            _ if !cur.fin => Ok(None),
            _ => {
                let Some(m) = self.message.take() else {
                    return Ok(None);
                };
                Ok(match (m.discarding, m.text) {
                    (true, _) => None,
                    (false, false) => Some(Event::Binary(m.payload)),
                    (false, true) => Some(match String::from_utf8(m.payload) {
                        Ok(s) => Event::Text(s),
                        Err(e) => Event::NotUtf8 {
                            bytes: e.as_bytes().len(),
                        },
                    }),
                })
            }
        }
    }
}

fn is_control(opcode: u8) -> bool {
    opcode & 0x8 != 0
}

/// How long the header that starts with `head` is (2 until its second byte is known).
fn header_len(head: &[u8]) -> usize {
    match head.get(1).map(|b| b & 0x7F) {
        None => 2,
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
    }
}

/// Everything that can be refused from the first two header bytes.
fn check_first_bytes(b0: u8, b1: u8) -> Result<(), ProtocolError> {
    let opcode = b0 & 0x0F;
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(ProtocolError::ReservedOpcode(opcode));
    }
    if b1 & 0x80 != 0 {
        return Err(ProtocolError::Masked);
    }
    if is_control(opcode) {
        if b0 & 0x80 == 0 {
            return Err(ProtocolError::FragmentedControl);
        }
        let len = u64::from(b1 & 0x7F);
        if len > MAX_CONTROL {
            return Err(ProtocolError::ControlTooLong(len));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the decoder reports for an oversize message of `bytes` declared bytes.
    fn oversize(bytes: u64, fragmented: bool) -> Event {
        Event::Oversize { bytes, fragmented }
    }

    /// A server frame: unmasked, with the shortest length encoding unless `long` forces 64 bits.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let n = payload.len();
        if n < 126 {
            v.push(n as u8);
        } else if n <= 0xFFFF {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn header64(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode, 127];
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    /// Feeds `input` in chunks of `chunk` bytes, collecting every event.
    fn run(d: &mut Decoder, input: &[u8], chunk: usize) -> Result<Vec<Event>, ProtocolError> {
        let mut events = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            let mut at = 0;
            while at < piece.len() {
                let (used, ev) = d.decode(&piece[at..])?;
                assert!(used > 0 || ev.is_some(), "no progress");
                at += used;
                events.extend(ev);
            }
        }
        Ok(events)
    }

    fn all(input: &[u8], limit: usize) -> Result<Vec<Event>, ProtocolError> {
        run(&mut Decoder::new(limit), input, input.len())
    }

    #[test]
    fn lengths_in_7_16_and_64_bits_are_decoded() {
        for n in [0usize, 1, 125, 126, 127, 65535, 65536, 70_000] {
            let payload = vec![b'x'; n];
            let mut long = header64(true, OP_BINARY, n as u64);
            long.extend_from_slice(&payload);
            for input in [frame(true, OP_BINARY, &payload), long] {
                assert_eq!(
                    all(&input, 1 << 20),
                    Ok(vec![Event::Binary(payload.clone())]),
                    "length {n}"
                );
            }
        }
    }

    #[test]
    fn oversize_frame_is_reported_at_its_header_and_its_payload_discarded() {
        let mut input = frame(true, OP_TEXT, &[b'a'; 300]);
        input.extend(frame(true, OP_TEXT, b"{\"after\":1}"));
        assert_eq!(
            all(&input, 256),
            Ok(vec![
                oversize(300, false),
                Event::Text("{\"after\":1}".into())
            ])
        );
    }

    #[test]
    fn gigabyte_frame_is_skipped_with_memory_bounded_by_the_limit() {
        let limit = 1024;
        let mut d = Decoder::new(limit);
        let (_, ev) = d
            .decode(&header64(true, OP_BINARY, 1 << 30))
            .expect("header");
        assert_eq!(ev, Some(oversize(1 << 30, false)));
        let chunk = vec![0xEE; 1 << 16];
        for _ in 0..(1 << 30) / chunk.len() {
            assert_eq!(d.decode(&chunk), Ok((chunk.len(), None)));
            assert!(d.buffered() <= limit, "holds {} bytes", d.buffered());
        }
        let mut tail = frame(true, OP_PING, b"p");
        tail.extend(frame(true, OP_TEXT, b"ok"));
        assert_eq!(
            run(&mut d, &tail, tail.len()),
            Ok(vec![Event::Ping(b"p".to_vec()), Event::Text("ok".into())])
        );
    }

    #[test]
    fn declared_length_of_2_to_the_63_minus_1_is_skipped_and_top_bit_refused() {
        let mut d = Decoder::new(1024);
        let ev = d
            .decode(&header64(true, OP_TEXT, u64::MAX >> 1))
            .expect("ok");
        assert!(matches!(ev.1, Some(Event::Oversize { .. })));
        assert_eq!(
            all(&header64(true, OP_TEXT, 1 << 63), 1024),
            Err(ProtocolError::LengthTooLarge)
        );
    }

    #[test]
    fn fragmented_message_over_the_limit_is_discarded_whole_with_pings_answered_between() {
        let mut input = frame(false, OP_TEXT, &[b'a'; 200]);
        input.extend(frame(true, OP_PING, b"1"));
        input.extend(frame(false, OP_CONTINUATION, &[b'b'; 100])); // 300 > 256: over here
        input.extend(frame(true, OP_PING, b"2"));
        input.extend(frame(false, OP_CONTINUATION, &[b'c'; 100]));
        input.extend(frame(true, OP_CONTINUATION, b""));
        input.extend(frame(true, OP_TEXT, b"next"));
        assert_eq!(
            all(&input, 256),
            Ok(vec![
                Event::Ping(b"1".to_vec()),
                oversize(300, true),
                Event::Ping(b"2".to_vec()),
                Event::Text("next".into()),
            ])
        );
    }

    #[test]
    fn fragmented_message_within_the_limit_is_reassembled_even_when_utf8_is_split() {
        let text = "alarm: zürich 🔥";
        let bytes = text.as_bytes();
        let split = text.find('🔥').expect("emoji") + 2; // inside the 4-byte character
        let mut input = frame(false, OP_TEXT, &bytes[..split]);
        input.extend(frame(true, OP_PONG, b""));
        input.extend(frame(true, OP_CONTINUATION, &bytes[split..]));
        assert_eq!(
            all(&input, 256),
            Ok(vec![Event::Pong(vec![]), Event::Text(text.into())])
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_reported_and_the_stream_goes_on() {
        let mut input = frame(true, OP_TEXT, &[0xFF, 0xFE, b'a']);
        input.extend(frame(true, OP_TEXT, b"ok"));
        assert_eq!(
            all(&input, 256),
            Ok(vec![Event::NotUtf8 { bytes: 3 }, Event::Text("ok".into())])
        );
    }

    #[test]
    fn close_is_decoded_and_nothing_after_it() {
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"going away");
        let mut input = frame(false, OP_TEXT, &[b'a'; 300]); // inside an oversize message
        input.extend(frame(true, OP_CLOSE, &payload));
        input.extend(frame(true, OP_TEXT, b"ignored"));
        assert_eq!(
            all(&input, 256),
            Ok(vec![
                oversize(300, true),
                Event::Close(Some((1001, "going away".into())))
            ])
        );
        assert_eq!(
            all(&frame(true, OP_CLOSE, b""), 256),
            Ok(vec![Event::Close(None)])
        );
        assert_eq!(
            all(&frame(true, OP_CLOSE, b"x"), 256),
            Err(ProtocolError::BadClose)
        );
    }

    #[test]
    fn protocol_violations_are_refused() {
        let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
            (vec![0x81, 0x81, 1, 2, 3, 4, b'x'], ProtocolError::Masked),
            (vec![0xC1, 0x00], ProtocolError::ReservedBits),
            (vec![0x83, 0x00], ProtocolError::ReservedOpcode(3)),
            (vec![0x8B, 0x00], ProtocolError::ReservedOpcode(0xB)),
            (vec![0x09, 0x00], ProtocolError::FragmentedControl),
            (vec![0x89, 126, 0, 200], ProtocolError::ControlTooLong(126)),
            (
                frame(true, OP_CONTINUATION, b"x"),
                ProtocolError::UnexpectedContinuation,
            ),
            (
                [frame(false, OP_TEXT, b"a"), frame(true, OP_BINARY, b"b")].concat(),
                ProtocolError::ExpectedContinuation,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(all(&input, 256), Err(want), "{input:?}");
        }
    }

    fn arb_frames() -> impl Strategy<Value = Vec<u8>> {
        let one = prop_oneof![
            (
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..400)
            )
                .prop_map(|(t, p)| frame(
                    true,
                    if t { OP_TEXT } else { OP_BINARY },
                    &p
                )),
            proptest::collection::vec(any::<u8>(), 0..125).prop_map(|p| frame(true, OP_PING, &p)),
            (
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(a, b)| [
                    frame(false, OP_BINARY, &a),
                    frame(true, OP_PING, b"i"),
                    frame(true, OP_CONTINUATION, &b)
                ]
                .concat()),
        ];
        proptest::collection::vec(one, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        /// However the bytes are split across reads, the same events come out, and the decoder
        /// never holds more than the limit.
        #[test]
        fn events_do_not_depend_on_how_reads_split_the_bytes(input in arb_frames(), chunk in 1usize..64) {
            let limit = 256;
            let whole = all(&input, limit);
            let mut d = Decoder::new(limit);
            let mut events = Vec::new();
            for piece in input.chunks(chunk) {
                let mut at = 0;
                while at < piece.len() {
                    let (used, ev) = d.decode(&piece[at..]).expect("valid frames");
                    at += used;
                    events.extend(ev);
                    prop_assert!(d.buffered() <= limit + MAX_CONTROL as usize);
                }
            }
            prop_assert_eq!(whole, Ok(events));
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600), chunk in 1usize..32) {
            let _ = run(&mut Decoder::new(64), &input, chunk);
        }
    }
}
