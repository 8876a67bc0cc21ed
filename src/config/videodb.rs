//! VideoDB mode of `[source]` (no `source.url`): the REST API, its key and the alerts bound
//! to every new connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::source::{RawSource, MIN_TIMEOUT};
use super::units::bounded;
use super::{checks, invalid, print, secret, ConfigError, Secret, SecretSource, DEFAULT_QUEUE_DIR};

#[derive(Debug, Clone, Serialize)]
pub struct VideoDbConfig {
    /// REST base, without a trailing `/`.
    #[serde(serialize_with = "print::url")]
    pub api_url: String,
    #[serde(skip)]
    pub api_key: Secret,
    /// Where the key came from, for error messages and `check-config`.
    #[serde(flatten, serialize_with = "secret::print_api_key")]
    pub api_key_from: SecretSource,
    pub collection_id: String,
    pub alerts: Vec<AlertBinding>,
    /// The ids of the alerts this relay created, so they can be disabled after a reconnect
    /// or a restart.
    pub state_file: PathBuf,
    /// How long to wait before retrying after the API rejected the key (401/403) or the
    /// request (other 4xx): such errors do not fix themselves, so retry slowly.
    #[serde(serialize_with = "print::duration")]
    pub auth_retry: Duration,
    /// Bounds every REST call (connect, TLS, request, response).
    #[serde(serialize_with = "print::duration")]
    pub request_timeout: Duration,
}

/// One `[[source.alerts]]` entry: an event to bind, on one index of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertBinding {
    pub rtstream_id: String,
    pub index_id: String,
    pub event_id: String,
    /// Also deliver this alert as a webhook (dual delivery).
    #[serde(serialize_with = "print::opt_url")]
    pub callback_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlertBinding {
    rtstream_id: String,
    index_id: String,
    event_id: String,
    callback_url: Option<String>,
}

/// VideoDB's ids are short tokens; keeping them to this alphabet means they can go into URL
/// paths without escaping.
fn is_api_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks an id given on the command line or in the config (same rules as the config).
pub fn check_api_id(key: &str, value: &str) -> Result<(), ConfigError> {
    if is_api_id(value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{value:?} is not an id (1-128 letters, digits, - _ .)"),
        ))
    }
}

/// The environment variable the VideoDB SDKs read the key from.
pub const DEFAULT_API_KEY_ENV: &str = "VIDEO_DB_API_KEY";

pub(super) fn validate_videodb(
    s: &RawSource,
    queue_dir: Option<&Path>,
) -> Result<VideoDbConfig, ConfigError> {
    let api_url = s
        .api_url
        .clone()
        .unwrap_or_else(|| "https://api.videodb.io".into());
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        return Err(invalid(
            "source.api_url",
            "must start with https:// or http://",
        ));
    }
    if let Some(why) = checks::url_host_problem(&api_url) {
        return Err(invalid("source.api_url", why));
    }
    let api_url = api_url.trim_end_matches('/').to_string();
    let api_key_from = SecretSource::from_keys(
        "source",
        "api_key",
        s.api_key_env.clone(),
        s.api_key_file.clone(),
    )?
    .unwrap_or_else(|| SecretSource::Env(DEFAULT_API_KEY_ENV.into()));
    let api_key = api_key_from.read().map_err(|why| {
        let hint = match api_key_from {
            SecretSource::Env(_) => {
                " (VideoDB mode needs the API key; or set source.api_key_file, or source.url \
                 for generic mode)"
            }
            SecretSource::File(_) => "",
        };
        invalid(
            api_key_from.key("source", "api_key"),
            format!("{why}{hint}"),
        )
    })?;
    let collection_id = s.collection_id.clone().unwrap_or_else(|| "default".into());
    check_api_id("source.collection_id", &collection_id)?;
    let mut alerts = Vec::new();
    for (i, a) in s.alerts.iter().enumerate() {
        let key = |k: &str| format!("source.alerts[{i}].{k}");
        check_api_id(&key("rtstream_id"), &a.rtstream_id)?;
        check_api_id(&key("index_id"), &a.index_id)?;
        check_api_id(&key("event_id"), &a.event_id)?;
        if let Some(u) = &a.callback_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return Err(invalid(
                    key("callback_url"),
                    "must start with https:// or http://",
                ));
            }
            if let Some(why) = checks::url_host_problem(u) {
                return Err(invalid(key("callback_url"), why));
            }
        }
        let b = AlertBinding {
            rtstream_id: a.rtstream_id.clone(),
            index_id: a.index_id.clone(),
            event_id: a.event_id.clone(),
            callback_url: a.callback_url.clone(),
        };
        if alerts.contains(&b) {
            return Err(invalid(key("event_id"), "this binding is listed twice"));
        }
        alerts.push(b);
    }
    let state_file = s.state_file.clone().unwrap_or_else(|| {
        queue_dir
            .unwrap_or(Path::new(DEFAULT_QUEUE_DIR))
            .parent()
            .unwrap_or(Path::new("."))
            .join("videodb-alerts.json")
    });
    let auth_retry = bounded(
        "source.auth_retry",
        s.auth_retry,
        Duration::from_secs(300),
        Duration::from_secs(1)..,
        "must be at least 1s",
    )?;
    let request_timeout = bounded(
        "source.request_timeout",
        s.request_timeout,
        Duration::from_secs(15),
        MIN_TIMEOUT..,
        "must be at least 100ms",
    )?;
    Ok(VideoDbConfig {
        api_url,
        api_key,
        api_key_from,
        collection_id,
        alerts,
        state_file,
        auth_retry,
        request_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    #[test]
    fn generic_and_videodb_keys_do_not_mix() {
        let e = err_of("[source]\nurl = \"ws://x/\"\napi_url = \"https://api.example\"\n");
        assert!(e.contains("source.api_url"), "{e}");
        let e = err_of(
            "[source]\nurl = \"ws://x/\"\n[[source.alerts]]\nrtstream_id = \"a\"\nindex_id = \"b\"\nevent_id = \"c\"\n",
        );
        assert!(e.contains("source.alerts"), "{e}");
        let e = err_of("[source]\napi_key_env = \"ALERT_RELAY_TEST_UNSET_VAR\"\n");
        assert!(
            e.contains("source.api_key_env") && e.contains("ALERT_RELAY_TEST_UNSET_VAR"),
            "{e}"
        );
    }

    #[test]
    fn videodb_key_comes_from_a_file_and_is_never_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write_file(dir.path(), "key", "sk-very-secret\n");
        let text = format!(
            "[source]\napi_key_file = \"{}\"\n[[source.alerts]]\nrtstream_id = \"rt1\"\nindex_id = \"ix1\"\nevent_id = \"ev1\"\n[queue]\ndir = \"/srv/relay/queue\"\n",
            key.display()
        );
        let cfg = Config::parse(&text).expect("videodb config");
        let SourceMode::VideoDb(v) = &cfg.source.mode else {
            panic!("expected VideoDB mode");
        };
        assert_eq!(v.api_key.expose(), "sk-very-secret");
        assert_eq!(v.api_url, "https://api.videodb.io");
        assert_eq!(v.collection_id, "default");
        assert_eq!(
            v.state_file,
            PathBuf::from("/srv/relay/videodb-alerts.json")
        );
        assert_eq!(v.auth_retry, Duration::from_secs(300));
        assert_eq!(cfg.source.ping_interval, Duration::from_secs(20));
        assert_eq!(cfg.source.pong_timeout, Duration::from_secs(10));
        // The printed form is itself a valid config.
        let again = assert_secret_hidden(&cfg, "sk-very-secret");
        assert!(matches!(again.source.mode, SourceMode::VideoDb(_)));

        let e = err_of(&format!(
            "{text}[[source.alerts]]\nrtstream_id = \"r/t\"\nindex_id = \"i\"\nevent_id = \"e\"\n"
        ));
        assert!(e.contains("source.alerts[1].rtstream_id"), "{e}");
    }

    #[test]
    fn example_config_videodb_block_parses_when_uncommented() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = write_file(dir.path(), "key", "k");
        let mut text = String::new();
        let mut in_block = false;
        for line in include_str!("../../config/example.toml").lines() {
            in_block = (in_block || line.starts_with("# --- VideoDB mode"))
                && !line.starts_with("# --- Both modes");
            let setting = line
                .strip_prefix("# ")
                .filter(|r| in_block && (r.contains(" = ") || r.starts_with("[[")));
            match setting {
                _ if line.starts_with("url = ") => {}
                Some(r) if r.starts_with("api_key_env") => {}
                Some(r) if r.starts_with("api_key_file") => {
                    text.push_str(&format!("api_key_file = {:?}\n", key.display().to_string()))
                }
                Some(r) => text.push_str(&format!("{r}\n")),
                None => text.push_str(&format!("{line}\n")),
            }
        }
        let cfg = Config::parse(&text).expect("the VideoDB block of config/example.toml");
        let SourceMode::VideoDb(v) = cfg.source.mode else {
            panic!("expected VideoDB mode");
        };
        assert_eq!(v.alerts.len(), 1);
        assert_eq!(v.api_url, "https://api.videodb.io");
    }
}
