//! Checks that refuse configs which parse but cannot work: two outputs on one pin or line, a
//! topic prefix the broker will not take, a URL without a host. Pure functions over the typed
//! config pieces; `validate` calls them and turns their message into the key's error.

use super::{AckButton, OutputConfig};

/// Why a URL is unusable, or `None` when it has a host (and, if given, a port above zero).
/// `url` must already start with one of `schemes` (the caller checked the scheme).
pub fn url_host_problem(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return Some(format!("{url:?} has an unclosed [ in its host")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Some(format!("{url:?} has no host"));
    }
    match port.map(str::parse::<u16>) {
        Some(Ok(0)) => Some(format!("{url:?} has port 0")),
        Some(Err(_)) => Some(format!(
            "{url:?} has a port that is not a number up to 65535"
        )),
        _ => None,
    }
}

/// Why `prefix` cannot be the root of the relay's topics, or `None`. `$` topics are the
/// broker's own (`$SYS`): mosquitto refuses publishing there; `+` and `#` are wildcards, not
/// allowed in a topic name; an empty level (`a//b`, a leading or trailing `/`) is legal MQTT
/// but almost always a typo and breaks `{prefix}/cmd/#` matching for consumers.
pub fn topic_prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.is_empty() {
        Some("must not be empty")
    } else if prefix.starts_with('$') {
        Some("must not start with $ (topics starting with $ belong to the broker, e.g. $SYS)")
    } else if prefix.contains(['+', '#']) {
        Some("must not contain the wildcards + or #")
    } else if prefix.chars().any(|c| c.is_control()) {
        Some("must not contain NUL or control characters")
    } else if prefix.split('/').any(str::is_empty) {
        Some("must not start or end with / or contain an empty level (//)")
    } else if prefix.len() > MAX_TOPIC_PREFIX_BYTES {
        Some("must be at most 256 bytes (room is needed for the levels below it)")
    } else {
        None
    }
}

/// Longest topic prefix: leaves most of the topic budget to the levels under it.
pub const MAX_TOPIC_PREFIX_BYTES: usize = 256;

/// The hardware an output or the ack button claims, as the backends address it.
#[derive(Debug, PartialEq, Eq)]
enum Claim<'a> {
    Pin(u8),
    Line(&'a str),
    ChipOffset(&'a str, u32),
}

impl std::fmt::Display for Claim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Pin(p) => write!(f, "pin {p}"),
            Claim::Line(l) => write!(f, "line {l:?}"),
            Claim::ChipOffset(c, o) => write!(f, "chip {c:?} offset {o}"),
        }
    }
}

fn claims<'a>(
    pin: Option<u8>,
    line: Option<&'a str>,
    chip: Option<&'a str>,
    offset: Option<u32>,
) -> Vec<Claim<'a>> {
    let mut v = Vec::new();
    v.extend(pin.map(Claim::Pin));
    v.extend(line.map(Claim::Line));
    if let (Some(c), Some(o)) = (chip, offset) {
        v.push(Claim::ChipOffset(c, o));
    }
    v
}

/// The first pin, line or chip offset used twice: `(key of the second user, message naming
/// both)`. Two outputs on one pin fight over it (rppal and cdev refuse the second request at
/// start; the sim backend would silently merge them).
pub fn duplicate_hardware(
    outputs: &[OutputConfig],
    ack: Option<&AckButton>,
) -> Option<(String, String)> {
    let mut seen: Vec<(Claim<'_>, String)> = Vec::new();
    let mut users: Vec<(String, String, Vec<Claim<'_>>)> = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            (
                format!("gpio.outputs[{i}]"),
                format!("output {:?}", o.name),
                claims(o.pin, o.line.as_deref(), o.chip.as_deref(), o.offset),
            )
        })
        .collect();
    if let Some(b) = ack {
        users.push((
            "gpio.ack_button".to_string(),
            "the ack button".to_string(),
            claims(b.pin, b.line.as_deref(), b.chip.as_deref(), b.offset),
        ));
    }
    for (key, who, cs) in users {
        for c in cs {
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == c) {
                let field = match c {
                    Claim::Pin(_) => "pin",
                    Claim::Line(_) => "line",
                    Claim::ChipOffset(..) => "offset",
                };
                return Some((
                    format!("{key}.{field}"),
                    format!("{c} is used by both {first} and {who}"),
                ));
            }
            seen.push((c, who.clone()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_a_host_or_with_port_zero_are_refused() {
        for bad in [
            "ws://",
            "ws:///path",
            "wss://:443/x",
            "ws://user@/x",
            "ws://host:0/",
            "ws://host:99999/",
            "ws://[::1/",
            "https://?q",
        ] {
            assert!(url_host_problem(bad).is_some(), "{bad} accepted");
        }
        for good in [
            "ws://h",
            "wss://api.example:8443/ws?token=x",
            "ws://u:p@10.0.0.1:80/",
            "ws://[::1]:9000/",
            "http://localhost",
        ] {
            assert_eq!(url_host_problem(good), None, "{good}");
        }
    }

    #[test]
    fn broker_and_wildcard_prefixes_are_refused() {
        for bad in [
            "$SYS/x", "$share", "a/+/b", "a#", "", "/a", "a/", "a//b", "a\u{7}",
        ] {
            assert!(topic_prefix_problem(bad).is_some(), "{bad:?} accepted");
        }
        assert!(topic_prefix_problem(&"p".repeat(257)).is_some());
        for good in ["alert-relay", "site/3/relay", "a$b", "ünïcode"] {
            assert_eq!(topic_prefix_problem(good), None, "{good}");
        }
    }
}
