//! Positions file: where each followed file has been shipped up to.
//!
//! A position is only ever recorded here after Loki accepted every line before it, so
//! a restart resumes without losing lines (at-least-once). The file is versioned JSON,
//! written to `<file>.tmp`, fsynced, renamed over the real file, and the directory is
//! fsynced. Loading reads both the file and a leftover `.tmp` and prefers the newer
//! complete one (a crash between fsync and rename leaves a complete, newer tmp).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Current positions file format version.
pub const VERSION: u32 = 1;
/// Bytes at the start of a file that make up its fingerprint.
pub const FINGERPRINT_MAX_BYTES: u32 = 256;

/// Errors of the positions file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading positions file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing positions file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("positions file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Identity of an open file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// Identity of the file behind `meta`.
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Hash of the first `len` bytes of a file (FNV-1a, 64 bit). Detects inode reuse,
/// copies and truncate-and-rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u32,
    pub hash: u64,
}

/// FNV-1a 64-bit hash.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Fingerprint {
    /// Fingerprint of the first bytes of `file` (up to [`FINGERPRINT_MAX_BYTES`]).
    pub fn of_file(file: &File) -> io::Result<Self> {
        Self::of_file_len(file, FINGERPRINT_MAX_BYTES)
    }

    /// Fingerprint of the first `max` bytes of `file` (fewer if the file is shorter; at
    /// most [`FINGERPRINT_MAX_BYTES`]).
    pub fn of_file_len(file: &File, max: u32) -> io::Result<Self> {
        // On the stack: this runs after every read of a followed file.
        let mut buf = [0u8; FINGERPRINT_MAX_BYTES as usize];
        let buf = &mut buf[..max.min(FINGERPRINT_MAX_BYTES) as usize];
        let mut got = 0;
        while got < buf.len() {
            let n = file.read_at(&mut buf[got..], got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(Self {
            len: got as u32,
            hash: fnv1a(&buf[..got]),
        })
    }

    /// Whether `file` starts with the bytes this fingerprint was taken from.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        let now = Self::of_file_len(file, self.len)?;
        Ok(now == *self)
    }

    /// Whether this fingerprint covers the full [`FINGERPRINT_MAX_BYTES`] (strong enough
    /// to recognise a file by content alone).
    pub fn is_full(&self) -> bool {
        self.len >= FINGERPRINT_MAX_BYTES
    }
}

/// Where one file has been shipped up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    pub id: FileId,
    /// Last path the file was seen at.
    pub path: PathBuf,
    pub fingerprint: Fingerprint,
    /// Byte offset just after the last acknowledged line.
    pub offset: u64,
}

/// The last position of a file that was closed (rotated away, deleted, or gone from its
/// directory), kept for [`CLOSED_RETENTION_MS`] so that a file that comes back — a
/// directory moved away and back, also across a restart — is resumed, not re-read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedPosition {
    pub position: FilePosition,
    /// Unix milliseconds when the file was closed.
    pub closed_unix_ms: u64,
}

/// How long a closed file's position is kept.
pub const CLOSED_RETENTION_MS: u64 = 24 * 3600 * 1000;
/// Most closed positions kept (the oldest go first): bounds the positions file.
pub const CLOSED_MAX: usize = 1_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    version: u32,
    /// Incremented on every write; the higher one wins when both files exist.
    generation: u64,
    /// Unix milliseconds of the write (informational).
    updated_unix_ms: u64,
    files: Vec<FilePosition>,
    /// Files closed recently (absent in files written before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    closed: Vec<ClosedPosition>,
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The positions file and its in-memory state.
#[derive(Debug)]
pub struct Checkpointer {
    path: PathBuf,
    tmp_path: PathBuf,
    generation: u64,
    positions: BTreeMap<FileId, FilePosition>,
    closed: BTreeMap<FileId, ClosedPosition>,
    dirty: bool,
}

fn read_one(path: &Path) -> Result<Option<OnDisk>, CheckpointError> {
    let mut s = String::new();
    match File::open(path) {
        Ok(mut f) => f
            .read_to_string(&mut s)
            .map_err(|source| CheckpointError::Read {
                path: path.to_owned(),
                source,
            })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let d: OnDisk = serde_json::from_str(&s).map_err(|e| CheckpointError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if d.version != VERSION {
        return Err(CheckpointError::Invalid {
            path: path.to_owned(),
            reason: format!("unsupported version {} (expected {VERSION})", d.version),
        });
    }
    Ok(Some(d))
}

impl Checkpointer {
    /// Loads the positions file (or starts empty when there is none). A damaged main
    /// file is an error unless a complete tmp file can stand in for it: the operator
    /// must decide, rather than the shipper silently re-reading or skipping data.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let tmp_path = tmp_path_for(path);
        let main = read_one(path);
        let tmp = read_one(&tmp_path).unwrap_or(None);
        let chosen = match (main, tmp) {
            (Ok(Some(m)), Some(t)) => Some(if t.generation > m.generation { t } else { m }),
            (Ok(Some(m)), None) => Some(m),
            (Ok(None), t) => t,
            (Err(e), Some(t)) => {
                tracing::warn!(error = %e, "positions file unreadable; using the complete temporary file");
                Some(t)
            }
            (Err(e), None) => return Err(e),
        };
        let (generation, positions, closed) = match chosen {
            Some(d) => (
                d.generation,
                d.files.into_iter().map(|p| (p.id, p)).collect(),
                d.closed.into_iter().map(|c| (c.position.id, c)).collect(),
            ),
            None => (0, BTreeMap::new(), BTreeMap::new()),
        };
        let mut c = Self {
            path: path.to_owned(),
            tmp_path,
            generation,
            positions,
            closed,
            dirty: false,
        };
        c.prune_closed(unix_ms_now());
        Ok(c)
    }

    /// Path of the positions file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Current positions.
    pub fn positions(&self) -> impl Iterator<Item = &FilePosition> {
        self.positions.values()
    }

    /// Positions of recently closed files (see [`ClosedPosition`]).
    pub fn closed_positions(&self) -> impl Iterator<Item = &FilePosition> {
        self.closed.values().map(|c| &c.position)
    }

    /// Records acknowledged positions (later ones replace earlier ones) and moves files
    /// that were closed after all their lines were acknowledged to the closed list.
    pub fn apply(&mut self, positions: impl IntoIterator<Item = FilePosition>, forget: &[FileId]) {
        self.apply_at(positions, forget, unix_ms_now());
    }

    fn apply_at(
        &mut self,
        positions: impl IntoIterator<Item = FilePosition>,
        forget: &[FileId],
        now_ms: u64,
    ) {
        for p in positions {
            self.closed.remove(&p.id);
            self.positions.insert(p.id, p);
            self.dirty = true;
        }
        for id in forget {
            if let Some(position) = self.positions.remove(id) {
                self.closed.insert(
                    *id,
                    ClosedPosition {
                        position,
                        closed_unix_ms: now_ms,
                    },
                );
                self.dirty = true;
            }
        }
        self.prune_closed(now_ms);
    }

    /// Drops closed positions older than the retention, then the oldest beyond the cap.
    fn prune_closed(&mut self, now_ms: u64) {
        let before = self.closed.len();
        self.closed
            .retain(|_, c| now_ms.saturating_sub(c.closed_unix_ms) <= CLOSED_RETENTION_MS);
        if self.closed.len() > CLOSED_MAX {
            let mut ages: Vec<(u64, FileId)> = self
                .closed
                .iter()
                .map(|(id, c)| (c.closed_unix_ms, *id))
                .collect();
            ages.sort_unstable();
            for (_, id) in &ages[..ages.len() - CLOSED_MAX] {
                self.closed.remove(id);
            }
        }
        if self.closed.len() != before {
            self.dirty = true;
        }
    }

    /// Whether there are changes not yet written.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Writes the positions atomically (tmp, fsync, rename, fsync directory).
    pub fn write(&mut self) -> Result<(), CheckpointError> {
        let werr = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        self.generation += 1;
        let doc = OnDisk {
            version: VERSION,
            generation: self.generation,
            updated_unix_ms: unix_ms_now(),
            files: self.positions.values().cloned().collect(),
            closed: self.closed.values().cloned().collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| werr(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        bytes.push(b'\n');
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.tmp_path)
                .map_err(werr)?;
            f.write_all(&bytes).map_err(werr)?;
            f.sync_all().map_err(werr)?;
        }
        fs::rename(&self.tmp_path, &self.path).map_err(werr)?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if let Ok(d) = File::open(&dir) {
            // Directory fsync makes the rename durable; not all filesystems allow it.
            let _ = d.sync_all();
        }
        self.dirty = false;
        Ok(())
    }
}

fn tmp_path_for(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ino: u64, offset: u64) -> FilePosition {
        FilePosition {
            id: FileId { dev: 1, ino },
            path: PathBuf::from(format!("/var/log/{ino}.log")),
            fingerprint: Fingerprint {
                len: 10,
                hash: ino * 7,
            },
            offset,
        }
    }

    #[test]
    fn roundtrip_apply_forget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("positions.json");
        let mut c = Checkpointer::load(&path).unwrap();
        assert_eq!(c.positions().count(), 0);
        c.apply([pos(1, 10), pos(2, 20)], &[]);
        c.apply([pos(1, 15)], &[FileId { dev: 1, ino: 2 }]);
        assert!(c.is_dirty());
        c.write().unwrap();
        assert!(!c.is_dirty());
        assert!(!tmp_path_for(&path).exists());
        let c2 = Checkpointer::load(&path).unwrap();
        let all: Vec<_> = c2.positions().cloned().collect();
        assert_eq!(all, vec![pos(1, 15)]);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    #[test]
    fn closed_files_are_kept_for_a_while_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("positions.json");
        // A file written before the closed list existed loads (no `closed` field).
        fs::write(
            &path,
            r#"{"version":1,"generation":3,"updated_unix_ms":0,"files":[]}"#,
        )
        .unwrap();
        let mut c = Checkpointer::load(&path).unwrap();
        let t0 = unix_ms_now();
        c.apply_at([pos(1, 10), pos(2, 20)], &[], t0);
        c.apply_at([], &[FileId { dev: 1, ino: 2 }], t0);
        c.write().unwrap();
        let mut c = Checkpointer::load(&path).unwrap();
        assert_eq!(c.positions().cloned().collect::<Vec<_>>(), vec![pos(1, 10)]);
        assert_eq!(
            c.closed_positions().cloned().collect::<Vec<_>>(),
            vec![pos(2, 20)]
        );
        // It came back: an active position again, no longer closed.
        c.apply_at([pos(2, 25)], &[], t0 + 1);
        assert_eq!(c.closed_positions().count(), 0);
        assert_eq!(c.positions().count(), 2);
        // Retention: a day later it is gone.
        c.apply_at([], &[FileId { dev: 1, ino: 2 }], t0 + 2);
        assert_eq!(c.closed_positions().count(), 1);
        c.apply_at([], &[], t0 + 2 + CLOSED_RETENTION_MS + 1);
        assert_eq!(c.closed_positions().count(), 0);
        // Cap: the oldest go first.
        let n = CLOSED_MAX as u64 + 5;
        c.apply_at((100..100 + n).map(|i| pos(i, 1)), &[], t0);
        for i in 100..100 + n {
            c.apply_at([], &[FileId { dev: 1, ino: i }], t0 + i);
        }
        let kept: Vec<u64> = c.closed_positions().map(|p| p.id.ino).collect();
        assert_eq!(kept.len(), CLOSED_MAX);
        assert_eq!(kept.iter().min(), Some(&105));
    }

    #[test]
    fn prefers_newer_complete_tmp_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let mut c = Checkpointer::load(&path).unwrap();
        c.apply([pos(1, 10)], &[]);
        c.write().unwrap();
        // Simulate a crash after fsync of a newer tmp but before the rename.
        let newer = OnDisk {
            version: 1,
            generation: 99,
            updated_unix_ms: 0,
            files: vec![pos(1, 50)],
            closed: Vec::new(),
        };
        fs::write(tmp_path_for(&path), serde_json::to_vec(&newer).unwrap()).unwrap();
        let c2 = Checkpointer::load(&path).unwrap();
        assert_eq!(c2.positions().next().unwrap().offset, 50);
        // A torn tmp is ignored.
        fs::write(tmp_path_for(&path), b"{\"version\":1,\"gen").unwrap();
        let c3 = Checkpointer::load(&path).unwrap();
        assert_eq!(c3.positions().next().unwrap().offset, 10);
        // A damaged main file without a usable tmp is an error, not a silent reset.
        fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            Checkpointer::load(&path),
            Err(CheckpointError::Invalid { .. })
        ));
        fs::write(
            &path,
            br#"{"version":7,"generation":1,"updated_unix_ms":0,"files":[]}"#,
        )
        .unwrap();
        assert!(matches!(
            Checkpointer::load(&path),
            Err(CheckpointError::Invalid { .. })
        ));
    }

    #[test]
    fn fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"hello world\n").unwrap();
        let f = File::open(&p).unwrap();
        let fp = Fingerprint::of_file(&f).unwrap();
        assert_eq!(fp.len, 12);
        assert!(!fp.is_full());
        assert!(fp.matches(&f).unwrap());
        fs::write(&p, b"hellO world\nmore").unwrap();
        assert!(!fp.matches(&f).unwrap());
        fs::write(&p, vec![b'x'; 1000]).unwrap();
        let fp = Fingerprint::of_file(&f).unwrap();
        assert!(fp.is_full());
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
