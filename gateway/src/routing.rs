//! Endpoint choice within a pool: the reasons reported in events and
//! metrics, the prefix-affinity key of a request, and the hashing used by
//! rendezvous (highest random weight) hashing.
//!
//! The policies themselves live in [`crate::upstream::Pool::pick`].

use std::ops::Range;

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;

/// `routing_reason` values (event field and `reason` metric label): a fixed set.
pub mod reason {
    /// `round-robin` pool.
    pub const ROUND_ROBIN: &str = "round_robin";
    /// Fewest in flight: a `least-in-flight` pool, a `load-aware` pool without
    /// fresh scrapes, or a `prefix-affinity` request without a key.
    pub const LEAST_IN_FLIGHT: &str = "least_in_flight";
    /// `load-aware` with fresh scrapes of every candidate.
    pub const LOAD: &str = "load";
    /// `prefix-affinity`: the endpoint holding the conversation's cache: the
    /// one its previous request went to, else the one its key hashes to first.
    pub const AFFINITY: &str = "affinity";
    /// `prefix-affinity`: that endpoint was at its load bound (or unhealthy);
    /// the next one in the key's hash order took it (and keeps the
    /// conversation).
    pub const AFFINITY_FALLBACK: &str = "affinity_fallback";
    /// The request refers to a stored Responses API response
    /// (`previous_response_id`, `/v1/responses/{id}`): the endpoint that
    /// created it, which alone has it.
    pub const PREVIOUS_RESPONSE: &str = "previous_response";
    /// A second or later attempt after a connect error or a 502/503.
    pub const RETRY: &str = "retry";
    /// The pool has one endpoint: no choice was made.
    pub const ONLY_ENDPOINT: &str = "only_endpoint";

    pub const ALL: [&str; 8] = [
        ROUND_ROBIN,
        LEAST_IN_FLIGHT,
        LOAD,
        AFFINITY,
        AFFINITY_FALLBACK,
        PREVIOUS_RESPONSE,
        RETRY,
        ONLY_ENDPOINT,
    ];
}

/// Header naming a conversation (takes precedence over the body).
pub const SESSION_HEADER: &str = "x-session-id";
/// Bytes of `prompt` (or `input`) hashed for the key when there are no messages.
pub const PROMPT_KEY_BYTES: usize = 512;

/// FNV-1a, 64 bit: stable across builds and gateway replicas (several
/// gateways in front of one pool send a conversation to the same endpoint).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Weight of an endpoint for a key (rendezvous hashing): the endpoint with
/// the highest weight is the key's home; removing an endpoint moves only the
/// keys it was home to.
pub fn hrw_weight(key: u64, endpoint_hash: u64) -> u64 {
    // splitmix64 finaliser over the combination.
    let mut z = key ^ endpoint_hash.rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Slots of an [`EndpointMemory`] table (8 bytes each: 512 KiB).
pub const MEMORY_SLOTS: usize = 1 << 16;

/// Which endpoint a key was last sent to: where a prefix-affinity
/// conversation's newest KV blocks are (so a conversation that a load bound
/// moved stays where it moved instead of coming back to a cache that lacks
/// its latest turns), and which endpoint created a Responses API response
/// (vLLM keeps stored responses in that server's memory). A fixed-size,
/// lock-free table, direct-mapped by key: a colliding key overwrites the
/// slot, which only costs the other key its memory. Each gateway replica has
/// its own.
#[derive(Debug)]
pub struct EndpointMemory {
    /// `(key >> 16) << 16 | mark << 15 | (endpoint index + 1)`; 0 = empty.
    slots: Box<[std::sync::atomic::AtomicU64]>,
}

/// The mark bit of a slot (see [`EndpointMemory::mark`]).
const MARK: u64 = 1 << 15;
/// Endpoint indexes a slot can hold (below the mark bit, 0 = empty).
const MAX_INDEX: usize = (MARK - 2) as usize;

impl Default for EndpointMemory {
    fn default() -> Self {
        Self {
            slots: (0..MEMORY_SLOTS).map(|_| Default::default()).collect(),
        }
    }
}

impl EndpointMemory {
    fn slot(&self, key: u64) -> &std::sync::atomic::AtomicU64 {
        &self.slots[key as usize & (MEMORY_SLOTS - 1)]
    }

    /// The endpoint index last recorded for `key`, if its slot still holds it.
    pub fn get(&self, key: u64) -> Option<usize> {
        let v = self.slot(key).load(std::sync::atomic::Ordering::Relaxed);
        (v != 0 && v >> 16 == key >> 16).then(|| (v & (MARK - 1)) as usize - 1)
    }

    /// Records that `key` was sent to endpoint `index`, marked or not (pools
    /// of more than 32,766 endpoints are not remembered past that index).
    pub fn set(&self, key: u64, index: usize, marked: bool) {
        if index <= MAX_INDEX {
            let mark = if marked { MARK } else { 0 };
            let v = (key >> 16) << 16 | mark | (index as u64 + 1);
            self.slot(key)
                .store(v, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Marks `key`'s entry: true if this call did (the entry is there and
    /// was unmarked), false otherwise, so of concurrent callers one wins.
    pub fn mark(&self, key: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let slot = self.slot(key);
        let v = slot.load(Relaxed);
        v != 0
            && v >> 16 == key >> 16
            && v & MARK == 0
            && slot.compare_exchange(v, v | MARK, Relaxed, Relaxed).is_ok()
    }
}

/// The key of a Responses API response id in a pool's [`EndpointMemory`].
pub fn response_key(id: &str) -> u64 {
    fnv1a(&[b"response", id.as_bytes()])
}

/// Where the affinity key of a request body is (byte ranges into `body`),
/// noted while the body is parsed for `model` anyway; the key itself is only
/// computed for `prefix-affinity` pools.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeySource {
    pub body: Bytes,
    pub user: Option<Range<usize>>,
    pub messages: Option<Range<usize>>,
    pub prompt: Option<Range<usize>>,
    pub input: Option<Range<usize>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<&'a str>,
}

/// The prefix-affinity key of a request, in this order: the `x-session-id`
/// header; the body's `user` field; the first system (or developer) message
/// and the first user message of `messages` (the part of a chat that every
/// later turn resends unchanged); the first [`PROMPT_KEY_BYTES`] bytes of
/// `prompt` or `input`. `None` when the request has none of these.
pub fn affinity_key(headers: &HeaderMap, src: Option<&KeySource>) -> Option<u64> {
    if let Some(s) = headers.get(SESSION_HEADER)
        && !s.as_bytes().is_empty()
    {
        return Some(fnv1a(&[b"session", s.as_bytes()]));
    }
    let src = src?;
    let part = |r: &Option<Range<usize>>| r.as_ref().and_then(|r| src.body.get(r.clone()));
    if let Some(u) = part(&src.user)
        && let Ok(Some(u)) = serde_json::from_slice::<Option<String>>(u)
        && !u.is_empty()
    {
        return Some(fnv1a(&[b"user", u.as_bytes()]));
    }
    if let Some(m) = part(&src.messages)
        && let Some(key) = messages_key(m)
    {
        return Some(key);
    }
    for (tag, r) in [(&b"prompt"[..], &src.prompt), (&b"input"[..], &src.input)] {
        if let Some(p) = part(r) {
            return Some(fnv1a(&[tag, &p[..p.len().min(PROMPT_KEY_BYTES)]]));
        }
    }
    None
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The key of a `messages` array (raw JSON): its first system (or developer)
/// message and its first user message, or its first message if it has
/// neither. Reads the array only up to the first user message (a chat's
/// later turns are not parsed at all).
fn messages_key(m: &[u8]) -> Option<u64> {
    let mut pos = skip_ws(m, 0);
    if m.get(pos) != Some(&b'[') {
        return None;
    }
    pos += 1;
    let mut first: Option<&RawValue> = None;
    let mut system: Option<&RawValue> = None;
    let mut user: Option<&RawValue> = None;
    loop {
        pos = skip_ws(m, pos);
        if m.get(pos).is_none_or(|&c| c == b']') {
            break;
        }
        let mut one = serde_json::Deserializer::from_slice(&m[pos..]).into_iter::<&RawValue>();
        let Some(Ok(raw)) = one.next() else {
            break;
        };
        pos += one.byte_offset();
        first.get_or_insert(raw);
        let role = serde_json::from_str::<Message>(raw.get())
            .ok()
            .and_then(|msg| msg.role);
        match role {
            Some("system" | "developer") if system.is_none() => system = Some(raw),
            Some("user") => {
                user = Some(raw);
                break;
            }
            _ => {}
        }
        pos = skip_ws(m, pos);
        if m.get(pos) != Some(&b',') {
            break;
        }
        pos += 1;
    }
    let head = user.or(system).or(first)?;
    let sys = system.map_or(&b""[..], |s| s.get().as_bytes());
    Some(fnv1a(&[b"messages", sys, head.get().as_bytes()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key source as the request parser notes it.
    fn src(json: &str) -> KeySource {
        crate::proxy::parse_request(
            Bytes::from(json.to_owned()),
            crate::api::Api::ChatCompletions,
        )
        .unwrap()
        .key_src
        .unwrap()
    }

    fn key(json: &str) -> Option<u64> {
        affinity_key(&HeaderMap::new(), Some(&src(json)))
    }

    #[test]
    fn a_conversation_keeps_its_key_across_turns() {
        let t1 = r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi, I am Ann"}]}"#;
        let t2 = r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi, I am Ann"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}]}"#;
        let other = r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi, I am Bob"}]}"#;
        assert!(key(t1).is_some());
        assert_eq!(key(t1), key(t2));
        assert_ne!(key(t1), key(other));
        // Header, then `user`, win over the messages.
        let with_user = r#"{"user":"u-1","messages":[{"role":"user","content":"x"}]}"#;
        let same_user = r#"{"user":"u-1","messages":[{"role":"user","content":"y"}]}"#;
        assert_eq!(key(with_user), key(same_user));
        let mut h = HeaderMap::new();
        h.insert(SESSION_HEADER, "s-9".parse().unwrap());
        assert_eq!(
            affinity_key(&h, Some(&src(with_user))),
            affinity_key(&h, None)
        );
        assert_ne!(affinity_key(&h, None), key(with_user));
    }

    #[test]
    fn messages_are_read_only_up_to_the_first_user_message() {
        let compact = r#"[{"role":"system","content":"s"},{"role":"user","content":"u"}]"#;
        let pretty = "[\n  {\"role\":\"system\",\"content\":\"s\"} ,\n\t{\"role\":\"user\",\"content\":\"u\"}\n]";
        assert_eq!(
            messages_key(compact.as_bytes()),
            messages_key(pretty.as_bytes())
        );
        assert!(messages_key(compact.as_bytes()).is_some());
        // What follows the first user message is never parsed.
        let tail = r#"[{"role":"system","content":"s"},{"role":"user","content":"u"}, not json"#;
        assert_eq!(
            messages_key(tail.as_bytes()),
            messages_key(compact.as_bytes())
        );
        // Assistant messages before the first user one are skipped; a developer message is a system one.
        let dev = r#"[{"role":"developer","content":"s"},{"role":"assistant","content":"x"},{"role":"user","content":"u"}]"#;
        assert!(messages_key(dev.as_bytes()).is_some());
        assert_ne!(
            messages_key(dev.as_bytes()),
            messages_key(compact.as_bytes())
        );
        // No user message: the system message; neither: the first message.
        let only_sys = r#"[{"role":"system","content":"s"},{"role":"assistant","content":"a"}]"#;
        let only_asst = r#"[{"role":"assistant","content":"a"}]"#;
        assert!(messages_key(only_sys.as_bytes()).is_some());
        assert!(messages_key(only_asst.as_bytes()).is_some());
        assert_ne!(
            messages_key(only_sys.as_bytes()),
            messages_key(only_asst.as_bytes())
        );
        for none in ["[]", " [ ] ", "{}", "", "[,]"] {
            assert_eq!(messages_key(none.as_bytes()), None, "{none}");
        }
    }

    #[test]
    fn prompts_inputs_and_nothing() {
        let long_a = format!(r#"{{"prompt":"{}A"}}"#, "x".repeat(600));
        let long_b = format!(r#"{{"prompt":"{}B"}}"#, "x".repeat(600));
        assert_eq!(key(&long_a), key(&long_b), "only the first bytes count");
        assert_ne!(key(r#"{"prompt":"a"}"#), key(r#"{"prompt":"b"}"#));
        assert_ne!(key(r#"{"prompt":"a"}"#), key(r#"{"input":"a"}"#));
        assert_eq!(key(r#"{"model":"m"}"#), None);
        assert_eq!(key(r#"{"messages":[]}"#), None);
        assert_eq!(affinity_key(&HeaderMap::new(), None), None);
        // Odd messages still give a key (the first one).
        assert!(key(r#"{"messages":[1,2]}"#).is_some());
        // A null or empty `user` is no key.
        assert_eq!(key(r#"{"user":null}"#), None);
        assert_eq!(key(r#"{"user":""}"#), None);
    }

    #[test]
    fn endpoint_memory_remembers_and_collisions_forget() {
        let t = EndpointMemory::default();
        let a = 0x1234_5678_9abc_0001u64;
        assert_eq!(t.get(a), None);
        assert!(!t.mark(a), "nothing to mark");
        t.set(a, 0, false);
        assert_eq!(t.get(a), Some(0));
        t.set(a, 3, false);
        assert_eq!(t.get(a), Some(3));
        // Marked once; the index is unchanged.
        assert!(t.mark(a));
        assert!(!t.mark(a));
        assert_eq!(t.get(a), Some(3));
        t.set(a, MAX_INDEX, true);
        assert_eq!(t.get(a), Some(MAX_INDEX));
        assert!(!t.mark(a), "recorded marked");
        // Same slot (low 16 bits), other key: not mistaken for `a`, and
        // recording it takes the slot.
        let b = 0x9999_0000_0000_0001u64;
        assert_eq!(t.get(b), None);
        assert!(!t.mark(b));
        t.set(b, 1, false);
        assert_eq!((t.get(a), t.get(b)), (None, Some(1)));
        // Indexes that do not fit are not recorded.
        let c = 0x42u64 << 40;
        t.set(c, MAX_INDEX + 1, false);
        assert_eq!(t.get(c), None);
    }

    #[test]
    fn rendezvous_spreads_keys_and_is_stable() {
        let eps: Vec<u64> = (0..4)
            .map(|i| fnv1a(&[format!("10.0.0.{i}:8000").as_bytes()]))
            .collect();
        let home = |k: u64, eps: &[u64]| {
            (0..eps.len())
                .max_by_key(|&i| hrw_weight(k, eps[i]))
                .unwrap()
        };
        let mut counts = [0usize; 4];
        for k in 0..4000u64 {
            counts[home(fnv1a(&[&k.to_le_bytes()]), &eps)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
        // Removing endpoint 3 moves only its keys.
        for k in 0..1000u64 {
            let k = fnv1a(&[&k.to_le_bytes()]);
            let before = home(k, &eps);
            if before != 3 {
                assert_eq!(home(k, &eps[..3]), before);
            }
        }
    }
}
