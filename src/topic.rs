//! What MQTT and mosquitto accept in a topic name and a UTF-8 string, and how input is made to
//! fit. Pure.
//!
//! MQTT (3.1.1 §1.5.3, 5.0 §1.5.4) topic names are UTF-8 without U+0000, 1 to 65535 bytes;
//! `+` and `#` are wildcards, forbidden in a name; `/` separates levels. Mosquitto goes
//! further (`mosquitto_validate_utf8`): it answers "malformed packet" and closes the connection
//! for any control character (U+0001–U+001F, U+007F–U+009F) and any Unicode non-character
//! (U+FDD0–U+FDEF and every code point ending in FFFE or FFFF, U+1FFFE included). Surrogates
//! cannot occur in a Rust `str`. MQTT 5 user properties are UTF-8 strings under the same rules.

use std::borrow::Cow;

/// Longest topic level made from input; longer ones are cut on a char boundary. Labels and
/// stream ids are short names; this keeps a hostile one from making topics unwieldy for
/// consumers (and well inside the 65535-byte topic limit).
pub const MAX_LEVEL_BYTES: usize = 128;
/// MQTT's limit on a topic name (a two-byte length prefix).
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// A code point mosquitto refuses in any UTF-8 string: NUL, control characters, and Unicode
/// non-characters.
pub fn refused_char(c: char) -> bool {
    let u = c as u32;
    c.is_control() || (0xFDD0..=0xFDEF).contains(&u) || (u & 0xFFFE) == 0xFFFE
}

/// Makes `input` one safe topic level: `/`, `+`, `#` and every [`refused_char`] become `_`; an
/// empty result becomes `_`; more than [`MAX_LEVEL_BYTES`] is cut.
pub fn sanitize_level(input: &str) -> String {
    replaced(
        input,
        |c| matches!(c, '/' | '+' | '#') || refused_char(c),
        MAX_LEVEL_BYTES,
    )
}

/// The last guard before a topic goes on the wire (records queued by an older version, a
/// topic suffix from anywhere): refused characters and wildcards become `_`, empty becomes
/// `_`, and it is cut to [`MAX_TOPIC_BYTES`]. Level separators are kept.
pub fn safe_topic(topic: &str) -> Cow<'_, str> {
    let refused = |c: char| matches!(c, '+' | '#') || refused_char(c);
    if !topic.is_empty() && topic.len() <= MAX_TOPIC_BYTES && !topic.chars().any(refused) {
        return Cow::Borrowed(topic);
    }
    Cow::Owned(replaced(topic, refused, MAX_TOPIC_BYTES))
}

/// `input` with every character `refused` says no to made `_`, cut at a character boundary
/// to at most `max` bytes; `_` when nothing is left.
fn replaced(input: &str, refused: impl Fn(char) -> bool, max: usize) -> String {
    let mut out = String::with_capacity(input.len().min(max));
    for c in input.chars() {
        let c = if refused(c) { '_' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// `s` as an MQTT 5 UTF-8 string (a user property): refused characters become U+FFFD.
pub fn mqtt_string(s: &str) -> Cow<'_, str> {
    if s.chars().any(refused_char) {
        Cow::Owned(
            s.chars()
                .map(|c| if refused_char(c) { '\u{FFFD}' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_characters_and_controls_are_refused_and_the_rest_is_not() {
        for c in [
            '\0',
            '\u{1}',
            '\n',
            '\u{7F}',
            '\u{85}',
            '\u{9F}',
            '\u{FDD0}',
            '\u{FDEF}',
            '\u{FFFE}',
            '\u{FFFF}',
            '\u{1FFFE}',
            '\u{1FFFF}',
            '\u{10FFFF}',
        ] {
            assert!(refused_char(c), "{:X}", c as u32);
        }
        for c in [
            ' ',
            'a',
            '$',
            'é',
            '\u{A0}',
            '\u{FDCF}',
            '\u{FDF0}',
            '\u{FFFD}',
            '\u{1F600}',
            '\u{10FFFD}',
            '\u{E000}',
        ] {
            assert!(!refused_char(c), "{:X}", c as u32);
        }
    }

    #[test]
    fn hostile_levels_become_safe() {
        assert_eq!(sanitize_level("fire\u{FFFF}\u{FDD0}\u{1FFFE}"), "fire___");
        assert_eq!(sanitize_level("a/b+c#d"), "a_b_c_d");
        assert_eq!(sanitize_level(""), "_");
        assert_eq!(sanitize_level(&"😀".repeat(100)).len(), 128);
    }

    #[test]
    fn the_wire_guard_keeps_levels_and_bounds_length() {
        assert!(matches!(safe_topic("a/b/c"), Cow::Borrowed(_)));
        assert_eq!(safe_topic("a/\u{FFFF}/#"), "a/_/_");
        assert_eq!(safe_topic(""), "_");
        let long = "x".repeat(70_000);
        assert_eq!(safe_topic(&long).len(), MAX_TOPIC_BYTES);
        assert_eq!(mqtt_string("ok\u{0}\u{FDD0}"), "ok\u{FFFD}\u{FFFD}");
    }
}
