//! `alert-relay alerts list|create|enable|disable|delete` and `alert-relay events create|list`:
//! managing VideoDB alerts and events from the device, with the relay's own config (API URL,
//! key, TLS), for installers who set a device up by hand. Whether an index is a v1 or a v2 one
//! is asked from the service for every command ([`Api::resolve`]), as the relay does.
//!
//! Owns: argument-level choices (which stream and index a command is about) and the text the
//! commands print. Never does: print or log the API key; touch the relay's state file (alerts
//! made here are the installer's, and the running relay never disables them).

use crate::config::{check_api_id, AlertBinding, ConfigError, SourceConfig, SourceMode};

use super::videodb::{Api, ApiError, IndexRef};

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
    /// Delete an alert; a service without delete (404/405) gets "disable it instead".
    AlertsDelete {
        target: Target,
        alert_id: String,
    },
    EventsCreate {
        label: String,
        prompt: String,
    },
    EventsList,
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
    Tls(#[from] crate::tls::TlsError),
}

/// Runs one command; returns the text to print on stdout.
pub async fn run(cfg: &SourceConfig, cmd: AdminCommand) -> Result<String, AdminError> {
    let SourceMode::VideoDb(v) = &cfg.mode else {
        return Err(AdminError::NotVideoDb);
    };
    let tls = crate::tls::client_config(&cfg.tls)?;
    let api = Api::new(v, super::rest::Client::new(tls, v.request_timeout));
    match cmd {
        AdminCommand::AlertsList { target } => {
            let pairs = targets(&v.alerts, &target)?;
            let mut out = String::from(
                "alert_id\tstatus\tevent_id\tlabel\tcallback_url\trtstream_id/index_id\n",
            );
            for (rt, idx) in pairs {
                let index = api.resolve(&rt, &idx).await?;
                for a in api.list_alerts(&index).await? {
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
            let index = one_index(&api, &v.alerts, &target).await?;
            let id = api
                .create_alert(&index, &event_id, callback_url.as_deref(), None)
                .await?;
            Ok(format!("{id}\n"))
        }
        AdminCommand::AlertsSetEnabled {
            target,
            alert_id,
            enabled,
        } => {
            check_api_id("ID", &alert_id)?;
            let index = one_index(&api, &v.alerts, &target).await?;
            api.set_alert_enabled(&index, &alert_id, enabled).await?;
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
        AdminCommand::AlertsDelete { target, alert_id } => {
            check_api_id("ID", &alert_id)?;
            let index = one_index(&api, &v.alerts, &target).await?;
            match api.delete_alert(&index, &alert_id).await {
                Ok(()) => Ok(format!("alert {alert_id} deleted\n")),
                Err(ApiError::Status {
                    status: status @ (404 | 405),
                    ..
                }) => Err(AdminError::Target(format!(
                    "the service answered HTTP {status} to deleting alert {alert_id}: it does not delete alerts (or has no such alert); disable it instead: alert-relay alerts disable {alert_id} --rtstream {} --index {}",
                    index.rtstream_id, index.index_id
                ))),
                Err(e) => Err(e.into()),
            }
        }
        AdminCommand::EventsList => {
            let mut out = String::from("event_id\tlabel\tprompt\n");
            for e in api.list_events().await? {
                out.push_str(&format!("{}\t{}\t{}\n", e.event_id, e.label, e.prompt));
            }
            Ok(out)
        }
    }
}

/// The one stream/index a command is about, with its kind asked from the service.
async fn one_index(
    api: &Api,
    bindings: &[AlertBinding],
    t: &Target,
) -> Result<IndexRef, AdminError> {
    let (rt, idx) = one_target(bindings, t)?;
    Ok(api.resolve(&rt, &idx).await?)
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
