//! The VideoDB stand-in (`examples/support/videodb.rs`) as a process of its own, for clients
//! that are not Rust: `.ci/videodb-sdk.sh` drives it with VideoDB's Python SDK.
//!
//! ```text
//! cargo run --example videodb_standin -- --key KEY [--port N] [--v2-index RT/IDX]... [--hello plain|typed|numeric|binary]
//! ```
//! Prints one JSON line on stdout once both listeners are up:
//! `{"api_url": "http://127.0.0.1:N", "ws_url": "ws://..."}`, then serves until killed.
//! `--port` fixes the REST port (the WebSocket port is always chosen by the OS).
//! `POST /_standin/send` with `{"text": "..."}` or `{"binary": "..."}` sends a frame on the
//! newest socket.

#[allow(dead_code)]
#[path = "support/videodb.rs"]
mod videodb;

use std::io::Write;

use videodb::{Hello, VideoDb};

fn usage(msg: &str) -> ! {
    eprintln!(
        "videodb_standin: {msg}\nusage: videodb_standin --key KEY [--port N] [--v2-index RT/IDX]... [--hello plain|typed|numeric|binary]"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut key = None;
    let mut port = 0u16;
    let mut v2 = Vec::new();
    let mut hello = Hello::Plain;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--key" => key = Some(value()),
            "--port" => port = value().parse().unwrap_or_else(|_| usage("bad --port")),
            "--v2-index" => {
                let v = value();
                let (rt, idx) = v
                    .split_once('/')
                    .unwrap_or_else(|| usage("--v2-index takes RT/IDX"));
                v2.push((rt.to_string(), idx.to_string()));
            }
            "--hello" => {
                hello = match value().as_str() {
                    "plain" => Hello::Plain,
                    "typed" => Hello::Typed,
                    "numeric" => Hello::Numeric,
                    "binary" => Hello::Binary,
                    _ => usage("--hello is plain, typed, numeric or binary"),
                }
            }
            other => usage(&format!("unexpected argument {other:?}")),
        }
    }
    let key = key.unwrap_or_else(|| usage("--key is required"));
    let v = VideoDb::start_on(&key, port).await;
    v.set_hello(hello);
    for (rt, idx) in &v2 {
        v.add_v2_index(rt, idx);
    }
    let line = serde_json::json!({ "api_url": v.api_url, "ws_url": v.ws_url });
    let mut out = std::io::stdout();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(1);
    }
    std::future::pending::<()>().await
}
