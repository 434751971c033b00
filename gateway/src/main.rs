//! llm-gateway binary: start-up and shutdown.
//!
//! Start-up phases:
//!   1. parse flags, set up stderr diagnostics, install the TLS crypto provider;
//!   2. load the config file, apply flags (and `--demo`), validate;
//!   3. metrics and the event writer (the output is opened now, so a bad path fails early);
//!   4. upstream pools and their health checks;
//!   5. bind the listener and print `listening on ADDR` on stderr; serve.
//!
//! Shutdown phases (SIGTERM / SIGINT):
//!   1. mark draining (`/readyz` fails; new `/v1` requests, also on open
//!      keep-alive connections, get 503 with an event and `Connection: close`);
//!      stop accepting;
//!   2. let in-flight requests (uploads included) finish within
//!      `server.shutdown_grace_secs`;
//!   3. cut what is left (each cut request still records its event), then
//!      close the connections;
//!   4. stop health checks and the demo upstream;
//!   5. flush the event writer last.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use gateway::auth::{Auth, hash_key_hex};
use gateway::cli::{Cli, Command, RefusalCommand};
use gateway::config::{Overrides, RawConfig, RawModel};
use gateway::events::{self, LiveRequests, Output, Recorder};
use gateway::judge;
use gateway::metrics::Metrics;
use gateway::proxy::AppState;
use gateway::upstream::Upstreams;
use gateway::{refusal, routes, server};

/// jemalloc, as long-running Rust servers commonly use: after storms of
/// thousands of connections its RSS levels off, where glibc's malloc keeps
/// growing from storm to storm (bench/connections.py, results in
/// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Models served by the `--demo` simulator, with demo prices.
const DEMO_MODELS: [(&str, f64, f64); 2] = [
    ("llama-3.1-8b-instruct", 0.10, 0.20),
    ("qwen2.5-32b-instruct", 0.50, 1.00),
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-gateway: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Command::HashKey) => hash_key(),
        Some(Command::CheckConfig) => check_config(&cli),
        Some(Command::Refusal { command }) => refusal_tool(&cli, command),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(cli)),
    }
}

fn hash_key() -> anyhow::Result<()> {
    let mut key = String::new();
    std::io::stdin().read_to_string(&mut key)?;
    let key = key.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        anyhow::bail!("no key on stdin");
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", hash_key_hex(key))?;
    Ok(())
}

fn load_raw(cli: &Cli) -> anyhow::Result<RawConfig> {
    let mut raw = match &cli.config {
        Some(p) => RawConfig::load(p)?,
        None => RawConfig::default(),
    };
    raw.apply(&Overrides {
        listen: cli.listen.clone(),
        upstreams: cli.upstream.clone(),
        events: cli.events.clone(),
        upstream_api_key_file: cli.upstream_api_key_file.clone(),
        upstream_api_key_env: std::env::var_os(gateway::cli::UPSTREAM_API_KEY_ENV)
            .map(|_| gateway::cli::UPSTREAM_API_KEY_ENV.to_owned()),
    });
    Ok(raw)
}

fn check_config(cli: &Cli) -> anyhow::Result<()> {
    let mut raw = load_raw(cli)?;
    if cli.demo && raw.pools.is_empty() {
        raw.apply(&Overrides {
            upstreams: vec!["http://127.0.0.1:0".to_owned()],
            ..Overrides::default()
        });
    }
    raw.validate()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "# configuration is valid; effective configuration:")?;
    out.write_all(raw.to_toml().as_bytes())?;
    Ok(())
}

fn refusal_tool(cli: &Cli, cmd: &RefusalCommand) -> anyhow::Result<()> {
    let mut raw = load_raw(cli)?;
    if raw.pools.is_empty() {
        // The refusal tools need no upstream.
        raw.apply(&Overrides {
            upstreams: vec!["http://127.0.0.1:1".to_owned()],
            ..Overrides::default()
        });
    }
    let cfg = raw.validate()?;
    let out = std::io::stdout().lock();
    match cmd {
        RefusalCommand::Check { input } => {
            let reader: Box<dyn BufRead> = match input {
                Some(p) => Box::new(BufReader::new(
                    std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?,
                )),
                None => Box::new(BufReader::new(std::io::stdin())),
            };
            refusal::run_check(reader, out, &cfg.detector)?;
        }
        RefusalCommand::Eval { labeled, loso } => {
            let rows = read_labeled_files(labeled)?;
            refusal::run_eval_sources(&rows, *loso, out, &cfg.detector)?;
        }
        RefusalCommand::Train { labeled, out: path } => {
            let rows = read_labeled_files(labeled)?;
            let text = refusal::train_weights_file(&rows, labeled, &cfg.detector)?;
            match path {
                Some(p) => {
                    std::fs::write(p, text).with_context(|| format!("write {}", p.display()))?
                }
                None => {
                    let mut out = out;
                    out.write_all(text.as_bytes())?;
                }
            }
        }
    }
    Ok(())
}

fn read_labeled_files(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<refusal::LabeledRow>> {
    let mut rows = Vec::new();
    for p in paths {
        let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
        let name = p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        rows.extend(
            refusal::read_labeled(BufReader::new(f), &name)
                .with_context(|| format!("read {}", p.display()))?,
        );
    }
    Ok(rows)
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    // Phase 2: configuration.
    let mut raw = load_raw(&cli)?;
    let demo_stop = CancellationToken::new();
    if cli.demo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let sim_cfg = sim::SimConfig {
            models: DEMO_MODELS.iter().map(|m| m.0.to_owned()).collect(),
            ttft_ms: 150,
            tokens_per_second: 40.0,
            max_tokens_default: 64,
            refusal_ratio: 0.05,
            error_ratio: 0.01,
            ..sim::SimConfig::default()
        };
        let stop = demo_stop.clone();
        tokio::spawn(async move {
            if let Err(e) =
                sim::serve(listener, sim_cfg, async move { stop.cancelled().await }).await
            {
                tracing::error!("demo upstream failed: {e}");
            }
        });
        tracing::info!(upstream = %addr, "demo: simulated vLLM started");
        if raw.pools.is_empty() {
            raw.apply(&Overrides {
                upstreams: vec![format!("http://{addr}")],
                ..Overrides::default()
            });
        }
        for (name, p, c) in DEMO_MODELS {
            raw.models.entry(name.to_owned()).or_insert(RawModel {
                pool: None,
                prompt_usd_per_million_tokens: Some(p),
                completion_usd_per_million_tokens: Some(c),
            });
        }
    }
    let cfg = Arc::new(raw.validate()?);

    // Phase 3: metrics and events.
    let metrics = Arc::new(Metrics::new());
    let output = match &cfg.events_path {
        None => Output::Stdout,
        Some(p) => Output::File {
            path: p.clone(),
            max_file_bytes: cfg.events_max_file_bytes,
            max_files: cfg.events_max_files,
        },
    };
    let (sink, writer) = events::start(output, cfg.events_queue_capacity, metrics.clone())
        .context("cannot open the events output")?;

    // The optional refusal judge: workers off the request path.
    let (judge, judge_workers) = match &cfg.judge {
        Some(j) => {
            let (judge, workers) = judge::start(
                j.clone(),
                cfg.detector.scan_bytes(),
                sink.clone(),
                metrics.clone(),
            )
            .context("cannot start the refusal judge")?;
            tracing::info!(
                endpoint = %j.endpoint,
                model = %j.model,
                sample_rate = j.sample_rate,
                "refusal judge enabled"
            );
            (Some(judge), Some(workers))
        }
        None => (None, None),
    };

    // Phase 4: upstreams.
    let upstreams = Arc::new(Upstreams::new(&cfg, &metrics)?);
    let health_stop = CancellationToken::new();
    upstreams.spawn_health_checks(&cfg, metrics.clone(), health_stop.clone());

    let hard_stop = CancellationToken::new();
    let state = Arc::new(AppState {
        cfg: cfg.clone(),
        upstreams,
        metrics: metrics.clone(),
        recorder: Arc::new(Recorder {
            sink: sink.clone(),
            metrics: metrics.clone(),
            prices: cfg.prices.clone(),
            hard_stop: hard_stop.clone(),
            live: LiveRequests::default(),
            judge,
        }),
        auth: Auth::new(&cfg.tenants),
        global: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
        draining: AtomicBool::new(false),
        hard_stop,
    });

    // Phase 5: listen.
    let nofile = server::raise_nofile_limit();
    let limits = server::Limits::new(&cfg, nofile);
    let listener =
        server::listen(cfg.listen).with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    eprintln!("listening on {addr}");
    tracing::info!(
        pools = cfg.pools.len(),
        tenants = cfg.tenants.len(),
        max_connections = limits.max_connections,
        open_files_limit = nofile,
        events = %cfg.events_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "stdout".into()),
        "llm-gateway started"
    );

    let ctl = server::Control::default();
    let connections = tokio_util::task::TaskTracker::new();
    let app = routes::router(state.clone());
    let mut server = tokio::spawn(server::serve(
        listener,
        app,
        limits,
        metrics.clone(),
        ctl.clone(),
        connections.clone(),
    ));

    // SIGHUP reopens the events file (logrotate).
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => sink.reopen(),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            r = &mut server => {
                r?;
                anyhow::bail!("the server stopped unexpectedly");
            }
        }
    }

    // Shutdown phase 1: drain.
    let live = &state.recorder.live;
    tracing::info!(
        grace_secs = cfg.shutdown_grace.as_secs(),
        in_flight = live.count(),
        "shutting down: draining in-flight requests"
    );
    state.draining.store(true, Ordering::Relaxed);
    ctl.draining.cancel();
    ctl.stop_accepting.cancel();
    let _ = server.await;
    // Phase 2: wait for in-flight requests within the grace period.
    let drained = tokio::time::timeout(cfg.shutdown_grace, live.wait_none())
        .await
        .is_ok();
    if !drained {
        // Phase 3: cut the rest; their events are still written.
        tracing::warn!(
            in_flight = live.count(),
            "grace period over: cutting the remaining requests"
        );
        state.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), live.wait_none()).await;
    }
    // Close the connections: idle ones at once, then drop what is left (a
    // dropped request still records its event).
    ctl.close_idle.cancel();
    connections.close();
    if tokio::time::timeout(Duration::from_secs(2), connections.wait())
        .await
        .is_err()
    {
        ctl.force_close.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
    }
    // Phase 4: background tasks; the refusal judge gets a short drain.
    if let Some(w) = judge_workers {
        let left = w.shutdown().await;
        tracing::info!(
            left,
            "refusal judge stopped; responses left unjudged are counted as skipped (shutdown)"
        );
    }
    health_stop.cancel();
    demo_stop.cancel();
    drop(state);
    drop(sink);
    // Phase 5: flush events last.
    writer.shutdown(Duration::from_secs(5)).await;
    tracing::info!(
        events_written = metrics.events_written_total(),
        events_dropped = metrics.events_dropped_total(),
        "stopped"
    );
    Ok(())
}
