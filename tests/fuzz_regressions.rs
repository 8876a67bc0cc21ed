//! Replays the fuzz corpus seeds (`fuzz/seeds/<target>/`) and every crash the fuzzer found
//! (`fuzz/regressions/<target>/`, each fixed) through the same harness the cargo-fuzz targets
//! run, on the stable toolchain: CI's plain `cargo test` keeps them fixed without nightly.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|f| !f.ends_with(".keep")) {
            let data = std::fs::read(f).expect("readable input");
            eprintln!("{}", f.display());
            run(&data);
            n += 1;
        }
    }
    assert!(
        n > 0,
        "no inputs for fuzz target {target}: fuzz/seeds/{target} is empty"
    );
}

#[test]
fn frame_inputs_never_panic() {
    replay("frame", harness::frame);
}

#[test]
fn webhook_inputs_never_panic() {
    replay("webhook", harness::webhook);
}

#[test]
fn config_inputs_never_panic() {
    replay("config", harness::config);
}

#[test]
fn queue_record_inputs_never_panic() {
    replay("queue_record", harness::queue_record);
}

#[test]
fn mqtt_command_inputs_never_panic() {
    replay("mqtt_command", harness::mqtt_command);
}
