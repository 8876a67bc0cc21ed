//! alert-relay: subscribes to a real-time alert stream over WebSocket, makes every alert
//! durable in an on-disk queue, republishes it to a local MQTT broker (at least once), and
//! drives GPIO lights and buzzers from the live stream.
//!
//! Module map (data moves one way):
//! - [`config`]: TOML -> validated [`config::Config`].
//! - [`source`]: the WebSocket client; hands alerts to [`ingest`].
//! - [`alert`]: frame/envelope/alert parsing, label sanitising, the queued record; pure.
//! - [`ingest`]: an accepted alert goes to [`rules`] -> [`gpio`] (live) and to [`queue`].
//! - [`queue`]: the durable, bounded, crash-safe log.
//! - [`publish`]: queue -> MQTT, acking records on PUBACK.
//! - [`rules`]: label + confidence + time -> output patterns; pure.
//! - [`gpio`]: pattern scheduler and pin backends.
//! - [`stats`]: counters for `{prefix}/stats`.
//! - [`topic`]: what MQTT and mosquitto accept in topics and strings; pure.
//! - [`dedup`]: the cross-path dedup window used by [`ingest`]; pure.
//! - [`webhook`] and [`http`]: the optional HTTP listener (webhook, healthz, metrics).
//! - [`logging`]: the process logger, library targets that print secrets capped.
//! - [`reload`]: SIGHUP: the config file read again and applied stage by stage.
//! - [`timesync`]: whether the wall clock is synchronised; a jump-proof clock for ages.
//!
//! [`run`] wires the stages and runs until the shutdown future resolves.

pub mod alert;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod dedup;
pub mod gpio;
pub mod http;
pub mod ingest;
pub mod logging;
pub mod publish;
pub mod queue;
pub mod reload;
pub mod rules;
pub mod source;
pub mod stats;
pub mod timer;
pub mod timesync;
pub mod tls;
pub mod topic;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use config::Config;
use stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error(transparent)]
    Gpio(#[from] gpio::GpioError),
    #[error("cannot start the queue writer thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// What [`run`] takes besides the config and the shutdown future; `RunOptions::default()` is
/// the plain daemon (own counters, no reloads, the HTTP listener bound from the config).
#[derive(Default)]
pub struct RunOptions {
    /// The counters, shared with the caller (tests and benchmarks read them).
    pub stats: Arc<Stats>,
    /// Called once the queue is recovered and every stage is running (the binary tells
    /// systemd `READY=1` there).
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Reads the config file again on every request (the binary's SIGHUP) and applies it to
    /// the running stages ([`reload`]).
    pub reload: Option<reload::Reload>,
    /// A listener already bound for `[http]`, used instead of binding `http.listen` (tests
    /// bind `127.0.0.1:0` and keep the address, so no port is guessed and raced for).
    pub http_listener: Option<tokio::net::TcpListener>,
}

/// Runs the relay until `shutdown` resolves; returns once every stage has stopped, outputs are
/// in their safe state, `offline` is published (if the broker is reachable) and the queue is
/// closed.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    options: RunOptions,
) -> Result<(), RunError> {
    let RunOptions {
        stats,
        on_ready,
        reload,
        http_listener,
    } = options;
    let (queue, report) = queue::Queue::open(&config.queue)?;
    log::info!(
        "queue: {} segments, {} unacknowledged records in {}{}",
        report.segments,
        report.unacked_records,
        config.queue.dir.display(),
        if report.torn_tail_bytes + report.corrupt_regions + report.quarantined_segments > 0 {
            format!(
                " (recovered: {} torn tail bytes truncated, {} corrupt regions skipped, {} segments quarantined)",
                report.torn_tail_bytes, report.corrupt_regions, report.quarantined_segments
            )
        } else {
            String::new()
        }
    );
    if let Some((free, short)) = queue.space_short() {
        log::warn!(
            "queue: {} has {free} bytes free, {short} bytes short of queue.max_bytes ({}): alerts will be refused (disk full) before the queue reaches its bound; free space or lower max_bytes",
            config.queue.dir.display(),
            config.queue.max_bytes
        );
    }
    // Records already queued are published again: marked replayed, kept off HA's event.
    let replay_below = queue.first_unacked() + queue.gauges().depth_records;
    let backend = gpio::open_backend(&config.gpio)?;
    // Bind before anything runs, so a taken port fails the start with a clear error.
    let http_listener = match (&config.http, http_listener) {
        (Some(_), Some(listener)) => Some(listener),
        (Some(h), None) => Some(http::bind(h.listen).await?),
        (None, _) => None,
    };
    let (queue, writer) = queue::spawn_writer(queue, stats.clone()).map_err(RunError::Thread)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut publish_links = publish::Links::new(&config);
    publish_links.replay_below = replay_below;

    let gpio_stage = if reload::gpio_enabled(&config.gpio) {
        let (tx, rx) = mpsc::channel(gpio::FIRE_CHANNEL_CAPACITY);
        let (stage, activity_rx) =
            reload::GpioStage::start(&config.gpio, backend, rx, tx, stats.clone())
                .map_err(|(e, _)| e)?;
        // MQTT commands (`cmd/silence`, `cmd/test/{output}`) reach the engine here.
        publish_links.gpio = Some(stage.tx.clone());
        // Which outputs run a pattern; MQTT mirrors it on {prefix}/outputs/{name}.
        publish_links.activity = Some(activity_rx);
        Some(stage)
    } else {
        None
    };
    let gpio_tx = gpio_stage.as_ref().map(|s| s.tx.clone());
    // Arming and snooze as Home Assistant left them (the state file beside the queue).
    let mut rule_engine = rules::RuleEngine::new(config.gpio.rules.clone());
    for i in publish_links.disarmed_rules() {
        rule_engine.set_armed(i, false);
    }
    if let (Some(tx), Some(left)) = (&gpio_tx, publish_links.snooze_left()) {
        let _ = tx.try_send(gpio::GpioCommand::Snooze {
            for_: left,
            lights: config.gpio.snooze_lights,
        });
    }
    let ingest = ingest::Ingest::new(rule_engine, gpio_tx.clone(), queue.clone(), stats.clone());
    if gpio_tx.is_some() {
        publish_links.ingest = Some(ingest.clone());
    }
    let (http_cfg, http_task) = match (http_listener, &config.http) {
        (Some(listener), Some(cfg)) => {
            let (cfg_tx, cfg_rx) = watch::channel(cfg.clone());
            let task = tokio::spawn(http::run(
                listener,
                http::HttpState {
                    cfg: cfg_rx,
                    ingest: ingest.clone(),
                    queue: queue.clone(),
                    queue_max_bytes: config.queue.max_bytes,
                    stats: stats.clone(),
                },
                stop_rx.clone(),
            ));
            (Some(cfg_tx), Some(task))
        }
        _ => (None, None),
    };
    // Best-effort channel messages (not durable) go straight from the source to the publisher.
    let (live_tx, live_rx) = mpsc::channel(source::LIVE_CHANNEL_CAPACITY);
    let source = reload::SourceStage::start(&config.source, &ingest, &live_tx, &stats);
    let (publish_tx, publish_rx) = mpsc::channel(1);
    let publish_task = tokio::spawn(publish::run(
        config.mqtt.clone(),
        publish_links,
        queue.clone(),
        stats.clone(),
        stop_rx,
        live_rx,
        publish_rx,
    ));
    drop(queue);

    if let Some(ready) = on_ready {
        ready();
    }
    let mut running = reload::Running {
        config,
        stats,
        ingest,
        live_tx,
        source,
        gpio: gpio_stage,
        publish: publish_tx,
        http: http_cfg,
    };
    match reload {
        Some(r) => running.serve(r, shutdown).await,
        None => shutdown.await,
    }
    log::info!("shutting down");
    let _ = stop_tx.send(true);
    running.source.begin_stop();
    if let Some(g) = &running.gpio {
        g.begin_stop();
    }
    // The source stops first (no new alerts), then the publisher says offline, GPIO goes safe.
    running.source.stop().await;
    if let Some(t) = http_task {
        let _ = t.await;
    }
    drop(running.publish);
    let _ = publish_task.await;
    if let Some(g) = running.gpio {
        g.stop().await;
    }
    drop(running.ingest);
    drop(running.live_tx);
    // Every QueueHandle is gone now: the writer drains, syncs, persists the ack position.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    log::info!("stopped");
    Ok(())
}
