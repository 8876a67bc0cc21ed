//! Configuration: raw TOML structs (`deny_unknown_fields`) validated once into a typed
//! [`Config`].
//!
//! Owns: parsing durations and byte sizes, defaults, and every "is this value sensible" check.
//! Never does: I/O beyond reading the config file and secret files it names; never logs or
//! prints a secret ([`Config::redacted_toml`] is the only printable form).
//!
//! Every error names the key (`queue.max_bytes`, `gpio.rules[1].output`) and the reason.
//!
//! Layout: one file per section (`source`, `videodb`, `queue`, `mqtt`, `gpio`, `pattern`,
//! `http`), each holding its raw struct, its typed struct (whose `Serialize` is how
//! `check-config` prints it), its validation and its tests, so a new key touches one file.
//! `secret` reads every secret by one rule, `units` parses durations and sizes and bounds
//! values, `print` writes the TOML; this file ties the sections into [`Config`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod checks;
mod gpio;
mod http;
mod identity;
mod mqtt;
mod pattern;
mod pieces;
mod print;
mod queue;
mod rule;
mod secret;
mod sections;
mod source;
mod units;
mod videodb;

use pieces::{deserialize_pieces, load_in_pieces, OneRule};

pub use gpio::{
    AckButton, GpioBackendKind, GpioConfig, OutputConfig, OutputKind, DEFAULT_ACK_DEBOUNCE,
};
pub use http::{
    HttpConfig, DEFAULT_HTTP_MAX_BODY_BYTES, DEFAULT_HTTP_MAX_CONNECTIONS,
    DEFAULT_HTTP_REQUEST_TIMEOUT,
};
pub use mqtt::{MqttConfig, MqttProtocol, MqttTls, Qos};
pub use pattern::{parse_pattern, pattern_from_json, Pattern, MIN_PATTERN_STEP};
pub use print::redact_url;
pub use queue::{FsyncPolicy, OnFull, QueueConfig, DEFAULT_QUEUE_DIR};
pub use rule::{Labels, QuietWindow, RuleConfig, RuleLimits};
pub use secret::{Secret, SecretSource};
pub use source::{
    SourceConfig, SourceMode, TlsConfig, DEFAULT_MAX_FRAME_BYTES, RELAYABLE_CHANNELS,
};
pub use units::{fmt_duration, parse_duration};
pub use videodb::{check_api_id, AlertBinding, VideoDbConfig, DEFAULT_API_KEY_ENV};

use gpio::{validate_gpio, RawGpio};
use http::{validate_http, RawHttp};
use mqtt::{validate_mqtt, RawMqtt};
use queue::{validate_queue, RawQueue};
use rule::RawRule;
use source::{validate_source, RawSource};

/// A config error: which key, and why. `alert-relay` exits with status 2 on one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The validated configuration, one field per section.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub source: SourceConfig,
    pub queue: QueueConfig,
    pub mqtt: MqttConfig,
    #[serde(serialize_with = "gpio::print_gpio")]
    pub gpio: GpioConfig,
    /// `None` when `[http] listen` is absent: no HTTP server.
    pub http: Option<HttpConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    source: RawSource,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    gpio: RawGpio,
    #[serde(default)]
    http: RawHttp,
}

impl Config {
    /// Reads and validates the config file at `path`.
    ///
    /// The file is read line by line, never whole, when `sections` can cut it (see
    /// [`Config::parse`]); otherwise, and for every error, it is read and parsed whole.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if let Some(result) = load_in_pieces(path) {
            return result;
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    ///
    /// The `[[gpio.rules]]` tables are parsed one at a time when `sections` can cut the text
    /// (memory: toml's document costs ~9 KiB a rule); any doubt, and every error, goes through
    /// the whole-text parse, so what is accepted and what each error says is the same either way.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        if let Some(pieces) = sections::split(text) {
            if let Some(raw) = deserialize_pieces(&pieces) {
                let rules = pieces
                    .rules
                    .iter()
                    .map(|p| deserialize::<OneRule>(p).map(|mut one| one.gpio.rules.remove(0)));
                return validate(raw, rules);
            }
        }
        let mut raw: RawConfig = deserialize(text)?;
        let rules = raw.gpio.rules.take().unwrap_or_default();
        validate(raw, rules.into_iter().map(Ok))
    }

    /// The resolved config as TOML, for `check-config`. Secrets never appear in it: each
    /// shows where it comes from (see `print`).
    pub fn redacted_toml(&self) -> String {
        print::to_toml(self, &["source", "queue", "mqtt", "gpio", "http"])
    }
}

/// Deserializes TOML text; the error names the key path and the line.
fn deserialize<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        // toml's message carries the line and a caret; keep its first line compact.
        let reason = inner.message().to_string();
        let line = inner
            .span()
            .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        invalid(
            if key == "." {
                "(top level)".into()
            } else {
                key
            },
            format!("{reason}{line}"),
        )
    })
}

fn validate(
    raw: RawConfig,
    rules: impl ExactSizeIterator<Item = Result<RawRule, ConfigError>>,
) -> Result<Config, ConfigError> {
    let source = validate_source(raw.source, raw.queue.dir.as_deref())?;
    let queue = validate_queue(raw.queue)?;
    let mqtt = validate_mqtt(raw.mqtt)?;
    let gpio = validate_gpio(raw.gpio, rules)?;
    let http = validate_http(raw.http)?;
    Ok(Config {
        source,
        queue,
        mqtt,
        gpio,
        http,
    })
}

#[cfg(test)]
const MINIMAL: &str = "[source]\nurl = \"ws://127.0.0.1:1/\"\n";

#[cfg(test)]
fn err_of(text: &str) -> String {
    match Config::parse(text) {
        Ok(_) => panic!("config should have been rejected:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// Writes `text` to the file `name` in `dir` (a test's secret, CA or config file) and
/// returns its path.
#[cfg(test)]
fn write_file(dir: &Path, name: impl AsRef<Path>, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The config must be refused, with an error that names `key`.
#[cfg(test)]
fn assert_refused_naming(text: &str, key: &str) {
    let e = err_of(text);
    assert!(e.contains(key), "expected {key} in {e:?}");
}

/// `secret` shows neither in `check-config`'s print nor in `Debug`, and the print parses
/// back; returns what it parses to.
#[cfg(test)]
fn assert_secret_hidden(cfg: &Config, secret: &str) -> Config {
    for shown in [cfg.redacted_toml(), format!("{cfg:?}")] {
        assert!(!shown.contains(secret), "{shown}");
    }
    Config::parse(&cfg.redacted_toml()).expect("check-config's print parses back")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_the_contract() {
        let text = include_str!("../../config/example.toml");
        let cfg = Config::parse(text).expect("config/example.toml must stay valid");
        assert_eq!(cfg.mqtt.topic_prefix, "alert-relay");
        assert_eq!(cfg.queue.fsync, FsyncPolicy::Batch);
        assert!(!cfg.gpio.outputs.is_empty());
        assert!(!cfg.gpio.rules.is_empty());
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let cfg = Config::parse(MINIMAL).expect("minimal config");
        assert_eq!(cfg.mqtt.port, 1883);
        assert_eq!(cfg.mqtt.qos, Qos::AtLeastOnce);
        assert_eq!(cfg.queue.on_full, OnFull::DropOldest);
        assert_eq!(cfg.gpio.backend, GpioBackendKind::None);
        assert_eq!(cfg.source.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err_of(&format!("{MINIMAL}[queue]\nmax_bytez = 5\n"));
        assert!(e.contains("max_bytez"), "{e}");
        assert!(e.contains("queue"), "{e}");
    }

    #[test]
    fn configs_that_cannot_work_are_refused_naming_the_key() {
        let gpio = |backend: &str, outputs: &str| {
            format!("{MINIMAL}[gpio]\nbackend = \"{backend}\"\n{outputs}")
        };
        let out = |name: &str, hw: &str| format!("[[gpio.outputs]]\nname = \"{name}\"\n{hw}\n");
        let cases: Vec<(String, &str, &[&str])> = vec![
            (
                gpio(
                    "rppal",
                    &(out("red", "pin = 17") + &out("horn", "pin = 17")),
                ),
                "gpio.outputs[1].pin",
                &["\"red\"", "\"horn\"", "pin 17"],
            ),
            (
                gpio(
                    "sim",
                    &(out("a", "pin = 4") + &out("b", "pin = 5") + &out("c", "pin = 4")),
                ),
                "gpio.outputs[2].pin",
                &["\"a\"", "\"c\""],
            ),
            (
                gpio(
                    "cdev",
                    &(out("a", "line = \"GPIO17\"") + &out("b", "line = \"GPIO17\"")),
                ),
                "gpio.outputs[1].line",
                &["\"a\"", "\"b\"", "GPIO17"],
            ),
            (
                gpio(
                    "cdev",
                    &(out("a", "chip = \"gpiochip0\"\noffset = 3")
                        + &out("b", "chip = \"gpiochip0\"\noffset = 3")),
                ),
                "gpio.outputs[1].offset",
                &["\"a\"", "\"b\""],
            ),
            (
                gpio(
                    "rppal",
                    &(out("a", "pin = 5") + "[gpio.ack_button]\npin = 5\n"),
                ),
                "gpio.ack_button.pin",
                &["\"a\"", "ack button"],
            ),
            (
                format!("{MINIMAL}[mqtt]\ntopic_prefix = \"$SYS/x\"\n"),
                "mqtt.topic_prefix",
                &["$"],
            ),
            (
                format!("{MINIMAL}[mqtt]\ntopic_prefix = \"a/+/b\"\n"),
                "mqtt.topic_prefix",
                &["wildcard"],
            ),
            (format!("{MINIMAL}[mqtt]\nport = 0\n"), "mqtt.port", &[]),
            (
                "[source]\nurl = \"ws://\"\n".to_string(),
                "source.url",
                &["no host"],
            ),
            (
                "[source]\nurl = \"ws://:9000/x\"\n".to_string(),
                "source.url",
                &["no host"],
            ),
            (
                "[source]\napi_url = \"https://\"\n".to_string(),
                "source.api_url",
                &["no host"],
            ),
            (
                gpio(
                    "sim",
                    &(out("r", "")
                        + "[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\nmax_age = \"0s\"\n"),
                ),
                "gpio.rules[0].max_age",
                &["zero"],
            ),
        ];
        for (text, key, words) in cases {
            let e = err_of(&text);
            assert!(e.contains(key), "{key} not named in {e:?} for\n{text}");
            for w in words {
                assert!(e.contains(w), "{w} missing in {e:?}");
            }
        }
        // Distinct hardware is fine, and sim outputs without any pin are not duplicates.
        let ok = gpio(
            "sim",
            &(out("a", "") + &out("b", "") + &out("c", "pin = 4")),
        );
        Config::parse(&ok).expect("distinct outputs");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[source]\nurl = \"http://x\"\n", "source.url"),
            (&format!("{MINIMAL}[queue]\nfsync = \"sometimes\"\n"), "queue.fsync"),
            (&format!("{MINIMAL}[queue]\nmax_bytes = \"12 parsecs\"\n"), "queue.max_bytes"),
            (&format!("{MINIMAL}[mqtt]\nqos = 3\n"), "mqtt.qos"),
            (&format!("{MINIMAL}[mqtt]\ntopic_prefix = \"a/#\"\n"), "mqtt.topic_prefix"),
            (
                &format!("{MINIMAL}[gpio]\nbackend = \"sim\"\n[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"nope\"\n"),
                "gpio.rules[0].output",
            ),
            (
                &format!("{MINIMAL}[gpio]\nbackend = \"sim\"\n[[gpio.outputs]]\nname = \"r\"\n[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\npattern = {{ kind = \"blink\", on = \"1s\" }}\n"),
                "gpio.rules[0].pattern.off",
            ),
            (
                &format!("{MINIMAL}[gpio]\nbackend = \"sim\"\n[[gpio.outputs]]\nname = \"r\"\n[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\nmissing_confidence = \"maybe\"\n"),
                "gpio.rules[0].missing_confidence",
            ),
            (
                &format!("{MINIMAL}[gpio]\nbackend = \"rppal\"\n[[gpio.outputs]]\nname = \"r\"\n"),
                "gpio.outputs[0].pin",
            ),
        ];
        for (text, key) in cases {
            assert_refused_naming(text, key);
        }
    }

    /// The old way: the whole text as one toml document.
    fn parse_whole(text: &str) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = deserialize(text)?;
        let rules = raw.gpio.rules.take().unwrap_or_default();
        validate(raw, rules.into_iter().map(Ok))
    }

    /// `Config::parse` (pieces in memory), `Config::load` (pieces read from the file) and the
    /// whole-document parse must agree, accepted or refused, on layouts that are cut and on
    /// ones that are not.
    #[test]
    fn rules_parsed_in_pieces_match_the_whole_document() {
        let example = include_str!("../../config/example.toml");
        let head = "[source]\nurl = \"ws://127.0.0.1:1/\"\n[gpio]\nbackend = \"sim\"\n\
                    [[gpio.outputs]]\nname = \"r\"\n";
        let rule =
            |extra: &str| format!("[[gpio.rules]]\nlabels = [\"a\"]\noutput = \"r\"\n{extra}");
        let texts = [
            example.to_string(),
            format!("{head}{}{}", rule("name = \"x\"\n"), rule("cooldown = \"5s\"\n")),
            // A sub-table of a rule, a header after the rules, a rule at the end without "\n".
            format!(
                "{head}{}[gpio.rules.pattern]\nkind = \"blink\"\non = \"1s\"\noff = \"1s\"\ncount = 2\n\
                 [mqtt]\nport = 1884\n{}",
                rule(""),
                rule("priority = 3").trim_end()
            ),
            // Tricky text that is not a header.
            format!("{head}{}quiet_hours = [\n  \"22:00-06:00\",\n] # [[gpio.rules]]\n", rule("")),
            // Refused: an unknown key in the second rule, a bad value, a duplicate name.
            format!("{head}{}{}", rule(""), rule("colour = 1\n")),
            format!("{head}{}{}", rule(""), rule("cooldown = 5\n")),
            format!("{head}{}{}", rule("name = \"n\"\n"), rule("name = \"n\"\n")),
            // Refused by toml: an inline list and tables both, a rules table that is no list.
            format!("{head}rules = []\n{}", rule("")),
            format!("{head}[gpio.rules]\nlabels = [\"a\"]\n"),
            // Not cut here (a rule's sub-table away from its rule): the whole parse decides.
            format!("{head}{}[mqtt]\n[gpio.rules.pattern]\nkind = \"solid\"\nduration = \"1s\"\n", rule("")),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let shown = |r: Result<Config, ConfigError>| match r {
            Ok(c) => format!("ok: {} rules\n{}", c.gpio.rules.len(), c.redacted_toml()),
            Err(e) => format!("error: {e}"),
        };
        for (i, text) in texts.iter().enumerate() {
            let path = write_file(dir.path(), format!("{i}.toml"), text);
            let whole = shown(parse_whole(text));
            assert_eq!(shown(Config::parse(text)), whole, "parse of\n{text}");
            let loaded = shown(Config::load(&path)).replace(&path.display().to_string(), "");
            assert_eq!(
                loaded,
                whole.replace(&path.display().to_string(), ""),
                "load of\n{text}"
            );
        }
        assert!(shown(Config::parse(&texts[4])).contains("colour"));
        assert!(shown(Config::parse(&texts[6])).contains("gpio.rules[1].name"));
        assert!(shown(Config::parse(&texts[7])).starts_with("error"));
    }

    #[test]
    fn redaction_hides_url_tokens() {
        assert_eq!(
            redact_url("wss://user:pw@rt.example/ws?token=abc"),
            "wss://<redacted>@rt.example/ws?<redacted>"
        );
        let cfg =
            Config::parse("[source]\nurl = \"wss://rt.example/ws?token=s3cret\"\n").expect("cfg");
        assert!(!cfg.redacted_toml().contains("s3cret"));
    }
}
