//! vm-agent: the agent every worker runs.
//!
//! * [`config`]: the config/secrets contract written by the image-builder renderer.
//! * [`daemon`]: staged readiness (`booting` → `waiting-cloud-init` → `fetching-artifacts` →
//!   `ready`/`degraded`), jobs, timers and self-destroy, served on a unix socket.
//! * [`cli`]: `vm-agent status|run|jobs|logs|cancel|hold|release|pull`.
//! * [`destroy`]: self-destroy providers (DigitalOcean, local power-off, dry run).
//! * [`artifacts`]: sha-keyed builds pulled from a Space (boot stage and `vm-agent pull`).

pub mod artifacts;
pub mod cli;
pub mod cloud_init;
/// The config/secrets contract, defined once in the `agent-config` crate.
pub use agent_config as config;
pub mod daemon;
pub mod destroy;
pub mod error;
pub mod hostkeys;
pub mod jobs;
pub mod protocol;
/// The status report (`status --json`, the ready file, the readiness callback), defined once
/// in the `agent-status` crate.
pub use agent_status as report;
pub mod sessions;
pub mod timers;
pub mod users;
pub mod util;
