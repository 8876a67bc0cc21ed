//! `[http]`: the listener for `POST /webhook`, `/healthz` and `/metrics`, and the webhook token.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{bounded, ByteSize, DurationStr};
use super::{invalid, print, secret, ConfigError, Secret, SecretSource};

/// The HTTP listener: `POST /webhook`, `GET /healthz`, `GET /metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    pub listen: std::net::SocketAddr,
    /// Shared webhook token; `None` turns `POST /webhook` off (404), leaving health and metrics.
    #[serde(skip)]
    pub token: Option<Secret>,
    /// Where the token came from, for `check-config` (`token_env = "NAME"` or `token_file = "PATH"`).
    #[serde(flatten, serialize_with = "secret::print_token")]
    pub token_from: Option<SecretSource>,
    /// Larger webhook bodies get 413 without being read.
    pub max_body_bytes: usize,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also the keep-alive idle limit) and,
    /// separately, its body: slow clients are cut off.
    #[serde(serialize_with = "print::duration")]
    pub request_timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: Option<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    max_body_bytes: Option<ByteSize>,
    max_connections: Option<usize>,
    request_timeout: Option<DurationStr>,
}

/// Default webhook body limit: a VideoDB alert is well under 2 KiB; 64 KiB matches the frame
/// limit of the socket path.
pub const DEFAULT_HTTP_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default connections at once: health checks, a Prometheus scraper and a few webhook
/// deliveries need a handful; each costs a task and a 16 KiB buffer at most.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 16;
/// Default time to send headers, and separately a body (slowloris bound).
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn validate_http(h: RawHttp) -> Result<Option<HttpConfig>, ConfigError> {
    let Some(listen) = h.listen else {
        let set = h.token_env.is_some()
            || h.token_file.is_some()
            || h.max_body_bytes.is_some()
            || h.max_connections.is_some()
            || h.request_timeout.is_some();
        if set {
            return Err(invalid(
                "http.listen",
                "is required when other [http] keys are set (absent = no HTTP server)",
            ));
        }
        return Ok(None);
    };
    // A bare port binds loopback only: exposing the webhook takes an explicit address.
    let listen = if listen.chars().all(|c| c.is_ascii_digit()) && !listen.is_empty() {
        format!("127.0.0.1:{listen}")
    } else {
        listen
    };
    let listen: std::net::SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "http.listen",
            format!("{listen:?} is not an address:port such as \"127.0.0.1:8787\""),
        )
    })?;
    let token_from = SecretSource::from_keys("http", "token", h.token_env, h.token_file)?;
    let token = token_from
        .as_ref()
        .map(|from| {
            let token = from.read_for("http", "token")?;
            // Short tokens can be guessed over the network.
            if token.expose().len() < 16 {
                return Err(invalid(
                    from.key("http", "token"),
                    "the token must be at least 16 characters",
                ));
            }
            Ok(token)
        })
        .transpose()?;
    let max_body_bytes = bounded(
        "http.max_body_bytes",
        h.max_body_bytes,
        DEFAULT_HTTP_MAX_BODY_BYTES,
        256..=1 << 20,
        "must be between 256 B and 1 MiB (the queue's record limit)",
    )?;
    let max_connections = bounded(
        "http.max_connections",
        h.max_connections,
        DEFAULT_HTTP_MAX_CONNECTIONS,
        1..=1024,
        "must be between 1 and 1024",
    )?;
    let request_timeout = bounded(
        "http.request_timeout",
        h.request_timeout,
        DEFAULT_HTTP_REQUEST_TIMEOUT,
        Duration::from_millis(100)..=Duration::from_secs(300),
        "must be between 100ms and 5m",
    )?;
    Ok(Some(HttpConfig {
        listen,
        token,
        token_from,
        max_body_bytes,
        max_connections,
        request_timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    #[test]
    fn http_is_off_unless_listen_is_set_and_a_bare_port_binds_loopback() {
        assert!(Config::parse(MINIMAL).expect("cfg").http.is_none());
        let cfg = Config::parse(&format!("{MINIMAL}[http]\nlisten = \"8787\"\n")).expect("cfg");
        let h = cfg.http.expect("http");
        assert_eq!(h.listen.to_string(), "127.0.0.1:8787");
        assert!(h.token.is_none(), "no token: the webhook is off");
        assert_eq!(h.max_body_bytes, DEFAULT_HTTP_MAX_BODY_BYTES);
        let e = err_of(&format!("{MINIMAL}[http]\nmax_connections = 4\n"));
        assert!(e.contains("http.listen"), "{e}");
    }

    #[test]
    fn http_token_comes_from_a_file_and_never_shows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(dir.path(), "token", "s3cret-token-0123456789\n");
        let text = format!(
            "{MINIMAL}[http]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
            path.display().to_string()
        );
        let cfg = Config::parse(&text).expect("cfg");
        let h = cfg.http.as_ref().expect("http");
        assert_eq!(
            h.token.as_ref().map(Secret::expose),
            Some("s3cret-token-0123456789")
        );
        assert_secret_hidden(&cfg, "s3cret");
    }

    #[test]
    fn bad_http_values_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = write_file(dir.path(), "short", "abc");
        let cases = [
            ("listen = \"localhost\"".to_string(), "http.listen"),
            (
                "listen = \"127.0.0.1:1\"\ntoken_env = \"ALERT_RELAY_TEST_UNSET_VAR_8\"".into(),
                "http.token_env",
            ),
            (
                format!(
                    "listen = \"127.0.0.1:1\"\ntoken_file = {:?}",
                    short.display().to_string()
                ),
                "http.token_file",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"".into(),
                "http.token_file",
            ),
            (
                "listen = \"127.0.0.1:1\"\nmax_body_bytes = \"2MiB\"".into(),
                "http.max_body_bytes",
            ),
            (
                "listen = \"127.0.0.1:1\"\nmax_connections = 0".into(),
                "http.max_connections",
            ),
            (
                "listen = \"127.0.0.1:1\"\nrequest_timeout = \"1ms\"".into(),
                "http.request_timeout",
            ),
            (
                "listen = \"127.0.0.1:1\"\nlisten_backlog = 5".into(),
                "listen_backlog",
            ),
        ];
        for (body, key) in cases {
            assert_refused_naming(&format!("{MINIMAL}[http]\n{body}\n"), key);
        }
    }
}
