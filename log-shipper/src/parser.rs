//! Pure line → [`Record`] conversion: stream labels, structured metadata, timestamp.
//!
//! The parser reads only the fields it needs from each JSON line (a borrowed, targeted
//! deserialisation that skips every other value without building a DOM) and never
//! changes the line it ships, except for truncation of over-long lines and the
//! replacement of invalid UTF-8 (which Loki's protobuf decoder would reject).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::cardinality::ValueLimit;

/// Largest label value Loki accepts by default (`max_label_value_length`).
pub const MAX_LABEL_VALUE_BYTES: usize = 2048;
/// Largest label name Loki accepts by default (`max_label_name_length`).
pub const MAX_LABEL_NAME_BYTES: usize = 1024;
/// Most label names per stream Loki accepts by default (`max_label_names_per_series`).
pub const MAX_LABELS_PER_STREAM: usize = 15;
/// Structured metadata values longer than this are not attached (the value stays in
/// the line); keeps a whole entry under Loki's 64 KB structured-metadata limit.
pub const MAX_METADATA_VALUE_BYTES: usize = 8192;
/// Label added to lines that are not a JSON object.
pub const PARSE_ERROR_LABEL: &str = "parse_error";

/// What to do with a line longer than the configured maximum.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum LineTooLong {
    /// Keep the first bytes and append a marker saying how long the line was.
    Truncate,
    /// Do not ship the line (it is counted as dropped with reason `line_too_long`).
    Drop,
}

/// Errors in the parser configuration (label names).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParserConfigError {
    #[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __")]
    InvalidLabelName(String),
    #[error("label {0:?} is configured twice")]
    DuplicateLabel(String),
    #[error("too many labels per stream ({0}); Loki accepts at most {MAX_LABELS_PER_STREAM}")]
    TooManyLabels(usize),
    #[error("invalid field name {0:?}")]
    InvalidFieldName(String),
}

/// Everything the parser needs, already validated.
#[derive(Debug, Clone)]
pub struct ParserConfig {
    /// Static stream labels (name, value).
    pub static_labels: Vec<(String, String)>,
    /// Top-level JSON fields whose values become stream labels.
    pub label_fields: Vec<String>,
    /// Top-level JSON fields whose values become structured metadata.
    pub metadata_fields: Vec<String>,
    /// JSON field holding the event time.
    pub timestamp_field: String,
    /// Longest line shipped as is.
    pub max_line_bytes: usize,
    /// What to do with longer lines.
    pub line_too_long: LineTooLong,
    /// Entry timestamps older than this (relative to the read time) are replaced by the
    /// read time, because Loki would reject the entry (`reject_old_samples_max_age`).
    pub max_timestamp_age_ns: i64,
    /// Entry timestamps further than this in the future are replaced by the read time
    /// (Loki's `creation_grace_period`).
    pub max_timestamp_future_ns: i64,
    /// Distinct values each label field may give its label before new ones become
    /// `other` (`0`: no limit). See [`crate::cardinality`].
    pub max_label_values: usize,
}

/// Turns a field name into a valid Loki label name (`[a-zA-Z_][a-zA-Z0-9_]*`): every
/// other character becomes `_`, and a leading digit gets a `_` prefix.
pub fn sanitize_label_name(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + 1);
    for (i, c) in field.chars().enumerate() {
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// Whether `name` is a valid Loki label name that a client may set.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_');
    first_ok
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
        && name.len() <= MAX_LABEL_NAME_BYTES
}

/// Appends `value` escaped for a double-quoted LogQL/PromQL string literal.
pub fn escape_label_value_into(out: &mut String, value: &str) {
    if !value
        .bytes()
        .any(|b| b == b'\\' || b == b'"' || b < 0x20 || b == 0x7f)
    {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug, Clone)]
enum Slot {
    Static(String),
    Field(usize),
    ParseError,
}

/// One entry ready for batching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Stream labels in LogQL selector syntax, sorted by name: `{app="x",level="info"}`.
    pub labels: String,
    /// Entry time, Unix nanoseconds.
    pub ts_ns: i64,
    /// The line (without its newline).
    pub line: String,
    /// Structured metadata (name, value).
    pub metadata: Vec<(Arc<str>, String)>,
    /// The line was not a JSON object.
    pub parse_error: bool,
    /// The line was cut to the maximum length.
    pub truncated: bool,
    /// The timestamp came from the read time (missing, unparsable or out of Loki's window).
    pub ts_from_read_time: bool,
}

impl Record {
    /// Approximate size this entry adds to a push request (line + metadata + framing).
    pub fn size_bytes(&self) -> usize {
        self.line.len()
            + self
                .metadata
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>()
            + 16
    }
}

/// Result of parsing one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Record(Record),
    /// The line was too long and the configuration says to drop it.
    DroppedTooLong {
        len: usize,
    },
}

/// A compiled parser (see [`ParserConfig`]).
#[derive(Debug, Clone)]
pub struct Parser {
    cfg: ParserConfig,
    /// Label slots sorted by label name: (name, slot).
    slots: Vec<(String, Slot)>,
    /// Fields to extract: label fields, then metadata fields, then the timestamp field.
    fields: Vec<String>,
    metadata_names: Vec<Arc<str>>,
    n_label_fields: usize,
    ts_index: usize,
    /// One per label field, in field order.
    limits: Vec<ValueLimit>,
}

/// Prefix of the truncation marker appended to cut lines.
pub const TRUNCATION_MARKER_PREFIX: &str = "…[log-shipper: truncated, original ";

fn truncation_marker(original_len: usize) -> String {
    format!("{TRUNCATION_MARKER_PREFIX}{original_len} bytes]")
}

impl Parser {
    /// Validates the configuration and precomputes the label layout.
    pub fn new(cfg: ParserConfig) -> Result<Self, ParserConfigError> {
        let mut slots: Vec<(String, Slot)> = Vec::new();
        for (name, value) in &cfg.static_labels {
            if !is_valid_label_name(name) {
                return Err(ParserConfigError::InvalidLabelName(name.clone()));
            }
            if value.is_empty() {
                continue;
            }
            let v = truncate_at_char_boundary(value, MAX_LABEL_VALUE_BYTES).to_string();
            slots.push((name.clone(), Slot::Static(v)));
        }
        let mut fields = Vec::new();
        for (i, field) in cfg.label_fields.iter().enumerate() {
            if field.is_empty() {
                return Err(ParserConfigError::InvalidFieldName(field.clone()));
            }
            let name = sanitize_label_name(field);
            if !is_valid_label_name(&name) {
                return Err(ParserConfigError::InvalidLabelName(name));
            }
            slots.push((name, Slot::Field(i)));
            fields.push(field.clone());
        }
        if !slots.iter().any(|(n, _)| n == PARSE_ERROR_LABEL) {
            slots.push((PARSE_ERROR_LABEL.to_string(), Slot::ParseError));
        }
        slots.sort_by(|a, b| a.0.cmp(&b.0));
        for w in slots.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(ParserConfigError::DuplicateLabel(w[0].0.clone()));
            }
        }
        if slots.len() > MAX_LABELS_PER_STREAM {
            return Err(ParserConfigError::TooManyLabels(slots.len()));
        }
        let n_label_fields = fields.len();
        let mut metadata_names = Vec::new();
        for field in &cfg.metadata_fields {
            if field.is_empty() {
                return Err(ParserConfigError::InvalidFieldName(field.clone()));
            }
            fields.push(field.clone());
            metadata_names.push(Arc::from(sanitize_label_name(field)));
        }
        let ts_index = fields.len();
        fields.push(cfg.timestamp_field.clone());
        let limits = vec![ValueLimit::new(cfg.max_label_values); n_label_fields];
        Ok(Self {
            cfg,
            slots,
            fields,
            metadata_names,
            n_label_fields,
            ts_index,
            limits,
        })
    }

    /// The configuration this parser was built from.
    pub fn config(&self) -> &ParserConfig {
        &self.cfg
    }

    /// Per label field that hit its limit of distinct values since the last call: the
    /// label name, how many values became `other`, and whether it is the first time.
    pub fn take_capped(&mut self) -> Vec<(&str, u64, bool)> {
        let mut out = Vec::new();
        for (name, slot) in &self.slots {
            if let Slot::Field(i) = slot {
                let (n, first) = self.limits[*i].take_capped();
                if n > 0 {
                    out.push((name.as_str(), n, first));
                }
            }
        }
        out
    }

    /// Parses one line (without its newline). `read_time_ns` is used when the line has
    /// no usable timestamp. `original_len` is the line's real length in the input: when
    /// it is larger than `raw.len()` the reader already cut the line (it exceeded the
    /// read buffer); such a line is always treated as too long, its fields are read from
    /// the part that was kept, and it is labelled a parse error only when that part is
    /// not the beginning of a JSON object.
    pub fn parse(&mut self, raw: &[u8], read_time_ns: i64, original_len: usize) -> Parsed {
        let overflowed = original_len > raw.len();
        let original_len = original_len.max(raw.len());
        let too_long = overflowed || raw.len() > self.cfg.max_line_bytes;
        if too_long && self.cfg.line_too_long == LineTooLong::Drop {
            return Parsed::DroppedTooLong { len: original_len };
        }
        let mut values: Vec<Option<Cow<'_, str>>> = vec![None; self.fields.len()];
        let parse_error = match extract_fields(raw, &self.fields, &mut values) {
            Ok(()) => false,
            // A prefix of a JSON object ends in the middle of it: the fields before the
            // cut were read; that is no evidence that the line was not JSON.
            Err(e) if overflowed && e.is_eof() => false,
            Err(_) => true,
        };

        // Labels.
        let mut labels = String::with_capacity(96);
        labels.push('{');
        let mut first = true;
        for (name, slot) in &self.slots {
            let value: Option<&str> = match slot {
                Slot::Static(v) => Some(v.as_str()),
                Slot::Field(i) => values[*i].as_deref().filter(|v| !v.is_empty()).map(|v| {
                    self.limits[*i].admit(truncate_at_char_boundary(v, MAX_LABEL_VALUE_BYTES))
                }),
                Slot::ParseError => parse_error.then_some("true"),
            };
            let Some(value) = value else { continue };
            if value.is_empty() {
                continue;
            }
            if !first {
                labels.push(',');
            }
            first = false;
            labels.push_str(name);
            labels.push_str("=\"");
            escape_label_value_into(&mut labels, value);
            labels.push('"');
        }
        labels.push('}');

        // Structured metadata.
        let mut metadata = Vec::new();
        for (j, name) in self.metadata_names.iter().enumerate() {
            if let Some(v) = &values[self.n_label_fields + j]
                && !v.is_empty()
                && v.len() <= MAX_METADATA_VALUE_BYTES
            {
                metadata.push((Arc::clone(name), v.to_string()));
            }
        }

        // Timestamp.
        let parsed_ts = values[self.ts_index]
            .as_deref()
            .and_then(parse_timestamp_ns);
        let (ts_ns, ts_from_read_time) = match parsed_ts {
            Some(ts)
                if ts >= read_time_ns.saturating_sub(self.cfg.max_timestamp_age_ns)
                    && ts <= read_time_ns.saturating_add(self.cfg.max_timestamp_future_ns) =>
            {
                (ts, false)
            }
            _ => (read_time_ns, true),
        };

        // The line itself.
        let mut line = match std::str::from_utf8(raw) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(raw).into_owned(),
        };
        let mut truncated = false;
        if too_long {
            let marker = truncation_marker(original_len);
            let keep = self.cfg.max_line_bytes.saturating_sub(marker.len());
            let cut = truncate_at_char_boundary(&line, keep).len();
            line.truncate(cut);
            line.push_str(&marker);
            truncated = true;
        }
        Parsed::Record(Record {
            labels,
            ts_ns,
            line,
            metadata,
            parse_error,
            truncated,
            ts_from_read_time,
        })
    }
}

/// A JSON string that borrows from the input when it has no escapes.
struct BorrowedStr<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A scalar JSON value rendered as text; objects, arrays and null become `None`.
struct Scalar<'de>(Option<Cow<'de, str>>);

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Borrowed(if v {
                    "true"
                } else {
                    "false"
                }))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
        }
        d.deserialize_any(V)
    }
}

struct Extract<'a, 'de> {
    fields: &'a [String],
    out: &'a mut [Option<Cow<'de, str>>],
}

impl<'de> DeserializeSeed<'de> for Extract<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Extract<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<BorrowedStr<'de>>()? {
            match self.fields.iter().position(|f| *f == key.0) {
                Some(i) => {
                    let v: Scalar<'de> = map.next_value()?;
                    self.out[i] = v.0;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads the wanted top-level fields of a JSON object line. Errors when the line is not
/// exactly one JSON object.
fn extract_fields<'de>(
    raw: &'de [u8],
    fields: &[String],
    out: &mut [Option<Cow<'de, str>>],
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    Extract { fields, out }.deserialize(&mut de)?;
    de.end()
}

/// Parses an event timestamp into Unix nanoseconds.
///
/// Accepts RFC 3339 (`2026-01-02T03:04:05.678Z`, any fraction length, `Z` or `±hh:mm`)
/// and numbers of Unix time, whose unit is guessed from the magnitude (seconds below
/// 1e11, milliseconds below 1e14, microseconds below 1e17, nanoseconds above).
pub fn parse_timestamp_ns(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let first = s.as_bytes()[0];
    if first.is_ascii_digit() && s.len() > 4 && s.as_bytes()[4] == b'-' {
        return parse_rfc3339_ns(s);
    }
    // Unix time: integer part plus optional fraction, parsed exactly.
    let (int_part, frac_part) = s.split_once('.').unwrap_or((s, ""));
    if int_part.is_empty() || int_part.len() > 19 || !int_part.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !frac_part.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let int: i128 = int_part.parse().ok()?;
    let unit: i128 = if int < 100_000_000_000 {
        1_000_000_000
    } else if int < 100_000_000_000_000 {
        1_000_000
    } else if int < 100_000_000_000_000_000 {
        1_000
    } else {
        1
    };
    let mut frac_ns: i128 = 0;
    let mut scale: i128 = 1;
    for c in frac_part.bytes().take(18) {
        frac_ns = frac_ns * 10 + i128::from(c - b'0');
        scale *= 10;
    }
    let ns = int * unit + frac_ns * unit / scale;
    i64::try_from(ns).ok()
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut v: i64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let min = digits(&b[14..16])?;
    let sec = digits(&b[17..19])?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                frac_ns = frac_ns * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            frac_ns *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(&b[i + 1..i + 3])?;
            let om = digits(&b[i + 4..i + 6])?;
            let off = oh * 3600 + om * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000_000_000; // 2026-05-28

    fn cfg() -> ParserConfig {
        ParserConfig {
            static_labels: vec![("app".into(), "llm-gateway".into())],
            label_fields: vec![
                "event".into(),
                "level".into(),
                "model".into(),
                "tenant".into(),
            ],
            metadata_fields: vec!["request_id".into()],
            timestamp_field: "ts".into(),
            max_line_bytes: 256,
            line_too_long: LineTooLong::Truncate,
            max_timestamp_age_ns: 7 * 86_400 * 1_000_000_000,
            max_timestamp_future_ns: 300 * 1_000_000_000,
            max_label_values: 0,
        }
    }

    fn rec(p: &mut Parser, line: &str) -> Record {
        match p.parse(line.as_bytes(), NOW, line.len()) {
            Parsed::Record(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn gateway_event_labels_metadata_and_time() {
        let mut p = Parser::new(cfg()).unwrap();
        let line = r#"{"ts":"2026-05-28T20:26:40.123Z","level":"info","event":"response","request_id":"r-1","model":"m\"x","tenant":"acme","status":200}"#;
        let r = rec(&mut p, line);
        assert_eq!(
            r.labels,
            r#"{app="llm-gateway",event="response",level="info",model="m\"x",tenant="acme"}"#
        );
        assert_eq!(
            r.metadata,
            vec![(Arc::from("request_id"), "r-1".to_string())]
        );
        assert_eq!(r.line, line);
        assert!(!r.parse_error && !r.truncated && !r.ts_from_read_time);
        assert_eq!(r.ts_ns, 1_780_000_000_123_000_000);
    }

    #[test]
    fn table_of_lines() {
        let mut p = Parser::new(cfg()).unwrap();
        // (line, expected labels, parse_error, ts_from_read_time)
        let cases: &[(&str, &str, bool, bool)] = &[
            (
                "not json",
                r#"{app="llm-gateway",parse_error="true"}"#,
                true,
                true,
            ),
            (
                "[1,2]",
                r#"{app="llm-gateway",parse_error="true"}"#,
                true,
                true,
            ),
            (
                r#"{"a":1} trailing"#,
                r#"{app="llm-gateway",parse_error="true"}"#,
                true,
                true,
            ),
            (
                r#"{"level":"warn"}"#,
                r#"{app="llm-gateway",level="warn"}"#,
                false,
                true,
            ),
            (
                r#"{"level":"","ts":"garbage"}"#,
                r#"{app="llm-gateway"}"#,
                false,
                true,
            ),
            (
                r#"{"level":null,"model":{"x":1},"tenant":7}"#,
                r#"{app="llm-gateway",tenant="7"}"#,
                false,
                true,
            ),
            (
                r#"{"level":"a\nb\\c"}"#,
                r#"{app="llm-gateway",level="a\nb\\c"}"#,
                false,
                true,
            ),
            (
                r#"{"event":"x","ts":"1999-01-01T00:00:00Z"}"#,
                r#"{app="llm-gateway",event="x"}"#,
                false,
                true,
            ),
            (
                r#"{"event":"x","ts":"2026-05-28T20:26:40+02:00"}"#,
                r#"{app="llm-gateway",event="x"}"#,
                false,
                false,
            ),
        ];
        for (line, labels, perr, rt) in cases {
            let r = rec(&mut p, line);
            assert_eq!(&r.labels, labels, "line {line}");
            assert_eq!(r.parse_error, *perr, "line {line}");
            assert_eq!(r.ts_from_read_time, *rt, "line {line}");
            assert_eq!(&r.line, line);
        }
    }

    #[test]
    fn label_values_are_bounded_per_field() {
        let mut c = cfg();
        c.max_label_values = 2;
        let mut p = Parser::new(c).unwrap();
        let line = |m: &str, t: &str| {
            format!(r#"{{"event":"response","level":"info","model":"{m}","tenant":"{t}"}}"#)
        };
        let labels = |p: &mut Parser, m: &str, t: &str| rec(p, &line(m, t)).labels;
        assert!(labels(&mut p, "a", "x").contains(r#"model="a",tenant="x""#));
        assert!(labels(&mut p, "b", "x").contains(r#"model="b",tenant="x""#));
        let r = rec(&mut p, &line("c", "y"));
        assert!(
            r.labels.contains(r#"model="other",tenant="y""#),
            "{}",
            r.labels
        );
        assert_eq!(r.line, line("c", "y"), "the line itself is unchanged");
        assert!(labels(&mut p, "a", "z").contains(r#"model="a",tenant="other""#));
        assert_eq!(
            p.take_capped(),
            vec![("model", 1, true), ("tenant", 1, true)]
        );
        assert_eq!(p.take_capped(), vec![]);
    }

    #[test]
    fn long_lines_truncate_or_drop() {
        let mut p = Parser::new(cfg()).unwrap();
        let long = format!(r#"{{"event":"x","pad":"{}"}}"#, "é".repeat(300));
        let r = rec(&mut p, &long);
        assert!(r.truncated);
        assert!(r.line.len() <= 256, "{}", r.line.len());
        assert!(r.line.contains(TRUNCATION_MARKER_PREFIX));
        assert_eq!(r.labels, r#"{app="llm-gateway",event="x"}"#);
        let mut c = cfg();
        c.line_too_long = LineTooLong::Drop;
        let mut p = Parser::new(c).unwrap();
        assert_eq!(
            p.parse(long.as_bytes(), NOW, long.len()),
            Parsed::DroppedTooLong { len: long.len() }
        );
    }

    #[test]
    fn reader_cut_lines_keep_their_fields_and_true_length() {
        // The reader keeps only the first bytes of a 10,485,761-byte line: the marker
        // must carry the real length, and a JSON object cut in the middle keeps the
        // fields that came before the cut (labels, timestamp): not a parse error.
        let mut p = Parser::new(cfg()).unwrap();
        let head = format!(
            r#"{{"ts":"{}","event":"response","level":"info","pad":"xxxxxxxx"#,
            "2026-01-01T00:00:00Z"
        );
        let ts_ns = parse_timestamp_ns("2026-01-01T00:00:00Z").unwrap();
        let r = match p.parse(head.as_bytes(), ts_ns + 1, 10_485_761) {
            Parsed::Record(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(r.truncated);
        assert!(!r.parse_error, "{r:?}");
        assert!(
            r.line
                .ends_with("…[log-shipper: truncated, original 10485761 bytes]"),
            "{}",
            r.line
        );
        assert_eq!(
            r.labels,
            r#"{app="llm-gateway",event="response",level="info"}"#
        );
        assert_eq!(r.ts_ns, ts_ns);
        assert!(!r.ts_from_read_time);
        // A cut line that is not the beginning of a JSON object is still a parse error.
        let r = match p.parse(b"plain text that goes on", NOW, 10_485_761) {
            Parsed::Record(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(r.parse_error && r.truncated);
        // Dropping reports the real length too.
        let mut c = cfg();
        c.line_too_long = LineTooLong::Drop;
        let mut p = Parser::new(c).unwrap();
        assert_eq!(
            p.parse(head.as_bytes(), NOW, 10_485_761),
            Parsed::DroppedTooLong { len: 10_485_761 }
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut p = Parser::new(cfg()).unwrap();
        let r = match p.parse(b"abc\xffdef", NOW, 7) {
            Parsed::Record(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.line, "abc\u{fffd}def");
        assert!(r.parse_error);
    }

    #[test]
    fn config_validation() {
        let mut c = cfg();
        c.static_labels.push(("bad-name".into(), "x".into()));
        assert!(matches!(
            Parser::new(c),
            Err(ParserConfigError::InvalidLabelName(_))
        ));
        let mut c = cfg();
        c.static_labels.push(("level".into(), "x".into()));
        assert!(matches!(
            Parser::new(c),
            Err(ParserConfigError::DuplicateLabel(_))
        ));
        let mut c = cfg();
        c.label_fields = (0..15).map(|i| format!("f{i}")).collect();
        assert!(matches!(
            Parser::new(c),
            Err(ParserConfigError::TooManyLabels(_))
        ));
        let mut c = cfg();
        c.label_fields = vec!["http.status".into()];
        let mut p = Parser::new(c).unwrap();
        let r = rec(&mut p, r#"{"http.status":"200"}"#);
        assert_eq!(r.labels, r#"{app="llm-gateway",http_status="200"}"#);
    }

    #[test]
    fn label_helpers() {
        assert_eq!(sanitize_label_name("9a.b-c"), "_9a_b_c");
        assert!(is_valid_label_name("a_1"));
        assert!(!is_valid_label_name("__name__"));
        assert!(!is_valid_label_name("1a"));
        assert!(!is_valid_label_name(""));
        let mut s = String::new();
        escape_label_value_into(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, "a\\\"b\\\\c\\n\\u0001");
    }

    #[test]
    fn timestamps() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1970-01-01T00:00:01.5Z", Some(1_500_000_000)),
            ("1970-01-01T01:00:00+01:00", Some(0)),
            (
                "2000-02-29T12:00:00.000000001Z",
                Some(951_825_600_000_000_001),
            ),
            ("1700000000", Some(1_700_000_000_000_000_000)),
            ("1700000000123", Some(1_700_000_000_123_000_000)),
            ("1700000000.5", Some(1_700_000_000_500_000_000)),
            ("2026-13-01T00:00:00Z", None),
            ("2026-01-01T00:00:00", None),
            ("2026-01-01T00:00:00.Z", None),
            ("yesterday", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_timestamp_ns(s), *want, "{s}");
        }
    }
}
