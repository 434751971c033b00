//! End-to-end fault tests: the real `log-shipper` binary against the Loki-faithful
//! `loki-receiver`, counting delivered lines by `request_id`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Fault 1: Loki answers 503 for a while, then recovers: every line arrives.
#[test]
fn loki_503_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    rx.control(r#"{"mode":"fail","status":503}"#);
    let log = dir.path().join("app.log");
    append_lines(&log, 0..2000, 50);
    let (mut ship, maddr) = start_shipper(&rx, dir.path(), log.to_str().unwrap(), &[]);
    wait_until("retries", Duration::from_secs(20), || {
        metric(&maddr, "log_shipper_retries_total") >= 5.0
    });
    assert_eq!(rx.stats()["accepted_entries"], 0);
    append_lines(&log, 2000..3000, 50);
    std::thread::sleep(Duration::from_millis(300));
    rx.control(r#"{"mode":"ok"}"#);
    let counts = rx.wait_all(3000, Duration::from_secs(30), Some(&ship));
    assert_eq!(counts.len(), 3000);
    assert!(
        metric(
            &maddr,
            "log_shipper_batches_total{outcome=\"retryable_error\"}"
        ) >= 5.0
    );
    assert_eq!(metric(&maddr, "log_shipper_dropped_entries_total"), 0.0);
    wait_until("lag back to 0", Duration::from_secs(10), || {
        metric(&maddr, "log_shipper_lag_seconds") == 0.0
    });
    let status = ship
        .terminate(Duration::from_secs(15))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Fault 2: SIGKILL several times during a 100,000-line run: every line arrives;
/// duplicates are at most one batch per kill.
#[test]
fn sigkill_restarts_lose_nothing() {
    const N: usize = 100_000;
    const BATCH: usize = 32 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    let log = dir.path().join("app.log");
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for k in 0..50 {
                append_lines(&log, k * (N / 50)..(k + 1) * (N / 50), 0);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let batch = BATCH.to_string();
    let args = ["--batch-max-bytes", batch.as_str()];
    let mut kills = 0;
    let started = Instant::now();
    for round in 0..4 {
        let (mut ship, _) = start_shipper(&rx, dir.path(), log.to_str().unwrap(), &args);
        // Let it ship some batches, then kill it mid-flight.
        let before = rx.stats()["accepted_entries"].as_u64().unwrap();
        wait_until("progress before kill", Duration::from_secs(30), || {
            rx.stats()["accepted_entries"].as_u64().unwrap() > before + 3000
        });
        std::thread::sleep(Duration::from_millis(37 * (round + 1)));
        ship.child.kill().unwrap(); // SIGKILL
        ship.child.wait().unwrap();
        kills += 1;
    }
    writer.join().unwrap();
    let (ship, _) = start_shipper(&rx, dir.path(), log.to_str().unwrap(), &args);
    let counts = rx.wait_all(N, Duration::from_secs(60), Some(&ship));
    let total: u64 = counts.values().map(|&c| u64::from(c)).sum();
    let dups = total - N as u64;
    // A batch holds at most BATCH bytes of entries; every line is over 200 bytes.
    let max_batch_lines = (BATCH / 200) as u64 + 1;
    println!(
        "{kills} kills, {dups} duplicates (bound {}), {:?}",
        kills * max_batch_lines,
        started.elapsed()
    );
    assert!(
        dups <= kills * max_batch_lines,
        "{dups} duplicates for {kills} kills"
    );
}

/// Fault 3: Rotation, both styles, many times during the run: nothing lost.
///
/// Each file is rotated while the shipper is part-way through it (its second half is
/// written just before the rotation), and the next rotation only happens once the
/// shipper has seen the new file, as with any real rotation schedule.
#[test]
fn rotation_both_styles_loses_nothing() {
    const ROTATIONS: usize = 20;
    const PER_FILE: usize = 1000;
    const N: usize = ROTATIONS * PER_FILE + 500;
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    let log = dir.path().join("app.log");
    std::fs::File::create(&log).unwrap();
    let (ship, maddr) = start_shipper(&rx, dir.path(), log.to_str().unwrap(), &[]);
    for rotation in 1..=ROTATIONS {
        let start = (rotation - 1) * PER_FILE;
        let mid = start + PER_FILE / 2;
        append_lines(&log, start..mid, 20);
        wait_until(
            "the shipper to see the current file",
            Duration::from_secs(20),
            || rx.counts().contains_key(&req_id(mid - 1)),
        );
        append_lines(&log, mid..start + PER_FILE, 20);
        if rotation % 2 == 0 {
            // rename-and-create
            std::fs::rename(&log, dir.path().join(format!("app.log.{rotation}"))).unwrap();
            std::fs::File::create(&log).unwrap();
        } else {
            // copytruncate (the writer pauses: lines written between the copy and the
            // truncation are lost whatever the reader does)
            std::fs::copy(&log, dir.path().join(format!("app.log.{rotation}"))).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&log)
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
    append_lines(&log, ROTATIONS * PER_FILE..N, 20);
    let counts = rx.wait_all(N, Duration::from_secs(60), Some(&ship));
    let dups: u32 = counts.values().map(|c| c - 1).sum();
    println!("{ROTATIONS} rotations, {dups} duplicates");
    assert_eq!(dups, 0, "rotation should not duplicate lines");
    assert_eq!(metric(&maddr, "log_shipper_dropped_entries_total"), 0.0);
}

/// Fault 4: A 400 for one batch: counted and skipped, the rest flows.
#[test]
fn rejected_batch_is_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    rx.control(r#"{"mode":"reject","count":1}"#);
    let log = dir.path().join("app.log");
    append_lines(&log, 0..500, 50);
    let (ship, maddr) = start_shipper(
        &rx,
        dir.path(),
        log.to_str().unwrap(),
        &["--batch-max-wait-ms", "300"],
    );
    wait_until("the rejection", Duration::from_secs(20), || {
        rx.stats()["rejected_requests"] == 1
    });
    append_lines(&log, 500..1500, 50);
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let c = rx.counts();
        if (500..1500).all(|i| c.contains_key(&req_id(i))) || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let rejected = rx.stats()["rejected_entries"].as_u64().unwrap();
    assert!(rejected > 0);
    let delivered_after: usize = (500..1500)
        .filter(|i| counts.contains_key(&req_id(*i)))
        .count();
    assert_eq!(
        delivered_after, 1000,
        "lines after the rejected batch must flow"
    );
    let delivered_before: usize = (0..500)
        .filter(|i| counts.contains_key(&req_id(*i)))
        .count();
    assert_eq!(
        delivered_before as u64 + rejected,
        500,
        "the rejected batch is not resent"
    );
    assert_eq!(
        metric(
            &maddr,
            "log_shipper_dropped_entries_total{reason=\"rejected_by_loki\"}"
        ),
        rejected as f64
    );
    assert_eq!(
        metric(&maddr, "log_shipper_batches_total{outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(rx.stats()["rejected_requests"], 1, "a 400 is never retried");
    drop(ship);
}

/// Fault 5: Memory stays bounded while Loki is down and the file keeps growing;
/// then everything arrives.
#[test]
fn memory_bounded_while_loki_down() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    rx.control(r#"{"mode":"fail","status":500}"#);
    let log = dir.path().join("app.log");
    append_lines(&log, 0..1000, 300);
    let (ship, maddr) = start_shipper(&rx, dir.path(), log.to_str().unwrap(), &[]);
    // Grow the file to ~40 MB while Loki is down.
    const N: usize = 100_000;
    for k in 1..10 {
        append_lines(&log, k * (N / 10)..(k + 1) * (N / 10), 300);
        std::thread::sleep(Duration::from_millis(100));
    }
    append_lines(&log, 1000..(N / 10), 300);
    wait_until(
        "pending bytes to show the backlog",
        Duration::from_secs(10),
        || metric(&maddr, "log_shipper_pending_bytes") > 30_000_000.0,
    );
    std::thread::sleep(Duration::from_millis(500));
    let file_size = std::fs::metadata(&log).unwrap().len();
    let peak = ship.peak_rss();
    println!(
        "file {} MB, shipper peak RSS while Loki down: {} MB",
        file_size / 1_000_000,
        peak / 1_000_000
    );
    assert!(peak > 0);
    assert!(
        peak < 50 * 1024 * 1024,
        "peak RSS {peak} bytes with {file_size} bytes pending"
    );
    assert!(metric(&maddr, "log_shipper_lag_seconds") > 0.0);
    rx.control(r#"{"mode":"ok"}"#);
    rx.wait_all(N, Duration::from_secs(60), Some(&ship));
    let peak_after = ship.peak_rss();
    println!("peak RSS after catching up: {} MB", peak_after / 1_000_000);
    assert!(
        peak_after < 50 * 1024 * 1024,
        "peak RSS {peak_after} after catching up"
    );
}
