//! `loki-receiver`: a Loki-faithful test peer (see `log_shipper::receiver`). It follows
//! Loki's push wire format and validation rules; it is not a Loki.
//!
//! ```text
//! loki-receiver --listen 127.0.0.1:0 --record accepted.jsonl
//! ```
//! Prints `listening on ADDR` on stderr once bound.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use log_shipper::receiver::{self, ReceiverConfig};

/// Loki-faithful test receiver: accepts pushes, validates like Loki, records entries.
#[derive(Debug, Parser)]
#[command(name = "loki-receiver", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "LOKI_RECEIVER_LISTEN", default_value = "127.0.0.1:3100")]
    listen: String,
    /// Append every accepted entry to this file as a JSON line.
    #[arg(long, env = "LOKI_RECEIVER_RECORD")]
    record: Option<PathBuf>,
    /// Loki's max_line_size.
    #[arg(long, default_value_t = 256_000)]
    max_line_bytes: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let cfg = ReceiverConfig {
        record: args.record,
        max_line_bytes: args.max_line_bytes,
        ..Default::default()
    };
    let handle = receiver::spawn(listener, cfg).context("starting the receiver")?;
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "listening on {}", handle.addr);
        let _ = err.flush();
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    handle.stop.cancel();
    Ok(())
}
