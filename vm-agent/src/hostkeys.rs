//! SSH host-key fingerprints (`SHA256:<base64, no padding>`, as `ssh-keygen -l` prints them).

use base64::Engine;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The report type, defined once in the `agent-status` crate (the status report's contract).
pub use agent_status::HostKey;

/// Fingerprint of one public key line (`type base64 [comment]`).
pub fn fingerprint_line(line: &str) -> Option<(String, String)> {
    let mut parts = line.split_whitespace();
    let key_type = parts.next()?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(parts.next()?)
        .ok()?;
    let digest = Sha256::digest(&blob);
    Some((
        key_type.to_string(),
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        ),
    ))
}

/// Fingerprints of `<dir>/ssh_host_*_key.pub`, sorted by file name.
pub fn host_keys(dir: &Path) -> Vec<HostKey> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<HostKey> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("ssh_host_") && name.ends_with("_key.pub")) {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            let (key_type, fingerprint) = fingerprint_line(text.lines().next()?)?;
            Some(HostKey {
                key_type,
                fingerprint,
                file: e.path().display().to_string(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_ssh_keygen_format() {
        // The blob "hello" (not a real key) hashes to a known SHA-256.
        let line = format!(
            "ssh-ed25519 {} root@host",
            base64::engine::general_purpose::STANDARD.encode(b"hello")
        );
        let (t, fp) = fingerprint_line(&line).expect("parses");
        assert_eq!(t, "ssh-ed25519");
        // sha256("hello") = 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
        assert_eq!(fp, "SHA256:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ");
        assert!(fingerprint_line("garbage").is_none());
    }
}
