//! Secrets (API key, header values, MQTT password, webhook token): never shown by `Debug`,
//! logs or `check-config`, and read the same way wherever they come from.
//!
//! One rule for every secret given as `{name}_env` or `{name}_file` (`source.api_key_*`,
//! `mqtt.password_*`, `http.token_*`): surrounding whitespace, including the newline that
//! `echo secret > file` leaves, is not part of it, and a secret that is empty after that is an
//! error naming where it came from.

use std::fmt;
use std::path::PathBuf;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::{invalid, ConfigError};

/// A secret string (API key, header value, MQTT password, webhook token): never printed by
/// `Debug`, logs or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Printed (`check-config`) as `<redacted>`, like `Debug`.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Where a secret is read from: `{name}_env = "VAR"` or `{name}_file = "PATH"`. This, never the
/// secret, is what `check-config` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
            SecretSource::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl SecretSource {
    /// The source named by the keys `{section}.{name}_env` and `{section}.{name}_file`, if one
    /// is set; both is an error.
    pub(super) fn from_keys(
        section: &str,
        name: &str,
        env: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Option<SecretSource>, ConfigError> {
        match (env, file) {
            (Some(_), Some(_)) => Err(invalid(
                format!("{section}.{name}_file"),
                format!("give either {name}_env or {name}_file, not both"),
            )),
            (Some(var), None) => Ok(Some(SecretSource::Env(var))),
            (None, Some(path)) => Ok(Some(SecretSource::File(path))),
            (None, None) => Ok(None),
        }
    }

    /// The key that names this source: `{section}.{name}_env` or `{section}.{name}_file`.
    pub(super) fn key(&self, section: &str, name: &str) -> String {
        match self {
            SecretSource::Env(_) => format!("{section}.{name}_env"),
            SecretSource::File(_) => format!("{section}.{name}_file"),
        }
    }

    /// Reads the secret: trimmed of surrounding whitespace, never empty. The error is the
    /// reason, for the caller to put under its key.
    pub(super) fn read(&self) -> Result<Secret, String> {
        let text = match self {
            SecretSource::Env(var) => std::env::var(var)
                .map_err(|_| format!("environment variable {var} is not set (or not UTF-8)"))?,
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        };
        let secret = text.trim();
        if secret.is_empty() {
            return Err(format!("{self} is empty"));
        }
        Ok(Secret(secret.to_string()))
    }

    /// [`SecretSource::read`] with the error under this source's key.
    pub(super) fn read_for(&self, section: &str, name: &str) -> Result<Secret, ConfigError> {
        self.read()
            .map_err(|why| invalid(self.key(section, name), why))
    }
}

/// `{name}_env = "VAR"` or `{name}_file = "PATH"`: how a flattened source field prints.
fn print_as<S: Serializer>(
    name: &str,
    from: Option<&SecretSource>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(None)?;
    match from {
        Some(SecretSource::Env(var)) => map.serialize_entry(&format!("{name}_env"), var)?,
        Some(SecretSource::File(path)) => map.serialize_entry(&format!("{name}_file"), path)?,
        None => {}
    }
    map.end()
}

pub(super) fn print_api_key<S: Serializer>(from: &SecretSource, s: S) -> Result<S::Ok, S::Error> {
    print_as("api_key", Some(from), s)
}

pub(super) fn print_password<S: Serializer>(
    from: &Option<SecretSource>,
    s: S,
) -> Result<S::Ok, S::Error> {
    print_as("password", from.as_ref(), s)
}

pub(super) fn print_token<S: Serializer>(
    from: &Option<SecretSource>,
    s: S,
) -> Result<S::Ok, S::Error> {
    print_as("token", from.as_ref(), s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    /// The one trim rule, for every secret key, from a file and from the environment.
    #[test]
    fn every_secret_is_trimmed_the_same_way_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, text: &str| {
            let p = write_file(dir.path(), name, text);
            p.display().to_string()
        };
        let secret = "  s3cret-0123456789abcdef \r\n";
        let trimmed = "s3cret-0123456789abcdef";
        std::env::set_var("ALERT_RELAY_SECRET_TEST_PADDED", secret);
        std::env::set_var("ALERT_RELAY_SECRET_TEST_EMPTY", " \n");
        let padded = file("padded", secret);
        let empty = file("empty", "\r\n");
        type Get = fn(&Config) -> Option<&str>;
        let keys: [(&str, &str, Get); 3] = [
            (
                "[source]\napi_key_{} = {:?}\n",
                "source.api_key_",
                |c| match &c.source.mode {
                    SourceMode::VideoDb(v) => Some(v.api_key.expose()),
                    SourceMode::Generic { .. } => None,
                },
            ),
            (
                "[source]\nurl = \"ws://h/\"\n[mqtt]\nusername = \"u\"\npassword_{} = {:?}\n",
                "mqtt.password_",
                |c| c.mqtt.password.as_ref().map(Secret::expose),
            ),
            (
                "[source]\nurl = \"ws://h/\"\n[http]\nlisten = \"1\"\ntoken_{} = {:?}\n",
                "http.token_",
                |c| c.http.as_ref()?.token.as_ref().map(Secret::expose),
            ),
        ];
        for (template, key, get) in keys {
            let text = |kind: &str, value: &str| {
                template
                    .replacen("{}", kind, 1)
                    .replacen("{:?}", &format!("{value:?}"), 1)
            };
            for (kind, good, bad) in [
                (
                    "env",
                    "ALERT_RELAY_SECRET_TEST_PADDED",
                    "ALERT_RELAY_SECRET_TEST_EMPTY",
                ),
                ("file", padded.as_str(), empty.as_str()),
            ] {
                let cfg = Config::parse(&text(kind, good)).expect("config");
                assert_eq!(get(&cfg), Some(trimmed), "{key}{kind}");
                let e = err_of(&text(kind, bad));
                assert!(e.contains(&format!("{key}{kind}")), "{e}");
                assert!(e.contains(bad) && e.contains("is empty"), "{e}");
            }
        }
    }
}
