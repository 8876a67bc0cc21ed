//! `alert-relay alerts list|create|enable|disable` and `alert-relay events create`: managing
//! VideoDB alerts and events from the device, with the relay's own config (API URL, key, TLS),
//! for installers who set a device up by hand.
//!
//! Owns: argument-level choices (which stream and index a command is about) and the text the
//! commands print. Never does: print or log the API key; touch the relay's state file (alerts
//! made here are the installer's, and the running relay never disables them).

use crate::config::{check_api_id, AlertBinding, ConfigError, SourceConfig, SourceMode};

use super::videodb::{Api, ApiError};

#[derive(Debug, Clone, PartialEq)]
pub enum AdminCommand {
    /// List alerts on one stream/index, or on every one the config binds.
    AlertsList {
        target: Target,
    },
    /// Create an alert (delivered to `callback_url`; the relay binds its own socket alerts).
    AlertsCreate {
        target: Target,
        event_id: String,
        callback_url: Option<String>,
    },
    AlertsSetEnabled {
        target: Target,
        alert_id: String,
        enabled: bool,
    },
    EventsCreate {
        label: String,
        prompt: String,
    },
}

/// `--rtstream` / `--index`, when given; otherwise taken from `[[source.alerts]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    pub rtstream_id: Option<String>,
    pub index_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("alerts and events commands need VideoDB mode: remove source.url and give the API key (source.api_key_env or source.api_key_file)")]
    NotVideoDb,
    #[error("{0}")]
    Target(String),
    #[error(transparent)]
    Id(#[from] ConfigError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
}

/// Runs one command; returns the text to print on stdout.
pub async fn run(cfg: &SourceConfig, cmd: AdminCommand) -> Result<String, AdminError> {
    let SourceMode::VideoDb(v) = &cfg.mode else {
        return Err(AdminError::NotVideoDb);
    };
    let tls = super::tls::client_config(&cfg.tls)?;
    let api = Api::new(v, super::http::Client::new(tls, v.request_timeout));
    match cmd {
        AdminCommand::AlertsList { target } => {
            let pairs = targets(&v.alerts, &target)?;
            let mut out = String::from(
                "alert_id\tstatus\tevent_id\tlabel\tcallback_url\trtstream_id/index_id\n",
            );
            for (rt, idx) in pairs {
                for a in api.list_alerts(&rt, &idx).await? {
                    out.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\t{rt}/{idx}\n",
                        a.alert_id,
                        a.status,
                        a.event_id,
                        a.label,
                        if a.callback_url.is_empty() {
                            "-"
                        } else {
                            &a.callback_url
                        }
                    ));
                }
            }
            Ok(out)
        }
        AdminCommand::AlertsCreate {
            target,
            event_id,
            callback_url,
        } => {
            check_api_id("--event", &event_id)?;
            let (rt, idx) = one_target(&v.alerts, &target)?;
            let b = AlertBinding {
                rtstream_id: rt,
                index_id: idx,
                event_id,
                callback_url,
            };
            let id = api.create_alert(&b, None).await?;
            Ok(format!("{id}\n"))
        }
        AdminCommand::AlertsSetEnabled {
            target,
            alert_id,
            enabled,
        } => {
            check_api_id("ID", &alert_id)?;
            let (rt, idx) = one_target(&v.alerts, &target)?;
            api.set_alert_enabled(&rt, &idx, &alert_id, enabled).await?;
            Ok(format!(
                "alert {alert_id} {}\n",
                if enabled { "enabled" } else { "disabled" }
            ))
        }
        AdminCommand::EventsCreate { label, prompt } => {
            if label.trim().is_empty() || prompt.trim().is_empty() {
                return Err(AdminError::Target(
                    "--label and --prompt must not be empty".into(),
                ));
            }
            let id = api.create_event(&label, &prompt).await?;
            Ok(format!("{id}\n"))
        }
    }
}

fn one_target(bindings: &[AlertBinding], t: &Target) -> Result<(String, String), AdminError> {
    let mut pairs = targets(bindings, t)?;
    match pairs.len() {
        1 => Ok(pairs.remove(0)),
        n => Err(AdminError::Target(format!(
            "the config binds {n} stream/index pairs; say which with --rtstream ID --index ID"
        ))),
    }
}

/// The (rtstream, index) pairs a command is about: the ones given, filled in from the config.
fn targets(bindings: &[AlertBinding], t: &Target) -> Result<Vec<(String, String)>, AdminError> {
    if let Some(rt) = &t.rtstream_id {
        check_api_id("--rtstream", rt)?;
    }
    if let Some(idx) = &t.index_id {
        check_api_id("--index", idx)?;
    }
    if let (Some(rt), Some(idx)) = (&t.rtstream_id, &t.index_id) {
        return Ok(vec![(rt.clone(), idx.clone())]);
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for b in bindings {
        let matches = t.rtstream_id.as_ref().is_none_or(|r| *r == b.rtstream_id)
            && t.index_id.as_ref().is_none_or(|i| *i == b.index_id);
        let p = (b.rtstream_id.clone(), b.index_id.clone());
        if matches && !pairs.contains(&p) {
            pairs.push(p);
        }
    }
    if pairs.is_empty() {
        return Err(AdminError::Target(
            "no stream/index given and none in [[source.alerts]] matches: use --rtstream ID --index ID"
                .into(),
        ));
    }
    Ok(pairs)
}
