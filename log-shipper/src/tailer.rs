//! Discovers input files and follows them through rotation, line by line.
//!
//! Poll based, which is simple and robust on every filesystem: every discovery interval
//! the patterns are expanded and each path is `stat`ed. A file is identified by
//! (device, inode) plus a fingerprint of its first bytes ([`Fingerprint`]):
//!
//! - **rename-and-create**: the path now names another inode. The old file stays open
//!   and is read to its end (before the new file, so lines keep their order) and
//!   closed once it has been idle at EOF for the rotate-wait time.
//! - **copytruncate**: the size drops below the read offset, or the first bytes change.
//!   Reading restarts at 0; lines written after the last read but before the truncation
//!   are recovered from the copy (a file in the same directory whose name starts with
//!   the original's and whose first bytes match the old fingerprint).
//! - **deleted while open**: read to the end through the open handle, then closed.
//! - **inode reuse**: caught by the fingerprint.
//! - **restart**: saved positions are matched by (device, inode) and fingerprint; a
//!   file rotated while the shipper was down is found again in its directory and
//!   drained from the saved offset.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::batcher::PosRef;
use crate::checkpoint::{FileId, FilePosition, Fingerprint};
use crate::glob;

/// Tailer settings.
#[derive(Debug, Clone)]
pub struct TailerConfig {
    /// Paths or glob patterns.
    pub patterns: Vec<String>,
    /// How often patterns are expanded and files checked for rotation.
    pub discover_interval: Duration,
    /// How long a rotated or deleted file must stay idle at EOF before it is closed.
    pub rotate_wait: Duration,
    /// Longest line kept in memory; longer lines are cut (and flagged as overflowed).
    pub max_line_buffer: usize,
    /// Bytes read from one active file per round before moving to the next file.
    pub read_budget: usize,
}

/// The consumer asked the tailer to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop;

/// One complete line and where it ends.
#[derive(Debug)]
pub struct LineInfo<'a> {
    /// The line without its newline (cut to the buffer limit when `overflowed`).
    pub line: &'a [u8],
    /// The line was longer than the buffer limit.
    pub overflowed: bool,
    /// Position just after the line.
    pub pos: PosRef<'a>,
    /// Input bytes the line took (including the newline and any cut part).
    pub source_bytes: u64,
}

/// Receives the tailer's output.
pub trait LineSink {
    /// A complete line.
    fn line(&mut self, info: LineInfo<'_>) -> Result<(), Stop>;
    /// A file was closed after its last line (or its saved position is obsolete).
    fn closed(&mut self, id: FileId) -> Result<(), Stop>;
}

/// Read progress of one open file, shared with other threads (for the pending-bytes
/// gauge, which must stay current while the reader is blocked by backpressure).
#[derive(Debug)]
pub struct FileProgress {
    file: File,
    read_pos: AtomicU64,
}

impl FileProgress {
    /// Bytes in the file after the read position (`fstat`, so it sees growth).
    pub fn unread(&self) -> u64 {
        let size = self.file.metadata().map_or(0, |m| m.len());
        size.saturating_sub(self.read_pos.load(Ordering::Relaxed))
    }
}

/// The open files' progress.
pub type SharedProgress = Arc<Mutex<Vec<Arc<FileProgress>>>>;

/// Sum of unread bytes over the open files.
pub fn unread_bytes(p: &SharedProgress) -> u64 {
    p.lock()
        .map(|v| v.iter().map(|f| f.unread()).sum())
        .unwrap_or(0)
}

#[derive(Debug)]
struct Tracked {
    id: FileId,
    path: PathBuf,
    file: File,
    /// Offset just after the last complete line handed out.
    offset: u64,
    /// Offset of the next byte to read.
    read_pos: u64,
    partial: Vec<u8>,
    overflow: bool,
    fp: Fingerprint,
    draining: bool,
    eof_since: Option<Instant>,
    size: u64,
    progress: Option<Arc<FileProgress>>,
}

/// Follows files; drive it with [`Tailer::poll`].
#[derive(Debug)]
pub struct Tailer {
    cfg: TailerConfig,
    files: Vec<Tracked>,
    saved: HashMap<FileId, FilePosition>,
    next_discovery: Option<Instant>,
    started: bool,
    buf: Vec<u8>,
    shared: SharedProgress,
}

const READ_CHUNK: usize = 256 * 1024;

impl Tailer {
    /// A tailer resuming from `saved` positions (from the positions file).
    pub fn new(cfg: TailerConfig, saved: impl IntoIterator<Item = FilePosition>) -> Self {
        Self {
            cfg,
            files: Vec::new(),
            saved: saved.into_iter().map(|p| (p.id, p)).collect(),
            next_discovery: None,
            started: false,
            buf: vec![0; READ_CHUNK],
            shared: SharedProgress::default(),
        }
    }

    /// Handle on the open files' read progress.
    pub fn progress(&self) -> SharedProgress {
        Arc::clone(&self.shared)
    }

    fn publish_files(&mut self) {
        for t in &mut self.files {
            if t.progress.is_none()
                && let Ok(f) = t.file.try_clone()
            {
                t.progress = Some(Arc::new(FileProgress {
                    file: f,
                    read_pos: AtomicU64::new(t.read_pos),
                }));
            }
        }
        if let Ok(mut v) = self.shared.lock() {
            *v = self
                .files
                .iter()
                .filter_map(|t| t.progress.clone())
                .collect();
        }
    }

    /// Number of open files.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// Bytes known to be in followed files but not read yet.
    pub fn unread_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|t| t.size.saturating_sub(t.read_pos))
            .sum()
    }

    /// Forces a discovery on the next poll.
    pub fn discover_now(&mut self) {
        self.next_discovery = None;
    }

    /// One round: discovery when due, then reading (rotated files first, to their end;
    /// then each active file up to the read budget), then closing idle rotated files.
    /// Returns the number of bytes read (0 means every file is at EOF).
    pub fn poll(&mut self, now: Instant, sink: &mut dyn LineSink) -> Result<usize, Stop> {
        if self.next_discovery.is_none_or(|t| now >= t) {
            self.discover(now, sink)?;
            self.next_discovery = Some(now + self.cfg.discover_interval);
        }
        let mut order: Vec<usize> = (0..self.files.len())
            .filter(|&i| self.files[i].draining)
            .collect();
        order.extend((0..self.files.len()).filter(|&i| !self.files[i].draining));
        let mut total = 0;
        for i in order {
            let budget = if self.files[i].draining {
                usize::MAX
            } else {
                self.cfg.read_budget
            };
            total += self.read_file(i, budget, now, sink)?;
        }
        self.close_idle(now, sink)?;
        Ok(total)
    }

    /// Hands out the unterminated last line of every file (used at the end of a
    /// one-shot run: a file that will not grow any more).
    pub fn flush_partial_lines(&mut self, sink: &mut dyn LineSink) -> Result<(), Stop> {
        for t in &mut self.files {
            emit_partial(t, sink)?;
        }
        Ok(())
    }

    fn discover(&mut self, now: Instant, sink: &mut dyn LineSink) -> Result<(), Stop> {
        let mut seen: Vec<(FileId, PathBuf, u64)> = Vec::new();
        for pattern in &self.cfg.patterns {
            for path in glob::expand(pattern) {
                let path = std::path::absolute(&path).unwrap_or(path);
                match fs::metadata(&path) {
                    Ok(meta) if meta.is_file() => {
                        let id = FileId::of(&meta);
                        if !seen.iter().any(|(s, _, _)| *s == id) {
                            seen.push((id, path, meta.len()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(path = %path.display(), error = %e, "stat failed"),
                }
            }
        }
        // Known files: rename, rotation, deletion, rewrite.
        for i in 0..self.files.len() {
            let t = &mut self.files[i];
            match seen.iter().find(|(id, _, _)| *id == t.id) {
                Some((_, path, size)) => {
                    if t.path != *path {
                        tracing::info!(from = %t.path.display(), to = %path.display(), "file renamed");
                        t.path = path.clone();
                    }
                    t.size = *size;
                    if t.draining {
                        t.draining = false;
                    }
                }
                None => {
                    if !t.draining {
                        tracing::info!(path = %t.path.display(), "file rotated or deleted; reading it to its end");
                        t.draining = true;
                    }
                    if let Ok(m) = t.file.metadata() {
                        t.size = m.len();
                    }
                }
            }
            let rewritten = match t.fp.matches(&t.file) {
                Ok(ok) => !ok,
                Err(e) => {
                    tracing::warn!(path = %t.path.display(), error = %e, "cannot read fingerprint");
                    false
                }
            };
            if rewritten || t.size < t.read_pos {
                self.handle_truncation(i, now);
            } else if !t.fp.is_full()
                && t.size > u64::from(t.fp.len)
                && let Ok(fp) = Fingerprint::of_file(&t.file)
            {
                t.fp = fp;
            }
        }
        // New files.
        for (id, path, _) in seen {
            if self.files.iter().any(|t| t.id == id) {
                continue;
            }
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open input file");
                    continue;
                }
            };
            let Ok(meta) = file.metadata() else { continue };
            if FileId::of(&meta) != id {
                continue; // replaced between stat and open: next discovery handles it
            }
            let Ok(fp) = Fingerprint::of_file(&file) else {
                continue;
            };
            let offset = self.start_offset(id, &file, meta.len());
            tracing::info!(path = %path.display(), offset, "following file");
            if let Some(t) = open_at(id, path, file, fp, offset, meta.len(), false) {
                self.files.push(t);
            }
        }
        if !self.started {
            self.started = true;
            self.recover_saved(sink)?;
        }
        self.publish_files();
        Ok(())
    }

    /// Where to start reading a newly seen file.
    fn start_offset(&mut self, id: FileId, file: &File, size: u64) -> u64 {
        if let Some(s) = self.saved.get(&id)
            && s.offset <= size
            && s.fingerprint.matches(file).unwrap_or(false)
        {
            let off = s.offset;
            self.saved.remove(&id);
            return off;
        }
        let content_match = |fp: &Fingerprint, offset: u64| {
            fp.is_full() && offset <= size && fp.matches(file).unwrap_or(false)
        };
        if let Some(s) = self
            .saved
            .values()
            .find(|s| s.id != id && content_match(&s.fingerprint, s.offset))
        {
            return s.offset;
        }
        if let Some(t) = self
            .files
            .iter()
            .find(|t| t.id != id && content_match(&t.fp, t.offset))
        {
            tracing::info!(path = %t.path.display(), "new file is a copy of a followed file; skipping what was already read");
            return t.offset;
        }
        0
    }

    /// After the first discovery: saved positions of files not found at a watched path.
    fn recover_saved(&mut self, sink: &mut dyn LineSink) -> Result<(), Stop> {
        let saved: Vec<FilePosition> = self.saved.drain().map(|(_, s)| s).collect();
        for s in saved {
            let tracked: Vec<FileId> = self.files.iter().map(|t| t.id).collect();
            let found = find_in_dir(&s.path, |_, id, _| id == s.id && !tracked.contains(&id))
                .filter(|(_, f, size)| {
                    *size >= s.offset && s.fingerprint.matches(f).unwrap_or(false)
                })
                .or_else(|| find_copy(&s.path, &tracked, s.fingerprint, s.offset));
            match found {
                Some((path, file, size)) => {
                    tracing::info!(path = %path.display(), offset = s.offset, "draining a file rotated while stopped");
                    let Ok(meta) = file.metadata() else { continue };
                    let id = FileId::of(&meta);
                    if let Some(t) = open_at(id, path, file, s.fingerprint, s.offset, size, true) {
                        self.files.push(t);
                    }
                    if id != s.id {
                        sink.closed(s.id)?;
                    }
                }
                None => {
                    tracing::debug!(path = %s.path.display(), "saved position of a file that is gone; forgetting it");
                    sink.closed(s.id)?;
                }
            }
        }
        Ok(())
    }

    fn handle_truncation(&mut self, i: usize, now: Instant) {
        let tracked: Vec<FileId> = self.files.iter().map(|t| t.id).collect();
        let t = &mut self.files[i];
        let (old_fp, old_offset, old_read_pos) = (t.fp, t.offset, t.read_pos);
        tracing::warn!(path = %t.path.display(), offset = old_offset, "file truncated or rewritten; reading it from the start");
        let copy = if old_read_pos > 0 {
            find_copy(&t.path, &tracked, old_fp, old_offset)
        } else {
            None
        };
        t.offset = 0;
        t.read_pos = 0;
        t.partial.clear();
        t.overflow = false;
        t.eof_since = None;
        if let Err(e) = t.file.seek(SeekFrom::Start(0)) {
            tracing::warn!(path = %t.path.display(), error = %e, "seek failed");
        }
        t.fp = Fingerprint::of_file(&t.file).unwrap_or_default();
        t.size = t.file.metadata().map(|m| m.len()).unwrap_or(0);
        if let Some(p) = &t.progress {
            p.read_pos.store(0, Ordering::Relaxed);
        }
        if let Some((path, file, size)) = copy {
            tracing::info!(path = %path.display(), offset = old_offset, "reading the rest of the truncated file from its copy");
            let Ok(meta) = file.metadata() else { return };
            if let Some(mut c) = open_at(
                FileId::of(&meta),
                path,
                file,
                old_fp,
                old_offset,
                size,
                true,
            ) {
                c.eof_since = None;
                // Before the truncated file, so the old lines come out first.
                self.files.insert(i, c);
                self.publish_files();
            }
        }
        let _ = now;
    }

    fn read_file(
        &mut self,
        i: usize,
        budget: usize,
        now: Instant,
        sink: &mut dyn LineSink,
    ) -> Result<usize, Stop> {
        let cap = self.cfg.max_line_buffer.max(1);
        let mut total = 0usize;
        loop {
            if total >= budget {
                break;
            }
            let t = &mut self.files[i];
            let n = match t.file.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = %t.path.display(), error = %e, "read failed");
                    break;
                }
            };
            if n == 0 {
                let size = t.file.metadata().map(|m| m.len()).unwrap_or(t.read_pos);
                t.size = size;
                if size < t.read_pos {
                    self.handle_truncation(i, now);
                    break;
                }
                if t.eof_since.is_none() {
                    t.eof_since = Some(now);
                }
                break;
            }
            t.eof_since = None;
            // Check the first bytes after every read, before handing out what it
            // returned: a copytruncate followed by writes past the read position leaves
            // the size above it, and the bytes just read would belong to the new
            // content. If the check fails they are discarded (the old file's rest is in
            // its copy; the new content is read again from the start).
            match t.fp.matches(&t.file) {
                Ok(true) => {
                    // Strengthen a short fingerprint before handing out lines past it,
                    // so positions and truncation checks use as many bytes as exist.
                    if !t.fp.is_full()
                        && let Ok(fp) = Fingerprint::of_file(&t.file)
                    {
                        t.fp = fp;
                    }
                }
                Ok(false) => {
                    self.handle_truncation(i, now);
                    break;
                }
                Err(e) => {
                    tracing::warn!(path = %t.path.display(), error = %e, "cannot read fingerprint")
                }
            }
            total += n;
            let chunk = &self.buf[..n];
            let mut start = 0usize;
            for nl in memchr::memchr_iter(b'\n', chunk) {
                let seg = &chunk[start..nl];
                let end = t.read_pos + nl as u64 + 1;
                if t.partial.is_empty() && !t.overflow {
                    let overflowed = seg.len() > cap;
                    let source_bytes = end - t.offset;
                    t.offset = end;
                    sink.line(LineInfo {
                        line: if overflowed { &seg[..cap] } else { seg },
                        overflowed,
                        pos: PosRef {
                            id: t.id,
                            path: &t.path,
                            fingerprint: t.fp,
                            offset: end,
                        },
                        source_bytes,
                    })?;
                } else {
                    append_capped(&mut t.partial, &mut t.overflow, seg, cap);
                    send_partial(t, end, sink)?;
                }
                start = nl + 1;
            }
            append_capped(&mut t.partial, &mut t.overflow, &chunk[start..], cap);
            t.read_pos += n as u64;
            if let Some(p) = &t.progress {
                p.read_pos.store(t.read_pos, Ordering::Relaxed);
            }
            if t.read_pos > t.size {
                t.size = t.read_pos;
            }
        }
        Ok(total)
    }

    fn close_idle(&mut self, now: Instant, sink: &mut dyn LineSink) -> Result<(), Stop> {
        let mut i = 0;
        while i < self.files.len() {
            let t = &mut self.files[i];
            let idle = t.draining
                && t.eof_since
                    .is_some_and(|s| now.duration_since(s) >= self.cfg.rotate_wait);
            if idle {
                emit_partial(t, sink)?;
                tracing::info!(path = %t.path.display(), "closing rotated file");
                let id = t.id;
                self.files.remove(i);
                self.publish_files();
                sink.closed(id)?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }
}

fn append_capped(buf: &mut Vec<u8>, overflow: &mut bool, data: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len());
    if data.len() > room {
        buf.extend_from_slice(&data[..room]);
        *overflow = true;
    } else {
        buf.extend_from_slice(data);
    }
}

fn emit_partial(t: &mut Tracked, sink: &mut dyn LineSink) -> Result<(), Stop> {
    if t.partial.is_empty() && !t.overflow {
        return Ok(());
    }
    let end = t.read_pos;
    send_partial(t, end, sink)
}

/// Hands out the line collected in `t.partial`, which ends at `end`.
fn send_partial(t: &mut Tracked, end: u64, sink: &mut dyn LineSink) -> Result<(), Stop> {
    let source_bytes = end - t.offset;
    t.offset = end;
    let r = sink.line(LineInfo {
        line: &t.partial,
        overflowed: t.overflow,
        pos: PosRef {
            id: t.id,
            path: &t.path,
            fingerprint: t.fp,
            offset: end,
        },
        source_bytes,
    });
    t.partial.clear();
    t.overflow = false;
    r
}

fn open_at(
    id: FileId,
    path: PathBuf,
    mut file: File,
    fp: Fingerprint,
    offset: u64,
    size: u64,
    draining: bool,
) -> Option<Tracked> {
    if let Err(e) = file.seek(SeekFrom::Start(offset)) {
        tracing::warn!(path = %path.display(), error = %e, "seek failed");
        return None;
    }
    Some(Tracked {
        id,
        path,
        file,
        offset,
        read_pos: offset,
        partial: Vec::new(),
        overflow: false,
        fp,
        draining,
        eof_since: None,
        size,
        progress: None,
    })
}

/// First regular file in `path`'s directory accepted by `pred(path, id, size)`,
/// newest modification first.
fn find_in_dir(
    path: &Path,
    pred: impl Fn(&Path, FileId, u64) -> bool,
) -> Option<(PathBuf, File, u64)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut candidates: Vec<(std::time::SystemTime, PathBuf, FileId, u64)> = Vec::new();
    for entry in fs::read_dir(dir).ok()?.filter_map(Result::ok).take(10_000) {
        let p = entry.path();
        let Ok(meta) = fs::metadata(&p) else { continue };
        if !meta.is_file() {
            continue;
        }
        let id = FileId::of(&meta);
        if pred(&p, id, meta.len()) {
            candidates.push((
                meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                p,
                id,
                meta.len(),
            ));
        }
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, p, id, size) in candidates {
        if let Ok(f) = File::open(&p)
            && f.metadata().is_ok_and(|m| FileId::of(&m) == id)
        {
            return Some((p, f, size));
        }
    }
    None
}

/// A copy of `path` made by copytruncate: same directory, a name that starts with the
/// original's, not followed yet, at least `offset` bytes, same first bytes.
fn find_copy(
    path: &Path,
    tracked: &[FileId],
    fp: Fingerprint,
    offset: u64,
) -> Option<(PathBuf, File, u64)> {
    if fp.len == 0 {
        return None;
    }
    let base = path.file_name()?.to_owned();
    let base = base.as_encoded_bytes();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = dir.to_path_buf();

    find_in_dir(path, |p, id, size| {
        let name_ok = p.file_name().is_some_and(|n| {
            let n = n.as_encoded_bytes();
            n.len() > base.len() && n.starts_with(base)
        });
        name_ok
            && p.parent() == Some(dir.as_path())
            && !tracked.contains(&id)
            && size >= offset
            && size >= u64::from(fp.len)
            && File::open(p).and_then(|f| fp.matches(&f)).unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Default)]
    struct Collect {
        lines: Vec<String>,
        closed: Vec<FileId>,
        last: HashMap<FileId, u64>,
    }

    impl LineSink for Collect {
        fn line(&mut self, info: LineInfo<'_>) -> Result<(), Stop> {
            self.lines
                .push(String::from_utf8_lossy(info.line).into_owned());
            self.last.insert(info.pos.id, info.pos.offset);
            Ok(())
        }
        fn closed(&mut self, id: FileId) -> Result<(), Stop> {
            self.closed.push(id);
            Ok(())
        }
    }

    fn cfg(pattern: String) -> TailerConfig {
        TailerConfig {
            patterns: vec![pattern],
            discover_interval: Duration::ZERO,
            rotate_wait: Duration::ZERO,
            max_line_buffer: 16,
            read_budget: 1 << 20,
        }
    }

    fn append(p: &Path, s: &str) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn partial_lines_long_lines_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        append(&log, "one\ntw");
        let mut t = Tailer::new(cfg(log.display().to_string()), []);
        let mut c = Collect::default();
        let now = Instant::now();
        t.poll(now, &mut c).unwrap();
        assert_eq!(c.lines, vec!["one"]);
        append(&log, "o\n0123456789abcdefghij\n");
        t.poll(now, &mut c).unwrap();
        assert_eq!(c.lines, vec!["one", "two", "0123456789abcdef"]);
        // rename-and-create: the old file gets one more line after the rename
        fs::rename(&log, d.path().join("app.log.1")).unwrap();
        append(&d.path().join("app.log.1"), "late\n");
        append(&log, "new\n");
        t.poll(now, &mut c).unwrap();
        t.poll(now, &mut c).unwrap();
        assert_eq!(c.lines[3..], ["late", "new"]);
        assert_eq!(c.closed.len(), 1);
        assert_eq!(t.open_files(), 1);
    }

    #[test]
    fn resume_from_saved_position_and_detect_inode_reuse() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        append(&log, "a\nb\n");
        let meta = fs::metadata(&log).unwrap();
        let f = File::open(&log).unwrap();
        let saved = FilePosition {
            id: FileId::of(&meta),
            path: log.clone(),
            fingerprint: Fingerprint::of_file(&f).unwrap(),
            offset: 2,
        };
        let mut t = Tailer::new(cfg(log.display().to_string()), [saved.clone()]);
        let mut c = Collect::default();
        t.poll(Instant::now(), &mut c).unwrap();
        assert_eq!(c.lines, vec!["b"]);
        // Same inode number but other content: read from the start.
        let wrong = FilePosition {
            fingerprint: Fingerprint { len: 4, hash: 1 },
            ..saved
        };
        let mut t = Tailer::new(cfg(log.display().to_string()), [wrong]);
        let mut c = Collect::default();
        t.poll(Instant::now(), &mut c).unwrap();
        assert_eq!(c.lines, vec!["a", "b"]);
    }

    #[test]
    fn copytruncate_regrown_past_the_read_position_is_caught_before_reading() {
        // The file is copied, truncated and written again beyond the reader's position
        // between two polls: the size never drops below the read position, so only the
        // first bytes tell. The bytes now at the old position must not be read as the
        // continuation of the old file.
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("app.log");
        // Long enough for a full fingerprint, so no check is due for a weak one.
        let line = |name: &str| format!("{name}-{}\n", "x".repeat(400));
        append(&log, &line("old1"));
        let mut t = Tailer::new(
            TailerConfig {
                discover_interval: Duration::from_secs(3600),
                max_line_buffer: 1024,
                ..cfg(log.display().to_string())
            },
            [],
        );
        let mut c = Collect::default();
        let now = Instant::now();
        t.poll(now, &mut c).unwrap();
        append(&log, &line("old2"));
        fs::copy(&log, d.path().join("app.log.1")).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&log, &(line("new1") + &line("new2")));
        t.poll(now, &mut c).unwrap();
        t.poll(now, &mut c).unwrap();
        let names: Vec<&str> = c.lines.iter().map(|l| &l[..4]).collect();
        assert_eq!(names, ["old1", "old2", "new1", "new2"]);
    }
}
