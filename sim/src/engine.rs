//! The simulated engine scheduler: a bounded running set, a FCFS waiting queue and a
//! KV-cache budget counted in tokens.
//!
//! Model (simple, close to vLLM V1's FCFS scheduler with recompute preemption):
//! - a request is admitted ("running") when fewer than `max_concurrency` requests run and
//!   its tokens (prompt, plus anything generated before a preemption) fit in the free KV
//!   budget; an empty engine always admits the head of the queue so nothing starves;
//! - admission is strictly FCFS: nobody overtakes the head of the queue;
//! - every generated token needs one more KV slot; when the budget is full and other
//!   requests are running, the growing request is preempted: it frees its KV, goes back
//!   to the *front* of the queue (counted in `vllm:num_preemptions_total`) and resumes
//!   where it stopped once re-admitted;
//! - `kv_cache_usage_perc` = tokens held by running requests / budget, capped at 1.0.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::metrics::{Gauges, ModelMetrics};

/// One simulated vLLM engine (one served model).
pub struct Engine {
    /// Metrics of this engine.
    pub metrics: ModelMetrics,
    max_running: usize,
    kv_capacity: u64,
    state: Mutex<Sched>,
    dead: std::sync::atomic::AtomicBool,
}

struct Sched {
    running: usize,
    kv_used: u64,
    queue: VecDeque<Waiter>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    need: u64,
    tx: oneshot::Sender<()>,
}

impl Sched {
    fn can_admit(&self, need: u64, max_running: usize, cap: u64) -> bool {
        self.running < max_running
            && (self.running == 0 || self.kv_used.saturating_add(need) <= cap)
    }

    /// Admit waiters from the head of the queue while they fit.
    fn dispatch(&mut self, max_running: usize, cap: u64) {
        while let Some(front) = self.queue.front() {
            if !self.can_admit(front.need, max_running, cap) {
                break;
            }
            let Some(w) = self.queue.pop_front() else {
                break;
            };
            self.running += 1;
            self.kv_used += w.need;
            if w.tx.send(()).is_err() {
                // The waiter went away between its last check and now: undo.
                self.running -= 1;
                self.kv_used -= w.need;
            }
        }
    }
}

impl Engine {
    /// A new engine with the given limits.
    #[must_use]
    pub fn new(metrics: ModelMetrics, max_running: usize, kv_capacity: u64) -> Self {
        Self {
            metrics,
            max_running: max_running.max(1),
            kv_capacity: kv_capacity.max(1),
            dead: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(Sched {
                running: 0,
                kv_used: 0,
                queue: VecDeque::new(),
                next_id: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Current gauges.
    #[must_use]
    pub fn gauges(&self) -> Gauges {
        let s = self.lock();
        #[allow(clippy::cast_precision_loss, reason = "ratio of token counts")]
        let kv = (s.kv_used as f64 / self.kv_capacity as f64).min(1.0);
        Gauges {
            running: s.running,
            waiting: s.queue.len(),
            kv_usage: kv,
            asleep: false,
        }
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

    /// Wait until the request (needing `need` KV tokens) runs. Dropping the future while
    /// waiting removes the request from the queue.
    pub async fn admit(self: &Arc<Self>, need: u64) -> Running {
        self.admit_at(need, false).await
    }

    async fn admit_at(self: &Arc<Self>, need: u64, front: bool) -> Running {
        let rx = {
            let mut s = self.lock();
            if (s.queue.is_empty() || front)
                && s.can_admit(need, self.max_running, self.kv_capacity)
            {
                s.running += 1;
                s.kv_used += need;
                return Running {
                    engine: Arc::clone(self),
                    reserved: need,
                };
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
                need,
                rx,
                done: false,
            }
        };
        let mut guard = rx;
        // The sender is only dropped after a successful send or when the engine is gone;
        // both mean "go".
        let _ = (&mut guard.rx).await;
        guard.done = true;
        Running {
            engine: Arc::clone(self),
            reserved: need,
        }
    }

    fn release(&self, reserved: u64) {
        let mut s = self.lock();
        s.running = s.running.saturating_sub(1);
        s.kv_used = s.kv_used.saturating_sub(reserved);
        s.dispatch(self.max_running, self.kv_capacity);
    }
}

struct WaitGuard {
    engine: Arc<Engine>,
    id: u64,
    need: u64,
    rx: oneshot::Receiver<()>,
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
            s.dispatch(self.engine.max_running, self.engine.kv_capacity);
            return;
        }
        drop(s);
        if self.rx.try_recv().is_ok() {
            // Admitted but never observed: give the slot back.
            self.engine.release(self.need);
        }
    }
}

/// A running request's slot and KV reservation; dropping it frees both.
pub struct Running {
    engine: Arc<Engine>,
    reserved: u64,
}

impl Running {
    /// Reserve KV for `n` more tokens. `false` means the budget is full while other
    /// requests run: the caller should [`Running::preempt`].
    pub fn grow(&mut self, n: u64) -> bool {
        let e = &self.engine;
        let mut s = e.lock();
        if s.running <= 1 || s.kv_used.saturating_add(n) <= e.kv_capacity {
            s.kv_used += n;
            self.reserved += n;
            true
        } else {
            false
        }
    }

    /// Tokens this request holds in the KV cache.
    #[must_use]
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Preempt (recompute): free everything, wait at the front of the queue, and come
    /// back holding the old reservation plus the `extra` tokens that did not fit.
    pub async fn preempt(self, extra: u64) -> Running {
        let engine = Arc::clone(&self.engine);
        let need = self.reserved.saturating_add(extra);
        engine.metrics.add_preemption();
        drop(self);
        engine.admit_at(need, true).await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.engine.release(self.reserved);
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
}
