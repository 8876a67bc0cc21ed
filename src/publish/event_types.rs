//! The event entity's `event_types` ([`EventTypes`]): the rules' exact labels (globs cannot be
//! listed), `mqtt.ha_event_types` and [`OTHER_EVENT_TYPE`], plus the labels learned from
//! alerts ([`EventTypes::with_learned`]); sorted, without duplicates. Pure.
//!
//! The labels are read where the rules hold them, never copied: 10,000 rules announce 10,000
//! labels, which the relay keeps once (issue 13: 10,000 rules within +5 MB of one).

use std::collections::{BTreeSet, BinaryHeap};
use std::iter::Peekable;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::ha::OTHER_EVENT_TYPE;
use crate::config::{MqttConfig, RuleConfig};

/// The configured event types.
#[derive(Debug, Clone)]
pub struct EventTypes {
    rules: Arc<Vec<RuleConfig>>,
    /// `mqtt.ha_event_types` and `other`, as configured.
    extra: Box<[Box<str>]>,
    /// Where each type is, sorted by the type, each once: `(rule, label)` of a rule's exact
    /// label, or `(EXTRA, i)` of `extra[i]`.
    at: Box<[(u32, u32)]>,
}

/// The `rule` of an entry of [`EventTypes::at`] that is one of the extras.
const EXTRA: u32 = u32::MAX;

/// Whether a rule label is a glob, which cannot be announced as one type.
fn is_glob(label: &str) -> bool {
    label.contains(['*', '?', '['])
}

impl EventTypes {
    pub fn new(cfg: &MqttConfig, rules: &Arc<Vec<RuleConfig>>) -> EventTypes {
        let extra: Box<[Box<str>]> = cfg
            .ha_event_types
            .iter()
            .map(String::as_str)
            .chain([OTHER_EVENT_TYPE])
            .map(Box::from)
            .collect();
        let index = |i: usize| u32::try_from(i).ok();
        let of_rules = rules
            .iter()
            .enumerate()
            .filter_map(|(r, rule)| Some((index(r)?, rule)))
            .flat_map(|(r, rule)| {
                rule.labels
                    .iter()
                    .enumerate()
                    .filter(|(_, label)| !is_glob(label))
                    .filter_map(move |(l, label)| Some((label, r, index(l)?)))
            });
        let extras = extra
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((&**t, EXTRA, index(i)?)));
        // Heap-sorted: `sort_by` would add its own ~10 KB sort routine to the binary for this
        // one list. A rule's label sorts before the same extra, and is the one kept.
        let mut sorted = BinaryHeap::from_iter(of_rules.chain(extras)).into_sorted_vec();
        sorted.dedup_by(|a, b| a.0 == b.0);
        let at = sorted.into_iter().map(|(_, r, l)| (r, l)).collect();
        EventTypes {
            rules: rules.clone(),
            extra,
            at,
        }
    }

    fn label(&self, (r, l): (u32, u32)) -> &str {
        let label = if r == EXTRA {
            self.extra.get(l as usize).map(|s| &**s)
        } else {
            self.rules
                .get(r as usize)
                .and_then(|rule| rule.labels.get(l as usize))
        };
        label.unwrap_or("")
    }

    /// The configured types, sorted, each once.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.at.iter().map(|&at| self.label(at))
    }

    /// Whether `label` is a configured type (asked once per alert: a binary search).
    pub fn contains(&self, label: &str) -> bool {
        self.at
            .binary_search_by(|&at| self.label(at).cmp(label))
            .is_ok()
    }

    /// These types plus `learned`: what the event entity announces.
    pub fn with_learned<'a>(&'a self, learned: &'a BTreeSet<String>) -> Announced<'a> {
        Announced {
            types: self,
            learned,
        }
    }
}

/// The announced types: written into the discovery message straight from the rules and the
/// learned set, never collected into a list first.
#[derive(Clone, Copy)]
pub struct Announced<'a> {
    types: &'a EventTypes,
    learned: &'a BTreeSet<String>,
}

impl<'a> Announced<'a> {
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        merge(self.types.iter(), self.learned.iter().map(String::as_str))
    }

    pub fn contains(&self, label: &str) -> bool {
        self.learned.contains(label) || self.types.contains(label)
    }
}

impl Serialize for Announced<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// Two sorted runs of distinct strings as one sorted run of distinct strings.
fn merge<'a>(
    a: impl Iterator<Item = &'a str>,
    b: impl Iterator<Item = &'a str>,
) -> impl Iterator<Item = &'a str> {
    struct Merge<A: Iterator, B: Iterator>(Peekable<A>, Peekable<B>);
    impl<'a, A: Iterator<Item = &'a str>, B: Iterator<Item = &'a str>> Iterator for Merge<A, B> {
        type Item = &'a str;
        fn next(&mut self) -> Option<&'a str> {
            match (self.0.peek(), self.1.peek()) {
                (Some(x), Some(y)) if x == y => {
                    self.1.next();
                    self.0.next()
                }
                (Some(x), Some(y)) if x < y => self.0.next(),
                (Some(_), Some(_)) | (None, _) => self.1.next(),
                (Some(_), None) => self.0.next(),
            }
        }
    }
    Merge(a.peekable(), b.peekable())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(more_rules: &str) -> Config {
        Config::parse(&format!(
            r#"
[source]
url = "ws://127.0.0.1:1/"
[mqtt]
ha_discovery = true
ha_event_types = ["doorbell", "intrusion"]
[gpio]
backend = "sim"
[[gpio.outputs]]
name = "red"
[[gpio.rules]]
labels = ["intrusion", "fire*", "smoke"]
output = "red"
{more_rules}"#
        ))
        .expect("config")
    }

    #[test]
    fn event_types_are_exact_labels_extras_and_other() {
        let c = cfg("");
        let types = EventTypes::new(&c.mqtt, &c.gpio.rules);
        assert_eq!(
            types.iter().collect::<Vec<_>>(),
            ["doorbell", "intrusion", "other", "smoke"]
        );
        // A label of several rules, and one of a rule alone, are each listed once.
        let c = cfg("[[gpio.rules]]\nlabels = [\"smoke\", \"person\"]\noutput = \"red\"\n");
        let types = EventTypes::new(&c.mqtt, &c.gpio.rules);
        assert_eq!(
            types.iter().collect::<Vec<_>>(),
            ["doorbell", "intrusion", "other", "person", "smoke"]
        );
        for t in ["doorbell", "intrusion", "other", "person", "smoke"] {
            assert!(types.contains(t), "{t}");
        }
        assert!(!types.contains("fire*") && !types.contains("fire") && !types.contains(""));
    }

    #[test]
    fn learned_labels_join_the_configured_types() {
        let c = cfg("");
        let types = EventTypes::new(&c.mqtt, &c.gpio.rules);
        let learned: BTreeSet<String> = ["zebra".to_string(), "other".to_string()].into();
        let announced = types.with_learned(&learned);
        assert_eq!(
            announced.iter().collect::<Vec<_>>(),
            ["doorbell", "intrusion", "other", "smoke", "zebra"]
        );
        assert!(announced.contains("zebra") && !announced.contains("cat"));
        assert_eq!(
            serde_json::to_string(&announced).expect("json"),
            r#"["doorbell","intrusion","other","smoke","zebra"]"#
        );
    }

    #[test]
    fn merge_gives_one_sorted_run_of_distinct_strings() {
        let got: Vec<&str> = merge(
            ["a", "c", "d", "x"].into_iter(),
            ["b", "c", "y", "z"].into_iter(),
        )
        .collect();
        assert_eq!(got, ["a", "b", "c", "d", "x", "y", "z"]);
        assert_eq!(
            merge([].into_iter(), ["b"].into_iter()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(
            merge(["a"].into_iter(), [].into_iter()).collect::<Vec<_>>(),
            ["a"]
        );
    }
}
