//! Times in the report: RFC 3339 timestamps with milliseconds (UTC) and their serde
//! helpers, and the short durations of the 80-column rendering.

use std::time::SystemTime;

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// serde helpers for `SystemTime` as RFC 3339.
pub mod ts {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }

    /// `Option<SystemTime>`.
    pub mod opt {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::SystemTime;

        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::super::rfc3339(*t)),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// Seconds from `a` to `b` (0 if `b` is earlier).
pub fn secs_between(a: SystemTime, b: SystemTime) -> u64 {
    b.duration_since(a).map(|d| d.as_secs()).unwrap_or(0)
}

/// Short human duration for 80-column output: `42s`, `5m03s`, `2h05m`, `3d04h`.
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(303), "5m03s");
        assert_eq!(short_duration(7500), "2h05m");
        assert_eq!(short_duration(90000), "1d01h");
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_760_000_001_234);
        assert_eq!(rfc3339(t), "2025-10-09T08:53:21.234Z");
    }
}
