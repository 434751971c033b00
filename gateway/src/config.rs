//! Configuration: the raw TOML file (serde, `deny_unknown_fields`, units in
//! names, defaults from named `default_*` functions) merged with command-line
//! flags, then validated into the runtime [`Config`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::refusal::{Detector, RefusalConfig};

/// Problems found while loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------
// Raw file format
// ---------------------------------------------------------------------------

/// The TOML configuration file. Every table is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listener and request limits.
    #[serde(default)]
    pub server: RawServer,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Where and how events are written.
    #[serde(default)]
    pub events: RawEvents,
    /// Pool selection: default pool, long-context rule, retries.
    #[serde(default)]
    pub routing: RawRouting,
    /// Active health checks of upstream endpoints.
    #[serde(default)]
    pub health: RawHealth,
    /// Upstream pools by name.
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    /// Models by name: the pool serving each and its price.
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// Tenants by name: their API key hashes and limits.
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
    /// Refusal detection (the `[refusal]` table of the refusal module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<toml::Table>,
    /// Directory of the config file (relative `refusal.rules_file` paths).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on (`host:port`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest accepted request body; larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests served at once over all tenants; more get 429.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Value of the `Retry-After` header on 429 and 503 answers.
    #[serde(default = "default_retry_after_secs")]
    pub retry_after_secs: u64,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Client connections open at once; beyond it new connections get a 503
    /// and are closed. 0 = derived from the open-files limit (half of it,
    /// less a reserve: each proxied request also holds an upstream socket).
    #[serde(default)]
    pub max_connections: usize,
    /// Time for a client to send a request head: from accept for the first
    /// request, from its first byte for the next ones on a keep-alive connection.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request in progress is closed after this.
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
    /// Time to receive a whole request body → 408.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Slowest accepted upload, averaged from the start of the body after a
    /// 5 s grace → 408 (0 = no minimum).
    #[serde(default = "default_body_min_bytes_per_sec")]
    pub body_min_bytes_per_sec: u64,
    /// Largest request head (request line and headers) of HTTP/1.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Streams a client may open at once on one HTTP/2 connection.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Origins allowed by CORS, like vLLM's `--allowed-origins` (default
    /// `["*"]`, vLLM's default); `[]` turns CORS handling off.
    #[serde(default = "default_cors_allowed_origins")]
    pub cors_allowed_origins: Vec<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_max_concurrent_requests() -> usize {
    4096
}
fn default_retry_after_secs() -> u64 {
    1
}
fn default_shutdown_grace_secs() -> u64 {
    30
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_keepalive_timeout_ms() -> u64 {
    75_000
}
fn default_body_read_timeout_ms() -> u64 {
    60_000
}
fn default_body_min_bytes_per_sec() -> u64 {
    240
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_http2_max_concurrent_streams() -> u32 {
    128
}
fn default_cors_allowed_origins() -> Vec<String> {
    vec!["*".to_owned()]
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_concurrent_requests: default_max_concurrent_requests(),
            retry_after_secs: default_retry_after_secs(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            max_connections: 0,
            header_read_timeout_ms: default_header_read_timeout_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            body_min_bytes_per_sec: default_body_min_bytes_per_sec(),
            max_header_bytes: default_max_header_bytes(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            cors_allowed_origins: default_cors_allowed_origins(),
        }
    }
}

/// `[timeouts]` (milliseconds)
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP (and TLS) connect to an upstream endpoint.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// From sending the request to the upstream's response headers, and for
    /// streams to the first body chunk. vLLM sends a non-streaming answer only
    /// when it is complete, so for those this bounds the whole generation.
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_ms: u64,
    /// Longest pause between two body chunks of the upstream.
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
    /// Whole request, start to last byte.
    #[serde(default = "default_total_ms")]
    pub total_ms: u64,
}

fn default_connect_ms() -> u64 {
    2_000
}
fn default_first_byte_ms() -> u64 {
    300_000
}
fn default_idle_ms() -> u64 {
    60_000
}
fn default_total_ms() -> u64 {
    600_000
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            first_byte_ms: default_first_byte_ms(),
            idle_ms: default_idle_ms(),
            total_ms: default_total_ms(),
        }
    }
}

/// `[events]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// `-` for stdout, or a file path (appended to; reopened on SIGHUP).
    #[serde(default = "default_events_output")]
    pub output: String,
    /// Events buffered between requests and the writer thread.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Rotate the file when it reaches this size (0 = never; use logrotate).
    #[serde(default)]
    pub max_file_bytes: u64,
    /// Rotated files kept (`events.log.1` ... `events.log.N`).
    #[serde(default = "default_max_files")]
    pub max_files: u32,
}

fn default_events_output() -> String {
    "-".to_owned()
}
fn default_queue_capacity() -> usize {
    16_384
}
fn default_max_files() -> u32 {
    5
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            output: default_events_output(),
            queue_capacity: default_queue_capacity(),
            max_file_bytes: 0,
            max_files: default_max_files(),
        }
    }
}

/// `[routing]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Pool for models not listed in `[models]`. Without one, such models get 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pool: Option<String>,
    /// Pool for requests whose prompt is larger than `long_context_min_prompt_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context_pool: Option<String>,
    /// Size of the prompt (JSON bytes of `messages`, `prompt` or `input`)
    /// from which a request goes to `long_context_pool`.
    #[serde(default = "default_long_context_min_prompt_bytes")]
    pub long_context_min_prompt_bytes: usize,
    /// Further attempts on another endpoint of the pool after a connect
    /// error or a 502/503, while nothing has been sent to the client.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Scrape interval of the endpoints' `/metrics` for every pool that does
    /// not set its own (0 = no scrape). Unset: 1000 ms for `load-aware` and
    /// `prefix-affinity` pools, no scrape for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_scrape_interval_ms: Option<u64>,
    /// Bounded load of `prefix-affinity` pools (unless a pool sets its own):
    /// an endpoint takes a request only while its in-flight count is below
    /// `ceil(factor × (pool in-flight + 1) / endpoints)`. Unset: 1.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_max_load_factor: Option<f64>,
}

fn default_long_context_min_prompt_bytes() -> usize {
    32 * 1024
}
fn default_retries() -> u32 {
    1
}

impl Default for RawRouting {
    fn default() -> Self {
        Self {
            default_pool: None,
            long_context_pool: None,
            long_context_min_prompt_bytes: default_long_context_min_prompt_bytes(),
            retries: default_retries(),
            metrics_scrape_interval_ms: None,
            affinity_max_load_factor: None,
        }
    }
}

/// `[health]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Time between two checks of an endpoint.
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    /// Timeout of one check.
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Path checked with GET (vLLM: `/health`).
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Consecutive failed checks that take an endpoint out of rotation.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_health_interval_ms() -> u64 {
    5_000
}
fn default_health_timeout_ms() -> u64 {
    2_000
}
fn default_health_path() -> String {
    "/health".to_owned()
}
fn default_unhealthy_threshold() -> u32 {
    2
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            interval_ms: default_health_interval_ms(),
            timeout_ms: default_health_timeout_ms(),
            path: default_health_path(),
            unhealthy_threshold: default_unhealthy_threshold(),
        }
    }
}

/// `[pools.NAME]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Base URLs of the endpoints (`http://host:port`), balanced by least in-flight.
    pub endpoints: Vec<String>,
    /// File holding the API key sent upstream as `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Environment variable holding that API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// How a request picks its endpoint (default `least-in-flight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingPolicy>,
    /// Overrides `routing.metrics_scrape_interval_ms` for this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_scrape_interval_ms: Option<u64>,
    /// Overrides `routing.affinity_max_load_factor` for this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_max_load_factor: Option<f64>,
}

/// `[pools.NAME] routing`: how a pool picks one of its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    /// In turn, among the healthy endpoints.
    RoundRobin,
    /// Fewest requests in flight from this gateway.
    #[default]
    LeastInFlight,
    /// Lowest score of in-flight count, scraped queue and KV-cache usage.
    LoadAware,
    /// Same conversation prefix (or session) to the same endpoint, with bounded load.
    PrefixAffinity,
}

impl RoutingPolicy {
    /// Whether the policy reads the scraped endpoint metrics.
    pub fn uses_scrape(self) -> bool {
        matches!(
            self,
            RoutingPolicy::LoadAware | RoutingPolicy::PrefixAffinity
        )
    }
}

/// Default of `metrics_scrape_interval_ms` for pools whose policy reads the scrape.
pub const DEFAULT_SCRAPE_INTERVAL_MS: u64 = 1000;
/// Default of `affinity_max_load_factor`.
pub const DEFAULT_AFFINITY_MAX_LOAD_FACTOR: f64 = 1.25;

/// `[models.NAME]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Pool serving this model (default: `routing.default_pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Price in USD per million prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_usd_per_million_tokens: Option<f64>,
    /// Price in USD per million completion tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_usd_per_million_tokens: Option<f64>,
}

/// `[tenants.NAME]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// SHA-256 (hex) of each API key of this tenant (`llm-gateway hash-key`).
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// Requests of this tenant served at once; more get 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<usize>,
}

/// Values given on the command line (or their env vars); they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstreams: Vec<String>,
    pub events: Option<String>,
    /// File holding the API key of the `--upstream` pool.
    pub upstream_api_key_file: Option<PathBuf>,
    /// Environment variable holding that key.
    pub upstream_api_key_env: Option<String>,
}

impl RawConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut raw = Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        raw.base_dir = path.parent().map(Path::to_path_buf);
        Ok(raw)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<RawConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies command-line overrides. `--upstream` URLs replace the pool
    /// named `default` and make it the default pool unless one is set.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(l) = &o.listen {
            self.server.listen = l.clone();
        }
        if let Some(e) = &o.events {
            self.events.output = e.clone();
        }
        if !o.upstreams.is_empty() {
            let pool = self
                .pools
                .entry(DEFAULT_POOL.to_owned())
                .or_insert_with(|| RawPool {
                    endpoints: Vec::new(),
                    api_key_file: None,
                    api_key_env: None,
                    routing: None,
                    metrics_scrape_interval_ms: None,
                    affinity_max_load_factor: None,
                });
            pool.endpoints = o.upstreams.clone();
            if o.upstream_api_key_file.is_some() {
                pool.api_key_file = o.upstream_api_key_file.clone();
                pool.api_key_env = None;
            } else if o.upstream_api_key_env.is_some() {
                pool.api_key_env = o.upstream_api_key_env.clone();
                pool.api_key_file = None;
            }
            if self.routing.default_pool.is_none() {
                self.routing.default_pool = Some(DEFAULT_POOL.to_owned());
            }
        }
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Name of the pool built from `--upstream` flags.
pub const DEFAULT_POOL: &str = "default";

// ---------------------------------------------------------------------------
// Validated runtime configuration
// ---------------------------------------------------------------------------

/// One upstream endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Base URL without trailing slash, e.g. `http://10.0.0.1:8000`.
    pub base: String,
    /// `host:port`, the `endpoint` label and event field.
    pub label: String,
}

/// One upstream pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    /// Key sent upstream as bearer token (never logged).
    pub api_key: Option<String>,
    pub routing: RoutingPolicy,
    /// Interval of the `/metrics` scrape of each endpoint (`None`: no scrape).
    pub scrape_interval: Option<Duration>,
    /// Bounded-load factor of `prefix-affinity` (>= 1).
    pub affinity_max_load_factor: f64,
}

/// Price of a model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub prompt_usd_per_million_tokens: f64,
    pub completion_usd_per_million_tokens: f64,
}

impl Price {
    /// Cost of one request, rounded to 1e-10 USD so events carry `0.0000237`,
    /// not the binary-float noise `0.000023700000000000003`.
    pub fn cost(&self, prompt_tokens: Option<u64>, completion_tokens: Option<u64>) -> f64 {
        let usd = (prompt_tokens.unwrap_or(0) as f64 * self.prompt_usd_per_million_tokens
            + completion_tokens.unwrap_or(0) as f64 * self.completion_usd_per_million_tokens)
            / 1_000_000.0;
        (usd * 1e10).round() / 1e10
    }
}

/// A tenant with its key hashes.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub name: String,
    pub key_hashes: Vec<[u8; 32]>,
    pub max_concurrent_requests: Option<usize>,
}

/// Validated configuration used at run time.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    pub retry_after_secs: u64,
    pub shutdown_grace: Duration,
    /// 0 = derived from the open-files limit at start-up.
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_read_timeout: Duration,
    pub body_min_bytes_per_sec: u64,
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    pub cors_allowed_origins: Vec<String>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    /// `None` = stdout.
    pub events_path: Option<PathBuf>,
    pub events_queue_capacity: usize,
    pub events_max_file_bytes: u64,
    pub events_max_files: u32,
    pub pools: Vec<PoolConfig>,
    /// Model name → index into `pools` (models listed in `[models]`).
    pub model_pools: HashMap<String, usize>,
    pub default_pool: Option<usize>,
    /// (pool index, minimum prompt bytes)
    pub long_context: Option<(usize, usize)>,
    pub retries: u32,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub health_path: String,
    pub unhealthy_threshold: u32,
    pub prices: HashMap<String, Price>,
    pub tenants: Vec<TenantConfig>,
    pub detector: Arc<Detector>,
}

fn parse_endpoint(url: &str) -> Result<EndpointConfig, ConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| invalid(format!("endpoint {url:?} is not a URL: {e}")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(invalid(format!("endpoint {url:?} must be http or https")));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| invalid(format!("endpoint {url:?} has no host")))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| invalid(format!("endpoint {url:?} has no port")))?;
    let label = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(EndpointConfig {
        base: url.trim_end_matches('/').to_owned(),
        label,
    })
}

fn read_api_key(name: &str, pool: &RawPool) -> Result<Option<String>, ConfigError> {
    if let Some(file) = &pool.api_key_file {
        let key = std::fs::read_to_string(file).map_err(|e| {
            invalid(format!(
                "pool {name}: cannot read api_key_file {}: {e}",
                file.display()
            ))
        })?;
        let key = key.trim().to_owned();
        if key.is_empty() {
            return Err(invalid(format!("pool {name}: api_key_file is empty")));
        }
        return Ok(Some(key));
    }
    if let Some(var) = &pool.api_key_env {
        let key = std::env::var(var)
            .map_err(|_| invalid(format!("pool {name}: env var {var} is not set")))?;
        return Ok(Some(key.trim().to_owned()));
    }
    Ok(None)
}

fn ms(v: u64, what: &str) -> Result<Duration, ConfigError> {
    if v == 0 {
        return Err(invalid(format!("{what} must be > 0")));
    }
    Ok(Duration::from_millis(v))
}

impl RawConfig {
    /// Validates the merged raw configuration.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let listen: SocketAddr = self.server.listen.parse().map_err(|e| {
            invalid(format!(
                "server.listen {:?} is not host:port: {e}",
                self.server.listen
            ))
        })?;
        if self.server.max_concurrent_requests == 0 {
            return Err(invalid("server.max_concurrent_requests must be > 0"));
        }
        if self.server.max_header_bytes < 8192 {
            return Err(invalid("server.max_header_bytes must be at least 8192"));
        }
        if self.server.http2_max_concurrent_streams == 0 {
            return Err(invalid("server.http2_max_concurrent_streams must be > 0"));
        }
        if self.events.queue_capacity == 0 {
            return Err(invalid("events.queue_capacity must be > 0"));
        }
        let mut pools = Vec::new();
        let mut pool_index = HashMap::new();
        for (name, raw) in &self.pools {
            if raw.endpoints.is_empty() {
                return Err(invalid(format!("pool {name} has no endpoints")));
            }
            let endpoints = raw
                .endpoints
                .iter()
                .map(|u| parse_endpoint(u))
                .collect::<Result<Vec<_>, _>>()?;
            let routing = raw.routing.unwrap_or_default();
            let scrape_ms = raw
                .metrics_scrape_interval_ms
                .or(self.routing.metrics_scrape_interval_ms)
                .unwrap_or(if routing.uses_scrape() {
                    DEFAULT_SCRAPE_INTERVAL_MS
                } else {
                    0
                });
            if scrape_ms != 0 && scrape_ms < 50 {
                return Err(invalid(format!(
                    "pool {name}: metrics_scrape_interval_ms must be 0 (off) or at least 50"
                )));
            }
            let factor = raw
                .affinity_max_load_factor
                .or(self.routing.affinity_max_load_factor)
                .unwrap_or(DEFAULT_AFFINITY_MAX_LOAD_FACTOR);
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(invalid(format!(
                    "pool {name}: affinity_max_load_factor must be a number >= 1.0 (got {factor})"
                )));
            }
            pool_index.insert(name.clone(), pools.len());
            pools.push(PoolConfig {
                name: name.clone(),
                endpoints,
                api_key: read_api_key(name, raw)?,
                routing,
                scrape_interval: (scrape_ms > 0).then(|| Duration::from_millis(scrape_ms)),
                affinity_max_load_factor: factor,
            });
        }
        if pools.is_empty() {
            return Err(invalid(
                "no upstream: give --upstream URL, --demo, or a [pools.NAME] table",
            ));
        }
        let lookup = |what: &str, name: &str| {
            pool_index
                .get(name)
                .copied()
                .ok_or_else(|| invalid(format!("{what} names unknown pool {name:?}")))
        };
        let default_pool = match &self.routing.default_pool {
            Some(p) => Some(lookup("routing.default_pool", p)?),
            None if pools.len() == 1 && self.models.is_empty() => Some(0),
            None => None,
        };
        let long_context = match &self.routing.long_context_pool {
            Some(p) => Some((
                lookup("routing.long_context_pool", p)?,
                self.routing.long_context_min_prompt_bytes,
            )),
            None => None,
        };
        let mut model_pools = HashMap::new();
        let mut prices = HashMap::new();
        for (model, raw) in &self.models {
            let pool = match &raw.pool {
                Some(p) => lookup(&format!("models.{model}.pool"), p)?,
                None => default_pool.ok_or_else(|| {
                    invalid(format!(
                        "model {model} has no pool and there is no routing.default_pool"
                    ))
                })?,
            };
            model_pools.insert(model.clone(), pool);
            match (
                raw.prompt_usd_per_million_tokens,
                raw.completion_usd_per_million_tokens,
            ) {
                (None, None) => {}
                (p, c) => {
                    let price = Price {
                        prompt_usd_per_million_tokens: p.unwrap_or(0.0),
                        completion_usd_per_million_tokens: c.unwrap_or(0.0),
                    };
                    if !(price.prompt_usd_per_million_tokens >= 0.0
                        && price.completion_usd_per_million_tokens >= 0.0)
                    {
                        return Err(invalid(format!("model {model}: prices must be >= 0")));
                    }
                    prices.insert(model.clone(), price);
                }
            }
        }
        let mut tenants = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (name, raw) in &self.tenants {
            if name == "anonymous" || name == "other" {
                return Err(invalid(format!("tenant name {name:?} is reserved")));
            }
            let mut key_hashes = Vec::new();
            for h in &raw.api_key_sha256 {
                let bytes = hex::decode(h.trim()).map_err(|_| {
                    invalid(format!("tenant {name}: api_key_sha256 {h:?} is not hex"))
                })?;
                let arr: [u8; 32] = bytes.try_into().map_err(|_| {
                    invalid(format!(
                        "tenant {name}: api_key_sha256 must be 64 hex digits (SHA-256)"
                    ))
                })?;
                if !seen.insert(arr) {
                    return Err(invalid(format!("tenant {name}: a key hash is used twice")));
                }
                key_hashes.push(arr);
            }
            if raw.max_concurrent_requests == Some(0) {
                return Err(invalid(format!(
                    "tenant {name}: max_concurrent_requests must be > 0"
                )));
            }
            tenants.push(TenantConfig {
                name: name.clone(),
                key_hashes,
                max_concurrent_requests: raw.max_concurrent_requests,
            });
        }
        let detector = match &self.refusal {
            Some(table) => {
                let mut rc: RefusalConfig = table
                    .clone()
                    .try_into()
                    .map_err(|e| invalid(format!("[refusal]: {e}")))?;
                if let Some(dir) = &self.base_dir {
                    rc.resolve_paths(dir);
                }
                Detector::new(&rc).map_err(|e| invalid(format!("{e}")))?
            }
            None => Detector::with_defaults(),
        };
        let events_path = match self.events.output.as_str() {
            "-" | "" => None,
            p => Some(PathBuf::from(p)),
        };
        Ok(Config {
            listen,
            max_body_bytes: self.server.max_body_bytes,
            max_concurrent_requests: self.server.max_concurrent_requests,
            retry_after_secs: self.server.retry_after_secs,
            shutdown_grace: Duration::from_secs(self.server.shutdown_grace_secs),
            max_connections: self.server.max_connections,
            header_read_timeout: ms(
                self.server.header_read_timeout_ms,
                "server.header_read_timeout_ms",
            )?,
            keepalive_timeout: ms(
                self.server.keepalive_timeout_ms,
                "server.keepalive_timeout_ms",
            )?,
            body_read_timeout: ms(
                self.server.body_read_timeout_ms,
                "server.body_read_timeout_ms",
            )?,
            body_min_bytes_per_sec: self.server.body_min_bytes_per_sec,
            max_header_bytes: self.server.max_header_bytes,
            http2_max_concurrent_streams: self.server.http2_max_concurrent_streams,
            cors_allowed_origins: self.server.cors_allowed_origins.clone(),
            connect_timeout: ms(self.timeouts.connect_ms, "timeouts.connect_ms")?,
            first_byte_timeout: ms(self.timeouts.first_byte_ms, "timeouts.first_byte_ms")?,
            idle_timeout: ms(self.timeouts.idle_ms, "timeouts.idle_ms")?,
            total_timeout: ms(self.timeouts.total_ms, "timeouts.total_ms")?,
            events_path,
            events_queue_capacity: self.events.queue_capacity,
            events_max_file_bytes: self.events.max_file_bytes,
            events_max_files: self.events.max_files,
            pools,
            model_pools,
            default_pool,
            long_context,
            retries: self.routing.retries,
            health_interval: ms(self.health.interval_ms, "health.interval_ms")?,
            health_timeout: ms(self.health.timeout_ms, "health.timeout_ms")?,
            health_path: self.health.path.clone(),
            unhealthy_threshold: self.health.unhealthy_threshold.max(1),
            prices,
            tenants,
            detector: Arc::new(detector),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(up: &[&str]) -> Overrides {
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            upstreams: up.iter().map(|s| s.to_string()).collect(),
            events: None,
            ..Overrides::default()
        }
    }

    #[test]
    fn upstream_key_file_flag_gives_the_default_pool_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-up\n").unwrap();
        let mut raw = RawConfig::default();
        raw.apply(&Overrides {
            upstream_api_key_file: Some(key),
            ..flags(&["http://127.0.0.1:8000"])
        });
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.pools[0].api_key.as_deref(), Some("sk-up"));
        // CORS defaults to vLLM's: every origin.
        assert_eq!(cfg.cors_allowed_origins, vec!["*".to_owned()]);
    }

    #[test]
    fn flags_alone_make_a_default_pool() {
        let mut raw = RawConfig::default();
        raw.apply(&flags(&["http://127.0.0.1:8000/"]));
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.pools.len(), 1);
        assert_eq!(cfg.default_pool, Some(0));
        assert_eq!(cfg.pools[0].endpoints[0].base, "http://127.0.0.1:8000");
        assert_eq!(cfg.pools[0].endpoints[0].label, "127.0.0.1:8000");
        assert!(cfg.events_path.is_none());
    }

    #[test]
    fn no_upstream_is_an_error() {
        let err = RawConfig::default().validate().unwrap_err();
        assert!(err.to_string().contains("no upstream"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = RawConfig::parse("[server]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn tables_validate() {
        let text = r#"
[routing]
default_pool = "fast"
long_context_pool = "long"
long_context_min_prompt_bytes = 100
[pools.fast]
endpoints = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
[pools.long]
endpoints = ["https://long.internal"]
[models.m1]
prompt_usd_per_million_tokens = 1.0
completion_usd_per_million_tokens = 2.0
[tenants.acme]
api_key_sha256 = ["2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"]
max_concurrent_requests = 3
"#;
        let cfg = RawConfig::parse(text).unwrap().validate().unwrap();
        assert_eq!(cfg.pools.len(), 2);
        let fast = cfg.pools.iter().position(|p| p.name == "fast").unwrap();
        let long = cfg.pools.iter().position(|p| p.name == "long").unwrap();
        assert_eq!(cfg.default_pool, Some(fast));
        assert_eq!(cfg.long_context, Some((long, 100)));
        assert_eq!(cfg.model_pools["m1"], fast);
        assert_eq!(cfg.pools[long].endpoints[0].label, "long.internal:443");
        let p = cfg.prices["m1"];
        assert!((p.cost(Some(1_000_000), Some(500_000)) - 2.0).abs() < 1e-9);
        let demo = Price {
            prompt_usd_per_million_tokens: 0.10,
            completion_usd_per_million_tokens: 0.20,
        };
        assert_eq!(
            serde_json::to_string(&demo.cost(Some(109), Some(64))).unwrap(),
            "0.0000237"
        );
        assert_eq!(cfg.tenants[0].max_concurrent_requests, Some(3));
    }

    #[test]
    fn routing_policies_and_their_scrape_defaults() {
        let text = r#"
[routing]
default_pool = "plain"
affinity_max_load_factor = 1.5
[pools.plain]
endpoints = ["http://h:1"]
[pools.aware]
routing = "load-aware"
endpoints = ["http://h:2"]
[pools.sticky]
routing = "prefix-affinity"
metrics_scrape_interval_ms = 0
affinity_max_load_factor = 2.0
endpoints = ["http://h:3"]
[pools.rr]
routing = "round-robin"
metrics_scrape_interval_ms = 250
endpoints = ["http://h:4"]
"#;
        let cfg = RawConfig::parse(text).unwrap().validate().unwrap();
        let pool = |n: &str| cfg.pools.iter().find(|p| p.name == n).unwrap();
        assert_eq!(pool("plain").routing, RoutingPolicy::LeastInFlight);
        assert_eq!(pool("plain").scrape_interval, None, "no scrape unless read");
        assert_eq!(pool("plain").affinity_max_load_factor, 1.5);
        assert_eq!(pool("aware").routing, RoutingPolicy::LoadAware);
        assert_eq!(
            pool("aware").scrape_interval,
            Some(Duration::from_millis(1000))
        );
        assert_eq!(pool("sticky").scrape_interval, None);
        assert_eq!(pool("sticky").affinity_max_load_factor, 2.0);
        assert_eq!(pool("rr").routing, RoutingPolicy::RoundRobin);
        assert_eq!(pool("rr").scrape_interval, Some(Duration::from_millis(250)));
        // [routing] sets the scrape for every pool without its own.
        let all = "[routing]\nmetrics_scrape_interval_ms = 500\n[pools.a]\nendpoints = [\"http://h:1\"]\n";
        let cfg = RawConfig::parse(all).unwrap().validate().unwrap();
        assert_eq!(
            cfg.pools[0].scrape_interval,
            Some(Duration::from_millis(500))
        );
        // The effective config (check-config) round-trips.
        let again = RawConfig::parse(&RawConfig::parse(text).unwrap().to_toml()).unwrap();
        assert_eq!(
            again.pools["sticky"].routing,
            Some(RoutingPolicy::PrefixAffinity)
        );
        for bad in [
            "[pools.a]\nendpoints = [\"http://h:1\"]\naffinity_max_load_factor = 0.9\n",
            "[pools.a]\nendpoints = [\"http://h:1\"]\naffinity_max_load_factor = nan\n",
            "[pools.a]\nendpoints = [\"http://h:1\"]\nmetrics_scrape_interval_ms = 1\n",
        ] {
            assert!(RawConfig::parse(bad).unwrap().validate().is_err(), "{bad}");
        }
        assert!(RawConfig::parse("[pools.a]\nendpoints = []\nrouting = \"fastest\"\n").is_err());
    }

    #[test]
    fn bad_key_hash_and_unknown_pool_are_errors() {
        let bad = "[pools.a]\nendpoints=[\"http://h:1\"]\n[tenants.t]\napi_key_sha256=[\"abc\"]\n";
        assert!(RawConfig::parse(bad).unwrap().validate().is_err());
        let unknown = "[pools.a]\nendpoints=[\"http://h:1\"]\n[routing]\ndefault_pool=\"b\"\n";
        let err = RawConfig::parse(unknown).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("unknown pool"), "{err}");
    }

    #[test]
    fn effective_config_round_trips() {
        let mut raw = RawConfig::default();
        raw.apply(&flags(&["http://127.0.0.1:8000"]));
        let text = raw.to_toml();
        let again = RawConfig::parse(&text).unwrap();
        assert_eq!(
            again.pools["default"].endpoints,
            vec!["http://127.0.0.1:8000"]
        );
        assert_eq!(again.server.listen, "127.0.0.1:0");
    }
}
