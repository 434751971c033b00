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
//!
//! **A failed listing is not a deletion.** When a directory cannot be listed or a path
//! cannot be `stat`ed (permission denied, too many open files, I/O error), the error is
//! counted and the next discovery tries again; a followed file missing from the listing
//! is only taken as rotated or deleted once a `stat` of its own path confirms it (the
//! path is gone, or names another inode). A file that was closed after it went away is
//! remembered (id, fingerprint, offset): if it comes back (a directory that was moved
//! away and back, a listing that failed for longer than the rotate wait) it is resumed
//! from where it was, never read again from its start.
//!
//! **File descriptors.** Each open file holds exactly one descriptor (the pending-bytes
//! gauge `stat`s paths instead of holding a second one). At most `max_open_files`
//! followed files are open at once: the most recently modified ones. The others are
//! *parked*: closed, with their position, fingerprint and any incomplete line kept in
//! memory, and reopened by path (checked by inode) and position when they have new data
//! or become one of the newest again (the policy of Promtail's and Vector's file
//! sources under many files). Files being drained after a rotation or deletion cannot be
//! reopened by path, so they keep their descriptor until they are closed.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

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
    /// Most followed files open at once (one descriptor each); the others are parked
    /// and reopened by position.
    pub max_open_files: usize,
    /// Counters and gauges the tailer updates.
    pub metrics: TailerMetrics,
}

/// Metrics updated by the tailer (registered under their names in `metrics.rs`).
#[derive(Debug, Clone, Default)]
pub struct TailerMetrics {
    /// Directory listings or `stat`s that failed for another reason than "not found".
    pub discovery_errors: Counter,
    /// Files open now (one descriptor each).
    pub open_files: Gauge,
    /// Files followed now (open or parked).
    pub followed_files: Gauge,
    /// Parked files reopened by position.
    pub reopens: Counter,
    /// Bytes of parked files deleted before they were read (lost: no descriptor held).
    pub unread_bytes_lost: Counter,
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
    /// The line's real length in the file, without its newline (larger than
    /// `line.len()` when `overflowed`).
    pub line_len: u64,
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
    /// A file closed earlier (its position forgotten) came back and is followed again
    /// from `pos`: the position must be saved again, or a restart would read the file
    /// from its start.
    fn resumed(&mut self, pos: PosRef<'_>) -> Result<(), Stop> {
        let _ = pos;
        Ok(())
    }
}

/// Read progress of one followed file, shared with other threads (for the pending-bytes
/// gauge, which must stay current while the reader is blocked by backpressure). Holds
/// no descriptor: the size is read with a `stat` of the path, checked by inode.
#[derive(Debug)]
pub struct FileProgress {
    id: FileId,
    path: Mutex<PathBuf>,
    read_pos: AtomicU64,
    size: AtomicU64,
}

impl FileProgress {
    /// Bytes in the file after the read position.
    pub fn unread(&self) -> u64 {
        let known = self.size.load(Ordering::Relaxed);
        let size = self
            .path
            .lock()
            .ok()
            .and_then(|p| fs::metadata(&*p).ok())
            .filter(|m| FileId::of(m) == self.id)
            .map_or(known, |m| m.len());
        size.saturating_sub(self.read_pos.load(Ordering::Relaxed))
    }
}

/// The followed files' progress.
pub type SharedProgress = Arc<Mutex<Vec<Arc<FileProgress>>>>;

/// Sum of unread bytes over the followed files.
pub fn unread_bytes(p: &SharedProgress) -> u64 {
    p.lock()
        .map(|v| v.iter().map(|f| f.unread()).sum())
        .unwrap_or(0)
}

#[derive(Debug)]
struct Tracked {
    id: FileId,
    path: PathBuf,
    /// `None` while parked (over the open-files budget).
    file: Option<File>,
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
    mtime: SystemTime,
    progress: Arc<FileProgress>,
}

impl Tracked {
    fn set_read_pos(&mut self, pos: u64) {
        self.read_pos = pos;
        self.progress.read_pos.store(pos, Ordering::Relaxed);
    }
    fn set_size(&mut self, size: u64) {
        self.size = size;
        self.progress.size.store(size, Ordering::Relaxed);
    }
    fn set_path(&mut self, path: PathBuf) {
        if let Ok(mut p) = self.progress.path.lock() {
            p.clone_from(&path);
        }
        self.path = path;
    }
    fn position(&self) -> FilePosition {
        FilePosition {
            id: self.id,
            path: self.path.clone(),
            fingerprint: self.fp,
            offset: self.offset,
        }
    }
}

/// What a `stat` of a followed file's own path says.
enum Presence {
    /// The path still names the file.
    Present(fs::Metadata),
    /// The path is gone or names another file.
    Absent,
    /// The `stat` failed: nothing is known.
    Unknown(io::Error),
}

fn presence(path: &Path, id: FileId) -> Presence {
    match fs::metadata(path) {
        Ok(m) if m.is_file() && FileId::of(&m) == id => Presence::Present(m),
        Ok(_) => Presence::Absent,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Presence::Absent,
        Err(e) => Presence::Unknown(e),
    }
}

struct Seen {
    id: FileId,
    path: PathBuf,
    size: u64,
    mtime: SystemTime,
}

/// Closed files remembered so that a file coming back resumes where it was.
const REMEMBERED_MAX: usize = 10_000;

/// Follows files; drive it with [`Tailer::poll`].
#[derive(Debug)]
pub struct Tailer {
    cfg: TailerConfig,
    files: Vec<Tracked>,
    /// Positions not attached to a followed file: from the positions file at start, and
    /// of files closed since (so a file that comes back is resumed, not re-read).
    saved: HashMap<FileId, FilePosition>,
    remembered: VecDeque<FileId>,
    /// Saved positions of the start whose files were not found at a watched path yet
    /// (looked for in their directory once a discovery lists everything).
    to_recover: Option<Vec<FileId>>,
    next_discovery: Option<Instant>,
    /// The last discovery could not list everything (logged once per episode).
    listing_failing: bool,
    buf: Vec<u8>,
    shared: SharedProgress,
}

const READ_CHUNK: usize = 256 * 1024;

impl Tailer {
    /// A tailer resuming from `saved` positions (from the positions file).
    pub fn new(cfg: TailerConfig, saved: impl IntoIterator<Item = FilePosition>) -> Self {
        let saved: HashMap<FileId, FilePosition> = saved.into_iter().map(|p| (p.id, p)).collect();
        let to_recover = Some(saved.keys().copied().collect());
        Self {
            cfg,
            files: Vec::new(),
            saved,
            remembered: VecDeque::new(),
            to_recover,
            next_discovery: None,
            listing_failing: false,
            buf: vec![0; READ_CHUNK],
            shared: SharedProgress::default(),
        }
    }

    /// Positions of files closed before this start (the positions file's closed list):
    /// remembered like files closed while running, so a file that comes back is resumed.
    pub fn remember_closed(&mut self, closed: impl IntoIterator<Item = FilePosition>) {
        for p in closed {
            if !self.saved.contains_key(&p.id) {
                self.remember(p);
            }
        }
    }

    /// Handle on the followed files' read progress.
    pub fn progress(&self) -> SharedProgress {
        Arc::clone(&self.shared)
    }

    fn publish_files(&mut self) {
        if let Ok(mut v) = self.shared.lock() {
            *v = self.files.iter().map(|t| Arc::clone(&t.progress)).collect();
        }
        self.cfg.metrics.open_files.set(self.open_files() as i64);
        self.cfg.metrics.followed_files.set(self.files.len() as i64);
    }

    /// Number of open files (descriptors held).
    pub fn open_files(&self) -> usize {
        self.files.iter().filter(|t| t.file.is_some()).count()
    }

    /// Number of followed files (open or parked).
    pub fn followed_files(&self) -> usize {
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

    fn budget(&self) -> usize {
        self.cfg.max_open_files.max(1)
    }

    /// One round: discovery when due, then reading (rotated files first, to their end;
    /// then each active file up to the read budget; a parked file with new data is
    /// reopened for its turn), then closing idle rotated files.
    /// Returns the number of bytes read (0 means every file is at EOF).
    pub fn poll(&mut self, now: Instant, sink: &mut dyn LineSink) -> Result<usize, Stop> {
        if self.next_discovery.is_none_or(|t| now >= t) {
            self.discover(now, sink)?;
            self.next_discovery = Some(now + self.cfg.discover_interval);
        }
        let mut order: Vec<FileId> = self
            .files
            .iter()
            .filter(|t| t.draining)
            .map(|t| t.id)
            .collect();
        order.extend(self.files.iter().filter(|t| !t.draining).map(|t| t.id));
        let mut total = 0;
        let mut reopened = false;
        for id in order {
            let Some(i) = self.index_of(id) else { continue };
            let parked = self.files[i].file.is_none();
            if parked {
                let t = &self.files[i];
                if t.draining || t.size <= t.read_pos || !self.reopen(i) {
                    continue;
                }
                reopened = true;
            }
            let budget = if self.files[i].draining {
                usize::MAX
            } else {
                self.cfg.read_budget
            };
            total += self.read_file(i, budget, now, sink)?;
            if parked
                && self.open_files() > self.budget()
                && let Some(j) = self.index_of(id)
            {
                self.park(j);
            }
        }
        if reopened {
            self.publish_files();
        }
        self.close_idle(now, sink)?;
        Ok(total)
    }

    fn index_of(&self, id: FileId) -> Option<usize> {
        self.files.iter().position(|t| t.id == id)
    }

    /// Reopens a parked file at its read position; false when it cannot be (the next
    /// discovery finds out why).
    fn reopen(&mut self, i: usize) -> bool {
        let t = &mut self.files[i];
        let mut f = match File::open(&t.path) {
            Ok(f) => f,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    self.cfg.metrics.discovery_errors.inc();
                }
                tracing::debug!(path = %t.path.display(), error = %e, "cannot reopen parked file");
                return false;
            }
        };
        match f.metadata() {
            Ok(m) if FileId::of(&m) == t.id => {}
            _ => return false, // the path names another file now: rotation, next discovery
        }
        if let Err(e) = f.seek(SeekFrom::Start(t.read_pos)) {
            tracing::warn!(path = %t.path.display(), error = %e, "seek failed");
            return false;
        }
        t.file = Some(f);
        self.cfg.metrics.reopens.inc();
        true
    }

    /// Closes a followed file's descriptor, keeping its position (and any incomplete
    /// line) in memory. Draining files cannot be reopened by path and are never parked.
    fn park(&mut self, i: usize) {
        let t = &mut self.files[i];
        if !t.draining {
            t.file = None;
        }
    }

    /// Keeps the most recently modified files open, within the budget (draining files
    /// keep their descriptor and count against it).
    fn enforce_budget(&mut self) {
        let draining_open = self
            .files
            .iter()
            .filter(|t| t.draining && t.file.is_some())
            .count();
        let slots = self.budget().saturating_sub(draining_open);
        let mut idx: Vec<usize> = (0..self.files.len())
            .filter(|&i| !self.files[i].draining)
            .collect();
        idx.sort_by_key(|&i| std::cmp::Reverse(self.files[i].mtime));
        // Park first, so reopening never goes over the budget.
        for &i in idx.iter().skip(slots) {
            self.park(i);
        }
        for &i in idx.iter().take(slots) {
            if self.files[i].file.is_none() {
                self.reopen(i);
            }
        }
    }

    /// Hands out the unterminated last line of every file (used at the end of a
    /// one-shot run: a file that will not grow any more).
    pub fn flush_partial_lines(&mut self, sink: &mut dyn LineSink) -> Result<(), Stop> {
        for t in &mut self.files {
            emit_partial(t, sink)?;
        }
        Ok(())
    }

    fn listing_error(&mut self, path: &Path, e: &io::Error) {
        self.cfg.metrics.discovery_errors.inc();
        if !self.listing_failing {
            tracing::warn!(path = %path.display(), error = %e, "cannot list or stat an input path; followed files are kept as they are and the listing is retried (a failed listing is not a deletion)");
        } else {
            tracing::debug!(path = %path.display(), error = %e, "listing still failing");
        }
    }

    fn remember(&mut self, pos: FilePosition) {
        let id = pos.id;
        if self.saved.insert(id, pos).is_none() {
            self.remembered.push_back(id);
        }
        while self.remembered.len() > REMEMBERED_MAX {
            if let Some(old) = self.remembered.pop_front() {
                self.saved.remove(&old);
            }
        }
    }

    fn discover(&mut self, now: Instant, sink: &mut dyn LineSink) -> Result<(), Stop> {
        let mut seen: Vec<Seen> = Vec::new();
        let mut complete = true;
        let patterns = self.cfg.patterns.clone();
        for pattern in &patterns {
            let x = glob::expand_checked(pattern);
            for (p, e) in &x.errors {
                complete = false;
                self.listing_error(p, e);
            }
            for path in x.paths {
                let path = std::path::absolute(&path).unwrap_or(path);
                match fs::metadata(&path) {
                    Ok(meta) if meta.is_file() => {
                        let id = FileId::of(&meta);
                        if !seen.iter().any(|s| s.id == id) {
                            seen.push(Seen {
                                id,
                                path,
                                size: meta.len(),
                                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        complete = false;
                        self.listing_error(&path, &e);
                    }
                }
            }
        }
        if complete && self.listing_failing {
            tracing::info!("input paths can be listed again");
        }
        self.listing_failing = !complete;

        // Known files: rename, rotation, deletion, rewrite.
        let mut gone: Vec<FileId> = Vec::new();
        let ids: Vec<FileId> = self.files.iter().map(|t| t.id).collect();
        for id in ids {
            let Some(i) = self.index_of(id) else { continue };
            if let Some(s) = seen.iter().find(|s| s.id == id) {
                let t = &mut self.files[i];
                if t.path != s.path {
                    tracing::info!(from = %t.path.display(), to = %s.path.display(), "file renamed");
                    t.set_path(s.path.clone());
                }
                t.set_size(s.size);
                t.mtime = s.mtime;
                t.draining = false;
            } else {
                let (path, draining) = (self.files[i].path.clone(), self.files[i].draining);
                match presence(&path, id) {
                    Presence::Present(m) => {
                        // The listing missed it (it failed, or the file moved between
                        // the listing and now): still there.
                        let t = &mut self.files[i];
                        t.set_size(m.len());
                        t.mtime = m.modified().unwrap_or(t.mtime);
                    }
                    Presence::Unknown(e) => {
                        // Nothing is known: keep the file as it is, try again later.
                        self.listing_error(&path, &e);
                    }
                    Presence::Absent if draining => {
                        let t = &mut self.files[i];
                        if let Some(m) = t.file.as_ref().and_then(|f| f.metadata().ok()) {
                            t.set_size(m.len());
                        }
                    }
                    Presence::Absent => {
                        if self.files[i].file.is_some() {
                            tracing::info!(path = %path.display(), "file rotated or deleted; reading it to its end");
                            let t = &mut self.files[i];
                            t.draining = true;
                            if let Some(m) = t.file.as_ref().and_then(|f| f.metadata().ok()) {
                                t.set_size(m.len());
                            }
                        } else {
                            // Parked: look for it in its directory (renamed by rotation).
                            let fp = self.files[i].fp;
                            let read_pos = self.files[i].read_pos;
                            let found =
                                find_in_dir(&path, |_, fid, size| fid == id && size >= read_pos)
                                    .map(|o| o.filter(|(_, f, _)| fp.matches(f).unwrap_or(false)));
                            match found {
                                Ok(Some((p, mut f, size))) => {
                                    if f.seek(SeekFrom::Start(read_pos)).is_ok() {
                                        tracing::info!(from = %path.display(), to = %p.display(), "parked file rotated; reading it to its end");
                                        let t = &mut self.files[i];
                                        t.file = Some(f);
                                        t.set_path(p);
                                        t.set_size(size);
                                        t.draining = true;
                                        self.cfg.metrics.reopens.inc();
                                    }
                                }
                                Ok(None) => {
                                    let t = &self.files[i];
                                    let unread = t.size.saturating_sub(t.read_pos);
                                    if unread > 0 {
                                        self.cfg.metrics.unread_bytes_lost.inc_by(unread);
                                        tracing::warn!(path = %path.display(), unread_bytes = unread, "a parked file was deleted before its end was read; its unread bytes are lost (raise max_open_files)");
                                    } else {
                                        tracing::info!(path = %path.display(), "parked file deleted");
                                    }
                                    gone.push(id);
                                }
                                Err(e) => self.listing_error(&path, &e),
                            }
                        }
                    }
                }
            }
            let Some(i) = self.index_of(id) else { continue };
            let t = &mut self.files[i];
            let rewritten = match t.file.as_ref().map(|f| t.fp.matches(f)) {
                Some(Ok(ok)) => !ok,
                Some(Err(e)) => {
                    tracing::warn!(path = %t.path.display(), error = %e, "cannot read fingerprint");
                    false
                }
                None => false,
            };
            if rewritten || t.size < t.read_pos {
                self.handle_truncation(i, now);
            } else if !t.fp.is_full()
                && t.size > u64::from(t.fp.len)
                && let Some(Ok(fp)) = t.file.as_ref().map(Fingerprint::of_file)
            {
                t.fp = fp;
            }
        }
        for id in gone {
            if let Some(i) = self.index_of(id) {
                let t = self.files.remove(i);
                self.remember(t.position());
                sink.closed(id)?;
            }
        }

        // New files, the most recently modified first (they get the open slots).
        let mut new: Vec<Seen> = seen
            .into_iter()
            .filter(|s| self.index_of(s.id).is_none())
            .collect();
        new.sort_by_key(|s| std::cmp::Reverse(s.mtime));
        for s in new {
            let file = match File::open(&s.path) {
                Ok(f) => f,
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        self.listing_error(&s.path, &e);
                    }
                    continue;
                }
            };
            let Ok(meta) = file.metadata() else { continue };
            if FileId::of(&meta) != s.id {
                continue; // replaced between stat and open: next discovery handles it
            }
            let Ok(fp) = Fingerprint::of_file(&file) else {
                continue;
            };
            let was_closed = self.remembered.contains(&s.id);
            let offset = self.start_offset(s.id, &file, meta.len());
            let resumed = was_closed && !self.saved.contains_key(&s.id);
            if resumed {
                self.remembered.retain(|x| *x != s.id);
                tracing::info!(path = %s.path.display(), offset, "a file closed earlier is back; resuming it from its position");
            } else {
                tracing::info!(path = %s.path.display(), offset, "following file");
            }
            if let Some(mut t) = open_at(s.id, s.path, file, fp, offset, meta.len(), false) {
                t.mtime = s.mtime;
                if resumed {
                    sink.resumed(PosRef {
                        id: t.id,
                        path: &t.path,
                        fingerprint: t.fp,
                        offset: t.offset,
                    })?;
                }
                self.files.push(t);
                if self.open_files() > self.budget() {
                    let last = self.files.len() - 1;
                    self.park(last);
                }
            }
        }
        if complete && self.to_recover.is_some() {
            self.recover_saved(sink)?;
        }
        self.enforce_budget();
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

    /// After a discovery that listed everything: saved positions of the start whose
    /// files were not found at a watched path. A directory that cannot be searched
    /// leaves the position for the next discovery (never forgotten on an error).
    fn recover_saved(&mut self, sink: &mut dyn LineSink) -> Result<(), Stop> {
        let Some(ids) = self.to_recover.take() else {
            return Ok(());
        };
        let mut retry = Vec::new();
        for sid in ids {
            let Some(s) = self.saved.get(&sid).cloned() else {
                continue; // matched by a discovery
            };
            if self.index_of(sid).is_some() {
                continue;
            }
            let tracked: Vec<FileId> = self.files.iter().map(|t| t.id).collect();
            let found = match find_in_dir(&s.path, |_, id, _| id == s.id && !tracked.contains(&id))
            {
                Ok(Some((path, file, size)))
                    if size >= s.offset && s.fingerprint.matches(&file).unwrap_or(false) =>
                {
                    Ok(Some((path, file, size)))
                }
                Ok(_) => find_copy(&s.path, &tracked, s.fingerprint, s.offset),
                Err(e) => Err(e),
            };
            match found {
                Ok(Some((path, file, size))) => {
                    tracing::info!(path = %path.display(), offset = s.offset, "draining a file rotated while stopped");
                    self.saved.remove(&sid);
                    let Ok(meta) = file.metadata() else { continue };
                    let id = FileId::of(&meta);
                    if let Some(t) = open_at(id, path, file, s.fingerprint, s.offset, size, true) {
                        self.files.push(t);
                    }
                    if id != s.id {
                        sink.closed(s.id)?;
                    }
                }
                Ok(None) => {
                    // Gone (or its directory is away): closed, but remembered, so that
                    // it is resumed if it comes back.
                    tracing::debug!(path = %s.path.display(), "saved position of a file that is gone; remembering it as closed");
                    self.saved.remove(&sid);
                    sink.closed(s.id)?;
                    self.remember(s);
                }
                Err(e) => {
                    self.listing_error(&s.path, &e);
                    retry.push(sid);
                }
            }
        }
        if !retry.is_empty() {
            self.to_recover = Some(retry);
        }
        Ok(())
    }

    fn handle_truncation(&mut self, i: usize, now: Instant) {
        let tracked: Vec<FileId> = self.files.iter().map(|t| t.id).collect();
        let t = &mut self.files[i];
        let (old_fp, old_offset, old_read_pos) = (t.fp, t.offset, t.read_pos);
        tracing::warn!(path = %t.path.display(), offset = old_offset, "file truncated or rewritten; reading it from the start");
        let copy = if old_read_pos > 0 {
            find_copy(&t.path, &tracked, old_fp, old_offset).unwrap_or(None)
        } else {
            None
        };
        t.offset = 0;
        t.set_read_pos(0);
        t.partial.clear();
        t.overflow = false;
        t.eof_since = None;
        match t.file.as_mut() {
            Some(f) => {
                if let Err(e) = f.seek(SeekFrom::Start(0)) {
                    tracing::warn!(path = %t.path.display(), error = %e, "seek failed");
                }
                t.fp = Fingerprint::of_file(f).unwrap_or_default();
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                t.set_size(size);
            }
            None => {
                // Parked: the fingerprint is taken again when it is reopened.
                t.fp = Fingerprint::default();
            }
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
            let Some(file) = t.file.as_mut() else { break };
            let n = match file.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = %t.path.display(), error = %e, "read failed");
                    break;
                }
            };
            if n == 0 {
                let size = file.metadata().map(|m| m.len()).unwrap_or(t.read_pos);
                t.set_size(size);
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
            match t.fp.matches(file) {
                Ok(true) => {
                    // Strengthen a short fingerprint before handing out lines past it,
                    // so positions and truncation checks use as many bytes as exist.
                    if !t.fp.is_full()
                        && let Ok(fp) = Fingerprint::of_file(file)
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
                        line_len: seg.len() as u64,
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
                    send_partial(t, end, true, sink)?;
                }
                start = nl + 1;
            }
            append_capped(&mut t.partial, &mut t.overflow, &chunk[start..], cap);
            let pos = t.read_pos + n as u64;
            t.set_read_pos(pos);
            if t.read_pos > t.size {
                let size = t.read_pos;
                t.set_size(size);
            }
        }
        Ok(total)
    }

    fn close_idle(&mut self, now: Instant, sink: &mut dyn LineSink) -> Result<(), Stop> {
        let mut i = 0;
        let mut closed = false;
        while i < self.files.len() {
            let t = &mut self.files[i];
            let idle = t.draining
                && t.eof_since
                    .is_some_and(|s| now.duration_since(s) >= self.cfg.rotate_wait);
            if idle {
                emit_partial(t, sink)?;
                tracing::info!(path = %t.path.display(), "closing rotated file");
                let id = t.id;
                let t = self.files.remove(i);
                // Remembered: if it comes back at a watched path (a directory moved
                // away and back), it is resumed, not read again.
                self.remember(t.position());
                closed = true;
                sink.closed(id)?;
            } else {
                i += 1;
            }
        }
        if closed {
            self.publish_files();
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
    send_partial(t, end, false, sink)
}

/// Hands out the line collected in `t.partial`, which ends at `end` (just after its
/// newline when `newline`).
fn send_partial(
    t: &mut Tracked,
    end: u64,
    newline: bool,
    sink: &mut dyn LineSink,
) -> Result<(), Stop> {
    let source_bytes = end - t.offset;
    t.offset = end;
    let r = sink.line(LineInfo {
        line: &t.partial,
        overflowed: t.overflow,
        line_len: source_bytes - u64::from(newline),
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
    let mtime = file
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let progress = Arc::new(FileProgress {
        id,
        path: Mutex::new(path.clone()),
        read_pos: AtomicU64::new(offset),
        size: AtomicU64::new(size),
    });
    Some(Tracked {
        id,
        path,
        file: Some(file),
        offset,
        read_pos: offset,
        partial: Vec::new(),
        overflow: false,
        fp,
        draining,
        eof_since: None,
        size,
        mtime,
        progress,
    })
}

/// First regular file in `path`'s directory accepted by `pred(path, id, size)`,
/// newest modification first. A directory that does not exist holds nothing; one that
/// cannot be listed is an error (not "nothing there").
fn find_in_dir(
    path: &Path,
    pred: impl Fn(&Path, FileId, u64) -> bool,
) -> io::Result<Option<(PathBuf, File, u64)>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut candidates: Vec<(SystemTime, PathBuf, FileId, u64)> = Vec::new();
    for entry in rd.take(10_000) {
        let p = entry?.path();
        let Ok(meta) = fs::metadata(&p) else { continue };
        if !meta.is_file() {
            continue;
        }
        let id = FileId::of(&meta);
        if pred(&p, id, meta.len()) {
            candidates.push((
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
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
            return Ok(Some((p, f, size)));
        }
    }
    Ok(None)
}

/// A copy of `path` made by copytruncate: same directory, a name that starts with the
/// original's, not followed yet, at least `offset` bytes, same first bytes.
fn find_copy(
    path: &Path,
    tracked: &[FileId],
    fp: Fingerprint,
    offset: u64,
) -> io::Result<Option<(PathBuf, File, u64)>> {
    if fp.len == 0 {
        return Ok(None);
    }
    let Some(base) = path.file_name() else {
        return Ok(None);
    };
    let base = base.to_owned();
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
        resumed: Vec<(FileId, u64)>,
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
        fn resumed(&mut self, pos: PosRef<'_>) -> Result<(), Stop> {
            self.resumed.push((pos.id, pos.offset));
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
            max_open_files: 64,
            metrics: TailerMetrics::default(),
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

    fn cfg_glob(dir: &Path, rotate_wait: Duration, max_open_files: usize) -> TailerConfig {
        TailerConfig {
            patterns: vec![format!("{}/*.log", dir.display())],
            discover_interval: Duration::ZERO,
            rotate_wait,
            max_line_buffer: 1024,
            read_budget: 1 << 20,
            max_open_files,
            metrics: TailerMetrics::default(),
        }
    }

    #[test]
    fn a_directory_that_cannot_be_listed_does_not_delete_its_files() {
        // The input directory is replaced by a regular file for a while: listing it
        // and stat-ing the files' paths fail with ENOTDIR (root cannot bypass that, as
        // it can bypass permission bits). The followed files must be kept as they are
        // (not closed, not re-read when the directory is back).
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("logs");
        fs::create_dir(&dir).unwrap();
        for i in 0..5 {
            append(&dir.join(format!("f{i}.log")), &format!("f{i}-a\nf{i}-b\n"));
        }
        let m = TailerMetrics::default();
        let mut c = cfg_glob(&dir, Duration::ZERO, 64);
        c.metrics = m.clone();
        let mut t = Tailer::new(c, []);
        let mut out = Collect::default();
        let now = Instant::now();
        t.poll(now, &mut out).unwrap();
        assert_eq!(out.lines.len(), 10);
        fs::rename(&dir, base.path().join("logs.away")).unwrap();
        fs::write(&dir, "not a directory").unwrap();
        for k in 0..20 {
            t.poll(now + Duration::from_secs(k), &mut out).unwrap();
        }
        assert!(out.closed.is_empty(), "closed {:?}", out.closed);
        assert_eq!(t.followed_files(), 5);
        assert!(
            m.discovery_errors.get() >= 20,
            "{}",
            m.discovery_errors.get()
        );
        fs::remove_file(&dir).unwrap();
        fs::rename(base.path().join("logs.away"), &dir).unwrap();
        append(&dir.join("f0.log"), "f0-c\n");
        for k in 20..25 {
            t.poll(now + Duration::from_secs(k), &mut out).unwrap();
        }
        assert_eq!(out.lines.len(), 11, "{:?}", out.lines);
        assert_eq!(out.lines.last().map(String::as_str), Some("f0-c"));
    }

    #[test]
    fn a_directory_moved_away_and_back_resumes_its_files() {
        // The directory is really gone for longer than the rotate wait: the files are
        // drained through their open handles and closed. When the directory comes back
        // they are resumed from their positions, not read again from the start.
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("logs");
        fs::create_dir(&dir).unwrap();
        for i in 0..5 {
            append(&dir.join(format!("f{i}.log")), &format!("f{i}-a\n"));
        }
        let mut t = Tailer::new(cfg_glob(&dir, Duration::ZERO, 64), []);
        let mut out = Collect::default();
        let now = Instant::now();
        t.poll(now, &mut out).unwrap();
        fs::rename(&dir, base.path().join("logs.away")).unwrap();
        fs::create_dir(&dir).unwrap(); // an empty directory in its place
        append(&base.path().join("logs.away/f1.log"), "f1-late\n");
        t.poll(now, &mut out).unwrap();
        t.poll(now, &mut out).unwrap();
        assert_eq!(out.closed.len(), 5);
        assert_eq!(t.followed_files(), 0);
        fs::remove_dir(&dir).unwrap();
        fs::rename(base.path().join("logs.away"), &dir).unwrap();
        append(&dir.join("f2.log"), "f2-new\n");
        t.poll(now, &mut out).unwrap();
        t.poll(now, &mut out).unwrap();
        let mut lines = out.lines.clone();
        lines.sort();
        assert_eq!(
            lines,
            ["f0-a", "f1-a", "f1-late", "f2-a", "f2-new", "f3-a", "f4-a"],
            "no line twice"
        );
        assert_eq!(t.followed_files(), 5);
        // Their positions are handed out again (the closed files' were forgotten), so a
        // restart now does not read them from the start.
        assert_eq!(out.resumed.len(), 5, "{:?}", out.resumed);
        assert!(out.resumed.iter().all(|(_, off)| *off > 0));
    }

    #[test]
    fn more_files_than_the_budget_are_parked_and_read_by_position() {
        let d = tempfile::tempdir().unwrap();
        let m = TailerMetrics::default();
        let mut c = cfg_glob(d.path(), Duration::ZERO, 3);
        c.metrics = m.clone();
        let mut t = Tailer::new(c, []);
        let mut out = Collect::default();
        let now = Instant::now();
        let mut want = Vec::new();
        for round in 0..4 {
            for i in 0..20 {
                let l = format!("f{i:02}-{round}");
                append(&d.path().join(format!("f{i:02}.log")), &format!("{l}\n"));
                want.push(l);
            }
            // A partial line in a parked file survives parking.
            append(&d.path().join("f05.log"), "half");
            for _ in 0..3 {
                t.poll(now, &mut out).unwrap();
                assert!(t.open_files() <= 3, "{} open", t.open_files());
            }
            append(&d.path().join("f05.log"), &format!("-{round}\n"));
            want.push(format!("half-{round}"));
        }
        t.poll(now, &mut out).unwrap();
        let mut got = out.lines.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(t.followed_files(), 20);
        assert_eq!(m.open_files.get(), 3);
        assert_eq!(m.followed_files.get(), 20);
        assert!(m.reopens.get() > 0);
    }

    #[test]
    fn a_parked_file_deleted_before_it_was_read_counts_its_lost_bytes() {
        let d = tempfile::tempdir().unwrap();
        let m = TailerMetrics::default();
        let mut c = cfg_glob(d.path(), Duration::ZERO, 1);
        c.metrics = m.clone();
        // One read chunk a round per file: files of three chunks are left partly
        // unread after one poll.
        c.read_budget = 1;
        for i in 0..3 {
            let lines: String = (0..3 * READ_CHUNK / 8)
                .map(|n| format!("f{i}-{n:05}\n"))
                .collect();
            append(&d.path().join(format!("f{i}.log")), &lines);
        }
        let mut t = Tailer::new(c, []);
        let mut out = Collect::default();
        t.poll(Instant::now(), &mut out).unwrap();
        let victim = t
            .files
            .iter()
            .find(|f| f.file.is_none() && f.size > f.read_pos)
            .expect("a parked file with unread bytes");
        let unread = victim.size - victim.read_pos;
        fs::remove_file(&victim.path).unwrap();
        t.poll(Instant::now(), &mut out).unwrap();
        assert_eq!(m.unread_bytes_lost.get(), unread);
        assert_eq!(t.followed_files(), 2);
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
