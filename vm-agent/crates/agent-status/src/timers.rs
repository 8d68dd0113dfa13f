//! The self-destruct timers as the report carries them (vm-agent evaluates them).

use crate::time::ts;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::SystemTime;

/// The timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimerName {
    Idle,
    MaxLifetime,
    NoJob,
    OneShot,
}

impl fmt::Display for TimerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            TimerName::Idle => "idle",
            TimerName::MaxLifetime => "max-lifetime",
            TimerName::NoJob => "no-job",
            TimerName::OneShot => "one-shot",
        })
    }
}

/// Where a timer is. On the wire (and in `vm-agent status`) it is one string:
/// `armed`, `disabled`, `paused: <why>`, `waiting for readiness`, `satisfied: <why>`,
/// `fired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerState {
    /// Counting down (`fires_at` is set).
    Armed,
    /// Its limit is `never`.
    Disabled,
    /// Not counting: the machine is busy (job running, hold, session).
    Paused(String),
    /// Counts from readiness, which has not come yet.
    WaitingForReadiness,
    /// Can no longer fire (a job arrived, for `no-job`).
    Satisfied(String),
    /// Its time has come.
    Fired,
}

impl fmt::Display for TimerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerState::Armed => f.pad("armed"),
            TimerState::Disabled => f.pad("disabled"),
            TimerState::Paused(why) => f.pad(&format!("paused: {why}")),
            TimerState::WaitingForReadiness => f.pad("waiting for readiness"),
            TimerState::Satisfied(why) => f.pad(&format!("satisfied: {why}")),
            TimerState::Fired => f.pad("fired"),
        }
    }
}

impl std::str::FromStr for TimerState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "armed" => TimerState::Armed,
            "disabled" => TimerState::Disabled,
            "waiting for readiness" => TimerState::WaitingForReadiness,
            "fired" => TimerState::Fired,
            _ => match (s.strip_prefix("paused: "), s.strip_prefix("satisfied: ")) {
                (Some(why), _) => TimerState::Paused(why.to_owned()),
                (_, Some(why)) => TimerState::Satisfied(why.to_owned()),
                _ => return Err(format!("unknown timer state {s:?}")),
            },
        })
    }
}

impl Serialize for TimerState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimerState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerStatus {
    pub name: TimerName,
    /// The configured limit (`30m`, `never`).
    pub limit: String,
    /// When it fires if nothing changes.
    #[serde(with = "ts::opt", default)]
    pub fires_at: Option<SystemTime>,
    pub state: TimerState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_names_keep_their_wire_spelling() {
        for (state, wire) in [
            (TimerState::Armed, "armed"),
            (TimerState::Disabled, "disabled"),
            (TimerState::Paused("hold".into()), "paused: hold"),
            (TimerState::WaitingForReadiness, "waiting for readiness"),
            (
                TimerState::Satisfied("a job arrived".into()),
                "satisfied: a job arrived",
            ),
            (TimerState::Fired, "fired"),
        ] {
            let json = serde_json::to_string(&state).unwrap_or_default();
            assert_eq!(json, format!("\"{wire}\""));
            assert_eq!(serde_json::from_str::<TimerState>(&json).ok(), Some(state));
        }
        assert!(serde_json::from_str::<TimerState>("\"asleep\"").is_err());
        for (name, wire) in [
            (TimerName::Idle, "idle"),
            (TimerName::MaxLifetime, "max-lifetime"),
            (TimerName::NoJob, "no-job"),
        ] {
            assert_eq!(serde_json::to_value(name).unwrap_or_default(), wire);
            assert_eq!(name.to_string(), wire);
        }
    }
}
