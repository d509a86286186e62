//! Positions: where a field is in a policy file, as line and column.
//!
//! Positions are found by walking the parsed TOML document: the span of the
//! value at the error's field path (or, for errors the TOML deserializer
//! reports, the field whose span holds the error). Errors from
//! [`PolicyBuilder::build`](crate::PolicyBuilder::build) therefore get the
//! position of the value they name without the file module re-checking what
//! the builder checks.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{key_segment, ConfigError, ConfigErrorKind};

/// The parsed document, to find where a field is.
pub(super) struct Document<'i> {
    text: &'i str,
    root: Spanned<DeTable<'i>>,
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

impl<'i> Document<'i> {
    /// Parses `text` as TOML; the first syntax error, if any, is the error.
    pub(super) fn parse(text: &'i str) -> Result<Self, ConfigError> {
        let (root, errors) = DeTable::parse_recoverable(text);
        let document = Document { text, root };
        match errors.first() {
            Some(error) => Err(document.syntax_error(error)),
            None => Ok(document),
        }
    }

    /// Reads the document into `T`; wrong types and unknown fields are
    /// syntax errors.
    pub(super) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        T::deserialize(toml::de::Deserializer::from(self.root.clone()))
            .map_err(|error| self.syntax_error(&error))
    }

    /// A TOML (syntax, type or unknown-field) error, with the field path of
    /// the innermost value or key whose span holds the error.
    fn syntax_error(&self, error: &toml::de::Error) -> ConfigError {
        let message = error.message().trim();
        // The TOML reader hands a date or time on as a table of one private
        // field, which is all a field that takes none could say of it.
        let message = if message.contains("$__toml_private_datetime") {
            "a date or time cannot go here (a rate is a string, such as \"60/minute\"; \
             a duration, such as \"30s\")"
        } else {
            message
        };
        let Some(span) = error.span() else {
            return ConfigError::new(ConfigErrorKind::Syntax, "", message).at(1, 1);
        };
        let (line, column) = line_column(self.text.as_bytes(), span.start);
        ConfigError::new(ConfigErrorKind::Syntax, self.field_at(span.start), message)
            .at(line, column)
    }

    /// Adds the position of the value at the error's field path (or of its
    /// nearest ancestor present in the file).
    pub(super) fn locate(&self, error: ConfigError) -> ConfigError {
        let span = self.span_of(error.field());
        let (line, column) = line_column(self.text.as_bytes(), span.start);
        error.at(line, column)
    }

    /// The span of the deepest value along `field`.
    fn span_of(&self, field: &str) -> Range<usize> {
        let root = self.root.get_ref();
        let mut span = self.root.span();
        let mut table = Some(root);
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        for step in parse_field(field) {
            let next = match (&step, table, array) {
                (Step::Key(name), Some(t), _) => {
                    t.iter().find(|(k, _)| k.get_ref() == name).map(|(_, v)| v)
                }
                (Step::Index(i), _, Some(a)) => a.get(*i),
                _ => None,
            };
            let Some(value) = next else { break };
            span = value.span();
            (table, array) = match value.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        span
    }

    /// The path of the innermost key or value whose span holds `offset`; if
    /// none does (a syntax error between values), of the last one before it.
    fn field_at(&self, offset: usize) -> String {
        let mut search = Search {
            offset,
            path: Vec::new(),
            holding: None,
            before: None,
        };
        search.table(self.root.get_ref());
        let steps = search
            .holding
            .or(search.before.map(|(_, p)| p))
            .unwrap_or_default();
        format_field(&steps)
    }
}

/// A depth-first search for the field at an offset. Tables written with a
/// `[header]` have the header's span, not their contents', so every branch is
/// searched.
struct Search {
    offset: usize,
    path: Vec<Step>,
    /// The deepest path whose span holds the offset.
    holding: Option<Vec<Step>>,
    /// The path whose span ends last before the offset, and that end.
    before: Option<(usize, Vec<Step>)>,
}

impl Search {
    fn consider(&mut self, span: Range<usize>) {
        let holds = span.contains(&self.offset) || (span.is_empty() && span.start == self.offset);
        if holds {
            if self
                .holding
                .as_ref()
                .is_none_or(|h| h.len() <= self.path.len())
            {
                self.holding = Some(self.path.clone());
            }
        } else if span.end <= self.offset
            && self.before.as_ref().is_none_or(|(end, p)| {
                span.end > *end || (span.end == *end && p.len() <= self.path.len())
            })
        {
            self.before = Some((span.end, self.path.clone()));
        }
    }

    fn table(&mut self, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            self.path.push(Step::Key(key.get_ref().to_string()));
            self.consider(key.span());
            self.value(value);
            self.path.pop();
        }
    }

    fn value(&mut self, value: &Spanned<DeValue<'_>>) {
        self.consider(value.span());
        match value.get_ref() {
            DeValue::Table(t) => self.table(t),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    self.path.push(Step::Index(i));
                    self.value(item);
                    self.path.pop();
                }
            }
            _ => {}
        }
    }
}

/// Splits `limits[1].routes[0].windows` into its steps; a key that is not
/// bare is quoted, as [`key_segment`](crate::error::key_segment) writes it (`plans."a.b".windows`).
fn parse_field(field: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = field;
    loop {
        rest = rest.strip_prefix('.').unwrap_or(rest);
        if rest.is_empty() {
            return steps;
        }
        if let Some(inner) = rest.strip_prefix('[') {
            let Some((index, tail)) = inner.split_once(']') else {
                return steps;
            };
            match index.parse() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => return steps,
            }
            rest = tail;
        } else if let Some(quoted) = rest.strip_prefix('"') {
            let Some((key, tail)) = unquote(quoted) else {
                return steps;
            };
            steps.push(Step::Key(key));
            rest = tail;
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Key(rest[..end].to_owned()));
            rest = &rest[end..];
        }
    }
}

/// The key at the start of `text` (just after its opening quote), written
/// as `escape_debug` writes it, and the text after its closing quote.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut key = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((key, &text[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => key.push('\n'),
                'r' => key.push('\r'),
                't' => key.push('\t'),
                '0' => key.push('\0'),
                'u' => {
                    let (open, brace) = chars.next()?;
                    if brace != '{' {
                        return None;
                    }
                    let close = text[open..].find('}')? + open;
                    let code = u32::from_str_radix(&text[open + 1..close], 16).ok()?;
                    key.push(char::from_u32(code)?);
                    while chars.next()?.0 < close {}
                }
                other => key.push(other),
            },
            c => key.push(c),
        }
    }
    None
}

fn format_field(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Index(i) => out.push_str(&format!("[{i}]")),
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_segment(k));
            }
        }
    }
    out
}

/// The 1-based line and column (in characters) of a byte offset.
pub(super) fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    // Count characters, not bytes: skip UTF-8 continuation bytes.
    let column = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;

    fn err(text: &str) -> ConfigError {
        Policy::from_toml(text).unwrap_err()
    }

    #[test]
    fn field_paths_round_trip() {
        for field in [
            "",
            "report",
            "limits[1].routes[0].windows[2]",
            "limits[0].key.first_of[1].header",
        ] {
            assert_eq!(format_field(&parse_field(field)), field);
        }
        assert_eq!(parse_field("a[x].b"), vec![Step::Key("a".into())]);
        assert_eq!(format_field(&[Step::Key("a b".into())]), "\"a b\"");
        // Keys that are not bare are quoted, and read back.
        for key in [
            "a.b",
            "",
            "x[0]",
            "a\"b",
            "tab\there",
            "e\u{301}",
            "back\\slash",
        ] {
            let steps = vec![
                Step::Key("plans".into()),
                Step::Key(key.into()),
                Step::Index(2),
            ];
            assert_eq!(parse_field(&format_field(&steps)), steps, "{key:?}");
        }
        // Odd text stops the parse; it never panics.
        for field in ["\"\\u}", "\"\\u\u{e9}}", "\"open", "\"\\", "a.\"\\u{zz}\""] {
            let _ = parse_field(field);
        }
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column(b"abc", 0), (1, 1));
        assert_eq!(line_column(b"a\nbc", 3), (2, 2));
        assert_eq!(line_column("é\né = 1".as_bytes(), 5), (2, 2));
        assert_eq!(line_column("é\né = 1".as_bytes(), 6), (2, 3));
        assert_eq!(line_column(b"ab", 99), (1, 3));
    }

    #[test]
    fn syntax_errors_inside_headers_name_the_field() {
        let e = err("[[limits]]\nname = \"a\"\nkey = { global = true }\n[[limits.routes]]\nwindows = [\"1/s\", 3]\n");
        assert_eq!(e.kind(), ConfigErrorKind::Syntax);
        assert_eq!(e.field(), "limits[0].routes[0].windows[1]");
        assert_eq!((e.line(), e.column()), (Some(5), Some(19)));
    }

    #[test]
    fn an_empty_file_has_no_limits() {
        let e = err("");
        assert_eq!(e.field(), "limits");
        assert_eq!((e.line(), e.column()), (Some(1), Some(1)));
    }
}
