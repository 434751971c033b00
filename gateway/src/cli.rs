//! Command-line arguments (clap only). Every flag can also come from an
//! environment variable `LLM_GATEWAY_<FLAG>`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// OpenAI-compatible gateway for vLLM: proxies requests, writes one JSON
/// event per request and exposes Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "llm-gateway", version, about)]
pub struct Cli {
    /// TOML configuration file (pools, routing, tenants, prices, refusal rules, limits).
    #[arg(long, env = "LLM_GATEWAY_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, env = "LLM_GATEWAY_LISTEN", global = true)]
    pub listen: Option<String>,

    /// Upstream vLLM base URL; repeat for several endpoints of the default pool
    /// (env: comma-separated).
    #[arg(
        long = "upstream",
        env = "LLM_GATEWAY_UPSTREAM",
        value_delimiter = ',',
        global = true
    )]
    pub upstream: Vec<String>,

    /// File holding the API key sent to the `--upstream` endpoints as
    /// `Authorization: Bearer` (vLLM `--api-key`). The key itself can come
    /// from the env var LLM_GATEWAY_UPSTREAM_API_KEY instead.
    #[arg(long, env = "LLM_GATEWAY_UPSTREAM_API_KEY_FILE", global = true)]
    pub upstream_api_key_file: Option<PathBuf>,

    /// Where events go: `-` for stdout (default) or a file path.
    #[arg(long, env = "LLM_GATEWAY_EVENTS", global = true)]
    pub events: Option<String>,

    /// Start an in-process simulated vLLM as the upstream.
    #[arg(long, env = "LLM_GATEWAY_DEMO", global = true)]
    pub demo: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Env var holding the `--upstream` pool's API key itself.
pub const UPSTREAM_API_KEY_ENV: &str = "LLM_GATEWAY_UPSTREAM_API_KEY";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration and print the effective configuration.
    CheckConfig,
    /// Read an API key on stdin and print its SHA-256 (hex) for `api_key_sha256`.
    HashKey,
    /// Refusal detector tools.
    Refusal {
        #[command(subcommand)]
        command: RefusalCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum RefusalCommand {
    /// Classify texts (one per line on stdin, or --input FILE) with the configured rules.
    Check {
        /// Read from this file instead of stdin.
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Measure the detector against labeled files: overall, per source, and
    /// (with --loso) leave-one-source-out.
    Eval {
        /// Labeled examples (JSON lines `{"text", "label", "source"?}`); several files allowed.
        #[arg(long, num_args = 1.., required = true)]
        labeled: Vec<PathBuf>,
        /// Also train the model once per source on all the other sources and
        /// score the held-out source.
        #[arg(long)]
        loso: bool,
    },
    /// Train the refusal model on labeled files and write the weights file
    /// (see scripts/train-refusal.sh).
    Train {
        /// Labeled examples (JSON lines); several files allowed.
        #[arg(long, num_args = 1.., required = true)]
        labeled: Vec<PathBuf>,
        /// Where to write the generated weights (Rust source); stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}
