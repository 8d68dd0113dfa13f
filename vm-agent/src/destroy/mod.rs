//! Ending the machine: one trait, one module per provider (DigitalOcean, local power-off) plus
//! a dry run. The daemon drains and warns users first; a provider re-checks the [`Guard`]
//! (no running job, no open session, no hold) right before the irreversible call.

pub mod digitalocean;
pub mod local;

use crate::config::{Config, Provider, Secrets};
use futures::future::BoxFuture;

/// Re-checked right before destroying. `Err(reason)` blocks.
pub trait Guard: Send + Sync {
    fn check(&self) -> Result<(), String>;
}

/// Where self-destroy is (`destroy.state` of the report), defined once in the `agent-status`
/// crate: `armed` until a timer fires, `draining` during the grace period, `destroying`
/// during the provider's call, then the [`Outcome`]'s state.
pub use agent_status::DestroyState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The machine is being deleted / powered off as intended.
    Destroyed(String),
    /// Nothing done; what would have happened.
    DryRun(String),
    /// A guard blocked it (job running, session open, hold); retried later.
    Blocked(String),
    /// Refused for good (not tagged ephemeral, metadata unreadable): the machine stays.
    Refused(String),
    /// Deleting failed; powered off instead as the last resort (still billed on DigitalOcean).
    PoweredOff(String),
    /// Nothing worked.
    Failed(String),
}

impl Outcome {
    pub fn state(&self) -> DestroyState {
        match self {
            Outcome::Destroyed(_) => DestroyState::Destroyed,
            Outcome::DryRun(_) => DestroyState::DryRun,
            Outcome::Blocked(_) => DestroyState::Blocked,
            Outcome::Refused(_) => DestroyState::Refused,
            Outcome::PoweredOff(_) => DestroyState::PoweredOff,
            Outcome::Failed(_) => DestroyState::Failed,
        }
    }
    pub fn detail(&self) -> &str {
        match self {
            Outcome::Destroyed(d)
            | Outcome::DryRun(d)
            | Outcome::Blocked(d)
            | Outcome::Refused(d)
            | Outcome::PoweredOff(d)
            | Outcome::Failed(d) => d,
        }
    }
}

/// A way to end this machine.
pub trait Destroyer: Send + Sync {
    fn provider(&self) -> &'static str;
    /// `reason` says which timer fired (for logs).
    fn destroy<'a>(&'a self, guard: &'a dyn Guard, reason: &'a str) -> BoxFuture<'a, Outcome>;
}

/// Logs what would happen.
pub struct DryRun {
    pub would: String,
}

impl Destroyer for DryRun {
    fn provider(&self) -> &'static str {
        "dry-run"
    }
    fn destroy<'a>(&'a self, guard: &'a dyn Guard, reason: &'a str) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if let Err(b) = guard.check() {
                return Outcome::Blocked(b);
            }
            tracing::warn!("dry run: would {} ({reason})", self.would);
            Outcome::DryRun(format!("would {} ({reason})", self.would))
        })
    }
}

/// The provider the config asks for (`dry_run` overrides it).
pub fn from_config(cfg: &Config, secrets: &Secrets, dry_run: bool) -> Box<dyn Destroyer> {
    let d = &cfg.destroy;
    if dry_run || d.provider == Provider::DryRun {
        let would = match d.provider {
            Provider::Digitalocean => "DELETE this droplet".to_string(),
            _ => format!("run {:?}", d.poweroff_command),
        };
        return Box::new(DryRun { would });
    }
    match d.provider {
        Provider::Local => Box::new(local::Local {
            command: d.poweroff_command.clone(),
        }),
        Provider::Digitalocean | Provider::DryRun => Box::new(digitalocean::DigitalOcean {
            api: Box::new(digitalocean::SharedDoApi::new(
                &d.metadata_url,
                &d.api_url,
                secrets.do_token.as_deref(),
                d.max_attempts,
                d.retry_base_wait.0,
                d.retry_max_wait.0,
            )),
            ephemeral_tag: d.ephemeral_tag.clone(),
            poweroff: local::Local {
                command: d.poweroff_command.clone(),
            },
        }),
    }
}
