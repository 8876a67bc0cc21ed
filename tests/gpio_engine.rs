//! The GPIO engine and the rules, driven in paused tokio time: exact edge timelines for every
//! pattern, pre-emption, re-trigger, cooldown, max_age, quiet hours, max_on, silence, and
//! shutdown mid-pattern. The backend is a recorder (GPIO hardware cannot run here); it logs
//! every call the engine makes with the virtual time it was made at.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use alert_relay::alert::{Alert, Confidence};
use alert_relay::config::Config;
use alert_relay::gpio::{run_engine, Backend, GpioCommand, GpioError};
use alert_relay::rules::{LocalZone, RuleEngine};
use alert_relay::stats::{OutputCounters, Stats};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the engine asked the backend to do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Call {
    Off,
    On,
    Tone(u32),
}

type Log = Arc<Mutex<Vec<(Instant, usize, Call)>>>;

struct Recorder {
    log: Log,
    can_tone: bool,
}

impl Backend for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn set(&mut self, i: usize, on: bool) -> Result<(), GpioError> {
        let c = if on { Call::On } else { Call::Off };
        self.log.lock().expect("log").push((Instant::now(), i, c));
        Ok(())
    }
    fn tone(&mut self, i: usize, frequency: u32, _duty: f64) -> Result<bool, GpioError> {
        if self.can_tone {
            let c = Call::Tone(frequency);
            self.log.lock().expect("log").push((Instant::now(), i, c));
        }
        Ok(self.can_tone)
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const OUTPUTS: &str = r#"
[source]
url = "ws://127.0.0.1:1/"
[gpio]
backend = "sim"
[[gpio.outputs]]
name = "red"
pin = 17
max_on = "2s"
[[gpio.outputs]]
name = "buzzer"
pin = 27
kind = "buzzer"
max_on = "1s"
[[gpio.outputs]]
name = "beeper"
pin = 22
kind = "passive_buzzer"
"#;

struct Rig {
    log: Log,
    t0: Instant,
    tx: mpsc::Sender<GpioCommand>,
    stop: watch::Sender<bool>,
    stats: Arc<Stats>,
    activity: watch::Receiver<Vec<bool>>,
    engine: JoinHandle<tokio::sync::mpsc::Receiver<GpioCommand>>,
    rules: RuleEngine,
}

impl Rig {
    /// Starts the engine over the outputs above plus `rules` (TOML), checks every output was
    /// driven off at start, and sets t0.
    async fn start(rules: &str, can_tone: bool, zone: LocalZone) -> Rig {
        let cfg = Config::parse(&format!("{OUTPUTS}{rules}")).expect("test config");
        let log: Log = Arc::default();
        let backend = Box::new(Recorder {
            log: log.clone(),
            can_tone,
        });
        let (tx, rx) = mpsc::channel(16);
        let (stop, stop_rx) = watch::channel(false);
        let (act_tx, activity) = watch::channel(vec![false; cfg.gpio.outputs.len()]);
        let stats = Arc::new(Stats::default());
        let engine = tokio::spawn(run_engine(
            cfg.gpio.outputs.clone(),
            backend,
            rx,
            stop_rx,
            stats.clone(),
            act_tx,
        ));
        tokio::task::yield_now().await;
        {
            let mut l = log.lock().expect("log");
            let start: Vec<(usize, Call)> = l.iter().map(|(_, i, c)| (*i, *c)).collect();
            assert_eq!(start, vec![(0, Call::Off), (1, Call::Off), (2, Call::Off)]);
            l.clear();
        }
        let rules = RuleEngine::with_zone(cfg.gpio.rules.clone(), zone);
        Rig {
            log,
            t0: Instant::now(),
            tx,
            stop,
            stats,
            activity,
            engine,
            rules,
        }
    }

    async fn send(&self, c: GpioCommand) {
        self.tx.send(c).await.expect("engine running");
    }

    async fn at(&self, t_ms: u64) {
        tokio::time::sleep_until(self.t0 + ms(t_ms)).await;
    }

    /// Offers `alert` (received now) to the rules, forwards what fires; returns how many did.
    async fn alert(&mut self, label: &str, confidence: f64, age: Duration) -> usize {
        self.alert_at(label, confidence, age, SystemTime::now())
            .await
    }

    async fn alert_at(
        &mut self,
        label: &str,
        confidence: f64,
        age: Duration,
        wall: SystemTime,
    ) -> usize {
        let a = Alert {
            label: label.into(),
            confidence: Confidence::Valid(confidence),
            event_id: Some("e1".into()),
            timestamp: Some(wall - age),
            rtstream_id: None,
            data: Default::default(),
        };
        let d = self.rules.decide(&a, wall, wall, Instant::now().into_std());
        let n = d.fires.len();
        for f in d.fires {
            self.send(GpioCommand::Fire(f)).await;
        }
        n
    }

    /// Every call on output `i` as (ms after t0, call).
    fn timeline(&self, i: usize) -> Vec<(u64, Call)> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|(_, o, _)| *o == i)
            .map(|(t, _, c)| ((*t - self.t0).as_millis() as u64, *c))
            .collect()
    }

    fn counter(&self, i: usize, f: fn(&OutputCounters) -> &AtomicU64) -> u64 {
        Stats::get(f(self.stats.output(i).expect("registered")))
    }

    /// Stops the engine the way the daemon does (the shutdown signal) and waits for it.
    async fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        (&mut self.engine).await.expect("engine ends cleanly");
    }
}

fn rule(labels: &str, output: &str, pattern: &str, extra: &str) -> String {
    format!(
        "\n[[gpio.rules]]\nlabels = [{labels:?}]\noutput = {output:?}\npattern = {pattern}\n{extra}\n"
    )
}

fn test_pattern(output: usize, pattern: &str) -> GpioCommand {
    GpioCommand::Test {
        output,
        pattern: alert_relay::config::parse_pattern(pattern, "pattern").expect("pattern"),
    }
}

use Call::{Off, On};

#[tokio::test(start_paused = true)]
async fn solid_is_on_for_exactly_its_duration() {
    let rig = Rig::start("", false, LocalZone::fixed(0)).await;
    rig.send(test_pattern(0, r#"{ kind = "solid", duration = "300ms" }"#))
        .await;
    rig.at(1000).await;
    assert_eq!(rig.timeline(0), vec![(0, On), (300, Off)]);
    assert!(rig.timeline(1).is_empty(), "other outputs untouched");
}

#[tokio::test(start_paused = true)]
async fn blink_by_count_has_exact_edges_and_ends_off() {
    let rig = Rig::start("", false, LocalZone::fixed(0)).await;
    rig.send(test_pattern(
        0,
        r#"{ kind = "blink", on = "100ms", off = "50ms", count = 3 }"#,
    ))
    .await;
    rig.at(1000).await;
    assert_eq!(
        rig.timeline(0),
        vec![
            (0, On),
            (100, Off),
            (150, On),
            (250, Off),
            (300, On),
            (400, Off)
        ]
    );
    assert_eq!(rig.counter(0, |c| &c.edges), 6);
    assert_eq!(rig.counter(0, |c| &c.patterns_started), 1);
}

#[tokio::test(start_paused = true)]
async fn blink_by_duration_stops_on_time() {
    let rig = Rig::start("", false, LocalZone::fixed(0)).await;
    rig.send(test_pattern(
        0,
        r#"{ kind = "blink", on = "200ms", off = "100ms", duration = "700ms" }"#,
    ))
    .await;
    rig.at(2000).await;
    assert_eq!(
        rig.timeline(0),
        vec![
            (0, On),
            (200, Off),
            (300, On),
            (500, Off),
            (600, On),
            (700, Off)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn sequence_follows_its_steps() {
    let rig = Rig::start("", false, LocalZone::fixed(0)).await;
    rig.send(test_pattern(
        0,
        r#"{ kind = "sequence", steps = [["200ms", "100ms"], ["600ms", "100ms"]] }"#,
    ))
    .await;
    rig.at(2000).await;
    assert_eq!(
        rig.timeline(0),
        vec![(0, On), (200, Off), (300, On), (900, Off)]
    );
}

#[tokio::test(start_paused = true)]
async fn tone_uses_pwm_where_the_backend_can() {
    let rig = Rig::start("", true, LocalZone::fixed(0)).await;
    rig.send(test_pattern(
        2,
        r#"{ kind = "tone", frequency = 2000, duty = 0.5, duration = "250ms" }"#,
    ))
    .await;
    rig.at(1000).await;
    assert_eq!(rig.timeline(2), vec![(0, Call::Tone(2000)), (250, Off)]);
}

#[tokio::test(start_paused = true)]
async fn tone_falls_back_to_an_on_off_envelope_elsewhere() {
    let rig = Rig::start("", false, LocalZone::fixed(0)).await;
    rig.send(test_pattern(
        2,
        r#"{ kind = "tone", frequency = 2000, duty = 0.5, duration = "250ms" }"#,
    ))
    .await;
    rig.at(1000).await;
    assert_eq!(rig.timeline(2), vec![(0, On), (250, Off)]);
}

#[tokio::test(start_paused = true)]
async fn max_on_cuts_any_pattern_and_is_counted() {
    let rig = Rig::start("", false, LocalZone::fixed(0)).await;
    // red has max_on = 2s.
    rig.send(test_pattern(0, r#"{ kind = "solid", duration = "1h" }"#))
        .await;
    rig.at(10_000).await;
    assert_eq!(rig.timeline(0), vec![(0, On), (2000, Off)]);
    assert_eq!(rig.counter(0, |c| &c.max_on_cuts), 1);
    assert!(!rig.activity.borrow()[0], "the output is idle again");
}

#[tokio::test(start_paused = true)]
async fn higher_priority_preempts_and_the_lower_never_resumes() {
    let rules = rule(
        "low",
        "red",
        r#"{ kind = "blink", on = "100ms", off = "100ms", count = 5 }"#,
        "priority = 1",
    ) + &rule(
        "high",
        "red",
        r#"{ kind = "solid", duration = "250ms" }"#,
        "priority = 5",
    );
    let mut rig = Rig::start(&rules, false, LocalZone::fixed(0)).await;
    assert_eq!(rig.alert("low", 1.0, Duration::ZERO).await, 1);
    rig.at(150).await;
    assert_eq!(rig.alert("high", 1.0, Duration::ZERO).await, 1);
    rig.at(3000).await;
    // Low: on 0, off 100. High takes over at 150 for 250ms; the blink does not come back.
    assert_eq!(
        rig.timeline(0),
        vec![(0, On), (100, Off), (150, On), (400, Off)]
    );
    assert_eq!(rig.counter(0, |c| &c.preempted), 1);
    assert_eq!(rig.counter(0, |c| &c.patterns_started), 2);
}

#[tokio::test(start_paused = true)]
async fn lower_priority_fire_is_ignored_while_higher_runs() {
    let rules = rule(
        "high",
        "red",
        r#"{ kind = "solid", duration = "500ms" }"#,
        "priority = 5",
    ) + &rule(
        "low",
        "red",
        r#"{ kind = "solid", duration = "2s" }"#,
        "priority = 1",
    );
    let mut rig = Rig::start(&rules, false, LocalZone::fixed(0)).await;
    rig.alert("high", 1.0, Duration::ZERO).await;
    rig.at(100).await;
    rig.alert("low", 1.0, Duration::ZERO).await;
    rig.at(3000).await;
    assert_eq!(rig.timeline(0), vec![(0, On), (500, Off)]);
    assert_eq!(rig.counter(0, |c| &c.ignored_lower_priority), 1);
}

#[tokio::test(start_paused = true)]
async fn same_rule_retriggering_extends_a_blink_without_restarting_it() {
    let rules = rule(
        "x",
        "red",
        r#"{ kind = "blink", on = "100ms", off = "100ms", count = 2 }"#,
        "",
    );
    let mut rig = Rig::start(&rules, false, LocalZone::fixed(0)).await;
    rig.alert("x", 1.0, Duration::ZERO).await;
    // Mid-"on" of the first cycle: a restart would have produced an off+on glitch here.
    rig.at(50).await;
    rig.alert("x", 1.0, Duration::ZERO).await;
    rig.at(3000).await;
    assert_eq!(
        rig.timeline(0),
        vec![
            (0, On),
            (100, Off),
            (200, On),
            (300, Off),
            (400, On),
            (500, Off)
        ]
    );
    assert_eq!(rig.counter(0, |c| &c.extended), 1);
    assert_eq!(rig.counter(0, |c| &c.patterns_started), 1);
}

#[tokio::test(start_paused = true)]
async fn retriggering_a_solid_moves_its_end_but_not_past_max_on() {
    let rules = rule("x", "red", r#"{ kind = "solid", duration = "800ms" }"#, "");
    let mut rig = Rig::start(&rules, false, LocalZone::fixed(0)).await;
    for t in [0, 500, 1000, 1500] {
        rig.at(t).await;
        rig.alert("x", 1.0, Duration::ZERO).await;
    }
    rig.at(5000).await;
    // Would end at 1500 + 800 = 2300; red's max_on (2s) ends it at 2000.
    assert_eq!(rig.timeline(0), vec![(0, On), (2000, Off)]);
    assert_eq!(rig.counter(0, |c| &c.extended), 3);
    assert_eq!(rig.counter(0, |c| &c.max_on_cuts), 1);
}

#[tokio::test(start_paused = true)]
async fn cooldown_suppresses_retriggers_until_it_expires() {
    let rules = rule(
        "x",
        "red",
        r#"{ kind = "solid", duration = "100ms" }"#,
        "cooldown = \"1s\"",
    );
    let mut rig = Rig::start(&rules, false, LocalZone::fixed(0)).await;
    assert_eq!(rig.alert("x", 1.0, Duration::ZERO).await, 1);
    rig.at(500).await;
    assert_eq!(rig.alert("x", 1.0, Duration::ZERO).await, 0);
    rig.at(1000).await;
    assert_eq!(rig.alert("x", 1.0, Duration::ZERO).await, 1);
    rig.at(3000).await;
    assert_eq!(
        rig.timeline(0),
        vec![(0, On), (100, Off), (1000, On), (1100, Off)]
    );
}

#[tokio::test(start_paused = true)]
async fn stale_or_replayed_alerts_never_fire() {
    let rules = rule(
        "x",
        "buzzer",
        r#"{ kind = "solid", duration = "100ms" }"#,
        "max_age = \"30s\"",
    );
    let mut rig = Rig::start(&rules, false, LocalZone::fixed(0)).await;
    assert_eq!(rig.alert("x", 1.0, Duration::from_secs(31)).await, 0);
    assert_eq!(rig.alert("x", 1.0, Duration::from_secs(86_400)).await, 0);
    rig.at(1000).await;
    assert!(rig.timeline(1).is_empty());
    assert_eq!(rig.alert("x", 1.0, Duration::from_secs(29)).await, 1);
    rig.at(2000).await;
    assert_eq!(rig.timeline(1), vec![(1000, On), (1100, Off)]);
}

#[tokio::test(start_paused = true)]
async fn quiet_hours_keep_buzzers_silent_and_lights_working() {
    let rules = "\n[[gpio.rules]]\nlabels = [\"x\"]\noutputs = [\"red\", \"buzzer\"]\npattern = { kind = \"solid\", duration = \"100ms\" }\nquiet_hours = [\"22:00-07:00\"]\n";
    // UTC+2: 21:30Z is 23:30 local (quiet), 10:00Z is 12:00 local (not quiet).
    let mut rig = Rig::start(rules, false, LocalZone::fixed(7200)).await;
    let night = alert_relay::clock::parse_rfc3339("2025-06-01T21:30:00Z").expect("ts");
    let day = alert_relay::clock::parse_rfc3339("2025-06-02T10:00:00Z").expect("ts");
    assert_eq!(rig.alert_at("x", 1.0, Duration::ZERO, night).await, 1);
    rig.at(1000).await;
    assert_eq!(rig.alert_at("x", 1.0, Duration::ZERO, day).await, 2);
    rig.at(2000).await;
    assert_eq!(
        rig.timeline(0),
        vec![(0, On), (100, Off), (1000, On), (1100, Off)]
    );
    assert_eq!(rig.timeline(1), vec![(1000, On), (1100, Off)]);
}

#[tokio::test(start_paused = true)]
async fn silence_stops_every_pattern_and_leaves_outputs_off() {
    let mut rig = Rig::start("", false, LocalZone::fixed(0)).await;
    rig.send(test_pattern(
        0,
        r#"{ kind = "blink", on = "100ms", off = "100ms", count = 9 }"#,
    ))
    .await;
    rig.send(test_pattern(1, r#"{ kind = "solid", duration = "900ms" }"#))
        .await;
    rig.at(250).await;
    rig.send(GpioCommand::Silence).await;
    rig.at(3000).await;
    assert_eq!(
        rig.timeline(0),
        vec![(0, On), (100, Off), (200, On), (250, Off)]
    );
    assert_eq!(rig.timeline(1), vec![(0, On), (250, Off)]);
    assert_eq!(rig.counter(0, |c| &c.silenced), 1);
    assert_eq!(rig.counter(1, |c| &c.silenced), 1);
    assert_eq!(*rig.activity.borrow_and_update(), vec![false, false, false]);
    // Outputs are free again: the next fire starts a fresh pattern.
    rig.send(test_pattern(0, r#"{ kind = "solid", duration = "100ms" }"#))
        .await;
    rig.at(4000).await;
    assert_eq!(rig.timeline(0).last(), Some(&(3100, Off)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_mid_pattern_ends_in_the_safe_state() {
    let mut rig = Rig::start("", false, LocalZone::fixed(0)).await;
    rig.send(test_pattern(0, r#"{ kind = "solid", duration = "1s" }"#))
        .await;
    rig.send(test_pattern(
        1,
        r#"{ kind = "blink", on = "100ms", off = "100ms", count = 9 }"#,
    ))
    .await;
    rig.at(150).await;
    rig.shutdown().await;
    let last = |i| rig.timeline(i).last().copied();
    assert_eq!(last(0), Some((150, Off)));
    assert_eq!(last(1), Some((150, Off)));
    assert_eq!(last(2), Some((150, Off)));
    assert_eq!(*rig.activity.borrow(), vec![false, false, false]);
}

#[tokio::test(start_paused = true)]
async fn stats_json_reports_each_output() {
    let rig = Rig::start("", false, LocalZone::fixed(0)).await;
    rig.send(test_pattern(0, r#"{ kind = "solid", duration = "5s" }"#))
        .await;
    rig.at(3000).await;
    let snap = rig.stats.snapshot(None);
    let red = &snap["gpio_outputs"]["red"];
    assert_eq!(red["edges"], 2, "{snap}");
    assert_eq!(red["patterns_started"], 1, "{snap}");
    assert_eq!(red["max_on_cuts"], 1, "{snap}");
    assert_eq!(snap["gpio_outputs"]["buzzer"]["edges"], 0, "{snap}");
}

fn manual(output: usize, pattern: Option<&str>, priority: i32) -> GpioCommand {
    GpioCommand::Manual {
        output,
        pattern: pattern
            .map(|p| alert_relay::config::parse_pattern(p, "pattern").expect("pattern")),
        priority,
    }
}

#[tokio::test(start_paused = true)]
async fn manual_commands_obey_priority_and_max_on() {
    let rules = rule(
        "fire",
        "red",
        r#"{ kind = "solid", duration = "1s" }"#,
        "priority = 200",
    );
    let mut rig = Rig::start(&rules, false, LocalZone::fixed(0)).await;
    assert_eq!(rig.alert("fire", 1.0, Duration::ZERO).await, 1);
    rig.at(100).await;
    // A manual command of priority 100 neither replaces nor stops the priority-200 pattern.
    rig.send(manual(
        0,
        Some(r#"{ kind = "solid", duration = "5s" }"#),
        100,
    ))
    .await;
    rig.send(manual(0, None, 100)).await;
    rig.at(1500).await;
    assert_eq!(rig.timeline(0), vec![(0, On), (1000, Off)]);
    assert_eq!(rig.counter(0, |c| &c.ignored_lower_priority), 2);
    // Free again: a manual "on for an hour" still ends at max_on (2s on "red").
    rig.send(manual(
        0,
        Some(r#"{ kind = "solid", duration = "1h" }"#),
        100,
    ))
    .await;
    rig.at(5000).await;
    assert_eq!(rig.timeline(0)[2..], [(1500, On), (3500, Off)]);
    assert_eq!(rig.counter(0, |c| &c.max_on_cuts), 1);
    // A manual off stops a manual on; silence stops everything.
    rig.send(manual(
        0,
        Some(r#"{ kind = "solid", duration = "1s" }"#),
        100,
    ))
    .await;
    rig.at(5200).await;
    rig.send(manual(0, None, 100)).await;
    rig.send(manual(
        1,
        Some(r#"{ kind = "solid", duration = "1s" }"#),
        100,
    ))
    .await;
    rig.at(5300).await;
    rig.send(GpioCommand::Silence).await;
    rig.at(7000).await;
    assert_eq!(rig.timeline(0)[4..], [(5000, On), (5200, Off)]);
    assert_eq!(rig.timeline(1), vec![(5200, On), (5300, Off)]);
}

#[tokio::test(start_paused = true)]
async fn snooze_holds_back_rules_on_buzzers_or_on_everything() {
    let rules = rule("x", "red", r#"{ kind = "solid", duration = "100ms" }"#, "")
        + &rule(
            "x",
            "buzzer",
            r#"{ kind = "solid", duration = "100ms" }"#,
            "",
        );
    let mut rig = Rig::start(&rules, false, LocalZone::fixed(0)).await;
    // A running buzzer is silenced by the snooze itself.
    rig.send(test_pattern(1, r#"{ kind = "solid", duration = "900ms" }"#))
        .await;
    rig.at(50).await;
    rig.send(GpioCommand::Snooze {
        for_: ms(1000),
        lights: false,
    })
    .await;
    rig.at(100).await;
    rig.alert("x", 1.0, Duration::ZERO).await;
    rig.at(500).await;
    // The user's own command still acts while snoozed.
    rig.send(manual(
        1,
        Some(r#"{ kind = "solid", duration = "100ms" }"#),
        100,
    ))
    .await;
    rig.at(1100).await;
    rig.alert("x", 1.0, Duration::ZERO).await;
    rig.at(1500).await;
    assert_eq!(
        rig.timeline(0),
        vec![(100, On), (200, Off), (1100, On), (1200, Off)]
    );
    assert_eq!(
        rig.timeline(1),
        vec![
            (0, On),
            (50, Off),
            (500, On),
            (600, Off),
            (1100, On),
            (1200, Off)
        ]
    );
    // Lights too: nothing; a zero snooze ends it early.
    rig.send(GpioCommand::Snooze {
        for_: Duration::from_secs(3600),
        lights: true,
    })
    .await;
    rig.alert("x", 1.0, Duration::ZERO).await;
    rig.at(2000).await;
    assert_eq!(rig.timeline(0).len(), 4);
    assert_eq!(rig.timeline(1).len(), 6);
    rig.send(GpioCommand::Snooze {
        for_: Duration::ZERO,
        lights: true,
    })
    .await;
    rig.alert("x", 1.0, Duration::ZERO).await;
    rig.at(2500).await;
    assert_eq!(rig.timeline(0)[4..], [(2000, On), (2100, Off)]);
    rig.shutdown().await;
}
