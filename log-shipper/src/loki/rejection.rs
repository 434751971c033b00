//! How many entries a Loki 400 (partial success) rejected, read from its body.
//!
//! Loki answers 400 when some entries of a push were invalid; the valid ones **were
//! stored**. Two body formats exist, and neither is a structured count:
//!
//! 1. **Distributor validation (Loki 3.x)**, e.g. timestamps older than
//!    `reject_old_samples_max_age`. `Distributor.Push` (grafana/loki
//!    `pkg/distributor/distributor.go`, 3.4) adds one error per rejected entry (or one
//!    per rejected *stream* for label errors) to a `util.GroupedErrors` and answers
//!    `httpgrpc.Errorf(http.StatusBadRequest, "%s", validationErrors.Error())`.
//!    `GroupedErrors.Error()` (`pkg/util/errors.go`) groups identical messages and
//!    joins the groups with `"; "`, writing `"<n> errors like: "` before a message
//!    whenever there is more than one distinct message or the message occurred more
//!    than once; a single error alone is written bare. The per-entry messages come from
//!    `pkg/validation/validate.go` / `pkg/distributor/validator.go`, for example
//!    `entry for stream '{app="x"}' has timestamp too old: 2025-01-01T00:00:00Z, oldest
//!    acceptable timestamp is: 2025-03-01T00:00:00Z`. The HTTP handler writes the text
//!    with Go's `http.Error`, which adds a newline. There is **no** "total ignored".
//! 2. **Ingester (older format, still used by 3.x for out-of-order / too-far-behind
//!    entries)**: `pkg/ingester/stream.go` lists `entry with timestamp ... ignored,
//!    reason: '...'` lines and ends with `user '<tenant>', total ignored: N out of M for
//!    stream: {...}`, about **one** stream (the ingester returns one stream's error).
//!
//! [`rejected_entries`] turns a body into a [`Rejection`]: entries known to be
//! rejected, and entries whose fate the body does not tell (counted apart, never as
//! dropped: Loki stored some of them).

/// What a 400 body says about a batch of `total` entries in `streams` streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Entries Loki says it rejected.
    pub rejected: usize,
    /// Entries the body says nothing definite about (stored or rejected: unknown).
    pub unknown: usize,
}

impl Rejection {
    /// Entries Loki stored for certain.
    pub fn stored(&self, total: usize) -> usize {
        total.saturating_sub(self.rejected + self.unknown)
    }
}

/// Phrases of Loki's per-entry validation errors (one error per rejected entry).
/// Sources: `pkg/validation/validate.go` (`GreaterThanMaxSampleAgeErrorMsg`,
/// `TooFarInFutureErrorMsg`, `LineTooLongErrorMsg`, structured-metadata messages) and
/// the ingester's out-of-order errors (`pkg/chunkenc`, `entry too far behind`,
/// `entry out of order`).
const PER_ENTRY: &[&str] = &[
    "has timestamp too old:",
    "has timestamp too new:",
    "Max entry size '",
    "has structured metadata too large:",
    "has too many structured metadata labels:",
    "includes structured metadata, but this feature is disallowed",
    "entry too far behind",
    "entry out of order",
];

fn per_entry(msg: &str) -> bool {
    PER_ENTRY.iter().any(|p| msg.contains(p))
}

/// Reads a Loki 400 body for a batch of `total` entries in `streams` streams.
pub fn rejected_entries(body: &str, total: usize, streams: usize) -> Rejection {
    let body = body.trim();
    // Ingester format: "total ignored: N out of M for stream: ...".
    let mut ignored = 0usize;
    let mut of = 0usize;
    let mut found = false;
    let mut rest = body;
    while let Some(i) = rest.find("total ignored: ") {
        rest = &rest[i + "total ignored: ".len()..];
        let Some((n, after)) = leading_number(rest) else {
            continue;
        };
        found = true;
        ignored += n;
        if let Some(m) = after
            .strip_prefix(" out of ")
            .and_then(leading_number)
            .map(|(m, _)| m)
        {
            of += m;
        }
        rest = after;
    }
    if found {
        let rejected = ignored.min(total);
        // The ingester reports one stream; with several streams in the batch, the
        // entries of the others are not accounted for by the message.
        let unknown = if streams > 1 {
            total.saturating_sub(of.max(rejected))
        } else {
            0
        };
        return Rejection { rejected, unknown };
    }
    // Distributor format: groups "N errors like: msg" joined by "; ", or one bare msg.
    let groups = grouped(body);
    let mut rejected = 0usize;
    let mut unknown = false;
    if groups.is_empty() {
        if !body.is_empty() && per_entry(body) {
            rejected = 1;
        } else {
            unknown = true;
        }
    } else {
        for (n, msg) in groups {
            if per_entry(msg) {
                rejected += n;
            } else {
                // A stream-level error (labels) rejects every entry of one stream, or
                // a message this parser does not know.
                unknown = true;
            }
        }
    }
    let rejected = rejected.min(total);
    Rejection {
        rejected,
        unknown: if unknown { total - rejected } else { 0 },
    }
}

fn leading_number(s: &str) -> Option<(usize, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// Splits `"3 errors like: a; 1 errors like: b"` into `[(3, "a"), (1, "b")]`; empty
/// when the text does not start with a group.
fn grouped(body: &str) -> Vec<(usize, &str)> {
    const LIKE: &str = " errors like: ";
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        // After the first group, `rest` always starts with a group (see the cut).
        let Some((n, after)) = leading_number(rest) else {
            return out;
        };
        let Some(msg_and_more) = after.strip_prefix(LIKE) else {
            return out;
        };
        // The message runs to the next "; <digits> errors like: ".
        let mut cut = msg_and_more.len();
        let mut search = 0;
        while let Some(j) = msg_and_more[search..].find("; ") {
            let at = search + j;
            let next = &msg_and_more[at + 2..];
            if let Some((_, a)) = leading_number(next)
                && a.starts_with(LIKE)
            {
                cut = at;
                break;
            }
            search = at + 2;
        }
        out.push((n, &msg_and_more[..cut]));
        if cut == msg_and_more.len() {
            return out;
        }
        rest = &msg_and_more[cut + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "entry for stream '{app=\"llm-gateway\", event=\"response\"}' has timestamp too old: 2025-01-01T00:00:00Z, oldest acceptable timestamp is: 2025-05-01T10:00:00Z";
    const OLD2: &str = "entry for stream '{app=\"llm-gateway\", event=\"response\"}' has timestamp too old: 2025-01-01T00:00:01Z, oldest acceptable timestamp is: 2025-05-01T10:00:00Z";

    #[test]
    fn loki_3_grouped_bodies() {
        let r = |body: &str, total, streams| rejected_entries(body, total, streams);
        // One group, many identical errors: 100 of 300 rejected, 200 stored.
        let b = format!("100 errors like: {OLD}\n");
        assert_eq!(
            r(&b, 300, 1),
            Rejection {
                rejected: 100,
                unknown: 0
            }
        );
        assert_eq!(r(&b, 300, 1).stored(300), 200);
        // Several groups (Go map order: any order).
        let b = format!("60 errors like: {OLD}; 40 errors like: {OLD2}\n");
        assert_eq!(
            r(&b, 300, 2),
            Rejection {
                rejected: 100,
                unknown: 0
            }
        );
        // A single error alone is written bare.
        assert_eq!(
            r(&format!("{OLD}\n"), 10, 1),
            Rejection {
                rejected: 1,
                unknown: 0
            }
        );
        // Too new, line too long, structured metadata.
        for msg in [
            "entry for stream '{a=\"b\"}' has timestamp too new: 2030-01-01T00:00:00Z",
            "Max entry size '256000' bytes exceeded for stream '{a=\"b\"}' while adding an entry with length '300000' bytes",
            "stream '{a=\"b\"}' has structured metadata too large: '70000' bytes, limit: '65536' bytes. Please see `limits_config.max_structured_metadata_size` or contact your Loki administrator to increase it.",
        ] {
            assert_eq!(
                r(&format!("3 errors like: {msg}"), 5, 1).rejected,
                3,
                "{msg}"
            );
        }
        // A label error rejects a whole stream: how many entries is not said.
        let b = format!(
            "1 errors like: stream '{{a=\"b\"}}' has label value too long: 'xxx'; 2 errors like: {OLD}"
        );
        assert_eq!(
            r(&b, 50, 2),
            Rejection {
                rejected: 2,
                unknown: 48
            }
        );
        // A message that is not understood: unknown, never all dropped.
        assert_eq!(
            r("something went wrong\n", 50, 1),
            Rejection {
                rejected: 0,
                unknown: 50
            }
        );
        assert_eq!(
            r("", 50, 1),
            Rejection {
                rejected: 0,
                unknown: 50
            }
        );
        // Never more than the batch.
        assert_eq!(r(&format!("900 errors like: {OLD}"), 30, 1).rejected, 30);
    }

    #[test]
    fn older_total_ignored_format() {
        let b = "entry with timestamp 2025-01-01 00:00:00 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp is: 2025-01-01T00:00:00Z, oldest acceptable timestamp is: 2025-01-01T01:00:00Z',\nuser 'fake', total ignored: 3 out of 10 for stream: {app=\"x\"}";
        assert_eq!(
            rejected_entries(b, 10, 1),
            Rejection {
                rejected: 3,
                unknown: 0
            }
        );
        // With other streams in the batch, the message covers only one of them.
        assert_eq!(
            rejected_entries(b, 25, 3),
            Rejection {
                rejected: 3,
                unknown: 15
            }
        );
        assert_eq!(
            rejected_entries("injected rejection, total ignored: 7 out of 7", 7, 1),
            Rejection {
                rejected: 7,
                unknown: 0
            }
        );
    }

    #[test]
    fn group_splitting() {
        assert_eq!(
            grouped("2 errors like: a; b; 3 errors like: c"),
            vec![(2, "a; b"), (3, "c")]
        );
        assert!(grouped("a; 3 errors like: c").is_empty());
    }
}
