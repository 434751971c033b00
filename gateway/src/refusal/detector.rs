//! The detector: upstream signals, then pattern-set searches over the window
//! of the response.

use std::path::PathBuf;

use std::cell::RefCell;
use std::thread::LocalKey;

use regex::bytes::{Regex, RegexBuilder};
use regex_automata::{Input, MatchKind, PatternSet, meta, util::syntax};

use super::config::{
    DEFAULT_SCAN_BYTES, MAX_SCAN_BYTES, RefusalConfig, RuleSpec, RulesMode, load_rules_file,
};
use super::features::{
    CLARIFY, CONCESSIVE, CONTRAST, CUES, Cues, DISCLAIMER, FEATURE_NAMES, Features, HEAD_BYTES,
    OPENINGS, PERSONA_MARK, SHAPE_LINE_BYTES, SPOKEN_OPENING, Shape, Substance, TAIL_BYTES,
    TAIL_CUES, fi,
};
use super::model::{Model, sigmoid};
use super::rules::{AI_OPENING, DEFAULT_RULES, OVERRIDES, expand};
use super::weights::{BIAS, WEIGHTS};

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

/// How much of the request a response refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalKind {
    /// Declines and does not go on to answer (`refusal: true`).
    Full,
    /// A refusal cue, but the response goes on to engage in part: a hedge,
    /// a lecture with some content, a refusal of part of the request
    /// (`refusal: false`).
    Partial,
}

impl RefusalKind {
    /// The label value: `full` or `partial`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Full => "full",
            RefusalKind::Partial => "partial",
        }
    }
}

/// The outcome for one response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The response is a (full) refusal.
    pub refusal: bool,
    /// Id of the rule or cue that decided, or `upstream_refusal` /
    /// `content_filter`; `None` when neither a refusal nor a partial one.
    pub rule: Option<String>,
    /// `Full` for a refusal, `Partial` for a hedge (see [`RefusalKind`]),
    /// `None` otherwise.
    pub kind: Option<RefusalKind>,
    /// The model's refusal probability in thousandths, when the model
    /// decided (not for upstream signals or configured rules).
    pub score_milli: Option<u16>,
}

impl Verdict {
    fn refusal(id: &str) -> Verdict {
        Verdict {
            refusal: true,
            rule: Some(id.to_owned()),
            kind: Some(RefusalKind::Full),
            score_milli: None,
        }
    }
}

/// A score (log-odds) at or above this is a full refusal (probability 0.5).
/// A lower threshold (-0.7) was tried: the held-out mean moved by 0.003 and
/// the development set lost 0.02, so it stays at 0.
pub const DECISION_SCORE: f64 = 0.0;

/// Below this score a response with a refusal cue is compliance; between it
/// and [`DECISION_SCORE`] it is a partial refusal.
pub const PARTIAL_SCORE: f64 = -1.5;

/// A set of patterns searched together, as `regex::bytes::RegexSet` does
/// (the same meta engine and settings: overlapping matches, bytes
/// semantics), but its matches go to a per-thread scratch [`PatternSet`]
/// instead of a new one per search (`RegexSet::matches` allocates).
#[derive(Debug, Clone)]
struct MatchSet(Option<meta::Regex>);

thread_local! {
    /// Scratch for the opening rule set (held through a whole `detect`).
    static RULE_HITS: RefCell<PatternSet> = RefCell::new(PatternSet::new(0));
    /// Scratch for the cue sets (held only while their bits are read).
    static CUE_HITS: RefCell<PatternSet> = RefCell::new(PatternSet::new(0));
}

impl MatchSet {
    fn build<P: AsRef<str>>(patterns: &[P]) -> Result<MatchSet, RefusalError> {
        let config = meta::Config::new()
            .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
            .hybrid_cache_capacity(DFA_SIZE_LIMIT)
            .match_kind(MatchKind::All)
            .utf8_empty(false)
            .which_captures(regex_automata::nfa::thompson::WhichCaptures::None);
        meta::Builder::new()
            .configure(config)
            .syntax(syntax::Config::new().utf8(false))
            .build_many(patterns)
            .map(|re| MatchSet(Some(re)))
            .map_err(|e| RefusalError::RuleSet(e.to_string()))
    }

    /// Matches nothing.
    fn empty() -> MatchSet {
        MatchSet(None)
    }

    fn is_match(&self, hay: &[u8]) -> bool {
        self.0.as_ref().is_some_and(|re| re.is_match(hay))
    }

    /// Runs the search into `scratch` and hands the matches to `f`. Not
    /// re-entrant per scratch: `f` must not search with the same one.
    fn with_hits<R>(
        &self,
        scratch: &'static LocalKey<RefCell<PatternSet>>,
        hay: &[u8],
        f: impl FnOnce(&PatternSet) -> R,
    ) -> R {
        scratch.with(|cell| {
            let mut hits = cell.borrow_mut();
            let n = self.0.as_ref().map_or(0, |re| re.pattern_len());
            // One scratch serves sets of different sizes: grow it, never
            // shrink it (a larger capacity only disables the "all matched"
            // early exit).
            if hits.capacity() < n {
                *hits = PatternSet::new(n);
            } else {
                hits.clear();
            }
            if let Some(re) = &self.0 {
                re.which_overlapping_matches(&Input::new(hay), &mut hits);
            }
            f(&hits)
        })
    }

    /// The matches of the first `n` (at most 32) patterns as bits.
    fn bits(&self, hay: &[u8]) -> u32 {
        self.with_hits(&CUE_HITS, hay, |m| {
            m.iter()
                .fold(0, |b, p| b | 1u32.checked_shl(p.as_u32()).unwrap_or(0))
        })
    }
}

/// Did pattern `i` of a [`MatchSet`] match?
fn hit(m: &PatternSet, i: usize) -> bool {
    regex_automata::PatternID::new(i).is_ok_and(|p| m.contains(p))
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
    set: MatchSet,
    /// The answer-follows overrides as one alternation. Only consulted when
    /// a soft match needs it: an unanchored case-insensitive search is cheap
    /// as a leftmost `is_match` but not inside an overlapping set search.
    /// `None` only in the inert fallback of [`Detector::with_defaults`].
    answer_follows: Option<Regex>,
    /// [`CLARIFY`], consulted only when the model says "full".
    clarify: Option<Regex>,
    /// [`DISCLAIMER`], [`CONTRAST`] and [`CONCESSIVE`], consulted only when
    /// the model says "full".
    disclaimer: Option<(Regex, Regex, Regex)>,
    /// [`SPOKEN_OPENING`], consulted only when the model says "full".
    spoken: Option<Regex>,
    /// [`PERSONA_MARK`], consulted only when the model says "full".
    persona: Option<Regex>,
    rules: Vec<RuleMeta>,
    /// The first `n_default` rules are the compiled-in ones: with a model
    /// they are features, not decisions.
    n_default: usize,
    /// Cues over the head of the window ([`CUES`]) and the few
    /// ([`TAIL_CUES`]) looked for in its tail.
    cues: Option<(MatchSet, MatchSet)>,
    /// The structural model; `None` in `mode = "replace"` (rules decide).
    model: Option<Model>,
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
    /// rule (errors name the rule id), then compiles the pattern sets.
    pub fn new(cfg: &RefusalConfig) -> Result<Detector, RefusalError> {
        let scan_bytes = cfg.scan_bytes.unwrap_or(DEFAULT_SCAN_BYTES);
        if scan_bytes == 0 || scan_bytes > MAX_SCAN_BYTES {
            return Err(RefusalError::InvalidScanBytes(scan_bytes));
        }
        let mut specs = match cfg.mode.unwrap_or_default() {
            RulesMode::Extend => default_rules(),
            RulesMode::Replace => Vec::new(),
        };
        let n_default = specs.len();
        specs.extend(cfg.rules.iter().cloned());
        if let Some(path) = &cfg.rules_file {
            specs.extend(load_rules_file(path)?);
        }
        Self::from_specs(
            cfg.enabled.unwrap_or(true),
            &specs,
            n_default,
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
                    set: MatchSet::empty(),
                    answer_follows: None,
                    clarify: None,
                    disclaimer: None,
                    spoken: None,
                    persona: None,
                    rules: Vec::new(),
                    n_default: 0,
                    cues: None,
                    model: None,
                    scan_bytes: DEFAULT_SCAN_BYTES,
                    audit_excerpt_chars: 0,
                }
            }
        }
    }

    fn from_specs(
        enabled: bool,
        specs: &[RuleSpec],
        n_default: usize,
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
        patterns.extend(OPENINGS.iter().map(|(_, t)| expand(t)));
        let set = MatchSet::build(&patterns)?;
        let answer_follows = answer_follows_regex()?;
        let (cues, model) = if n_default > 0 {
            let head = MatchSet::build(&CUES.iter().map(|(_, t)| expand(t)).collect::<Vec<_>>())?;
            let tail = MatchSet::build(
                &TAIL_CUES
                    .iter()
                    .map(|&i| expand(CUES[i].1))
                    .collect::<Vec<_>>(),
            )?;
            let cues = (head, tail);
            (
                Some(cues),
                Some(Model {
                    bias: BIAS,
                    weights: WEIGHTS,
                }),
            )
        } else {
            (None, None)
        };
        Ok(Detector {
            enabled,
            set,
            answer_follows: Some(answer_follows),
            clarify: Some(one_regex(CLARIFY)?),
            disclaimer: Some((
                one_regex(DISCLAIMER)?,
                one_regex(CONTRAST)?,
                one_regex(CONCESSIVE)?,
            )),
            spoken: Some(one_regex(SPOKEN_OPENING)?),
            persona: Some(one_regex(PERSONA_MARK)?),
            rules,
            n_default,
            cues,
            model,
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
        let Some(model) = &self.model else {
            return self.rules_only(window);
        };
        let (v, persona_hint) = self
            .set
            .with_hits(&RULE_HITS, window, |m| self.decide(model, window, m));
        // A persona that answers after the refusal (a role-play or
        // "jailbreak" reply, see PERSONA_MARK): the part after the last
        // marker is judged on its own. Only for the model's full refusals
        // with a hint of a persona (the persona cue in the head, a labelled
        // line, a lock emoji), so that a plain refusal pays nothing.
        if v.refusal
            && v.score_milli.is_some()
            && (persona_hint || memchr::memmem::find(window, b"\xF0\x9F\x94").is_some())
            && let Some(seg) = self.persona_segment(window)
        {
            let (own, _) = self
                .set
                .with_hits(&RULE_HITS, seg, |m| self.decide(model, seg, m));
            let head = &seg[..seg.len().min(HEAD_BYTES)];
            // It answers on its own: no refusal cue at all, or not a refusal
            // and a sentence about the topic.
            let answers = own.kind.is_none() || Substance::of(head).substantive >= 1;
            if !own.refusal && seg.len() >= 80 && answers {
                return Verdict {
                    refusal: false,
                    kind: Some(RefusalKind::Partial),
                    ..v
                };
            }
        }
        v
    }

    /// The text after the last persona marker in the first
    /// [`SHAPE_LINE_BYTES`] (which bounds the cost), when something
    /// precedes it.
    fn persona_segment<'w>(&self, window: &'w [u8]) -> Option<&'w [u8]> {
        let re = self.persona.as_ref()?;
        let last = re
            .find_iter(&window[..window.len().min(SHAPE_LINE_BYTES)])
            .last()?;
        let before = &window[..last.start()];
        if before.iter().all(|b| b.is_ascii_whitespace()) {
            return None;
        }
        Some(&window[last.end()..])
    }

    /// A self-disclaimer, a contrast, then a clause about the topic ("As an
    /// AI I have no opinions, but many economists argue that ..."): `None`
    /// when not, else whether the disclaimer was concessive ("While I can't
    /// give medical advice, ..."), where the disclaimer itself is an
    /// inability cue.
    fn disclaimer_answers(&self, head: &[u8]) -> Option<bool> {
        let (disclaimer, contrast, concessive) = self.disclaimer.as_ref()?;
        let d = disclaimer.find(head)?;
        // "While I can't ..., <clause>": the comma is the contrast.
        let is_concessive = concessive.find(head).is_some_and(|c| c.end() == d.start());
        let after = if is_concessive {
            d.end() + memchr::memchr(b',', &head[d.end()..])? + 1
        } else {
            contrast.find_at(head, d.end())?.end()
        };
        let rest = &head[after..];
        let end = memchr::memchr3(b'.', b'!', b'?', rest)
            .into_iter()
            .chain(memchr::memchr(b'\n', rest))
            .min()
            .unwrap_or(rest.len());
        let s = Substance::of(&rest[..end]);
        (s.substantive == 1 && s.words >= 5).then_some(is_concessive)
    }

    /// [`Detector::detect`] once the opening rule set has been searched.
    /// Also says whether the window hints at a persona (see `detect`).
    fn decide(&self, model: &Model, window: &[u8], matches: &PatternSet) -> (Verdict, bool) {
        let cues = self.cues_of(window, matches);
        // A configured rule decides as it always did.
        if let Some(v) = self.configured_rule(window, matches) {
            return (v, false);
        }
        let x = build_features(&cues, window);
        let persona_hint = x.0[fi::PERSONA] > 0.0 || x.0[fi::LABEL_LINES] > 0.0;
        let score = model.score(&x);
        let refusal_cue = x.0[fi::RULE_HARD] > 0.0
            || x.0[fi::RULE_SOFT] > 0.0
            || x.0[fi::INABILITY] > 0.0
            || x.0[fi::SELF_INABILITY_ONLY] > 0.0;
        // An answer announced and delivered after a disclaimer ("As an AI I
        // can't give opinions. However, I can provide an overview: ...") is
        // at most a hedge; only an opening hard rule can still make it a
        // full refusal through the model.
        let announced = x.0[fi::ANNOUNCED_ANSWER] > 0.0 && x.0[fi::RULE_HARD] == 0.0;
        // A request for clarification ("I don't understand the question.
        // Could you clarify ...?") declines nothing: at most a hedge unless
        // an opening hard rule matched. Searched only on that path.
        let clarify = |w: &[u8]| {
            x.0[fi::RULE_HARD] == 0.0
                && self
                    .clarify
                    .as_ref()
                    .is_some_and(|re| re.is_match(&w[..w.len().min(HEAD_BYTES)]))
        };
        // A self-disclaimer then an answer ("As an AI I have no opinions,
        // but many economists argue ..."): at most a hedge, unless a hard
        // rule or a refusal of the task itself matched.
        let disclaimer_answer = |w: &[u8]| {
            x.0[fi::RULE_HARD] == 0.0
                && x.0[fi::POLICY_REASON] == 0.0
                && self
                    .disclaimer_answers(&w[..w.len().min(HEAD_BYTES)])
                    .is_some_and(|concessive| concessive || x.0[fi::INABILITY] == 0.0)
        };
        // A story opening with a character's line (`"I can't," she said`).
        let spoken = |w: &[u8]| self.spoken.as_ref().is_some_and(|re| re.is_match(w));
        let kind = if score >= DECISION_SCORE {
            if announced || clarify(window) || disclaimer_answer(window) || spoken(window) {
                RefusalKind::Partial
            } else {
                RefusalKind::Full
            }
        } else if refusal_cue && score >= PARTIAL_SCORE {
            RefusalKind::Partial
        } else {
            return (
                Verdict {
                    score_milli: Some(milli(score)),
                    ..Verdict::default()
                },
                persona_hint,
            );
        };
        let v = Verdict {
            refusal: kind == RefusalKind::Full,
            rule: Some(self.reason(model, &x, matches).to_owned()),
            kind: Some(kind),
            score_milli: Some(milli(score)),
        };
        (v, persona_hint)
    }

    /// The model inputs for a text (as [`Detector::detect`] computes them),
    /// or `None` when the detector has no model (`mode = "replace"`) or is off.
    pub fn features(&self, text: &str) -> Option<Features> {
        if !self.enabled || self.model.is_none() {
            return None;
        }
        let window = prefix(text, self.scan_bytes).as_bytes();
        let cues = self
            .set
            .with_hits(&RULE_HITS, window, |m| self.cues_of(window, m));
        Some(build_features(&cues, window))
    }

    /// The detector with another model (for leave-one-source-out training).
    pub fn with_model(&self, model: Model) -> Option<Detector> {
        self.model.as_ref()?;
        Some(Detector {
            enabled: self.enabled,
            set: self.set.clone(),
            answer_follows: self.answer_follows.clone(),
            clarify: self.clarify.clone(),
            disclaimer: self.disclaimer.clone(),
            spoken: self.spoken.clone(),
            persona: self.persona.clone(),
            rules: self
                .rules
                .iter()
                .map(|r| RuleMeta {
                    id: r.id.clone(),
                    soft: r.soft,
                })
                .collect(),
            n_default: self.n_default,
            cues: self.cues.clone(),
            model: Some(model),
            scan_bytes: self.scan_bytes,
            audit_excerpt_chars: self.audit_excerpt_chars,
        })
    }

    /// Benchmark helper: runs one stage of [`Detector::detect`] on `text`
    /// (0: opening rule set, 1: head and tail cue sets, 2: shape pass,
    /// 3: substance pass).
    #[doc(hidden)]
    pub fn bench_stage(&self, stage: u8, text: &str) -> usize {
        let window = prefix(text, self.scan_bytes).as_bytes();
        match stage {
            0 => self.set.with_hits(&RULE_HITS, window, |m| m.len()),
            1 => self.cues.as_ref().map_or(0, |(hs, ts)| {
                let head = &window[..window.len().min(HEAD_BYTES)];
                let tail = &window[window.len().saturating_sub(TAIL_BYTES)..];
                (hs.bits(head).count_ones() + ts.bits(tail).count_ones()) as usize
            }),
            2 => Shape::of(window).list_lines as usize,
            _ => Substance::of(&window[..window.len().min(HEAD_BYTES)]).substantive as usize,
        }
    }

    /// The model in use, if any.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// The cues of a window, given the opening rule set's matches `m`.
    fn cues_of(&self, window: &[u8], m: &PatternSet) -> Cues {
        let n = self.rules.len();
        let ai_opening = hit(m, n);
        let mut openings = 0u32;
        for k in 0..OPENINGS.len() {
            if hit(m, n + 1 + k) {
                openings |= 1 << k;
            }
        }
        let mut c = Cues {
            ai_opening,
            openings,
            ..Cues::default()
        };
        for (i, rule) in self.rules[..self.n_default].iter().enumerate() {
            if hit(m, i) {
                if rule.soft || ai_opening {
                    c.rule_soft = true;
                } else {
                    c.rule_hard = true;
                }
            }
        }
        if let Some((hs, ts)) = &self.cues {
            let head = &window[..window.len().min(HEAD_BYTES)];
            c.head = hs.bits(head);
            c.tail = if window.len() <= HEAD_BYTES {
                c.head
            } else {
                let m = ts.bits(&window[window.len().saturating_sub(TAIL_BYTES)..]);
                let mut b = 0;
                for (k, &i) in TAIL_CUES.iter().enumerate() {
                    if m & (1 << k) != 0 {
                        b |= 1 << i;
                    }
                }
                b
            };
        }
        c
    }

    /// A configured (not compiled-in) rule that matched: a hard one decides,
    /// an overridable one decides unless an answer follows.
    fn configured_rule(&self, window: &[u8], m: &PatternSet) -> Option<Verdict> {
        let mut soft = None;
        for (i, rule) in self.rules.iter().enumerate().skip(self.n_default) {
            if !hit(m, i) {
                continue;
            }
            if !rule.soft {
                return Some(Verdict::refusal(&rule.id));
            }
            soft.get_or_insert(i);
        }
        let i = soft?;
        (!self.answer_follows_in(window)).then(|| Verdict::refusal(&self.rules[i].id))
    }

    /// What decided: the cue with the largest positive contribution; the
    /// matched rule's own id for the opening rules.
    fn reason<'a>(&'a self, model: &Model, x: &Features, m: &PatternSet) -> &'a str {
        let mut best: Option<(usize, f64)> = None;
        for (i, (&w, &v)) in model.weights.iter().zip(x.0.iter()).enumerate() {
            let c = w * v;
            if c > 0.0 && best.is_none_or(|(_, b)| c > b) {
                best = Some((i, c));
            }
        }
        let Some((i, _)) = best else {
            return "model";
        };
        if i == fi::RULE_HARD || i == fi::RULE_SOFT {
            let ai_opening = hit(m, self.rules.len());
            let rules = &self.rules[..self.n_default];
            let first = |pred: &dyn Fn(&RuleMeta) -> bool| {
                rules
                    .iter()
                    .enumerate()
                    .find(|(k, r)| hit(m, *k) && pred(r))
                    .map(|(_, r)| r.id.as_str())
            };
            let id = if i == fi::RULE_HARD {
                first(&|r| !r.soft)
            } else {
                // Soft rules first, then hard ones softened by an AI opening.
                first(&|r| r.soft).or_else(|| first(&|r| !r.soft && ai_opening))
            };
            if let Some(id) = id {
                return id;
            }
        }
        let name = FEATURE_NAMES[i];
        name.split("_x_").next().unwrap_or(name)
    }

    /// Rules only (`mode = "replace"`): a hard rule decides; a soft one
    /// unless an answer follows.
    fn rules_only(&self, window: &[u8]) -> Verdict {
        if !self.set.is_match(window) {
            return Verdict::default();
        }
        self.set
            .with_hits(&RULE_HITS, window, |m| self.rules_decide(window, m))
    }

    fn rules_decide(&self, window: &[u8], matches: &PatternSet) -> Verdict {
        let n = self.rules.len();
        let ai_opening = hit(matches, n);
        // First hard match; first soft rule; first match made soft by the AI opening.
        let (mut hard, mut soft, mut softened) = (None, None, None);
        for (i, rule) in self.rules.iter().enumerate() {
            if !hit(matches, i) {
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

/// The model inputs of a window: cues, shape (whole window), substance (head).
fn build_features(cues: &Cues, window: &[u8]) -> Features {
    let head = &window[..window.len().min(HEAD_BYTES)];
    Features::build(cues, &Shape::of(window), &Substance::of(head))
}

/// One compiled-in pattern (template expanded) as a regex.
fn one_regex(template: &str) -> Result<Regex, RefusalError> {
    RegexBuilder::new(&expand(template))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| RefusalError::RuleSet(e.to_string()))
}

/// A probability in thousandths.
fn milli(score: f64) -> u16 {
    (sigmoid(score) * 1000.0).round() as u16
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
pub(crate) fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
