//! The image spec: the one file a user writes to describe an image.
//!
//! Parsing keeps source locations: every error names the file, line, column and the
//! field (as a path such as `files[2].mode`), and says what was expected. Unknown
//! fields are errors. See `templates/examples/worker.yaml` for a documented example.

mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub use values::{
    AbsPath, ByteSize, DoTag, GroupName, Hostname, Limit, Mode, Package, SshPublicKey, Timeout,
    UserName,
};

/// An image spec, as written by the user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Short image name; used in snapshot names and tags.
    pub name: Spanned<String>,
    /// Free text stored as the image description.
    #[serde(default)]
    pub description: Option<String>,
    /// Base image per backend.
    pub base: Base,
    /// Host name of the builder/worker (default: cloud-init's choice).
    #[serde(default)]
    pub hostname: Option<Hostname>,
    /// The build user that jobs run as.
    pub build_user: BuildUser,
    /// Package work and the apt lock fixes.
    #[serde(default)]
    pub apt: Apt,
    /// Files to place in the image.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Commands run in order, each with `set -eu`.
    #[serde(default)]
    pub commands: Vec<Spanned<Command>>,
    /// vm-agent settings.
    #[serde(default)]
    pub agent: Agent,
    /// Naming of the resulting image.
    #[serde(default)]
    pub snapshot: Snapshot,
    /// DigitalOcean settings (used by `bake --backend digitalocean`).
    #[serde(default)]
    pub digitalocean: Option<DigitalOcean>,
    /// QEMU settings (used by `bake --backend qemu` and `run-local`).
    #[serde(default)]
    pub qemu: Qemu,
    /// Bake settings common to every backend.
    #[serde(default)]
    pub bake: Bake,
}

/// Base image per backend.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// DigitalOcean image: slug (`debian-12-x64`), numeric id, or the name of a
    /// private image (the newest image with that name is used).
    #[serde(default)]
    pub digitalocean: Option<String>,
    /// Local base: `bookworm` (built by `image-builder base build`) or a path to a
    /// qcow2/raw cloud image with its own bootloader.
    #[serde(default)]
    pub qemu: Option<String>,
}

/// The build user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildUser {
    /// Login name.
    pub name: UserName,
    /// OpenSSH public keys allowed to log in as this user.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<SshPublicKey>,
    /// Supplementary groups (must exist in the image).
    #[serde(default)]
    pub groups: Vec<GroupName>,
    /// Install `/etc/sudoers.d/90-<name>` with `NOPASSWD:ALL` (validated with visudo).
    #[serde(default = "yes")]
    pub passwordless_sudo: bool,
    /// Login shell.
    #[serde(default = "default_shell")]
    pub shell: AbsPath,
}

/// Apt settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apt {
    /// How long apt/dpkg wait for the dpkg lock (`DPkg::Lock::Timeout`).
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: Timeout,
    /// How often `apt-get update` is retried while another process holds the lists lock.
    #[serde(default = "default_update_retries")]
    pub update_retries: u32,
    /// Run `apt-get update` before installing (default: when packages are listed).
    #[serde(default)]
    pub update: Option<bool>,
    /// Run `apt-get upgrade`.
    #[serde(default)]
    pub upgrade: bool,
    /// Packages to install.
    #[serde(default)]
    pub packages: Vec<Package>,
}

impl Default for Apt {
    fn default() -> Self {
        Apt {
            lock_timeout: default_lock_timeout(),
            update_retries: default_update_retries(),
            update: None,
            upgrade: false,
            packages: Vec::new(),
        }
    }
}

/// One file to place in the image.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute target path.
    pub path: Spanned<AbsPath>,
    /// Inline content.
    #[serde(default)]
    pub content: Option<String>,
    /// A local file, relative to the spec's directory.
    #[serde(default)]
    pub source: Option<Spanned<String>>,
    /// Permission bits (default `0644`).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// `user:group` (default `root:root`).
    #[serde(default)]
    pub owner: Option<Spanned<String>>,
}

/// One command: a shell snippet run with `sh -eu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Step name shown in progress and in the seal report.
    pub name: Option<String>,
    /// The shell snippet.
    pub run: String,
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a shell command string, or a map with `run` and optional `name`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Command, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("empty command"));
                }
                Ok(Command {
                    name: None,
                    run: v.to_owned(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Command, A::Error> {
                let (mut name, mut run) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "name" if name.is_none() => name = Some(map.next_value::<String>()?),
                        "run" if run.is_none() => run = Some(map.next_value::<String>()?),
                        "name" | "run" => return Err(de::Error::duplicate_field("run")),
                        other => return Err(de::Error::unknown_field(other, &["name", "run"])),
                    }
                }
                let run: String = run.ok_or_else(|| de::Error::missing_field("run"))?;
                if run.trim().is_empty() {
                    return Err(de::Error::custom("empty command in `run`"));
                }
                Ok(Command { name, run })
            }
        }
        d.deserialize_any(V)
    }
}

/// vm-agent settings baked into the image.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Install vm-agent and enable its unit.
    #[serde(default = "yes")]
    pub install: bool,
    /// Destroy the worker after this long without a job, hold or SSH session.
    #[serde(default = "default_idle")]
    pub idle_timeout: Limit,
    /// Destroy the worker after this long, busy or not (`never` to disable).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: Limit,
    /// Destroy the worker if no job arrives this long after boot.
    #[serde(default = "default_no_job")]
    pub no_job_timeout: Limit,
    /// Only droplets carrying this tag may delete themselves.
    #[serde(default = "default_ephemeral_tag")]
    pub ephemeral_tag: DoTag,
    /// Build artifacts to pull on boot.
    #[serde(default)]
    pub artifact: Option<Artifact>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            install: true,
            idle_timeout: default_idle(),
            max_lifetime: default_max_lifetime(),
            no_job_timeout: default_no_job(),
            ephemeral_tag: default_ephemeral_tag(),
            artifact: None,
        }
    }
}

/// Where the agent finds the build's artifacts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Git sha of the build (`builds/<sha>/` in the bucket); default: given at boot.
    #[serde(default)]
    pub sha: Option<Spanned<String>>,
    /// Bucket (Space) name.
    pub bucket: String,
    /// S3 endpoint URL, e.g. `https://nyc3.digitaloceanspaces.com`; default: the
    /// DigitalOcean Space of `region` (`https://<region>.digitaloceanspaces.com`).
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    /// S3 region (Spaces: the region slug, e.g. `nyc3`).
    #[serde(default = "agent_config::default_region")]
    pub region: String,
    /// Use path-style addressing (needed by most self-hosted S3 servers).
    #[serde(default)]
    pub path_style: bool,
    /// Fail readiness (`degraded`) when the artifact can't be had; otherwise continue.
    #[serde(default)]
    pub required: bool,
}

impl Artifact {
    /// The endpoint URL: as given, else the DigitalOcean Space of `region`.
    pub fn endpoint_url(&self) -> String {
        match &self.endpoint {
            Some(e) => e.value.clone(),
            None => format!("https://{}.digitaloceanspaces.com", self.region),
        }
    }
}

/// Naming of the resulting image.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Name template. Placeholders: `{name}`, `{timestamp}` (UTC `YYYYMMDD-HHMMSS`),
    /// `{date}` (`YYYYMMDD`), `{git_sha}` (12 chars, or `nogit`), `{spec_hash}` (12 chars).
    #[serde(default = "default_snapshot_name")]
    pub name: Spanned<String>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            name: Spanned::new(
                default_snapshot_name_str(),
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            ),
        }
    }
}

/// Placeholders allowed in [`Snapshot::name`].
pub const SNAPSHOT_PLACEHOLDERS: &[&str] = &["name", "timestamp", "date", "git_sha", "spec_hash"];

/// DigitalOcean settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigitalOcean {
    /// Region slug, e.g. `nyc3`.
    pub region: String,
    /// Droplet size slug for the builder, e.g. `s-1vcpu-2gb`.
    pub size: String,
    /// Project id (uuid) or name to assign the builder droplet to (default project if absent).
    #[serde(default)]
    pub project: Option<String>,
    /// Extra tags for the builder droplet and the image.
    #[serde(default)]
    pub tags: Vec<DoTag>,
}

/// Acceleration for local VMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Probe KVM with a short boot, fall back to TCG.
    #[default]
    Auto,
    /// Software emulation.
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

/// Compression of the golden qcow2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd clusters (`compression_type=zstd`): about 5x faster to write than zlib at
    /// the same size; readable by QEMU 5.1 and later.
    #[default]
    Zstd,
    /// zlib clusters: readable by every qcow2 reader, slower to write.
    Zlib,
    /// No compression (largest file, fastest).
    None,
}

/// QEMU settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    /// Guest memory.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Guest vCPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Size of the golden image's disk.
    #[serde(default = "default_disk")]
    pub disk_size: ByteSize,
    /// Accelerator.
    #[serde(default)]
    pub accel: Accel,
    /// Compression of the golden qcow2.
    #[serde(default)]
    pub compression: Compression,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu {
            memory: default_memory(),
            cpus: default_cpus(),
            disk_size: default_disk(),
            accel: Accel::Auto,
            compression: Compression::default(),
        }
    }
}

/// Bake settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bake {
    /// How long provisioning may take before the bake fails.
    #[serde(default = "default_bake_timeout")]
    pub timeout: Timeout,
}

impl Default for Bake {
    fn default() -> Self {
        Bake {
            timeout: default_bake_timeout(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_shell() -> AbsPath {
    "/bin/bash"
        .parse()
        .expect("constant is a valid absolute path")
}
fn default_lock_timeout() -> Timeout {
    Timeout(Duration::from_secs(600))
}
fn default_update_retries() -> u32 {
    10
}
fn default_idle() -> Limit {
    Limit::After(Duration::from_secs(30 * 60))
}
fn default_max_lifetime() -> Limit {
    Limit::After(Duration::from_secs(12 * 3600))
}
fn default_no_job() -> Limit {
    Limit::After(Duration::from_secs(20 * 60))
}
fn default_ephemeral_tag() -> DoTag {
    "ephemeral".parse().expect("constant is a valid tag")
}
fn default_snapshot_name_str() -> String {
    "{name}-{timestamp}".to_owned()
}
fn default_snapshot_name() -> Spanned<String> {
    Spanned::new(
        default_snapshot_name_str(),
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}
fn default_memory() -> ByteSize {
    ByteSize(2 << 30)
}
fn default_cpus() -> u32 {
    2
}
fn default_disk() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_bake_timeout() -> Timeout {
    Timeout(Duration::from_secs(30 * 60))
}

/// Where in a spec file something is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pos {
    /// The spec file.
    pub file: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }
}

/// Errors from loading a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec (or a file it names) could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML is malformed or a field has the wrong type or value.
    #[error("{pos}: {field}: {message}")]
    Parse {
        /// Where.
        pos: Pos,
        /// Field path, e.g. `files[2].mode` (`<document>` for the top level).
        field: String,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A value is valid on its own but not together with others.
    #[error("{pos}: {field}: {message}")]
    Invalid {
        /// Where.
        pos: Pos,
        /// Field path.
        field: String,
        /// What was wrong and what was expected.
        message: String,
    },
}

impl SpecError {
    /// The field path the error is about.
    pub fn field(&self) -> Option<&str> {
        match self {
            SpecError::Read { .. } => None,
            SpecError::Parse { field, .. } | SpecError::Invalid { field, .. } => Some(field),
        }
    }
}

/// A spec together with what was read alongside it.
#[derive(Debug)]
pub struct LoadedSpec {
    /// Where the spec was read from.
    pub path: PathBuf,
    /// The exact bytes of the spec (hashed into the bake manifest).
    pub text: String,
    /// The parsed spec.
    pub spec: ImageSpec,
    /// Contents of every file entry, in spec order (inline or read from `source`).
    pub file_contents: Vec<Vec<u8>>,
}

impl LoadedSpec {
    /// sha256 of the spec text and of every file it pulls in, hex.
    pub fn spec_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.text.as_bytes());
        for c in &self.file_contents {
            h.update((c.len() as u64).to_be_bytes());
            h.update(c);
        }
        hex::encode(h.finalize())
    }
}

/// Read and validate a spec file.
pub fn load(path: &Path) -> Result<LoadedSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
    load_str(path, &text, &base_dir)
}

/// Parse and validate spec text; `path` is used in messages, `base_dir` resolves `source`.
pub fn load_str(path: &Path, text: &str, base_dir: &Path) -> Result<LoadedSpec, SpecError> {
    let spec = parse(path, text)?;
    let file_contents = check(path, &spec, base_dir)?;
    Ok(LoadedSpec {
        path: path.to_owned(),
        text: text.to_owned(),
        spec,
        file_contents,
    })
}

fn parse(path: &Path, text: &str) -> Result<ImageSpec, SpecError> {
    let mut track = serde_path_to_error::Track::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        let de = serde_path_to_error::Deserializer::new(de, &mut track);
        ImageSpec::deserialize(de)
    });
    result.map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        // serde_path_to_error spells segments it could not name as `?`.
        let mut field = track.path().to_string();
        while let Some(stripped) = field.strip_suffix(".?") {
            field = stripped.to_owned();
        }
        if field == "." || field == "?" || field.is_empty() {
            field = "<document>".to_owned();
        }
        SpecError::Parse {
            pos: Pos {
                file: path.to_owned(),
                line,
                column,
            },
            field,
            message: first_line_message(&e.to_string()),
        }
    })
}

/// serde-saphyr's Display is `error: line L column C: MESSAGE` followed by a source
/// snippet; keep just MESSAGE (we print our own location).
fn first_line_message(display: &str) -> String {
    let first = display.lines().next().unwrap_or(display);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((loc, msg)) if loc.starts_with("line ") => msg.to_owned(),
        _ => first.to_owned(),
    }
}

fn pos_of<T>(path: &Path, s: &Spanned<T>) -> Pos {
    Pos {
        file: path.to_owned(),
        line: s.referenced.line(),
        column: s.referenced.column(),
    }
}

fn check(path: &Path, spec: &ImageSpec, base_dir: &Path) -> Result<Vec<Vec<u8>>, SpecError> {
    let invalid = |pos: Pos, field: String, message: String| SpecError::Invalid {
        pos,
        field,
        message,
    };
    let top = Pos {
        file: path.to_owned(),
        line: 0,
        column: 0,
    };

    let name = &spec.name.value;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(invalid(
            pos_of(path, &spec.name),
            "name".into(),
            format!(
                "invalid image name {name:?}: expected 1-64 characters of letters, digits, '-' or '.'"
            ),
        ));
    }
    if spec.base.digitalocean.is_none() && spec.base.qemu.is_none() {
        return Err(invalid(
            top.clone(),
            "base".into(),
            "no base image: set base.digitalocean and/or base.qemu".into(),
        ));
    }

    // Snapshot template placeholders.
    let tpl = &spec.snapshot.name;
    for ph in placeholders(&tpl.value)
        .map_err(|m| invalid(pos_of(path, tpl), "snapshot.name".into(), m))?
    {
        if !SNAPSHOT_PLACEHOLDERS.contains(&ph.as_str()) {
            return Err(invalid(
                pos_of(path, tpl),
                "snapshot.name".into(),
                format!(
                    "unknown placeholder {{{ph}}}: expected one of {}",
                    SNAPSHOT_PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }

    if spec.apt.update_retries == 0 || spec.apt.update_retries > 100 {
        return Err(invalid(
            top.clone(),
            "apt.update_retries".into(),
            format!(
                "{} is out of range: expected 1 to 100",
                spec.apt.update_retries
            ),
        ));
    }
    if spec.qemu.cpus == 0 || spec.qemu.cpus > 64 {
        return Err(invalid(
            top.clone(),
            "qemu.cpus".into(),
            format!("{} is out of range: expected 1 to 64", spec.qemu.cpus),
        ));
    }

    // The artifact the agent pulls: the same rules vm-agent's config applies.
    if let Some(a) = &spec.agent.artifact {
        if let Some(sha) = &a.sha
            && !agent_config::is_build_sha(&sha.value)
        {
            return Err(invalid(
                pos_of(path, sha),
                "agent.artifact.sha".into(),
                format!(
                    "invalid sha {:?}: expected 7 to 64 lowercase hex digits (a git sha)",
                    sha.value
                ),
            ));
        }
        if let Some(e) = &a.endpoint
            && !(e.value.starts_with("http://") || e.value.starts_with("https://"))
        {
            return Err(invalid(
                pos_of(path, e),
                "agent.artifact.endpoint".into(),
                format!("{:?} is not an http(s) URL", e.value),
            ));
        }
        if a.bucket.trim().is_empty() {
            return Err(invalid(
                top.clone(),
                "agent.artifact.bucket".into(),
                "must not be empty".into(),
            ));
        }
    }

    // Files: exactly one of content/source, unique paths, owner syntax.
    let mut seen: BTreeMap<&str, &Spanned<AbsPath>> = BTreeMap::new();
    let mut contents = Vec::with_capacity(spec.files.len());
    for (i, f) in spec.files.iter().enumerate() {
        let field = |name: &str| format!("files[{i}].{name}");
        if let Some(first) = seen.insert(f.path.value.as_str(), &f.path) {
            return Err(invalid(
                pos_of(path, &f.path),
                field("path"),
                format!(
                    "duplicate file path {}: already given at line {}",
                    f.path.value,
                    first.referenced.line()
                ),
            ));
        }
        if let Some(owner) = &f.owner {
            check_owner(&owner.value)
                .map_err(|m| invalid(pos_of(path, owner), field("owner"), m))?;
        }
        let data = match (&f.content, &f.source) {
            (Some(_), Some(src)) => {
                return Err(invalid(
                    pos_of(path, src),
                    field("source"),
                    "both `content` and `source` are set: expected exactly one".into(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    pos_of(path, &f.path),
                    format!("files[{i}]"),
                    "neither `content` nor `source` is set: expected exactly one".into(),
                ));
            }
            (Some(c), None) => c.as_bytes().to_vec(),
            (None, Some(src)) => {
                let p = base_dir.join(&src.value);
                std::fs::read(&p).map_err(|e| {
                    invalid(
                        pos_of(path, src),
                        field("source"),
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?
            }
        };
        contents.push(data);
    }
    Ok(contents)
}

fn check_owner(s: &str) -> Result<(), String> {
    let (user, group) = s.split_once(':').unwrap_or((s, s));
    user.parse::<UserName>()
        .and_then(|_| group.parse::<GroupName>())
        .map(|_| ())
        .map_err(|_| format!("invalid owner {s:?}: expected \"user:group\" of valid names"))
}

/// The `{placeholder}` names of a template.
pub fn placeholders(tpl: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = tpl;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in template {tpl:?}"))?;
        out.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unmatched '}}' in template {tpl:?}"));
    }
    Ok(out)
}

/// Fill a snapshot name template.
pub fn fill_template(tpl: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = tpl.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}
