//! The API token: from the environment or a 0600 file, never printed.

use std::fmt;
use std::path::Path;

use super::error::TokenError;

/// Environment variables read for the token, in order.
pub const TOKEN_ENV_VARS: [&str; 2] = ["DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"];

/// A DigitalOcean API token. Its `Debug` output is redacted, and it has no
/// `Display`, so it cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from a string; `origin` names where it came from, for errors.
    pub fn new(value: &str, origin: &str) -> Result<Self, TokenError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(TokenError::Empty {
                origin: origin.to_owned(),
            });
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(TokenError::Invalid {
                origin: origin.to_owned(),
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// `DIGITALOCEAN_TOKEN`, else `DIGITALOCEAN_ACCESS_TOKEN`.
    pub fn from_env() -> Result<Self, TokenError> {
        for var in TOKEN_ENV_VARS {
            if let Ok(v) = std::env::var(var)
                && !v.trim().is_empty()
            {
                return Self::new(&v, var);
            }
        }
        Err(TokenError::Missing)
    }

    /// Read a token file. Refuses a file that group or others can read or
    /// write (anything wider than 0600), naming the fix.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let read_err = |source| TokenError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::new(&text, &path.display().to_string())
    }

    /// The secret itself: for the `Authorization` header, and for the 0600 secrets file a
    /// fleet hands its workers (their own delete-scoped token). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn debug_is_redacted() {
        let t = Token::new("dop_v1_secretvalue", "test").expect("valid token");
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(shown, "Token(<redacted>)");
    }

    #[test]
    fn empty_and_spaced_tokens_are_refused() {
        assert!(matches!(
            Token::new("  \n", "x"),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            Token::new("ab cd", "x"),
            Err(TokenError::Invalid { .. })
        ));
        assert_eq!(Token::new(" tok\n", "x").expect("trimmed").expose(), "tok");
    }

    #[test]
    fn token_file_must_be_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "dop_v1_abc\n").expect("write token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Token::from_file(&path).expect_err("0644 must be refused");
        let msg = err.to_string();
        assert!(msg.contains("0644") && msg.contains("chmod 600"), "{msg}");
        assert!(!msg.contains("dop_v1_abc"), "{msg}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            Token::from_file(&path).expect("0600 is fine").expose(),
            "dop_v1_abc"
        );
    }

    #[test]
    fn missing_token_file_names_the_path() {
        let err = Token::from_file(Path::new("/nonexistent/do-token")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/do-token"));
    }
}
