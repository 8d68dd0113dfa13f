//! `image-builder bake`: the parts every backend shares — image naming, the agent
//! binary and its config, rendering in bake mode, and the bake manifest (compatible
//! with Packer's `packer-manifest.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use agent_config::{ArtifactsConfig, Config as AgentConfig, Provider};

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
    /// The agent config built from the spec is one the agent would refuse.
    #[error("the agent config built from the spec is invalid: {0}")]
    AgentConfig(agent_config::ConfigError),
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

/// The static agent binary to install: `explicit`, `$IMAGE_BUILDER_AGENT_BIN`, built in
/// a checkout, or next to this executable; a dynamically linked one is refused
/// ([`crate::agent_binary`]).
pub fn find_agent_binary(explicit: Option<&Path>) -> Result<PathBuf, BakeError> {
    crate::agent_binary::find_or_build(explicit).map_err(BakeError::Agent)
}

pub use artifact_store::digest::sha256_file;

/// vm-agent's config for a machine of this spec: [`agent_config::Config`], the type the agent
/// itself parses, filled from the spec's `build_user` and `agent` sections (timers, ephemeral
/// tag, `[artifacts]` from `agent.artifact`). `sha` overrides `agent.artifact.sha` (a flag).
pub fn agent_config(
    user: &str,
    agent: &spec::Agent,
    provider: Provider,
    sha: Option<&str>,
) -> AgentConfig {
    let mut config = AgentConfig::default();
    config.socket.group = Some(user.to_owned());
    config.jobs.user = Some(user.to_owned());
    config.timers.idle_timeout = agent.idle_timeout;
    config.timers.max_lifetime = agent.max_lifetime;
    config.timers.no_job_timeout = agent.no_job_timeout;
    config.destroy.provider = provider;
    config.destroy.ephemeral_tag = agent.ephemeral_tag.to_string();
    // Why a worker ended, on its console (the serial console), after it is gone. Not
    // /dev/kmsg: the unit's ProtectKernelLogs=yes keeps the agent away from it.
    config.destroy.record_file = Some("/dev/console".into());
    config.artifacts = agent.artifact.as_ref().map(|a| {
        let mut artifacts = ArtifactsConfig::new(a.bucket.clone(), a.endpoint_url());
        artifacts.region = a.region.clone();
        artifacts.path_style = a.path_style;
        artifacts.required = a.required;
        artifacts.sha = sha
            .map(str::to_owned)
            .or_else(|| a.sha.as_ref().map(|s| s.value.clone()));
        artifacts
    });
    config
}

/// The agent config of a spec, for its build user.
pub fn agent_config_for(loaded: &LoadedSpec, provider: Provider, sha: Option<&str>) -> AgentConfig {
    agent_config(
        &loaded.spec.build_user.name.to_string(),
        &loaded.spec.agent,
        provider,
        sha,
    )
}

/// The config file's text: serialized with serde and read back with the agent's own parser
/// (what the agent would refuse is refused here, naming the key, before anything is written).
pub fn agent_config_toml(config: &AgentConfig) -> Result<String, BakeError> {
    let text = config.to_toml();
    AgentConfig::from_toml(&text, Path::new(provision::AGENT_CONFIG_PATH))
        .map_err(BakeError::AgentConfig)?;
    Ok(text)
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
    /// The build sha the agent pulls at boot (overrides the spec's `agent.artifact.sha`).
    pub artifact_sha: Option<String>,
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
    /// How long each phase took (also in `image_builder` and, as strings, in `custom_data`).
    #[serde(skip)]
    pub timings: crate::backend::Timings,
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
        BackendKind::Qemu => Provider::Local,
        BackendKind::Digitalocean => Provider::Digitalocean,
    };
    let agent = if loaded.spec.agent.install {
        let path = find_agent_binary(req.agent_bin.as_deref())?;
        let sha256 =
            sha256_file(&path).map_err(|e| BakeError::Agent(format!("{}: {e}", path.display())))?;
        Some(AgentArtifact {
            path,
            sha256,
            config_toml: agent_config_toml(&agent_config_for(
                &loaded,
                provider,
                req.artifact_sha.as_deref(),
            ))?,
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
    let mut custom = BTreeMap::new();
    custom.insert("spec_sha256".into(), loaded.spec_hash());
    custom.insert("image_name".into(), name.clone());
    custom.insert("git_sha".into(), git.clone().unwrap_or_default());
    if let Some(a) = &agent {
        custom.insert("agent_sha256".into(), a.sha256.clone());
    }
    // For Packer users; our own code reads the typed `ManifestBuild::timings`.
    for (step, seconds) in result.timings.iter() {
        custom.insert(format!("time_{step}_s"), format!("{seconds:.1}"));
    }
    let manifest = Manifest::single(ManifestBuild {
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
        packer_run_uuid: String::new(),
        custom_data: custom,
        timings: result.timings.clone(),
        image_builder: serde_json::json!({
            "timings": result.timings.iter().map(|(step, seconds)| serde_json::json!({"step": step, "seconds": seconds})).collect::<Vec<_>>(),
            "seal_report": result.report,
            "details": result.details,
        }),
    });
    manifest.write(&req.out_dir)?;
    Ok(manifest)
}

impl Manifest {
    /// One build, under a new run id.
    pub fn single(mut build: ManifestBuild) -> Manifest {
        let run_uuid = uuid::Uuid::new_v4().to_string();
        build.packer_run_uuid = run_uuid.clone();
        Manifest {
            builds: vec![build],
            last_run_uuid: run_uuid,
        }
    }

    /// Write it as `out_dir/manifest.json` (atomically), creating `out_dir`.
    pub fn write(&self, out_dir: &Path) -> Result<PathBuf, BakeError> {
        let path = out_dir.join("manifest.json");
        std::fs::create_dir_all(out_dir)
            .and_then(|()| serde_json::to_vec_pretty(self).map_err(std::io::Error::from))
            .and_then(|text| artifact_store::fsutil::write_atomic(&path, &text, 0o644))
            .map_err(|source| BakeError::Manifest {
                path: path.clone(),
                source,
            })?;
        Ok(path)
    }
}
