//! The one error of the `image-builder` binary, and what each failure means to a
//! caller as an exit code ([`ExitCode`]; the table with examples is README.md's
//! "Exit codes"). Every command returns [`Error`]; `main.rs` prints it once
//! ([`Error::report`]) and exits with [`Error::exit_code`]. Errors of the library
//! and of the shared crates are classified here, in one place, not where they arise.

use std::path::{Path, PathBuf};

use artifact_store::publish::PublishError;
use artifact_store::pull::PullError;
use artifact_store::s3::{CredentialsError, RemoteError, RemoteKind};
use do_api::{DoError, TokenError};

use crate::backend::digitalocean::DoBakeError;
use crate::backend::digitalocean::state::StateError;
use crate::backend::qemu::QemuError;
use crate::bake::BakeError;
use crate::render::{Mode, RenderError};
use crate::spec::SpecError;

/// What a failure means to the caller (success is 0 and no [`Error`]). The numbers
/// are sysexits.h's where one fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// The operation ran and failed (provisioning, an API or the store refused, I/O).
    Failed = 1,
    /// A confirmation was needed and not given: answered no, or no terminal and no `--yes`.
    NotConfirmed = 2,
    /// Usage (`EX_USAGE`): unknown flag, bad flag value, flags that go together,
    /// a required setting given neither as a flag nor in the environment.
    Usage = 64,
    /// Bad input (`EX_DATAERR`): the spec, a file named on the command line (key,
    /// secrets, token, credentials, a `--resume` state), a manifest in the store.
    BadInput = 65,
    /// A required tool is not installed or a service cannot be reached (`EX_UNAVAILABLE`).
    Unavailable = 69,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

/// Why an `image-builder` command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// clap rejected the command line; its message carries the usage line.
    #[error("{}", .0.to_string().trim_end())]
    Cli(#[from] clap::Error),
    /// A flag value is wrong, flags that go together were not given together, or a
    /// required setting was given neither as a flag nor in the environment.
    #[error("{0}")]
    Usage(String),
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The spec renders to user-data that cannot be used (too large, not YAML 1.1-safe).
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A real tool (cloud-init's schema check, …) rejected the rendered user-data.
    #[error("{}: {check} rejected the rendered {mode} user-data:\n{detail}", spec.display())]
    Rejected {
        /// The spec.
        spec: PathBuf,
        /// The check that failed.
        check: String,
        /// Which user-data.
        mode: Mode,
        /// The tool's output.
        detail: String,
    },
    /// `validate` found the spec invalid; its report (stdout) says why.
    #[error("{}: invalid", .0.display())]
    Invalid(PathBuf),
    /// A file named on the command line (SSH key, secrets, extra agent config) is
    /// missing, unreadable or refused.
    #[error("{}: {reason}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A bake failed.
    #[error(transparent)]
    Bake(#[from] BakeError),
    /// A local (QEMU) command failed: `base build`, `run-local`, `stop-local`.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// A DigitalOcean command failed: `reap`, `images`.
    #[error(transparent)]
    Digitalocean(#[from] DoBakeError),
    /// The artifact store's keys.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// `artifact publish` failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The artifact store failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// `artifact pull` failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// `artifact ls --sha`: the sha has no manifest.
    #[error("sha {0} is not published (no manifest)")]
    NotPublished(String),
    /// `artifact ls --sha`: the manifest in the store breaks the contract.
    #[error("sha {sha}: invalid manifest: {detail}")]
    InvalidManifest {
        /// The build.
        sha: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Writing an output failed.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The output file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A fleet command failed.
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
}

impl Error {
    /// An input file that cannot be read or is refused.
    pub fn input(path: &Path, reason: impl std::fmt::Display) -> Self {
        Error::Input {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        use ExitCode::*;
        match self {
            Error::Cli(_) | Error::Usage(_) => Usage,
            Error::Spec(_)
            | Error::Render(_)
            | Error::Rejected { .. }
            | Error::Invalid(_)
            | Error::Input { .. }
            | Error::InvalidManifest { .. } => BadInput,
            Error::Bake(e) => bake(e),
            Error::Qemu(e) => qemu(e),
            Error::Digitalocean(e) => digitalocean(e),
            Error::Credentials(e) => credentials(e),
            Error::Publish(e) => publish(e),
            Error::Remote(e) => remote(e),
            Error::Pull(e) => pull(e),
            Error::NotPublished(_) | Error::Write { .. } | Error::Runtime(_) => Failed,
            Error::Fleet(e) => fleet(e),
        }
    }

    /// The message for stderr: `error: ` and the error with the causes its own
    /// message does not already name. (clap's own errors come as clap formats them.)
    pub fn report(&self) -> String {
        match self {
            Error::Cli(_) => self.to_string(),
            _ => format!("error: {}", artifact_store::s3::error_chain(self)),
        }
    }
}

fn bake(e: &BakeError) -> ExitCode {
    match e {
        BakeError::Spec(_) | BakeError::Render(_) | BakeError::AgentConfig(_) => ExitCode::BadInput,
        BakeError::Qemu(e) => qemu(e),
        BakeError::Digitalocean(e) => digitalocean(e),
        BakeError::Agent(_) | BakeError::Manifest { .. } => ExitCode::Failed,
    }
}

fn qemu(e: &QemuError) -> ExitCode {
    match e {
        QemuError::MissingTool { .. } => ExitCode::Unavailable,
        _ => ExitCode::Failed,
    }
}

fn digitalocean(e: &DoBakeError) -> ExitCode {
    match e {
        DoBakeError::Config(_) => ExitCode::Usage,
        DoBakeError::Spec(_) | DoBakeError::Render(_) | DoBakeError::Resume { .. } => {
            ExitCode::BadInput
        }
        DoBakeError::SpaceCredentials(e) => credentials(e),
        DoBakeError::Api { source, .. } => do_api(source),
        DoBakeError::Space { source, .. } => match source.as_ref() {
            crate::backend::digitalocean::space::SpaceError::Remote(e) => remote(e),
            _ => ExitCode::Failed,
        },
        DoBakeError::State(StateError::Parse { .. } | StateError::Version { .. }) => {
            ExitCode::BadInput
        }
        DoBakeError::NeedsConfirmation { .. } | DoBakeError::Declined { .. } => {
            ExitCode::NotConfirmed
        }
        _ => ExitCode::Failed,
    }
}

fn fleet(e: &crate::fleet::FleetError) -> ExitCode {
    use crate::fleet::FleetError as F;
    match e {
        F::Api { source, .. } => do_api(source),
        F::NeedsConfirmation | F::Declined => ExitCode::NotConfirmed,
        F::NoWorkerToken => ExitCode::Usage,
        F::Spec(_) | F::Render(_) | F::File { .. } => ExitCode::BadInput,
        F::Tool { .. } => ExitCode::Unavailable,
        F::Qemu(e) => qemu(e),
        F::Preflight(_)
        | F::Policy(_)
        | F::State(_)
        | F::NotReady { .. }
        | F::NotFound(_)
        | F::Busy(_)
        | F::Runtime(_) => ExitCode::Failed,
    }
}

fn do_api(e: &DoError) -> ExitCode {
    match e {
        DoError::Transport { source, .. } if source.is_connect() || source.is_timeout() => {
            ExitCode::Unavailable
        }
        DoError::Token(TokenError::Missing) | DoError::BaseUrl { .. } => ExitCode::Usage,
        DoError::Token(_) => ExitCode::BadInput,
        _ => ExitCode::Failed,
    }
}

fn credentials(e: &CredentialsError) -> ExitCode {
    match e {
        CredentialsError::Missing | CredentialsError::HalfPair { .. } => ExitCode::Usage,
        CredentialsError::Read { .. }
        | CredentialsError::TooOpen { .. }
        | CredentialsError::Syntax { .. } => ExitCode::BadInput,
    }
}

fn remote(e: &RemoteError) -> ExitCode {
    match e.kind {
        RemoteKind::Unreachable => ExitCode::Unavailable,
        _ => ExitCode::Failed,
    }
}

fn publish(e: &PublishError) -> ExitCode {
    use artifact_store::manifest::ManifestError;
    match e {
        PublishError::Remote(e) => remote(e),
        PublishError::Manifest(ManifestError::InvalidSha(_)) => ExitCode::Usage,
        PublishError::Manifest(_)
        | PublishError::Local { .. }
        | PublishError::Unsupported(_)
        | PublishError::NoFiles
        | PublishError::BadPath { .. } => ExitCode::BadInput,
        _ => ExitCode::Failed,
    }
}

fn pull(e: &PullError) -> ExitCode {
    match e {
        PullError::MissingCredentials | PullError::InvalidSha(_) => ExitCode::Usage,
        PullError::InvalidManifest { .. } => ExitCode::BadInput,
        PullError::Remote(e) => remote(e),
        _ => ExitCode::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_a_cause_once() {
        let e = Error::Write {
            path: "out.yaml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            e.report(),
            "error: out.yaml: cannot write: entity not found"
        );
        let e = Error::Runtime(std::io::Error::other("no threads"));
        assert_eq!(
            e.report(),
            "error: cannot start the async runtime: no threads"
        );
    }

    #[test]
    fn nested_errors_keep_their_class() {
        let missing = QemuError::MissingTool {
            tool: "qemu-img".into(),
            package: "qemu-utils".into(),
        };
        assert_eq!(
            Error::Bake(BakeError::Qemu(missing)).exit_code(),
            ExitCode::Unavailable
        );
        let declined = DoBakeError::Declined {
            action: "create the resources shown above",
        };
        assert_eq!(
            Error::Bake(BakeError::Digitalocean(declined)).exit_code(),
            ExitCode::NotConfirmed
        );
        assert_eq!(
            Error::Digitalocean(DoBakeError::SpaceCredentials(CredentialsError::TooOpen {
                path: "space.env".into(),
                mode: 0o644
            }))
            .exit_code(),
            ExitCode::BadInput
        );
        let unreachable = RemoteError {
            kind: RemoteKind::Unreachable,
            operation: "ListObjectsV2",
            bucket: "b".into(),
            key: "builds/".into(),
            status: None,
            code: None,
            message: "connection refused".into(),
        };
        assert_eq!(
            Error::Pull(PullError::Remote(unreachable)).exit_code(),
            ExitCode::Unavailable
        );
    }
}
