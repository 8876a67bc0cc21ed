//! The broker connection: login from a password file, TLS with a test CA and a client
//! certificate, and the Last Will when the relay process is SIGKILLed.

#[path = "../examples/support/mod.rs"]
mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

async fn one_alert_arrives(sub: &Subscriber, ws: &WsServer) {
    ws.send_text(alert_frame("ev-1", "intrusion", 0.9));
    wait_until("the alert", T, || !sub.on("alert-relay/alerts/").is_empty()).await;
}

/// Waits for `n` refused connection attempts and checks that none got through.
async fn refused(relay: &Relay, what: &str, n: u64) {
    wait_until(what, T, || {
        support::count(&relay.stats.mqtt_connect_failures) >= n
    })
    .await;
    assert_eq!(support::count(&relay.stats.mqtt_connects), 0);
}

#[tokio::test]
async fn relay_logs_in_with_a_password_from_a_file() {
    if !Mosquitto::available("relay_logs_in_with_a_password_from_a_file") {
        return;
    }
    let s = Setup::new()
        .mosquitto(
            Mosquitto::new()
                .user("relay", "s3cret-pw")
                .user("watcher", "watch-pw"),
        )
        .sub_with("alert-relay/#", |o| {
            o.set_credentials("watcher", "watch-pw");
        })
        .file("mqtt-password", "s3cret-pw\n")
        .config_extra("username = \"relay\"\npassword_file = \"{dir}/mqtt-password\"")
        .start()
        .await;
    one_alert_arrives(s.sub(), &s.ws).await;
    assert_eq!(support::count(&s.relay.stats.mqtt_connect_failures), 0);
    s.relay.stop().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_retried() {
    if !Mosquitto::available("a_wrong_password_is_refused_and_retried") {
        return;
    }
    let var = format!("ALERT_RELAY_TEST_MQTT_PW_{}", unique_id());
    std::env::set_var(&var, "not-the-password");
    let s = Setup::new()
        .mosquitto(Mosquitto::new().user("relay", "s3cret-pw"))
        .config_extra(&format!("username = \"relay\"\npassword_env = \"{var}\""))
        .start()
        .await;
    refused(&s.relay, "three refused logins", 3).await;
    s.relay.stop().await;
}

#[tokio::test]
async fn relay_connects_over_tls_with_a_test_ca_and_a_client_certificate() {
    if !Mosquitto::available("relay_connects_over_tls_with_a_test_ca_and_a_client_certificate") {
        return;
    }
    let broker = Mosquitto::new().tls(true).start_any();
    let tls_port = broker.tls_port();
    let pki = broker.dir().expect("configured broker").to_path_buf();
    let sub = Subscriber::start(broker.port(), "alert-relay/#").await;
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&relay_config(
        &ws.url(),
        tls_port,
        dir.path(),
        &format!(
            "tls = true\nca_file = \"{0}/ca.crt\"\nclient_cert = \"{0}/client.crt\"\nclient_key = \"{0}/client.key\"",
            pki.display()
        ),
    ));
    one_alert_arrives(&sub, &ws).await;
    assert_eq!(support::count(&relay.stats.mqtt_connect_failures), 0);
    relay.stop().await;
}

#[tokio::test]
async fn tls_without_the_required_client_certificate_is_refused() {
    if !Mosquitto::available("tls_without_the_required_client_certificate_is_refused") {
        return;
    }
    let broker = Mosquitto::new().tls(true).start_any();
    let tls_port = broker.tls_port();
    let pki = broker.dir().expect("configured broker").to_path_buf();
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&relay_config(
        &ws.url(),
        tls_port,
        dir.path(),
        &format!("tls = true\nca_file = \"{}/ca.crt\"", pki.display()),
    ));
    refused(&relay, "refused handshakes", 2).await;
    relay.stop().await;
}

#[tokio::test]
async fn tls_to_a_broker_with_an_unknown_ca_is_refused() {
    if !Mosquitto::available("tls_to_a_broker_with_an_unknown_ca_is_refused") {
        return;
    }
    let broker = Mosquitto::new().tls(false).start_any();
    let tls_port = broker.tls_port();
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // No ca_file: the built-in web PKI roots, which do not know the test CA.
    let relay = Relay::start(&relay_config(&ws.url(), tls_port, dir.path(), "tls = true"));
    refused(&relay, "refused handshakes", 2).await;
    drop(broker);
    relay.stop().await;
}

#[tokio::test]
async fn last_will_says_offline_when_the_relay_is_sigkilled() {
    let broker = Broker::start_any();
    let sub = Subscriber::start(broker.port(), "alert-relay/status").await;
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        relay_config(&ws.url(), broker.port(), &dir.path().join("q"), ""),
    )
    .expect("write config");
    let mut child = support::command_for(env!("CARGO_BIN_EXE_alert-relay"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the relay");
    wait_until("online", T, || {
        sub.snapshot()
            .last()
            .is_some_and(|m| m.payload == b"online")
    })
    .await;
    child.kill().expect("SIGKILL the relay");
    let _ = child.wait();
    wait_until("offline from the Last Will", T, || {
        sub.snapshot()
            .last()
            .is_some_and(|m| m.payload == b"offline")
    })
    .await;
    // Retained: a consumer that connects now still sees it.
    let late = Subscriber::start(broker.port(), "alert-relay/status").await;
    wait_until("retained offline", T, || {
        late.snapshot()
            .iter()
            .any(|m| m.payload == b"offline" && m.retain)
    })
    .await;
}

#[tokio::test]
async fn the_mqtt_password_never_appears_in_logs_or_check_config() {
    const PW: &str = "pw-that-must-not-leak-7f3a";
    let broker = Broker::start_any();
    let sub = Subscriber::start(broker.port(), "alert-relay/status").await;
    let ws = WsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PW).expect("write password");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        relay_config(
            &ws.url(),
            broker.port(),
            &dir.path().join("q"),
            &format!("username = \"relay\"\npassword_file = \"{}\"", pw.display()),
        ),
    )
    .expect("write config");
    let bin = env!("CARGO_BIN_EXE_alert-relay");
    let check = support::command_for(bin)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("check-config");
    assert!(check.status.success());
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(shown.contains("username = \"relay\""), "{shown}");
    assert!(shown.contains("password = <redacted>"), "{shown}");
    assert!(!shown.contains(PW));

    let log = dir.path().join("stderr.log");
    let mut child = support::command_for(bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start the relay");
    wait_until("online", T, || {
        sub.snapshot().iter().any(|m| m.payload == b"online")
    })
    .await;
    ws.send_text(alert_frame("ev-1", "intrusion", 0.9));
    child.kill().expect("kill");
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(text.contains("mqtt: connected"), "{text}");
    assert!(!text.contains(PW), "the password leaked into the log");
}
