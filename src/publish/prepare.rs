//! What one queue record becomes before it goes to the broker. Pure: no client, no queue.

use crate::alert::QueuedMessage;

/// The parts of a record an MQTT 5 publish or a Home Assistant event needs.
pub(super) struct RecordMeta {
    pub(super) label: Option<String>,
    pub(super) event_id: Option<String>,
}

pub(super) fn record_meta(msg: &QueuedMessage) -> RecordMeta {
    #[derive(serde::Deserialize)]
    struct Fields {
        label: Option<serde_json::Value>,
        event_label: Option<serde_json::Value>,
        event_id: Option<serde_json::Value>,
    }
    let text = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match serde_json::from_slice::<Fields>(&msg.body) {
        Ok(f) => RecordMeta {
            label: text(f.label).or_else(|| text(f.event_label)),
            event_id: text(f.event_id),
        },
        Err(_) => RecordMeta {
            label: None,
            event_id: None,
        },
    }
}
