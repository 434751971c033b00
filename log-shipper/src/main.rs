//! `log-shipper` binary: start-up and shutdown only (see the library for the rest).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use log_shipper::config::{Cli, Config};
use log_shipper::metrics::Metrics;
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = Config::load(&cli)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(run(cfg))
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "log-shipper: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());
    let stop = CancellationToken::new();
    let hard_stop = CancellationToken::new();

    if let Some(addr) = cfg.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        let local = listener.local_addr()?;
        {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "metrics listening on {local}");
            let _ = err.flush();
        }
        let registry = Arc::new(metrics.registry());
        let s = hard_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = log_shipper::server::serve(listener, registry, s).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }

    // Shutdown phases: 1. SIGTERM/SIGINT stops reading; 2. the reader hands over its
    // open batch; 3. queued batches are pushed for up to --shutdown-timeout-ms;
    // 4. positions are written; then the process exits.
    {
        let (stop, hard, budget) = (
            stop.clone(),
            hard_stop.clone(),
            Duration::from_millis(cfg.shutdown_timeout_ms),
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            tracing::info!("shutting down: flushing what was read");
            stop.cancel();
            tokio::time::sleep(budget).await;
            hard.cancel();
        });
    }
    let res = log_shipper::pipeline::run(cfg, Arc::clone(&metrics), stop, hard_stop.clone()).await;
    hard_stop.cancel();
    res?;
    let (peak_rss, _) = log_shipper::metrics::memory_bytes();
    tracing::info!(
        peak_rss_bytes = peak_rss,
        cpu_seconds = log_shipper::metrics::cpu_seconds(),
        lines_read = metrics.lines_read.get(),
        entries_sent = metrics.entries_sent.get(),
        "stopped"
    );
    Ok(())
}
