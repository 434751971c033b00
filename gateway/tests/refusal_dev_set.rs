//! The refusal detector on the labelled development set (XSTest v2
//! completions), read in place from the shared data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufReader, Write};

use gateway::refusal::{Detector, run_eval};

const DEV_SET: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/refusal/dev.jsonl"
);

#[test]
fn dev_set_f1_goals() {
    let file = match std::fs::File::open(DEV_SET) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "skipping: refusal dev set not found at {DEV_SET}: {e}"
            );
            return;
        }
    };
    let det = Detector::with_defaults();
    let mut out = Vec::new();
    let report = run_eval(BufReader::new(file), &mut out, &det).unwrap();
    let text = String::from_utf8(out).unwrap();
    // Shown with `cargo test -- --nocapture`, and on failure.
    let _ = writeln!(std::io::stderr(), "{text}");
    assert!(report.rows > 1000, "dev set looks truncated:\n{text}");
    let a = report.partial_as_refusal;
    let b = report.partial_excluded;
    assert!(
        b.f1 >= 0.93,
        "F1 with partial left out {:.4} < 0.93\n{text}",
        b.f1
    );
    assert!(
        a.f1 >= 0.90,
        "F1 with partial as refusal {:.4} < 0.90\n{text}",
        a.f1
    );
}
