//! Property-based test of the tailer: an interpreter runs random sequences of
//! write / rotate (rename-and-create) / copytruncate / truncate / delete / poll against
//! a real directory and checks that every written line comes out exactly once, in order.
//!
//! Assumptions (documented limits of any polling tailer): a file is seen by at least one
//! poll while it has content before it is rotated away (renamed or copy-truncated), at
//! most one rotation or truncation happens between two polls, and a
//! plain truncate or delete only loses lines nobody could have read, so the model polls
//! before those.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use log_shipper::checkpoint::FileId;
use log_shipper::tailer::{LineInfo, LineSink, Stop, Tailer, TailerConfig, TailerMetrics};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write(u8),
    WritePartial,
    Rename,
    CopyTruncate,
    Truncate,
    Delete,
    Poll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..20).prop_map(Op::Write),
        1 => Just(Op::WritePartial),
        2 => Just(Op::Rename),
        2 => Just(Op::CopyTruncate),
        1 => Just(Op::Truncate),
        1 => Just(Op::Delete),
        4 => Just(Op::Poll),
    ]
}

#[derive(Default)]
struct Sink {
    lines: Vec<String>,
}

impl LineSink for Sink {
    fn line(&mut self, info: LineInfo<'_>) -> Result<(), Stop> {
        self.lines
            .push(String::from_utf8_lossy(info.line).into_owned());
        Ok(())
    }
    fn closed(&mut self, _id: FileId) -> Result<(), Stop> {
        Ok(())
    }
}

struct Model<'a> {
    dir: &'a Path,
    tailer: Tailer,
    sink: Sink,
    written: Vec<String>,
    next: usize,
    rotations: usize,
    /// The current file was seen by a poll since it was created.
    seen: bool,
    /// A rotation happened since the last poll.
    rotated_since_poll: bool,
    /// An unterminated line is pending in the current file.
    partial: Option<String>,
}

impl Model<'_> {
    fn log(&self) -> std::path::PathBuf {
        self.dir.join("app.log")
    }

    fn poll(&mut self) {
        for _ in 0..3 {
            self.tailer.discover_now();
            self.tailer.poll(Instant::now(), &mut self.sink).unwrap();
        }
        // Only content that existed at a poll can have been seen.
        if fs::metadata(self.log()).is_ok_and(|m| m.len() > 0) {
            self.seen = true;
        }
        self.rotated_since_poll = false;
    }

    fn append(&mut self, text: &str) {
        if !self.log().exists() {
            self.seen = false;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn finish_partial(&mut self) {
        if let Some(p) = self.partial.take() {
            self.append("\n");
            self.written.push(p);
        }
    }

    fn apply(&mut self, op: &Op) {
        let rotation = matches!(op, Op::Rename | Op::CopyTruncate);
        let destructive = matches!(op, Op::Truncate | Op::Delete);
        if rotation || destructive {
            // A rotated file ends with its last complete line.
            self.finish_partial();
            if destructive || !self.seen || self.rotated_since_poll {
                self.poll();
            }
        }
        match op {
            Op::Write(n) => {
                let mut text = String::new();
                if let Some(p) = self.partial.take() {
                    text.push('\n');
                    self.written.push(p);
                }
                for _ in 0..*n {
                    let l = format!("line-{:06}", self.next);
                    self.next += 1;
                    text.push_str(&l);
                    text.push('\n');
                    self.written.push(l);
                }
                self.append(&text);
            }
            Op::WritePartial => {
                if self.partial.is_none() {
                    let l = format!("line-{:06}-partial", self.next);
                    self.next += 1;
                    self.append(&l);
                    self.partial = Some(l);
                }
            }
            Op::Rename => {
                if self.log().exists() {
                    self.rotations += 1;
                    fs::rename(
                        self.log(),
                        self.dir.join(format!("app.log.{}", self.rotations)),
                    )
                    .unwrap();
                    self.rotated_since_poll = true;
                    self.seen = false;
                }
            }
            Op::CopyTruncate => {
                if self.log().exists() {
                    self.rotations += 1;
                    fs::copy(
                        self.log(),
                        self.dir.join(format!("app.log.{}", self.rotations)),
                    )
                    .unwrap();
                    OpenOptions::new()
                        .write(true)
                        .open(self.log())
                        .unwrap()
                        .set_len(0)
                        .unwrap();
                    self.rotated_since_poll = true;
                    self.seen = false;
                }
            }
            Op::Truncate => {
                if self.log().exists() {
                    OpenOptions::new()
                        .write(true)
                        .open(self.log())
                        .unwrap()
                        .set_len(0)
                        .unwrap();
                    self.rotated_since_poll = true;
                    self.seen = false;
                }
            }
            Op::Delete => {
                if self.log().exists() {
                    fs::remove_file(self.log()).unwrap();
                    self.rotated_since_poll = true;
                }
            }
            Op::Poll => self.poll(),
        }
    }
}

fn run(ops: &[Op], max_open_files: usize) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TailerConfig {
        patterns: vec![dir.path().join("app.log").display().to_string()],
        discover_interval: Duration::ZERO,
        rotate_wait: Duration::ZERO,
        max_line_buffer: 1 << 16,
        read_budget: 1 << 20,
        max_open_files,
        metrics: TailerMetrics::default(),
    };
    let mut m = Model {
        dir: dir.path(),
        tailer: Tailer::new(cfg, []),
        sink: Sink::default(),
        written: Vec::new(),
        next: 0,
        rotations: 0,
        seen: false,
        rotated_since_poll: false,
        partial: None,
    };
    for op in ops {
        m.apply(op);
    }
    m.finish_partial();
    m.poll();
    (m.sink.lines, m.written)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_line_exactly_once_in_order(ops in proptest::collection::vec(op(), 1..40)) {
        let (got, want) = run(&ops, 64);
        prop_assert_eq!(&got, &want, "ops: {:?}", ops);
    }

    /// The same with a budget of one open file: a rotated file being drained holds the
    /// only descriptor, so the new file is parked and read by reopening it by position.
    #[test]
    fn every_line_exactly_once_with_one_open_file(ops in proptest::collection::vec(op(), 1..40)) {
        let (got, want) = run(&ops, 1);
        prop_assert_eq!(&got, &want, "ops: {:?}", ops);
    }
}

#[derive(Debug, Clone)]
enum MultiOp {
    Write(usize, u8),
    Rotate(usize),
    Poll,
}

fn multi_op(files: usize) -> impl Strategy<Value = MultiOp> {
    prop_oneof![
        6 => (0..files, 1u8..10).prop_map(|(f, n)| MultiOp::Write(f, n)),
        1 => (0..files).prop_map(MultiOp::Rotate),
        3 => Just(MultiOp::Poll),
    ]
}

/// Several files followed with fewer descriptors than files, rotated by rename (to a
/// name the glob does not match) while parked or open: every line exactly once, in
/// order per file.
fn run_multi(ops: &[MultiOp], files: usize, max_open_files: usize) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TailerConfig {
        patterns: vec![format!("{}/*.log", dir.path().display())],
        discover_interval: Duration::ZERO,
        rotate_wait: Duration::ZERO,
        max_line_buffer: 1 << 16,
        read_budget: 1 << 20,
        max_open_files,
        metrics: TailerMetrics::default(),
    };
    let mut tailer = Tailer::new(cfg, []);
    let mut sink = Sink::default();
    let mut written: Vec<Vec<String>> = vec![Vec::new(); files];
    let mut next = 0usize;
    let mut rotations = 0usize;
    let poll = |t: &mut Tailer, s: &mut Sink| {
        for _ in 0..3 {
            t.discover_now();
            t.poll(Instant::now(), s).unwrap();
        }
    };
    for op in ops {
        match op {
            MultiOp::Write(f, n) => {
                let mut text = String::new();
                for _ in 0..*n {
                    let l = format!("f{f}-{next:06}");
                    next += 1;
                    text.push_str(&l);
                    text.push('\n');
                    written[*f].push(l);
                }
                let mut h = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join(format!("f{f}.log")))
                    .unwrap();
                h.write_all(text.as_bytes()).unwrap();
            }
            MultiOp::Rotate(f) => {
                let p = dir.path().join(format!("f{f}.log"));
                if p.exists() {
                    // A polling tailer must have seen the file once before it goes.
                    poll(&mut tailer, &mut sink);
                    rotations += 1;
                    let moved = dir.path().join(format!("f{f}.log.{rotations}"));
                    fs::rename(&p, &moved).unwrap();
                    // The application still holds the old file and writes its last
                    // lines there after the rename.
                    let l = format!("f{f}-{next:06}");
                    next += 1;
                    let mut h = OpenOptions::new().append(true).open(&moved).unwrap();
                    h.write_all(format!("{l}\n").as_bytes()).unwrap();
                    written[*f].push(l);
                }
            }
            MultiOp::Poll => poll(&mut tailer, &mut sink),
        }
        if tailer.open_files() > max_open_files {
            // Draining files may hold descriptors over the budget, never parked ones.
            let over = tailer.open_files() - max_open_files;
            if over > rotations {
                return Err(format!("{} files open", tailer.open_files()));
            }
        }
    }
    poll(&mut tailer, &mut sink);
    for (f, want) in written.iter().enumerate() {
        let prefix = format!("f{f}-");
        let got: Vec<&String> = sink
            .lines
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .collect();
        let want: Vec<&String> = want.iter().collect();
        if got != want {
            return Err(format!("file {f}: got {got:?}, want {want:?}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn many_files_few_descriptors_every_line_once(ops in proptest::collection::vec(multi_op(5), 1..60)) {
        let r = run_multi(&ops, 5, 2);
        prop_assert!(r.is_ok(), "{:?}; ops: {:?}", r, ops);
    }
}
