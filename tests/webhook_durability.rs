//! A 200 from POST /webhook means the alert is durable: the real `alert-relay` binary is
//! SIGKILLed the moment a 200 arrives, restarted on the same queue directory with a broker, and
//! every acknowledged alert is then found on MQTT.

mod http_support;
#[path = "../examples/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use http_support::*;
use support::*;

const T: Duration = Duration::from_secs(30);

/// The relay binary as a child process; SIGKILLed on drop so a failing test leaves nothing.
struct RelayProcess(Child);

impl RelayProcess {
    fn start(config: &Path, log: &Path) -> RelayProcess {
        let log = std::fs::File::create(log).expect("relay log file");
        let child = support::command_for(env!("CARGO_BIN_EXE_alert-relay"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the alert-relay binary");
        RelayProcess(child)
    }

    /// SIGKILL: no shutdown path runs, nothing is flushed.
    fn kill(mut self) {
        self.0.kill().expect("SIGKILL the relay");
        let _ = self.0.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_webhook_200_survives_sigkill_and_is_published_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (token_path, token) = token_file(dir.path());
    let http_port = free_port();
    let mqtt_port = free_port();
    // The upstream socket points where nothing listens: the webhook is the only path here.
    let ws_url = format!("ws://127.0.0.1:{}/none", free_port());
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        relay_config(
            &ws_url,
            mqtt_port,
            &dir.path().join("q"),
            &http_section(http_port, &token_path, ""),
        ),
    )
    .expect("write config");
    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();

    // Three lives, each cut by SIGKILL right after its first 200. Each life gets a burst of
    // concurrent posts: whichever of them were answered 200 must survive.
    let mut acknowledged: Vec<String> = Vec::new();
    for life in 0..3 {
        let mut relay = RelayProcess::start(&config, &dir.path().join(format!("relay-{life}.log")));
        wait_listening(http, T).await;
        let mut posts = tokio::task::JoinSet::new();
        for i in 0..5 {
            let id = format!("ev-{life}-{i}");
            let body = webhook_body(&id, "intrusion", &now_rfc3339());
            let token = token.clone();
            posts.spawn(async move {
                let raw = post("/webhook", &[("X-Relay-Token", &token)], body.as_bytes());
                (id, try_exchange(http, &raw).await)
            });
        }
        let mut killed = false;
        while let Some(done) = posts.join_next().await {
            let (id, reply) = done.expect("post task");
            if let Ok(r) = &reply {
                if r.status == 200 {
                    if !killed {
                        // The first 200 of this life: SIGKILL at once (Child::kill on Unix).
                        relay.0.kill().expect("SIGKILL the relay");
                        killed = true;
                    }
                    acknowledged.push(id);
                    continue;
                }
                assert_eq!(r.status, 503, "only 200 or 503 may come back: {}", r.text());
            }
        }
        assert!(killed, "life {life}: no post was answered 200");
        relay.kill();
    }
    assert!(acknowledged.len() >= 3, "{acknowledged:?}");
    eprintln!("acknowledged before the kills: {acknowledged:?}");

    let broker = Broker::start(mqtt_port);
    let sub = Subscriber::start(broker.port(), "alert-relay/alerts/#").await;
    let relay = RelayProcess::start(&config, &dir.path().join("relay-final.log"));
    wait_until("every acknowledged alert on MQTT", T, || {
        let got: Vec<String> = sub
            .snapshot()
            .iter()
            .filter_map(|m| m.json()["event_id"].as_str().map(str::to_owned))
            .collect();
        acknowledged.iter().all(|id| got.contains(id))
    })
    .await;
    for m in sub.snapshot() {
        assert_eq!(m.json()["relay"]["via"], "webhook");
    }
    relay.kill();
}
