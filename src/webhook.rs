//! The webhook payload and its authentication: what `POST /webhook` accepts, decided without
//! I/O.
//!
//! Owns: parsing a webhook body into an [`Alert`] (the alert `data` object itself, as VideoDB's
//! webhook sends it, or an envelope `{"channel"?, "rtstream_id"?, "data": {...}}`), reading the
//! token from the `X-Relay-Token` header or the `token` query parameter, and comparing it in
//! constant time. Never does: sockets, the queue, status codes ([`crate::http`] maps errors to
//! statuses).

use serde_json::{Map, Value};

use crate::alert::{Alert, AlertError, Envelope};

/// The header carrying the shared token.
pub const TOKEN_HEADER: &str = "x-relay-token";

/// Why a webhook body is not an alert. Each is a 400 with this message as the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body is JSON but not an object")]
    NotAnObject,
    #[error("envelope field `data` is not an object")]
    DataNotObject,
    #[error("envelope channel {0:?} is not \"alert\"")]
    NotAnAlert(String),
    #[error(transparent)]
    Alert(#[from] AlertError),
    /// The webhook is at-least-once (the sender retries until it gets a 200): an alert without
    /// the dedup key would be relayed, and sounded, once per retry.
    #[error("alert has no {}: a webhook alert needs `event_id` and `timestamp` so that a retried copy can be recognised (see README, Dedup)", .0.join(" and "))]
    NoDedupKey(Vec<&'static str>),
}

/// Parses a webhook body. An object with a `data` object and no label of its own is an
/// envelope; anything else is the alert's `data` itself. Unknown fields are kept verbatim.
pub fn parse_payload(body: &[u8]) -> Result<Alert, PayloadError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(PayloadError::NotAnObject);
    };
    let is_envelope =
        obj.contains_key("data") && !obj.contains_key("label") && !obj.contains_key("event_label");
    let text =
        |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let envelope = if is_envelope {
        if let Some(ch) = ["channel", "type", "event_type"]
            .iter()
            .find_map(|k| text(&obj, k))
        {
            if ch != "alert" {
                return Err(PayloadError::NotAnAlert(ch));
            }
        }
        let Some(Value::Object(data)) = obj.remove("data") else {
            return Err(PayloadError::DataNotObject);
        };
        Envelope {
            channel: "alert".into(),
            rtstream_id: text(&obj, "rtstream_id").or_else(|| text(&data, "rtstream_id")),
            rtstream_name: text(&obj, "rtstream_name"),
            data,
        }
    } else {
        Envelope {
            channel: "alert".into(),
            rtstream_id: text(&obj, "rtstream_id"),
            rtstream_name: text(&obj, "rtstream_name"),
            data: obj,
        }
    };
    let alert = Alert::from_envelope(envelope)?;
    let missing = crate::dedup::missing_key_fields(&alert);
    if !missing.is_empty() {
        return Err(PayloadError::NoDedupKey(missing));
    }
    Ok(alert)
}

/// The `token` parameter of a query string, percent-decoded. `None` when absent or malformed.
pub fn token_from_query(query: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| percent_decode(v)).flatten()
    })
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Compares `got` with `expected` in time that depends only on `expected`'s length: every byte
/// is looked at, with no early exit, so response timing does not reveal how much of a guess
/// was right.
pub fn token_matches(expected: &[u8], got: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != got.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ got.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Confidence;

    const VIDEODB_WEBHOOK: &str = r#"{"event_id":"event-4a1b","label":"intrusion","confidence":0.92,
        "explanation":"A person climbs the fence.","timestamp":"2026-01-10T08:15:30.123456+00:00",
        "start_time":1736496930.1,"end_time":1736496935.4,"stream_url":"rtsp://cam/1",
        "player_url":"https://console.videodb.io/player?url=x"}"#;

    #[test]
    fn videodb_webhook_body_is_the_alert_data_itself() {
        let a = parse_payload(VIDEODB_WEBHOOK.as_bytes()).expect("alert");
        assert_eq!(a.label, "intrusion");
        assert_eq!(a.event_id.as_deref(), Some("event-4a1b"));
        assert_eq!(a.confidence, Confidence::Valid(0.92));
        assert!(a.timestamp.is_some());
        assert_eq!(a.data.len(), 9, "every field kept verbatim");
    }

    #[test]
    fn an_envelope_is_accepted_too() {
        let body =
            format!(r#"{{"channel":"alert","rtstream_id":"rts-1","data":{VIDEODB_WEBHOOK}}}"#);
        let a = parse_payload(body.as_bytes()).expect("alert");
        assert_eq!(a.label, "intrusion");
        assert_eq!(a.rtstream_id.as_deref(), Some("rts-1"));
        let wrong = r#"{"channel":"transcript","data":{"text":"hi"}}"#;
        assert_eq!(
            parse_payload(wrong.as_bytes()).map(|_| ()),
            Err(PayloadError::NotAnAlert("transcript".into()))
        );
        assert_eq!(
            parse_payload(br#"{"data":[1]}"#).map(|_| ()),
            Err(PayloadError::DataNotObject)
        );
    }

    #[test]
    fn bad_bodies_say_why() {
        assert!(matches!(
            parse_payload(b"{not json"),
            Err(PayloadError::InvalidJson(_))
        ));
        assert_eq!(
            parse_payload(b"[1]").map(|_| ()),
            Err(PayloadError::NotAnObject)
        );
        assert_eq!(
            parse_payload(br#"{"event_id":"e"}"#).map(|_| ()),
            Err(PayloadError::Alert(AlertError::NoLabel))
        );
    }

    #[test]
    fn an_alert_that_cannot_be_deduplicated_is_refused_naming_the_fields() {
        // Issue 13 item 10: this body used to be answered 200, once per retry.
        let e = parse_payload(br#"{"label":"fire","confidence":0.9}"#).map(|_| ());
        assert_eq!(
            e,
            Err(PayloadError::NoDedupKey(vec!["event_id", "timestamp"]))
        );
        let msg = e.expect_err("refused").to_string();
        assert!(msg.contains("event_id and timestamp"), "{msg}");
        assert_eq!(
            parse_payload(br#"{"label":"fire","event_id":"ev"}"#).map(|_| ()),
            Err(PayloadError::NoDedupKey(vec!["timestamp"]))
        );
        let envelope = br#"{"channel":"alert","data":{"label":"fire","timestamp":1}}"#;
        assert_eq!(
            parse_payload(envelope).map(|_| ()),
            Err(PayloadError::NoDedupKey(vec!["event_id"]))
        );
    }

    #[test]
    fn token_comparison_needs_every_byte_and_the_length() {
        assert!(token_matches(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!token_matches(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!token_matches(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!token_matches(b"0123456789abcdef", b"0123456789abcdef0"));
        assert!(!token_matches(b"0123456789abcdef", b""));
    }

    #[test]
    fn token_is_read_from_the_query_string() {
        assert_eq!(
            token_from_query("a=1&token=x%2By+z"),
            Some(b"x+y z".to_vec())
        );
        assert_eq!(token_from_query("tokens=1"), None);
        assert_eq!(token_from_query("token=%zz"), None);
    }
}
