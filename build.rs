//! Link order of the release binary's code (x86_64 glibc with Rust's default linker only).
//!
//! `link/hot-text.txt` lists the functions the relay runs from start-up to idle and per alert
//! (recorded with callgrind on `examples/bench.rs`; how to regenerate it is in that file). lld
//! places them first and together, so the few hundred KiB of code the daemon runs share pages
//! instead of touching (and keeping resident) most of the 2.7 MiB of `.text`. A name the
//! build no longer has is skipped, so a stale list costs only resident pages, never a failure.
//!
//! Only where the linker is known to be lld: `x86_64-unknown-linux-gnu` without a configured
//! linker, on Rust >= 1.90 (rust-lld is its default from 1.90). GNU ld, a cross gcc or
//! cargo-zigbuild get nothing from here.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link/hot-text.txt");
    println!("cargo:rerun-if-env-changed=ALERT_RELAY_LINK_MAP");
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || env::var_os("RUSTC_LINKER").is_some()
        || env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| {
            f.contains("linker") || f.contains("link-self-contained") || f.contains("fuse-ld")
        })
        || !rust_lld_by_default()
    {
        return;
    }
    let dir = env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&dir).join("link/hot-text.txt");
    let arg = "cargo:rustc-link-arg-bin=alert-relay";
    println!("{arg}=-Wl,--symbol-ordering-file={}", order.display());
    println!("{arg}=-Wl,--no-warn-symbol-ordering");
    // Where the linker put each function: the input for regenerating the list.
    if let Some(map) = env::var_os("ALERT_RELAY_LINK_MAP") {
        println!("{arg}=-Wl,-Map={}", Path::new(&map).display());
    }
}

/// Whether this rustc links x86_64 glibc binaries with rust-lld by default (1.90 and later).
fn rust_lld_by_default() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .lines()
        .find_map(|l| l.strip_prefix("release: 1."))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}
