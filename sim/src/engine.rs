//! The simulated engine scheduler: a bounded running set, a FCFS waiting queue, a
//! KV cache counted in tokens with a block-level prefix cache, and a prefill lane.
//!
//! Model (simple, close to vLLM V1's FCFS scheduler with recompute preemption):
//! - a request is admitted ("running") when fewer than `max_concurrency` requests run and
//!   its new KV fits in the free budget; an empty engine always admits the head of the
//!   queue so nothing starves;
//! - admission is strictly FCFS: nobody overtakes the head of the queue;
//! - at admission the prompt's block hashes are looked up in the prefix cache
//!   ([`crate::prefix`]): the longest cached prefix (at most `prompt - 1` tokens, in whole
//!   blocks) is *hit*; the request references those blocks and needs KV only for the rest.
//!   `vllm:prefix_cache_queries_total` grows by the prompt tokens and
//!   `vllm:prefix_cache_hits_total` by the hit tokens, once per request (vLLM counts a
//!   resumed preempted request separately, not in these counters);
//! - when the prefill is done the prompt's full blocks enter the cache (still referenced
//!   by the request); when the request finishes, the full blocks of prompt + answer stay
//!   cached, unreferenced, as eviction candidates (LRU);
//! - every generated token needs one more KV slot; when the budget is full and other
//!   requests are running, the growing request is preempted: it frees its KV, goes back
//!   to the *front* of the queue (counted in `vllm:num_preemptions_total`) and resumes
//!   where it stopped once re-admitted (without a new cache lookup);
//! - stored = private tokens of running requests + all cached blocks ≤ `--kv-cache-tokens`:
//!   unreferenced cached blocks are evicted (least recently freed first) to make room;
//! - `kv_cache_usage_perc` = (private tokens + referenced cached blocks) / budget, capped at
//!   1.0: like vLLM's `BlockPool.get_usage()`, cached blocks that no running request uses
//!   count as free (they sit in vLLM's free queue, evictable);
//! - prefill compute is a FCFS lane per engine: each request's *uncached* prompt tokens take
//!   `tokens / prefill_tokens_per_second` of it, so prefills queue behind each other (vLLM
//!   shares one forward pass per step among the running prefills).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::metrics::{Gauges, ModelMetrics};
use crate::prefix::PrefixCache;

/// One simulated vLLM engine (one served model).
pub struct Engine {
    /// Metrics of this engine.
    pub metrics: ModelMetrics,
    max_running: usize,
    kv_capacity: u64,
    block_size: u64,
    caching: bool,
    state: Mutex<Sched>,
    dead: std::sync::atomic::AtomicBool,
}

struct Sched {
    running: usize,
    /// KV tokens of running requests that are not in cached blocks.
    private: u64,
    cache: PrefixCache,
    queue: VecDeque<Waiter>,
    next_id: u64,
    /// When the prefill lane is free again.
    prefill_free: Option<Instant>,
}

/// What a request asks for at admission.
#[derive(Clone)]
enum Need {
    /// A new request: prompt tokens and the hashes of its full blocks.
    Prompt { tokens: u64, hashes: Arc<[u64]> },
    /// A preempted request coming back: all its tokens, no lookup.
    Resume(u64),
}

/// What admission granted: private tokens and referenced cached blocks.
struct Grant {
    private: u64,
    shared: Vec<u64>,
    hit_tokens: u64,
}

struct Waiter {
    id: u64,
    need: Need,
    tx: oneshot::Sender<Grant>,
}

impl Sched {
    fn used(&self, bs: u64) -> u64 {
        self.private + self.cache.referenced() * bs
    }

    /// Make stored KV fit the budget by evicting free cached blocks.
    fn fit(&mut self, bs: u64, cap: u64) {
        while self.used(bs) + self.cache.unreferenced() * bs > cap && self.cache.evict_one() {}
    }

    /// The grant `need` would get now, and the KV it adds to `used`.
    fn plan(&self, need: &Need, bs: u64, caching: bool) -> (Grant, u64) {
        match need {
            Need::Resume(t) => (
                Grant {
                    private: *t,
                    shared: Vec::new(),
                    hit_tokens: 0,
                },
                *t,
            ),
            Need::Prompt { tokens, hashes } => {
                let hit = if caching && *tokens > 0 {
                    let max_blocks = usize::try_from((tokens - 1) / bs).unwrap_or(usize::MAX);
                    let limit = hashes.len().min(max_blocks);
                    self.cache.lookup(&hashes[..limit])
                } else {
                    0
                };
                let shared = hashes[..hit].to_vec();
                let hit_tokens = hit as u64 * bs;
                let private = tokens.saturating_sub(hit_tokens);
                let touched = self.cache.unreferenced_among(&shared) * bs;
                (
                    Grant {
                        private,
                        shared,
                        hit_tokens,
                    },
                    private + touched,
                )
            }
        }
    }

    fn can_admit(&self, add: u64, max_running: usize, cap: u64, bs: u64) -> bool {
        self.running < max_running
            && (self.running == 0 || self.used(bs).saturating_add(add) <= cap)
    }

    /// Take a grant: reference its blocks, count its private tokens, evict to fit.
    fn take(&mut self, g: &Grant, bs: u64, cap: u64) {
        self.running += 1;
        self.cache.acquire(&g.shared);
        self.private += g.private;
        self.fit(bs, cap);
    }

    /// Undo [`Sched::take`].
    fn give_back(&mut self, private: u64, shared: &[u64]) {
        self.running = self.running.saturating_sub(1);
        self.private = self.private.saturating_sub(private);
        self.cache.release(shared);
    }
}

impl Engine {
    /// A new engine with the given limits; prefix caching on, blocks of 16 tokens.
    #[must_use]
    pub fn new(metrics: ModelMetrics, max_running: usize, kv_capacity: u64) -> Self {
        Self::with_cache(metrics, max_running, kv_capacity, 16, true)
    }

    /// A new engine with an explicit block size and prefix caching on or off.
    #[must_use]
    pub fn with_cache(
        metrics: ModelMetrics,
        max_running: usize,
        kv_capacity: u64,
        block_size: u64,
        caching: bool,
    ) -> Self {
        Self {
            metrics,
            max_running: max_running.max(1),
            kv_capacity: kv_capacity.max(1),
            block_size: block_size.max(1),
            caching,
            dead: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(Sched {
                running: 0,
                private: 0,
                cache: PrefixCache::default(),
                queue: VecDeque::new(),
                next_id: 0,
                prefill_free: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// KV block size in tokens.
    #[must_use]
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Whether prefix caching is on.
    #[must_use]
    pub fn caching(&self) -> bool {
        self.caching
    }

    /// Current gauges.
    #[must_use]
    pub fn gauges(&self) -> Gauges {
        let s = self.lock();
        #[allow(clippy::cast_precision_loss, reason = "ratio of token counts")]
        let kv = (s.used(self.block_size) as f64 / self.kv_capacity as f64).min(1.0);
        Gauges {
            running: s.running,
            waiting: s.queue.len(),
            kv_usage: kv,
            asleep: false,
        }
    }

    /// Cached blocks: (referenced by running requests, free but cached, evicted so far).
    #[must_use]
    pub fn cache_blocks(&self) -> (u64, u64, u64) {
        let s = self.lock();
        (
            s.cache.referenced(),
            s.cache.unreferenced(),
            s.cache.evictions(),
        )
    }

    /// The engine core died (`x-sim-behavior: engine-death`): from now on every generation
    /// request for this model is answered like vLLM answers after `EngineDeadError`, and
    /// `/health` fails. There is no way back but a restart, as in vLLM.
    pub fn kill(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`Engine::kill`] was called.
    #[must_use]
    pub fn is_dead(&self) -> bool {
        self.dead.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reserve `work` of the prefill lane (FCFS) and return when that work is done.
    pub fn prefill_lane(&self, work: Duration) -> Instant {
        let now = Instant::now();
        let mut s = self.lock();
        let start = s.prefill_free.map_or(now, |t| t.max(now));
        let end = start + work;
        s.prefill_free = Some(end);
        end
    }

    /// Wait until a request needing `need` KV tokens (no prefix lookup) runs. Dropping the
    /// future while waiting removes the request from the queue.
    pub async fn admit(self: &Arc<Self>, need: u64) -> Running {
        self.admit_at(Need::Resume(need), false).await
    }

    /// Wait until a prompt of `tokens` tokens (full-block hashes `hashes`) runs; its
    /// cached prefix is looked up when it is admitted ([`Running::hit_tokens`]).
    pub async fn admit_prompt(self: &Arc<Self>, tokens: u64, hashes: Arc<[u64]>) -> Running {
        self.admit_at(Need::Prompt { tokens, hashes }, false).await
    }

    /// Count the lookup of a new request (not of a resumed one).
    fn count_lookup(&self, need: &Need, g: &Grant) {
        if self.caching
            && let Need::Prompt { tokens, .. } = need
        {
            self.metrics.add_prefix_lookup(*tokens, g.hit_tokens);
        }
    }

    /// Admit waiters from the head of the queue while they fit.
    fn dispatch(&self, s: &mut Sched) {
        let bs = self.block_size;
        while let Some(front) = s.queue.front() {
            let (grant, add) = s.plan(&front.need, bs, self.caching);
            if !s.can_admit(add, self.max_running, self.kv_capacity, bs) {
                break;
            }
            let Some(w) = s.queue.pop_front() else {
                break;
            };
            s.take(&grant, bs, self.kv_capacity);
            let (private, shared) = (grant.private, grant.shared.clone());
            self.count_lookup(&w.need, &grant);
            if w.tx.send(grant).is_err() {
                // The waiter went away between its last check and now: undo.
                s.give_back(private, &shared);
            }
        }
    }

    async fn admit_at(self: &Arc<Self>, need: Need, front: bool) -> Running {
        let bs = self.block_size;
        let rx = {
            let mut s = self.lock();
            if s.queue.is_empty() || front {
                let (grant, add) = s.plan(&need, bs, self.caching);
                if s.can_admit(add, self.max_running, self.kv_capacity, bs) {
                    s.take(&grant, bs, self.kv_capacity);
                    self.count_lookup(&need, &grant);
                    return Running::new(self, grant);
                }
            }
            let (tx, rx) = oneshot::channel();
            let id = s.next_id;
            s.next_id += 1;
            let w = Waiter { id, need, tx };
            if front {
                s.queue.push_front(w);
            } else {
                s.queue.push_back(w);
            }
            WaitGuard {
                engine: Arc::clone(self),
                id,
                rx,
                done: false,
            }
        };
        let mut guard = rx;
        let grant = (&mut guard.rx).await;
        guard.done = true;
        match grant {
            Ok(g) => Running::new(self, g),
            // The sender is only dropped unsent when the engine is gone: run anyway.
            Err(_) => Running::new(
                self,
                Grant {
                    private: 0,
                    shared: Vec::new(),
                    hit_tokens: 0,
                },
            ),
        }
    }

    fn release(&self, private: u64, shared: &[u64]) {
        let mut s = self.lock();
        s.give_back(private, shared);
        self.dispatch(&mut s);
    }
}

struct WaitGuard {
    engine: Arc<Engine>,
    id: u64,
    rx: oneshot::Receiver<Grant>,
    done: bool,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut s = self.engine.lock();
        if let Some(pos) = s.queue.iter().position(|w| w.id == self.id) {
            s.queue.remove(pos);
            // The head may have changed: others behind us may fit now.
            self.engine.dispatch(&mut s);
            return;
        }
        drop(s);
        if let Ok(g) = self.rx.try_recv() {
            // Admitted but never observed: give the slot back.
            self.engine.release(g.private, &g.shared);
        }
    }
}

/// A running request's slot, KV tokens and cached blocks; dropping it frees them (its
/// cached blocks stay cached as eviction candidates).
pub struct Running {
    engine: Arc<Engine>,
    /// Tokens held outside cached blocks.
    private: u64,
    /// Cached blocks referenced, in sequence order.
    shared: Vec<u64>,
    hit_tokens: u64,
}

impl Running {
    fn new(engine: &Arc<Engine>, g: Grant) -> Self {
        Self {
            engine: Arc::clone(engine),
            private: g.private,
            shared: g.shared,
            hit_tokens: g.hit_tokens,
        }
    }

    /// Reserve KV for `n` more tokens. `false` means the budget is full while other
    /// requests run: the caller should [`Running::preempt`].
    pub fn grow(&mut self, n: u64) -> bool {
        let e = &self.engine;
        let bs = e.block_size;
        let mut s = e.lock();
        if s.running <= 1 || s.used(bs).saturating_add(n) <= e.kv_capacity {
            s.private += n;
            self.private += n;
            s.fit(bs, e.kv_capacity);
            true
        } else {
            false
        }
    }

    /// Tokens this request holds in the KV cache (private + its cached blocks).
    #[must_use]
    pub fn reserved(&self) -> u64 {
        self.private + self.shared.len() as u64 * self.engine.block_size
    }

    /// Prompt tokens served from the prefix cache at admission.
    #[must_use]
    pub fn hit_tokens(&self) -> u64 {
        self.hit_tokens
    }

    /// The request computed these full blocks (`hashes` = all full-block hashes of its
    /// sequence so far, in order): cache the ones it does not reference yet, moving their
    /// tokens from private to cached.
    pub fn cache_blocks(&mut self, hashes: &[u64]) {
        let e = &self.engine;
        if !e.caching
            || hashes.len() <= self.shared.len()
            || hashes[..self.shared.len()] != self.shared[..]
        {
            return;
        }
        let bs = e.block_size;
        let mut s = e.lock();
        for h in &hashes[self.shared.len()..] {
            s.cache.insert(*h);
            let moved = bs.min(self.private);
            self.private -= moved;
            s.private = s.private.saturating_sub(moved);
            self.shared.push(*h);
        }
        s.fit(bs, e.kv_capacity);
    }

    /// Preempt (recompute): free everything, wait at the front of the queue, and come
    /// back holding the old reservation plus the `extra` tokens that did not fit.
    pub async fn preempt(self, extra: u64) -> Running {
        let engine = Arc::clone(&self.engine);
        let need = self.reserved().saturating_add(extra);
        let hit = self.hit_tokens;
        engine.metrics.add_preemption();
        drop(self);
        let mut r = engine.admit_at(Need::Resume(need), true).await;
        r.hit_tokens = hit;
        r
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.engine.release(self.private, &self.shared);
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn engine(max: usize, kv: u64) -> Arc<Engine> {
        static TOK: &[f64] = &[1.0];
        Arc::new(Engine::new(ModelMetrics::new("m", TOK, 0.0), max, kv))
    }

    #[tokio::test]
    async fn queue_when_full_then_dispatch_fcfs() {
        let e = engine(1, 1000);
        let a = e.admit(10).await;
        let e2 = Arc::clone(&e);
        let waiting = tokio::spawn(async move { e2.admit(10).await.reserved() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let g = e.gauges();
        assert_eq!((g.running, g.waiting), (1, 1));
        drop(a);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(2), waiting)
                .await
                .unwrap()
                .unwrap(),
            10
        );
        let g = e.gauges();
        assert_eq!((g.running, g.waiting), (0, 0));
    }

    #[tokio::test]
    async fn dropped_waiter_leaves_queue() {
        let e = engine(1, 1000);
        let a = e.admit(10).await;
        let fut = e.admit(10);
        let r = tokio::time::timeout(Duration::from_millis(20), fut).await;
        assert!(r.is_err());
        assert_eq!(e.gauges().waiting, 0);
        drop(a);
        assert_eq!(e.gauges().running, 0);
    }

    #[tokio::test]
    async fn kv_budget_limits_admission_and_grow() {
        let e = engine(8, 100);
        let mut a = e.admit(60).await;
        assert!((e.gauges().kv_usage - 0.6).abs() < 1e-9);
        // 60 + 50 > 100: waits although a slot is free.
        let r = tokio::time::timeout(Duration::from_millis(20), e.admit(50)).await;
        assert!(r.is_err());
        let b = e.admit(40).await;
        assert!((e.gauges().kv_usage - 1.0).abs() < 1e-9);
        assert!(!a.grow(1), "full budget with two running must refuse");
        let e2 = Arc::clone(&e);
        let resumed = tokio::spawn(async move { a.preempt(1).await.reserved() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(e.gauges().waiting, 1);
        drop(b);
        let got = tokio::time::timeout(Duration::from_secs(2), resumed)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, 61);
        assert_eq!(e2.gauges().running, 0);
    }

    #[tokio::test]
    async fn lone_request_always_runs() {
        let e = engine(4, 10);
        let mut a = e.admit(50).await;
        assert!(a.grow(100));
        assert!((e.gauges().kv_usage - 1.0).abs() < 1e-9);
    }

    fn hashes(n: u64, salt: u64) -> Arc<[u64]> {
        let toks: Vec<u64> = (0..n).map(|i| i ^ salt).collect();
        crate::prefix::block_hashes(&toks, 16).into()
    }

    #[tokio::test]
    async fn prefix_hits_counted_in_tokens_at_most_prompt_minus_one() {
        let e = engine(8, 10_000);
        let a = e.admit_prompt(64, hashes(64, 0)).await;
        assert_eq!(a.hit_tokens(), 0);
        let mut a = a;
        a.cache_blocks(&hashes(64, 0));
        drop(a);
        // Same 64 tokens: at most 63 may hit, i.e. 3 whole blocks.
        let b = e.admit_prompt(64, hashes(64, 0)).await;
        assert_eq!(b.hit_tokens(), 48);
        // Longer prompt with the same start: all 4 blocks hit.
        let c = e.admit_prompt(100, hashes(100, 0)).await;
        assert_eq!(c.hit_tokens(), 64);
        // Different first block: nothing.
        let d = e.admit_prompt(64, hashes(64, 1 << 40)).await;
        assert_eq!(d.hit_tokens(), 0);
        assert_eq!(e.metrics.prefix_cache(), (64 + 64 + 100 + 64, 48 + 64));
        // Shared blocks count once in the usage: b and c share 3-4 cached blocks.
        let used = 64 + (64 - 48) + (100 - 64) + 64;
        assert!((e.gauges().kv_usage - used as f64 / 10_000.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn lru_eviction_keeps_the_cache_within_the_budget() {
        // 8 blocks of KV; each prompt of 64 tokens caches 4 blocks.
        let e = engine(8, 128);
        for salt in 0..3u64 {
            let mut r = e.admit_prompt(64, hashes(64, salt << 40)).await;
            r.cache_blocks(&hashes(64, salt << 40));
        }
        let (referenced, free, evicted) = e.cache_blocks();
        assert_eq!((referenced, free, evicted), (0, 8, 4));
        // The oldest prompt was evicted, the two newer ones still hit (newest first, so
        // that these lookups evict nothing they check later).
        for (salt, hit) in [(2u64, 48u64), (1, 48), (0, 0)] {
            let r = e.admit_prompt(64, hashes(64, salt << 40)).await;
            assert_eq!(r.hit_tokens(), hit, "prompt {salt}");
        }
        assert_eq!(e.gauges().running, 0);
    }

    #[tokio::test]
    async fn prefill_lane_is_fcfs() {
        let e = engine(8, 1000);
        let t0 = Instant::now();
        let a = e.prefill_lane(Duration::from_millis(100));
        let b = e.prefill_lane(Duration::from_millis(50));
        assert!(a >= t0 + Duration::from_millis(100));
        assert_eq!(b.duration_since(a), Duration::from_millis(50));
    }
}
