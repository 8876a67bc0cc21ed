//! Durations and byte sizes as the config writes them: `250ms`, `10s`, `5m`; `64KiB`, `4MiB`,
//! `500kB` or a bare byte count. A duration needs its unit, so nobody has to guess.

use std::ops::RangeBounds;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// A duration written as a string with a unit: `250ms`, `10s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy)]
pub(super) struct DurationStr(pub(super) Duration);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(DurationStr)
            .map_err(serde::de::Error::custom)
    }
}

/// A byte count: an integer, or a string with a unit (`64KiB`, `4MiB`, `1GiB`, `500kB`).
#[derive(Debug, Clone, Copy)]
pub(super) struct ByteSize(pub(super) u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(ByteSize(n)),
            Either::S(s) => parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl From<DurationStr> for Duration {
    fn from(d: DurationStr) -> Duration {
        d.0
    }
}

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl From<ByteSize> for usize {
    /// Saturating: on a 32-bit board a size above 4 GiB stays too large for the range checks.
    fn from(b: ByteSize) -> usize {
        usize::try_from(b.0).unwrap_or(usize::MAX)
    }
}

/// The names of a string enum of the config (`on_full = "drop_oldest"`) in one table, which
/// it deserializes from and serializes to through `String`: serde's derived enum visitors,
/// instantiated for each deserializer, cost several KiB of binary per enum, this a few bytes.
/// An alias follows the name it stands for; `name()` gives the first.
macro_rules! names {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl $ty {
            const NAMES: &'static [(&'static str, $ty)] = &[$(($name, $ty::$variant)),+];

            /// The name the config writes.
            pub fn name(self) -> &'static str {
                super::units::name_of(self, Self::NAMES)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = String;

            fn try_from(s: String) -> Result<$ty, String> {
                super::units::by_name(&s, Self::NAMES)
            }
        }

        impl From<$ty> for &'static str {
            fn from(v: $ty) -> &'static str {
                v.name()
            }
        }
    };
}
pub(super) use names;

pub(super) fn name_of<T: PartialEq>(value: T, names: &[(&'static str, T)]) -> &'static str {
    names
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("", |(n, _)| n)
}

/// The value named `s`, or serde's words for an unknown variant.
pub(super) fn by_name<T: Copy>(s: &str, names: &[(&'static str, T)]) -> Result<T, String> {
    match names.iter().find(|(n, _)| *n == s) {
        Some((_, v)) => Ok(*v),
        None => {
            let all: Vec<String> = names.iter().map(|(n, _)| format!("`{n}`")).collect();
            Err(format!(
                "unknown variant `{s}`, expected one of {}",
                all.join(", ")
            ))
        }
    }
}

/// A key's value, or `default` when it is absent, refused with `reason` unless it lies in
/// `range`: the one "default, then a range check" of every section.
pub(super) fn bounded<R: Into<T>, T: PartialOrd>(
    key: &str,
    value: Option<R>,
    default: T,
    range: impl RangeBounds<T>,
    reason: &str,
) -> Result<T, ConfigError> {
    Ok(bounded_opt(key, value, range, reason)?.unwrap_or(default))
}

/// [`bounded`] for a key without a default: absent stays `None`.
pub(super) fn bounded_opt<R: Into<T>, T: PartialOrd>(
    key: &str,
    value: Option<R>,
    range: impl RangeBounds<T>,
    reason: &str,
) -> Result<Option<T>, ConfigError> {
    match value.map(Into::into) {
        Some(v) if !range.contains(&v) => Err(invalid(key, reason)),
        v => Ok(v),
    }
}

/// The `backoff_initial` and `backoff_max` of `section`: the first above zero, the second at
/// least the first.
pub(super) fn backoff_pair(
    section: &str,
    initial: Option<DurationStr>,
    max: Option<DurationStr>,
    defaults: (Duration, Duration),
) -> Result<(Duration, Duration), ConfigError> {
    let initial = initial.map_or(defaults.0, Duration::from);
    let max = max.map_or(defaults.1, Duration::from);
    if initial.is_zero() || max < initial {
        return Err(invalid(
            format!("{section}.backoff_max"),
            format!("must be at least {section}.backoff_initial, which must be above zero"),
        ));
    }
    Ok((initial, max))
}

/// Parses `250ms`, `10s`, `5m`, `2h`, `1d`, also `1.5s`. A bare number is an error: the unit is
/// required so that nobody has to guess.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h, d)"))?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "duration {s:?} has unknown unit {other:?} (ms, s, m, h, d)"
            ))
        }
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(super) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} does not start with a number"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "size {s:?} has unknown unit {other:?} (B, KiB, MiB, GiB, kB, MB, GB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {s:?} is out of range"))
}

/// The shortest way to write `d` back (`check-config`): whole seconds as `Ns`, else `Nms`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 || ms == 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 fortnights").is_err());
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("500kB"), Ok(500_000));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn a_value_is_its_default_when_absent_and_refused_under_its_key_out_of_range() {
        let d = |ms| DurationStr(Duration::from_millis(ms));
        let min = Duration::from_millis(100)..;
        assert_eq!(
            bounded(
                "k",
                None::<DurationStr>,
                Duration::from_secs(1),
                min.clone(),
                "r"
            )
            .ok(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            bounded("k", Some(d(100)), Duration::ZERO, min.clone(), "r").ok(),
            Some(Duration::from_millis(100)),
            "the bound itself is in"
        );
        let e = bounded(
            "source.x",
            Some(d(99)),
            Duration::ZERO,
            min,
            "must be at least 100ms",
        );
        assert_eq!(
            e.map_err(|e| e.to_string()),
            Err("config key `source.x`: must be at least 100ms".to_string())
        );
        assert_eq!(bounded_opt("k", None::<u64>, 16u64.., "r").ok(), Some(None));
        assert!(bounded_opt("k", Some(15u64), 16u64.., "r").is_err());
        // A size that does not fit usize is too large, never wrapped around into range.
        let huge: usize = ByteSize(u64::MAX).into();
        assert_eq!(huge, usize::MAX);
        let e = backoff_pair("mqtt", Some(d(0)), None, (Duration::ZERO, Duration::ZERO));
        assert!(e.is_err_and(|e| e.to_string().contains("mqtt.backoff_max")));
    }
}
