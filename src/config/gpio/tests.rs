use super::*;
use crate::config::*;

#[test]
fn gpio_keys_name_their_key() {
    let outputs = "[gpio]\nbackend = \"rppal\"\n[[gpio.outputs]]\nname = \"r\"\npin = 17\n";
    let rule = "[[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\n";
    let cases = [
        (
            format!("{rule}quiet_hours = [\"22:00-25:00\"]\n"),
            "gpio.rules[0].quiet_hours[0]",
        ),
        (
            format!("{rule}quiet_hours = [\"07:00-07:00\"]\n"),
            "gpio.rules[0].quiet_hours[0]",
        ),
        (
            format!("{rule}rtstream_id = \"\"\n"),
            "gpio.rules[0].rtstream_id",
        ),
        (
            "[[gpio.rules]]\nlabels = [\"a\\u0000b\"]\noutput = \"r\"\n".to_string(),
            "gpio.rules[0].labels",
        ),
        (
            "[gpio.ack_button]\nline = \"GPIO5\"\n".to_string(),
            "gpio.ack_button.pin",
        ),
        (
            "[gpio.ack_button]\npin = 5\ndebounce = \"5s\"\n".to_string(),
            "gpio.ack_button.debounce",
        ),
        (
            "[gpio.ack_button]\npin = 5\nbounce = \"5ms\"\n".to_string(),
            "bounce",
        ),
    ];
    for (tail, key) in cases {
        assert_refused_naming(&format!("{MINIMAL}{outputs}{tail}"), key);
    }
}

#[test]
fn gpio_extras_parse_with_defaults() {
    let cfg = Config::parse(&format!(
            "{MINIMAL}[gpio]\nbackend = \"cdev\"\n[[gpio.outputs]]\nname = \"r\"\nchip = \"pinctrl-rp1\"\noffset = 17\n\
             [[gpio.rules]]\nlabels = [\"x\"]\noutput = \"r\"\nrtstream_id = \"rts-*\"\nquiet_hours = [\"22:30-06:45\"]\n\
             [gpio.ack_button]\nline = \"GPIO5\"\n"
        ))
        .expect("config");
    let r = &cfg.gpio.rules[0];
    assert_eq!(r.rtstream_id(), Some("rts-*"));
    assert_eq!(
        r.quiet_hours(),
        [QuietWindow {
            start_min: 22 * 60 + 30,
            end_min: 6 * 60 + 45
        }]
    );
    let b = cfg.gpio.ack_button.as_ref().expect("button");
    assert!(b.active_low);
    assert_eq!(b.debounce, DEFAULT_ACK_DEBOUNCE);
    assert!(cfg
        .redacted_toml()
        .contains("quiet_hours = [\"22:30-06:45\"]"));
    assert_eq!(
        parse_pattern(
            "{ kind = \"tone\", frequency = 2000, duration = \"1s\" }",
            "p"
        )
        .expect("tone"),
        Pattern::Tone {
            frequency: 2000,
            duty: 0.5,
            duration: Duration::from_secs(1)
        }
    );
}

#[test]
fn a_rules_labels_come_back_in_order_from_their_one_block() {
    let labels: Labels = ["intrusion", "fire*", "", "smoke"].into_iter().collect();
    assert_eq!(
        labels.iter().collect::<Vec<_>>(),
        ["intrusion", "fire*", "", "smoke"]
    );
    assert_eq!(
        (labels.get(1), labels.get(3), labels.get(4)),
        (Some("fire*"), Some("smoke"), None)
    );
    assert_eq!(
        serde_json::to_string(&labels).expect("json"),
        r#"["intrusion","fire*","","smoke"]"#
    );
    assert_eq!(Labels::default().iter().count(), 0);
}
