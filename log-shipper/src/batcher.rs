//! Pure batching: records grouped into streams by their (sorted, formatted) label set,
//! entries sorted by time within a stream at flush, and the input positions each batch
//! covers (last position per file: lines of a file arrive in file order, so the last one
//! is the furthest, and after a truncation it is the new, correct one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{FileId, FilePosition, Fingerprint};

/// A borrowed input position: the file and the offset just after a line.
#[derive(Debug, Clone, Copy)]
pub struct PosRef<'a> {
    pub id: FileId,
    pub path: &'a std::path::Path,
    pub fingerprint: Fingerprint,
    pub offset: u64,
}
use crate::parser::Record;

/// One log entry inside a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ts_ns: i64,
    pub line: String,
    pub metadata: Vec<(Arc<str>, String)>,
}

/// Entries sharing one label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// `{name="value",...}`, names sorted.
    pub labels: String,
    pub entries: Vec<Entry>,
}

/// A batch ready to push, with what must happen once Loki accepts it.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Sequence number (in order of creation).
    pub seq: u64,
    pub streams: Vec<Stream>,
    /// Number of entries.
    pub entries: usize,
    /// Uncompressed line bytes.
    pub line_bytes: usize,
    /// Estimated request size used for the flush decision.
    pub size_bytes: usize,
    /// Input bytes (lines + newlines) this batch consumed, including dropped lines.
    pub source_bytes: u64,
    /// Read time (Unix ns) of the oldest line in the batch; 0 when empty.
    pub oldest_read_ns: i64,
    /// Positions to commit once the batch is accepted.
    pub positions: Vec<FilePosition>,
    /// Files closed after their last line; their positions are dropped once accepted.
    pub forget: Vec<FileId>,
}

impl Batch {
    /// Whether there is nothing to push and nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.entries == 0 && self.positions.is_empty() && self.forget.is_empty()
    }
}

/// Accumulates records into batches.
#[derive(Debug)]
pub struct Batcher {
    max_bytes: usize,
    max_wait: Duration,
    next_seq: u64,
    streams: Vec<Stream>,
    index: HashMap<String, usize>,
    positions: HashMap<FileId, FilePosition>,
    forget: Vec<FileId>,
    entries: usize,
    line_bytes: usize,
    size_bytes: usize,
    source_bytes: u64,
    oldest_read_ns: i64,
    started: Option<Instant>,
}

impl Batcher {
    /// A batcher flushing at `max_bytes` (estimated request size) or `max_wait` age.
    pub fn new(max_bytes: usize, max_wait: Duration) -> Self {
        Self {
            max_bytes: max_bytes.max(1),
            max_wait,
            next_seq: 0,
            streams: Vec::new(),
            index: HashMap::new(),
            positions: HashMap::new(),
            forget: Vec::new(),
            entries: 0,
            line_bytes: 0,
            size_bytes: 0,
            source_bytes: 0,
            oldest_read_ns: 0,
            started: None,
        }
    }

    fn touch(&mut self, now: Instant, read_ns: i64) {
        if self.started.is_none() {
            self.started = Some(now);
        }
        if self.oldest_read_ns == 0 || (read_ns != 0 && read_ns < self.oldest_read_ns) {
            self.oldest_read_ns = read_ns;
        }
    }

    /// Adds a record. When adding it would exceed the size limit, the batch built so far
    /// is returned first (the record goes into the next one).
    pub fn push(
        &mut self,
        rec: Record,
        pos: Option<PosRef<'_>>,
        source_bytes: u64,
        read_ns: i64,
        now: Instant,
    ) -> Option<Batch> {
        let size = rec.size_bytes();
        let mut out = None;
        if self.entries > 0 && self.size_bytes + size + rec.labels.len() > self.max_bytes {
            out = self.take();
        }
        self.touch(now, read_ns);
        let idx = match self.index.get(&rec.labels) {
            Some(&i) => i,
            None => {
                let i = self.streams.len();
                self.size_bytes += rec.labels.len() + 8;
                self.index.insert(rec.labels.clone(), i);
                self.streams.push(Stream {
                    labels: rec.labels,
                    entries: Vec::new(),
                });
                i
            }
        };
        self.entries += 1;
        self.line_bytes += rec.line.len();
        self.size_bytes += size;
        self.source_bytes += source_bytes;
        self.streams[idx].entries.push(Entry {
            ts_ns: rec.ts_ns,
            line: rec.line,
            metadata: rec.metadata,
        });
        if let Some(p) = pos {
            self.set_position(p);
        }
        if out.is_none() && self.size_bytes >= self.max_bytes {
            out = self.take();
        }
        out
    }

    fn set_position(&mut self, p: PosRef<'_>) {
        match self.positions.get_mut(&p.id) {
            Some(old) => {
                old.offset = p.offset;
                old.fingerprint = p.fingerprint;
                if old.path != p.path {
                    old.path = p.path.to_owned();
                }
            }
            None => {
                self.forget.retain(|f| *f != p.id);
                self.positions.insert(
                    p.id,
                    FilePosition {
                        id: p.id,
                        path: p.path.to_owned(),
                        fingerprint: p.fingerprint,
                        offset: p.offset,
                    },
                );
            }
        }
    }

    /// Records input that produced no entry (a dropped line): its position must still
    /// be committed with this batch.
    pub fn skip(&mut self, pos: Option<PosRef<'_>>, source_bytes: u64, read_ns: i64, now: Instant) {
        self.touch(now, read_ns);
        self.source_bytes += source_bytes;
        if let Some(p) = pos {
            self.set_position(p);
        }
    }

    /// Marks a file as closed: once this batch is accepted its position is forgotten.
    pub fn forget(&mut self, id: FileId, now: Instant) {
        if self.started.is_none() {
            self.started = Some(now);
        }
        self.positions.remove(&id);
        if !self.forget.contains(&id) {
            self.forget.push(id);
        }
    }

    /// Whether the open batch is older than the maximum wait.
    pub fn is_due(&self, now: Instant) -> bool {
        self.started
            .is_some_and(|s| now.duration_since(s) >= self.max_wait)
    }

    /// When the open batch becomes due, if there is one.
    pub fn due_at(&self) -> Option<Instant> {
        self.started.map(|s| s + self.max_wait)
    }

    /// Read time of the oldest line in the open batch (0 when empty).
    pub fn oldest_read_ns(&self) -> i64 {
        self.oldest_read_ns
    }

    /// Input bytes in the open batch.
    pub fn pending_source_bytes(&self) -> u64 {
        self.source_bytes
    }

    /// Closes the open batch (entries sorted by time within each stream). `None` when
    /// there is nothing in it.
    pub fn take(&mut self) -> Option<Batch> {
        self.started?;
        let mut streams = std::mem::take(&mut self.streams);
        for s in &mut streams {
            s.entries.sort_by_key(|e| e.ts_ns);
        }
        self.index.clear();
        let mut positions: Vec<FilePosition> = self.positions.drain().map(|(_, p)| p).collect();
        positions.sort_by_key(|p| p.id);
        let batch = Batch {
            seq: self.next_seq,
            streams,
            entries: std::mem::take(&mut self.entries),
            line_bytes: std::mem::take(&mut self.line_bytes),
            size_bytes: std::mem::take(&mut self.size_bytes),
            source_bytes: std::mem::take(&mut self.source_bytes),
            oldest_read_ns: std::mem::take(&mut self.oldest_read_ns),
            positions,
            forget: std::mem::take(&mut self.forget),
        };
        self.started = None;
        self.next_seq += 1;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn rec(labels: &str, ts: i64, line: &str) -> Record {
        Record {
            labels: labels.into(),
            ts_ns: ts,
            line: line.into(),
            metadata: vec![],
            parse_error: false,
            truncated: false,
            ts_from_read_time: false,
        }
    }

    fn pos(ino: u64, offset: u64, fp: u64) -> PosRef<'static> {
        PosRef {
            id: FileId { dev: 1, ino },
            path: Path::new("/x"),
            fingerprint: Fingerprint { len: 3, hash: fp },
            offset,
        }
    }

    fn fpos(ino: u64, offset: u64, fp: u64) -> FilePosition {
        FilePosition {
            id: FileId { dev: 1, ino },
            path: PathBuf::from("/x"),
            fingerprint: Fingerprint { len: 3, hash: fp },
            offset,
        }
    }

    #[test]
    fn groups_by_labels_and_sorts_by_time() {
        let now = Instant::now();
        let mut b = Batcher::new(1 << 20, Duration::from_secs(1));
        assert!(b.take().is_none());
        for (l, ts, line) in [
            ("{a=\"1\"}", 30, "x"),
            ("{a=\"2\"}", 10, "y"),
            ("{a=\"1\"}", 20, "z"),
            ("{a=\"1\"}", 20, "w"),
        ] {
            assert!(b.push(rec(l, ts, line), None, 2, 5, now).is_none());
        }
        let batch = b.take().unwrap();
        assert_eq!(batch.entries, 4);
        assert_eq!(batch.streams.len(), 2);
        let s1 = &batch.streams[0];
        assert_eq!(s1.labels, "{a=\"1\"}");
        let lines: Vec<_> = s1
            .entries
            .iter()
            .map(|e| (e.ts_ns, e.line.as_str()))
            .collect();
        // Stable sort: equal timestamps keep file order.
        assert_eq!(lines, vec![(20, "z"), (20, "w"), (30, "x")]);
        assert_eq!(batch.source_bytes, 8);
        assert_eq!(batch.line_bytes, 4);
        assert!(b.take().is_none());
    }

    #[test]
    fn flushes_at_size_and_age() {
        let now = Instant::now();
        let mut b = Batcher::new(100, Duration::from_millis(50));
        let mut flushed = Vec::new();
        for i in 0..10 {
            if let Some(batch) = b.push(rec("{a=\"1\"}", i, &"x".repeat(30)), None, 31, 1, now) {
                flushed.push(batch);
            }
        }
        assert!(!flushed.is_empty());
        assert!(
            flushed.iter().all(|f| f.size_bytes <= 100 + 60),
            "{:?}",
            flushed.iter().map(|f| f.size_bytes).collect::<Vec<_>>()
        );
        let total: usize =
            flushed.iter().map(|f| f.entries).sum::<usize>() + b.take().map_or(0, |f| f.entries);
        assert_eq!(total, 10);
        let seqs: Vec<u64> = flushed.iter().map(|f| f.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(!b.is_due(now));
        b.push(rec("{a=\"1\"}", 1, "x"), None, 2, 1, now);
        assert!(!b.is_due(now + Duration::from_millis(49)));
        assert!(b.is_due(now + Duration::from_millis(50)));
    }

    #[test]
    fn positions_last_wins_and_forget() {
        let now = Instant::now();
        let mut b = Batcher::new(1 << 20, Duration::from_secs(1));
        b.push(rec("{}", 1, "a"), Some(pos(1, 10, 7)), 2, 1, now);
        b.push(rec("{}", 1, "b"), Some(pos(1, 20, 7)), 2, 1, now);
        // Truncated and rewritten: the new fingerprint and the smaller offset win.
        b.push(rec("{}", 1, "c"), Some(pos(1, 4, 9)), 2, 1, now);
        b.skip(Some(pos(2, 99, 1)), 100, 1, now);
        let batch = b.take().unwrap();
        assert_eq!(batch.positions, vec![fpos(1, 4, 9), fpos(2, 99, 1)]);
        assert_eq!(batch.entries, 3);
        b.push(rec("{}", 1, "d"), Some(pos(3, 5, 1)), 2, 1, now);
        b.forget(FileId { dev: 1, ino: 3 }, now);
        let batch = b.take().unwrap();
        assert!(batch.positions.is_empty());
        assert_eq!(batch.forget, vec![FileId { dev: 1, ino: 3 }]);
        // A batch with only a forget is not empty (it must still be committed).
        b.forget(FileId { dev: 1, ino: 4 }, now);
        let batch = b.take().unwrap();
        assert!(!batch.is_empty());
        assert_eq!(batch.entries, 0);
    }
}
