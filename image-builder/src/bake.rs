//! `image-builder bake`: the parts every backend shares — image naming, the agent
//! binary and its config, rendering in bake mode, and the bake manifest (compatible
//! with Packer's `packer-manifest.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::{AgentArtifact, BakeResult, qemu};
use crate::spec::{self, LoadedSpec};

/// Errors of a bake.
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// Spec problems.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// Rendering problems.
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    /// Local backend problems.
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    /// DigitalOcean backend problems.
    #[error(transparent)]
    Digitalocean(#[from] crate::backend::digitalocean::DoBakeError),
    /// The agent binary is missing or unreadable.
    #[error("{0}")]
    Agent(String),
    /// Writing the manifest failed.
    #[error("{}: cannot write the manifest: {source}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Where the agent binary is looked for when none is given: next to this executable.
pub fn find_agent_binary(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    if let Some(p) = std::env::var_os("IMAGE_BUILDER_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let sibling = exe.parent()?.join("vm-agent");
    sibling.is_file().then_some(sibling)
}

pub use artifact_store::digest::sha256_file;

/// The agent settings written as vm-agent's config file (`vm-agent/src/config.rs`;
/// a workspace test parses this output with vm-agent's own parser).
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// The build user jobs run as (its group may use the agent's socket).
    pub user: String,
    /// Idle timer.
    pub idle_timeout: spec::Limit,
    /// Lifetime timer.
    pub max_lifetime: spec::Limit,
    /// No-job timer.
    pub no_job_timeout: spec::Limit,
    /// Ephemeral tag.
    pub ephemeral_tag: String,
    /// `local`, `digitalocean` or `dry-run`.
    pub provider: String,
    /// Extra TOML sections appended verbatim (e.g. `[artifacts]`).
    pub extra_toml: String,
}

impl AgentSettings {
    /// The spec's agent settings.
    pub fn from_spec(loaded: &LoadedSpec, provider: &str) -> Self {
        Self::new(
            &loaded.spec.build_user.name.to_string(),
            &loaded.spec.agent,
            provider,
        )
    }

    /// The spec's default agent settings, for a worker booted without its spec.
    pub fn defaults(user: &str, provider: &str) -> Self {
        Self::new(user, &spec::Agent::default(), provider)
    }

    fn new(user: &str, a: &spec::Agent, provider: &str) -> Self {
        AgentSettings {
            user: user.to_owned(),
            idle_timeout: a.idle_timeout,
            max_lifetime: a.max_lifetime,
            no_job_timeout: a.no_job_timeout,
            ephemeral_tag: a.ephemeral_tag.to_string(),
            provider: provider.to_owned(),
            extra_toml: String::new(),
        }
    }

    /// vm-agent's config file.
    pub fn to_toml(&self) -> String {
        format!(
            "# vm-agent config written by image-builder.\nversion = 1\n\n[socket]\ngroup = \"{user}\"\n\n[jobs]\nuser = \"{user}\"\n\n[timers]\nidle_timeout = \"{idle}\"\nmax_lifetime = \"{life}\"\nno_job_timeout = \"{nojob}\"\n\n[destroy]\nprovider = \"{provider}\"\nephemeral_tag = \"{tag}\"\n{extra}",
            user = self.user,
            idle = self.idle_timeout,
            life = self.max_lifetime,
            nojob = self.no_job_timeout,
            provider = self.provider,
            tag = self.ephemeral_tag,
            extra = self.extra_toml,
        )
    }
}

/// The agent config baked into an image from the spec.
pub fn agent_config_toml(loaded: &LoadedSpec, provider: &str) -> String {
    AgentSettings::from_spec(loaded, provider).to_toml()
}

/// `git rev-parse HEAD` in `dir`, if it is a git checkout.
pub fn git_sha(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Fill the spec's snapshot name template.
pub fn image_name(loaded: &LoadedSpec, git: Option<&str>) -> String {
    let now = time::OffsetDateTime::now_utc();
    use time::macros::format_description;
    let stamp = now
        .format(format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .unwrap_or_default();
    let mut vars = BTreeMap::new();
    vars.insert("name", loaded.spec.name.value.clone());
    vars.insert("date", stamp[..8.min(stamp.len())].to_owned());
    vars.insert("timestamp", stamp);
    vars.insert(
        "git_sha",
        git.map(|g| g.chars().take(12).collect())
            .unwrap_or_else(|| "nogit".into()),
    );
    vars.insert("spec_hash", loaded.spec_hash()[..12].to_owned());
    spec::fill_template(&loaded.spec.snapshot.name.value, &vars)
}

/// Which backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Local: systemd-nspawn / QEMU, a golden qcow2.
    Qemu,
    /// A DigitalOcean snapshot.
    Digitalocean,
}

/// Inputs of a bake.
#[derive(Clone, Debug)]
pub struct BakeRequest {
    /// The spec file.
    pub spec: PathBuf,
    /// Where outputs go.
    pub out_dir: PathBuf,
    /// The agent binary (None: look next to this executable).
    pub agent_bin: Option<PathBuf>,
    /// Local backend options.
    pub qemu: qemu::QemuBakeOptions,
    /// DigitalOcean backend options.
    pub digitalocean: crate::backend::digitalocean::DoBakeOptions,
}

/// One entry of the manifest (`builds[]`), Packer-compatible plus our details.
#[derive(Debug, Serialize)]
pub struct ManifestBuild {
    /// Image name.
    pub name: String,
    /// `image-builder.qemu` / `image-builder.digitalocean`.
    pub builder_type: String,
    /// Unix time the build finished.
    pub build_time: i64,
    /// Files with sizes.
    pub files: Vec<ManifestFile>,
    /// Path (qemu) or `region:image-id` (DigitalOcean).
    pub artifact_id: String,
    /// Run id.
    pub packer_run_uuid: String,
    /// String map, as Packer has it.
    pub custom_data: BTreeMap<String, String>,
    /// Per-step timings, the seal report and backend details.
    pub image_builder: serde_json::Value,
}

/// A file in the manifest.
#[derive(Debug, Serialize)]
pub struct ManifestFile {
    /// Path.
    pub name: String,
    /// Bytes.
    pub size: u64,
}

/// The manifest file (`packer-manifest.json`-compatible).
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// Builds.
    pub builds: Vec<ManifestBuild>,
    /// The run id of the last build.
    pub last_run_uuid: String,
}

/// Run a bake end to end and write `out_dir/manifest.json`.
pub async fn bake(kind: BackendKind, req: &BakeRequest) -> Result<Manifest, BakeError> {
    let loaded = spec::load(&req.spec)?;
    let spec_dir = req.spec.parent().map(Path::to_owned).unwrap_or_default();
    let git = git_sha(if spec_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &spec_dir
    });
    #[allow(unused_mut)] // a DigitalOcean --resume keeps the recorded name
    let mut name = image_name(&loaded, git.as_deref());
    let provider = match kind {
        BackendKind::Qemu => "local",
        BackendKind::Digitalocean => "digitalocean",
    };
    let agent = if loaded.spec.agent.install {
        let path = find_agent_binary(req.agent_bin.as_deref()).ok_or_else(|| {
            BakeError::Agent(
                "agent.install is true but no vm-agent binary was found: build it with vm-agent/build-static.sh \
                 and pass --agent-bin PATH (or set IMAGE_BUILDER_AGENT_BIN)"
                    .into(),
            )
        })?;
        let sha256 =
            sha256_file(&path).map_err(|e| BakeError::Agent(format!("{}: {e}", path.display())))?;
        Some(AgentArtifact {
            path,
            sha256,
            config_toml: agent_config_toml(&loaded, provider),
            unit: provision::AGENT_UNIT_FILE.to_owned(),
        })
    } else {
        None
    };
    std::fs::create_dir_all(&req.out_dir).map_err(|source| BakeError::Manifest {
        path: req.out_dir.clone(),
        source,
    })?;
    let result: BakeResult = match kind {
        BackendKind::Qemu => {
            qemu::bake(&loaded, &name, agent.as_ref(), &req.out_dir, &req.qemu).await?
        }
        BackendKind::Digitalocean => {
            let (result, baked_name) = crate::backend::digitalocean::bake(
                &loaded,
                &name,
                agent.as_ref(),
                &req.digitalocean,
            )
            .await?;
            name = baked_name;
            result
        }
    };
    let run_uuid = uuid_v4();
    let mut custom = BTreeMap::new();
    custom.insert("spec_sha256".into(), loaded.spec_hash());
    custom.insert("image_name".into(), name.clone());
    custom.insert("git_sha".into(), git.clone().unwrap_or_default());
    if let Some(a) = &agent {
        custom.insert("agent_sha256".into(), a.sha256.clone());
    }
    for (k, v) in &result.timings {
        custom.insert(format!("time_{k}_s"), format!("{v:.1}"));
    }
    let manifest = Manifest {
        builds: vec![ManifestBuild {
            name,
            builder_type: result.builder_type.clone(),
            build_time: time::OffsetDateTime::now_utc().unix_timestamp(),
            files: result
                .files
                .iter()
                .map(|(p, s)| ManifestFile {
                    name: p.display().to_string(),
                    size: *s,
                })
                .collect(),
            artifact_id: result.artifact_id.clone(),
            packer_run_uuid: run_uuid.clone(),
            custom_data: custom,
            image_builder: serde_json::json!({
                "timings": result.timings.iter().map(|(k, v)| serde_json::json!({"step": k, "seconds": v})).collect::<Vec<_>>(),
                "seal_report": result.report,
                "details": result.details,
            }),
        }],
        last_run_uuid: run_uuid,
    };
    let path = req.out_dir.join("manifest.json");
    serde_json::to_vec_pretty(&manifest)
        .map_err(std::io::Error::from)
        .and_then(|text| artifact_store::fsutil::write_atomic(&path, &text, 0o644))
        .map_err(|source| BakeError::Manifest { path, source })?;
    Ok(manifest)
}

fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
