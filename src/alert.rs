//! Upstream frames, envelopes and alerts: lenient parsing, label sanitising, the record the
//! queue stores, and the best-effort message the source hands the publisher.
//!
//! Pure: no I/O, no clock (callers pass the time in). Parsing follows SPEC §2: the channel may
//! come as `channel`, `type`, `event_type` or `event` (`{"event":"capture_session.active"}` is
//! channel `capture_session`); `visual_index` is `scene_index`, `spoken_index` is
//! `audio_index`; the label may be `label` or `event_label`; unknown fields are kept verbatim.

use serde_json::{Map, Value};

/// One parsed text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The server's first message on a new socket.
    Hello {
        connection_id: String,
    },
    Envelope(Envelope),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Normalised channel name (`visual_index` becomes `scene_index`).
    pub channel: String,
    pub rtstream_id: Option<String>,
    pub rtstream_name: Option<String>,
    pub data: Map<String, Value>,
}

/// Why a frame was not relayed. Each variant has its own counter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("frame is JSON but not an object")]
    NotAnObject,
    #[error("envelope has no channel (looked for `channel`, `type`, `event_type`, `event`)")]
    NoChannel,
    #[error("envelope field `data` is not an object")]
    DataNotObject,
}

/// Why an alert envelope was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlertError {
    #[error("alert has no label (looked for `label`, `event_label`)")]
    NoLabel,
    #[error("alert label is not a string")]
    LabelNotString,
}

/// The `connection_id` of a frame, whatever else it holds: the first frame on a socket is the
/// hello, as the Python SDK reads it (`data.get("connection_id")` on the first message,
/// `websocket_client.py` lines 33-35), typed (`{"type":"connected",...}`) or not. A number is
/// taken as its decimal text. `None` for anything that is not a JSON object with that key.
pub fn connection_id_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Hello {
        connection_id: Value,
    }
    // serde would also read a struct from a JSON array (`[1]`): only objects are frames.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    match serde_json::from_slice::<Hello>(bytes).ok()?.connection_id {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The normalised name of a channel: aliases folded (`visual_index` -> `scene_index`,
/// `spoken_index` -> `audio_index`). Config channel lists go through it too.
pub fn normalize_channel(c: &str) -> &str {
    match c {
        "visual_index" => "scene_index",
        "spoken_index" => "audio_index",
        other => other,
    }
}

/// Parses one frame's bytes (a text frame, or a binary one holding JSON: both SDKs parse
/// those, `json.loads` takes bytes, `websocket_client.py` line 57).
pub fn parse_frame(text: &str) -> Result<Frame, FrameError> {
    parse_frame_bytes(text.as_bytes())
}

pub fn parse_frame_bytes(bytes: &[u8]) -> Result<Frame, FrameError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| FrameError::InvalidJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(FrameError::NotAnObject);
    };
    let channel = ["channel", "type", "event_type", "event"]
        .iter()
        .find_map(|k| {
            obj.get(*k)
                .and_then(Value::as_str)
                .map(|c| (*k, c.to_owned()))
        });
    let Some((channel_key, channel)) = channel else {
        if let Some(id) = connection_id_of(bytes) {
            return Ok(Frame::Hello { connection_id: id });
        }
        return Err(FrameError::NoChannel);
    };
    // `event` names a channel and what happened on it: `capture_session.active`.
    let channel = if channel_key == "event" {
        channel.split('.').next().unwrap_or_default().to_owned()
    } else {
        channel
    };
    let channel = normalize_channel(&channel).to_owned();
    let data = match obj.remove("data") {
        Some(Value::Object(m)) => m,
        // An `event` frame without `data` carries its fields at the top: they are the data,
        // `event` included (the subscriber needs to know what happened).
        None if channel_key == "event" => std::mem::take(&mut obj),
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(FrameError::DataNotObject),
    };
    let mut data = data;
    if channel_key == "event" {
        if let Some(ev) = obj.get("event") {
            data.entry("event").or_insert_with(|| ev.clone());
        }
    }
    let text_field =
        |obj: &Map<String, Value>, k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Frame::Envelope(Envelope {
        rtstream_id: text_field(&obj, "rtstream_id").or_else(|| text_field(&data, "rtstream_id")),
        rtstream_name: text_field(&obj, "rtstream_name")
            .or_else(|| text_field(&data, "rtstream_name")),
        channel,
        data,
    }))
}

/// An accepted alert, as the relay sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub label: String,
    /// `None` when missing or unusable (non-numeric, NaN, outside 0–1); see [`Confidence`].
    pub confidence: Confidence,
    pub event_id: Option<String>,
    /// The alert's own `timestamp`, when it could be read.
    pub timestamp: Option<std::time::SystemTime>,
    pub rtstream_id: Option<String>,
    /// The envelope's `data`, verbatim.
    pub data: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Confidence {
    Missing,
    /// Present but not a number in 0..=1: the alert is still relayed, but no GPIO rule with a
    /// `min_confidence` above zero fires on it.
    Invalid,
    Valid(f64),
}

impl Alert {
    pub fn from_envelope(env: Envelope) -> Result<Alert, AlertError> {
        let label = match env
            .data
            .get("label")
            .or_else(|| env.data.get("event_label"))
        {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => return Err(AlertError::NoLabel),
            Some(_) => return Err(AlertError::LabelNotString),
        };
        let confidence = match env.data.get("confidence") {
            None | Some(Value::Null) => Confidence::Missing,
            Some(v) => {
                let n = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                match n {
                    Some(c) if (0.0..=1.0).contains(&c) => Confidence::Valid(c),
                    _ => Confidence::Invalid,
                }
            }
        };
        let event_id = match env.data.get("event_id") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let timestamp = env
            .data
            .get("timestamp")
            .and_then(crate::clock::parse_timestamp);
        Ok(Alert {
            label,
            confidence,
            event_id,
            timestamp,
            rtstream_id: env.rtstream_id,
            data: env.data,
        })
    }
}

/// Longest label kept in a topic level; longer ones are cut (on a char boundary).
pub const MAX_TOPIC_LABEL_BYTES: usize = crate::topic::MAX_LEVEL_BYTES;

/// Makes `label` safe as one MQTT topic level: `/`, `+`, `#`, NUL, other control characters and
/// Unicode non-characters become `_`; an empty result becomes `_`; overlong labels are cut
/// ([`crate::topic::sanitize_level`]).
pub fn sanitize_topic_level(label: &str) -> String {
    crate::topic::sanitize_level(label)
}

/// How an alert reached the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Websocket,
    Webhook,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Websocket => "websocket",
            Via::Webhook => "webhook",
        }
    }
}

/// The payload the queue stores for one message: where it goes (topic below the prefix), how it
/// arrived, and the JSON body without the `relay` object. The queue adds `seq` and the accept
/// time; [`QueuedMessage::render`] splices them in at publish time without re-serialising.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    pub topic_suffix: String,
    pub via: Via,
    /// A JSON object, serialised.
    pub body: Vec<u8>,
}

/// A best-effort channel message on its way from the source to the publisher, never queued:
/// topic below the prefix, payload (the JSON body with its `relay` object).
pub type LiveMessage = (String, Vec<u8>);

/// Record payload version, so that a future layout can still read old queues.
const RECORD_V1: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("queued record payload is malformed: {0}")]
pub struct DecodeError(&'static str);

/// `data` with `rtstream_id` added, serialised as one object in the map's own key order,
/// without copying the map (a deep clone cost a dozen allocations per alert).
struct WithStreamId<'a> {
    data: &'a Map<String, Value>,
    /// Set only when `data` has no `rtstream_id` of its own.
    stream_id: Option<&'a str>,
}

impl serde::Serialize for WithStreamId<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        const KEY: &str = "rtstream_id";
        let extra = usize::from(self.stream_id.is_some());
        let mut map = ser.serialize_map(Some(self.data.len() + extra))?;
        let mut pending = self.stream_id;
        for (k, v) in self.data {
            if let Some(id) = pending.filter(|_| k.as_str() > KEY) {
                map.serialize_entry(KEY, id)?;
                pending = None;
            }
            map.serialize_entry(k, v)?;
        }
        if let Some(id) = pending {
            map.serialize_entry(KEY, id)?;
        }
        map.end()
    }
}

impl QueuedMessage {
    /// Builds the queued form of an alert: topic `alerts/{sanitised label}`, body = `data`
    /// verbatim plus `rtstream_id` when known.
    pub fn from_alert(alert: &Alert, via: Via) -> QueuedMessage {
        let stream_id = alert
            .rtstream_id
            .as_deref()
            .filter(|_| !alert.data.contains_key("rtstream_id"));
        let body = WithStreamId {
            data: &alert.data,
            stream_id,
        };
        // Serialising a Map<String, Value> cannot fail.
        let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        QueuedMessage {
            topic_suffix: format!("alerts/{}", sanitize_topic_level(&alert.label)),
            via,
            body,
        }
    }

    /// `[version u8][via u8][topic len u16 LE][topic][body]`.
    pub fn encode(&self) -> Vec<u8> {
        let t = self.topic_suffix.as_bytes();
        let t = &t[..t.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(4 + t.len() + self.body.len());
        out.push(RECORD_V1);
        out.push(match self.via {
            Via::Websocket => 0,
            Via::Webhook => 1,
        });
        out.extend_from_slice(&(t.len() as u16).to_le_bytes());
        out.extend_from_slice(t);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<QueuedMessage, DecodeError> {
        if bytes.len() < 4 {
            return Err(DecodeError("shorter than its header"));
        }
        if bytes[0] != RECORD_V1 {
            return Err(DecodeError("unknown record version"));
        }
        let via = match bytes[1] {
            0 => Via::Websocket,
            1 => Via::Webhook,
            _ => return Err(DecodeError("unknown `via`")),
        };
        let tlen = u16::from_le_bytes([bytes[2], bytes[3]]) as usize;
        let topic = bytes
            .get(4..4 + tlen)
            .ok_or(DecodeError("topic runs past the end"))?;
        let topic_suffix = std::str::from_utf8(topic)
            .map_err(|_| DecodeError("topic is not UTF-8"))?
            .to_owned();
        let body = bytes[4 + tlen..].to_vec();
        if body.first() != Some(&b'{') || body.last() != Some(&b'}') {
            return Err(DecodeError("body is not a JSON object"));
        }
        Ok(QueuedMessage {
            topic_suffix,
            via,
            body,
        })
    }

    /// The MQTT payload: the body with `"relay": {"seq", "received_at", "via"}` appended.
    pub fn render(&self, seq: u64, received_at_us: u64) -> Vec<u8> {
        let relay = format!(
            "\"relay\":{{\"seq\":{seq},\"received_at\":\"{}\",\"via\":\"{}\"}}}}",
            crate::clock::rfc3339_micros(received_at_us),
            self.via.as_str()
        );
        let mut out = Vec::with_capacity(self.body.len() + relay.len() + 1);
        let inner = &self.body[..self.body.len() - 1]; // without the closing brace
        out.extend_from_slice(inner);
        if inner.iter().rev().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            out.push(b',');
        }
        out.extend_from_slice(relay.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stream_id_is_added_in_key_order_exactly_as_a_map_insert_would() {
        let cases = [
            json!({"label": "a", "zeta": 1, "alpha": [1, 2], "s": "x\"y"}),
            json!({"label": "a"}),
            json!({"z": {"nested": true}}),
            json!({"label": "a", "rtstream_id": "own"}),
            json!({}),
        ];
        for data in cases {
            let Value::Object(data) = data else {
                panic!("object")
            };
            for stream in [None, Some("rts-1")] {
                let alert = Alert {
                    label: "a".into(),
                    confidence: Confidence::Missing,
                    event_id: None,
                    timestamp: None,
                    rtstream_id: stream.map(str::to_owned),
                    data: data.clone(),
                };
                let mut expected = data.clone();
                if let Some(id) = stream {
                    expected
                        .entry("rtstream_id")
                        .or_insert_with(|| Value::String(id.into()));
                }
                let expected = serde_json::to_vec(&expected).expect("json");
                assert_eq!(
                    String::from_utf8_lossy(
                        &QueuedMessage::from_alert(&alert, Via::Websocket).body
                    ),
                    String::from_utf8_lossy(&expected)
                );
            }
        }
    }

    fn envelope(v: Value) -> Envelope {
        match parse_frame(&v.to_string()) {
            Ok(Frame::Envelope(e)) => e,
            other => panic!("expected an envelope, got {other:?}"),
        }
    }

    #[test]
    fn first_message_is_the_connection_id() {
        assert_eq!(
            parse_frame(r#"{"connection_id":"c-1"}"#),
            Ok(Frame::Hello {
                connection_id: "c-1".into()
            })
        );
    }

    #[test]
    fn the_connection_id_is_read_from_any_first_frame() {
        for (frame, id) in [
            (r#"{"connection_id":"c1"}"#, Some("c1")),
            (r#"{"type":"connected","connection_id":"c1"}"#, Some("c1")),
            (
                r#"{"channel":"alert","connection_id":"c2","data":{}}"#,
                Some("c2"),
            ),
            (r#"{"connection_id":42}"#, Some("42")),
            (r#"{"connection_id":""}"#, None),
            (r#"{"connection_id":null}"#, None),
            (r#"{"type":"connected"}"#, None),
            ("connected", None),
            ("[1]", None),
        ] {
            assert_eq!(connection_id_of(frame.as_bytes()).as_deref(), id, "{frame}");
        }
        // A plain numeric hello later on is still a hello.
        assert_eq!(
            parse_frame(r#"{"connection_id":7}"#),
            Ok(Frame::Hello {
                connection_id: "7".into()
            })
        );
    }

    #[test]
    fn event_keyed_frames_name_their_channel_and_keep_the_event() {
        let e = envelope(
            json!({"event": "capture_session.active", "capture_session_id": "cs-1", "rtstream_id": "rt1"}),
        );
        assert_eq!(e.channel, "capture_session");
        assert_eq!(e.rtstream_id.as_deref(), Some("rt1"));
        assert_eq!(e.data.get("event"), Some(&json!("capture_session.active")));
        assert_eq!(e.data.get("capture_session_id"), Some(&json!("cs-1")));
        let e = envelope(json!({"event": "capture_session.stopped", "data": {"id": "cs-1"}}));
        assert_eq!(e.channel, "capture_session");
        assert_eq!(e.data.get("event"), Some(&json!("capture_session.stopped")));
        assert_eq!(e.data.get("id"), Some(&json!("cs-1")));
        // `channel` wins over `event` when both are there.
        let e = envelope(json!({"channel": "alert", "event": "x.y", "data": {"label": "l"}}));
        assert_eq!(e.channel, "alert");
        assert!(!e.data.contains_key("event"));
    }

    #[test]
    fn aliases_fold_and_binary_json_parses() {
        assert_eq!(
            envelope(json!({"channel": "spoken_index", "data": {}})).channel,
            "audio_index"
        );
        assert_eq!(
            envelope(json!({"type": "visual_index", "data": {}})).channel,
            "scene_index"
        );
        let bytes = br#"{"channel":"transcript","data":{"text":"hi"}}"#;
        assert!(
            matches!(parse_frame_bytes(bytes), Ok(Frame::Envelope(e)) if e.channel == "transcript")
        );
        assert!(matches!(
            parse_frame_bytes(&[0xff, 0x00, 0x10]),
            Err(FrameError::InvalidJson(_))
        ));
    }

    #[test]
    fn channel_is_read_leniently() {
        for key in ["channel", "type", "event_type"] {
            let e = envelope(json!({ key: "alert", "data": {"label": "x"} }));
            assert_eq!(e.channel, "alert");
        }
        let e = envelope(json!({"channel": "visual_index", "rtstream_id": "rt1", "data": {}}));
        assert_eq!(e.channel, "scene_index");
        assert_eq!(e.rtstream_id.as_deref(), Some("rt1"));
    }

    #[test]
    fn bad_frames_are_classified() {
        assert!(matches!(
            parse_frame("not json"),
            Err(FrameError::InvalidJson(_))
        ));
        assert_eq!(parse_frame("[1,2]"), Err(FrameError::NotAnObject));
        assert_eq!(parse_frame(r#"{"data":{}}"#), Err(FrameError::NoChannel));
        assert_eq!(
            parse_frame(r#"{"channel":"alert","data":5}"#),
            Err(FrameError::DataNotObject)
        );
    }

    #[test]
    fn alert_fields_parse_loosely_and_keep_unknowns() {
        let e = envelope(json!({"channel": "alert", "data": {
            "event_id": "ev1", "event_label": "intrusion", "confidence": "0.9",
            "timestamp": 1_735_732_800_000u64, "triggered": true}}));
        let a = Alert::from_envelope(e).expect("alert");
        assert_eq!(a.label, "intrusion");
        assert_eq!(a.confidence, Confidence::Valid(0.9));
        assert!(a.timestamp.is_some());
        assert_eq!(a.data.get("triggered"), Some(&json!(true)));
    }

    #[test]
    fn out_of_range_confidence_is_invalid_not_fatal() {
        for c in [json!(1.5), json!(-0.1), json!("NaN"), json!([1])] {
            let e = envelope(json!({"channel": "alert", "data": {"label": "x", "confidence": c}}));
            assert_eq!(
                Alert::from_envelope(e).expect("alert").confidence,
                Confidence::Invalid
            );
        }
    }

    #[test]
    fn alert_without_label_is_rejected() {
        let e = envelope(json!({"channel": "alert", "data": {"event_id": "e"}}));
        assert_eq!(Alert::from_envelope(e), Err(AlertError::NoLabel));
        let e = envelope(json!({"channel": "alert", "data": {"label": 7}}));
        assert_eq!(Alert::from_envelope(e), Err(AlertError::LabelNotString));
    }

    #[test]
    fn hostile_labels_are_sanitised() {
        assert_eq!(sanitize_topic_level("a/b+c#d"), "a_b_c_d");
        assert_eq!(sanitize_topic_level("x\u{0}y\n"), "x_y_");
        assert_eq!(sanitize_topic_level(""), "_");
        assert_eq!(
            sanitize_topic_level(&"é".repeat(200)).len(),
            MAX_TOPIC_LABEL_BYTES
        );
    }

    #[test]
    fn queued_message_round_trips_and_renders_relay_object() {
        let e = envelope(json!({"channel": "alert", "rtstream_id": "rt9",
            "data": {"event_id": "ev1", "label": "fire/smoke", "confidence": 0.95, "x": {"y": 1}}}));
        let a = Alert::from_envelope(e).expect("alert");
        let q = QueuedMessage::from_alert(&a, Via::Websocket);
        assert_eq!(q.topic_suffix, "alerts/fire_smoke");
        let back = QueuedMessage::decode(&q.encode()).expect("decode");
        assert_eq!(back, q);
        let payload: Value =
            serde_json::from_slice(&back.render(42, 1_764_236_400_000_000)).expect("json");
        assert_eq!(payload["label"], "fire/smoke");
        assert_eq!(payload["x"]["y"], 1);
        assert_eq!(payload["rtstream_id"], "rt9");
        assert_eq!(payload["relay"]["seq"], 42);
        assert_eq!(payload["relay"]["via"], "websocket");
        assert_eq!(
            payload["relay"]["received_at"],
            "2025-11-27T09:40:00.000000Z"
        );
    }

    #[test]
    fn render_handles_an_empty_body() {
        let q = QueuedMessage {
            topic_suffix: "alerts/x".into(),
            via: Via::Webhook,
            body: b"{}".to_vec(),
        };
        let v: Value = serde_json::from_slice(&q.render(1, 0)).expect("json");
        assert_eq!(v["relay"]["via"], "webhook");
    }
}
