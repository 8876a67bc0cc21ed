//! Flash and go (issue 19): `deploy/firstboot/alert-relay-provision` run against temporary boot
//! and etc directories, validating with the real relay binary. Each test is a user's SD card:
//! a config with its secrets dropped beside it, a broken one, a reboot, nothing at all.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/firstboot/alert-relay-provision"
);

/// A card (boot dir) and a board (etc dir) in one temp dir.
struct Card {
    _tmp: tempfile::TempDir,
    boot: PathBuf,
    etc: PathBuf,
    bin: PathBuf,
}

impl Card {
    fn new() -> Card {
        let tmp = tempfile::tempdir().expect("tempdir");
        let boot = tmp.path().join("boot");
        let etc = tmp.path().join("etc");
        fs::create_dir_all(&boot).expect("boot dir");
        fs::create_dir_all(&etc).expect("etc dir");
        let bin = relay_bin(tmp.path());
        Card {
            _tmp: tmp,
            boot,
            etc,
            bin,
        }
    }

    /// Runs the script as the unit does, with the group given (None: the default, alert-relay).
    fn provision(&self, group: Option<&str>) -> Output {
        let mut cmd = Command::new("sh");
        cmd.arg(SCRIPT)
            .arg("--boot")
            .arg(&self.boot)
            .arg("--etc")
            .arg(&self.etc)
            .arg("--bin")
            .arg(&self.bin);
        match group {
            Some(g) => cmd.env("ALERT_RELAY_PROVISION_GROUP", g),
            None => cmd.env_remove("ALERT_RELAY_PROVISION_GROUP"),
        };
        cmd.output().expect("run alert-relay-provision")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.boot.join("alert-relay-provision.log")).unwrap_or_default()
    }

    /// Every file in both dirs with its bytes, mode and owner: what "changes nothing" compares.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>, u32, u32, u32)> {
        let mut all = Vec::new();
        for dir in [&self.boot, &self.etc] {
            let mut entries: Vec<_> = fs::read_dir(dir)
                .expect("read dir")
                .map(|e| e.expect("entry").path())
                .collect();
            entries.sort();
            for p in entries {
                let m = fs::metadata(&p).expect("metadata");
                let bytes = if m.is_file() {
                    fs::read(&p).expect("read")
                } else {
                    Vec::new()
                };
                all.push((p, bytes, m.mode(), m.uid(), m.gid()));
            }
        }
        all
    }
}

/// The relay binary the script runs. Under CI's aarch64 suite the binary needs qemu-user, which
/// the script cannot know: a wrapper adds `ALERT_RELAY_TEST_RUNNER` in front.
fn relay_bin(dir: &Path) -> PathBuf {
    let bin = env!("CARGO_BIN_EXE_alert-relay");
    match std::env::var("ALERT_RELAY_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let wrapper = dir.join("alert-relay-wrapper");
            fs::write(
                &wrapper,
                format!("#!/bin/sh\nexec {runner} '{bin}' \"$@\"\n"),
            )
            .expect("write wrapper");
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
            wrapper
        }
        _ => PathBuf::from(bin),
    }
}

/// A self-signed CA certificate (PEM), so `mqtt.ca_file` is parsed for real by check-config.
fn ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["broker.local".to_string()])
        .expect("certificate")
        .cert
        .pem()
}

/// A valid config naming its secrets the way the README tells users to: by their final paths.
fn config_with_secrets(etc: &Path) -> String {
    let example = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"))
        .expect("example config");
    let e = etc.display();
    example
        .replace("# username = \"alert-relay\"", "username = \"alert-relay\"")
        .replace(
            "# password_file = \"/etc/alert-relay/mqtt-password\"",
            &format!("password_file = \"{e}/mqtt-password\""),
        )
        .replace(
            "# ca_file = \"/etc/alert-relay/ca.pem\"",
            &format!("ca_file = \"{e}/ca.pem\""),
        )
        .replace("# tls = false", "tls = true")
        .replace(
            "# ca_file = \"/etc/alert-relay/ca.crt\"",
            // A bare name: the script rewrites it to ETC/ca.crt.
            "ca_file = 'ca.crt'",
        )
}

fn gid_of(group: &str) -> Option<u32> {
    let out = Command::new("getent")
        .args(["group", group])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(':')
        .nth(2)?
        .parse()
        .ok()
}

fn current_group() -> String {
    let out = Command::new("id").arg("-gn").output().expect("id -gn");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Says a test was skipped past libtest's capture (as `support::skipped` does), so a skip is
/// never a silent pass.
fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("metadata").mode() & 0o7777
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Valid config + secrets: installed with the service's group and 0640, previous config kept,
/// secrets moved off the card, paths pointing at ETC, and the installed config is valid as is.
/// Run as root (CI) with a group that exists, so the chown is real.
#[test]
fn valid_config_is_installed_with_its_secrets_and_leaves_the_card() {
    let card = Card::new();
    if !is_root() {
        skipped(
            "valid_config_is_installed_with_its_secrets_and_leaves_the_card",
            "not root, cannot chown (the fallback is tested below)",
        );
        return;
    }
    let group = current_group();
    let gid = gid_of(&group).expect("gid of the current group");
    fs::write(card.etc.join("config.toml"), "# the old one\n").expect("old config");
    fs::write(card.etc.join("mqtt-password"), "old-password\n").expect("old secret");
    fs::write(
        card.boot.join("alert-relay.toml"),
        config_with_secrets(&card.etc),
    )
    .expect("config");
    fs::write(card.boot.join("mqtt-password"), "hunter2\r\n").expect("password");
    fs::write(card.boot.join("ca.crt"), ca_pem()).expect("ca");
    fs::write(card.boot.join("ca.pem"), ca_pem()).expect("source ca");
    fs::write(card.boot.join("unrelated.txt"), "kept").expect("unrelated");

    let out = card.provision(Some(&group));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));

    let installed = card.etc.join("config.toml");
    let text = fs::read_to_string(&installed).expect("installed config");
    let etc = card.etc.display().to_string();
    assert!(text.contains(&format!("password_file = \"{etc}/mqtt-password\"")));
    assert!(
        text.contains(&format!("ca_file = '{etc}/ca.crt'")),
        "bare name not rewritten:\n{text}"
    );
    for name in ["config.toml", "mqtt-password", "ca.crt", "ca.pem"] {
        let p = card.etc.join(name);
        let m = fs::metadata(&p).expect("installed file");
        assert_eq!(m.mode() & 0o7777, 0o640, "{name} mode");
        assert_eq!((m.uid(), m.gid()), (0, gid), "{name} owner");
        assert!(
            !card.boot.join(name).exists() || name == "config.toml",
            "{name} still on the card"
        );
    }
    assert_eq!(
        fs::read_to_string(card.etc.join("mqtt-password")).expect("secret"),
        "hunter2\r\n"
    );
    assert_eq!(
        fs::read_to_string(card.etc.join("config.toml.previous")).expect("previous"),
        "# the old one\n"
    );
    assert_eq!(
        fs::read_to_string(card.etc.join("mqtt-password.previous")).expect("previous secret"),
        "old-password\n"
    );
    assert!(!card.boot.join("alert-relay.toml").exists());
    assert!(card.boot.join("alert-relay.toml.applied").exists());
    assert!(
        card.boot.join("unrelated.txt").exists(),
        "only named files are taken"
    );
    // No staging leftovers in ETC.
    let leftovers: Vec<_> = fs::read_dir(&card.etc)
        .expect("etc")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "left in etc: {leftovers:?}");

    let log = card.log();
    assert!(log.contains("installed"), "log: {log}");
    assert!(
        log.contains("mqtt-password") && log.contains("ca.crt"),
        "log: {log}"
    );

    // The relay accepts the installed config as it is (secrets where it points).
    let check = Command::new(&card.bin)
        .args(["check-config", "--config"])
        .arg(&installed)
        .output()
        .expect("check-config");
    assert!(check.status.success(), "{}", stderr(&check));
}

/// The package's group: when the machine has it (CI after the .deb stage, a Pi) and we are root,
/// the default group is alert-relay.
#[test]
fn default_group_is_alert_relay() {
    let Some(gid) = gid_of("alert-relay") else {
        skipped(
            "default_group_is_alert_relay",
            "no group alert-relay on this machine",
        );
        return;
    };
    if !is_root() {
        skipped("default_group_is_alert_relay", "not root");
        return;
    }
    let card = Card::new();
    fs::write(
        card.boot.join("alert-relay.toml"),
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"))
            .expect("example"),
    )
    .expect("config");
    let out = card.provision(None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let m = fs::metadata(card.etc.join("config.toml")).expect("installed");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, gid, 0o640));
}

/// Without the group (a machine without the package, or a non-root run), files are 0600 and
/// the log says why.
#[test]
fn missing_group_falls_back_to_0600_and_says_so() {
    let card = Card::new();
    let example = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"))
        .expect("example");
    // A UTF-8 byte order mark, as Notepad writes it: dropped, not rejected.
    fs::write(
        card.boot.join("alert-relay.toml"),
        format!("\u{feff}{example}"),
    )
    .expect("config");
    let out = card.provision(Some("no-such-group-alert-relay-test"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(mode(&card.etc.join("config.toml")), 0o600);
    assert!(!fs::read(card.etc.join("config.toml"))
        .expect("installed")
        .starts_with(b"\xEF\xBB\xBF"));
    assert!(card.log().contains("0600"), "log: {}", card.log());
}

/// An invalid config never replaces a working one: the old config and secrets stay, the card
/// keeps the file and its secrets (to be fixed on a PC), and the log names the key.
#[test]
fn invalid_config_leaves_the_old_one_and_logs_the_key() {
    let card = Card::new();
    let old = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"))
        .expect("example");
    fs::write(card.etc.join("config.toml"), &old).expect("old config");
    fs::write(card.etc.join("mqtt-password"), "old-password\n").expect("old secret");
    let mut bad = config_with_secrets(&card.etc);
    bad = bad.replace("qos = 1", "qos = 7");
    assert!(
        bad.contains("qos = 7"),
        "example config changed: fix this test"
    );
    fs::write(card.boot.join("alert-relay.toml"), &bad).expect("config");
    fs::write(card.boot.join("mqtt-password"), "hunter2\n").expect("password");
    fs::write(card.boot.join("ca.crt"), ca_pem()).expect("ca");
    fs::write(card.boot.join("ca.pem"), ca_pem()).expect("source ca");
    let before_etc: Vec<_> = card
        .snapshot()
        .into_iter()
        .filter(|(p, ..)| p.starts_with(&card.etc))
        .collect();

    let out = card.provision(None);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    let after_etc: Vec<_> = card
        .snapshot()
        .into_iter()
        .filter(|(p, ..)| p.starts_with(&card.etc))
        .collect();
    assert_eq!(before_etc, after_etc, "etc changed by an invalid config");
    for name in ["alert-relay.toml", "mqtt-password", "ca.crt", "ca.pem"] {
        assert!(card.boot.join(name).exists(), "{name} gone from the card");
    }
    let log = card.log();
    assert!(log.contains("mqtt.qos"), "log does not name the key: {log}");
    assert!(log.contains("NOT installed"), "log: {log}");
    assert!(
        !log.contains(".provision."),
        "log names the staging dir: {log}"
    );
}

/// A secret file the config names that cannot be read as what it is (a broken CA) is invalid
/// too, found by check-config on the staged copy, and named in the log. (check-config parses
/// `source.ca_file`; it does not read the `mqtt` TLS files, which fail at connect instead.)
#[test]
fn broken_secret_is_invalid_and_named() {
    let card = Card::new();
    fs::write(
        card.boot.join("alert-relay.toml"),
        config_with_secrets(&card.etc),
    )
    .expect("config");
    fs::write(card.boot.join("mqtt-password"), "hunter2\n").expect("password");
    fs::write(card.boot.join("ca.crt"), ca_pem()).expect("ca");
    fs::write(card.boot.join("ca.pem"), "not a certificate\n").expect("ca");
    let out = card.provision(None);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(!card.etc.join("config.toml").exists());
    let log = card.log();
    assert!(log.contains("source.ca_file"), "log: {log}");
    // The user's names, not the staging copies.
    assert!(
        log.contains(&format!("{}/ca.pem", card.etc.display())) && !log.contains(".provision."),
        "log: {log}"
    );
}

/// A reboot after a successful provisioning does nothing: same files, same bytes, same log.
#[test]
fn second_run_does_nothing() {
    let card = Card::new();
    fs::write(
        card.boot.join("alert-relay.toml"),
        config_with_secrets(&card.etc),
    )
    .expect("config");
    fs::write(card.boot.join("mqtt-password"), "hunter2\n").expect("password");
    fs::write(card.boot.join("ca.crt"), ca_pem()).expect("ca");
    fs::write(card.boot.join("ca.pem"), ca_pem()).expect("source ca");
    let first = card.provision(Some(&current_group()));
    assert_eq!(first.status.code(), Some(0), "stderr: {}", stderr(&first));
    let before = card.snapshot();
    let second = card.provision(Some(&current_group()));
    assert_eq!(second.status.code(), Some(0), "stderr: {}", stderr(&second));
    assert_eq!(before, card.snapshot());
}

/// A card with nothing on it (or no boot dir at all) changes nothing and writes no log.
#[test]
fn empty_boot_dir_changes_nothing() {
    let card = Card::new();
    fs::write(card.etc.join("config.toml"), "# as it was\n").expect("old config");
    let before = card.snapshot();
    let out = card.provision(None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(before, card.snapshot());
    assert!(!card.boot.join("alert-relay-provision.log").exists());

    fs::remove_dir(&card.boot).expect("rm boot");
    let out = card.provision(None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        fs::read_to_string(card.etc.join("config.toml")).expect("config"),
        "# as it was\n"
    );
}

/// Other failures are 1, not 2: a relay binary that is not there.
#[test]
fn missing_binary_is_exit_1_and_logged() {
    let mut card = Card::new();
    card.bin = card.etc.join("no-such-alert-relay");
    fs::write(card.boot.join("alert-relay.toml"), "[mqtt]\n").expect("config");
    let out = card.provision(None);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(card.log().contains("cannot run"), "log: {}", card.log());
    assert!(card.boot.join("alert-relay.toml").exists());
}
