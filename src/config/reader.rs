//! A typed reader over the spanned TOML tree.
//!
//! Every value is read through a `Section`, so each error carries the span of the key or
//! value at fault. Keys that no reader requested are reported as unknown, with the
//! closest known key as a suggestion.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::Diagnostic;

/// Collects diagnostics for one file and turns byte offsets into lines and columns.
pub(crate) struct Reader<'s> {
    file: &'s Path,
    source: &'s str,
    line_starts: Vec<usize>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'s> Reader<'s> {
    pub(crate) fn new(file: &'s Path, source: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Reader {
            file,
            source,
            line_starts,
            diagnostics: Vec::new(),
        }
    }

    /// Returns the 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self
            .source
            .get(line_start..offset)
            .map_or(1, |text| text.chars().count() + 1);
        (line, column)
    }

    pub(crate) fn report(
        &mut self,
        span: Range<usize>,
        key: Option<String>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let (line, column) = self.position(span.start);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            column,
            key,
            message: message.into(),
            help,
        });
    }

    /// Records a TOML syntax error from the parser.
    pub(crate) fn report_syntax(&mut self, error: &toml::de::Error) {
        let span = error.span().unwrap_or(0..0);
        let key = self.key_at(span.start);
        self.report(
            span,
            key,
            format!("invalid TOML: {}", error.message().trim_end()),
            Some("fix the syntax at this position; strings need double quotes and lists square brackets".into()),
        );
    }

    /// Guesses the dotted key of the line holding `offset`, for syntax errors.
    fn key_at(&self, offset: usize) -> Option<String> {
        let (line, _) = self.position(offset);
        let mut section = None;
        for text in self.source.lines().take(line).map(str::trim) {
            if text.starts_with('[') {
                section = Some(text.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
            }
        }
        let current = self.source.lines().nth(line - 1)?.trim();
        let name = current.split_once('=')?.0.trim();
        if name.is_empty() || name.starts_with('[') {
            return None;
        }
        Some(match section {
            Some(section) => format!("{section}.{name}"),
            None => name.to_owned(),
        })
    }
}

/// One TOML table being read, with the keys that were asked for.
pub(crate) struct Section<'a, 'i> {
    pub(crate) path: String,
    table: &'a DeTable<'i>,
    span: Range<usize>,
    known: Vec<&'static str>,
    /// Set once every key was read as a sub-table, so none is unknown.
    all_read: bool,
}

/// Returns the TOML type name of a value, for messages.
fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

fn parse_integer(value: &DeValue<'_>) -> Option<i128> {
    match value {
        DeValue::Integer(integer) => i128::from_str_radix(integer.as_str(), integer.radix()).ok(),
        _ => None,
    }
}

impl<'a, 'i> Section<'a, 'i> {
    pub(crate) fn root(table: &'a Spanned<DeTable<'i>>) -> Self {
        Section {
            path: String::new(),
            table: table.get_ref(),
            span: table.span(),
            known: Vec::new(),
            all_read: false,
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    fn entry(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.known.push(key);
        self.table.get(key)
    }

    /// Returns the span of `key`'s value when the key is present.
    pub(crate) fn value_span(&self, key: &str) -> Option<Range<usize>> {
        self.table.get(key).map(Spanned::span)
    }

    fn wrong_type(
        &self,
        reader: &mut Reader<'_>,
        key: &str,
        value: &Spanned<DeValue<'_>>,
        expected: &str,
        example: &str,
    ) {
        reader.report(
            value.span(),
            Some(self.key_path(key)),
            format!("expected {expected}, found {}", type_name(value.get_ref())),
            Some(format!("write it as {key} = {example}")),
        );
    }

    /// Reads a sub-table such as `[core]` or `[proxyInfo.api]`.
    pub(crate) fn table(&mut self, reader: &mut Reader<'_>, key: &'static str) -> Option<Section<'a, 'i>> {
        let value = self.entry(key)?;
        self.table_value(reader, key, value)
    }

    fn table_value(
        &self,
        reader: &mut Reader<'_>,
        key: &str,
        value: &'a Spanned<DeValue<'i>>,
    ) -> Option<Section<'a, 'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(Section {
                path: self.key_path(key),
                table,
                span: value.span(),
                known: Vec::new(),
                all_read: false,
            }),
            _ => {
                reader.report(
                    value.span(),
                    Some(self.key_path(key)),
                    format!("expected a table, found {}", type_name(value.get_ref())),
                    Some(format!("declare it as a section: [{}]", self.key_path(key))),
                );
                None
            }
        }
    }

    /// Reads every sub-table of this table in file order, such as each `[proxyInfo.<label>]`.
    pub(crate) fn subtables(&mut self, reader: &mut Reader<'_>) -> Vec<(String, Range<usize>, Section<'a, 'i>)> {
        let mut out = Vec::new();
        for (key, value) in self.table.iter() {
            let name: &str = key.get_ref();
            if let Some(section) = self.table_value(reader, name, value) {
                out.push((name.to_owned(), key.span(), section));
            }
        }
        self.all_read = true;
        out
    }

    pub(crate) fn bool(&mut self, reader: &mut Reader<'_>, key: &'static str) -> Option<bool> {
        let value = self.entry(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(reader, key, value, "a boolean", "true");
                None
            }
        }
    }

    /// Reads an integer within `min..=max`.
    pub(crate) fn integer(&mut self, reader: &mut Reader<'_>, key: &'static str, min: i64, max: i64) -> Option<i64> {
        let value = self.entry(key)?;
        let Some(number) = parse_integer(value.get_ref()) else {
            if matches!(value.get_ref(), DeValue::Integer(_)) {
                reader.report(
                    value.span(),
                    Some(self.key_path(key)),
                    "integer is out of range",
                    Some(format!("use a value from {min} to {max}")),
                );
            } else {
                self.wrong_type(reader, key, value, "an integer", &min.max(1).to_string());
            }
            return None;
        };
        if number < i128::from(min) || number > i128::from(max) {
            reader.report(
                value.span(),
                Some(self.key_path(key)),
                format!("value {number} is out of range"),
                Some(format!("use a value from {min} to {max}")),
            );
            return None;
        }
        Some(number as i64)
    }

    /// Reads a non-negative number of seconds, as an integer or a float.
    pub(crate) fn seconds(&mut self, reader: &mut Reader<'_>, key: &'static str) -> Option<f64> {
        let value = self.entry(key)?;
        let seconds = match value.get_ref() {
            DeValue::Float(float) => float.as_str().replace('_', "").parse::<f64>().ok(),
            other => parse_integer(other).map(|n| n as f64),
        };
        match seconds {
            Some(s) if s.is_finite() && (0.0..=31_536_000.0).contains(&s) => Some(s),
            Some(_) => {
                reader.report(
                    value.span(),
                    Some(self.key_path(key)),
                    "number of seconds is out of range",
                    Some("use a value from 0 (no limit) to 31536000 (one year)".into()),
                );
                None
            }
            None => {
                self.wrong_type(reader, key, value, "a number of seconds", "30");
                None
            }
        }
    }

    pub(crate) fn string(&mut self, reader: &mut Reader<'_>, key: &'static str) -> Option<(String, Range<usize>)> {
        let value = self.entry(key)?;
        match value.get_ref() {
            DeValue::String(s) => Some((s.to_string(), value.span())),
            _ => {
                self.wrong_type(reader, key, value, "a string", "\"...\"");
                None
            }
        }
    }

    /// Reads a list of strings; a single string is read as a list of one.
    pub(crate) fn strings(
        &mut self,
        reader: &mut Reader<'_>,
        key: &'static str,
    ) -> Option<Vec<(String, Range<usize>)>> {
        let value = self.entry(key)?;
        match value.get_ref() {
            DeValue::String(s) => Some(vec![(s.to_string(), value.span())]),
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push((s.to_string(), item.span())),
                        _ => self.wrong_type(reader, key, item, "a list of strings", "[\"...\"]"),
                    }
                }
                Some(out)
            }
            _ => {
                self.wrong_type(reader, key, value, "a list of strings", "[\"...\"]");
                None
            }
        }
    }

    /// Reads a list of integers within `min..=max`.
    pub(crate) fn integers(
        &mut self,
        reader: &mut Reader<'_>,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Option<Vec<(i64, Range<usize>)>> {
        let value = self.entry(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(reader, key, value, "a list of integers", "[1, 2]");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match parse_integer(item.get_ref()) {
                Some(n) if n >= i128::from(min) && n <= i128::from(max) => out.push((n as i64, item.span())),
                Some(n) => reader.report(
                    item.span(),
                    Some(self.key_path(key)),
                    format!("value {n} is out of range"),
                    Some(format!("use values from {min} to {max}")),
                ),
                None => self.wrong_type(reader, key, item, "a list of integers", "[1, 2]"),
            }
        }
        Some(out)
    }

    /// Reports every key of this table that no reader asked for.
    pub(crate) fn finish(self, reader: &mut Reader<'_>) {
        if self.all_read {
            return;
        }
        for (key, _) in self.table.iter() {
            let name: &str = key.get_ref();
            if self.known.contains(&name) {
                continue;
            }
            let closest = self
                .known
                .iter()
                .map(|known| {
                    (
                        strsim::damerau_levenshtein(&name.to_lowercase(), &known.to_lowercase()),
                        *known,
                    )
                })
                .min();
            let help = match closest {
                Some((distance, known)) if distance <= 3 => format!("did you mean `{known}`?"),
                _ if self.known.is_empty() => "remove it".to_owned(),
                _ => format!("remove it; the known keys here are: {}", self.known.join(", ")),
            };
            let section = if self.path.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in [{}]", self.path)
            };
            reader.report(
                key.span(),
                Some(self.key_path(name)),
                format!("unknown key {section}"),
                Some(help),
            );
        }
    }
}
