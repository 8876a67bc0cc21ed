//! Parsing a config in pieces (see `sections`): from text in memory ([`deserialize_pieces`])
//! or from the file read line by line, twice ([`load_in_pieces`], [`FileRules`]), never whole.
//! Every `None` here means "parse the whole text the old way": that parse is the judge.

use std::path::Path;

use serde::Deserialize;

use super::{deserialize, sections, validate, Config, ConfigError, RawConfig, RawRule};

/// One `[[gpio.rules]]` table parsed on its own (`sections`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OneRule {
    pub(super) gpio: OneRuleGpio,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OneRuleGpio {
    pub(super) rules: Vec<RawRule>,
}

/// The skeleton, once every rule piece is known to parse (each is parsed again, one at a time,
/// while validating: holding 10,000 raw rules would cost what the pieces save). `None`: parse
/// the whole text instead.
pub(super) fn deserialize_pieces(pieces: &sections::Pieces<'_>) -> Option<RawConfig> {
    let raw: RawConfig = deserialize(&pieces.skeleton).ok()?;
    if raw.gpio.rules.is_some() && !pieces.rules.is_empty() {
        return None; // `rules = [...]` and `[[gpio.rules]]` both: toml refuses that
    }
    let one_each = pieces
        .rules
        .iter()
        .all(|p| deserialize::<OneRule>(p).is_ok_and(|one| one.gpio.rules.len() == 1));
    one_each.then_some(raw)
}

/// Whether `piece` is one rule that deserializes.
fn rule_piece_parses(piece: &str) -> bool {
    deserialize::<OneRule>(piece).is_ok_and(|one| one.gpio.rules.len() == 1)
}

/// [`Config::load`] without holding the file: a first pass collects the skeleton and checks
/// that every rule piece parses, a second ([`FileRules`]) parses each rule again while
/// `validate` goes through them in order. `None`: read and parse the file whole instead.
pub(super) fn load_in_pieces(path: &Path) -> Option<Result<Config, ConfigError>> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    let mut splitter = sections::Splitter::default();
    let (mut skeleton, mut piece, mut line) = (String::new(), String::new(), String::new());
    let (mut count, mut crc) = (0, 0);
    loop {
        line.clear();
        // Not UTF-8, or unreadable: the whole read reports it.
        if reader.read_line(&mut line).ok()? == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, line.as_bytes());
        let dest = splitter.line(&line)?;
        if dest != sections::Dest::Rule && !piece.is_empty() {
            rule_piece_parses(&piece).then_some(())?;
            piece.clear();
        }
        match dest {
            sections::Dest::Skeleton => skeleton.push_str(&line),
            sections::Dest::NewRule => {
                count += 1;
                piece.push_str(&line);
            }
            sections::Dest::Rule => piece.push_str(&line),
        }
    }
    if !splitter.finished() || !(piece.is_empty() || rule_piece_parses(&piece)) {
        return None;
    }
    let raw: RawConfig = deserialize(&skeleton).ok()?;
    if raw.gpio.rules.is_some() && count > 0 {
        return None; // `rules = [...]` and `[[gpio.rules]]` both: toml refuses that
    }
    drop(skeleton);
    let rules = FileRules {
        path,
        reader: std::io::BufReader::new(std::fs::File::open(path).ok()?),
        splitter: sections::Splitter::default(),
        line: String::new(),
        pending: String::new(),
        left: count,
        expect_crc: crc,
        crc: 0,
    };
    Some(validate(raw, rules))
}

/// The second pass of [`load_in_pieces`]: the file's rules, parsed one at a time. The file
/// must read the same as in the first pass (same CRC-32C over every byte), or the load fails.
struct FileRules<'a> {
    path: &'a Path,
    reader: std::io::BufReader<std::fs::File>,
    splitter: sections::Splitter,
    line: String,
    /// The `[[gpio.rules]]` line that ended the last piece: the start of the next one.
    pending: String,
    left: usize,
    expect_crc: u32,
    crc: u32,
}

impl FileRules<'_> {
    fn changed(&mut self) -> ConfigError {
        self.left = 0;
        ConfigError::Read {
            path: self.path.to_owned(),
            source: std::io::Error::other("the file changed while it was read; try again"),
        }
    }

    /// The next rule piece, or `None` at the end of the file.
    fn next_piece(&mut self) -> Result<Option<String>, ConfigError> {
        use std::io::BufRead;
        let mut piece = std::mem::take(&mut self.pending);
        loop {
            self.line.clear();
            let read = self.reader.read_line(&mut self.line);
            let n = read.map_err(|source| ConfigError::Read {
                path: self.path.to_owned(),
                source,
            })?;
            if n == 0 {
                return Ok((!piece.is_empty()).then_some(piece));
            }
            self.crc = crc32c::crc32c_append(self.crc, self.line.as_bytes());
            match self.splitter.line(&self.line) {
                None => return Err(self.changed()),
                Some(sections::Dest::NewRule) if !piece.is_empty() => {
                    self.pending = std::mem::take(&mut self.line);
                    return Ok(Some(piece));
                }
                Some(sections::Dest::NewRule | sections::Dest::Rule) => piece.push_str(&self.line),
                Some(sections::Dest::Skeleton) if !piece.is_empty() => return Ok(Some(piece)),
                Some(sections::Dest::Skeleton) => {}
            }
        }
    }

    fn next_rule(&mut self) -> Result<RawRule, ConfigError> {
        let Some(piece) = self.next_piece()? else {
            return Err(self.changed());
        };
        if self.left == 0 {
            // The last rule: read on to the end, so that every byte is compared.
            if self.next_piece()?.is_some() {
                return Err(self.changed());
            }
            if self.crc != self.expect_crc || !self.splitter.finished() {
                return Err(self.changed());
            }
        }
        let one: OneRule = deserialize(&piece)?;
        match <[RawRule; 1]>::try_from(one.gpio.rules) {
            Ok([rule]) => Ok(rule),
            Err(_) => Err(self.changed()),
        }
    }
}

impl Iterator for FileRules<'_> {
    type Item = Result<RawRule, ConfigError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let rule = self.next_rule();
        if rule.is_err() {
            self.left = 0;
        }
        Some(rule)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for FileRules<'_> {}
