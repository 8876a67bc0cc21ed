//! Cuts a config's TOML text at its `[[gpio.rules]]` tables, so that each rule is parsed on its
//! own and the rest of the file ("the skeleton") is parsed as one small document.
//!
//! Why: `toml` builds a full editable document before serde sees a single value, about 9 KiB
//! per rule; 10,000 rules peaked at ~110 MB and glibc kept most of it after the parse. Parsed
//! one at a time, a rule's document is freed before the next one is built. [`Config::load`]
//! also reads the file line by line (twice: once to collect the skeleton, once to validate the
//! rules in order), so the text is never held whole (issue 13: 10,000 rules within +5 MB).
//!
//! Never decides what a config means: it only finds table headers (a line scanner that knows
//! TOML's strings, comments and brackets) and hands the pieces to `toml`. Whenever it is unsure
//! (an escape in a header key, a layout it does not cut, any piece failing to parse) the caller
//! parses the whole text the old way, whose result, accepted or refused, is the answer.
//!
//! [`Config::load`]: super::Config::load

/// Where one line of the config goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Skeleton,
    /// The `[[gpio.rules]]` header of a new rule.
    NewRule,
    /// A line of the rule last opened (its keys, its `[gpio.rules.pattern]` sub-table).
    Rule,
}

/// Classifies the lines of a config, one after the other.
#[derive(Debug, Default)]
pub struct Splitter {
    /// Nesting of arrays and inline tables in a value: a `[` at a line start inside one is an
    /// element, not a header.
    depth: usize,
    /// A string still open at the end of the last line (quote, multi-line).
    open: Option<(u8, bool)>,
    in_rule: bool,
}

impl Splitter {
    /// Where `line` (with its `\n`, if any) goes; `None` when the scanner is unsure.
    pub fn line(&mut self, line: &str) -> Option<Dest> {
        let b = line.as_bytes();
        if self.open.is_none() && self.depth == 0 {
            let lead = b.iter().take_while(|c| matches!(c, b' ' | b'\t')).count();
            if b.get(lead) == Some(&b'[') {
                let (array, path) = header(line, lead)?;
                let under_rules = path.len() > 2 && path[..2] == ["gpio", "rules"];
                return if path == ["gpio", "rules"] {
                    // `[gpio.rules]` is not a list of rules: let toml say what it is.
                    array.then(|| {
                        self.in_rule = true;
                        Dest::NewRule
                    })
                } else if under_rules {
                    // A sub-table of the rule just opened; anywhere else, the full parse.
                    self.in_rule.then_some(Dest::Rule)
                } else {
                    self.in_rule = false;
                    Some(Dest::Skeleton)
                };
            }
        }
        let mut i = 0;
        while i < b.len() {
            if let Some((q, multi)) = self.open {
                match string_end(b, i, q, multi) {
                    Some(end) => {
                        self.open = None;
                        i = end;
                        continue;
                    }
                    None if multi => break,
                    None => return None, // a one-line string across a line end
                }
            }
            match b[i] {
                b'#' => break,
                q @ (b'"' | b'\'') => {
                    let multi = b[i..].starts_with(&[q, q, q]);
                    self.open = Some((q, multi));
                    i += if multi { 3 } else { 1 };
                }
                b'[' | b'{' => {
                    self.depth += 1;
                    i += 1;
                }
                b']' | b'}' => {
                    self.depth = self.depth.checked_sub(1)?;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        Some(if self.in_rule {
            Dest::Rule
        } else {
            Dest::Skeleton
        })
    }

    /// Whether the text ended cleanly (no open string or bracket).
    pub fn finished(&self) -> bool {
        self.depth == 0 && self.open.is_none()
    }
}

/// The pieces of one config text.
pub struct Pieces<'a> {
    /// Everything but the rule tables, in document order.
    pub skeleton: String,
    /// Each `[[gpio.rules]]` table with the sub-tables that follow it, in document order;
    /// every piece is itself a TOML document holding exactly one rule.
    pub rules: Vec<&'a str>,
}

/// Splits `text`, or `None` when it is not cut here (then the whole text is parsed at once).
pub fn split(text: &str) -> Option<Pieces<'_>> {
    let mut s = Splitter::default();
    let mut skeleton = String::new();
    let mut rules: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let end = at + line.len();
        match s.line(line)? {
            Dest::Skeleton => skeleton.push_str(line),
            Dest::NewRule => rules.push((at, end)),
            Dest::Rule => rules.last_mut()?.1 = end,
        }
        at = end;
    }
    s.finished().then(|| Pieces {
        skeleton,
        rules: rules.into_iter().map(|(a, b)| &text[a..b]).collect(),
    })
}

/// Reads the header whose `[` is at `line[at]`: `[[...]]` or not, and its key path. Only
/// blanks and a comment may follow it on the line.
fn header(line: &str, at: usize) -> Option<(bool, Vec<String>)> {
    let b = line.as_bytes();
    let array = b.get(at + 1) == Some(&b'[');
    let mut i = at + if array { 2 } else { 1 };
    let blanks = |mut i: usize| {
        while matches!(b.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        i
    };
    let mut path = Vec::new();
    loop {
        i = blanks(i);
        let start = i;
        match *b.get(i)? {
            q @ (b'"' | b'\'') => {
                if b[i..].starts_with(&[q, q, q]) {
                    return None;
                }
                i = string_end(b, i + 1, q, false)?;
                let raw = &line[start + 1..i - 1];
                if raw.contains('\\') {
                    return None; // escapes are not decoded here
                }
                path.push(raw.to_string());
            }
            _ => {
                while b
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || b"-_".contains(c))
                {
                    i += 1;
                }
                if i == start {
                    return None;
                }
                path.push(line[start..i].to_string());
            }
        }
        i = blanks(i);
        match b.get(i)? {
            b'.' => i += 1,
            b']' => break,
            _ => return None,
        }
    }
    let close: &[u8] = if array { b"]]" } else { b"]" };
    if !b[i..].starts_with(close) {
        return None;
    }
    let rest = line[i + close.len()..].trim_start_matches([' ', '\t']);
    let rest_ok = rest.is_empty() || rest.starts_with('#') || rest == "\n" || rest == "\r\n";
    rest_ok.then_some((array, path))
}

/// Where the string whose body starts at `b[i]` ends (the offset after its closing quote), or
/// `None` if the line ends first.
fn string_end(b: &[u8], mut i: usize, q: u8, multi: bool) -> Option<usize> {
    while i < b.len() {
        match b[i] {
            b'\\' if q == b'"' => i += 2,
            c if c == q && !multi => return Some(i + 1),
            c if c == q && b[i..].starts_with(&[q, q, q]) => {
                // Up to two more quotes belong to the content: `"""a""""` ends in `a"`.
                let mut end = i + 3;
                while end < b.len() && b[end] == q && end < i + 5 {
                    end += 1;
                }
                return Some(end);
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_outside_strings_comments_and_arrays() {
        let text = "a = 1 # [[gpio.rules]]\ns = \"[[gpio.rules]]\"\nm = '''\n[[gpio.rules]]\n'''\n\
                    q = \"\"\"\n[[gpio.rules]]\"\"\"\"\narr = [\n  [\"1\", \"2\"],\n  [3],\n]\n\
                    t = { x = [1] }\n  [[ gpio . 'rules' ]] # c\nlabels = [\"a\"]\n[\"p q\".r]\nk = 1\n";
        let p = split(text).expect("split");
        assert_eq!(
            p.rules,
            vec!["  [[ gpio . 'rules' ]] # c\nlabels = [\"a\"]\n"]
        );
        assert!(p.skeleton.starts_with("a = 1 #") && p.skeleton.ends_with("[\"p q\".r]\nk = 1\n"));
    }

    #[test]
    fn rules_and_their_sub_tables_become_pieces() {
        let text = "[source]\nurl = \"ws://h/\"\n[[gpio.rules]]\nlabels = [\"a\"]\n\
                    [gpio.rules.pattern]\nkind = \"solid\"\n[gpio]\nbackend = \"sim\"\n\
                    [[gpio.rules]]\nlabels = [\"b\"]";
        let p = split(text).expect("split");
        assert_eq!(
            p.rules,
            vec![
                "[[gpio.rules]]\nlabels = [\"a\"]\n[gpio.rules.pattern]\nkind = \"solid\"\n",
                "[[gpio.rules]]\nlabels = [\"b\"]"
            ]
        );
        assert_eq!(
            p.skeleton,
            "[source]\nurl = \"ws://h/\"\n[gpio]\nbackend = \"sim\"\n"
        );
    }

    #[test]
    fn unsure_layouts_are_left_to_the_full_parse() {
        for text in [
            "[gpio.rules]\nlabels = [\"a\"]\n", // not an array of tables
            "[gpio]\n[gpio.rules.pattern]\nkind = \"x\"\n", // a sub-table of no rule here
            "[\"gp\\u0069o\".rules]\n",         // an escape in a key
            "a = [\n",                          // unclosed array
            "s = \"open\n[x]\n",                // a one-line string across lines
            "m = \"\"\"open\n",                 // unclosed multi-line string
            "[x] junk\n",                       // not a header line
        ] {
            assert!(split(text).is_none(), "{text:?}");
        }
    }
}
