//! Drift check: the committed refusal weights (`src/refusal/weights.rs`)
//! are what `scripts/train-refusal.sh` produces from the shared data, and
//! the leave-one-source-out score holds. Reads `../shared/data/refusal/` in
//! place; skips with a message when it is absent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufReader, Write};
use std::path::PathBuf;

use gateway::refusal::{Detector, read_labeled, run_eval_sources, train_weights_file};

fn data_files() -> Option<Vec<PathBuf>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/refusal");
    let files: Vec<PathBuf> = ["dev.jsonl", "extra.jsonl"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    if let Some(missing) = files.iter().find(|f| !f.exists()) {
        let _ = writeln!(
            std::io::stderr(),
            "skipping: refusal data not found at {}",
            missing.display()
        );
        return None;
    }
    Some(files)
}

fn rows(files: &[PathBuf]) -> Vec<gateway::refusal::LabeledRow> {
    let mut rows = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        rows.extend(read_labeled(BufReader::new(std::fs::File::open(f).unwrap()), &name).unwrap());
    }
    rows
}

#[test]
fn committed_weights_equal_a_fresh_training_run() {
    let Some(files) = data_files() else { return };
    let det = Detector::with_defaults();
    let fresh = train_weights_file(&rows(&files), &files, &det).unwrap();
    let committed = include_str!("../src/refusal/weights.rs");
    assert!(
        fresh == committed,
        "src/refusal/weights.rs drifted from what the training produces: run scripts/train-refusal.sh and commit.\n--- fresh ---\n{fresh}"
    );
}

#[test]
fn leave_one_source_out_scores() {
    let Some(files) = data_files() else { return };
    let det = Detector::with_defaults();
    let mut out = Vec::new();
    let report = run_eval_sources(&rows(&files), true, &mut out, &det).unwrap();
    let text = String::from_utf8(out).unwrap();
    let _ = writeln!(std::io::stderr(), "{text}");
    let mean = report.loso_mean_f1.unwrap();
    // Regression floor just under the measured value (0.850 with the
    // substance features and the disclaimer / persona caps, see
    // docs/benchmarks.md); the goal (0.88) is not reached yet.
    assert!(mean >= 0.848, "LOSO mean F1 (B) {mean:.3} < 0.848\n{text}");
    // The development set alone must not lose more than 0.01 against the
    // rules-only detector (0.935); measured 0.944.
    let dev: Vec<_> = rows(&files[..1]);
    let mut out = Vec::new();
    let r = run_eval_sources(&dev, false, &mut out, &det).unwrap();
    assert!(
        r.overall.partial_excluded.f1 >= 0.942,
        "dev F1 (B) {:.4}",
        r.overall.partial_excluded.f1
    );
}
