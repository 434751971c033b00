//! The `[refusal]` table of the gateway configuration and the rules file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::RefusalError;

/// How much of the start of a response is scanned (and what the stream relay
/// accumulates per choice). Refusals show up in the first sentences.
pub const DEFAULT_SCAN_BYTES: usize = 4096;

/// Largest accepted `scan_bytes`.
pub const MAX_SCAN_BYTES: usize = 64 * 1024;

/// The `[refusal]` table of the gateway TOML configuration.
///
/// ```toml
/// [refusal]
/// enabled = true            # default true
/// mode = "extend"           # "extend" (defaults + these) or "replace"
/// rules_file = "refusal-rules.toml"
/// scan_bytes = 4096
/// audit_excerpt_chars = 0   # opt-in: first N chars of refusals in events
///
/// [[refusal.rules]]
/// id = "house_style"
/// pattern = '(?i)^\s*our policy does not allow'
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalConfig {
    /// Text rules on or off (default on). Upstream signals (`refusal` field,
    /// `finish_reason: content_filter`) are reported either way.
    pub enabled: Option<bool>,
    /// `extend` (default): compiled-in rules plus the configured ones;
    /// `replace`: only the configured ones.
    pub mode: Option<RulesMode>,
    /// Inline rules (`[[refusal.rules]]`).
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// A TOML file with `[[rules]]` entries, same fields and semantics as the
    /// inline rules (which come first). A relative path is taken as given
    /// (relative to the working directory) unless the loader called
    /// [`RefusalConfig::resolve_paths`].
    pub rules_file: Option<PathBuf>,
    /// Bytes from the start of a response that are scanned (default
    /// [`DEFAULT_SCAN_BYTES`], at most [`MAX_SCAN_BYTES`]).
    pub scan_bytes: Option<usize>,
    /// Opt-in audit: write the first N characters of a refusal in its event
    /// (`refusal_excerpt`). `0` or absent: never.
    pub audit_excerpt_chars: Option<usize>,
}

impl RefusalConfig {
    /// Makes a relative `rules_file` relative to `base` (the directory of the
    /// configuration file).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &self.rules_file
            && p.is_relative()
        {
            self.rules_file = Some(base.join(p));
        }
    }
}

/// Whether configured rules add to the compiled-in ones or replace them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesMode {
    /// Compiled-in rules first, then the configured ones.
    #[default]
    Extend,
    /// Only the configured rules.
    Replace,
}

/// One named text rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Reported as the event's `refusal_reason`. Letters, digits, `_`, `-`, `.`.
    pub id: String,
    /// A regular expression (Rust `regex` syntax, Unicode on by default),
    /// matched against the first `scan_bytes` of the response. Anchor it with
    /// `^` to only look at the opening.
    pub pattern: String,
    /// When true, the rule is not reported if the response goes on to give an
    /// answer (a list, code, "here is ...", "however, I can ..."), like the
    /// compiled-in soft rules. Default false.
    #[serde(default)]
    pub overridable: bool,
}

/// The rules file: `[[rules]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

/// Reads the `[[rules]]` of a rules file.
pub fn load_rules_file(path: &Path) -> Result<Vec<RuleSpec>, RefusalError> {
    let text = std::fs::read_to_string(path).map_err(|source| RefusalError::RulesFileRead {
        path: path.to_path_buf(),
        source,
    })?;
    let file: RulesFile = toml::from_str(&text).map_err(|e| RefusalError::RulesFileParse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(file.rules)
}
