//! Validated scalar types of the image spec.
//!
//! Each type checks its value while it is deserialized, so a bad value is reported
//! by the YAML deserializer with the file, line and column of the offending scalar.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Build a newtype around `String` whose `Deserialize` runs `check`.
macro_rules! checked_string {
    ($(#[$meta:meta])* $name:ident, $check:path) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $check(s).map(|()| $name(s.to_owned()))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}

fn check_user_name(s: &str) -> Result<(), String> {
    // The portable subset accepted by Debian's adduser (NAME_REGEX) and by sudoers
    // without escaping.
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid user name {s:?}: expected 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter or '_'"
        ))
    }
}

fn check_group_name(s: &str) -> Result<(), String> {
    check_user_name(s).map_err(|_| {
        format!(
            "invalid group name {s:?}: expected 1-32 characters of a-z, 0-9, '_' or '-', starting with a letter or '_'"
        )
    })
}

fn check_abs_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        return Err(format!(
            "path {s:?} is relative: expected an absolute path starting with '/'"
        ));
    }
    if s.ends_with('/') {
        return Err(format!("path {s:?} ends with '/': expected a file path"));
    }
    if s.split('/').any(|c| c == "..") {
        return Err(format!(
            "path {s:?} contains '..': expected a normalized absolute path"
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(format!("path {s:?} contains a control character"));
    }
    Ok(())
}

fn check_hostname(s: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if s.len() <= 253 && s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "invalid hostname {s:?}: expected dot-separated labels of letters, digits and '-' (RFC 1123)"
        ))
    }
}

fn check_package(s: &str) -> Result<(), String> {
    // `name`, `name=version` or `name/release`, as apt-get install accepts them.
    let (name, rest) = match s.find(['=', '/']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let name_ok = name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let rest_ok = rest.is_none_or(|r| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.:~_".contains(c))
    });
    if name_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "invalid apt package {s:?}: expected a Debian package name, optionally with =VERSION or /RELEASE"
        ))
    }
}

fn check_do_tag(s: &str) -> Result<(), String> {
    if !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-:".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "invalid DigitalOcean tag {s:?}: expected 1-255 characters of letters, digits, '_', '-' or ':'"
        ))
    }
}

fn check_ssh_key(s: &str) -> Result<(), String> {
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    if s.contains('\n') || s.contains('\r') {
        return Err(
            "invalid ssh public key: it spans several lines; give one key per list item".into(),
        );
    }
    let mut parts = s.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "invalid ssh public key {:?}: expected \"TYPE BASE64 [COMMENT]\"",
            truncate(s, 40)
        ));
    };
    if !TYPES.contains(&kind) {
        return Err(format!(
            "invalid ssh public key: unknown key type {kind:?} (expected one of {})",
            TYPES.join(", ")
        ));
    }
    let decoded = decode_base64(blob).ok_or_else(|| {
        format!("invalid ssh public key of type {kind}: the key data is not valid base64")
    })?;
    // The blob starts with the key type as an SSH string: u32 length + bytes.
    let embedded = decoded
        .get(0..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|len| decoded.get(4..4 + len));
    if embedded != Some(kind.as_bytes()) {
        return Err(format!(
            "invalid ssh public key: the key data does not encode a {kind} key (type/data mismatch or truncated key)"
        ));
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Minimal standard base64 decoder (with padding) used only to check ssh keys, so
/// that this module does not depend on the host-only `base64` crate.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad]);
    }
    Some(out)
}

checked_string!(
    /// A Linux user name that needs no escaping in sudoers or shell.
    UserName,
    check_user_name
);
checked_string!(
    /// A Linux group name.
    GroupName,
    check_group_name
);
checked_string!(
    /// A normalized absolute path.
    AbsPath,
    check_abs_path
);
checked_string!(
    /// An RFC 1123 host name.
    Hostname,
    check_hostname
);
checked_string!(
    /// An apt package, optionally pinned (`name=version`, `name/release`).
    Package,
    check_package
);
checked_string!(
    /// A DigitalOcean tag name.
    DoTag,
    check_do_tag
);
checked_string!(
    /// One OpenSSH public key line.
    SshPublicKey,
    check_ssh_key
);

/// Unix permission bits, written in octal (`"0644"`, `"644"`, or an unquoted `0644`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Mode {
    /// Four-digit octal form, as cloud-init's `permissions` expects.
    pub fn octal(self) -> String {
        format!("{:04o}", self.0)
    }

    fn parse_digits(text: &str) -> Result<Self, String> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        if digits.is_empty() || digits.len() > 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "invalid mode {text:?}: expected octal permission bits such as \"0644\""
            ));
        }
        if digits.chars().any(|c| c == '8' || c == '9') {
            return Err(format!(
                "invalid mode {text:?}: '8' and '9' are not octal digits (expected e.g. \"0644\")"
            ));
        }
        u32::from_str_radix(digits, 8)
            .map(Mode)
            .map_err(|e| format!("invalid mode {text:?}: {e}"))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.octal())
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.octal())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("octal permission bits such as \"0644\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mode, E> {
                Mode::parse_digits(v).map_err(E::custom)
            }
            // An unquoted 0644 reaches us as the number 644 (YAML 1.2): its decimal
            // digits are the octal digits the user wrote.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Mode, E> {
                Mode::parse_digits(&format!("{v:04}")).map_err(E::custom)
            }
            // An unquoted 0999 is read as a float by the YAML 1.2 core schema.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Mode, E> {
                if v.fract() == 0.0 && (0.0..=9999.0).contains(&v) {
                    self.visit_u64(v as u64)
                } else {
                    Err(E::custom(format!(
                        "invalid mode {v}: expected octal permission bits such as \"0644\""
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mode, E> {
                if v < 0 {
                    return Err(E::custom(format!("invalid mode {v}: must not be negative")));
                }
                self.visit_u64(v.unsigned_abs())
            }
        }
        d.deserialize_any(V)
    }
}

/// A non-zero duration such as `30m` or `1h30m`.
///
/// `0` is rejected on purpose: a zero timeout is a classic way to say "never" by
/// accident. Where "never" makes sense the spec uses [`Limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string_or_number(d)?;
        if s == "never" {
            return Err(de::Error::custom(
                "\"never\" is not allowed here: expected a duration such as \"30m\"",
            ));
        }
        agent_config::parse_positive_duration(&s)
            .map(Timeout)
            .map_err(de::Error::custom)
    }
}

impl Serialize for Timeout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A timer: a positive duration or `never`. One type and one parsing rule with vm-agent's
/// config (the `agent-config` crate), so the spec and the agent cannot disagree.
pub use agent_config::Limit;

/// A byte size such as `8G`, `512M` or `20GiB` (binary units).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("invalid size {s:?}: expected a number with a unit, e.g. \"8G\"")
        })?;
        let mult: u64 = match unit.trim() {
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "" | "B" => {
                return Err(format!(
                    "invalid size {s:?}: a unit is required (K, M, G or T)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {other:?} (expected K, M, G or T)"
                ));
            }
        };
        if n == 0 {
            return Err(format!("invalid size {s:?}: must be greater than zero"));
        }
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "T"),
            (1 << 30, "G"),
            (1 << 20, "M"),
            (1 << 10, "K"),
        ];
        for (m, u) in UNITS {
            if self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string_or_number(d)?;
        ByteSize::parse(&s).map_err(de::Error::custom)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Accept a string or a bare number and hand back its text, so that `30` gets a
/// helpful "unit required" error instead of a type error.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string such as \"30m\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVp0BSRkPBLThqCMVG5Ox1VZt1nJG6ww0t+iUoU9P5d ci@example";

    #[test]
    fn ssh_keys_are_checked_against_their_embedded_type() {
        assert!(ED25519.parse::<SshPublicKey>().is_ok());
        let mismatched = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        let err = mismatched.parse::<SshPublicKey>().unwrap_err();
        assert!(err.contains("does not encode a ssh-rsa key"), "{err}");
        assert!(
            "ssh-ed25519 not*base64"
                .parse::<SshPublicKey>()
                .unwrap_err()
                .contains("base64")
        );
        assert!(
            "ssh-foo AAAA"
                .parse::<SshPublicKey>()
                .unwrap_err()
                .contains("unknown key type")
        );
        assert!("justoneword".parse::<SshPublicKey>().is_err());
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(Mode::parse_digits("0644").unwrap(), Mode(0o644));
        assert_eq!(Mode::parse_digits("440").unwrap().octal(), "0440");
        assert!(
            Mode::parse_digits("0999")
                .unwrap_err()
                .contains("not octal")
        );
        assert!(Mode::parse_digits("12345").is_err());
        assert!(Mode::parse_digits("rw").is_err());
    }

    #[test]
    fn durations_reject_zero_and_bare_numbers() {
        assert!(
            agent_config::parse_positive_duration("0")
                .unwrap_err()
                .contains("0 is not allowed")
        );
        assert!(
            agent_config::parse_positive_duration("0s")
                .unwrap_err()
                .contains("0 is not allowed")
        );
        assert!(
            agent_config::parse_positive_duration("30")
                .unwrap_err()
                .contains("unit is required")
        );
        assert_eq!(
            agent_config::parse_positive_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
    }

    #[test]
    fn names_paths_packages_tags() {
        assert!("builder".parse::<UserName>().is_ok());
        assert!("no".parse::<UserName>().is_ok());
        assert!("Root".parse::<UserName>().is_err());
        assert!("a b".parse::<UserName>().is_err());
        assert!("/etc/x".parse::<AbsPath>().is_ok());
        assert!("etc/x".parse::<AbsPath>().unwrap_err().contains("relative"));
        assert!("/etc/../x".parse::<AbsPath>().is_err());
        assert!("git=1:2.39.5-0+deb12u1".parse::<Package>().is_ok());
        assert!("curl/bookworm-backports".parse::<Package>().is_ok());
        assert!("rm -rf".parse::<Package>().is_err());
        assert!("image-builder:bake".parse::<DoTag>().is_ok());
        assert!("has space".parse::<DoTag>().is_err());
        assert!("worker-1.example.com".parse::<Hostname>().is_ok());
        assert!("-bad".parse::<Hostname>().is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("8G").unwrap().0, 8 << 30);
        assert_eq!(ByteSize::parse("512M").unwrap().to_string(), "512M");
        assert!(ByteSize::parse("8").is_err());
        assert!(ByteSize::parse("8X").is_err());
    }
}
