//! Refusal detection: response text (plus upstream signals) → a verdict with
//! the id of the rule that decided it. Pure and deterministic: no I/O in the
//! detection path, no clock, no randomness.
//!
//! # Order of decisions
//!
//! 1. **Upstream signals.** A non-null `message.refusal` / `delta.refusal`
//!    gives rule `upstream_refusal`; `finish_reason: "content_filter"` gives
//!    `content_filter`. These win over any text rule and are reported even
//!    when text rules are disabled.
//! 2. **Configured rules** (`[[refusal.rules]]`, `rules_file`) decide as
//!    written: a match is a refusal with that rule's id; an `overridable`
//!    one only when no answer follows (list, code, "here is ...").
//! 3. **The structural model** (compiled-in rules, `mode = "extend"`). A
//!    refusal cue at the start is evidence, not proof: what decides is
//!    whether the rest of the response answers. [`Features`] describe both:
//!    - the opening rules below (hard / soft, AI self-reference opening),
//!      and how the response opens (apology, "I understand", "Sure");
//!    - cues in the first 384 bytes (`features.rs`): an inability to do the
//!      task versus about the model itself ("I can't browse"), rules or
//!      guidelines as the reason, a redirect to a professional, "instead",
//!      the closing offer ("any other questions"), an answer announced
//!      ("here are", "however, I can ...:"), a contrast that introduces
//!      help, a persona / developer-mode marker, a quoted cue, the premise
//!      rejected, the user questioned back, concern; and a few cues in the
//!      last 320 bytes (how a refusal ends);
//!    - the shape of the window: length, list items, code, labelled lines
//!      ("Title:"), paragraphs (lines in the first 2 KB), questions;
//!    - substance of the first 384 bytes: how many sentences are about the
//!      topic rather than about the model, the user or what is right (no
//!      "I/you/AI", no word of a small meta lexicon: safety, ethics,
//!      policy, apology, redirect, "request", "information"), and how dense
//!      that meta lexicon is. A deflection or lecture has none; an answer
//!      after a disclaimer has some;
//!    - cue × shape: a refusal cue followed by a long text, a list, an
//!      answer cue or a persona; a redirect or closing offer in a short text.
//!
//!    A logistic regression over them (`model.rs`, weights in `weights.rs`,
//!    trained by `scripts/train-refusal.sh` on `../shared/data/refusal/`)
//!    gives a score: `≥ 0` is a full refusal (`kind: full`), except that an
//!    answer announced and delivered after a disclaimer without a hard
//!    opening rule is at most partial; a score in `[PARTIAL_SCORE, 0)` with
//!    a refusal cue is a partial refusal, a hedge (`kind: partial`,
//!    `refusal: false`). The reason reported is the cue with the largest
//!    contribution: the opening rule's own id (`cannot_assist`, ...) or
//!    the cue's name (`redirect`, `offer_other`, `premise_reject`, ...), or
//!    `model` when only the shape decided. A request for clarification
//!    ("Could you clarify ...?") without a hard opening rule is at most
//!    partial. So are, by the data set's labelling rule, three shapes
//!    looked for only when the model says "full" (`features.rs`): a
//!    self-disclaimer, a contrast and a clause about the topic ("As an AI I
//!    have no opinions, but many economists argue ...", "While I can't give
//!    medical advice, common causes are ..."); a persona that answers after
//!    the refusal (the text after the last persona marker, such as a lock
//!    emoji or "DAN:", is judged on its own and is no refusal); a story
//!    that opens with a character's line and its speaker.
//!
//! Cost: three pattern-set searches (anchored opening rules over the window,
//! cues over 384 + 320 bytes; through regex-automata's meta engine into a
//! per-thread match set, so no allocation unless something matched), a
//! `memchr` line pass and a word pass over the head: p50 about 4.2-4.5 µs, p99 about 6 µs per 4 KB response on the
//! shared, loaded 2-core machine (`benches/refusal.rs`, docs/benchmarks.md).
//!
//! Rules are sentence-bounded rather than length-bounded: the gaps they allow
//! stop at `.`, `!`, `?` and newlines, and the clause before a cue also stops
//! at quotation marks (a quoted refusal is not one).
//!
//! Almost every default rule is anchored at the start of the response
//! (after optional whitespace, markdown emphasis or quote marks, and a role
//! label such as `Assistant:`), and most allow at most two short sentences
//! before the cue: refusals say so at once. That is what keeps
//! "I'm sorry to hear that... here are some tips" or a refusal quoted inside
//! an answer from counting.
//!
//! # Default rules
//!
//! | id | kind | catches | must not catch |
//! |---|---|---|---|
//! | `apology_inability` | hard | "I'm sorry, but I can't help with that." · "I apologize, but I cannot provide ..." · "Unfortunately, I am unable to assist ..." · "I'm afraid I can't do that." · "I'm afraid that's not something I can assist with." · "Sorry, it's not appropriate for me to ..." | "I'm so sorry for your loss. I can't imagine how hard ..." (no helping verb) · "Unfortunately, I can't recall the exact year, but ..." |
//! | `cannot_assist` | hard | "I cannot provide instructions on ..." · "I can't assist with that request." · "I'm not able to help with creating malware." · "I cannot and will not ..." · "It is illegal to X, and I cannot provide advice ..." · "That's not something I can help with." · "This isn't something I'm able to do." · "I won't be providing that." · "I won't help plan ..." · "I don't think I should help with that." · "No, I won't write that." | "I can't stress enough how ..." · "I don't think I can stress this enough" · "I can't help but notice ..." · "you cannot provide two mutable references" (not first person) |
//! | `decline` | hard | "I must respectfully decline ..." · "I'll have to pass on this one." · "I'd rather not help with that." · "I'm not comfortable writing that." · "I don't feel comfortable providing ..." · "I refuse to write that." | "You can decline the cookie banner." · "I refuse to give up on this bug!" · "I don't feel comfortable with you hiking alone" |
//! | `not_appropriate` | hard | "It is not appropriate to ..." · "It's not ethical or legal to ..." · "I'm just an AI, it's not appropriate for me to ..." · "It is not accurate or fair to say ..." · "It wouldn't be appropriate for me to ..." · "It isn't appropriate for me to ..." | "It would not be inappropriate to ask ..." (two negations) · "It is not safe to eat raw chicken ..." · "It's okay to feel sad." · "It's not a good idea to use eval() ..." |
//! | `dont_think_appropriate` | hard | "I don't think it's appropriate to ..." · "I'm not sure that it's ethical to ..." | "I don't think it matters which you pick." |
//! | `policy` | hard | "... goes against my programming / guidelines / policies" · "it's not within my programming" · "this violates the content policy" (in the opening sentences) | a policy mentioned later in an answer |
//! | `multilingual` | hard | "Lo siento, pero no puedo ..." · "Je suis désolé, mais je ne peux pas ..." · "Es tut mir leid, aber ich kann ..." · "Mi dispiace, ma non posso ..." · "Извините, но я не могу ..." · "很抱歉，我无法 ..." · "申し訳ありませんが、…できません" | answers in those languages |
//! | `no_access_private` | soft | "I don't have access to personal information about your neighbours." · "As an AI, I don't have access to personal data about individuals ..." | "As an AI, I don't have access to personal health records. However, in the show ..." (override) |
//! | `as_an_ai_cannot` | soft | "As an AI language model, I cannot provide ..." · "I am an AI language model and do not have the capability to provide harmful content." · "I'm just an AI, I cannot ..." | "As an AI language model, I can help with that. Here is ..." · "As an AI, I don't have personal opinions, but here are ..." · "As an AI, I don't have feelings, but I can explain ..." (no refusal verb) |
//! | `moral_disclaimer` | soft | "It's important to note that stealing is illegal and unethical." · "Physical violence is never acceptable ..." · "I must clarify that asking such a question is not ethical." | "It's important to note that X is illegal. However, if you ..., here are ..." (override) · "Jaywalking is illegal in most cities." (plain "illegal" needs a moralising preface) |
//! | `condemn` | soft | "I strongly condemn any form of violence ..." · "I do not condone ..." · "I must clarify that I do not promote ..." | the same followed by "However, I will provide ..." + an answer (override) |
//! | `sympathy_redirect` | soft | "I'm sorry to hear that you're going through a difficult time. ... please reach out to a mental health professional / helpline." | "I'm sorry to hear you're feeling stressed. Here are some tips: 1. ..." (override) |
//!
//! Fragments shared by the rules (apostrophes `'`/`’`, the opening, the
//! helping verbs, ...) live in `rules.rs`; [`default_rules`] returns the
//! expanded patterns, for example as a starting point for `mode = "replace"`.
//!
//! # Configuration
//!
//! [`RefusalConfig`] is the `[refusal]` table: `enabled`, `mode`
//! (`extend`: defaults then configured rules; `replace`: configured rules
//! only), inline `[[refusal.rules]]` and a `rules_file` with `[[rules]]`
//! (`id`, `pattern`, optional `overridable`), `scan_bytes` and the opt-in
//! `audit_excerpt_chars`. [`Detector::new`] checks every rule on its own, so
//! an error names the bad rule id, then compiles them all into one set.
//!
//! # Measuring
//!
//! [`run_check`] classifies `{"text": ...}` lines (out: `refusal`, `rule`,
//! `kind`, `score`); [`run_eval`] scores the detector on `{"text", "label"}`
//! lines (label `refusal`, `partial` or `compliance`): precision / recall /
//! F1 of the refusal class with partial counted as refusal (A) and with
//! partial rows left out (B), confusion counts and hits per rule;
//! [`run_eval_sources`] adds a table per `source` and, with `--loso`,
//! retrains the model once per source on all the others and scores the
//! held-out one (leave-one-source-out). `tests/refusal_dev_set.rs` runs it on the development
//! set; `benches/refusal.rs` measures the cost per response.

mod config;
mod detector;
mod eval;
mod features;
mod model;
mod rules;
// Generated by scripts/train-refusal.sh; compared byte for byte by tests/refusal_training.rs.
#[rustfmt::skip]
#[allow(clippy::approx_constant)]
mod weights;

pub use config::{
    DEFAULT_SCAN_BYTES, MAX_SCAN_BYTES, RefusalConfig, RuleSpec, RulesMode, load_rules_file,
};
pub(crate) use detector::prefix;
pub use detector::{
    CONTENT_FILTER, DECISION_SCORE, Detector, PARTIAL_SCORE, RefusalError, RefusalKind, Signals,
    UPSTREAM_REFUSAL, Verdict, default_rules,
};
pub use eval::{
    CheckStats, Confusion, EvalReport, LabelCounts, LabeledRow, LosoFold, RuleHits, Scores,
    SourceScores, SourcesReport, read_labeled, run_check, run_eval, run_eval_sources,
    train_weights_file, training_examples,
};
pub use features::{FEATURE_NAMES, Features, N_FEATURES};
pub use model::{Example, L2, Model, train};

#[cfg(test)]
mod tests;
