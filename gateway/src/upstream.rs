//! Upstream pools: the HTTP client, endpoint selection (the pool's routing
//! policy among healthy endpoints, see [`Pool::pick`]), active health checks,
//! and the set of known model names (configured plus those the upstreams
//! list) used to bound metric labels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderValue;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RoutingPolicy};
use crate::metrics::{Label, Metrics};
use crate::routing::{self, reason};
use crate::scrape::{Load, STALE_INTERVALS, Scraped};

/// One endpoint of a pool.
#[derive(Debug)]
pub struct Endpoint {
    pub base: String,
    pub label: Label,
    /// Pre-parsed URLs of the proxied routes (no URL parsing per request).
    pub chat_url: reqwest::Url,
    pub completions_url: reqwest::Url,
    pub embeddings_url: reqwest::Url,
    pub metrics_url: reqwest::Url,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    failures: AtomicU32,
    /// Last load read from the endpoint's `/metrics`.
    pub scraped: Scraped,
    /// Hash of the label, for rendezvous hashing (same on every gateway replica).
    hrw: u64,
}

impl Endpoint {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn new(base: &str, label: &str) -> anyhow::Result<Self> {
        let url = |path: &str| reqwest::Url::parse(&format!("{base}{path}"));
        Ok(Endpoint {
            base: base.to_owned(),
            label: Arc::new(label.to_owned()),
            chat_url: url("/v1/chat/completions")?,
            completions_url: url("/v1/completions")?,
            embeddings_url: url("/v1/embeddings")?,
            metrics_url: url("/metrics")?,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            scraped: Scraped::default(),
            hrw: routing::fnv1a(&[label.as_bytes()]),
        })
    }
}

/// Weight of the scraped queue and KV usage in the `load-aware` score:
/// `in_flight + waiting + KV_WEIGHT × kv_usage` (see [`Pool::pick`]).
pub const KV_WEIGHT: f64 = 4.0;

/// Counts a request on an endpoint while it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named set of endpoints serving the same models.
#[derive(Debug)]
pub struct Pool {
    pub name: Label,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// `Bearer <key>` for the upstream, if configured.
    pub auth: Option<HeaderValue>,
    rr: AtomicUsize,
    pub routing: RoutingPolicy,
    /// Interval of the `/metrics` scrape (`None`: no scrape).
    pub scrape_interval: Option<Duration>,
    pub affinity_max_load_factor: f64,
    /// Where each conversation went last (`prefix-affinity` pools only).
    last: Option<routing::EndpointMemory>,
    /// Which endpoint created each Responses API response, and whether an
    /// event counted its usage.
    responses: Option<routing::EndpointMemory>,
}

impl Pool {
    /// Picks an endpoint among those not yet `tried`, healthy ones first
    /// (all untried endpoints if none is healthy), by the pool's policy:
    ///
    /// - `round-robin`: the next one in turn;
    /// - `least-in-flight`: fewest requests in flight from this gateway
    ///   (ties: in turn);
    /// - `load-aware`: lowest `in_flight + waiting + KV_WEIGHT × kv_usage`,
    ///   `waiting` and `kv_usage` from the endpoint's last scrape. The
    ///   in-flight count is exact and immediate, the scrape up to an interval
    ///   old: a request sent since the scrape shows in `in_flight`, and a
    ///   queued one counts twice (it waits and makes the next one wait). If
    ///   any candidate has no fresh scrape (younger than
    ///   [`STALE_INTERVALS`] intervals), scraped values are ignored for all
    ///   (least in-flight);
    /// - `prefix-affinity`: the endpoint that served the key's previous
    ///   request (else the key's home: the first in its rendezvous-hash
    ///   order) while its load is below
    ///   `ceil(factor × (total load of the candidates + 1) / candidates)`,
    ///   load = in-flight + scraped `waiting` (in-flight only without fresh
    ///   scrapes of all candidates, as above);
    ///   else the first candidate in the key's hash order below that bound
    ///   (consistent hashing with bounded loads: one always is), which the
    ///   key then stays on. No key: least in-flight.
    ///
    /// Returns the index, the in-flight token and the routing reason.
    pub fn pick(
        &self,
        tried: &[usize],
        key: Option<u64>,
    ) -> Option<(usize, InFlight, &'static str)> {
        let n = self.endpoints.len();
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let untried = |i: &usize| !tried.contains(i);
        let any_healthy = (0..n)
            .filter(untried)
            .any(|i| self.endpoints[i].is_healthy());
        let cands: Vec<usize> = (0..n)
            .map(|k| (start.wrapping_add(k)) % n)
            .filter(|i| untried(i) && (!any_healthy || self.endpoints[*i].is_healthy()))
            .collect();
        let first = *cands.first()?;
        let ep = |i: usize| &self.endpoints[i];
        let least = || {
            cands
                .iter()
                .copied()
                .min_by_key(|&i| ep(i).in_flight())
                .unwrap_or(first)
        };
        // The last scrape of every candidate, if all are fresh (else None:
        // scraped values are then ignored for all).
        let fresh_loads = || -> Option<Vec<Load>> {
            let now = tokio::time::Instant::now();
            let max_age = self.scrape_interval? * STALE_INTERVALS;
            cands
                .iter()
                .map(|&i| ep(i).scraped.fresh(now, max_age))
                .collect()
        };
        let (i, why) = match self.routing {
            RoutingPolicy::RoundRobin => (first, reason::ROUND_ROBIN),
            RoutingPolicy::LeastInFlight => (least(), reason::LEAST_IN_FLIGHT),
            RoutingPolicy::LoadAware => match fresh_loads() {
                Some(loads) => {
                    let score = |k: usize| {
                        let l = loads[k];
                        ep(cands[k]).in_flight() as f64 + l.waiting + KV_WEIGHT * l.kv_usage
                    };
                    let mut best = 0;
                    for k in 1..cands.len() {
                        if score(k) < score(best) {
                            best = k;
                        }
                    }
                    (cands[best], reason::LOAD)
                }
                None => (least(), reason::LEAST_IN_FLIGHT),
            },
            RoutingPolicy::PrefixAffinity => match key {
                None => (least(), reason::LEAST_IN_FLIGHT),
                Some(key) => {
                    // Load = in flight from here + the scraped queue (traffic
                    // from elsewhere queued on the replica counts too).
                    let mut waiting = vec![0.0; n];
                    if let Some(loads) = fresh_loads() {
                        for (k, &i) in cands.iter().enumerate() {
                            waiting[i] = loads[k].waiting;
                        }
                    }
                    let load = |i: usize| ep(i).in_flight() as f64 + waiting[i];
                    let total: f64 = cands.iter().map(|&i| load(i)).sum();
                    let cap =
                        (self.affinity_max_load_factor * (total + 1.0) / cands.len() as f64).ceil();
                    // Where the conversation's cache is: where it went last,
                    // else its home among all endpoints. If that one is
                    // unhealthy, tried or at the bound, the pick is a fallback.
                    let last = self.last.as_ref().and_then(|t| t.get(key));
                    let preferred = last.filter(|&i| i < n).unwrap_or_else(|| {
                        (0..n)
                            .max_by_key(|&i| routing::hrw_weight(key, ep(i).hrw))
                            .unwrap_or(first)
                    });
                    let (i, why) = if cands.contains(&preferred) && load(preferred) < cap {
                        (preferred, reason::AFFINITY)
                    } else {
                        let mut order = cands.clone();
                        order.sort_unstable_by_key(|&i| {
                            std::cmp::Reverse(routing::hrw_weight(key, ep(i).hrw))
                        });
                        let i = order
                            .into_iter()
                            .find(|&i| load(i) < cap)
                            .unwrap_or_else(least);
                        (i, reason::AFFINITY_FALLBACK)
                    };
                    if last != Some(i)
                        && let Some(t) = &self.last
                    {
                        t.set(key, i, false);
                    }
                    (i, why)
                }
            },
        };
        let why = if !tried.is_empty() {
            reason::RETRY
        } else if n == 1 {
            reason::ONLY_ENDPOINT
        } else {
            why
        };
        let e = self.endpoints[i].clone();
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((i, InFlight(e), why))
    }

    /// The endpoint that created the stored response `key`
    /// ([`routing::response_key`]) if this pool remembers it and it is
    /// healthy, with reason `previous_response`. `None`: pick by the policy
    /// (the upstream then answers whether it has the response).
    pub fn pick_owner(&self, key: u64) -> Option<(usize, InFlight, &'static str)> {
        if self.endpoints.len() < 2 {
            return None;
        }
        let i = self.responses.as_ref()?.get(key)?;
        let e = self.endpoints.get(i)?;
        if !e.is_healthy() {
            return None;
        }
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((i, InFlight(e.clone()), reason::PREVIOUS_RESPONSE))
    }

    /// Records that `endpoint` created the Responses API response `id`;
    /// `usage_counted`: its event had the response's usage (not so for a
    /// background response, whose usage comes with a later retrieval).
    pub fn remember_response(&self, id: &str, endpoint: &Arc<Endpoint>, usage_counted: bool) {
        if let Some(t) = &self.responses
            && let Some(i) = self.endpoints.iter().position(|e| Arc::ptr_eq(e, endpoint))
        {
            t.set(routing::response_key(id), i, usage_counted);
        }
    }

    /// A retrieval of response `key` carries its usage: true if no event
    /// has counted that usage yet (then this one does, and none after it).
    /// False for a response this pool does not remember.
    pub fn claim_response_usage(&self, key: u64) -> bool {
        self.responses.as_ref().is_some_and(|t| t.mark(key))
    }

    pub fn any_healthy(&self) -> bool {
        self.endpoints.iter().any(|e| e.is_healthy())
    }

    /// Marks an endpoint down after a connect failure (a health check brings it back).
    pub fn mark_down(&self, i: usize, metrics: &Metrics) {
        let e = &self.endpoints[i];
        if e.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(pool = %self.name, endpoint = %e.label, "endpoint marked down after a connect failure");
        }
        metrics.set_upstream_up(&self.name, &e.label, false);
    }
}

/// Model names allowed as label values.
#[derive(Debug)]
pub struct KnownModels {
    configured: HashMap<String, Label>,
    discovered: RwLock<HashMap<String, Label>>,
    other: Label,
}

/// Most models learnt from upstream listings (bounds label cardinality).
const MAX_DISCOVERED_MODELS: usize = 256;

impl KnownModels {
    pub fn label(&self, model: &str) -> Label {
        if let Some(l) = self.configured.get(model) {
            return l.clone();
        }
        if let Ok(d) = self.discovered.read()
            && let Some(l) = d.get(model)
        {
            return l.clone();
        }
        self.other.clone()
    }

    fn learn(&self, names: Vec<String>) {
        if let Ok(mut d) = self.discovered.write() {
            for n in names {
                if d.len() >= MAX_DISCOVERED_MODELS {
                    break;
                }
                if !self.configured.contains_key(&n) && !d.contains_key(&n) {
                    d.insert(n.clone(), Arc::new(n));
                }
            }
        }
    }
}

/// Why `GET /v1/models` of an endpoint failed.
#[derive(Debug)]
pub enum ListError {
    /// No usable answer (connect, timeout, not JSON).
    Transport(String),
    /// The upstream answered with this status and body (e.g. 401: the gateway's key is wrong).
    Status(u16, bytes::Bytes),
}

/// All pools plus the shared client.
#[derive(Debug)]
pub struct Upstreams {
    pub pools: Vec<Arc<Pool>>,
    pub client: reqwest::Client,
    pub models: KnownModels,
}

#[derive(Deserialize)]
struct ModelCard {
    id: String,
}

impl Upstreams {
    pub fn new(cfg: &Config, metrics: &Metrics) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .http1_only()
            .no_proxy()
            .build()?;
        let mut pools = Vec::new();
        for p in &cfg.pools {
            let name: Label = Arc::new(p.name.clone());
            let endpoints: Vec<Arc<Endpoint>> = p
                .endpoints
                .iter()
                .map(|e| -> anyhow::Result<Arc<Endpoint>> {
                    let ep = Endpoint::new(&e.base, &e.label)?;
                    metrics.set_upstream_up(&name, &ep.label, true);
                    Ok(Arc::new(ep))
                })
                .collect::<anyhow::Result<_>>()?;
            let auth = match &p.api_key {
                Some(k) => {
                    let mut v = HeaderValue::from_str(&format!("Bearer {k}"))?;
                    v.set_sensitive(true);
                    Some(v)
                }
                None => None,
            };
            pools.push(Arc::new(Pool {
                name,
                endpoints,
                auth,
                rr: AtomicUsize::new(0),
                routing: p.routing,
                scrape_interval: p.scrape_interval,
                affinity_max_load_factor: p.affinity_max_load_factor,
                last: (p.routing == RoutingPolicy::PrefixAffinity)
                    .then(routing::EndpointMemory::default),
                responses: Some(routing::EndpointMemory::default()),
            }));
        }
        let configured = cfg
            .model_pools
            .keys()
            .chain(cfg.prices.keys())
            .map(|m| (m.clone(), Arc::new(m.clone())))
            .collect();
        Ok(Self {
            pools,
            client,
            models: KnownModels {
                configured,
                discovered: RwLock::new(HashMap::new()),
                other: Arc::new("other".to_owned()),
            },
        })
    }

    pub fn any_healthy(&self) -> bool {
        self.pools.iter().any(|p| p.any_healthy())
    }

    /// `GET base/v1/models` of one endpoint: the raw `data` entries.
    pub async fn list_models(
        &self,
        pool: &Pool,
        ep: &Endpoint,
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>, ListError> {
        let mut req = self
            .client
            .get(format!("{}/v1/models", ep.base))
            .timeout(timeout);
        if let Some(a) = &pool.auth {
            req = req.header(http::header::AUTHORIZATION, a.clone());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ListError::Transport(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ListError::Transport(e.to_string()))?;
        if !status.is_success() {
            let body = body.slice(..body.len().min(64 * 1024));
            return Err(ListError::Status(status.as_u16(), body));
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            data: Vec<serde_json::Value>,
        }
        let raw: Raw =
            serde_json::from_slice(&body).map_err(|e| ListError::Transport(e.to_string()))?;
        Ok(raw.data)
    }

    /// Starts one health-check task per endpoint, and the `/metrics` scrape
    /// tasks ([`crate::scrape::spawn`]); they stop on `stop`.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        cfg: &Config,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        crate::scrape::spawn(&self.pools, &self.client, metrics.clone(), stop.clone());
        for pool in &self.pools {
            for ep in &pool.endpoints {
                let this = self.clone();
                let pool = pool.clone();
                let ep = ep.clone();
                let metrics = metrics.clone();
                let stop = stop.clone();
                let interval = cfg.health_interval;
                let timeout = cfg.health_timeout;
                let path = cfg.health_path.clone();
                let threshold = cfg.unhealthy_threshold;
                tokio::spawn(async move {
                    let mut round: u64 = 0;
                    loop {
                        this.check_once(&pool, &ep, &path, timeout, threshold, &metrics)
                            .await;
                        // Refresh the model list now and then (label bounding).
                        if round.is_multiple_of(12)
                            && ep.is_healthy()
                            && let Ok(list) = this.list_models(&pool, &ep, timeout).await
                        {
                            let names = list
                                .into_iter()
                                .filter_map(|v| {
                                    serde_json::from_value::<ModelCard>(v).ok().map(|c| c.id)
                                })
                                .collect();
                            this.models.learn(names);
                        }
                        round += 1;
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(interval) => {}
                        }
                    }
                });
            }
        }
    }

    async fn check_once(
        &self,
        pool: &Pool,
        ep: &Endpoint,
        path: &str,
        timeout: Duration,
        threshold: u32,
        metrics: &Metrics,
    ) {
        let ok = match self
            .client
            .get(format!("{}{}", ep.base, path))
            .timeout(timeout)
            .send()
            .await
        {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        };
        if ok {
            ep.failures.store(0, Ordering::Relaxed);
            if !ep.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!(pool = %pool.name, endpoint = %ep.label, "endpoint healthy again");
            }
            metrics.set_upstream_up(&pool.name, &ep.label, true);
        } else {
            let n = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= threshold {
                if ep.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(pool = %pool.name, endpoint = %ep.label, "endpoint failed health checks; out of rotation");
                }
                metrics.set_upstream_up(&pool.name, &ep.label, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        Pool {
            name: Arc::new("p".into()),
            endpoints: (0..n)
                .map(|i| {
                    Arc::new(Endpoint::new(&format!("http://h{i}:1"), &format!("h{i}:1")).unwrap())
                })
                .collect(),
            auth: None,
            rr: AtomicUsize::new(0),
            routing: RoutingPolicy::LeastInFlight,
            scrape_interval: None,
            affinity_max_load_factor: 1.25,
            last: None,
            responses: Some(routing::EndpointMemory::default()),
        }
    }

    #[test]
    fn least_in_flight_wins() {
        let p = pool(3);
        let a = p.pick(&[], None).unwrap();
        let b = p.pick(&[], None).unwrap();
        let c = p.pick(&[], None).unwrap();
        let mut used = vec![a.0, b.0, c.0];
        used.sort();
        assert_eq!(used, vec![0, 1, 2], "spread over all endpoints");
        drop(b);
        let d = p.pick(&[], None).unwrap();
        assert_eq!(
            d.1.endpoint().label.as_str(),
            p.endpoints[used[1]].label.as_str()
        );
        let _ = (a, c, d);
    }

    fn with(n: usize, routing: RoutingPolicy) -> Pool {
        Pool {
            routing,
            scrape_interval: Some(Duration::from_secs(1)),
            last: (routing == RoutingPolicy::PrefixAffinity).then(routing::EndpointMemory::default),
            ..pool(n)
        }
    }

    #[test]
    fn round_robin_takes_turns_and_reports_why() {
        let p = with(3, RoutingPolicy::RoundRobin);
        let _busy = p.pick(&[], None).unwrap();
        let picks: Vec<usize> = (0..6).map(|_| p.pick(&[], None).unwrap().0).collect();
        assert_eq!(picks, vec![1, 2, 0, 1, 2, 0], "in turn, whatever the load");
        assert_eq!(p.pick(&[], None).unwrap().2, reason::ROUND_ROBIN);
        assert_eq!(p.pick(&[0], None).unwrap().2, reason::RETRY);
        assert_eq!(pool(1).pick(&[], None).unwrap().2, reason::ONLY_ENDPOINT);
        assert_eq!(pool(2).pick(&[], None).unwrap().2, reason::LEAST_IN_FLIGHT);
    }

    #[test]
    fn load_aware_uses_fresh_scrapes_only() {
        let p = with(2, RoutingPolicy::LoadAware);
        // No scrape yet: least in-flight.
        let (_, a, why) = p.pick(&[], None).unwrap();
        assert_eq!(why, reason::LEAST_IN_FLIGHT);
        drop(a);
        let now = tokio::time::Instant::now();
        let load = |waiting, kv_usage| Load { waiting, kv_usage };
        p.endpoints[0].scraped.set(Some((now, load(5.0, 0.1))));
        p.endpoints[1].scraped.set(Some((now, load(0.0, 0.2))));
        let mut held = Vec::new();
        // Endpoint 1 takes requests until its in-flight count outweighs 0's queue.
        for _ in 0..5 {
            let (i, f, why) = p.pick(&[], None).unwrap();
            assert_eq!((i, why), (1, reason::LOAD));
            held.push(f);
        }
        // Scores now: 0 → 5.4, 1 → 5.8.
        assert_eq!(p.pick(&[], None).unwrap().0, 0);
        // KV usage counts: a full cache weighs KV_WEIGHT requests.
        drop(held);
        p.endpoints[0].scraped.set(Some((now, load(0.0, 1.0))));
        p.endpoints[1].scraped.set(Some((now, load(2.0, 0.0))));
        assert_eq!(p.pick(&[], None).unwrap().0, 1);
        // One stale sample: scraped values are ignored for all.
        p.endpoints[0]
            .scraped
            .set(Some((now - Duration::from_secs(10), load(50.0, 1.0))));
        let (_, _, why) = p.pick(&[], None).unwrap();
        assert_eq!(why, reason::LEAST_IN_FLIGHT);
    }

    #[test]
    fn prefix_affinity_is_sticky_spreads_and_bounds_load() {
        let p = with(4, RoutingPolicy::PrefixAffinity);
        // Same key, same endpoint (idle pool).
        for key in 0..50u64 {
            let k = routing::fnv1a(&[&key.to_le_bytes()]);
            let (first, _, why) = p.pick(&[], Some(k)).unwrap();
            assert_eq!(why, reason::AFFINITY);
            for _ in 0..3 {
                assert_eq!(p.pick(&[], Some(k)).unwrap().0, first);
            }
        }
        // Different keys spread.
        let mut used = std::collections::HashSet::new();
        for key in 0..64u64 {
            used.insert(
                p.pick(&[], Some(routing::fnv1a(&[&key.to_le_bytes()])))
                    .unwrap()
                    .0,
            );
        }
        assert_eq!(used.len(), 4);
        // One hot key: its home takes up to ceil(1.25 × (total + 1) / 4), then others do.
        let hot = routing::fnv1a(&[b"hot"]);
        let mut held = Vec::new();
        let mut per = [0usize; 4];
        let mut fallbacks = 0;
        for _ in 0..40 {
            let (i, f, why) = p.pick(&[], Some(hot)).unwrap();
            per[i] += 1;
            if why == reason::AFFINITY_FALLBACK {
                fallbacks += 1;
            }
            held.push(f);
        }
        let max = *per.iter().max().unwrap();
        assert!(max <= 13, "bounded: ceil(1.25 × 40 / 4) = 13; {per:?}");
        assert!(per.iter().all(|&c| c > 0), "{per:?}");
        // It moved each time its endpoint reached the bound, then stayed:
        // without that memory, every pick past its home's 13 is a fallback.
        assert!(
            (3..=20).contains(&fallbacks),
            "{fallbacks} fallbacks, {per:?}"
        );
        // Where it went last is where its cache is: it stays there once the
        // load is gone, rather than going back to its hash home.
        let last = held.last().unwrap().endpoint().label.clone();
        drop(held);
        let (now, _, why) = p.pick(&[], Some(hot)).unwrap();
        assert_eq!(
            (p.endpoints[now].label.as_str(), why),
            (last.as_str(), reason::AFFINITY)
        );
        // That endpoint is unhealthy: the next in hash order, as a fallback.
        p.endpoints[now].healthy.store(false, Ordering::Relaxed);
        let (next, _, why) = p.pick(&[], Some(hot)).unwrap();
        assert_ne!(next, now);
        assert_eq!(why, reason::AFFINITY_FALLBACK);
        // ... which keeps it after the first one is back.
        p.endpoints[now].healthy.store(true, Ordering::Relaxed);
        assert_eq!(p.pick(&[], Some(hot)).unwrap().0, next);
        // No key: least in-flight.
        assert_eq!(p.pick(&[], None).unwrap().2, reason::LEAST_IN_FLIGHT);
    }

    #[test]
    fn prefix_affinity_counts_the_scraped_queue_in_its_bound() {
        let p = with(4, RoutingPolicy::PrefixAffinity);
        let k = routing::fnv1a(&[b"conversation"]);
        let (home, f, why) = p.pick(&[], Some(k)).unwrap();
        assert_eq!(why, reason::AFFINITY);
        drop(f);
        // Traffic from elsewhere queued 12 requests on its endpoint: total
        // load 12, bound ceil(1.25 × 13 / 4) = 5.
        let now = tokio::time::Instant::now();
        let set = |waiting_on_home: f64, at| {
            for (i, e) in p.endpoints.iter().enumerate() {
                let waiting = if i == home { waiting_on_home } else { 0.0 };
                e.scraped.set(Some((
                    at,
                    Load {
                        waiting,
                        kv_usage: 0.5,
                    },
                )));
            }
        };
        set(12.0, now);
        let (moved, f, why) = p.pick(&[], Some(k)).unwrap();
        assert_ne!(moved, home);
        assert_eq!(why, reason::AFFINITY_FALLBACK);
        drop(f);
        // The queue is gone: the conversation stays where its cache now is.
        set(0.0, now);
        let (now_on, _, why) = p.pick(&[], Some(k)).unwrap();
        assert_eq!((now_on, why), (moved, reason::AFFINITY));
        // Stale scrapes are ignored: in-flight counts alone bound the load.
        let other = routing::fnv1a(&[b"another conversation"]);
        let (its_home, f, _) = p.pick(&[], Some(other)).unwrap();
        drop(f);
        set(0.0, now - Duration::from_secs(10));
        p.endpoints[its_home].scraped.set(Some((
            now - Duration::from_secs(10),
            Load {
                waiting: 50.0,
                kv_usage: 1.0,
            },
        )));
        assert_eq!(p.pick(&[], Some(other)).unwrap().0, its_home);
    }

    #[test]
    fn a_stored_response_is_found_where_it_was_created() {
        let p = pool(3);
        let k = routing::response_key("resp_1");
        assert!(p.pick_owner(k).is_none(), "unknown: the policy picks");
        p.remember_response("resp_1", &p.endpoints[2].clone(), false);
        for _ in 0..3 {
            let (i, f, why) = p.pick_owner(k).unwrap();
            assert_eq!(
                (i, why, f.endpoint().in_flight()),
                (2, reason::PREVIOUS_RESPONSE, 1)
            );
        }
        assert!(p.pick_owner(routing::response_key("resp_2")).is_none());
        // Its usage (not counted when it was made: background) is counted once.
        assert!(p.claim_response_usage(k));
        assert!(!p.claim_response_usage(k));
        assert!(!p.claim_response_usage(routing::response_key("resp_2")));
        p.endpoints[2].healthy.store(false, Ordering::Relaxed);
        assert!(p.pick_owner(k).is_none(), "its endpoint is down");
        // One endpoint: no choice to make (`only_endpoint`), but usage is
        // still counted once.
        let one = pool(1);
        one.remember_response("resp_1", &one.endpoints[0].clone(), false);
        assert!(one.pick_owner(k).is_none());
        assert!(one.claim_response_usage(k));
        assert!(!one.claim_response_usage(k));
    }

    #[test]
    fn unhealthy_and_tried_endpoints_are_avoided() {
        let p = pool(2);
        p.endpoints[0].healthy.store(false, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(p.pick(&[], None).unwrap().0, 1);
        }
        // Only the unhealthy one is left: still used rather than failing.
        assert_eq!(p.pick(&[1], None).unwrap().0, 0);
        assert!(p.pick(&[0, 1], None).is_none());
    }
}
