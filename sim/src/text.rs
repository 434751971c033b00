//! Pure, deterministic text helpers: hashing, prompt-token estimates, generated
//! word salad and refusal phrasings.
//!
//! Everything here is a function of its inputs (no clock, no global RNG), so the
//! simulator answers the same request with the same text for the same seed.

/// SplitMix64 step: a fast, well-mixed 64-bit hash used for every deterministic choice.
#[must_use]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over bytes, then mixed: a stable hash of request text.
#[must_use]
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(h)
}

/// A uniform float in [0, 1) from a hash.
#[must_use]
pub fn unit_f64(h: u64) -> f64 {
    // 53 significant bits, exact conversion.
    let v = (h >> 11) as f64;
    v / (1u64 << 53) as f64
}

/// Token estimate for a piece of text: about four characters per token, at least one
/// token for non-empty text.
#[must_use]
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = text.chars().count();
    if chars == 0 {
        return 0;
    }
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Per-message overhead of a chat template (role markers, separators).
pub const CHAT_MESSAGE_OVERHEAD: u32 = 4;
/// Tokens the chat template adds once (assistant prefix).
pub const CHAT_PROMPT_OVERHEAD: u32 = 3;

/// Vocabulary of generated text. Tokens carry their leading space like BPE tokens do.
const VOCAB: &[&str] = &[
    " the",
    " model",
    " request",
    " token",
    " latency",
    " cache",
    " system",
    " value",
    " data",
    " result",
    " signal",
    " stream",
    " batch",
    " queue",
    " memory",
    " answer",
    " question",
    " metric",
    " service",
    " gateway",
    " response",
    " context",
    " window",
    " time",
    " level",
    " is",
    " was",
    " can",
    " will",
    " should",
    " may",
    " has",
    " uses",
    " shows",
    " keeps",
    " returns",
    " handles",
    " reads",
    " writes",
    " sends",
    " of",
    " to",
    " in",
    " for",
    " with",
    " on",
    " by",
    " from",
    " and",
    " or",
    " a",
    " an",
    " this",
    " that",
    " each",
    " every",
    " fast",
    " slow",
    " large",
    " small",
    " stable",
    " simple",
    " clear",
    " new",
    " first",
    " last",
    ",",
    ".",
];

/// Realistic refusal phrasings; one is chosen per request.
pub const REFUSALS: &[&str] = &[
    "I'm sorry, but I can't help with that request. If you have another question, I'm happy to help.",
    "I'm sorry, but I can't assist with that. It could cause harm, and I won't provide instructions for it.",
    "I can't help with that. Providing this information could be dangerous. Is there something else I can do for you?",
    "I'm unable to help with this request because it goes against my usage guidelines. Let me know if there's anything else you need.",
    "Sorry, I can't provide that. If you're dealing with a difficult situation, please consider reaching out to a qualified professional.",
    "I apologize, but I cannot comply with this request. I'd be glad to help with a different question instead.",
];

/// Deterministic word salad: `count` tokens for choice stream `h`.
pub fn word_tokens(h: u64, count: usize, out: &mut Vec<&'static str>) {
    out.reserve(count);
    let mut state = h;
    for _ in 0..count {
        state = mix64(state);
        let idx = usize::try_from(state % VOCAB.len() as u64).unwrap_or(0);
        out.push(VOCAB[idx]);
    }
}

/// An alternative vocabulary token (the `k`-th for a token with hash `h`), for logprobs.
#[must_use]
pub fn alt_token(h: u64, k: u32) -> &'static str {
    let idx = usize::try_from(mix64(h ^ u64::from(k)) % VOCAB.len() as u64).unwrap_or(0);
    VOCAB[idx]
}

/// Choose one refusal phrasing from a hash.
#[must_use]
pub fn refusal_text(h: u64) -> &'static str {
    let idx = usize::try_from(mix64(h) % REFUSALS.len() as u64).unwrap_or(0);
    REFUSALS[idx]
}

/// Split a static text into word tokens that keep their leading space
/// ("I'm sorry," → ["I'm", " sorry,"]).
pub fn split_tokens(text: &'static str, out: &mut Vec<&'static str>) {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' && i > start {
            out.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_tokens_table() {
        for (text, want) in [
            ("", 0),
            ("a", 1),
            ("abcd", 1),
            ("abcde", 2),
            ("héllo wörld!", 3),
        ] {
            assert_eq!(estimate_tokens(text), want, "{text:?}");
        }
    }

    #[test]
    fn split_tokens_keeps_leading_spaces() {
        let mut v = Vec::new();
        split_tokens("I'm sorry, but no.", &mut v);
        assert_eq!(v, vec!["I'm", " sorry,", " but", " no."]);
        assert_eq!(v.concat(), "I'm sorry, but no.");
    }

    #[test]
    fn word_tokens_deterministic_and_seed_dependent() {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        word_tokens(7, 50, &mut a);
        word_tokens(7, 50, &mut b);
        word_tokens(8, 50, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 50);
    }

    #[test]
    fn refusals_vary() {
        let distinct: std::collections::HashSet<_> = (0..64).map(refusal_text).collect();
        assert!(
            distinct.len() >= 4,
            "only {} phrasings used",
            distinct.len()
        );
    }

    #[test]
    fn unit_f64_in_range() {
        for i in 0..1000 {
            let u = unit_f64(mix64(i));
            assert!((0.0..1.0).contains(&u));
        }
        assert!(unit_f64(u64::MAX) < 1.0);
    }
}
