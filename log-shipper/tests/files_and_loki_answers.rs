//! The real `log-shipper` binary under file-descriptor shortage and failing directory
//! listings, and against Loki 3.4's partial-success 400 and `Retry-After`, with the
//! Loki-faithful `loki-receiver` on 127.0.0.1. Every test is bounded in time and
//! counts duplicates by `request_id` (each number is printed).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn proc_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The shipper's own pid (it may run under a wrapper that execs it).
fn shipper_pid(p: &Proc) -> u32 {
    p.pid()
}

/// 250 files under `prlimit --nofile=256`: more files than descriptors. The budget is
/// fitted to the limit (256 - 64 = 192 open), the other files are parked and reopened
/// by position; every line arrives once, `/metrics` answers throughout, no "Too many
/// open files".
#[test]
fn many_files_under_a_low_fd_limit() {
    if !have("prlimit") {
        println!("SKIP: prlimit (util-linux) is not installed");
        return;
    }
    const FILES: usize = 250;
    const PER_ROUND: usize = 25;
    const ROUNDS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let rx = Receiver::start(dir.path());
    let write_round = |round: usize| {
        for f in 0..FILES {
            let base = (round * FILES + f) * PER_ROUND;
            append_lines(
                &logs.join(format!("f{f:03}.log")),
                base..base + PER_ROUND,
                40,
            );
        }
    };
    write_round(0);
    let input = format!("{}/*.log", logs.display());
    let (ship, maddr) = start_shipper_wrapped(
        &rx,
        dir.path(),
        &input,
        &[],
        &["prlimit", "--nofile=256:256", "--"],
    );
    let pid = shipper_pid(&ship);
    let mut max_fds = 0;
    let mut max_open = 0.0f64;
    let mut scrapes = 0;
    for round in 1..ROUNDS {
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            // /metrics must keep answering while the shipper follows 250 files.
            max_open = max_open.max(metric(&maddr, "log_shipper_open_files"));
            scrapes += 1;
            max_fds = max_fds.max(proc_fds(pid));
        }
        write_round(round);
    }
    let n = FILES * PER_ROUND * ROUNDS;
    let counts = rx.wait_all(n, Duration::from_secs(90), Some(&ship));
    max_fds = max_fds.max(proc_fds(pid));
    let dups = duplicates(&counts);
    let followed = metric(&maddr, "log_shipper_followed_files");
    let reopens = metric(&maddr, "log_shipper_file_reopens_total");
    println!(
        "{FILES} files, {n} lines under nofile=256: duplicates {dups}, max open files {max_open}, max fds {max_fds}, reopens {reopens}, {scrapes} /metrics scrapes answered"
    );
    assert_eq!(dups, 0, "no fault here: no line may arrive twice");
    assert_eq!(followed, FILES as f64);
    assert!(
        max_open <= 192.0,
        "open files {max_open} over the fitted budget"
    );
    assert!(max_fds < 256, "{max_fds} descriptors");
    assert!(reopens > 0.0, "parked files must have been reopened");
    let text = ship.stderr.lock().unwrap().join("\n");
    assert!(
        !text.contains("Too many open files"),
        "the shipper ran out of descriptors:\n{text}"
    );
    assert!(text.contains("max_open_files lowered"), "{text}");
}

/// A uid that permission bits apply to (root bypasses them).
const NOBODY: &str = "65534";

/// The input directory is made unreadable (mode 000) for 3 s and restored, while the
/// files keep growing. The shipper runs as an unprivileged user (`setpriv`) when the
/// test runs as root, so the permission failure is real: listing and `stat` fail with
/// EACCES. Nothing may be taken as deleted: no duplicates, every line arrives.
#[test]
fn unreadable_directory_for_a_few_seconds_gives_no_duplicates() {
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if root && !have("setpriv") {
        println!("SKIP: running as root and setpriv (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rx = Receiver::start(dir.path());
    const FILES: usize = 20;
    let write = |from: usize, per: usize| {
        for f in 0..FILES {
            let p = logs.join(format!("f{f:02}.log"));
            let base = from + f * per;
            append_lines(&p, base..base + per, 40);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    };
    write(0, 50);
    let input = format!("{}/*.log", logs.display());
    let wrapper: &[&str] = if root {
        &[
            "setpriv",
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "--",
        ]
    } else {
        &[]
    };
    // A small budget, so some files are parked (closed) when the directory goes.
    let (ship, maddr) =
        start_shipper_wrapped(&rx, dir.path(), &input, &["--max-open-files", "8"], wrapper);
    rx.wait_all(FILES * 50, Duration::from_secs(30), Some(&ship));
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o000)).unwrap();
    let t0 = Instant::now();
    // The writer (this process) keeps writing through the fault.
    write(FILES * 50, 50);
    wait_until("discovery errors", Duration::from_secs(10), || {
        metric(&maddr, "log_shipper_discovery_errors_total") > 0.0
    });
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t0.elapsed()));
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(FILES * 100, 50);
    let n = FILES * 150;
    let counts = rx.wait_all(n, Duration::from_secs(30), Some(&ship));
    // Give a wrong re-read time to show up.
    std::thread::sleep(Duration::from_secs(1));
    let counts_later = rx.counts();
    let dups = duplicates(&counts_later);
    println!(
        "directory mode 000 for 3 s ({FILES} files, {n} lines, max 8 open): duplicates {dups}, discovery errors {}",
        metric(&maddr, "log_shipper_discovery_errors_total")
    );
    assert_eq!(counts.len(), n);
    assert_eq!(dups, 0);
    drop(ship);
}

/// The input directory is moved away for longer than the rotate wait (its files are
/// drained through their handles and closed) and moved back: the files are resumed
/// from their positions, not re-sent — also after a restart that follows.
#[test]
fn directory_moved_away_and_back_gives_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let away = dir.path().join("logs.away");
    std::fs::create_dir(&logs).unwrap();
    let rx = Receiver::start(dir.path());
    const FILES: usize = 20;
    let write = |d: &Path, from: usize, per: usize| {
        for f in 0..FILES {
            let base = from + f * per;
            append_lines(&d.join(format!("f{f:02}.log")), base..base + per, 40);
        }
    };
    write(&logs, 0, 50);
    let input = format!("{}/*.log", logs.display());
    let (ship, maddr) = start_shipper(
        &rx,
        dir.path(),
        &input,
        &["--max-open-files", "8", "--rotate-wait-ms", "300"],
    );
    rx.wait_all(FILES * 50, Duration::from_secs(30), Some(&ship));
    std::fs::rename(&logs, &away).unwrap();
    // Only half of the files get new lines while the directory is away and after it is
    // back; the others come back with nothing new, and their positions must be saved
    // again all the same.
    let half = |d: &Path, from: usize| {
        for f in 0..FILES / 2 {
            let base = from + f * 50;
            append_lines(&d.join(format!("f{f:02}.log")), base..base + 50, 40);
        }
    };
    half(&away, FILES * 50);
    std::thread::sleep(Duration::from_secs(2));
    std::fs::rename(&away, &logs).unwrap();
    half(&logs, FILES * 100);
    let ids = |range: std::ops::Range<usize>| -> Vec<usize> { range.collect() };
    let mut want: Vec<usize> = ids(0..FILES * 50);
    want.extend(ids(FILES * 50..FILES * 50 + FILES / 2 * 50));
    want.extend(ids(FILES * 100..FILES * 100 + FILES / 2 * 50));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = rx.counts();
        if want.iter().all(|i| c.contains_key(&req_id(*i))) {
            break;
        }
        assert!(Instant::now() < deadline, "not all lines arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
    let followed = metric(&maddr, "log_shipper_followed_files");
    // Restart: nothing may be read again.
    let mut ship = ship;
    assert!(
        ship.terminate(Duration::from_secs(15))
            .is_some_and(|s| s.success())
    );
    let (ship, _maddr) = start_shipper(
        &rx,
        dir.path(),
        &input,
        &["--max-open-files", "8", "--rotate-wait-ms", "300"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let counts = rx.counts();
    let dups = duplicates(&counts);
    println!(
        "directory moved away for 2 s, then a restart ({FILES} files, {} lines, max 8 open): duplicates {dups}, followed files after {followed}",
        want.len()
    );
    assert_eq!(counts.len(), want.len());
    assert_eq!(dups, 0);
    drop(ship);
}

/// The shipper is restarted while its input directory is away, twice: once after the
/// files were closed (their positions are in the positions file's closed list), once
/// before (their saved positions are not found at start). Both times the files are
/// resumed from their positions when the directory is back, not re-sent.
#[test]
fn restart_while_the_directory_is_away_gives_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let away = dir.path().join("logs.away");
    std::fs::create_dir(&logs).unwrap();
    let rx = Receiver::start(dir.path());
    const FILES: usize = 10;
    const PER: usize = 40;
    let mut next = 0;
    let mut write = |d: &Path| {
        for f in 0..FILES {
            append_lines(&d.join(format!("f{f:02}.log")), next..next + PER, 40);
            next += PER;
        }
        next
    };
    let input = format!("{}/*.log", logs.display());
    let args = ["--max-open-files", "4", "--rotate-wait-ms", "300"];
    let mut total = write(&logs);
    let mut ship = start_shipper(&rx, dir.path(), &input, &args).0;
    rx.wait_all(total, Duration::from_secs(30), Some(&ship));
    for (phase, secs_away_before_stop) in
        [("closed before the restart", 2), ("open at the restart", 0)]
    {
        std::fs::rename(&logs, &away).unwrap();
        std::thread::sleep(Duration::from_secs(secs_away_before_stop));
        assert!(
            ship.terminate(Duration::from_secs(15))
                .is_some_and(|s| s.success())
        );
        ship = start_shipper(&rx, dir.path(), &input, &args).0;
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::rename(&away, &logs).unwrap();
        total = write(&logs);
        rx.wait_all(total, Duration::from_secs(30), Some(&ship));
        std::thread::sleep(Duration::from_millis(500));
        let counts = rx.counts();
        let dups = duplicates(&counts);
        println!("restart while away ({phase}): {total} lines, duplicates {dups}");
        assert_eq!(counts.len(), total, "{phase}");
        assert_eq!(dups, 0, "{phase}");
    }
    drop(ship);
}

/// Loki 3.4's 400 for a push where some entries are too old (its exact text, without
/// "total ignored"): the shipper counts exactly the rejected entries as dropped and the
/// others as sent.
#[test]
fn loki_3_4_partial_400_is_counted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    let log = dir.path().join("app.log");
    let now = time::OffsetDateTime::now_utc();
    let old = now - time::Duration::days(8);
    let mut text = String::new();
    for i in 0..300 {
        // Every third line is 8 days old: Loki's default 7-day limit rejects it.
        let at = if i % 3 == 0 { old } else { now };
        text.push_str(&event_line_at(i, 20, at));
    }
    std::fs::write(&log, text).unwrap();
    let (ship, maddr) = start_shipper(
        &rx,
        dir.path(),
        log.to_str().unwrap(),
        // Keep old event times (the default would replace them by the read time).
        &["--max-timestamp-age-secs", "3000000"],
    );
    wait_until("all 300 settled", Duration::from_secs(30), || {
        metric(&maddr, "log_shipper_entries_sent_total")
            + metric(&maddr, "log_shipper_dropped_entries_total")
            + metric(&maddr, "log_shipper_entries_rejected_count_unknown_total")
            >= 300.0
    });
    let sent = metric(&maddr, "log_shipper_entries_sent_total");
    let dropped = metric(
        &maddr,
        "log_shipper_dropped_entries_total{reason=\"rejected_by_loki\"}",
    );
    let unknown = metric(&maddr, "log_shipper_entries_rejected_count_unknown_total");
    let stats = rx.stats();
    println!(
        "300 lines, 100 too old: sent {sent}, dropped {dropped}, unknown {unknown}; receiver {stats}"
    );
    assert_eq!(stats["accepted_entries"], 200);
    assert_eq!(stats["rejected_entries"], 100);
    assert_eq!((sent, dropped, unknown), (200.0, 100.0, 0.0));
    assert!(metric(&maddr, "log_shipper_batches_total{outcome=\"rejected\"}") >= 1.0);
    assert_eq!(rx.counts().len(), 200);
    // The shipper logged Loki 3.4's wording, which has no "total ignored".
    let log_text = ship.stderr.lock().unwrap().join("\n");
    assert!(
        log_text
            .contains("errors like: entry for stream '{app=\"llm-gateway\", event=\"response\"")
            && log_text.contains("service_name=\"llm-gateway\"")
            && log_text.contains("has timestamp too old: "),
        "{log_text}"
    );
    assert!(!log_text.contains("total ignored"), "{log_text}");
    drop(ship);
}

/// Loki answers 503 with `Retry-After: 2` three times: the shipper waits 2 s before each
/// retry (its own backoff here would be 20-200 ms), then everything arrives.
#[test]
fn retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    rx.control(r#"{"mode":"fail","status":503,"count":3,"retry_after":"2"}"#);
    let log = dir.path().join("app.log");
    append_lines(&log, 0..100, 20);
    let t0 = Instant::now();
    let (ship, maddr) = start_shipper(
        &rx,
        dir.path(),
        log.to_str().unwrap(),
        &["--retry-max-backoff-ms", "5000"],
    );
    rx.wait_all(100, Duration::from_secs(30), Some(&ship));
    let took = t0.elapsed();
    let honoured = metric(&maddr, "log_shipper_retry_after_honoured_total");
    println!(
        "3 x 503 with Retry-After: 2 -> delivered after {took:?}, {honoured} delays from Retry-After"
    );
    assert_eq!(honoured, 3.0);
    assert!(took >= Duration::from_millis(5900), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(rx.stats()["failed_requests"], 3);
    drop(ship);

    // An HTTP date far ahead is capped at the longest backoff (1 s here).
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    rx.control(&format!(
        r#"{{"mode":"fail","status":429,"count":2,"retry_after":"{later}"}}"#
    ));
    let log = dir.path().join("app.log");
    append_lines(&log, 0..100, 20);
    let t0 = Instant::now();
    let (ship, maddr) = start_shipper(
        &rx,
        dir.path(),
        log.to_str().unwrap(),
        &["--retry-max-backoff-ms", "1000"],
    );
    rx.wait_all(100, Duration::from_secs(30), Some(&ship));
    let took = t0.elapsed();
    println!("2 x 429 with Retry-After an hour ahead, max backoff 1 s -> delivered after {took:?}");
    assert_eq!(
        metric(&maddr, "log_shipper_retry_after_honoured_total"),
        2.0
    );
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(ship);
}

/// A 10,485,761-byte JSON line (longer than the reader's 4 MiB buffer): shipped cut to
/// `--max-line-bytes` with a marker giving its real length, with its labels and
/// timestamp, and without `parse_error="true"`.
#[test]
fn a_huge_json_line_is_truncated_truthfully() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path());
    let log = dir.path().join("app.log");
    let head = event_line(0, 0);
    let head = head.trim_end().trim_end_matches("\"}");
    let total = 10_485_761usize;
    let pad = total - head.len() - 2;
    let line = format!("{head}{}\"}}\n", "x".repeat(pad));
    assert_eq!(line.len(), total + 1);
    std::fs::write(&log, &line).unwrap();
    append_lines(&log, 1..2, 10);
    let (ship, maddr) = start_shipper(&rx, dir.path(), log.to_str().unwrap(), &[]);
    rx.wait_all(2, Duration::from_secs(30), Some(&ship));
    let text = std::fs::read_to_string(&rx.record).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let shipped = first["line"].as_str().unwrap();
    println!(
        "10,485,761-byte line shipped as {} bytes, labels {}",
        shipped.len(),
        first["labels"]
    );
    assert!(
        shipped.ends_with("…[log-shipper: truncated, original 10485761 bytes]"),
        "{}",
        &shipped[shipped.len().saturating_sub(80)..]
    );
    assert!(shipped.len() <= 256_000);
    assert_eq!(first["labels"]["event"], "response");
    assert!(
        first["labels"].get("parse_error").is_none(),
        "{}",
        first["labels"]
    );
    assert_eq!(metric(&maddr, "log_shipper_truncated_lines_total"), 1.0);
    assert_eq!(metric(&maddr, "log_shipper_parse_errors_total"), 0.0);
    drop(ship);
}
