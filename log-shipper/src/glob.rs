//! Minimal glob expansion for input patterns: `*`, `?` and `[...]` / `[!...]` inside
//! any path component (no `**`). A pattern without metacharacters names one file.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Whether `s` contains a glob metacharacter.
pub fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Matches one path component against a pattern component.
pub fn matches(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let (mut star_p, mut star_n) = (usize::MAX, 0usize);
    while n < name.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star_p = p;
                    star_n = n;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((ok, len)) = class(&pat[p..], name[n]) {
                        if ok {
                            p += len;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        if star_p != usize::MAX {
            p = star_p + 1;
            star_n += 1;
            n = star_n;
            continue;
        }
        return false;
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// Parses a `[...]` class at the start of `pat`; returns (matched, class length).
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pat.get(1), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let start = i;
    let mut found = false;
    while i < pat.len() {
        if pat[i] == b']' && i > start {
            return Some((found != negate, i + 1));
        }
        if i + 2 < pat.len() && pat[i + 1] == b'-' && pat[i + 2] != b']' {
            if pat[i] <= c && c <= pat[i + 2] {
                found = true;
            }
            i += 3;
        } else {
            if pat[i] == c {
                found = true;
            }
            i += 1;
        }
    }
    None
}

/// What a pattern expanded to, and what could not be looked at.
#[derive(Debug, Default)]
pub struct Expansion {
    /// Existing paths that match, sorted per directory.
    pub paths: Vec<PathBuf>,
    /// Directories or paths that could not be listed or `stat`ed for another reason than
    /// "does not exist" (permission denied, too many open files, not a directory, I/O
    /// error). When this is not empty the listing is incomplete: a followed file missing
    /// from `paths` may still be there.
    pub errors: Vec<(PathBuf, io::Error)>,
}

/// Expands a pattern into the existing paths it matches, sorted. Non-files are kept
/// (the caller stats them); unreadable directories are skipped.
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    expand_checked(pattern).paths
}

/// Like [`expand`], but reports what could not be listed instead of treating it as
/// empty.
pub fn expand_checked(pattern: &str) -> Expansion {
    let mut out = Expansion::default();
    if !has_meta(pattern) {
        let p = PathBuf::from(pattern);
        match std::fs::metadata(&p) {
            Ok(_) => out.paths.push(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => out.errors.push((p, e)),
        }
        return out;
    }
    let path = Path::new(pattern);
    let mut current: Vec<PathBuf> = vec![PathBuf::new()];
    for comp in path.components() {
        let mut next = Vec::new();
        match comp {
            Component::Normal(os) => {
                let s = os.to_string_lossy();
                if has_meta(&s) {
                    for base in &current {
                        let dir = if base.as_os_str().is_empty() {
                            Path::new(".")
                        } else {
                            base.as_path()
                        };
                        let rd = match std::fs::read_dir(dir) {
                            Ok(rd) => rd,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => {
                                out.errors.push((dir.to_path_buf(), e));
                                continue;
                            }
                        };
                        let mut names = Vec::new();
                        for entry in rd {
                            match entry {
                                Ok(e) => {
                                    let n = e.file_name();
                                    if matches(s.as_bytes(), n.as_encoded_bytes()) {
                                        names.push(n);
                                    }
                                }
                                Err(e) => {
                                    out.errors.push((dir.to_path_buf(), e));
                                    break;
                                }
                            }
                        }
                        names.sort();
                        next.extend(names.into_iter().map(|n| base.join(n)));
                    }
                } else {
                    next.extend(current.iter().map(|b| b.join(os)));
                }
            }
            other => next.extend(current.iter().map(|b| b.join(other.as_os_str()))),
        }
        current = next;
        if current.is_empty() {
            break;
        }
    }
    for p in current {
        match std::fs::metadata(&p) {
            Ok(_) => out.paths.push(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => out.errors.push((p, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.log", "app.log", true),
            ("*.log", "app.log.1", false),
            ("app.log*", "app.log.1", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[ab]x", "bx", true),
            ("[!ab]x", "bx", false),
            ("[a-c]x", "cx", true),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxc", false),
            ("", "", true),
            ("[", "[", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(matches(p.as_bytes(), n.as_bytes()), *want, "{p} vs {n}");
        }
    }

    #[test]
    fn expand_dirs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("s1")).unwrap();
        std::fs::create_dir(d.path().join("s2")).unwrap();
        std::fs::write(d.path().join("s1/a.log"), "").unwrap();
        std::fs::write(d.path().join("s2/b.log"), "").unwrap();
        std::fs::write(d.path().join("s2/c.txt"), "").unwrap();
        let pat = format!("{}/s*/*.log", d.path().display());
        let got = expand(&pat);
        assert_eq!(
            got,
            vec![d.path().join("s1/a.log"), d.path().join("s2/b.log")]
        );
        assert!(expand(&format!("{}/nope.log", d.path().display())).is_empty());
        // A missing directory is an empty listing, not an error.
        let missing = expand_checked(&format!("{}/nope/*.log", d.path().display()));
        assert!(missing.paths.is_empty() && missing.errors.is_empty());
    }

    #[test]
    fn a_directory_that_cannot_be_listed_is_an_error_not_an_empty_listing() {
        // Root ignores permission bits, so the failure is made with a path component
        // that is not a directory (ENOTDIR), which nobody can list.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("logs"), "not a directory").unwrap();
        let x = expand_checked(&format!("{}/logs/*.log", d.path().display()));
        assert!(x.paths.is_empty());
        assert_eq!(x.errors.len(), 1, "{:?}", x.errors);
        let x = expand_checked(&format!("{}/logs/app.log", d.path().display()));
        assert!(x.paths.is_empty());
        assert_eq!(x.errors.len(), 1, "{:?}", x.errors);
    }
}
