//! Wall-clock helpers: RFC 3339 formatting and lenient timestamp parsing.
//!
//! Pure functions over `SystemTime`, except that a timestamp without a UTC offset is read in
//! the device's local time zone, loaded once (`TZ`, else /etc/localtime, else UTC). Kept here
//! rather than pulling in a date crate because the relay needs exactly two things: print UTC
//! timestamps and read the timestamp shapes upstream sends.
//!
//! # What a timestamp may be ([`parse_timestamp`])
//! - A number of seconds, milliseconds, microseconds or nanoseconds since the Unix epoch, told
//!   apart by magnitude: below 1e11 seconds, below 1e14 milliseconds, below 1e17 microseconds,
//!   below 1e20 nanoseconds. Each band reads every date from 1973-03-03 to the year 5138 in its
//!   own unit, so a current time in any of the four units is read right; a unit can only be
//!   mistaken for a date outside that span, and then always for a *later* band's unit, which
//!   makes the alert look older (a 1972 value in ms would read as seconds in the far future,
//!   but no real alert is from 1972). Fractions are allowed.
//! - The same number as a JSON string (`"1735732800000"`, `"1735732800.5"`).
//! - ISO 8601 / RFC 3339 text, `YYYY-MM-DD[T ]HH:MM:SS[.fff]` with `Z`, `±HH:MM` or `±HHMM`.
//!   Without an offset the time is *naive*: it is read as the device's local time (the same
//!   zone quiet hours use), because a sender that omits the offset writes its own wall clock,
//!   and a camera or NVR on site shares the device's zone. In a DST gap or overlap the offset
//!   before the change is used.
//! - Anything else is *unknown* (`None`), deterministically: negative numbers, NaN, numbers of
//!   1e20 and above, dates before 1970 or after 9999, malformed text. An unknown timestamp is
//!   treated like a missing one (the rules use the receive time, dedup compares the raw text).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Microseconds since the Unix epoch (0 for times before it, `u64::MAX` past year 586 912).
pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `SystemTime` from microseconds since the Unix epoch.
pub fn from_unix_micros(us: u64) -> SystemTime {
    // u64::MAX µs is ~584 000 years: always representable (SystemTime holds i64 seconds).
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

/// Latest instant a timestamp may name: the end of year 9999 (ISO 8601's four-digit years).
/// Epoch numbers stay below 1e11 s (year 5138) by construction.
const MAX_SECS: u64 = 253_402_300_799;

/// The epoch-number bands: a number below `limit` counts `ns_per_unit` nanoseconds a unit.
const BANDS: [(u64, u64); 4] = [
    (100_000_000_000, 1_000_000_000), // seconds
    (100_000_000_000_000, 1_000_000), // milliseconds
    (100_000_000_000_000_000, 1_000), // microseconds
    (u64::MAX, 1),                    // nanoseconds (1e20 for fractional numbers)
];
/// Where the nanosecond band ends for numbers that are not integers (or exceed a u64).
const FLOAT_LIMIT: f64 = 1e20;

/// Parses an alert's `timestamp` (see the module doc for the shapes and units). `None` means
/// unknown: missing, malformed or out of range. Naive times are read in the device's zone.
pub fn parse_timestamp(v: &Value) -> Option<SystemTime> {
    parse_timestamp_in(v, &local_offset_at)
}

/// [`parse_timestamp`] with the zone given: `offset_at(t)` is the local UTC offset in seconds
/// at the UTC instant `t` (seconds since the epoch). Pure, for tests and fuzzing.
pub fn parse_timestamp_in(v: &Value, offset_at: &dyn Fn(i64) -> i64) -> Option<SystemTime> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) => from_epoch_int(u),
            None if n.is_i64() => None, // negative
            None => from_epoch_float(n.as_f64()?),
        },
        Value::String(s) => {
            let t = s.trim();
            from_epoch_text(t).or_else(|| parse_iso(t, Some(offset_at)))
        }
        _ => None,
    }
}

/// An epoch number written as text: digits, optionally a fraction and an exponent.
fn from_epoch_text(t: &str) -> Option<SystemTime> {
    let b = t.as_bytes();
    if !b.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return match t.parse::<u64>() {
            Ok(u) => from_epoch_int(u),
            // More digits than a u64 holds: far above every band.
            Err(_) => None,
        };
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    from_epoch_float(t.parse().ok()?)
}

fn from_epoch_int(u: u64) -> Option<SystemTime> {
    // Exact in integers; a u64 is below 1e20, so every product stays below 1e20 ns.
    let ns = BANDS
        .iter()
        .find(|(limit, _)| u < *limit)
        .map_or(1, |&(_, ns)| ns);
    from_nanos(u128::from(u) * u128::from(ns))
}

fn from_epoch_float(f: f64) -> Option<SystemTime> {
    // NaN is in no range and the infinities are outside this one; -0.0 is in it (the epoch).
    if !(0.0..FLOAT_LIMIT).contains(&f) {
        return None;
    }
    let ns = BANDS
        .iter()
        .find(|(limit, _)| f < *limit as f64)
        .map_or(1, |&(_, ns)| ns);
    // Whole units and the fraction apart, so a fraction of a second keeps its digits. Both
    // casts are in range: f < 1e20, and the fraction's nanoseconds are below `ns`.
    let whole = f.trunc() as u128 * u128::from(ns);
    from_nanos(whole + (f.fract() * ns as f64).round() as u128)
}

fn from_nanos(n: u128) -> Option<SystemTime> {
    let secs = u64::try_from(n / 1_000_000_000).ok()?;
    if secs > MAX_SECS {
        return None;
    }
    let nanos = (n % 1_000_000_000) as u32;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Parses `YYYY-MM-DD[T ]HH:MM:SS[.fff][Z|±HH:MM|±HHMM]`; no offset means UTC. (Alert
/// timestamps go through [`parse_timestamp`], which reads naive times in the local zone.)
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    parse_iso(s.trim(), None)
}

/// The ISO 8601 parser. A naive time is converted with `naive_zone`, or read as UTC without.
fn parse_iso(s: &str, naive_zone: Option<&dyn Fn(i64) -> i64>) -> Option<SystemTime> {
    let b = s.as_bytes();
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
    let offset_secs: Option<i64> = match b.get(i) {
        None => None,
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => Some(0),
        Some(&sign @ (b'+' | b'-')) => {
            // ASCII up to `i`, so `i + 1` is a char boundary.
            let digits: String = s[i + 1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let oh: i64 = digits[0..2].parse().ok()?;
            let om: i64 = digits[2..4].parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            Some(if sign == b'+' { off } else { -off })
        }
        _ => return None,
    };
    let local = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se;
    let secs = match (offset_secs, naive_zone) {
        (Some(off), _) => local - off,
        (None, Some(zone)) => naive_to_utc(local, zone),
        (None, None) => local,
    };
    let secs = u64::try_from(secs).ok().filter(|s| *s <= MAX_SECS)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos as u32))
}

/// The UTC instant of the local wall-clock reading `local` (seconds, as if it were UTC). In a
/// DST gap or overlap one of the two candidate offsets is used, always the same one.
fn naive_to_utc(local: i64, offset_at: &dyn Fn(i64) -> i64) -> i64 {
    let guess = local - offset_at(local);
    local - offset_at(guess)
}

/// The system's zone: the `TZ` variable when set (a zone name such as `America/New_York`, or
/// a POSIX TZ string), else /etc/localtime. (tz-rs's own `TimeZone::local` reads only
/// /etc/localtime.)
pub fn system_zone() -> Result<tz::TimeZone, tz::Error> {
    match std::env::var("TZ") {
        Ok(tz) if !tz.trim().is_empty() => tz::TimeZone::from_posix_tz(&tz),
        _ => tz::TimeZone::local(),
    }
}

/// The device's zone, read once (`None` = UTC).
fn local_zone() -> Option<&'static tz::TimeZone> {
    static ZONE: OnceLock<Option<tz::TimeZone>> = OnceLock::new();
    ZONE.get_or_init(|| match system_zone() {
        Ok(z) => Some(z),
        Err(e) => {
            log::warn!(
                "clock: cannot read the local time zone ({e}); naive timestamps are read as UTC"
            );
            None
        }
    })
    .as_ref()
}

/// The device's UTC offset in seconds at the UTC instant `utc_secs`.
pub fn local_offset_at(utc_secs: i64) -> i64 {
    local_zone()
        .and_then(|z| z.find_local_time_type(utc_secs).ok())
        .map(|l| i64::from(l.ut_offset()))
        .unwrap_or(0)
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
            "2025-01-01T00:00:00+24:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(parse_timestamp(&json!(-5)), None);
        assert_eq!(parse_timestamp(&json!(true)), None);
    }

    const UTC: &dyn Fn(i64) -> i64 = &|_| 0;

    fn at(v: serde_json::Value) -> Option<u64> {
        parse_timestamp_in(&v, UTC).map(unix_micros)
    }

    #[test]
    fn numbers_that_used_to_abort_the_daemon_are_unknown() {
        // Issue 13: 1.7e22 overflowed SystemTime, 1e25 and 1e300 overflowed Duration.
        for v in [
            json!(1.7e22),
            json!(1e25),
            json!(1e300),
            json!(f64::MAX),
            json!(1e20),
            json!("1e300"),
            json!("99999999999999999999999"),
            json!("NaN"),
            json!("inf"),
            json!("-1"),
            json!(-1.5),
            json!(i64::MIN),
        ] {
            assert_eq!(at(v.clone()), None, "{v}");
        }
        // Still inside the nanosecond band: a valid (future) time, not a crash.
        assert!(at(json!(u64::MAX)).is_some());
        assert!(at(json!(9.9e19)).is_some());
        assert_eq!(at(json!(-0.0)), Some(0));
    }

    #[test]
    fn epoch_numbers_are_read_by_magnitude_in_every_unit() {
        let s: u64 = 1_764_236_400; // 2025-11-27T09:40:00Z
        let us = s * 1_000_000;
        for v in [
            json!(s),
            json!(s * 1_000),
            json!(s * 1_000_000),
            json!(s * 1_000_000_000),
            json!(s as f64),
            json!((s * 1_000) as f64),
            json!((s * 1_000_000) as f64),
            json!((s * 1_000_000_000) as f64),
            json!(s.to_string()),
            json!((s * 1_000).to_string()),
            json!(format!(" {} ", s * 1_000_000)),
            json!((s * 1_000_000_000).to_string()),
            json!("1764236400.0"),
            json!("1.7642364e9"),
        ] {
            assert_eq!(at(v.clone()), Some(us), "{v}");
        }
        assert_eq!(at(json!(1_764_236_400.25)), Some(us + 250_000));
        assert_eq!(at(json!("1764236400250")), Some(us + 250_000));
    }

    #[test]
    fn band_edges_are_deterministic() {
        // The last second-count and the first millisecond-count.
        assert_eq!(at(json!(99_999_999_999u64)), Some(99_999_999_999_000_000));
        assert_eq!(at(json!(100_000_000_000u64)), Some(100_000_000_000_000));
        assert_eq!(at(json!(100_000_000_000_000u64)), Some(100_000_000_000_000));
        assert_eq!(
            at(json!(100_000_000_000_000_000u64)),
            Some(100_000_000_000_000)
        );
    }

    #[test]
    fn naive_times_are_local_and_offsets_win() {
        let utc = parse_rfc3339("2025-01-01T17:00:00Z").map(unix_micros);
        // New York in winter: UTC-5. A naive 12:00 there is 17:00 UTC.
        let new_york: &dyn Fn(i64) -> i64 = &|_| -5 * 3600;
        let naive = json!("2025-01-01T12:00:00");
        assert_eq!(parse_timestamp_in(&naive, new_york).map(unix_micros), utc);
        assert_eq!(
            at(naive),
            parse_rfc3339("2025-01-01T12:00:00Z").map(unix_micros)
        );
        // An explicit offset is never re-read in the local zone.
        let z = json!("2025-01-01T17:00:00Z");
        assert_eq!(parse_timestamp_in(&z, new_york).map(unix_micros), utc);
        // DST: Europe/Berlin-like zone switching from +1 to +2 at 01:00 UTC.
        let switch = parse_rfc3339("2025-03-30T01:00:00Z")
            .map(unix_micros)
            .unwrap_or(0) as i64
            / 1_000_000;
        let berlin = move |t: i64| if t < switch { 3600 } else { 7200 };
        let before = json!("2025-03-30T01:30:00");
        let after = json!("2025-03-30T04:00:00");
        let gap = json!("2025-03-30T02:30:00");
        assert_eq!(
            parse_timestamp_in(&before, &berlin).map(unix_micros),
            parse_rfc3339("2025-03-30T00:30:00Z").map(unix_micros)
        );
        assert_eq!(
            parse_timestamp_in(&after, &berlin).map(unix_micros),
            parse_rfc3339("2025-03-30T02:00:00Z").map(unix_micros)
        );
        assert!(parse_timestamp_in(&gap, &berlin).is_some());
    }

    #[test]
    fn iso_outside_1970_to_9999_is_unknown() {
        assert_eq!(at(json!("1969-12-31T23:59:59Z")), None);
        assert_eq!(at(json!("0000-01-01T00:00:00Z")), None);
        assert!(at(json!("9999-12-31T23:59:59Z")).is_some());
        assert_eq!(at(json!("9999-12-31T23:59:59-01:00")), None);
    }
}
