//! The default MQTT client id: unique per board, stable across restarts, and not the raw
//! `/etc/machine-id`.
//!
//! Cards cloned from one image share the hostname (`raspberrypi`) but not the machine id:
//! Raspberry Pi OS (and systemd's first boot) writes a fresh `/etc/machine-id` when the file is
//! empty or missing. A broker allows one session per client id, so two relays with the same id
//! take turns kicking each other off. The machine id is meant to stay private (machine-id(5):
//! "should be hashed with a fixed, application-specific key"), so only a keyed hash of it goes
//! on the wire.

/// Where the machine id is read from, in order (the D-Bus copy for systems without systemd).
pub const MACHINE_ID_PATHS: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// The default client id and, when the machine id could not be used, a sentence for the log.
pub fn default_client_id() -> (String, Option<String>) {
    let host = std::fs::read_to_string("/etc/hostname").ok();
    let mut tried = Vec::new();
    for path in MACHINE_ID_PATHS {
        match std::fs::read_to_string(path) {
            Ok(text) if usable_machine_id(&text) => {
                return (client_id_for(host.as_deref(), Some(&text)), None)
            }
            Ok(_) => tried.push(format!("{path} is empty or not a machine id")),
            Err(e) => tried.push(format!("{path}: {e}")),
        }
    }
    let id = client_id_for(host.as_deref(), None);
    let why = format!(
        "mqtt: no usable machine id ({}); the default client_id {id:?} comes from the hostname \
         alone, so cloned cards will share it: set mqtt.client_id, or create a machine id \
         (see README, \"Cloned cards\")",
        tried.join("; ")
    );
    (id, Some(why))
}

/// A machine id is 32 hex digits (machine-id(5)); systemd leaves the file empty or
/// "uninitialized" until first boot completes.
fn usable_machine_id(text: &str) -> bool {
    let t = text.trim();
    t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()) && t.bytes().any(|b| b != b'0')
}

/// `alert-relay-{hostname}-{12 hex digits of a keyed hash of the machine id}`, or
/// `alert-relay-{hostname}` without a machine id.
pub fn client_id_for(hostname: Option<&str>, machine_id: Option<&str>) -> String {
    let host: String = hostname
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or("device")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    let host = if host.is_empty() {
        "device".into()
    } else {
        host
    };
    match machine_id {
        Some(m) => format!("alert-relay-{host}-{:012x}", keyed_hash(m.trim()) >> 16),
        None => format!("alert-relay-{host}"),
    }
}

/// FNV-1a 64 over an application key and the id: stable across builds and Rust versions
/// (unlike `DefaultHasher`), and enough to tell a hundred boards apart; it hides the raw id
/// from the broker's logs, it is not a secret.
fn keyed_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"alert-relay client id\0".iter().chain(id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloned_cards_with_fresh_machine_ids_get_different_client_ids() {
        let a = client_id_for(
            Some("raspberrypi\n"),
            Some("0123456789abcdef0123456789abcdef\n"),
        );
        let b = client_id_for(
            Some("raspberrypi"),
            Some("0123456789abcdef0123456789abcdee"),
        );
        assert_ne!(a, b);
        assert!(a.starts_with("alert-relay-raspberrypi-"), "{a}");
        assert_eq!(a.len(), "alert-relay-raspberrypi-".len() + 12);
        // Stable: the same board gets the same id on every start.
        assert_eq!(
            a,
            client_id_for(
                Some("raspberrypi"),
                Some("0123456789abcdef0123456789abcdef")
            )
        );
        // The raw id never appears.
        assert!(!a.contains("0123456789ab"), "{a}");
        let ids: std::collections::HashSet<String> = (0..100u32)
            .map(|i| client_id_for(Some("raspberrypi"), Some(&format!("{i:032x}"))))
            .collect();
        assert_eq!(ids.len(), 100);
    }

    #[test]
    fn without_a_machine_id_the_hostname_is_the_fallback() {
        assert_eq!(client_id_for(Some("pi-1"), None), "alert-relay-pi-1");
        assert_eq!(client_id_for(None, None), "alert-relay-device");
        assert_eq!(client_id_for(Some(" /// "), None), "alert-relay-device");
        assert!(!usable_machine_id(""));
        assert!(!usable_machine_id("uninitialized\n"));
        assert!(!usable_machine_id(&"0".repeat(32)));
        assert!(usable_machine_id("0123456789abcdef0123456789ABCDEF\n"));
    }
}
