//! Upstream pools: the HTTP client, endpoint selection (least in-flight among
//! healthy endpoints), active health checks, and the set of known model names
//! (configured plus those the upstreams list) used to bound metric labels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderValue;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{Label, Metrics};

/// One endpoint of a pool.
#[derive(Debug)]
pub struct Endpoint {
    pub base: String,
    pub label: Label,
    /// Pre-parsed URLs of the proxied routes (no URL parsing per request).
    pub chat_url: reqwest::Url,
    pub completions_url: reqwest::Url,
    pub embeddings_url: reqwest::Url,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    failures: AtomicU32,
}

impl Endpoint {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

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
}

impl Pool {
    /// The endpoint with the fewest requests in flight among the healthy
    /// ones not yet tried (all endpoints if none is healthy).
    pub fn pick(&self, tried: &[usize]) -> Option<(usize, InFlight)> {
        let n = self.endpoints.len();
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize, bool)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if tried.contains(&i) {
                continue;
            }
            let e = &self.endpoints[i];
            let load = e.in_flight.load(Ordering::Relaxed);
            let healthy = e.is_healthy();
            let better = match best {
                None => true,
                Some((_, bl, bh)) => (healthy && !bh) || (healthy == bh && load < bl),
            };
            if better {
                best = Some((i, load, healthy));
            }
        }
        let (i, _, _) = best?;
        let e = self.endpoints[i].clone();
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((i, InFlight(e)))
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
                    let url = |path: &str| reqwest::Url::parse(&format!("{}{path}", e.base));
                    let ep = Endpoint {
                        base: e.base.clone(),
                        label: Arc::new(e.label.clone()),
                        chat_url: url("/v1/chat/completions")?,
                        completions_url: url("/v1/completions")?,
                        embeddings_url: url("/v1/embeddings")?,
                        in_flight: AtomicUsize::new(0),
                        healthy: AtomicBool::new(true),
                        failures: AtomicU32::new(0),
                    };
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

    /// Starts one health-check task per endpoint; they stop on `stop`.
    pub fn spawn_health_checks(
        self: &Arc<Self>,
        cfg: &Config,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
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
                    let u = reqwest::Url::parse(&format!("http://h{i}:1/")).unwrap();
                    Arc::new(Endpoint {
                        base: format!("http://h{i}:1"),
                        label: Arc::new(format!("h{i}:1")),
                        chat_url: u.clone(),
                        completions_url: u.clone(),
                        embeddings_url: u,
                        in_flight: AtomicUsize::new(0),
                        healthy: AtomicBool::new(true),
                        failures: AtomicU32::new(0),
                    })
                })
                .collect(),
            auth: None,
            rr: AtomicUsize::new(0),
        }
    }

    #[test]
    fn least_in_flight_wins() {
        let p = pool(3);
        let a = p.pick(&[]).unwrap();
        let b = p.pick(&[]).unwrap();
        let c = p.pick(&[]).unwrap();
        let mut used = vec![a.0, b.0, c.0];
        used.sort();
        assert_eq!(used, vec![0, 1, 2], "spread over all endpoints");
        drop(b);
        let d = p.pick(&[]).unwrap();
        assert_eq!(
            d.1.endpoint().label.as_str(),
            p.endpoints[used[1]].label.as_str()
        );
        let _ = (a, c, d);
    }

    #[test]
    fn unhealthy_and_tried_endpoints_are_avoided() {
        let p = pool(2);
        p.endpoints[0].healthy.store(false, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(p.pick(&[]).unwrap().0, 1);
        }
        // Only the unhealthy one is left: still used rather than failing.
        assert_eq!(p.pick(&[1]).unwrap().0, 0);
        assert!(p.pick(&[0, 1]).is_none());
    }
}
