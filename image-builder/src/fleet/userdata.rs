//! The worker contract, delivered in full through the worker's user-data (rendered from
//! the spec, at most 64 KiB, checked like every rendering):
//! - vm-agent's config as vm-agent's own type ([`agent_config::Config`], serde), with
//!   `[artifacts]` from the spec and the build sha, the timers, the destroy provider and
//!   the API/metadata URLs (`/etc/vm-agent/config.toml`, 0644);
//! - the secrets as vm-agent's own type ([`agent_config::Secrets`]): the worker token for
//!   self-destroy, the Space read key, the callback token (`/etc/vm-agent/secrets.toml`,
//!   0600, root) — never the host's token, which can create droplets;
//! - the fleet's SSH identity authorised for the build user, and the host key the tool
//!   pinned for the worker (cloud-init `ssh_keys`).
//!
//! User-data is readable by any process on the droplet through the metadata service
//! (and cloud-init keeps a copy on disk): the secrets in it are the ones a worker is
//! meant to hold anyway, scoped as narrowly as DigitalOcean allows.

use agent_config::{Config as AgentConfig, Provider, Secrets};

use super::FleetError;
use super::keys::KeyPair;
use crate::render::{self, ExtraFile};
use crate::spec::LoadedSpec;

/// DigitalOcean's limit on user-data.
pub const MAX_USER_DATA: usize = 64 * 1024;

/// Secrets a worker gets. `Debug` never prints them.
#[derive(Clone, Default)]
pub struct WorkerSecrets {
    /// Token the agent deletes its own droplet with (`droplet:delete` scope).
    pub worker_token: Option<String>,
    /// Space (S3) read key pair for `[artifacts]`.
    pub space_key: Option<(String, String)>,
    /// Bearer token of the readiness callback.
    pub callback_token: Option<String>,
}

impl std::fmt::Debug for WorkerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |set: bool| if set { "<redacted>" } else { "<unset>" };
        f.debug_struct("WorkerSecrets")
            .field("worker_token", &r(self.worker_token.is_some()))
            .field("space_key", &r(self.space_key.is_some()))
            .field("callback_token", &r(self.callback_token.is_some()))
            .finish()
    }
}

/// Everything a worker's user-data is made of.
#[derive(Debug)]
pub struct WorkerInput<'a> {
    /// The spec the golden image was baked from.
    pub spec: &'a LoadedSpec,
    /// How idle workers end: `digitalocean` (DELETE with the worker token) or `local`.
    pub provider: Provider,
    /// The build sha the agent pulls at boot.
    pub sha: Option<&'a str>,
    /// DigitalOcean API base URL the agent deletes through (None: DigitalOcean's).
    pub api_url: Option<&'a str>,
    /// Metadata service base URL (None: the link-local one).
    pub metadata_url: Option<&'a str>,
    /// Where the agent POSTs its readiness report.
    pub callback_url: Option<&'a str>,
    /// The secrets.
    pub secrets: &'a WorkerSecrets,
    /// The fleet's SSH identity (public half).
    pub authorized_key: &'a str,
    /// The host key pinned for the worker.
    pub host_key: &'a KeyPair,
    /// The worker takes one job and then ends.
    pub one_shot: bool,
}

/// The agent config a worker of this fleet runs with.
pub fn agent_config(input: &WorkerInput<'_>) -> AgentConfig {
    let mut config = crate::bake::agent_config_for(input.spec, input.provider, input.sha);
    if let Some(url) = input.api_url {
        config.destroy.api_url = url.to_owned();
    }
    if let Some(url) = input.metadata_url {
        config.destroy.metadata_url = url.to_owned();
    }
    config.readiness.callback_url = input.callback_url.map(str::to_owned);
    config.timers.one_shot = input.one_shot;
    config
}

/// Render the worker's user-data.
pub fn render(input: &WorkerInput<'_>) -> Result<String, FleetError> {
    let config = agent_config(input);
    let config_text = crate::bake::agent_config_toml(&config)
        .map_err(|e| FleetError::Preflight(format!("the worker's agent config is invalid: {e}")))?;
    let secrets = Secrets {
        do_token: input.secrets.worker_token.clone(),
        callback_token: input.secrets.callback_token.clone(),
        spaces_access_key_id: input.secrets.space_key.as_ref().map(|k| k.0.clone()),
        spaces_secret_access_key: input.secrets.space_key.as_ref().map(|k| k.1.clone()),
    };
    let files = [
        ExtraFile {
            path: provision::AGENT_CONFIG_PATH.into(),
            content: config_text.into_bytes(),
            mode: 0o644,
        },
        ExtraFile {
            path: provision::AGENT_SECRETS_PATH.into(),
            content: secrets.to_toml().into_bytes(),
            mode: 0o600,
        },
    ];
    let user = input.spec.spec.build_user.name.to_string();
    let text = render::worker(&render::WorkerBoot {
        user: &user,
        keys: &[input.authorized_key.to_owned()],
        files: &files,
        host_key: Some((&input.host_key.private, &input.host_key.public)),
    })?;
    if text.len() > MAX_USER_DATA {
        return Err(FleetError::Preflight(format!(
            "the worker user-data is {} bytes; DigitalOcean accepts at most {MAX_USER_DATA}",
            text.len()
        )));
    }
    Ok(text)
}
