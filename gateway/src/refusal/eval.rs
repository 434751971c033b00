//! `refusal check` and `refusal eval`: the detector over JSON lines.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::{Detector, RefusalError, Signals};

/// Counts from [`run_check`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CheckStats {
    /// Non-blank input lines.
    pub lines: u64,
    /// Lines classified as refusals.
    pub refusals: u64,
    /// Lines that could not be read as `{"text": "..."}`.
    pub errors: u64,
}

#[derive(Deserialize)]
struct CheckLine {
    text: String,
}

#[derive(Serialize)]
struct CheckOut<'a> {
    refusal: bool,
    rule: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    error: &'a str,
}

/// Reads JSON lines `{"text": "..."}` (other fields ignored) and writes one
/// `{"refusal": bool, "rule": "id"|null}` line per input line. A line that is
/// not such an object gets `{"error": "..."}` and is counted; blank lines are
/// skipped.
pub fn run_check(
    input: impl BufRead,
    mut output: impl Write,
    det: &Detector,
) -> Result<CheckStats, RefusalError> {
    let mut stats = CheckStats::default();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        stats.lines += 1;
        match serde_json::from_str::<CheckLine>(&line) {
            Ok(l) => {
                let v = det.detect(&Signals::default(), &l.text);
                stats.refusals += u64::from(v.refusal);
                serde_json::to_writer(
                    &mut output,
                    &CheckOut {
                        refusal: v.refusal,
                        rule: v.rule.as_deref(),
                    },
                )
                .map_err(std::io::Error::from)?;
            }
            Err(e) => {
                stats.errors += 1;
                let msg = format!("line {}: {e}", n + 1);
                serde_json::to_writer(&mut output, &ErrorOut { error: &msg })
                    .map_err(std::io::Error::from)?;
            }
        }
        output.write_all(b"\n")?;
    }
    output.flush()?;
    Ok(stats)
}

/// Human label of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Label {
    Refusal,
    Partial,
    Compliance,
}

#[derive(Deserialize)]
struct LabeledLine {
    text: String,
    label: Label,
}

/// Precision, recall and F1 for the refusal class, with the counts behind them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Scores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub true_negatives: u64,
}

impl Scores {
    fn from_counts(tp: u64, fp: u64, fn_: u64, tn: u64) -> Scores {
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Scores {
            precision,
            recall,
            f1,
            true_positives: tp,
            false_positives: fp,
            false_negatives: fn_,
            true_negatives: tn,
        }
    }
}

/// For one label: how many rows the detector called a refusal, and how many not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LabelCounts {
    pub detected: u64,
    pub missed: u64,
}

impl LabelCounts {
    /// Rows with this label.
    pub fn total(&self) -> u64 {
        self.detected + self.missed
    }
}

/// Verdicts per label (rows = human label, columns = detector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub refusal: LabelCounts,
    pub partial: LabelCounts,
    pub compliance: LabelCounts,
}

/// How often a rule decided a verdict, by human label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RuleHits {
    pub total: u64,
    pub refusal: u64,
    pub partial: u64,
    pub compliance: u64,
}

/// Result of [`run_eval`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvalReport {
    /// Labelled rows read.
    pub rows: u64,
    /// Scoring A: `partial` counted as refusal.
    pub partial_as_refusal: Scores,
    /// Scoring B: `partial` rows left out.
    pub partial_excluded: Scores,
    pub confusion: Confusion,
    /// Rule id (of the verdict) → hits.
    pub rule_hits: BTreeMap<String, RuleHits>,
}

impl EvalReport {
    fn from_confusion(
        rows: u64,
        c: Confusion,
        rule_hits: BTreeMap<String, RuleHits>,
    ) -> EvalReport {
        let a = Scores::from_counts(
            c.refusal.detected + c.partial.detected,
            c.compliance.detected,
            c.refusal.missed + c.partial.missed,
            c.compliance.missed,
        );
        let b = Scores::from_counts(
            c.refusal.detected,
            c.compliance.detected,
            c.refusal.missed,
            c.compliance.missed,
        );
        EvalReport {
            rows,
            partial_as_refusal: a,
            partial_excluded: b,
            confusion: c,
            rule_hits,
        }
    }

    /// Writes the report as text.
    pub fn write_text(&self, mut out: impl Write) -> std::io::Result<()> {
        let c = &self.confusion;
        writeln!(
            out,
            "rows: {} (refusal {}, partial {}, compliance {})",
            self.rows,
            c.refusal.total(),
            c.partial.total(),
            c.compliance.total()
        )?;
        for (name, s) in [
            ("A (partial counted as refusal)", &self.partial_as_refusal),
            ("B (partial left out)          ", &self.partial_excluded),
        ] {
            writeln!(
                out,
                "{name}: precision {:.3}  recall {:.3}  F1 {:.3}  (tp {} fp {} fn {} tn {})",
                s.precision,
                s.recall,
                s.f1,
                s.true_positives,
                s.false_positives,
                s.false_negatives,
                s.true_negatives
            )?;
        }
        writeln!(out, "confusion (label: detected / missed):")?;
        for (name, l) in [
            ("refusal", c.refusal),
            ("partial", c.partial),
            ("compliance", c.compliance),
        ] {
            writeln!(out, "  {name:<10} {:>6} / {:<6}", l.detected, l.missed)?;
        }
        writeln!(out, "hits per rule (refusal / partial / compliance):")?;
        let width = self.rule_hits.keys().map(String::len).max().unwrap_or(0);
        for (id, h) in &self.rule_hits {
            writeln!(
                out,
                "  {id:<width$} {:>6}  ({} / {} / {})",
                h.total, h.refusal, h.partial, h.compliance
            )?;
        }
        Ok(())
    }
}

/// Reads `{"text": "...", "label": "refusal"|"compliance"|"partial"}` lines,
/// scores the detector on them and writes a text report (precision, recall
/// and F1 for the refusal class under scorings A and B, the confusion counts
/// and the hits per rule). A malformed line is an error naming its line number.
pub fn run_eval(
    labeled: impl BufRead,
    mut output: impl Write,
    det: &Detector,
) -> Result<EvalReport, RefusalError> {
    let mut c = Confusion::default();
    let mut hits: BTreeMap<String, RuleHits> = BTreeMap::new();
    let mut rows = 0u64;
    for (n, line) in labeled.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row: LabeledLine =
            serde_json::from_str(&line).map_err(|e| RefusalError::BadLabeledLine {
                line: n as u64 + 1,
                message: e.to_string(),
            })?;
        rows += 1;
        let v = det.detect(&Signals::default(), &row.text);
        let counts = match row.label {
            Label::Refusal => &mut c.refusal,
            Label::Partial => &mut c.partial,
            Label::Compliance => &mut c.compliance,
        };
        if v.refusal {
            counts.detected += 1;
        } else {
            counts.missed += 1;
        }
        if let Some(id) = v.rule {
            let h = hits.entry(id).or_default();
            h.total += 1;
            match row.label {
                Label::Refusal => h.refusal += 1,
                Label::Partial => h.partial += 1,
                Label::Compliance => h.compliance += 1,
            }
        }
    }
    let report = EvalReport::from_confusion(rows, c, hits);
    report.write_text(&mut output)?;
    output.flush()?;
    Ok(report)
}
