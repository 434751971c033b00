//! `refusal check` and `refusal eval`: the detector over JSON lines.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::{Detector, Example, L2, RefusalError, RefusalKind, Signals, train};

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
    /// `full`, `partial` or null.
    kind: Option<&'static str>,
    /// Refusal probability from the model, when it decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
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
                        kind: v.kind.map(RefusalKind::as_str),
                        score: v.score_milli.map(|m| f64::from(m) / 1000.0),
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
    #[serde(default)]
    source: Option<String>,
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
    pub fn from_counts(tp: u64, fp: u64, fn_: u64, tn: u64) -> Scores {
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
        let Some(row) = parse_labeled_line(n, &line?)? else {
            continue;
        };
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

/// One labelled row.
#[derive(Debug, Clone)]
pub struct LabeledRow {
    pub text: String,
    /// `refusal`, `partial` or `compliance`.
    pub label: &'static str,
    /// The `source` field, or the file name when absent.
    pub source: String,
}

/// One labelled JSON line (`n` counts from 0); `None` for a blank line. A
/// malformed line is an error naming its line number.
fn parse_labeled_line(n: usize, line: &str) -> Result<Option<LabeledLine>, RefusalError> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(line)
        .map(Some)
        .map_err(|e| RefusalError::BadLabeledLine {
            line: n as u64 + 1,
            message: e.to_string(),
        })
}

/// Reads labelled JSON lines (`text`, `label`, optional `source`). A row
/// without a source is grouped under `default_source`.
pub fn read_labeled(
    input: impl BufRead,
    default_source: &str,
) -> Result<Vec<LabeledRow>, RefusalError> {
    let mut rows = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let Some(row) = parse_labeled_line(n, &line?)? else {
            continue;
        };
        rows.push(LabeledRow {
            text: row.text,
            label: match row.label {
                Label::Refusal => "refusal",
                Label::Partial => "partial",
                Label::Compliance => "compliance",
            },
            source: row.source.unwrap_or_else(|| default_source.to_owned()),
        });
    }
    Ok(rows)
}

/// Training rows for the model: partial rows are left out (scoring B);
/// every row weighs the same.
pub fn training_examples<'a>(
    det: &Detector,
    rows: impl IntoIterator<Item = &'a LabeledRow>,
) -> Vec<Example> {
    rows.into_iter()
        .filter(|r| r.label != "partial")
        .filter_map(|r| {
            det.features(&r.text).map(|x| Example {
                x,
                refusal: r.label == "refusal",
                weight: 1.0,
            })
        })
        .collect()
}

/// Scores of one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceScores {
    pub source: String,
    pub rows: u64,
    pub confusion: Confusion,
    pub partial_as_refusal: Scores,
    pub partial_excluded: Scores,
    /// Partial rows the detector called `partial` (not full, not nothing).
    pub partial_kind_hits: u64,
    /// Compliance rows the detector called `partial`.
    pub compliance_kind_partial: u64,
}

/// A leave-one-source-out fold: trained on every other source, scored on this one.
#[derive(Debug, Clone, Serialize)]
pub struct LosoFold {
    pub source: String,
    /// F1 (B) is defined: the source has refusal and compliance rows.
    pub scored: bool,
    pub partial_excluded: Scores,
    /// Compliance rows wrongly called refusals / all compliance rows.
    pub false_positive_rate: f64,
}

/// Result of [`run_eval_sources`].
#[derive(Debug, Clone, Serialize)]
pub struct SourcesReport {
    pub overall: EvalReport,
    pub sources: Vec<SourceScores>,
    /// Empty unless leave-one-source-out was asked for.
    pub loso: Vec<LosoFold>,
    /// Mean F1 (B) over the scored folds.
    pub loso_mean_f1: Option<f64>,
}

fn confusion_of(det: &Detector, rows: &[&LabeledRow]) -> (Confusion, u64, u64) {
    let mut c = Confusion::default();
    let (mut pk, mut ck) = (0, 0);
    for r in rows {
        let v = det.detect(&Signals::default(), &r.text);
        let counts = match r.label {
            "refusal" => &mut c.refusal,
            "partial" => &mut c.partial,
            _ => &mut c.compliance,
        };
        if v.refusal {
            counts.detected += 1;
        } else {
            counts.missed += 1;
        }
        if v.kind == Some(RefusalKind::Partial) {
            match r.label {
                "partial" => pk += 1,
                "compliance" => ck += 1,
                _ => {}
            }
        }
    }
    (c, pk, ck)
}

/// Scores the detector per source and overall; with `loso`, also trains the
/// model once per source on all the other sources and scores the held-out
/// one (F1 with partial left out). Writes a text report.
pub fn run_eval_sources(
    rows: &[LabeledRow],
    loso: bool,
    mut output: impl Write,
    det: &Detector,
) -> Result<SourcesReport, RefusalError> {
    let mut out = Vec::new();
    let overall = run_eval(
        std::io::Cursor::new(
            rows.iter()
                .map(|r| serde_json::json!({"text": r.text, "label": r.label}).to_string() + "\n")
                .collect::<String>(),
        ),
        &mut out,
        det,
    )?;
    output.write_all(&out)?;
    let mut by: BTreeMap<&str, Vec<&LabeledRow>> = BTreeMap::new();
    for r in rows {
        by.entry(r.source.as_str()).or_default().push(r);
    }
    let width = by.keys().map(|k| k.len()).max().unwrap_or(6).max(6);
    writeln!(
        output,
        "\nper source (A: partial as refusal; B: partial left out; kind=partial on partial / compliance rows):"
    )?;
    writeln!(
        output,
        "  {:<width$} {:>5} {:>5} {:>5} {:>5}   {:>5} {:>5} {:>5}   {:>5} {:>5} {:>5}  kind=partial",
        "source", "rows", "ref", "part", "comp", "A P", "A R", "A F1", "B P", "B R", "B F1",
    )?;
    let mut sources = Vec::new();
    for (src, rs) in &by {
        let (c, pk, ck) = confusion_of(det, rs);
        let r = EvalReport::from_confusion(rs.len() as u64, c, BTreeMap::new());
        let (a, b) = (r.partial_as_refusal, r.partial_excluded);
        writeln!(
            output,
            "  {src:<width$} {:>5} {:>5} {:>5} {:>5}   {:.3} {:.3} {:.3}   {:.3} {:.3} {:.3}  {pk}/{} {ck}/{}",
            rs.len(),
            c.refusal.total(),
            c.partial.total(),
            c.compliance.total(),
            a.precision,
            a.recall,
            a.f1,
            b.precision,
            b.recall,
            b.f1,
            c.partial.total(),
            c.compliance.total()
        )?;
        sources.push(SourceScores {
            source: (*src).to_owned(),
            rows: rs.len() as u64,
            confusion: c,
            partial_as_refusal: a,
            partial_excluded: b,
            partial_kind_hits: pk,
            compliance_kind_partial: ck,
        });
    }
    let mut folds = Vec::new();
    let mut loso_mean_f1 = None;
    if loso {
        if det.model().is_none() {
            writeln!(
                output,
                "\nleave-one-source-out: the detector has no model (mode = \"replace\"); nothing to train"
            )?;
        } else {
            writeln!(
                output,
                "\nleave-one-source-out (trained on the other sources, F1 with partial left out):"
            )?;
            writeln!(
                output,
                "  {:<width$} {:>6} {:>6} {:>6}  {:>4} {:>4} {:>4} {:>5}",
                "source", "P", "R", "F1", "tp", "fp", "fn", "tn"
            )?;
            let mut sum = 0.0;
            let mut n = 0usize;
            let mut worst: Option<(&str, f64)> = None;
            for (src, rs) in &by {
                let train_rows = training_examples(det, rows.iter().filter(|r| r.source != *src));
                let model = train(&train_rows, L2);
                let Some(fold_det) = det.with_model(model) else {
                    continue;
                };
                let (c, _, _) = confusion_of(&fold_det, rs);
                let r = EvalReport::from_confusion(rs.len() as u64, c, BTreeMap::new());
                let b = r.partial_excluded;
                let scored = c.refusal.total() > 0 && c.compliance.total() > 0;
                let fpr = if c.compliance.total() == 0 {
                    0.0
                } else {
                    c.compliance.detected as f64 / c.compliance.total() as f64
                };
                let note = if scored {
                    sum += b.f1;
                    n += 1;
                    if worst.is_none_or(|(_, w)| b.f1 < w) {
                        worst = Some((src, b.f1));
                    }
                    String::new()
                } else {
                    format!("(one class only: F1 undefined; false positive rate {fpr:.3})")
                };
                writeln!(
                    output,
                    "  {src:<width$} {:>6.3} {:>6.3} {:>6.3}  {:>4} {:>4} {:>4} {:>5}  {note}",
                    b.precision,
                    b.recall,
                    b.f1,
                    b.true_positives,
                    b.false_positives,
                    b.false_negatives,
                    b.true_negatives
                )?;
                folds.push(LosoFold {
                    source: (*src).to_owned(),
                    scored,
                    partial_excluded: b,
                    false_positive_rate: fpr,
                });
            }
            if n > 0 {
                let mean = sum / n as f64;
                loso_mean_f1 = Some(mean);
                writeln!(
                    output,
                    "  mean F1 (B) over {n} sources with both classes: {mean:.3}"
                )?;
                if let Some((w, f)) = worst {
                    writeln!(output, "  worst source: {w} ({f:.3})")?;
                }
            }
        }
    }
    output.flush()?;
    Ok(SourcesReport {
        overall,
        sources,
        loso: folds,
        loso_mean_f1,
    })
}

/// Trains the model on `rows` (features from `det`, which must have a model)
/// and renders the weights file, naming the input files (by file name and
/// SHA-256) so the provenance is in the committed file.
pub fn train_weights_file(
    rows: &[LabeledRow],
    files: &[std::path::PathBuf],
    det: &Detector,
) -> Result<String, RefusalError> {
    use sha2::{Digest, Sha256};
    if det.model().is_none() {
        return Err(RefusalError::Io(std::io::Error::other(
            "training needs the compiled-in rules (mode = \"extend\")",
        )));
    }
    let examples = training_examples(det, rows);
    let model = train(&examples, L2);
    let mut prov = String::from("Trained on (partial rows left out, L2 penalty ");
    prov.push_str(&format!("{L2}, {} rows):\n", examples.len()));
    for f in files {
        let bytes = std::fs::read(f)?;
        let name = f.file_name().map_or_else(
            || f.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        prov.push_str(&format!(
            "  {name} sha256 {}\n",
            hex::encode(Sha256::digest(&bytes))
        ));
    }
    Ok(model.render(&prov))
}
