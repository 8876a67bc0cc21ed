//! systemd's notify protocol (`Type=notify`): READY, RELOADING, WATCHDOG, STOPPING. Outside
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! Owns: what the binary tells systemd and when. Never does: decide when the relay is ready
//! (the library calls back).

use std::future::Future;

use alert_relay::reload::Phase;

/// The relay is up: the queue is recovered and every stage runs.
pub fn ready() {
    match sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        Ok(()) => log::debug!("systemd: READY=1 sent (if NOTIFY_SOCKET is set)"),
        Err(e) => log::warn!("systemd: cannot send READY=1: {e}"),
    }
}

/// A reload starts (`RELOADING=1` with the monotonic time systemd 253+ asks for) or ends
/// (`READY=1`), so `systemctl status` shows it.
pub fn reloading(phase: Phase) {
    let r = match phase {
        Phase::Started => {
            let mut states = vec![sd_notify::NotifyState::Reloading];
            if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                states.push(now);
            }
            sd_notify::notify(&states)
        }
        Phase::Done => sd_notify::notify(&[sd_notify::NotifyState::Ready]),
    };
    if let Err(e) = r {
        log::warn!("systemd: cannot report the reload: {e}");
    }
}

/// The relay stops.
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Runs `relay` to its end; under systemd (`WatchdogSec`) pings the watchdog at half its
/// interval meanwhile, so a wedged event loop stops pinging and gets restarted.
pub async fn watched<T>(relay: impl Future<Output = T>) -> T {
    tokio::pin!(relay);
    match sd_notify::watchdog_enabled() {
        Some(interval) => {
            let mut tick = tokio::time::interval(interval / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    r = &mut relay => break r,
                    _ = tick.tick() => {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                }
            }
        }
        None => relay.await,
    }
}
