//! Keys the fleet makes: a host key pair that workers are given through their user-data
//! (so the tool knows each worker's host key before it first connects: never trust on
//! first use), and the fleet's own SSH identity (its public half authorised for the build
//! user). Both are ed25519, made with the real `ssh-keygen` in a private temporary
//! directory; private halves never pass through argv.

use std::path::Path;
use std::process::Command;

use super::FleetError;

/// An ed25519 key pair in OpenSSH's formats. `Debug` never prints the private half.
#[derive(Clone)]
pub struct KeyPair {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----…`.
    pub private: String,
    /// `ssh-ed25519 AAAA… comment`.
    pub public: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("private", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

impl KeyPair {
    /// `type base64` without the comment (what known_hosts pins).
    pub fn public_key_only(&self) -> String {
        self.public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A new ed25519 key pair with `comment`.
pub fn generate(comment: &str) -> Result<KeyPair, FleetError> {
    let dir = tempfile::Builder::new()
        .prefix("image-builder-key-")
        .tempdir()
        .map_err(|e| FleetError::Tool {
            tool: "ssh-keygen",
            message: format!("cannot make a temporary directory: {e}"),
        })?;
    let path = dir.path().join("key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&path)
        .output()
        .map_err(|e| FleetError::Tool {
            tool: "ssh-keygen",
            message: format!("cannot run it ({e}): apt-get install openssh-client"),
        })?;
    if !out.status.success() {
        return Err(FleetError::Tool {
            tool: "ssh-keygen",
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| FleetError::File {
            path: p.to_owned(),
            message: e.to_string(),
        })
    };
    Ok(KeyPair {
        private: read(&path)?,
        public: read(&path.with_extension("pub"))?.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_pair_and_never_debugs_the_private_half() {
        let k = generate("test@fleet").unwrap();
        assert!(k.private.contains("BEGIN OPENSSH PRIVATE KEY"));
        assert!(k.public.starts_with("ssh-ed25519 ") && k.public.ends_with(" test@fleet"));
        assert_eq!(k.public_key_only().split(' ').count(), 2);
        let d = format!("{k:?}");
        assert!(!d.contains("PRIVATE"), "{d}");
        assert_ne!(generate("x").unwrap().public, generate("x").unwrap().public);
    }
}
