//! Wall-clock helpers: RFC 3339 formatting and lenient timestamp parsing.
//!
//! Pure functions over `SystemTime`; no I/O. Kept here rather than pulling in a date crate
//! because the relay needs exactly two things: print UTC timestamps and read the few
//! timestamp shapes upstream sends (ISO 8601 strings, epoch seconds, epoch milliseconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (0 for times before it).
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `SystemTime` from microseconds since the Unix epoch.
pub fn from_unix_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// Formats `us` (microseconds since the epoch) as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn rfc3339_micros(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let frac = us % 1_000_000;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Parses the timestamp shapes seen upstream into a `SystemTime`:
/// RFC 3339 / ISO 8601 strings (with `Z` or an offset, optional fraction), epoch seconds,
/// or epoch milliseconds (numbers above 1e11 are taken as milliseconds).
pub fn parse_timestamp(v: &serde_json::Value) -> Option<SystemTime> {
    match v {
        serde_json::Value::Number(n) => {
            let f = n.as_f64()?;
            if !f.is_finite() || f < 0.0 {
                return None;
            }
            let secs = if f > 1e11 { f / 1000.0 } else { f };
            Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
        }
        serde_json::Value::String(s) => parse_rfc3339(s),
        _ => None,
    }
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fff][Z|±HH:MM|±HHMM]`; no offset means UTC.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start).min(9)..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        None => 0,
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &s.trim()[i + 1..];
            let digits: String = rest.chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let oh: i64 = digits[0..2].parse().ok()?;
            let om: i64 = digits[2..4].parse().ok()?;
            let off = oh * 3600 + om * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(secs as u64, nanos as u32))
}

// Howard Hinnant's days-from-civil algorithms (public domain).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats_and_parses_round_trip() {
        let us = 1_764_236_400_123_456; // 2025-11-27T09:40:00.123456Z
        let s = rfc3339_micros(us);
        assert_eq!(s, "2025-11-27T09:40:00.123456Z");
        assert_eq!(parse_rfc3339(&s).map(unix_micros), Some(us));
    }

    #[test]
    fn parses_offsets_and_epoch_numbers() {
        let utc = parse_rfc3339("2025-01-01T12:00:00Z");
        assert_eq!(parse_rfc3339("2025-01-01T14:00:00+02:00"), utc);
        assert_eq!(parse_rfc3339("2025-01-01 07:00:00-0500"), utc);
        let secs = parse_timestamp(&json!(1_735_732_800));
        let millis = parse_timestamp(&json!(1_735_732_800_000u64));
        assert_eq!(secs, utc);
        assert_eq!(millis, utc);
    }

    #[test]
    fn rejects_garbage_timestamps() {
        for bad in [
            "",
            "yesterday",
            "2025-13-01T00:00:00Z",
            "2025-01-01T00:00:00Q",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(parse_timestamp(&json!(-5)), None);
        assert_eq!(parse_timestamp(&json!(true)), None);
    }
}
