//! `vllm-sim`: a simulated vLLM OpenAI-compatible server for tests, demos and benchmarks.

use std::io::Write as _;

use anyhow::Context as _;
use clap::Parser;
use sim::SimConfig;

/// A simulated vLLM server speaking vLLM's OpenAI-compatible wire format and metrics.
#[derive(Debug, Parser)]
#[command(name = "vllm-sim", version, about)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the bound address is printed on stderr).
    #[arg(long, env = "VLLM_SIM_LISTEN", default_value = "127.0.0.1:8000")]
    listen: String,
    /// Served model name (repeat for several; each is a separate simulated engine).
    #[arg(
        long = "model",
        env = "VLLM_SIM_MODEL",
        value_delimiter = ',',
        default_value = "sim-model"
    )]
    models: Vec<String>,
    /// Prefill time (scheduling to first token) in milliseconds.
    #[arg(long, env = "VLLM_SIM_TTFT_MS", default_value_t = 50)]
    ttft_ms: u64,
    /// Decode speed per request in tokens per second (0 = instant).
    #[arg(long, env = "VLLM_SIM_TOKENS_PER_SECOND", default_value_t = 200.0)]
    tokens_per_second: f64,
    /// Output length when a request does not ask for fewer tokens.
    #[arg(long, env = "VLLM_SIM_MAX_TOKENS_DEFAULT", default_value_t = 64)]
    max_tokens_default: u32,
    /// Requests running at once; the others wait in a FCFS queue.
    #[arg(long, env = "VLLM_SIM_MAX_CONCURRENCY", default_value_t = 64)]
    max_concurrency: usize,
    /// KV-cache size in tokens (prompt + generated tokens of running requests).
    #[arg(long, env = "VLLM_SIM_KV_CACHE_TOKENS", default_value_t = 65536)]
    kv_cache_tokens: u64,
    /// Share of requests answered with HTTP 500 (0..1).
    #[arg(long, env = "VLLM_SIM_ERROR_RATIO", default_value_t = 0.0)]
    error_ratio: f64,
    /// Share of requests answered with a refusal (0..1).
    #[arg(long, env = "VLLM_SIM_REFUSAL_RATIO", default_value_t = 0.0)]
    refusal_ratio: f64,
    /// Seed of all deterministic choices.
    #[arg(long, env = "VLLM_SIM_SEED", default_value_t = 42)]
    seed: u64,
    /// Require `Authorization: Bearer KEY` on /v1 paths (like vLLM --api-key).
    #[arg(long, env = "VLLM_SIM_API_KEY")]
    api_key: Option<String>,
    /// Context window (max prompt + completion tokens).
    #[arg(long, env = "VLLM_SIM_MAX_MODEL_LEN", default_value_t = 32768)]
    max_model_len: u32,
    /// Prefill compute in uncached prompt tokens per second, shared FCFS by the engine's
    /// requests and added to --ttft-ms (0 = prefill time is --ttft-ms only).
    #[arg(
        long,
        env = "VLLM_SIM_PREFILL_TOKENS_PER_SECOND",
        default_value_t = 0.0
    )]
    prefill_tokens_per_second: f64,
    /// Speed of this replica: decode and prefill rates x F, --ttft-ms / F (0.5 = half as fast).
    #[arg(long, env = "VLLM_SIM_SPEED_FACTOR", default_value_t = 1.0)]
    speed_factor: f64,
    /// KV-cache block size in tokens (vLLM --block-size).
    #[arg(long, env = "VLLM_SIM_BLOCK_SIZE", default_value_t = 16)]
    block_size: u64,
    /// Turn automatic prefix caching off (vLLM --no-enable-prefix-caching).
    #[arg(long, env = "VLLM_SIM_NO_PREFIX_CACHING")]
    no_enable_prefix_caching: bool,
    /// Keep Responses API responses (`store`, `previous_response_id`, `GET
    /// /v1/responses/{id}`) in this server's memory, like vLLM with the same
    /// environment variable set to 1.
    #[arg(long, env = "VLLM_ENABLE_RESPONSES_API_STORE", value_parser = clap::builder::BoolishValueParser::new())]
    enable_responses_store: bool,
}

impl Cli {
    fn config(self) -> anyhow::Result<SimConfig> {
        for (name, v) in [
            ("--error-ratio", self.error_ratio),
            ("--refusal-ratio", self.refusal_ratio),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "{name} must be between 0 and 1, got {v}"
            );
        }
        anyhow::ensure!(
            self.tokens_per_second.is_finite() && self.tokens_per_second >= 0.0,
            "--tokens-per-second must be >= 0"
        );
        anyhow::ensure!(
            self.prefill_tokens_per_second.is_finite() && self.prefill_tokens_per_second >= 0.0,
            "--prefill-tokens-per-second must be >= 0"
        );
        anyhow::ensure!(
            self.speed_factor.is_finite() && self.speed_factor > 0.0,
            "--speed-factor must be > 0"
        );
        anyhow::ensure!(
            (1..=1024).contains(&self.block_size),
            "--block-size must be between 1 and 1024"
        );
        let models: Vec<String> = self.models.into_iter().filter(|m| !m.is_empty()).collect();
        anyhow::ensure!(!models.is_empty(), "at least one --model is required");
        Ok(SimConfig {
            models,
            ttft_ms: self.ttft_ms,
            tokens_per_second: self.tokens_per_second,
            max_tokens_default: self.max_tokens_default,
            max_concurrency: self.max_concurrency.max(1),
            kv_cache_tokens: self.kv_cache_tokens.max(1),
            error_ratio: self.error_ratio,
            refusal_ratio: self.refusal_ratio,
            seed: self.seed,
            api_key: self.api_key.filter(|k| !k.is_empty()),
            max_model_len: self.max_model_len.max(16),
            prefill_tokens_per_second: self.prefill_tokens_per_second,
            speed_factor: self.speed_factor,
            block_size: self.block_size,
            prefix_caching: !self.no_enable_prefix_caching,
            responses_store: self.enable_responses_store,
        })
    }
}

/// A future resolving on SIGINT or SIGTERM. The handlers are installed right away (before
/// the address is printed), so a signal sent just after start-up is never lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::info!("shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
    }
}

/// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
const DRAIN_SECS: u64 = 10;

async fn run(cli: Cli) -> anyhow::Result<()> {
    let listen = cli.listen.clone();
    let cfg = cli.config()?;
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("local address")?;
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "listening on {addr}");
        let _ = err.flush();
    }
    tracing::info!(models = ?cfg.models, ttft_ms = cfg.ttft_ms, tokens_per_second = cfg.tokens_per_second,
        max_concurrency = cfg.max_concurrency, kv_cache_tokens = cfg.kv_cache_tokens,
        prefill_tokens_per_second = cfg.prefill_tokens_per_second, speed_factor = cfg.speed_factor,
        prefix_caching = cfg.prefix_caching, "vllm-sim ready");
    // Shutdown phases: (1) signal → stop accepting, (2) let in-flight requests finish,
    // (3) after DRAIN_SECS give up on the rest and exit.
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    };
    let drain_limit = async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_secs(DRAIN_SECS)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = sim::serve(listener, cfg, shutdown) => r.context("serving")?,
        () = drain_limit => tracing::warn!("in-flight requests still running after {DRAIN_SECS} s; exiting"),
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: starting runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
