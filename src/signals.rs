//! The signals the binary answers, installed before anything else runs.
//!
//! Owns: which signal stops and which reloads. Never does: act on them (the library's
//! shutdown and reload paths do).
//!
//! `run`: SIGTERM, SIGINT and SIGQUIT stop it cleanly (outputs off, `offline`, queue closed);
//! SIGHUP reloads the config (`systemctl reload`, the daemon convention). A relay started by
//! hand whose terminal closes therefore keeps running: its log lines to the closed terminal
//! fail quietly (env_logger drops write errors; nothing in `run` prints with `eprintln!`).
//! The one-shot subcommands (`test-output`) stop on SIGHUP too, so a dropped SSH session never
//! leaves a buzzer sounding.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Whether SIGHUP stops (one-shot subcommands) or is left to [`reloads`] (the daemon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hangup {
    Stops,
    Reloads,
}

/// Installs handlers now for every signal whose default action would end the process without
/// driving the outputs to their safe state: SIGTERM, SIGINT, SIGQUIT and (with
/// [`Hangup::Stops`]) SIGHUP. The future resolves on the first of them; the caller then stops
/// cleanly. Must be called inside the runtime (the handlers need its reactor).
pub fn stop(hangup: Hangup) -> impl Future<Output = ()> {
    let mut kinds = vec![
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::quit(), "SIGQUIT"),
    ];
    if hangup == Hangup::Stops {
        kinds.push((SignalKind::hangup(), "SIGHUP"));
    }
    let mut handled = Vec::new();
    for (kind, name) in kinds {
        match signal(kind) {
            Ok(s) => handled.push((s, name)),
            Err(e) => log::warn!("cannot handle {name} ({e}): it would stop the relay uncleanly"),
        }
    }
    async move {
        if handled.is_empty() {
            log::warn!("no signal handlers; stop with SIGKILL");
            return std::future::pending::<()>().await;
        }
        let name = std::future::poll_fn(|cx| {
            for (s, name) in handled.iter_mut() {
                if s.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*name);
                }
            }
            std::task::Poll::Pending
        })
        .await;
        log::info!("{name} received");
    }
}

/// SIGHUP as reload requests. Several SIGHUPs while a reload runs coalesce into one more
/// (the file is read after the last of them). Without a handler (an error, logged) SIGHUP is
/// ignored rather than left at its default, which would kill the relay with outputs on.
/// Must be called inside the runtime.
pub fn reloads() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    log::info!("SIGHUP received: reloading the config");
                    let _ = tx.try_send(());
                }
            });
        }
        Err(e) => log::warn!("cannot handle SIGHUP ({e}): reload needs a restart"),
    }
    rx
}
