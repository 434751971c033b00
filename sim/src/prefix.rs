//! Automatic prefix caching, modelled on vLLM V1's block pool
//! (`vllm/v1/core/block_pool.py`, `kv_cache_manager.py`, `kv_cache_utils.py`):
//!
//! - the KV cache is made of blocks of `block_size` tokens (vLLM's default 16);
//! - a *full* block gets a hash that chains the previous block's hash with its own token
//!   ids (`hash_block_tokens(parent_hash, block_tokens)`), so a block can only be found
//!   again by a request that shares the whole prefix up to and including it;
//! - a lookup walks a request's block hashes from the start and stops at the first miss
//!   (`find_longest_cache_hit`); at most `num_tokens - 1` tokens can hit, because the last
//!   prompt token must be computed again to get logits;
//! - blocks referenced by running requests are never evicted; a block whose last user
//!   finished stays cached but *free* (vLLM's free queue holds it as an eviction
//!   candidate); new allocations evict the least recently freed blocks first, and a
//!   request frees its blocks tail first, so the tail of a sequence goes before its head.
//!
//! The simulator's tokens are not a real tokenizer's: see [`push_text`].

use std::collections::{BTreeMap, HashMap};

use crate::text;

/// Token id of the chat template's start-of-message marker.
const START: u64 = 0x5354_4152_5400_0001;
/// Token id of the newline after the role.
const NEWLINE: u64 = 0x4e45_574c_494e_4502;
/// Token id of the end-of-message marker.
const END: u64 = 0x454e_4400_0000_0003;
/// Token id of the beginning-of-sequence token (completions).
const BOS: u64 = 0x424f_5300_0000_0004;

/// Append the approximate tokens of `text`: one token per four characters, its id a hash
/// of those characters. Deterministic and prefix-stable: the same leading text gives the
/// same leading tokens. The count is `ceil(chars / 4)`, like [`text::estimate_tokens`].
pub fn push_text(out: &mut Vec<u64>, text: &str) {
    let mut buf = [0u8; 16];
    let mut len = 0usize;
    let mut chars = 0usize;
    for c in text.chars() {
        let n = c.encode_utf8(&mut buf[len..]).len();
        len += n;
        chars += 1;
        if chars == 4 {
            out.push(text::hash_bytes(0, &buf[..len]));
            len = 0;
            chars = 0;
        }
    }
    if chars > 0 {
        out.push(text::hash_bytes(0, &buf[..len]));
    }
}

/// Token id of a role name.
fn role_id(role: &str) -> u64 {
    text::hash_bytes(0x726f_6c65, role.as_bytes())
}

/// Chat template header of a message: start marker, role, newline (3 tokens).
fn push_header(out: &mut Vec<u64>, role: &str) {
    out.extend_from_slice(&[START, role_id(role), NEWLINE]);
}

/// Tokens of a chat prompt: per message `header(role) content END` (3 + content + 1
/// tokens, the simulator's [`text::CHAT_MESSAGE_OVERHEAD`] of 4), then the generation
/// prompt `header("assistant")` ([`text::CHAT_PROMPT_OVERHEAD`] = 3 tokens).
///
/// The answer that follows the generation prompt, resent by the client in the next turn
/// as an assistant message, therefore continues the same token sequence: that is what
/// lets a multi-turn conversation hit the blocks of its previous turn.
#[must_use]
pub fn chat_tokens<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u64> {
    let mut out = Vec::new();
    for (role, content) in messages {
        push_header(&mut out, role);
        push_text(&mut out, content);
        out.push(END);
    }
    push_header(&mut out, "assistant");
    out
}

/// Tokens of a completion prompt: BOS + the text (`ceil(chars / 4) + 1`).
#[must_use]
pub fn completion_tokens(prompt: &str) -> Vec<u64> {
    let mut out = vec![BOS];
    push_text(&mut out, prompt);
    out
}

/// Hash of one block chained to its parent (`None` for the first block).
#[must_use]
pub fn block_hash(parent: Option<u64>, tokens: &[u64]) -> u64 {
    let mut h = text::mix64(parent.unwrap_or(0x6e6f_6e65_6861_7368));
    for t in tokens {
        h = text::mix64(h ^ t);
    }
    h
}

/// Chained hashes of the *full* blocks of `tokens` (a trailing partial block has none).
#[must_use]
pub fn block_hashes(tokens: &[u64], block_size: usize) -> Vec<u64> {
    let bs = block_size.max(1);
    let mut out = Vec::with_capacity(tokens.len() / bs);
    let mut parent = None;
    for block in tokens.chunks_exact(bs) {
        let h = block_hash(parent, block);
        out.push(h);
        parent = Some(h);
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct Block {
    /// Running requests using the block.
    refs: u32,
    /// Position in the free (eviction) order when `refs == 0`.
    stamp: u64,
}

/// The cached blocks of one engine, with reference counts and an LRU free order.
///
/// Capacity is enforced by the caller ([`crate::engine::Engine`]), which knows the
/// private (not yet cached) tokens of running requests too: it calls
/// [`PrefixCache::evict_one`] while the stored blocks do not fit.
#[derive(Debug, Default)]
pub struct PrefixCache {
    blocks: HashMap<u64, Block>,
    /// Unreferenced blocks by stamp: the first entry is evicted first.
    free: BTreeMap<u64, u64>,
    referenced: u64,
    clock: u64,
    evictions: u64,
}

impl PrefixCache {
    /// Number of leading `hashes` that are cached (the longest prefix hit, in blocks).
    #[must_use]
    pub fn lookup(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.blocks.contains_key(h))
            .count()
    }

    /// How many of these (cached) blocks are currently unreferenced, i.e. would be taken
    /// out of the free pool by [`PrefixCache::acquire`].
    #[must_use]
    pub fn unreferenced_among(&self, hashes: &[u64]) -> u64 {
        hashes
            .iter()
            .filter(|h| self.blocks.get(h).is_some_and(|b| b.refs == 0))
            .count() as u64
    }

    /// Reference cached blocks (a hit): they leave the free pool.
    pub fn acquire(&mut self, hashes: &[u64]) {
        for h in hashes {
            if let Some(b) = self.blocks.get_mut(h) {
                if b.refs == 0 {
                    self.free.remove(&b.stamp);
                    self.referenced += 1;
                }
                b.refs += 1;
            }
        }
    }

    /// A request computed this full block: cache it, referenced by that request. Returns
    /// `false` when an identical block was cached already (then that one is referenced;
    /// vLLM keeps both copies, the simulator keeps one).
    pub fn insert(&mut self, hash: u64) -> bool {
        match self.blocks.get_mut(&hash) {
            Some(b) => {
                if b.refs == 0 {
                    self.free.remove(&b.stamp);
                    self.referenced += 1;
                }
                b.refs += 1;
                false
            }
            None => {
                self.blocks.insert(hash, Block { refs: 1, stamp: 0 });
                self.referenced += 1;
                true
            }
        }
    }

    /// Drop one reference of each block; blocks nobody uses any more become eviction
    /// candidates, the *last* block of the list first (vLLM frees a request's blocks in
    /// reverse order so that a sequence's tail is evicted before its shared head).
    pub fn release(&mut self, hashes: &[u64]) {
        for h in hashes.iter().rev() {
            if let Some(b) = self.blocks.get_mut(h) {
                b.refs = b.refs.saturating_sub(1);
                if b.refs == 0 {
                    self.clock += 1;
                    b.stamp = self.clock;
                    self.free.insert(self.clock, *h);
                    self.referenced = self.referenced.saturating_sub(1);
                }
            }
        }
    }

    /// Evict the least recently freed unreferenced block; `false` when there is none.
    pub fn evict_one(&mut self) -> bool {
        let Some((_, h)) = self.free.pop_first() else {
            return false;
        };
        self.blocks.remove(&h);
        self.evictions += 1;
        true
    }

    /// Blocks referenced by running requests.
    #[must_use]
    pub fn referenced(&self) -> u64 {
        self.referenced
    }

    /// Cached blocks nobody uses (free, evictable).
    #[must_use]
    pub fn unreferenced(&self) -> u64 {
        self.free.len() as u64
    }

    /// Blocks evicted so far.
    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Whether `hash` is cached.
    #[must_use]
    pub fn contains(&self, hash: u64) -> bool {
        self.blocks.contains_key(&hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_tokens_are_prefix_stable_and_counted_like_the_estimate() {
        for s in [
            "",
            "a",
            "abcd",
            "abcde",
            "héllo wörld!",
            "the quick brown fox",
        ] {
            let mut v = Vec::new();
            push_text(&mut v, s);
            assert_eq!(v.len() as u32, text::estimate_tokens(s), "{s:?}");
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        push_text(&mut a, "You are a helpful assistant. Question one?");
        push_text(&mut b, "You are a helpful assistant. Question two!");
        assert_eq!(a[..8], b[..8]);
        assert_ne!(a[9..], b[9..]);
    }

    #[test]
    fn chat_tokens_count_and_continuation() {
        let t = chat_tokens([("system", "be brief"), ("user", "hello there")]);
        // 3 + (4 + 2) + (4 + 3)
        assert_eq!(t.len(), 16);
        // The next turn resends the answer: its tokens continue the previous sequence.
        let mut prev = t.clone();
        push_text(&mut prev, "General Kenobi.");
        let next = chat_tokens([
            ("system", "be brief"),
            ("user", "hello there"),
            ("assistant", "General Kenobi."),
            ("user", "again"),
        ]);
        assert_eq!(next[..prev.len()], prev[..]);
    }

    #[test]
    fn block_hashes_chain_the_prefix() {
        let a: Vec<u64> = (0..40).collect();
        let mut b = a.clone();
        b[20] = 999; // second block differs
        let mut c = a.clone();
        c[0] = 999; // first block differs
        let (ha, hb, hc) = (
            block_hashes(&a, 16),
            block_hashes(&b, 16),
            block_hashes(&c, 16),
        );
        assert_eq!(ha.len(), 2, "only full blocks are hashed");
        assert_eq!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1]);
        // Same tokens in block 2, different first block: the chain makes block 2 differ.
        assert_ne!(ha[0], hc[0]);
        assert_ne!(ha[1], hc[1]);
    }

    #[test]
    fn hit_on_shared_prefix_miss_on_differing_first_block() {
        let mut cache = PrefixCache::default();
        let base: Vec<u64> = (0..64).collect();
        let h = block_hashes(&base, 16);
        for x in &h {
            cache.insert(*x);
        }
        cache.release(&h);
        let mut longer = base.clone();
        longer.extend(100..132);
        assert_eq!(cache.lookup(&block_hashes(&longer, 16)), 4);
        let mut other = base.clone();
        other[3] = 7777;
        assert_eq!(cache.lookup(&block_hashes(&other, 16)), 0);
        let mut tail = base.clone();
        tail[40] = 7777;
        assert_eq!(cache.lookup(&block_hashes(&tail, 16)), 2);
    }

    #[test]
    fn lru_evicts_least_recently_freed_and_never_referenced_blocks() {
        let mut cache = PrefixCache::default();
        let a = block_hashes(&(0..32).collect::<Vec<u64>>(), 16);
        let b = block_hashes(&(1000..1032).collect::<Vec<u64>>(), 16);
        for x in a.iter().chain(&b) {
            cache.insert(*x);
        }
        assert_eq!((cache.referenced(), cache.unreferenced()), (4, 0));
        assert!(!cache.evict_one(), "referenced blocks are never evicted");
        cache.release(&a);
        cache.release(&b);
        assert_eq!((cache.referenced(), cache.unreferenced()), (0, 4));
        // a was freed first; its tail (a[1]) before its head.
        assert!(cache.evict_one());
        assert!(cache.contains(a[0]) && !cache.contains(a[1]));
        // Touching a[0] again protects it; the next victim is b's tail.
        cache.acquire(&a[..1]);
        assert!(cache.evict_one());
        assert!(!cache.contains(b[1]) && cache.contains(b[0]));
        assert!(cache.evict_one());
        assert!(!cache.contains(b[0]));
        assert!(!cache.evict_one());
        assert!(cache.contains(a[0]));
        assert_eq!(cache.evictions(), 3);
    }
}
