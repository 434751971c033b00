//! `loadgen`: traffic scenarios against any OpenAI-compatible URL.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sim::loadgen::{self, Endpoint, Options, Scenario};

/// Send a traffic scenario to an OpenAI-compatible server and summarize what happened.
///
/// Scenario defaults: steady = open loop 20 req/s for 30 s; latency-spike = 50 workers,
/// 180 s, max_tokens 2048; kv-cache = 10 requests of ~3000 prompt tokens, 5 workers;
/// refusal-storm / error-storm = 10 workers, 60 s, half the requests forced to refuse / fail;
/// engine-death = open loop 2 req/s for 60 s, the first request kills the engine (vllm-sim);
/// sessions = 1 new conversation/s for 60 s, 6 turns each resending the history (system
/// prompt of --prompt-tokens 1500 shared by all), --metrics-url per replica for the
/// prefix-cache hit rate.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Base URL of the server (`http://127.0.0.1:8080`; a trailing `/v1` is accepted).
    #[arg(long, env = "LOADGEN_TARGET")]
    target: String,
    /// Model name (default: the first one listed by GET /v1/models).
    #[arg(long, env = "LOADGEN_MODEL")]
    model: Option<String>,
    /// Workers (closed loop) or maximum requests in flight (steady).
    #[arg(long, env = "LOADGEN_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Run time in seconds.
    #[arg(long, env = "LOADGEN_DURATION_SECS")]
    duration_secs: Option<u64>,
    /// Stop after this many requests.
    #[arg(long, env = "LOADGEN_REQUESTS")]
    requests: Option<u64>,
    /// Requests per second (steady).
    #[arg(long, env = "LOADGEN_RATE")]
    rate: Option<f64>,
    /// `max_tokens` of each request.
    #[arg(long, env = "LOADGEN_MAX_TOKENS")]
    max_tokens: Option<u32>,
    /// Approximate prompt length in tokens.
    #[arg(long, env = "LOADGEN_PROMPT_TOKENS")]
    prompt_tokens: Option<u32>,
    /// Share of forced refusals / errors in the storms (0..1).
    #[arg(long, env = "LOADGEN_SHARE")]
    share: Option<f64>,
    /// Bearer API key.
    #[arg(long, env = "LOADGEN_API_KEY")]
    api_key: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Stream answers (default).
    #[arg(long, overrides_with = "no_stream")]
    stream: bool,
    /// Ask for whole (non-streaming) answers.
    #[arg(long, overrides_with = "stream")]
    no_stream: bool,
    /// Extra request header `NAME: VALUE` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Endpoint to call.
    #[arg(long, value_enum, default_value = "chat", env = "LOADGEN_ENDPOINT")]
    endpoint: Endpoint,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 300, env = "LOADGEN_TIMEOUT_SECS")]
    timeout_secs: u64,
    /// Seconds to wait for in-flight requests after the run time.
    #[arg(long, default_value_t = 30, env = "LOADGEN_DRAIN_SECS")]
    drain_secs: u64,
    /// Runtime threads (1 = single-threaded runtime).
    #[arg(long, default_value_t = 1, env = "LOADGEN_THREADS")]
    threads: usize,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
    /// sessions: turns per conversation.
    #[arg(long, default_value_t = 6, env = "LOADGEN_TURNS")]
    turns: u32,
    /// sessions: user message length in tokens, `MIN-MAX`.
    #[arg(long, default_value = "50-200", env = "LOADGEN_USER_TOKENS")]
    user_tokens: String,
    /// sessions: answer length in tokens, `MIN-MAX` (max_tokens and x-sim-output-tokens).
    #[arg(long, default_value = "100-300", env = "LOADGEN_ANSWER_TOKENS")]
    answer_tokens: String,
    /// sessions: pause between an answer and the next turn in ms, `MIN-MAX`.
    #[arg(long, default_value = "500-1500", env = "LOADGEN_THINK_MS")]
    think_ms: String,
    /// sessions: a server's /metrics URL to read prefix-cache hits and requests from
    /// (repeat per replica).
    #[arg(long = "metrics-url")]
    metrics_urls: Vec<String>,
}

/// `MIN-MAX` or a single number.
fn range(flag: &str, v: &str) -> anyhow::Result<(u64, u64)> {
    let parse = |x: &str| {
        x.trim()
            .parse::<u64>()
            .with_context(|| format!("--{flag} {v:?}: expected MIN-MAX"))
    };
    let (lo, hi) = match v.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(v)?, parse(v)?),
    };
    anyhow::ensure!(lo <= hi, "--{flag} {v:?}: MIN must not exceed MAX");
    Ok((lo, hi))
}

impl Cli {
    fn options(&self) -> anyhow::Result<Options> {
        let d = self.scenario.defaults();
        let mut headers = Vec::new();
        for h in &self.headers {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("--header {h:?}: expected NAME: VALUE"))?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(Options {
            scenario: self.scenario,
            target: self.target.clone(),
            model: self.model.clone(),
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            duration: Duration::from_secs(self.duration_secs.unwrap_or(d.duration_secs)),
            requests: self.requests.or(d.requests),
            rate: self.rate.or(d.rate).unwrap_or(10.0),
            max_tokens: self.max_tokens.unwrap_or(d.max_tokens),
            prompt_tokens: self.prompt_tokens.unwrap_or(d.prompt_tokens),
            share: self.share.unwrap_or(d.share),
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            stream: !self.no_stream,
            headers,
            endpoint: self.endpoint,
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
            drain: Duration::from_secs(self.drain_secs),
            progress: !self.quiet,
            shape: {
                let small = |(a, b): (u64, u64)| {
                    (
                        u32::try_from(a).unwrap_or(u32::MAX),
                        u32::try_from(b).unwrap_or(u32::MAX),
                    )
                };
                sim::loadgen::sessions::SessionShape {
                    turns: self.turns,
                    system_tokens: self.prompt_tokens.unwrap_or(d.prompt_tokens),
                    user_tokens: small(range("user-tokens", &self.user_tokens)?),
                    answer_tokens: small(range("answer-tokens", &self.answer_tokens)?),
                    think_ms: range("think-ms", &self.think_ms)?,
                }
            },
            metrics_urls: self.metrics_urls.clone(),
        })
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let opts = cli.options()?;
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;
    let summary = rt.block_on(loadgen::run(opts))?;
    let mut out = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer(&mut out, &summary).context("writing JSON")?;
        writeln!(out)?;
    } else {
        out.write_all(summary.human().as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
