//! The `vmagent` provisioner's attributes: HCL2 ConfigSpec, Prepare decoding,
//! validation.
//!
//! Only top-level attributes of primitive, list or map types (Debian's 1.6.6
//! panics on nested block specs; see the protocol notes). One table,
//! [`ATTRIBUTES`], feeds both the gob ConfigSpec and the decoder, and a unit test
//! keeps it in step with [`RawConfig`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::wire::gob::{AttrSpec, CtyType};
use crate::wire::msgpack::Value;

/// Attribute types, as (name, cty type).
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    String,
    Bool,
    Number,
    ListString,
    MapString,
}

/// Every attribute the provisioner accepts, with its HCL2 type.
pub const ATTRIBUTES: &[(&str, Ty)] = &[
    ("agent_path", Ty::String),
    ("agent_config", Ty::String),
    ("agent_unit", Ty::String),
    ("build_user", Ty::String),
    ("sudoers", Ty::Bool),
    ("apt_lock_fix", Ty::Bool),
    ("apt_lock_timeout", Ty::String),
    ("wait_apt_idle", Ty::Bool),
    ("wait_for_cloud_init", Ty::Bool),
    ("cloud_init_timeout", Ty::String),
    ("commands", Ty::ListString),
    ("environment", Ty::MapString),
    ("seal", Ty::Bool),
    ("step_timeout", Ty::String),
    ("staging_dir", Ty::String),
    ("use_sudo", Ty::Bool),
];

/// The HCL2 spec Packer enforces (unknown attributes → "Unsupported argument").
pub fn spec() -> Vec<AttrSpec> {
    ATTRIBUTES
        .iter()
        .map(|(name, ty)| AttrSpec {
            name: (*name).to_string(),
            ty: match ty {
                Ty::String => CtyType::String,
                Ty::Bool => CtyType::Bool,
                Ty::Number => CtyType::Number,
                Ty::ListString => CtyType::List(Box::new(CtyType::String)),
                Ty::MapString => CtyType::Map(Box::new(CtyType::String)),
            },
            required: false,
        })
        .collect()
}

/// The attributes as the user wrote them (after merging Prepare's configs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub agent_path: Option<String>,
    pub agent_config: Option<String>,
    pub agent_unit: Option<String>,
    pub build_user: Option<String>,
    pub sudoers: Option<bool>,
    pub apt_lock_fix: Option<bool>,
    pub apt_lock_timeout: Option<DurationValue>,
    pub wait_apt_idle: Option<bool>,
    pub wait_for_cloud_init: Option<bool>,
    pub cloud_init_timeout: Option<DurationValue>,
    pub commands: Option<Vec<String>>,
    pub environment: Option<BTreeMap<String, String>>,
    pub seal: Option<bool>,
    pub step_timeout: Option<DurationValue>,
    pub staging_dir: Option<String>,
    pub use_sudo: Option<bool>,
}

/// A duration: `"10m"`-style text, or a number of seconds (JSON templates).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Text(String),
    Seconds(f64),
}

/// The agent to install.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInstall {
    pub binary: PathBuf,
    pub config: PathBuf,
    /// None: the built-in unit.
    pub unit: Option<PathBuf>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub agent: Option<AgentInstall>,
    /// The user that gets passwordless sudo (None: no sudoers step).
    pub sudoers_user: Option<String>,
    pub apt_lock_fix: bool,
    pub apt_lock_timeout: Duration,
    pub wait_apt_idle: bool,
    pub wait_for_cloud_init: bool,
    pub cloud_init_timeout: Duration,
    pub commands: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub seal: bool,
    pub step_timeout: Duration,
    pub staging_dir: String,
    pub use_sudo: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// One or more problems; Packer shows this text after "Failed to prepare build".
    #[error("vmagent: {} error(s) in the provisioner configuration:\n{}", .0.len(), .0.iter().map(|e| format!("* {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// Merge Prepare's `Configs` into one JSON object of user attributes.
///
/// - JSON templates send the user's map, a map of `packer_*` build settings and a
///   map of generated-data placeholders (`ID`, `Host`, …): only the first is ours.
/// - HCL2 templates send the `packer_*` map, then `bin` holding go-cty JSON
///   (`{"value":{..},"type":..}`, unset attributes as null), then nil.
pub fn merge_configs(
    configs: &[Value],
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let mut out = serde_json::Map::new();
    for (i, c) in configs.iter().enumerate() {
        let obj = match c {
            Value::Nil => continue,
            Value::Bin(_) | Value::Str(_) => {
                let bytes = match c {
                    Value::Bin(b) => b.clone(),
                    Value::Str(s) => s.clone().into_bytes(),
                    _ => Vec::new(),
                };
                let parsed: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ConfigError::Invalid(vec![format!("config #{i} is not go-cty JSON: {e}")])
                })?;
                match parsed.get("value") {
                    Some(serde_json::Value::Object(m)) => m.clone(),
                    Some(serde_json::Value::Null) => continue,
                    _ => {
                        return Err(ConfigError::Invalid(vec![format!(
                            "config #{i}: go-cty JSON without an object \"value\""
                        )]));
                    }
                }
            }
            Value::Map(pairs) => {
                let keys: Vec<&str> = pairs.iter().filter_map(|(k, _)| k.as_str()).collect();
                let build_settings =
                    !keys.is_empty() && keys.iter().all(|k| k.starts_with("packer_"));
                let placeholders = !keys.is_empty()
                    && keys
                        .iter()
                        .all(|k| k.chars().next().is_some_and(|ch| ch.is_ascii_uppercase()));
                if build_settings || placeholders {
                    continue;
                }
                match c.to_json() {
                    serde_json::Value::Object(m) => m,
                    _ => continue,
                }
            }
            other => {
                return Err(ConfigError::Invalid(vec![format!(
                    "config #{i} has an unexpected shape: {other:?}"
                )]));
            }
        };
        for (k, v) in obj {
            if !v.is_null() {
                out.insert(k, v);
            }
        }
    }
    Ok(out)
}

fn duration(
    name: &str,
    v: Option<DurationValue>,
    default: Duration,
    errors: &mut Vec<String>,
) -> Duration {
    let d = match v {
        None => return default,
        Some(DurationValue::Seconds(s)) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
        Some(DurationValue::Seconds(s)) => {
            errors.push(format!("{name}: {s} is not a positive number of seconds"));
            return default;
        }
        Some(DurationValue::Text(t)) => match humantime::parse_duration(t.trim()) {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!(
                    "{name}: {t:?} is not a duration like \"10m\" ({e})"
                ));
                return default;
            }
        },
    };
    if d < Duration::from_secs(1) {
        errors.push(format!("{name}: must be at least 1s"));
    }
    d
}

fn local_file(name: &str, path: &str, errors: &mut Vec<String>) -> PathBuf {
    let p = PathBuf::from(path);
    match std::fs::metadata(&p) {
        Ok(m) if m.is_file() => {}
        Ok(_) => errors.push(format!("{name}: {path:?} is not a regular file")),
        Err(e) => errors.push(format!("{name}: cannot read {path:?}: {e}")),
    }
    p
}

fn valid_user(u: &str) -> bool {
    let mut chars = u.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && u.len() <= 32
}

fn valid_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Decode and validate Prepare's arguments.
pub fn prepare(configs: &[Value]) -> Result<Config, ConfigError> {
    let merged = merge_configs(configs)?;
    let raw: RawConfig = serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|e| ConfigError::Invalid(vec![e.to_string()]))?;
    validate(raw)
}

/// Validate raw attributes, reporting every problem at once.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();

    let agent = match (raw.agent_path.as_deref(), raw.agent_config.as_deref()) {
        (None, None) => {
            if raw.agent_unit.is_some() {
                errors.push("agent_unit: only meaningful together with agent_path".into());
            }
            None
        }
        (None, Some(_)) => {
            errors.push("agent_config: set agent_path too (the agent binary to install)".into());
            None
        }
        (Some(_), None) => {
            errors.push(
                "agent_config: required when agent_path is set (the vm-agent config.toml to install)"
                    .into(),
            );
            None
        }
        (Some(bin), Some(cfg)) => Some(AgentInstall {
            binary: local_file("agent_path", bin, &mut errors),
            config: local_file("agent_config", cfg, &mut errors),
            unit: raw
                .agent_unit
                .as_deref()
                .map(|u| local_file("agent_unit", u, &mut errors)),
        }),
    };
    // The agent config is checked with vm-agent's own parser (the agent-config crate) here,
    // in Prepare, so a typo fails the build before any machine is touched, naming the key.
    if let Some(a) = &agent
        && a.config.is_file()
        && let Err(e) = agent_config::Config::load(&a.config)
    {
        errors.push(format!("agent_config: {e}"));
    }

    let build_user = raw.build_user.filter(|u| !u.is_empty());
    if let Some(u) = &build_user
        && !valid_user(u)
    {
        errors.push(format!(
            "build_user: {u:?} is not a valid user name (lowercase letters, digits, '_' and '-', at most 32)"
        ));
    }
    let sudoers_user = match (raw.sudoers, build_user) {
        (Some(true), None) => {
            errors.push(
                "sudoers: true needs build_user (the user that gets passwordless sudo)".into(),
            );
            None
        }
        (Some(false), _) => None,
        (_, user) => user,
    };

    let commands = raw.commands.unwrap_or_default();
    for (i, c) in commands.iter().enumerate() {
        if c.trim().is_empty() {
            errors.push(format!("commands[{i}]: empty command"));
        }
    }
    let environment = raw.environment.unwrap_or_default();
    for (k, v) in &environment {
        if !valid_env_name(k) {
            errors.push(format!("environment: {k:?} is not a valid variable name"));
        }
        if v.contains('\0') {
            errors.push(format!("environment: value of {k} contains a NUL byte"));
        }
    }

    let staging_dir = raw.staging_dir.unwrap_or_else(|| "/tmp".to_string());
    if !staging_dir.starts_with('/') {
        errors.push(format!(
            "staging_dir: {staging_dir:?} must be an absolute path"
        ));
    }

    let cfg = Config {
        agent,
        sudoers_user,
        apt_lock_fix: raw.apt_lock_fix.unwrap_or(true),
        apt_lock_timeout: duration(
            "apt_lock_timeout",
            raw.apt_lock_timeout,
            Duration::from_secs(600),
            &mut errors,
        ),
        wait_apt_idle: raw.wait_apt_idle.unwrap_or(true),
        wait_for_cloud_init: raw.wait_for_cloud_init.unwrap_or(true),
        cloud_init_timeout: duration(
            "cloud_init_timeout",
            raw.cloud_init_timeout,
            Duration::from_secs(900),
            &mut errors,
        ),
        commands,
        environment,
        seal: raw.seal.unwrap_or(true),
        step_timeout: duration(
            "step_timeout",
            raw.step_timeout,
            Duration::from_secs(1800),
            &mut errors,
        ),
        staging_dir,
        use_sudo: raw.use_sudo.unwrap_or(true),
    };
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_map(pairs: &[(&str, Value)]) -> Value {
        Value::map(pairs.iter().map(|(k, v)| (*k, v.clone())))
    }

    #[test]
    fn spec_and_raw_config_agree() {
        // Every attribute in the spec must deserialize, with a sample of its type.
        let mut obj = serde_json::Map::new();
        for (name, ty) in ATTRIBUTES {
            let sample = match ty {
                Ty::String => serde_json::json!("10m"),
                Ty::Bool => serde_json::json!(false),
                Ty::Number => serde_json::json!(1),
                Ty::ListString => serde_json::json!(["x"]),
                Ty::MapString => serde_json::json!({"K": "v"}),
            };
            obj.insert((*name).to_string(), sample);
        }
        let raw: Result<RawConfig, _> = serde_json::from_value(serde_json::Value::Object(obj));
        assert!(raw.is_ok(), "{raw:?}");
        assert_eq!(spec().len(), ATTRIBUTES.len());
    }

    #[test]
    fn json_template_configs() {
        let cfg = prepare(&[
            user_map(&[
                ("build_user", Value::str("builder")),
                ("step_timeout", Value::Float(90.0)),
                ("commands", Value::Array(vec![Value::str("echo hi")])),
            ]),
            user_map(&[
                ("packer_build_name", Value::str("null")),
                ("packer_core_version", Value::str("1.6.6")),
            ]),
            user_map(&[("ID", Value::str("x")), ("Host", Value::str("y"))]),
        ])
        .unwrap();
        assert_eq!(cfg.sudoers_user.as_deref(), Some("builder"));
        assert_eq!(cfg.step_timeout, Duration::from_secs(90));
        assert_eq!(cfg.commands, vec!["echo hi".to_string()]);
        assert!(cfg.seal && cfg.apt_lock_fix && cfg.wait_for_cloud_init);
        assert_eq!(cfg.staging_dir, "/tmp");
    }

    #[test]
    fn hcl2_cty_json_configs_with_nulls() {
        let cty = br#"{"value":{"build_user":null,"seal":false,"environment":{"A":"1"},"cloud_init_timeout":"2m"},"type":["object",{}]}"#;
        let cfg = prepare(&[
            user_map(&[("packer_build_name", Value::str("x"))]),
            Value::Bin(cty.to_vec()),
            Value::Nil,
        ])
        .unwrap();
        assert!(!cfg.seal);
        assert_eq!(cfg.sudoers_user, None);
        assert_eq!(cfg.cloud_init_timeout, Duration::from_secs(120));
        assert_eq!(cfg.environment.get("A").map(String::as_str), Some("1"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = prepare(&[user_map(&[("bogus", Value::Uint(1))])]).unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_attribute() {
        let err = prepare(&[user_map(&[
            ("agent_path", Value::str("/nonexistent/vm-agent")),
            ("build_user", Value::str("Bad User")),
            ("cloud_init_timeout", Value::str("soon")),
            ("staging_dir", Value::str("tmp")),
            ("environment", user_map(&[("1X", Value::str("v"))])),
        ])])
        .unwrap_err()
        .to_string();
        for needle in [
            "agent_config: required when agent_path is set",
            "build_user: \"Bad User\" is not a valid user name",
            "cloud_init_timeout: \"soon\" is not a duration",
            "staging_dir: \"tmp\" must be an absolute path",
            "environment: \"1X\" is not a valid variable name",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
        assert!(err.starts_with("vmagent: 5 error(s)"), "{err}");
    }

    #[test]
    fn sudoers_needs_a_user_and_agent_files_must_exist() {
        let err = prepare(&[user_map(&[("sudoers", Value::Bool(true))])]).unwrap_err();
        assert!(
            err.to_string().contains("sudoers: true needs build_user"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("vm-agent");
        std::fs::write(&bin, b"\x7fELF").unwrap();
        let err = prepare(&[user_map(&[
            ("agent_path", Value::str(bin.to_str().unwrap())),
            ("agent_config", Value::str(dir.path().to_str().unwrap())),
        ])])
        .unwrap_err();
        assert!(err.to_string().contains("is not a regular file"), "{err}");
        let toml = dir.path().join("config.toml");
        // The agent config is parsed by vm-agent's own parser: a bad key is named.
        std::fs::write(&toml, "[timers]\nidle_timout = \"3m\"\n").unwrap();
        let err = prepare(&[user_map(&[
            ("agent_path", Value::str(bin.to_str().unwrap())),
            ("agent_config", Value::str(toml.to_str().unwrap())),
        ])])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("agent_config: invalid config") && err.contains("idle_timout"),
            "{err}"
        );
        std::fs::write(&toml, "[timers]\nidle_timeout = \"0s\"\n").unwrap();
        let err = prepare(&[user_map(&[
            ("agent_path", Value::str(bin.to_str().unwrap())),
            ("agent_config", Value::str(toml.to_str().unwrap())),
        ])])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("idle_timeout") && err.contains("never"),
            "{err}"
        );
        std::fs::write(&toml, "[timers]\nidle_timeout = \"3m\"\n").unwrap();
        let cfg = prepare(&[user_map(&[
            ("agent_path", Value::str(bin.to_str().unwrap())),
            ("agent_config", Value::str(toml.to_str().unwrap())),
            ("build_user", Value::str("builder")),
            ("sudoers", Value::Bool(false)),
        ])])
        .unwrap();
        assert_eq!(cfg.agent.unwrap().binary, bin);
        assert_eq!(cfg.sudoers_user, None);
    }
}
