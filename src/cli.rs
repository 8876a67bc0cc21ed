//! The command line: [`parse_args`] turns the arguments into a [`Command`]; [`USAGE`] is the help.
//!
//! Owns: argument syntax and its error messages. Never does: load a config or touch a file.

use std::path::PathBuf;

use alert_relay::source::admin::{AdminCommand, Target};

pub const USAGE: &str = "\
alert-relay: real-time alerts -> durable queue -> MQTT and GPIO

Usage:
  alert-relay run --config FILE            run the relay in the foreground
  alert-relay check-config --config FILE   validate FILE and print it resolved (secrets redacted)
  alert-relay test-output NAME [--pattern P] --config FILE
                                           run a pattern on output NAME with the real backend,
                                           then leave every output off; P is a TOML inline table,
                                           e.g. '{ kind = \"blink\", on = \"200ms\", off = \"200ms\", count = 3 }'
  alert-relay gpio list --config FILE      configured outputs, backend, and what the board reports
  alert-relay queue stats --dir DIR        summarise a queue directory as JSON (read-only)
  alert-relay queue dump --dir DIR         print its records as JSON lines (read-only)
  alert-relay --version

VideoDB alerts and events (VideoDB mode config; --rtstream/--index default to [[source.alerts]]):
  alert-relay alerts list    --config FILE [--rtstream ID --index ID]
  alert-relay alerts create  --config FILE --event EVENT_ID [--callback-url URL] [--rtstream ID --index ID]
  alert-relay alerts enable  ID --config FILE [--rtstream ID --index ID]
  alert-relay alerts disable ID --config FILE [--rtstream ID --index ID]
  alert-relay alerts delete  ID --config FILE [--rtstream ID --index ID]
  alert-relay events create  --config FILE --label LABEL --prompt PROMPT
  alert-relay events list    --config FILE

Logging: RUST_LOG=debug|info|warn (default info).
Exit status: 0 ok, 1 runtime failure, 2 bad config or usage.";

pub enum Command {
    Run(PathBuf),
    CheckConfig(PathBuf),
    TestOutput {
        config: PathBuf,
        output: String,
        pattern: Option<String>,
    },
    GpioList(PathBuf),
    QueueStats(PathBuf),
    QueueDump(PathBuf),
    Version,
    Help,
    Admin(PathBuf, AdminCommand),
}

pub fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let cmd = it.next().map(String::as_str);
    match cmd {
        None | Some("-h") | Some("--help") | Some("help") => return Ok(Command::Help),
        Some("-V") | Some("--version") => return Ok(Command::Version),
        Some("alerts") | Some("events") => return parse_admin(args),
        Some("queue") => return parse_queue_args(&args[1..]),
        _ => {}
    }
    let mut config = None;
    let mut positional = Vec::new();
    let mut pattern = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pattern" if cmd == Some("test-output") => {
                pattern = Some(it.next().ok_or("--pattern needs a value")?.clone());
            }
            s if !s.starts_with('-') && matches!(cmd, Some("test-output") | Some("gpio")) => {
                positional.push(s.to_string())
            }
            "--config" | "-c" => {
                config = Some(PathBuf::from(it.next().ok_or("--config needs a FILE")?));
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]))
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let config = config.ok_or("--config FILE is required")?;
    match cmd {
        Some("run") => Ok(Command::Run(config)),
        Some("check-config") => Ok(Command::CheckConfig(config)),
        Some("test-output") => match positional.as_slice() {
            [name] => Ok(Command::TestOutput {
                config,
                output: name.clone(),
                pattern,
            }),
            _ => Err("test-output needs exactly one output NAME".into()),
        },
        Some("gpio") => match positional.as_slice() {
            [l] if l == "list" => Ok(Command::GpioList(config)),
            _ => Err("usage: gpio list --config FILE".into()),
        },
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Ok(Command::Help),
    }
}

/// `alerts ...` / `events create ...`: a verb, an optional positional ID, options.
fn parse_admin(args: &[String]) -> Result<Command, String> {
    let group = args[0].as_str();
    let verb = args
        .get(1)
        .map(String::as_str)
        .ok_or("alerts/events need a verb")?;
    let mut config = None;
    let mut positional = Vec::new();
    let mut opt = std::collections::HashMap::new();
    let mut it = args[2..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => {
                config = Some(PathBuf::from(it.next().ok_or("--config needs a FILE")?))
            }
            o @ ("--rtstream" | "--index" | "--event" | "--callback-url" | "--label"
            | "--prompt") => {
                let v = it.next().ok_or_else(|| format!("{o} needs a value"))?;
                opt.insert(o, v.clone());
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]))
            }
            s if s.starts_with('-') => return Err(format!("unexpected option {s:?}")),
            s => positional.push(s.to_string()),
        }
    }
    let config = config.ok_or("--config FILE is required")?;
    let target = Target {
        rtstream_id: opt.remove("--rtstream"),
        index_id: opt.remove("--index"),
    };
    let mut take = |k: &str| {
        opt.remove(k)
            .ok_or_else(|| format!("{group} {verb} needs {k}"))
    };
    let cmd = match (group, verb) {
        ("alerts", "list") => AdminCommand::AlertsList { target },
        ("alerts", "create") => AdminCommand::AlertsCreate {
            target,
            event_id: take("--event")?,
            callback_url: opt.remove("--callback-url"),
        },
        ("alerts", v @ ("enable" | "disable")) => AdminCommand::AlertsSetEnabled {
            target,
            alert_id: positional
                .pop()
                .ok_or_else(|| format!("alerts {v} needs the alert ID"))?,
            enabled: v == "enable",
        },
        ("alerts", "delete") => AdminCommand::AlertsDelete {
            target,
            alert_id: positional.pop().ok_or("alerts delete needs the alert ID")?,
        },
        ("events", "create") => AdminCommand::EventsCreate {
            label: take("--label")?,
            prompt: take("--prompt")?,
        },
        ("events", "list") => AdminCommand::EventsList,
        _ => return Err(format!("unknown command {group} {verb}")),
    };
    if !positional.is_empty() || !opt.is_empty() {
        return Err(format!("{group} {verb}: unexpected arguments"));
    }
    Ok(Command::Admin(config, cmd))
}

/// `queue stats|dump --dir DIR`.
fn parse_queue_args(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let sub = it.next().map(String::as_str);
    let mut dir = None;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(it.next().ok_or("--dir needs a DIR")?)),
            s if s.starts_with("--dir=") => dir = Some(PathBuf::from(&s["--dir=".len()..])),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let dir = dir.ok_or("--dir DIR is required")?;
    match sub {
        Some("stats") => Ok(Command::QueueStats(dir)),
        Some("dump") => Ok(Command::QueueDump(dir)),
        other => Err(format!("queue needs `stats` or `dump`, not {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn no_arguments_and_help_flags_mean_help() {
        for a in [&[][..], &["-h"], &["--help"], &["help"]] {
            assert!(matches!(parse(a), Ok(Command::Help)), "{a:?}");
        }
        assert!(matches!(parse(&["-V"]), Ok(Command::Version)));
        assert!(matches!(parse(&["--version"]), Ok(Command::Version)));
    }

    #[test]
    fn run_and_check_config_take_the_config_in_either_spelling() {
        match parse(&["run", "--config", "a.toml"]) {
            Ok(Command::Run(p)) => assert_eq!(p, PathBuf::from("a.toml")),
            _ => panic!("run --config"),
        }
        match parse(&["run", "-c", "b.toml"]) {
            Ok(Command::Run(p)) => assert_eq!(p, PathBuf::from("b.toml")),
            _ => panic!("run -c"),
        }
        match parse(&["check-config", "--config=c.toml"]) {
            Ok(Command::CheckConfig(p)) => assert_eq!(p, PathBuf::from("c.toml")),
            _ => panic!("check-config --config="),
        }
    }

    #[test]
    fn missing_values_and_stray_arguments_are_errors_that_say_so() {
        assert_eq!(
            parse(&["run"]).err().as_deref(),
            Some("--config FILE is required")
        );
        assert_eq!(
            parse(&["run", "--config"]).err().as_deref(),
            Some("--config needs a FILE")
        );
        assert_eq!(
            parse(&["run", "--config", "a", "extra"]).err().as_deref(),
            Some("unexpected argument \"extra\"")
        );
        assert_eq!(
            parse(&["frobnicate", "--config", "a"]).err().as_deref(),
            Some("unknown command \"frobnicate\"")
        );
    }

    #[test]
    fn test_output_takes_one_name_and_an_optional_pattern() {
        match parse(&[
            "test-output",
            "buzzer",
            "--pattern",
            "{ kind = \"solid\" }",
            "-c",
            "x",
        ]) {
            Ok(Command::TestOutput {
                config,
                output,
                pattern,
            }) => {
                assert_eq!(config, PathBuf::from("x"));
                assert_eq!(output, "buzzer");
                assert_eq!(pattern.as_deref(), Some("{ kind = \"solid\" }"));
            }
            _ => panic!("test-output"),
        }
        assert!(parse(&["test-output", "-c", "x"]).is_err());
        assert!(parse(&["test-output", "a", "b", "-c", "x"]).is_err());
        assert!(parse(&["run", "--pattern", "p", "-c", "x"]).is_err());
    }

    #[test]
    fn gpio_list_and_queue_subcommands() {
        assert!(matches!(
            parse(&["gpio", "list", "-c", "x"]),
            Ok(Command::GpioList(_))
        ));
        assert!(parse(&["gpio", "show", "-c", "x"]).is_err());
        match parse(&["queue", "stats", "--dir", "/q"]) {
            Ok(Command::QueueStats(d)) => assert_eq!(d, PathBuf::from("/q")),
            _ => panic!("queue stats"),
        }
        assert!(matches!(
            parse(&["queue", "dump", "--dir=/q"]),
            Ok(Command::QueueDump(_))
        ));
        assert_eq!(
            parse(&["queue", "stats"]).err().as_deref(),
            Some("--dir DIR is required")
        );
        assert!(parse(&["queue", "purge", "--dir", "/q"]).is_err());
    }

    #[test]
    fn admin_verbs_take_their_ids_and_options() {
        match parse(&[
            "alerts",
            "enable",
            "A1",
            "-c",
            "x",
            "--rtstream",
            "rts-1",
            "--index",
            "i",
        ]) {
            Ok(Command::Admin(
                _,
                AdminCommand::AlertsSetEnabled {
                    target,
                    alert_id,
                    enabled,
                },
            )) => {
                assert_eq!(alert_id, "A1");
                assert!(enabled);
                assert_eq!(target.rtstream_id.as_deref(), Some("rts-1"));
                assert_eq!(target.index_id.as_deref(), Some("i"));
            }
            _ => panic!("alerts enable"),
        }
        match parse(&[
            "events", "create", "-c", "x", "--label", "l", "--prompt", "p",
        ]) {
            Ok(Command::Admin(_, AdminCommand::EventsCreate { label, prompt })) => {
                assert_eq!((label.as_str(), prompt.as_str()), ("l", "p"));
            }
            _ => panic!("events create"),
        }
        assert_eq!(
            parse(&["alerts", "create", "-c", "x"]).err().as_deref(),
            Some("alerts create needs --event")
        );
        assert!(parse(&["alerts", "delete", "-c", "x"]).is_err());
        assert!(parse(&["alerts", "list", "-c", "x", "--bogus"]).is_err());
        assert!(parse(&["alerts", "list", "-c", "x", "stray"]).is_err());
        assert!(parse(&["alerts"]).is_err());
    }
}
