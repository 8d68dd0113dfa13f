//! The artifact manifest: `builds/<sha>/manifest.json`, the one contract between
//! `image-builder artifact publish` and every puller (vm-agent).
//!
//! ```json
//! {
//!   "version": 1,
//!   "sha": "3f1c…",
//!   "created_at": "2025-01-31T12:00:00Z",
//!   "files": [
//!     { "path": "bin/tool", "size": 1234, "sha256": "9f86…", "mode": "0755" }
//!   ]
//! }
//! ```
//!
//! Parsing is strict: unknown fields, an unknown version, a sha that is not the
//! one asked for, unsafe paths (absolute, `..`, `.`, empty components,
//! backslashes, the manifest's own name), duplicate paths, a path that is both a
//! file and a directory, malformed digests and mode bits beyond `0o777` are all
//! rejected, so a puller never writes outside its install directory.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The manifest format version this code writes and accepts.
pub const MANIFEST_VERSION: u32 = 1;

/// File name of the manifest inside `builds/<sha>/` (and inside an installed
/// artifact directory).
pub const MANIFEST_NAME: &str = "manifest.json";

/// Largest manifest a puller accepts (bytes).
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// `builds/<sha>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The build's key (a git commit sha, lowercase hex).
    pub sha: String,
    /// When the build was published (RFC 3339, UTC).
    pub created_at: String,
    /// The build's files, sorted by path.
    pub files: Vec<FileEntry>,
}

/// One file of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path with `/` separators; also the object key under `builds/<sha>/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Permission bits (`0o000`–`0o777`), written as an octal string ("0755").
    #[serde(serialize_with = "ser_mode", deserialize_with = "de_mode")]
    pub mode: u32,
}

/// Why a manifest (or a path, sha or digest going into one) was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// Not valid JSON for the schema.
    #[error("manifest is not valid: {0}")]
    Syntax(String),
    /// A version this code does not know.
    #[error("manifest version {found} is not supported (expected {MANIFEST_VERSION})")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The manifest belongs to another sha.
    #[error("manifest is for sha {found}, expected {expected}")]
    ShaMismatch {
        /// The sha asked for.
        expected: String,
        /// The sha in the manifest.
        found: String,
    },
    /// The sha is not lowercase hex of a sensible length.
    #[error("invalid sha {0:?}: expected 7 to 64 lowercase hex digits")]
    InvalidSha(String),
    /// A file path that could escape the install directory or collide.
    #[error("files[{index}].path {path:?}: {reason}")]
    UnsafePath {
        /// Index in `files`.
        index: usize,
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same path twice.
    #[error("files[{index}].path {path:?}: listed twice")]
    Duplicate {
        /// Index of the second occurrence.
        index: usize,
        /// The path.
        path: String,
    },
    /// A path used both as a file and as a directory.
    #[error("files[{index}].path {path:?}: is also a directory of another file")]
    FileDirConflict {
        /// Index in `files`.
        index: usize,
        /// The path.
        path: String,
    },
    /// A digest that is not 64 lowercase hex digits.
    #[error("files[{index}].sha256 {value:?}: expected 64 lowercase hex digits")]
    Digest {
        /// Index in `files`.
        index: usize,
        /// The value.
        value: String,
    },
    /// Mode bits beyond `0o777`.
    #[error("files[{index}].mode {mode:o}: only permission bits 0777 are allowed")]
    Mode {
        /// Index in `files`.
        index: usize,
        /// The mode.
        mode: u32,
    },
}

fn ser_mode<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(serde::de::Error::custom(format!(
            "mode {s:?}: expected an octal string like \"0644\""
        )));
    }
    u32::from_str_radix(&s, 8).map_err(serde::de::Error::custom)
}

/// Check a build sha: 7 to 64 lowercase hex digits (a git sha-1 or sha-256,
/// possibly abbreviated). It becomes an object-key and a directory name.
pub fn validate_sha(sha: &str) -> Result<(), ManifestError> {
    if agent_config::is_build_sha(sha) {
        Ok(())
    } else {
        Err(ManifestError::InvalidSha(sha.to_string()))
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why `path` is not a safe relative artifact path, if it is not.
pub fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("is empty");
    }
    if path.starts_with('/') {
        return Some("is absolute");
    }
    if path.contains('\\') {
        return Some("contains a backslash");
    }
    if path.contains('\0') {
        return Some("contains a NUL byte");
    }
    if path.len() > 1024 {
        return Some("is longer than 1024 bytes");
    }
    for c in path.split('/') {
        match c {
            "" => return Some("has an empty component"),
            "." => return Some("has a `.` component"),
            ".." => return Some("has a `..` component"),
            _ => {}
        }
    }
    if path == MANIFEST_NAME {
        return Some("collides with the manifest");
    }
    None
}

impl Manifest {
    /// A new manifest for `sha` (files sorted by path), stamped now.
    pub fn new(sha: &str, mut files: Vec<FileEntry>) -> Result<Self, ManifestError> {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        // Fixed width (milliseconds, UTC) so the strings sort in time order.
        let created_at = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let m = Self {
            version: MANIFEST_VERSION,
            sha: sha.to_string(),
            created_at,
            files,
        };
        m.validate(sha)?;
        Ok(m)
    }

    /// Parse and validate a manifest that must belong to `expected_sha`.
    pub fn from_json(bytes: &[u8], expected_sha: &str) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        m.validate(expected_sha)?;
        Ok(m)
    }

    /// Serialize (pretty, with a trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Check every rule of the contract.
    pub fn validate(&self, expected_sha: &str) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::Version {
                found: self.version,
            });
        }
        validate_sha(&self.sha)?;
        if self.sha != expected_sha {
            return Err(ManifestError::ShaMismatch {
                expected: expected_sha.to_string(),
                found: self.sha.clone(),
            });
        }
        let mut seen = BTreeSet::new();
        for (index, f) in self.files.iter().enumerate() {
            if let Some(reason) = path_problem(&f.path) {
                return Err(ManifestError::UnsafePath {
                    index,
                    path: f.path.clone(),
                    reason,
                });
            }
            if !seen.insert(f.path.as_str()) {
                return Err(ManifestError::Duplicate {
                    index,
                    path: f.path.clone(),
                });
            }
            if !is_hex64(&f.sha256) {
                return Err(ManifestError::Digest {
                    index,
                    value: f.sha256.clone(),
                });
            }
            if f.mode > 0o777 {
                return Err(ManifestError::Mode {
                    index,
                    mode: f.mode,
                });
            }
        }
        // A path may not be a directory of another path ("a" and "a/b").
        for (index, f) in self.files.iter().enumerate() {
            let mut prefix = f.path.as_str();
            while let Some((dir, _)) = prefix.rsplit_once('/') {
                if seen.contains(dir) {
                    return Err(ManifestError::FileDirConflict {
                        index,
                        path: dir.to_string(),
                    });
                }
                prefix = dir;
            }
        }
        Ok(())
    }

    /// Sum of the file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

impl fmt::Display for FileEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04o} {:>12} {} {}",
            self.mode, self.size, self.sha256, self.path
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
    const D: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn doc(files: &str) -> String {
        format!(
            r#"{{"version":1,"sha":"{SHA}","created_at":"2025-01-01T00:00:00Z","files":[{files}]}}"#
        )
    }

    fn file(path: &str) -> String {
        format!(r#"{{"path":"{path}","size":4,"sha256":"{D}","mode":"0644"}}"#)
    }

    #[test]
    fn round_trip_keeps_octal_mode() {
        let m = Manifest::new(
            SHA,
            vec![FileEntry {
                path: "bin/x".into(),
                size: 4,
                sha256: D.into(),
                mode: 0o755,
            }],
        )
        .unwrap();
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(json.contains(r#""mode": "0755""#), "{json}");
        assert_eq!(Manifest::from_json(json.as_bytes(), SHA).unwrap(), m);
    }

    #[test]
    fn accepts_a_valid_document() {
        let m = Manifest::from_json(doc(&file("a/b.txt")).as_bytes(), SHA).unwrap();
        assert_eq!(m.files[0].mode, 0o644);
        assert_eq!(m.total_bytes(), 4);
    }

    #[test]
    fn rejects_bad_documents() {
        let cases: Vec<(String, &str)> = vec![
            (doc(&file("/etc/passwd")), "is absolute"),
            (doc(&file("a/../../x")), "`..`"),
            (doc(&file("./x")), "`.` component"),
            (doc(&file("a//b")), "empty component"),
            (doc(&file("a\\\\b")), "backslash"),
            (doc(&file("manifest.json")), "collides"),
            (doc(&format!("{},{}", file("x"), file("x"))), "listed twice"),
            (
                doc(&format!("{},{}", file("a"), file("a/b"))),
                "also a directory",
            ),
            (
                doc(&file("x")).replace(D, "ABC"),
                "expected 64 lowercase hex",
            ),
            (
                doc(&file("x")).replace("0644", "4755"),
                "only permission bits",
            ),
            (doc(&file("x")).replace("0644", "rw"), "octal string"),
            (
                doc(&file("x")).replace("\"version\":1", "\"version\":2"),
                "version 2",
            ),
            (
                doc(&file("x")).replace("\"size\"", "\"extra\":1,\"size\""),
                "unknown field",
            ),
            (
                doc(&file("x")).replace(SHA, "ffffffffff"),
                "is for sha ffffffffff",
            ),
        ];
        for (json, want) in cases {
            let err = Manifest::from_json(json.as_bytes(), SHA)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{json}\n=> {err}\nwanted {want}");
        }
    }

    #[test]
    fn sha_rules() {
        assert!(validate_sha(SHA).is_ok());
        assert!(validate_sha("abc1234").is_ok());
        for bad in ["", "abc", "ABCDEF1", "../../x", &"a".repeat(65), "builds/x"] {
            assert!(validate_sha(bad).is_err(), "{bad}");
        }
    }
}
