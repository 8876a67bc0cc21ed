//! Config reload (SIGHUP, `systemctl reload`): the config file is read again and each stage
//! takes what changed in its own section, while the queue, the publishes in flight and the
//! WebSocket connection stay as they are unless their own keys changed.
//!
//! Owns: [`plan`] (pure: which sections changed, which keys need a restart) and [`Running`],
//! the stages of a running relay and how each is given a new config. Never does: parse or
//! validate the file ([`Config::load`] does, exactly as `check-config`), or touch the queue.
//!
//! What a reload does, section by section:
//! - An invalid file: the error is logged in the words `check-config` prints, and nothing
//!   changes.
//! - `[queue]` (every key), `http.listen`, `http.max_connections`, and turning `[http]` or GPIO
//!   (backend `none`, no outputs) on or off need a restart: they are named in one log line and
//!   kept as they were; the rest of the file is applied.
//! - Rules (quiet hours, cooldowns, `max_age`, ...): the next alert is decided by the new rules.
//!   A named rule keeps its arming (Home Assistant's switch) and, when its definition did not
//!   change, its cooldown. A pattern already running when its rule changes plays on to its end
//!   (or its output's `max_on`): it was started for an alert that matched then.
//! - Outputs, the backend, the ack button: the engine stops (every output to its safe state,
//!   pins released), the new outputs are opened and start in their safe state. Running
//!   patterns stop. If the new outputs cannot be opened, the old GPIO section is opened again
//!   and kept (logged). A snooze still running is applied again.
//! - `[mqtt]`: see [`crate::publish::reconfigure`] (most keys in place; connection keys
//!   reconnect).
//! - `[source]` (URL, headers, VideoDB key and bindings, TLS, timeouts) or the contents of its
//!   CA file: the source stops cleanly, then starts again with the new settings (a new
//!   connection; VideoDB alerts are bound to it as at start). Unchanged: untouched.
//! - `[http]`: the webhook token, `max_body_bytes` and `request_timeout` apply from the next
//!   request.
//! - Log level: `RUST_LOG` is read once at start (it is not a config key).

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::alert::LiveMessage;
use crate::config::{
    Config, ConfigError, GpioBackendKind, GpioConfig, HttpConfig, SourceConfig, SourceMode,
};
use crate::gpio::{self, GpioCommand, GpioError};
use crate::ingest::Ingest;
use crate::publish;
use crate::source;
use crate::stats::Stats;

/// Where reload requests come from and where the config is read again.
pub struct Reload {
    pub path: PathBuf,
    /// One `()` per request (the binary sends one per SIGHUP; requests coalesce).
    pub requests: mpsc::Receiver<()>,
    /// Told when a reload starts and ends (the binary tells systemd).
    pub notify: fn(Phase),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Started,
    Done,
}

/// The words `check-config` prints for a file that does not load; a reload logs the same.
pub fn bad_config(path: &Path, e: &ConfigError) -> String {
    format!("bad config {}: {e}", path.display())
}

/// Whether the config runs a GPIO engine at all.
pub fn gpio_enabled(g: &GpioConfig) -> bool {
    g.backend != GpioBackendKind::None && !g.outputs.is_empty()
}

/// What changed between the running config and the file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Keys that changed but need a restart; they are kept as they were.
    pub restart_needed: Vec<&'static str>,
    /// The source restarts (new connection).
    pub source: bool,
    /// Something in `[mqtt]` changed.
    pub mqtt: bool,
    /// The GPIO engine restarts: outputs, backend, sim trace or ack button changed.
    pub outputs: bool,
    /// The rules changed.
    pub rules: bool,
    /// Named patterns, manual priority or snooze scope changed (the publisher's commands).
    pub commands: bool,
    /// The reloadable part of `[http]` changed.
    pub http: bool,
}

impl Plan {
    /// The sections that take a change, for the "reloaded" line.
    pub fn changed(&self) -> Vec<&'static str> {
        [
            (self.source, "source"),
            (self.mqtt, "mqtt"),
            (self.outputs, "gpio outputs"),
            (self.rules, "rules"),
            (self.commands, "gpio patterns"),
            (self.http, "http"),
        ]
        .into_iter()
        .filter_map(|(c, name)| c.then_some(name))
        .collect()
    }
}

/// The config types do not derive `PartialEq` (the config module owns them); their `Debug`
/// form shows every field, secrets as `<redacted>`, so secrets are compared on their own.
fn same<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

fn source_secrets(s: &SourceConfig) -> Vec<&str> {
    match &s.mode {
        SourceMode::Generic { headers, .. } => headers.iter().map(|(_, v)| v.expose()).collect(),
        SourceMode::VideoDb(v) => vec![v.api_key.expose()],
    }
}

/// Compares the running config with the file's. `old_ca`/`new_ca` are the contents of the
/// source's CA file when the source last started and now (a renewed file at the same path).
pub fn plan(
    old: &Config,
    new: &Config,
    old_ca: &Option<Vec<u8>>,
    new_ca: &Option<Vec<u8>>,
) -> Plan {
    let mut p = Plan::default();
    let (oq, nq) = (&old.queue, &new.queue);
    for (changed, key) in [
        (oq.dir != nq.dir, "queue.dir"),
        (oq.max_bytes != nq.max_bytes, "queue.max_bytes"),
        (oq.on_full != nq.on_full, "queue.on_full"),
        (oq.fsync != nq.fsync, "queue.fsync"),
        (oq.segment_bytes != nq.segment_bytes, "queue.segment_bytes"),
        (oq.max_records != nq.max_records, "queue.max_records"),
        (oq.max_age != nq.max_age, "queue.max_age"),
    ] {
        if changed {
            p.restart_needed.push(key);
        }
    }
    p.source = !same(&old.source, &new.source)
        || source_secrets(&old.source) != source_secrets(&new.source)
        || old_ca != new_ca;
    p.mqtt = !same(&old.mqtt, &new.mqtt) || old.mqtt.password != new.mqtt.password;
    match (&old.http, &new.http) {
        (Some(o), Some(n)) => {
            if o.listen != n.listen {
                p.restart_needed.push("http.listen");
            }
            if o.max_connections != n.max_connections {
                p.restart_needed.push("http.max_connections");
            }
            p.http = o.token != n.token
                || o.max_body_bytes != n.max_body_bytes
                || o.request_timeout != n.request_timeout;
        }
        (None, None) => {}
        _ => p.restart_needed.push("http (turned on or off)"),
    }
    let (og, ng) = (&old.gpio, &new.gpio);
    if gpio_enabled(og) != gpio_enabled(ng) {
        p.restart_needed
            .push("gpio (turned on or off: backend or outputs)");
        return p;
    }
    p.outputs = og.backend != ng.backend
        || og.sim_trace != ng.sim_trace
        || !same(&og.outputs, &ng.outputs)
        || !same(&og.ack_button, &ng.ack_button);
    p.rules = !same(&og.rules, &ng.rules);
    p.commands = !same(&og.patterns, &ng.patterns)
        || og.manual_priority != ng.manual_priority
        || og.snooze_lights != ng.snooze_lights;
    p
}

/// `new` with every key of `p.restart_needed` set back to the running value, so the running
/// config stays what actually runs.
pub fn keep_restart_keys(mut new: Config, old: &Config, p: &Plan) -> Config {
    new.queue = old.queue.clone();
    match (&mut new.http, &old.http) {
        (Some(n), Some(o)) => {
            n.listen = o.listen;
            n.max_connections = o.max_connections;
        }
        _ => new.http = old.http.clone(),
    }
    if p.restart_needed
        .iter()
        .any(|k| k.starts_with("gpio (turned"))
    {
        new.gpio = old.gpio.clone();
    }
    new
}

fn read_ca(s: &SourceConfig) -> Option<Vec<u8>> {
    s.tls.ca_file.as_ref().and_then(|p| std::fs::read(p).ok())
}

/// The source task and its own stop signal (a reload restarts it alone).
pub struct SourceStage {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Its CA file's contents when it started.
    ca: Option<Vec<u8>>,
}

impl SourceStage {
    pub fn start(
        cfg: &SourceConfig,
        ingest: &Ingest,
        live: &mpsc::Sender<LiveMessage>,
        stats: &Arc<Stats>,
    ) -> SourceStage {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(source::run(
            cfg.clone(),
            ingest.clone(),
            live.clone(),
            stats.clone(),
            stop_rx,
        ));
        SourceStage {
            stop,
            task,
            ca: read_ca(cfg),
        }
    }

    /// A stand-in with nothing running, for the moment between two sources.
    fn idle() -> SourceStage {
        SourceStage {
            stop: watch::channel(false).0,
            task: tokio::spawn(async {}),
            ca: None,
        }
    }

    pub fn begin_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops it cleanly (an alert being read is appended first) and waits for it.
    pub async fn stop(self) {
        self.begin_stop();
        let _ = self.task.await;
    }
}

/// A started engine and its activity, or why not with the command channel handed back.
pub type Started =
    Result<(GpioStage, watch::Receiver<Vec<bool>>), (GpioError, mpsc::Receiver<GpioCommand>)>;

/// The GPIO engine of one config, its stop signal, and the command channel every sender
/// (rules, MQTT commands, the ack button) keeps across engine restarts.
pub struct GpioStage {
    pub tx: mpsc::Sender<GpioCommand>,
    stop: watch::Sender<bool>,
    task: JoinHandle<mpsc::Receiver<GpioCommand>>,
}

impl GpioStage {
    /// Opens nothing itself: `backend` is open already. On an error the channel is handed back.
    pub fn start(
        cfg: &GpioConfig,
        mut backend: Box<dyn gpio::Backend>,
        rx: mpsc::Receiver<GpioCommand>,
        tx: mpsc::Sender<GpioCommand>,
        stats: Arc<Stats>,
    ) -> Started {
        log::info!(
            "gpio: backend {} with {} outputs",
            backend.name(),
            cfg.outputs.len()
        );
        if let Err(e) = gpio::watch_ack_button(cfg, &mut *backend, &tx) {
            return Err((e, rx));
        }
        let (activity, activity_rx) = watch::channel(vec![false; cfg.outputs.len()]);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(gpio::run_engine(
            cfg.outputs.clone(),
            backend,
            rx,
            stop_rx,
            stats,
            activity,
        ));
        Ok((GpioStage { tx, stop, task }, activity_rx))
    }

    pub fn begin_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Every output to its safe state, the backend dropped; the channel back (`None` if the
    /// engine had panicked: its guard drove the outputs safe, the channel went with it).
    pub async fn stop(self) -> Option<(mpsc::Sender<GpioCommand>, mpsc::Receiver<GpioCommand>)> {
        self.begin_stop();
        match self.task.await {
            Ok(rx) => Some((self.tx, rx)),
            Err(e) => {
                log::error!("gpio: the engine had stopped ({e}); GPIO is off until a restart");
                None
            }
        }
    }
}

/// The stages of a running relay, as [`crate::run`] wired them.
pub struct Running {
    pub config: Config,
    pub stats: Arc<Stats>,
    pub ingest: Ingest,
    pub live_tx: mpsc::Sender<LiveMessage>,
    pub source: SourceStage,
    pub gpio: Option<GpioStage>,
    pub publish: mpsc::Sender<publish::Reconfigure>,
    pub http: Option<watch::Sender<HttpConfig>>,
}

impl Running {
    /// Serves reload requests until `shutdown` resolves.
    pub async fn serve(&mut self, mut reload: Reload, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                req = reload.requests.recv() => match req {
                    Some(()) => {
                        (reload.notify)(Phase::Started);
                        self.reload(&reload.path).await;
                        (reload.notify)(Phase::Done);
                    }
                    // No more requests can come: wait for the stop alone.
                    None => return (&mut shutdown).await,
                },
            }
        }
    }

    /// Reads `path` and applies it (see the module doc).
    pub async fn reload(&mut self, path: &Path) {
        let started = Instant::now();
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload: {}; the running config stays", bad_config(path, &e));
                return;
            }
        };
        let new_ca = read_ca(&new.source);
        let p = plan(&self.config, &new, &self.source.ca, &new_ca);
        if !p.restart_needed.is_empty() {
            log::warn!(
                "reload: changed but needing a restart, kept as they were: {}",
                p.restart_needed.join(", ")
            );
        }
        let mut new = keep_restart_keys(new, &self.config, &p);
        let mut activity = None;
        if p.outputs {
            match self.restart_gpio(&new.gpio).await {
                Ok(a) => activity = a,
                Err(a) => {
                    // The old outputs run again; the old section, rules included, stays
                    // (the new rules may name outputs that are not there).
                    activity = a;
                    new.gpio = self.config.gpio.clone();
                }
            }
        }
        if !same(&new.gpio.rules, &self.config.gpio.rules) {
            self.ingest.replace_rules(new.gpio.rules.clone());
        }
        if p.mqtt || p.outputs || p.rules || p.commands {
            let r = publish::Reconfigure {
                mqtt: new.mqtt.clone(),
                gpio: new.gpio.clone(),
                activity,
            };
            if self.publish.send(r).await.is_err() {
                log::error!("reload: the publisher has stopped; MQTT settings not applied");
            }
        }
        if let (Some(tx), Some(h)) = (&self.http, &new.http) {
            if p.http {
                let _ = tx.send(h.clone());
            }
        }
        if p.source {
            log::info!("source: restarting with the reloaded settings");
            // The old one closes first (an alert being read is appended): with VideoDB both
            // would otherwise bind and unbind alerts in the same state file at once. The gap is
            // one reconnect, as after any dropped connection.
            let old = std::mem::replace(&mut self.source, SourceStage::idle());
            old.stop().await;
            self.source = SourceStage::start(&new.source, &self.ingest, &self.live_tx, &self.stats);
        }
        self.config = new;
        let changed = p.changed();
        log::info!(
            "reloaded {} in {} ms: {}",
            path.display(),
            started.elapsed().as_millis(),
            if changed.is_empty() {
                "nothing to change".to_string()
            } else {
                changed.join(", ")
            }
        );
    }

    /// Restarts the engine on `cfg`'s outputs; on failure, on the running ones again.
    /// Returns the activity of the engine now running (`None`: none runs).
    async fn restart_gpio(
        &mut self,
        cfg: &GpioConfig,
    ) -> Result<Option<watch::Receiver<Vec<bool>>>, Option<watch::Receiver<Vec<bool>>>> {
        let Some(stage) = self.gpio.take() else {
            return Ok(None);
        };
        let Some((tx, rx)) = stage.stop().await else {
            return Err(None);
        };
        let (e, rx) = match open_and_start(cfg, rx, tx.clone(), &self.stats) {
            Ok((stage, activity)) => {
                self.gpio = Some(stage);
                self.resume_snooze(cfg);
                return Ok(Some(activity));
            }
            Err(failed) => failed,
        };
        log::error!("reload: gpio: {e}; opening the running outputs again");
        let old = self.config.gpio.clone();
        match open_and_start(&old, rx, tx, &self.stats) {
            Ok((stage, activity)) => {
                self.gpio = Some(stage);
                self.resume_snooze(&old);
                Err(Some(activity))
            }
            Err((e, _)) => {
                log::error!("gpio: cannot open the running outputs again ({e}); GPIO is off until a restart");
                Err(None)
            }
        }
    }

    /// A snooze set before the engine restarted holds on the new one.
    fn resume_snooze(&self, cfg: &GpioConfig) {
        let Some(stage) = &self.gpio else { return };
        let state =
            publish::ha_state::HaState::load(&publish::ha_state::path_for(&self.config.queue.dir));
        let now = crate::clock::unix_micros(std::time::SystemTime::now()) / 1_000_000;
        if let Some(until) = state.snoozed_until.filter(|&u| u > now) {
            let _ = stage.tx.try_send(GpioCommand::Snooze {
                for_: std::time::Duration::from_secs(until - now),
                lights: cfg.snooze_lights,
            });
        }
    }
}

fn open_and_start(
    cfg: &GpioConfig,
    rx: mpsc::Receiver<GpioCommand>,
    tx: mpsc::Sender<GpioCommand>,
    stats: &Arc<Stats>,
) -> Started {
    match gpio::open_backend(cfg) {
        Ok(backend) => GpioStage::start(cfg, backend, rx, tx, stats.clone()),
        Err(e) => Err((e, rx)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text =
            format!("[source]\nurl = \"ws://127.0.0.1:9/\"\n[queue]\ndir = \"/tmp/q\"\n{extra}");
        Config::parse(&text).expect("test config parses")
    }

    const GPIO: &str = "[gpio]\nbackend = \"sim\"\n[[gpio.outputs]]\nname = \"led\"\npin = 17\n[[gpio.rules]]\nname = \"r\"\nlabels = [\"person\"]\noutputs = [\"led\"]\npattern = { kind = \"solid\", duration = \"1s\" }\n";

    #[test]
    fn the_same_file_changes_nothing() {
        let a = config(GPIO);
        assert_eq!(plan(&a, &config(GPIO), &None, &None), Plan::default());
    }

    #[test]
    fn queue_keys_need_a_restart_and_are_kept() {
        let old = config("");
        let new = Config::parse(
            "[source]\nurl = \"ws://127.0.0.1:9/\"\n[queue]\ndir = \"/tmp/other\"\nmax_bytes = \"2MiB\"\n",
        )
        .expect("parses");
        let p = plan(&old, &new, &None, &None);
        // segment_bytes follows max_bytes by default.
        assert_eq!(
            p.restart_needed,
            vec!["queue.dir", "queue.max_bytes", "queue.segment_bytes"]
        );
        assert_eq!(p.changed(), Vec::<&str>::new());
        let kept = keep_restart_keys(new, &old, &p);
        assert_eq!(kept.queue.dir, PathBuf::from("/tmp/q"));
        assert_eq!(kept.queue.max_bytes, old.queue.max_bytes);
    }

    #[test]
    fn a_rule_change_touches_rules_only_and_a_pin_change_restarts_the_outputs() {
        let old = config(GPIO);
        let p = plan(
            &old,
            &config(&GPIO.replace("\"person\"", "\"car\"")),
            &None,
            &None,
        );
        assert!(p.rules && !p.outputs && !p.source && !p.mqtt, "{p:?}");
        let p = plan(
            &old,
            &config(&GPIO.replace("pin = 17", "pin = 27")),
            &None,
            &None,
        );
        assert!(p.outputs && !p.rules && !p.source, "{p:?}");
    }

    #[test]
    fn turning_gpio_on_needs_a_restart_and_keeps_it_off() {
        let old = config("");
        let new = config(GPIO);
        let p = plan(&old, &new, &None, &None);
        assert_eq!(
            p.restart_needed,
            vec!["gpio (turned on or off: backend or outputs)"]
        );
        assert!(!p.outputs && !p.rules);
        assert!(keep_restart_keys(new, &old, &p).gpio.outputs.is_empty());
    }

    #[test]
    fn a_changed_header_secret_or_ca_file_restarts_the_source_and_nothing_else() {
        let with = |v: &str| {
            Config::parse(&format!(
                "[source]\nurl = \"ws://127.0.0.1:9/\"\nheaders = {{ Authorization = \"{v}\" }}\n[queue]\ndir = \"/tmp/q\"\n"
            ))
            .expect("parses")
        };
        let p = plan(&with("Bearer a"), &with("Bearer b"), &None, &None);
        assert!(p.source && !p.mqtt && p.restart_needed.is_empty(), "{p:?}");
        let same_cfg = with("Bearer a");
        let p = plan(
            &same_cfg,
            &same_cfg,
            &Some(b"old".to_vec()),
            &Some(b"new".to_vec()),
        );
        assert!(p.source, "{p:?}");
    }

    #[test]
    fn mqtt_stats_interval_is_an_mqtt_change_and_http_listen_needs_a_restart() {
        let old = config("[mqtt]\nstats_interval = \"30s\"\n[http]\nlisten = \"127.0.0.1:8080\"\n");
        let new = config("[mqtt]\nstats_interval = \"5s\"\n[http]\nlisten = \"127.0.0.1:8081\"\n");
        let p = plan(&old, &new, &None, &None);
        assert!(p.mqtt && !p.source, "{p:?}");
        assert_eq!(p.restart_needed, vec!["http.listen"]);
        let kept = keep_restart_keys(new, &old, &p);
        assert_eq!(kept.http.map(|h| h.listen.port()), Some(8080));
        assert_eq!(kept.mqtt.stats_interval, std::time::Duration::from_secs(5));
    }
}
