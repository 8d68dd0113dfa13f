//! Spec → `#cloud-config` user-data.
//!
//! The output is produced from a typed model ([`CloudConfig`]) by `serde-saphyr`,
//! which quotes every scalar that YAML 1.1 (cloud-init's PyYAML) would read as
//! another type. [`yaml11::check`] then re-reads the text with YAML 1.1 rules and
//! compares it with the model, so a regression in the emitter can't slip through.
//!
//! Two modes:
//! - `worker`: user, apt fixes, files, packages, commands. Nothing is sealed.
//! - `bake`: the same, plus the agent install and the seal: a finisher started at
//!   boot (outside every cloud-init stage) waits for cloud-init to finish, writes the
//!   seal report, cleans cloud-init state and secrets, and powers off.

pub mod yaml11;

use base64::Engine as _;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write as _;

use crate::spec::{LoadedSpec, Timeout};
use provision::{AgentSource, Step};

/// DigitalOcean's user-data limit (and a sane bound for any cloud).
pub const USER_DATA_LIMIT: usize = 64 * 1024;

/// Files larger than this are written gzip+base64 encoded (when that is smaller).
pub const COMPRESS_THRESHOLD: usize = 2048;

/// Which user-data to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// For workers booted from a golden image: no seal.
    Worker,
    /// For the builder VM of a bake: ends with the seal.
    Bake,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Worker => "worker",
            Mode::Bake => "bake",
        })
    }
}

/// The agent binary a bake installs.
#[derive(Clone, Debug)]
pub struct AgentBinary {
    /// Where the VM gets it.
    pub source: AgentSource,
    /// Its sha256, hex.
    pub sha256: String,
    /// The vm-agent config (TOML) baked into the image.
    pub config_toml: String,
    /// The vm-agent systemd unit (`templates/systemd/vm-agent.service`).
    pub unit: String,
}

/// An extra file the caller injects (e.g. the agent's config or secrets on a worker).
#[derive(Clone, Debug)]
pub struct ExtraFile {
    /// Absolute path in the VM.
    pub path: String,
    /// Content.
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// Inputs to rendering besides the spec.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Worker or bake.
    pub mode: Mode,
    /// Bake: where the finisher PUTs the seal report (e.g. a presigned URL).
    pub report_url: Option<String>,
    /// Bake: the agent to install (required when the spec says `agent.install: true`
    /// for a real bake; `render` without it leaves the step out and says so).
    pub agent: Option<AgentBinary>,
    /// Extra files.
    pub extra_files: Vec<ExtraFile>,
}

impl RenderOptions {
    /// Options for `mode` with nothing else.
    pub fn new(mode: Mode) -> Self {
        RenderOptions {
            mode,
            report_url: None,
            agent: None,
            extra_files: Vec::new(),
        }
    }
}

/// The cloud-config document (the subset of cloud-init's schema we emit).
#[derive(Clone, Debug, Serialize)]
pub struct CloudConfig {
    /// Instance host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Users; giving the list also suppresses the distribution's default user.
    pub users: Vec<User>,
    /// No password logins over SSH.
    pub ssh_pwauth: bool,
    /// No root logins over SSH.
    pub disable_root: bool,
    /// Early commands (bake: starts the detached finisher).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootcmd: Vec<Vec<String>>,
    /// Files.
    pub write_files: Vec<WriteFile>,
    /// Late commands (the step runner). Left out when empty: cloud-init's schema
    /// refuses `runcmd: []`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runcmd: Vec<Vec<String>>,
    /// SSH host keys to install instead of generating new ones (cloud-init's `ssh_keys`:
    /// `ed25519_private`, `ed25519_public`), so the host key is known before first contact.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ssh_keys: BTreeMap<String, String>,
}

/// A cloud-init user.
#[derive(Clone, Debug, Serialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Supplementary groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Login shell.
    pub shell: String,
    /// No password.
    pub lock_passwd: bool,
    /// SSH keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

/// A cloud-init `write_files` entry.
#[derive(Clone, Debug, Serialize)]
pub struct WriteFile {
    /// Target path.
    pub path: String,
    /// Content (encoded per `encoding`).
    pub content: String,
    /// `gz+b64` or `b64` when encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
    /// Octal permissions.
    pub permissions: String,
    /// `user:group`.
    pub owner: String,
    /// Write in the final stage, after users exist.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub defer: bool,
}

/// The result of rendering.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The document model.
    pub config: CloudConfig,
    /// The complete user-data text (`#cloud-config` header included).
    pub text: String,
    /// The sudoers drop-in content that was rendered (for a host-side visudo check).
    pub sudoers: Option<String>,
    /// Names of the steps, in run order.
    pub steps: Vec<String>,
    /// Notes for the user (e.g. a step that was left out).
    pub notes: Vec<String>,
}

/// Errors from rendering.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The user-data is over the limit.
    #[error(
        "{spec}: rendered user-data is {size} bytes, over the {limit}-byte limit; largest parts: {}",
        parts.iter().map(|(n, s)| format!("{n} ({s} bytes)")).collect::<Vec<_>>().join(", ")
    )]
    TooLarge {
        /// The spec.
        spec: String,
        /// Rendered size.
        size: usize,
        /// The limit.
        limit: usize,
        /// The largest parts, biggest first.
        parts: Vec<(String, usize)>,
    },
    /// The emitter produced YAML that reads back differently under YAML 1.1.
    #[error("{spec}: rendered YAML does not read back as written under YAML 1.1: {0}", .detail)]
    Yaml11 {
        /// The spec.
        spec: String,
        /// What differed.
        detail: String,
    },
    /// Serialization failed.
    #[error("{spec}: cannot serialize user-data: {detail}")]
    Serialize {
        /// The spec.
        spec: String,
        /// Why.
        detail: String,
    },
    /// A bake was asked to install the agent without one.
    #[error("{spec}: agent.install is true but no agent binary was given to the bake")]
    MissingAgent {
        /// The spec.
        spec: String,
    },
}

fn step_file(index: usize, name: &str) -> String {
    format!("{}/steps/{index:02}-{name}.sh", provision::WORK_DIR)
}

fn sanitize_step_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out = out.trim_matches('-').chars().take(40).collect::<String>();
    if out.is_empty() {
        "command".to_owned()
    } else {
        out
    }
}

fn encode_file(content: &[u8]) -> (String, Option<&'static str>) {
    let text = std::str::from_utf8(content).ok();
    if let Some(t) = text
        && content.len() <= COMPRESS_THRESHOLD
    {
        return (t.to_owned(), None);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let compressed = gz.write_all(content).and_then(|()| gz.finish()).ok();
    match (text, compressed) {
        (Some(t), Some(c)) if b64.encode(&c).len() >= t.len() => (t.to_owned(), None),
        (_, Some(c)) => (b64.encode(c), Some("gz+b64")),
        (Some(t), None) => (t.to_owned(), None),
        (None, None) => (b64.encode(content), Some("b64")),
    }
}

/// Render `spec` to user-data.
pub fn render(loaded: &LoadedSpec, opts: &RenderOptions) -> Result<Rendered, RenderError> {
    let spec = &loaded.spec;
    let spec_name = loaded.path.display().to_string();
    let user = spec.build_user.name.as_str().to_owned();
    let mut notes = Vec::new();
    let mut write_files = Vec::new();
    let mut steps_list: Vec<Step> = Vec::new();

    // 1. The apt drop-in goes first, before any package work (write_files runs in
    //    cloud-init's init stage, long before runcmd).
    write_files.push(WriteFile {
        path: provision::APT_LOCK_DROPIN.to_owned(),
        content: provision::apt_lock_dropin_content(spec.apt.lock_timeout.0),
        encoding: None,
        permissions: "0644".to_owned(),
        owner: "root:root".to_owned(),
        defer: false,
    });
    // sshd accepts the job variables `fleet run --env` sends (never on a command line).
    write_files.push(WriteFile {
        path: provision::SSHD_ACCEPT_ENV_DROPIN.to_owned(),
        content: provision::SSHD_ACCEPT_ENV_CONTENT.to_owned(),
        encoding: None,
        permissions: "0644".to_owned(),
        owner: "root:root".to_owned(),
        defer: false,
    });

    // 2. The sudoers drop-in is staged, validated by visudo in the VM, then moved.
    let sudoers = spec
        .build_user
        .passwordless_sudo
        .then(|| provision::sudoers_content(&user));
    let staged_sudoers = format!("{}/staged/sudoers-90-{user}", provision::WORK_DIR);
    if let Some(content) = &sudoers {
        write_files.push(WriteFile {
            path: staged_sudoers.clone(),
            content: content.clone(),
            encoding: None,
            permissions: "0440".to_owned(),
            owner: "root:root".to_owned(),
            defer: false,
        });
    }

    // 3. Steps.
    let Timeout(lock_timeout) = spec.apt.lock_timeout;
    steps_list.push(provision::wait_apt_idle(lock_timeout));
    let want_update = spec
        .apt
        .update
        .unwrap_or(!spec.apt.packages.is_empty() || spec.apt.upgrade);
    if want_update {
        steps_list.push(provision::apt_update(spec.apt.update_retries));
    }
    if spec.apt.upgrade {
        steps_list.push(provision::apt_upgrade());
    }
    if !spec.apt.packages.is_empty() {
        let pkgs: Vec<String> = spec
            .apt
            .packages
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect();
        steps_list.push(provision::apt_install(&pkgs));
    }
    if sudoers.is_some() {
        steps_list.push(provision::sudoers_install(&user, &staged_sudoers));
    }
    if opts.mode == Mode::Bake && spec.agent.install {
        match &opts.agent {
            Some(a) => steps_list.push(provision::agent_install(
                &a.source,
                &a.sha256,
                &a.unit,
                &a.config_toml,
            )),
            None => notes.push(
                "agent.install is true but no agent binary was given: the agent-install step is left out \
                 (`image-builder bake` provides it)"
                    .to_owned(),
            ),
        }
    }
    for (i, cmd) in spec.commands.iter().enumerate() {
        let name = cmd
            .value
            .name
            .as_deref()
            .map(sanitize_step_name)
            .unwrap_or_else(|| format!("command-{}", i + 1));
        steps_list.push(provision::command(&name, &cmd.value.run));
    }

    // 4. User files (large ones compressed); non-root owners are written after users exist.
    for (f, content) in spec.files.iter().zip(&loaded.file_contents) {
        let (content, encoding) = encode_file(content);
        let owner = f
            .owner
            .as_ref()
            .map(|o| o.value.clone())
            .unwrap_or_else(|| "root:root".to_owned());
        let defer = owner != "root:root" && owner != "root";
        write_files.push(WriteFile {
            path: f.path.value.as_str().to_owned(),
            content,
            encoding,
            permissions: f
                .mode
                .map(|m| m.octal())
                .unwrap_or_else(|| "0644".to_owned()),
            owner,
            defer,
        });
    }
    for x in &opts.extra_files {
        let (content, encoding) = encode_file(&x.content);
        write_files.push(WriteFile {
            path: x.path.clone(),
            content,
            encoding,
            permissions: format!("{:04o}", x.mode),
            owner: "root:root".to_owned(),
            defer: false,
        });
    }

    // 5. Step files and the runner.
    let mut step_paths = Vec::new();
    for (i, s) in steps_list.iter().enumerate() {
        let path = step_file(i + 1, &s.name);
        write_files.push(WriteFile {
            path: path.clone(),
            content: s.script.clone(),
            encoding: None,
            permissions: "0700".to_owned(),
            owner: "root:root".to_owned(),
            defer: false,
        });
        step_paths.push((s.name.clone(), path));
    }
    let runner = format!("{}/run-steps.sh", provision::WORK_DIR);
    write_files.push(WriteFile {
        path: runner.clone(),
        content: provision::runner_script(&step_paths),
        encoding: None,
        permissions: "0700".to_owned(),
        owner: "root:root".to_owned(),
        defer: false,
    });

    // 6. Bake: seal files and the boot-time watcher.
    let mut bootcmd = Vec::new();
    if opts.mode == Mode::Bake {
        let finisher_config = provision::FinisherConfig::new(
            opts.report_url.clone(),
            provision::BakedInfo {
                image: spec.name.value.clone(),
                spec_sha256: loaded.spec_hash(),
                image_builder_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        );
        for (path, content, permissions) in [
            (
                provision::SEAL_CLEAN_PATH,
                provision::seal_clean().script,
                "0700",
            ),
            (
                provision::FINISHER_PATH,
                provision::FINISHER.to_owned(),
                "0700",
            ),
            // 0600: it holds the presigned report URL.
            (
                provision::FINISHER_CONFIG_PATH,
                finisher_config.to_json(),
                "0600",
            ),
        ] {
            write_files.push(WriteFile {
                path: path.to_owned(),
                content,
                encoding: None,
                permissions: permissions.to_owned(),
                owner: "root:root".to_owned(),
                defer: false,
            });
        }
        bootcmd.push(provision::seal_watcher_command(spec.bake.timeout.0));
    }

    let config = CloudConfig {
        hostname: spec.hostname.as_ref().map(|h| h.as_str().to_owned()),
        users: vec![User {
            name: user,
            groups: spec
                .build_user
                .groups
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
            shell: spec.build_user.shell.as_str().to_owned(),
            lock_passwd: true,
            ssh_authorized_keys: spec
                .build_user
                .ssh_authorized_keys
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect(),
        }],
        ssh_pwauth: false,
        disable_root: true,
        bootcmd,
        write_files,
        runcmd: vec![vec!["/bin/sh".to_owned(), runner]],
        ssh_keys: BTreeMap::new(),
    };

    let file_name = loaded
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let header = format!(
        "# Generated by image-builder {} ({} mode) from {}; spec sha256 {}.\n# Do not edit: change the spec and render again.\n",
        env!("CARGO_PKG_VERSION"),
        opts.mode,
        file_name,
        &loaded.spec_hash()[..12],
    );
    let text = emit(&config, &header, &spec_name)?;

    if text.len() > USER_DATA_LIMIT {
        return Err(RenderError::TooLarge {
            spec: spec_name,
            size: text.len(),
            limit: USER_DATA_LIMIT,
            parts: largest_parts(&config),
        });
    }

    Ok(Rendered {
        steps: steps_list.iter().map(|s| s.name.clone()).collect(),
        config,
        text,
        sudoers,
        notes,
    })
}

fn largest_parts(c: &CloudConfig) -> Vec<(String, usize)> {
    let mut parts: Vec<(String, usize)> = c
        .write_files
        .iter()
        .map(|f| (format!("write_files {}", f.path), f.content.len()))
        .collect();
    parts.push(("users".to_owned(), json_len(&c.users)));
    parts.push(("bootcmd".to_owned(), json_len(&c.bootcmd)));
    parts.push(("runcmd".to_owned(), json_len(&c.runcmd)));
    parts.sort_by_key(|p| std::cmp::Reverse(p.1));
    parts.truncate(5);
    parts
}

fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_string(v).map(|s| s.len()).unwrap_or(0)
}

/// What a worker's user-data carries on top of its golden image.
#[derive(Clone, Debug, Default)]
pub struct WorkerBoot<'a> {
    /// The build user (its SSH keys are authorised).
    pub user: &'a str,
    /// Public keys authorised for the build user.
    pub keys: &'a [String],
    /// Files (the agent's config and secrets).
    pub files: &'a [ExtraFile],
    /// The worker's ed25519 host key (private, public), pinned by the caller.
    pub host_key: Option<(&'a str, &'a str)>,
}

/// Minimal user-data for a worker booted from a golden image that already carries
/// the provisioning: authorize extra SSH keys for the build user and write the
/// given files (the agent's config and secrets). Checked like any rendering.
pub fn worker_boot(
    user: &str,
    keys: &[String],
    files: &[ExtraFile],
) -> Result<String, RenderError> {
    worker(&WorkerBoot {
        user,
        keys,
        files,
        host_key: None,
    })
}

/// A worker's user-data: [`worker_boot`] plus, when given, the host key it must use.
pub fn worker(boot: &WorkerBoot<'_>) -> Result<String, RenderError> {
    let (user, keys, files) = (boot.user, boot.keys, boot.files);
    let mut ssh_keys = BTreeMap::new();
    if let Some((private, public)) = boot.host_key {
        ssh_keys.insert("ed25519_private".to_owned(), private.to_owned());
        ssh_keys.insert("ed25519_public".to_owned(), public.to_owned());
    }
    let config = CloudConfig {
        hostname: None,
        users: vec![User {
            name: user.to_owned(),
            groups: Vec::new(),
            shell: "/bin/bash".to_owned(),
            lock_passwd: true,
            ssh_authorized_keys: keys.to_vec(),
        }],
        ssh_pwauth: false,
        disable_root: true,
        bootcmd: Vec::new(),
        write_files: files
            .iter()
            .map(|x| {
                let (content, encoding) = encode_file(&x.content);
                WriteFile {
                    path: x.path.clone(),
                    content,
                    encoding,
                    permissions: format!("{:04o}", x.mode),
                    owner: "root:root".to_owned(),
                    defer: false,
                }
            })
            .collect(),
        runcmd: Vec::new(),
        ssh_keys,
    };
    emit(
        &config,
        &format!(
            "# Worker user-data generated by image-builder {}.\n",
            env!("CARGO_PKG_VERSION")
        ),
        "<worker>",
    )
}

/// `#cloud-config` + `header` (comment lines) + the YAML of `config`, verified to
/// read back as `config` under YAML 1.1 before it is returned.
fn emit(config: &CloudConfig, header: &str, spec: &str) -> Result<String, RenderError> {
    let serialize_err = |e: &dyn std::fmt::Display| RenderError::Serialize {
        spec: spec.to_owned(),
        detail: e.to_string(),
    };
    // Long single-line strings (ssh keys, commands) stay on one line: folded
    // scalars are legal but make keys and shell hard to read.
    let mut yaml_opts = serde_saphyr::SerializerOptions::default();
    yaml_opts.folded_wrap_chars = usize::MAX / 2;
    let body =
        serde_saphyr::to_string_with_options(config, yaml_opts).map_err(|e| serialize_err(&e))?;
    let text = format!("#cloud-config\n{header}{body}");
    let expected = serde_json::to_value(config).map_err(|e| serialize_err(&e))?;
    yaml11::check(&text, &expected).map_err(|detail| RenderError::Yaml11 {
        spec: spec.to_owned(),
        detail,
    })?;
    Ok(text)
}
