//! Process-level protocol: magic cookie, handshake line, `describe`, naming.
//!
//! ## How the handshake format is chosen (deterministic)
//! Packer 1.6.6 wants `5|unix|ADDR`; Packer 1.7+ wants `5|0|unix|ADDR` and each
//! rejects the other's line. Both start plugins with the same environment, so the
//! plugin decides from, in order:
//! 1. `PACKER_PLUGIN_VMAGENT_PROTOCOL` = `legacy` (or `5`) / `modern` (or `5.0`), if set;
//! 2. how it was started: with **no arguments** (single-component mode, how 1.6.6
//!    starts `packer-provisioner-vmagent`) → legacy; with `start provisioner NAME`
//!    (multi-component mode, how 1.7+ starts `packer-plugin-vmagent`) → modern.
//!
//! Packer 1.6.6 can also run multi-component binaries and 1.7–1.10 can still run
//! loose single-component ones; those two combinations need the variable.

/// Environment variable Packer sets; the SDK refuses to run without it.
pub const MAGIC_COOKIE_KEY: &str = "PACKER_PLUGIN_MAGIC_COOKIE";
/// Its value (the same in 1.6.6 and today).
pub const MAGIC_COOKIE_VALUE: &str =
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// Override for the handshake format.
pub const PROTOCOL_ENV: &str = "PACKER_PLUGIN_VMAGENT_PROTOCOL";
/// Packer's plugin API major version.
pub const API_MAJOR: u32 = 5;
/// Packer's plugin API minor version (modern line only).
pub const API_MINOR: u32 = 0;
/// The component name that makes a modern plugin's type just `<plugin>`.
pub const DEFAULT_NAME: &str = "-packer-default-plugin-name-";
/// Name of our one provisioner.
pub const PROVISIONER: &str = "vmagent";
/// Plugin name (from the binary name `packer-plugin-vmagent`).
pub const PLUGIN: &str = "vmagent";

/// Handshake line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Packer 1.6.6: `5|network|addr`.
    Legacy,
    /// Packer 1.7 and later: `5|0|network|addr`.
    Modern,
}

/// How the process was invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// No arguments: single-component mode.
    Single,
    /// `describe`.
    Describe,
    /// `start provisioner NAME` (`--protobuf` may appear anywhere).
    Start {
        kind: String,
        name: String,
        protobuf: bool,
    },
    /// `--version` / `version`.
    Version,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error(
        "unknown arguments {0:?}: expected no arguments, `describe`, or `start provisioner {PROVISIONER}`"
    )]
    Usage(Vec<String>),
    #[error("this plugin has no {kind} named {name:?} (it has one provisioner, {PROVISIONER:?})")]
    UnknownComponent { kind: String, name: String },
    #[error(
        "{PROTOCOL_ENV}={0:?} is not understood: use `legacy` (Packer 1.6.x) or `modern` (Packer 1.7+)"
    )]
    BadOverride(String),
    #[error(
        "the protobuf protocol is not supported: this plugin describes itself as protocol v1 (gob)"
    )]
    Protobuf,
}

/// Parse the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Invocation, HandshakeError> {
    let protobuf = args.iter().any(|a| a == "--protobuf");
    let rest: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--protobuf")
        .collect();
    match rest.as_slice() {
        [] if !protobuf => Ok(Invocation::Single),
        ["describe"] if !protobuf => Ok(Invocation::Describe),
        ["--version"] | ["version"] => Ok(Invocation::Version),
        ["start", kind, name] => {
            if *kind != "provisioner" || (*name != PROVISIONER && *name != DEFAULT_NAME) {
                return Err(HandshakeError::UnknownComponent {
                    kind: kind.to_string(),
                    name: name.to_string(),
                });
            }
            Ok(Invocation::Start {
                kind: kind.to_string(),
                name: name.to_string(),
                protobuf,
            })
        }
        _ => Err(HandshakeError::Usage(args.to_vec())),
    }
}

/// Pick the handshake format (see the module docs).
pub fn choose(inv: &Invocation, env_override: Option<&str>) -> Result<Protocol, HandshakeError> {
    if let Some(v) = env_override.map(str::trim).filter(|v| !v.is_empty()) {
        return match v.to_ascii_lowercase().as_str() {
            "legacy" | "5" | "1.6" => Ok(Protocol::Legacy),
            "modern" | "5.0" | "1.7" => Ok(Protocol::Modern),
            _ => Err(HandshakeError::BadOverride(v.to_string())),
        };
    }
    Ok(match inv {
        Invocation::Start { .. } => Protocol::Modern,
        _ => Protocol::Legacy,
    })
}

/// The handshake line, without the trailing newline.
pub fn line(proto: Protocol, network: &str, addr: &str) -> String {
    match proto {
        Protocol::Legacy => format!("{API_MAJOR}|{network}|{addr}"),
        Protocol::Modern => format!("{API_MAJOR}|{API_MINOR}|{network}|{addr}"),
    }
}

/// `describe` output (JSON, one line). Protocol v1 = gob/msgpack only.
pub fn describe(version: &str) -> String {
    serde_json::json!({
        "version": version,
        "sdk_version": format!("rust-{version}"),
        "api_version": format!("x{API_MAJOR}.{API_MINOR}"),
        "builders": [],
        "post_processors": [],
        "provisioners": [DEFAULT_NAME],
        "datasources": [],
        "protocol_version": "v1",
    })
    .to_string()
}

/// The template type Packer gives a component of a multi-component binary
/// (`packer/plugin.go`): `<plugin>` for the default name, else `<plugin>-<name>`;
/// `<plugin>` comes from `^packer-plugin-([^_]+)` on the binary name.
pub fn component_type(binary_name: &str, component: &str) -> Option<String> {
    let plugin = binary_name.strip_prefix("packer-plugin-")?;
    let plugin = plugin.split('_').next().filter(|p| !p.is_empty())?;
    Some(if component == DEFAULT_NAME {
        plugin.to_string()
    } else {
        format!("{plugin}-{component}")
    })
}

/// Where Packer 1.11+ expects an installed binary, relative to the plugin
/// directory, and the name of its checksum file:
/// `github.com/ORG/NAME/packer-plugin-NAME_vX.Y.Z_x5.0_OS_ARCH` + `_SHA256SUM`.
pub fn install_layout(
    source: &str,
    version: &str,
    os: &str,
    arch: &str,
) -> Option<(String, String)> {
    let mut parts = source.split('/');
    let (host, org, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [host, org, name].iter().any(|p| p.is_empty()) {
        return None;
    }
    let name = name.strip_prefix("packer-plugin-").unwrap_or(name);
    let bin = format!(
        "{host}/{org}/{name}/packer-plugin-{name}_v{version}_x{API_MAJOR}.{API_MINOR}_{os}_{arch}"
    );
    let sum = format!("{bin}_SHA256SUM");
    Some((bin, sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn handshake_lines() {
        assert_eq!(
            line(Protocol::Legacy, "unix", "/tmp/x.sock"),
            "5|unix|/tmp/x.sock"
        );
        assert_eq!(
            line(Protocol::Modern, "unix", "/tmp/x.sock"),
            "5|0|unix|/tmp/x.sock"
        );
    }

    #[test]
    fn format_choice_is_by_argv_with_env_override() {
        let single = parse_args(&[]).unwrap();
        let start = parse_args(&args(&["start", "provisioner", "vmagent"])).unwrap();
        assert_eq!(choose(&single, None), Ok(Protocol::Legacy));
        assert_eq!(choose(&start, None), Ok(Protocol::Modern));
        assert_eq!(choose(&start, Some("legacy")), Ok(Protocol::Legacy));
        assert_eq!(choose(&single, Some("MODERN")), Ok(Protocol::Modern));
        assert_eq!(choose(&single, Some("")), Ok(Protocol::Legacy));
        assert!(matches!(
            choose(&single, Some("v9")),
            Err(HandshakeError::BadOverride(_))
        ));
    }

    #[test]
    fn argument_parsing() {
        assert_eq!(parse_args(&args(&["describe"])), Ok(Invocation::Describe));
        assert_eq!(
            parse_args(&args(&["start", "--protobuf", "provisioner", DEFAULT_NAME])),
            Ok(Invocation::Start {
                kind: "provisioner".into(),
                name: DEFAULT_NAME.into(),
                protobuf: true
            })
        );
        assert!(matches!(
            parse_args(&args(&["start", "builder", "vmagent"])),
            Err(HandshakeError::UnknownComponent { .. })
        ));
        assert!(matches!(
            parse_args(&args(&["start", "provisioner", "shell"])),
            Err(HandshakeError::UnknownComponent { .. })
        ));
        assert!(matches!(
            parse_args(&args(&["bogus"])),
            Err(HandshakeError::Usage(_))
        ));
    }

    #[test]
    fn describe_output() {
        let v: serde_json::Value = serde_json::from_str(&describe("0.1.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "version": "0.1.0",
                "sdk_version": "rust-0.1.0",
                "api_version": "x5.0",
                "builders": [],
                "post_processors": [],
                "provisioners": ["-packer-default-plugin-name-"],
                "datasources": [],
                "protocol_version": "v1"
            })
        );
    }

    #[test]
    fn naming_and_install_layout() {
        assert_eq!(
            component_type("packer-plugin-vmagent", DEFAULT_NAME).as_deref(),
            Some("vmagent")
        );
        assert_eq!(
            component_type("packer-plugin-vmagent_v0.1.0_x5.0_linux_amd64", "vmagent").as_deref(),
            Some("vmagent-vmagent")
        );
        assert_eq!(component_type("packer-provisioner-vmagent", "x"), None);
        assert_eq!(
            install_layout("github.com/example/vmagent", "0.1.0", "linux", "amd64"),
            Some((
                "github.com/example/vmagent/packer-plugin-vmagent_v0.1.0_x5.0_linux_amd64".into(),
                "github.com/example/vmagent/packer-plugin-vmagent_v0.1.0_x5.0_linux_amd64_SHA256SUM"
                    .into()
            ))
        );
        assert_eq!(
            install_layout("github.com/example", "0.1.0", "linux", "amd64"),
            None
        );
    }
}
