//! Spending guardrails from the user's config file
//! (`$XDG_CONFIG_HOME/image-builder/config.toml`, default `~/.config/…`;
//! `IMAGE_BUILDER_CONFIG` names another file):
//!
//! ```toml
//! [spending]
//! max_workers_per_fleet = 10
//! max_workers_total = 20        # every fleet's workers together
//! max_dollars_per_hour = 2.50   # every fleet's workers together, at list price
//! allowed_sizes = ["s-2vcpu-4gb", "s-4vcpu-8gb"]
//! human_only = true             # fleet up / bake --backend digitalocean need a person
//! ```
//!
//! A request over a cap is refused naming the cap and the file. `human_only` refuses the
//! spending commands when stdin is not a terminal or a CI/automation environment is
//! detected, even with `--yes`, and logs the refusal. It is a speed bump against a
//! script or an agent spending by accident, not a security boundary: whoever can edit
//! the file or fake a terminal gets past it.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::FleetError;

/// The `[spending]` table.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spending {
    /// Most workers in one fleet.
    pub max_workers_per_fleet: Option<usize>,
    /// Most workers in all fleets.
    pub max_workers_total: Option<usize>,
    /// Most $/hour of all fleets' workers.
    pub max_dollars_per_hour: Option<f64>,
    /// Sizes a fleet may use (unset: any).
    pub allowed_sizes: Option<Vec<String>>,
    /// Spending commands need a person at a terminal.
    #[serde(default)]
    pub human_only: bool,
}

/// The user config file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Spending guardrails.
    #[serde(default)]
    pub spending: Spending,
    /// The file it came from (None: no file).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// Environment variables that mean "an automation runs this".
const CI_VARS: &[&str] = &[
    "CI",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "BUILDKITE",
    "JENKINS_URL",
    "TF_BUILD",
    "TEAMCITY_VERSION",
    "CIRCLECI",
    "DRONE",
];

impl UserConfig {
    /// The config file's path.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("IMAGE_BUILDER_CONFIG").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(p));
        }
        std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .map(|d| d.join("image-builder/config.toml"))
    }

    /// Load the config file (absent: no caps, no policy).
    pub fn load() -> Result<UserConfig, FleetError> {
        match Self::default_path() {
            Some(p) => Self::load_from(&p),
            None => Ok(UserConfig::default()),
        }
    }

    /// Load `path` (absent: no caps, no policy).
    pub fn load_from(path: &Path) -> Result<UserConfig, FleetError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UserConfig::default()),
            Err(e) => {
                return Err(FleetError::File {
                    path: path.to_owned(),
                    message: e.to_string(),
                });
            }
        };
        let mut cfg: UserConfig = toml::from_str(&text).map_err(|e| FleetError::File {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.path = Some(path.to_owned());
        Ok(cfg)
    }

    fn origin(&self, key: &str) -> String {
        match &self.path {
            Some(p) => format!("spending.{key} in {}", p.display()),
            None => format!("spending.{key}"),
        }
    }

    /// Refuse a fleet of `fleet_workers` of `size` at `hourly` $/hour each, when
    /// `other_workers` (at `other_hourly` $/hour in all) already run in other fleets.
    pub fn check_caps(
        &self,
        size: &str,
        fleet_workers: usize,
        hourly: f64,
        other_workers: usize,
        other_hourly: f64,
    ) -> Result<(), FleetError> {
        let s = &self.spending;
        if let Some(allowed) = &s.allowed_sizes
            && !allowed.iter().any(|a| a == size)
        {
            return Err(FleetError::Policy(format!(
                "size {size} is not allowed by {} (allowed: {})",
                self.origin("allowed_sizes"),
                allowed.join(", ")
            )));
        }
        if let Some(max) = s.max_workers_per_fleet
            && fleet_workers > max
        {
            return Err(FleetError::Policy(format!(
                "{fleet_workers} workers in one fleet is over the cap of {max} ({})",
                self.origin("max_workers_per_fleet")
            )));
        }
        if let Some(max) = s.max_workers_total
            && fleet_workers + other_workers > max
        {
            return Err(FleetError::Policy(format!(
                "{} workers in all fleets ({other_workers} in other fleets) is over the cap of {max} ({})",
                fleet_workers + other_workers,
                self.origin("max_workers_total")
            )));
        }
        let total = hourly * fleet_workers as f64 + other_hourly;
        if let Some(max) = s.max_dollars_per_hour
            && total > max
        {
            return Err(FleetError::Policy(format!(
                "${total:.4}/hour for all fleets is over the cap of ${max:.2}/hour ({})",
                self.origin("max_dollars_per_hour")
            )));
        }
        Ok(())
    }

    /// The human-only policy for `command`: refuse off a terminal or under automation.
    pub fn check_human(&self, command: &str) -> Result<(), FleetError> {
        if !self.spending.human_only {
            return Ok(());
        }
        let why = if let Some(var) = CI_VARS
            .iter()
            .find(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty() && x != "false"))
        {
            Some(format!(
                "an automation environment was detected (${var} is set)"
            ))
        } else if !std::io::stdin().is_terminal() {
            Some("stdin is not a terminal".to_owned())
        } else {
            None
        };
        match why {
            None => Ok(()),
            Some(why) => {
                tracing::warn!(command, reason = %why, "refused by the human-only policy");
                Err(FleetError::Policy(format!(
                    "{command} refused: {why}, and {} asks for a person at a terminal for commands that \
                     spend money (--yes does not override it)",
                    self.origin("human_only")
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> UserConfig {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        UserConfig::load_from(&p).unwrap()
    }

    #[test]
    fn caps_name_themselves_and_the_file() {
        let c = config(
            "[spending]\nmax_workers_per_fleet = 3\nmax_workers_total = 5\nmax_dollars_per_hour = 1.0\nallowed_sizes = [\"s-1vcpu-1gb\"]\n",
        );
        c.check_caps("s-1vcpu-1gb", 3, 0.1, 2, 0.2).unwrap();
        for (size, n, hourly, others, other_hourly, needle) in [
            ("s-8vcpu-16gb", 1, 0.1, 0, 0.0, "spending.allowed_sizes"),
            (
                "s-1vcpu-1gb",
                4,
                0.1,
                0,
                0.0,
                "spending.max_workers_per_fleet",
            ),
            ("s-1vcpu-1gb", 3, 0.1, 3, 0.0, "spending.max_workers_total"),
            (
                "s-1vcpu-1gb",
                2,
                0.5,
                0,
                0.1,
                "spending.max_dollars_per_hour",
            ),
        ] {
            let e = c
                .check_caps(size, n, hourly, others, other_hourly)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && e.contains("config.toml"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[spending]\nmax_workers = 3\n").unwrap();
        let e = UserConfig::load_from(&p).unwrap_err().to_string();
        assert!(e.contains("max_workers") && e.contains("c.toml"), "{e}");
        assert_eq!(
            UserConfig::load_from(&dir.path().join("absent.toml")).unwrap(),
            UserConfig::default()
        );
    }
}
