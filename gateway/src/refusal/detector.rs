//! The detector: upstream signals, then one `RegexSet` pass over the opening
//! of the response.

use std::path::PathBuf;

use regex::bytes::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::config::{
    DEFAULT_SCAN_BYTES, MAX_SCAN_BYTES, RefusalConfig, RuleSpec, RulesMode, load_rules_file,
};
use super::rules::{AI_OPENING, DEFAULT_RULES, OVERRIDES, expand};

/// Verdict rule id for a non-null `message.refusal` / `delta.refusal`.
pub const UPSTREAM_REFUSAL: &str = "upstream_refusal";
/// Verdict rule id for `finish_reason: "content_filter"`.
pub const CONTENT_FILTER: &str = "content_filter";

/// Compiled program size limits: generous, the defaults use a fraction.
const REGEX_SIZE_LIMIT: usize = 64 << 20;
const DFA_SIZE_LIMIT: usize = 16 << 20;

/// Errors building a detector or reading its input.
#[derive(Debug, thiserror::Error)]
pub enum RefusalError {
    /// A rule's pattern does not compile.
    #[error("refusal rule {id:?}: invalid pattern: {message}")]
    InvalidPattern { id: String, message: String },
    /// A rule id is empty or has characters other than letters, digits, `_`, `-`, `.`.
    #[error("refusal rule #{index}: invalid id {id:?} (use letters, digits, '_', '-', '.')")]
    InvalidId { index: usize, id: String },
    /// Two rules share an id.
    #[error("refusal rule {id:?} is defined more than once")]
    DuplicateId { id: String },
    /// A rule uses an id reserved for upstream signals.
    #[error("refusal rule id {id:?} is reserved for upstream signals")]
    ReservedId { id: String },
    /// The rules file cannot be read.
    #[error("reading refusal rules file {}: {source}", path.display())]
    RulesFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The rules file is not valid TOML of the expected shape.
    #[error("parsing refusal rules file {}: {message}", path.display())]
    RulesFileParse { path: PathBuf, message: String },
    /// `scan_bytes` out of range.
    #[error("refusal scan_bytes must be between 1 and {MAX_SCAN_BYTES}, got {0}")]
    InvalidScanBytes(usize),
    /// The rules compile one by one but not together (size limit).
    #[error("refusal rules: cannot build the rule set: {0}")]
    RuleSet(String),
    /// A labelled line for `run_eval` is malformed.
    #[error("line {line}: {message}")]
    BadLabeledLine { line: u64, message: String },
    /// Reading input or writing output failed.
    #[error("refusal: I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Signals from the upstream response, checked before any text rule.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Signals {
    /// A non-null, non-empty `message.refusal` / `delta.refusal`.
    pub upstream_refusal: bool,
    /// `finish_reason: "content_filter"` on a choice.
    pub content_filter: bool,
}

/// The outcome for one response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The response is a refusal.
    pub refusal: bool,
    /// Id of the rule that matched, or `upstream_refusal` / `content_filter`;
    /// `None` when not a refusal.
    pub rule: Option<String>,
}

impl Verdict {
    fn refusal(id: &str) -> Verdict {
        Verdict {
            refusal: true,
            rule: Some(id.to_owned()),
        }
    }
}

#[derive(Debug)]
struct RuleMeta {
    id: String,
    /// Cancelled by an "answer follows" override.
    soft: bool,
}

/// Refusal detector: immutable after construction, `Send + Sync`; share it
/// with an `Arc`.
#[derive(Debug)]
pub struct Detector {
    enabled: bool,
    /// Rule patterns (`rules.len()` of them), then [`AI_OPENING`].
    set: RegexSet,
    /// The answer-follows overrides as one alternation. Only consulted when
    /// a soft match needs it: an unanchored case-insensitive search is cheap
    /// as a leftmost `is_match` but not inside an overlapping set search.
    /// `None` only in the inert fallback of [`Detector::with_defaults`].
    answer_follows: Option<Regex>,
    rules: Vec<RuleMeta>,
    scan_bytes: usize,
    audit_excerpt_chars: usize,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The compiled-in rules as rule specs (patterns fully expanded), in order.
/// Useful as a starting point for `mode = "replace"`.
pub fn default_rules() -> Vec<RuleSpec> {
    DEFAULT_RULES
        .iter()
        .map(|r| RuleSpec {
            id: r.id.to_owned(),
            pattern: expand(r.template),
            overridable: r.soft,
        })
        .collect()
}

impl Detector {
    /// Builds a detector from the `[refusal]` configuration: validates every
    /// rule (errors name the rule id), then compiles one `RegexSet`.
    pub fn new(cfg: &RefusalConfig) -> Result<Detector, RefusalError> {
        let scan_bytes = cfg.scan_bytes.unwrap_or(DEFAULT_SCAN_BYTES);
        if scan_bytes == 0 || scan_bytes > MAX_SCAN_BYTES {
            return Err(RefusalError::InvalidScanBytes(scan_bytes));
        }
        let mut specs = match cfg.mode.unwrap_or_default() {
            RulesMode::Extend => default_rules(),
            RulesMode::Replace => Vec::new(),
        };
        specs.extend(cfg.rules.iter().cloned());
        if let Some(path) = &cfg.rules_file {
            specs.extend(load_rules_file(path)?);
        }
        Self::from_specs(
            cfg.enabled.unwrap_or(true),
            &specs,
            scan_bytes,
            cfg.audit_excerpt_chars.unwrap_or(0),
        )
    }

    /// The compiled-in rules with default settings.
    pub fn with_defaults() -> Detector {
        match Self::new(&RefusalConfig::default()) {
            Ok(d) => d,
            // The defaults are covered by unit tests; should they ever fail
            // to compile, detect nothing rather than take the gateway down.
            Err(e) => {
                tracing::error!(error = %e, "compiled-in refusal rules failed to build");
                Detector {
                    enabled: false,
                    set: RegexSet::empty(),
                    answer_follows: None,
                    rules: Vec::new(),
                    scan_bytes: DEFAULT_SCAN_BYTES,
                    audit_excerpt_chars: 0,
                }
            }
        }
    }

    fn from_specs(
        enabled: bool,
        specs: &[RuleSpec],
        scan_bytes: usize,
        audit_excerpt_chars: usize,
    ) -> Result<Detector, RefusalError> {
        let mut seen = std::collections::HashSet::new();
        let mut rules = Vec::with_capacity(specs.len());
        let mut patterns = Vec::with_capacity(specs.len() + 1);
        for (index, spec) in specs.iter().enumerate() {
            if !valid_id(&spec.id) {
                return Err(RefusalError::InvalidId {
                    index,
                    id: spec.id.clone(),
                });
            }
            if spec.id == UPSTREAM_REFUSAL || spec.id == CONTENT_FILTER {
                return Err(RefusalError::ReservedId {
                    id: spec.id.clone(),
                });
            }
            if !seen.insert(spec.id.as_str()) {
                return Err(RefusalError::DuplicateId {
                    id: spec.id.clone(),
                });
            }
            // Compile alone first so that an error names its rule.
            RegexBuilder::new(&spec.pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| RefusalError::InvalidPattern {
                    id: spec.id.clone(),
                    message: e.to_string(),
                })?;
            rules.push(RuleMeta {
                id: spec.id.clone(),
                soft: spec.overridable,
            });
            patterns.push(spec.pattern.clone());
        }
        patterns.push(expand(AI_OPENING));
        let set = RegexSetBuilder::new(&patterns)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(DFA_SIZE_LIMIT)
            .build()
            .map_err(|e| RefusalError::RuleSet(e.to_string()))?;
        let answer_follows = answer_follows_regex()?;
        Ok(Detector {
            enabled,
            set,
            answer_follows: Some(answer_follows),
            rules,
            scan_bytes,
            audit_excerpt_chars,
        })
    }

    /// Bytes of each choice's content the relay should accumulate: the
    /// configured `scan_bytes`, or 0 when text rules are disabled.
    pub fn scan_bytes(&self) -> usize {
        if self.enabled { self.scan_bytes } else { 0 }
    }

    /// Text rules are on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Ids of the active text rules, in priority order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// The audit excerpt for a refusal: its first `audit_excerpt_chars`
    /// characters, or `None` when the audit setting is off.
    pub fn audit_excerpt<'t>(&self, text: &'t str) -> Option<&'t str> {
        if self.audit_excerpt_chars == 0 {
            return None;
        }
        let end = text
            .char_indices()
            .nth(self.audit_excerpt_chars)
            .map_or(text.len(), |(i, _)| i);
        Some(&text[..end])
    }

    fn answer_follows_in(&self, window: &[u8]) -> bool {
        self.answer_follows
            .as_ref()
            .is_some_and(|re| re.is_match(window))
    }

    /// Classifies one response: upstream signals first, then the text rules
    /// over the first `scan_bytes` of `text`. Deterministic; allocates only
    /// when something matched.
    pub fn detect(&self, signals: &Signals, text: &str) -> Verdict {
        if signals.upstream_refusal {
            return Verdict::refusal(UPSTREAM_REFUSAL);
        }
        if signals.content_filter {
            return Verdict::refusal(CONTENT_FILTER);
        }
        if !self.enabled || self.rules.is_empty() {
            return Verdict::default();
        }
        let window = prefix(text, self.scan_bytes).as_bytes();
        if !self.set.is_match(window) {
            return Verdict::default();
        }
        let matches = self.set.matches(window);
        let n = self.rules.len();
        let ai_opening = matches.matched(n);
        // First hard match; first soft rule; first match made soft by the AI opening.
        let (mut hard, mut soft, mut softened) = (None, None, None);
        for (i, rule) in self.rules.iter().enumerate() {
            if !matches.matched(i) {
                continue;
            }
            if rule.soft {
                soft.get_or_insert(i);
            } else if ai_opening {
                softened.get_or_insert(i);
            } else {
                hard = Some(i);
                break;
            }
        }
        match (hard, soft.or(softened)) {
            (Some(i), _) => Verdict::refusal(&self.rules[i].id),
            (None, Some(i)) if !self.answer_follows_in(window) => {
                Verdict::refusal(&self.rules[i].id)
            }
            _ => Verdict::default(),
        }
    }
}

/// One regex for all [`OVERRIDES`].
fn answer_follows_regex() -> Result<Regex, RefusalError> {
    let alternation = OVERRIDES
        .iter()
        .map(|(_, t)| format!("(?:{})", expand(t)))
        .collect::<Vec<_>>()
        .join("|");
    RegexBuilder::new(&alternation)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| RefusalError::RuleSet(e.to_string()))
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
