//! The DigitalOcean backend: a spec becomes a private snapshot image.
//!
//! 1. **Pre-flight** ([`preflight`]): the token works, the droplet limit is not
//!    reached, the size is offered in the region, the base image exists (a
//!    golden image may be named: the newest image of that name is used), the
//!    project exists. The spending summary is printed and must be confirmed
//!    (`--yes` when stdin is not a terminal).
//! 2. **Space** ([`space`]): the static vm-agent goes to
//!    `agents/<sha256>/vm-agent` (skipped if present); the builder gets a
//!    presigned GET URL for it and a presigned PUT URL for its seal report
//!    (`bakes/<id>/seal-report.json`). No credential is in the user-data.
//! 3. **Create** the builder droplet with the bake user-data, tagged
//!    `image-builder` and `image-builder-bake-<id>` (the create is reconciled by
//!    that tag, so a retry never makes a second droplet), and assign it to the
//!    project (`POST /v2/projects/{id|default}/resources`).
//! 4. **Wait** for the seal report in the Space (the droplet itself is polled
//!    only every few polls, to notice a builder that powered off without
//!    reporting). A failed report fails the bake with its reason and log tail.
//! 5. **Power off** (normally the finisher already did): wait for `off`, else
//!    `shutdown`, then `power_off` after a bound; a 422 that says the droplet
//!    is busy ("pending event") is retried, no other 422 is.
//! 6. **Snapshot**: `errored` fails at once; the timeout scales with the disk.
//!    The image id comes from `GET /v2/droplets/{id}/snapshots`, matched by name.
//!    The image is described and tagged.
//! 7. **Destroy** the builder and poll until 404, on every exit path: success,
//!    error, Ctrl-C, SIGTERM. A SIGKILL (or a power cut) cannot be caught: the
//!    [`state`] file and the tags make `bake --resume STATE` and [`reap`] work.

pub mod images;
pub mod import;
pub mod preflight;
pub mod reap;
pub mod space;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backend::{AgentArtifact, BakeResult, BakeStep, Timings};
use crate::render::{self, AgentBinary, Mode, RenderOptions};
use crate::spec::LoadedSpec;
use artifact_store::s3::{CredentialsError, S3Credentials, S3Settings};
use do_api::{
    ActionStatus, ActionType, Client, DoError, DropletAction, DropletCreate, DropletStatus,
    ImageUpdate, Poll, Refusal, RetryPolicy, TagTarget, Token,
};
use provision::{AgentSource, SealReport, SealStatus};

use self::preflight::Plan;
use self::space::Space;
use self::state::{BakeState, Phase, STATE_VERSION, StateError, StateFile};

/// Every droplet and image a bake makes carries this tag.
pub const TAG: &str = "image-builder";
/// Builder droplets also carry `image-builder-bake-<id>` (what `reap` looks for).
pub const BAKE_TAG_PREFIX: &str = "image-builder-bake-";
/// The manifest's `builder_type`.
pub const BUILDER_TYPE: &str = "image-builder.digitalocean";

/// How to reach the DigitalOcean API.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// Base URL (default: `DIGITALOCEAN_API_URL`, else `https://api.digitalocean.com`).
    pub api_url: Option<String>,
    /// A 0600 token file (default: `DIGITALOCEAN_TOKEN` / `DIGITALOCEAN_ACCESS_TOKEN`).
    pub token_file: Option<PathBuf>,
    /// First retry backoff (default 1 s); tests make it short.
    pub api_backoff: Option<Duration>,
}

impl Connection {
    /// Build the client.
    #[allow(clippy::result_large_err)] // DoError is the do-api crate's one error type, as everywhere else.
    pub fn client(&self) -> Result<Client, DoError> {
        let token = match &self.token_file {
            Some(p) => Token::from_file(p)?,
            None => Token::from_env()?,
        };
        let base = self
            .api_url
            .clone()
            .or_else(|| {
                std::env::var(do_api::API_URL_ENV)
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .unwrap_or_else(|| do_api::DEFAULT_API_URL.to_owned());
        let mut policy = RetryPolicy::default();
        if let Some(b) = self.api_backoff {
            policy = policy.with_backoff(b, (b * 16).max(b));
        }
        Client::new_with_base(&base, token, policy)
    }
}

/// Options of a DigitalOcean bake (besides the spec).
#[derive(Clone, Debug)]
pub struct DoBakeOptions {
    /// API access.
    pub connection: Connection,
    /// Confirm the spending without asking.
    pub yes: bool,
    /// Continue the bake recorded in this state file.
    pub resume: Option<PathBuf>,
    /// The Space for the agent and the seal report (default: the spec's `agent.artifact` bucket).
    pub space: Option<S3Settings>,
    /// Space keys (default: `SPACES_ACCESS_KEY_ID`/`SPACES_SECRET_ACCESS_KEY` or the AWS_* names).
    pub space_credentials: Option<S3Credentials>,
    /// Where state files go (default [`state::default_state_dir`]).
    pub state_dir: Option<PathBuf>,
    /// Poll interval (the droplet is checked every 6 polls while provisioning).
    pub poll: Duration,
    /// How long to wait for `off` before `shutdown`, and again before `power_off`.
    pub power_off_after: Duration,
    /// How long cleanup keeps trying to destroy the builder.
    pub destroy_timeout: Duration,
}

impl Default for DoBakeOptions {
    fn default() -> Self {
        DoBakeOptions {
            connection: Connection::default(),
            yes: false,
            resume: None,
            space: None,
            space_credentials: None,
            state_dir: None,
            poll: Duration::from_secs(5),
            power_off_after: Duration::from_secs(120),
            destroy_timeout: Duration::from_secs(600),
        }
    }
}

/// Errors of a DigitalOcean bake.
#[derive(Debug, thiserror::Error)]
pub enum DoBakeError {
    /// A required setting is missing (the Space, its keys).
    #[error("{0}")]
    Config(String),
    /// The spec lacks what the DigitalOcean backend needs.
    #[error("{0}")]
    Spec(String),
    /// The Space's keys cannot be had.
    #[error("Space credentials: {0}")]
    SpaceCredentials(#[source] CredentialsError),
    /// An API call failed.
    #[error("{during}: {source}")]
    Api {
        /// What the bake was doing.
        during: &'static str,
        /// The error.
        source: Box<DoError>,
    },
    /// The Space failed.
    #[error("{during}: {source}")]
    Space {
        /// What the bake was doing.
        during: &'static str,
        /// The error.
        source: Box<space::SpaceError>,
    },
    /// The state file.
    #[error(transparent)]
    State(#[from] StateError),
    /// Rendering the user-data failed.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// Pre-flight refused the bake.
    #[error("pre-flight: {0}")]
    Preflight(String),
    /// DigitalOcean refused the create (explained).
    #[error("{0}")]
    Refused(String),
    /// Not confirmed, and no terminal to ask on.
    #[error("stdin is not a terminal: pass --yes to {action}")]
    NeedsConfirmation {
        /// What `--yes` confirms, e.g. "create the resources shown above".
        action: &'static str,
    },
    /// The user said no.
    #[error("not confirmed: did not {action}")]
    Declined {
        /// What was not done.
        action: &'static str,
    },
    /// The builder reported a failed provisioning.
    #[error(
        "provisioning of droplet {droplet} failed: {reason}{step}\n--- cloud-init log tail ---\n{tail}"
    )]
    ProvisioningFailed {
        /// The builder.
        droplet: u64,
        /// Why.
        reason: String,
        /// ` (step NAME)` or empty.
        step: String,
        /// The tail of cloud-init's output log.
        tail: String,
    },
    /// The builder powered off without a report.
    #[error(
        "droplet {droplet} powered off without a seal report: provisioning broke before the finisher ran \
         (cloud-init's log is only on the droplet's console; re-run with a longer bake.timeout to debug it)"
    )]
    NoReport {
        /// The builder.
        droplet: u64,
    },
    /// No report within `bake.timeout`.
    #[error("droplet {droplet}: no seal report within bake.timeout {} (droplet status {status})", humantime::format_duration(*timeout))]
    ProvisionTimeout {
        /// The builder.
        droplet: u64,
        /// The bound.
        timeout: Duration,
        /// Its last status.
        status: DropletStatus,
    },
    /// The droplet disappeared under the bake.
    #[error("droplet {droplet} no longer exists (deleted by someone else?)")]
    DropletVanished {
        /// The builder.
        droplet: u64,
    },
    /// The snapshot action ended `errored`.
    #[error(
        "the snapshot of droplet {droplet} failed: action {action} errored (reported at once, not after a timeout)"
    )]
    SnapshotErrored {
        /// The builder.
        droplet: u64,
        /// The action.
        action: u64,
    },
    /// The image of a completed snapshot cannot be found.
    #[error(
        "snapshot {name:?} of droplet {droplet} completed but no image with that name was found"
    )]
    ImageNotFound {
        /// The builder.
        droplet: u64,
        /// The image name.
        name: String,
    },
    /// `--resume` cannot continue.
    #[error("cannot resume {}: {reason}", path.display())]
    Resume {
        /// The state file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
    /// Destroying the builder failed: it may still exist.
    #[error(
        "could not confirm that builder droplet {droplet} is destroyed: {reason}; it may still be billed: \
         run `image-builder reap --older-than 0s` (state: {})", state.display()
    )]
    Cleanup {
        /// The builder.
        droplet: u64,
        /// Why.
        reason: String,
        /// The state file.
        state: PathBuf,
    },
    /// The bake failed and so did the cleanup.
    #[error("{main}\nand then: {cleanup}")]
    AndCleanup {
        /// The bake's error.
        main: Box<DoBakeError>,
        /// The cleanup's error.
        cleanup: Box<DoBakeError>,
    },
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

/// Wrap an API error with what was being done.
pub(crate) fn api(during: &'static str) -> impl FnOnce(DoError) -> DoBakeError {
    move |source| DoBakeError::Api {
        during,
        source: Box::new(source),
    }
}

/// Spending or deleting must be explicit: `yes` (the `--yes` flag), or a "y" typed
/// on a terminal. `action` completes "pass --yes to …" and "did not …".
pub fn confirm(yes: bool, question: &str, action: &'static str) -> Result<(), DoBakeError> {
    use std::io::IsTerminal as _;
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(DoBakeError::NeedsConfirmation { action });
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| DoBakeError::Internal(format!("reading the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(DoBakeError::Declined { action })
    }
}

fn spaced(during: &'static str) -> impl FnOnce(space::SpaceError) -> DoBakeError {
    move |source| DoBakeError::Space {
        during,
        source: Box::new(source),
    }
}

/// Ctrl-C and SIGTERM as one stream.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, DoBakeError> {
        use tokio::signal::unix::{SignalKind, signal};
        let e = |e: std::io::Error| DoBakeError::Internal(format!("cannot handle signals: {e}"));
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(e)?,
            term: signal(SignalKind::terminate()).map_err(e)?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// 8 random hex digits naming one bake (its droplet name and reconcile tag).
fn new_bake_id() -> String {
    hex::encode(rand::random::<[u8; 4]>())
}

/// A droplet name from the image name: `ib-<name>-<id>`, valid for DigitalOcean.
fn droplet_name(spec_name: &str, bake_id: &str) -> String {
    let clean: String = spec_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!(
        "ib-{}-{bake_id}",
        clean.trim_matches(|c| c == '-' || c == '.')
    )
}

/// The Space the bake uses: the options, else the spec's artifact bucket.
fn open_space(loaded: &LoadedSpec, opts: &DoBakeOptions) -> Result<Space, DoBakeError> {
    let settings = match &opts.space {
        Some(s) => s.clone(),
        None => match loaded.spec.agent.artifact.as_ref() {
            Some(a) => S3Settings {
                endpoint: a.endpoint_url(),
                region: a.region.clone(),
                bucket: a.bucket.clone(),
                path_style: a.path_style,
            },
            _ => {
                return Err(DoBakeError::Config(format!(
                    "{}: the DigitalOcean bake needs a Space for the agent binary and the seal report: give \
                     --space-endpoint and --space-bucket, or set agent.artifact.bucket (and agent.artifact.endpoint unless it is the region's Space) in the spec",
                    loaded.path.display()
                )));
            }
        },
    };
    let creds = match &opts.space_credentials {
        Some(c) => c.clone(),
        None => S3Credentials::from_env()
            .map_err(DoBakeError::SpaceCredentials)?
            .ok_or_else(|| {
                DoBakeError::Config(
                    "no Space credentials: set SPACES_ACCESS_KEY_ID and SPACES_SECRET_ACCESS_KEY (or give --space-credentials-file, mode 0600)"
                        .into(),
                )
            })?,
    };
    Ok(Space::new(&settings, &creds))
}

/// One bake in progress.
struct Bake<'a> {
    client: Client,
    space: Space,
    sf: StateFile,
    loaded: &'a LoadedSpec,
    agent: Option<&'a AgentArtifact>,
    opts: &'a DoBakeOptions,
    plan: Option<Plan>,
    resumed: bool,
    started: Instant,
    lap: Instant,
}

/// Run a DigitalOcean bake. Returns the result and the image's name (which,
/// on `--resume`, is the name recorded in the state file, not `name`).
pub async fn bake(
    loaded: &LoadedSpec,
    name: &str,
    agent: Option<&AgentArtifact>,
    opts: &DoBakeOptions,
) -> Result<(BakeResult, String), DoBakeError> {
    let do_spec = loaded.spec.digitalocean.as_ref().ok_or_else(|| {
        DoBakeError::Spec(format!(
            "{}: the spec has no `digitalocean` section (region, size): the DigitalOcean backend needs it",
            loaded.path.display()
        ))
    })?;
    let base = loaded.spec.base.digitalocean.clone().ok_or_else(|| {
        DoBakeError::Spec(format!(
            "{}: base.digitalocean is not set: the DigitalOcean backend needs a base image (slug, id or image name)",
            loaded.path.display()
        ))
    })?;
    let client = opts.connection.client().map_err(api("connecting"))?;
    let space = open_space(loaded, opts)?;
    let (sf, resumed) = match &opts.resume {
        Some(path) => {
            let sf = StateFile::load(path)?;
            if sf.state.spec_sha256 != loaded.spec_hash() {
                return Err(DoBakeError::Resume {
                    path: path.clone(),
                    reason: format!(
                        "it is a bake of spec {} with sha256 {}, not of {} (sha256 {})",
                        sf.state.spec.display(),
                        sf.state.spec_sha256,
                        loaded.path.display(),
                        loaded.spec_hash()
                    ),
                });
            }
            if matches!(sf.state.phase, Phase::Done | Phase::Failed) {
                return Err(DoBakeError::Resume {
                    path: path.clone(),
                    reason: format!(
                        "that bake already ended ({:?}{})",
                        sf.state.phase,
                        sf.state
                            .error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ),
                });
            }
            (sf, true)
        }
        None => {
            let bake_id = new_bake_id();
            let dir = opts
                .state_dir
                .clone()
                .unwrap_or_else(state::default_state_dir);
            let st = BakeState {
                version: STATE_VERSION,
                droplet_name: droplet_name(&loaded.spec.name.value, &bake_id),
                report_key: space::report_key(&bake_id),
                bake_id,
                started_at: now_rfc3339(),
                spec: loaded.path.clone(),
                spec_sha256: loaded.spec_hash(),
                image_name: name.to_owned(),
                region: do_spec.region.clone(),
                size: do_spec.size.clone(),
                api_url: client.base_url().to_string(),
                phase: Phase::Preflight,
                droplet_id: None,
                droplet_disk_gb: None,
                project_id: None,
                project_assigned: false,
                snapshot_action_id: None,
                image_id: None,
                agent_key: None,
                report: None,
                timings: Timings::default(),
                error: None,
                droplet_destroyed: false,
            };
            (StateFile::create(&dir, st)?, false)
        }
    };
    tracing::info!(
        "bake {} of {}: state in {}",
        sf.state.bake_id,
        sf.state.image_name,
        sf.path.display()
    );
    let mut bake = Bake {
        client,
        space,
        sf,
        loaded,
        agent,
        opts,
        plan: None,
        resumed,
        started: Instant::now(),
        lap: Instant::now(),
    };
    if bake.sf.state.droplet_id.is_none() {
        // Something billable is about to be created: check and confirm first.
        let checked = async {
            let plan = preflight::check(&bake.client, do_spec, &base).await?;
            eprint!(
                "{}",
                preflight::describe(
                    &plan,
                    &bake.sf.state.droplet_name,
                    &bake.sf.state.image_name,
                    loaded.spec.bake.timeout.0
                )
            );
            preflight::confirm(opts.yes).await?;
            Ok::<_, DoBakeError>(plan)
        }
        .await;
        let plan = match checked {
            Ok(p) => p,
            Err(e) => {
                // Nothing was created; the state file records why.
                let msg = e.to_string();
                let _ = bake.sf.update(|s| {
                    s.phase = Phase::Failed;
                    s.error = Some(msg);
                });
                return Err(e);
            }
        };
        let project = plan.project_id.clone();
        bake.sf.update(|s| s.project_id = Some(project))?;
        bake.plan = Some(plan);
        bake.mark(BakeStep::Preflight)?;
    }

    // From here on the builder may exist: every exit path destroys it.
    let mut signals = Signals::new()?;
    let outcome = tokio::select! {
        r = bake.run() => r,
        s = signals.recv() => {
            tracing::warn!("{s}: stopping the bake and destroying the builder (a second signal abandons the cleanup)");
            Err(DoBakeError::Interrupted(s))
        }
    };
    if let Err(e) = &outcome {
        let msg = e.to_string();
        let _ = bake.sf.update(|s| s.error = Some(msg));
    }
    let cleanup = tokio::select! {
        r = bake.cleanup() => r,
        s = signals.recv() => {
            let droplet = bake.sf.state.droplet_id.unwrap_or(0);
            Err(DoBakeError::Cleanup { droplet, reason: format!("cleanup abandoned on {s}"), state: bake.sf.path.clone() })
        }
    };
    let failed = outcome.is_err() || cleanup.is_err();
    let _ = bake
        .sf
        .update(|s| s.phase = if failed { Phase::Failed } else { Phase::Done });
    match (outcome, cleanup) {
        (Ok(()), Ok(())) => Ok((bake.result(), bake.sf.state.image_name.clone())),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(c)) => Err(c),
        (Err(e), Err(c)) => Err(DoBakeError::AndCleanup {
            main: Box::new(e),
            cleanup: Box::new(c),
        }),
    }
}

impl Bake<'_> {
    fn droplet(&self) -> Result<u64, DoBakeError> {
        self.sf
            .state
            .droplet_id
            .ok_or_else(|| DoBakeError::Internal("no builder droplet recorded".into()))
    }

    fn bake_tag(&self) -> String {
        format!("{BAKE_TAG_PREFIX}{}", self.sf.state.bake_id)
    }

    fn mark(&mut self, step: BakeStep) -> Result<(), DoBakeError> {
        let seconds = self.lap.elapsed().as_secs_f64();
        self.lap = Instant::now();
        self.sf.update(|s| s.timings.push(step, seconds))?;
        Ok(())
    }

    fn phase(&mut self, p: Phase) -> Result<(), DoBakeError> {
        if self.sf.state.phase < p {
            self.sf.update(|s| s.phase = p)?;
        }
        Ok(())
    }

    fn elapsed(&self) -> String {
        secs(self.started.elapsed())
    }

    async fn run(&mut self) -> Result<(), DoBakeError> {
        if self.sf.state.droplet_id.is_none() {
            self.create().await?;
        }
        if !self.sf.state.project_assigned {
            self.assign_project().await?;
        }
        if self.sf.state.report.is_none() {
            self.wait_provisioned().await?;
        }
        if self.sf.state.snapshot_action_id.is_none() && self.sf.state.image_id.is_none() {
            self.power_off().await?;
        }
        if self.sf.state.image_id.is_none() {
            self.snapshot().await?;
        }
        if self.sf.state.phase <= Phase::Finishing {
            self.finish().await?;
        }
        Ok(())
    }

    /// Space uploads, user-data, and the reconciled create.
    async fn create(&mut self) -> Result<(), DoBakeError> {
        self.phase(Phase::Creating)?;
        let tag = self.bake_tag();
        if self.resumed {
            // The process may have died after the create was sent.
            let found = self
                .client
                .list_droplets_by_tag(&tag)
                .await
                .map_err(api("looking for the builder of the resumed bake"))?;
            if let Some(d) = found.into_iter().min_by_key(|d| d.id) {
                tracing::info!(
                    "resuming with builder droplet {} (found by tag {tag})",
                    d.id
                );
                self.sf.update(|s| {
                    s.droplet_id = Some(d.id);
                    s.droplet_disk_gb = Some(d.disk);
                })?;
                return Ok(());
            }
        }
        let plan = self
            .plan
            .clone()
            .ok_or_else(|| DoBakeError::Internal("create without a pre-flight plan".into()))?;
        let timeout = self.loaded.spec.bake.timeout.0;
        let agent = match self.agent {
            Some(a) => {
                let (key, uploaded) = self
                    .space
                    .ensure_agent(&a.path, &a.sha256)
                    .await
                    .map_err(spaced("uploading the agent binary"))?;
                tracing::info!(
                    "agent {} {} {}",
                    a.sha256,
                    if uploaded {
                        "uploaded to"
                    } else {
                        "already in"
                    },
                    self.space.describe()
                );
                let url = self
                    .space
                    .presign_get(&key, timeout + Duration::from_secs(900))
                    .await
                    .map_err(spaced("presigning the agent download"))?;
                self.sf.update(|s| s.agent_key = Some(key))?;
                Some(AgentBinary {
                    source: AgentSource::Url(url),
                    sha256: a.sha256.clone(),
                    config_toml: a.config_toml.clone(),
                    unit: a.unit.clone(),
                })
            }
            None => None,
        };
        let report_url = self
            .space
            .presign_put(
                &self.sf.state.report_key,
                timeout + Duration::from_secs(1800),
            )
            .await
            .map_err(spaced("presigning the seal report upload"))?;
        let mut ropts = RenderOptions::new(Mode::Bake);
        ropts.report_url = Some(report_url);
        ropts.agent = agent;
        let rendered = render::render(self.loaded, &ropts)?;
        for n in &rendered.notes {
            tracing::warn!("{n}");
        }
        let mut req = DropletCreate::new(
            &self.sf.state.droplet_name,
            &plan.region,
            &plan.size.slug,
            plan.image.clone(),
        );
        req.user_data = Some(rendered.text);
        req.tags = vec![TAG.to_owned(), tag.clone()];
        if let Some(d) = &self.loaded.spec.digitalocean {
            for t in &d.tags {
                let t = t.as_str().to_owned();
                if !req.tags.contains(&t) {
                    req.tags.push(t);
                }
            }
        }
        let created = match self.client.create_droplet_reconciled(&req, &tag).await {
            Ok(c) => c,
            Err(e) => {
                if let Some(why) =
                    preflight::explain_create_refusal(&e, &plan.size.slug, &plan.region)
                {
                    return Err(DoBakeError::Refused(why));
                }
                return Err(api("creating the builder droplet")(e));
            }
        };
        let d = created.droplet;
        self.sf.update(|s| {
            s.droplet_id = Some(d.id);
            s.droplet_disk_gb = Some(d.disk);
        })?;
        tracing::info!(
            "[{}] created builder droplet {} ({}, {}){}",
            self.elapsed(),
            d.id,
            d.name,
            plan.size.slug,
            if created.reconciled {
                " (found by its tag after a failed create)"
            } else {
                ""
            }
        );
        self.mark(BakeStep::Create)?;
        Ok(())
    }

    async fn assign_project(&mut self) -> Result<(), DoBakeError> {
        let id = self.droplet()?;
        let project = self
            .sf
            .state
            .project_id
            .clone()
            .unwrap_or_else(|| "default".into());
        let urn = format!("do:droplet:{id}");
        let res = self
            .client
            .assign_to_project(&project, std::slice::from_ref(&urn))
            .await
            .map_err(api("assigning the builder to its project"))?;
        if let Some(bad) = res.iter().find(|r| {
            r.status
                .as_deref()
                .is_some_and(|s| s != "ok" && s != "assigned" && s != "already_assigned")
        }) {
            tracing::warn!(
                "assigning {urn} to project {project}: status {:?}",
                bad.status
            );
        }
        self.sf.update(|s| s.project_assigned = true)?;
        Ok(())
    }

    /// Poll the Space for the seal report; look at the droplet every 6 polls.
    async fn wait_provisioned(&mut self) -> Result<(), DoBakeError> {
        self.phase(Phase::Provisioning)?;
        let id = self.droplet()?;
        let timeout = self.loaded.spec.bake.timeout.0;
        let start = Instant::now();
        let poll = self.opts.poll;
        let key = self.sf.state.report_key.clone();
        let mut store_errors = 0u32;
        let mut last_status = DropletStatus::New;
        let mut last_progress = Instant::now();
        tracing::info!(
            "[{}] waiting for droplet {id} to provision and report (timeout {})",
            self.elapsed(),
            secs(timeout)
        );
        for i in 1u64.. {
            match self.space.read_report(&key).await {
                Ok(Some(r)) => return self.got_report(id, r),
                Ok(None) => store_errors = 0,
                Err(e) => {
                    store_errors += 1;
                    if store_errors > 10 {
                        return Err(DoBakeError::Space {
                            during: "reading the seal report",
                            source: Box::new(e),
                        });
                    }
                    tracing::warn!("reading the seal report failed ({store_errors} in a row): {e}");
                }
            }
            if i % 6 == 0 {
                match self.client.get_droplet(id).await {
                    Ok(d) => {
                        last_status = d.status;
                        if d.status == DropletStatus::Off && !d.locked {
                            // The report may have landed just before the power-off.
                            if let Ok(Some(r)) = self.space.read_report(&key).await {
                                return self.got_report(id, r);
                            }
                            return Err(DoBakeError::NoReport { droplet: id });
                        }
                    }
                    Err(e) if e.is_not_found() => {
                        return Err(DoBakeError::DropletVanished { droplet: id });
                    }
                    Err(e) => tracing::warn!("checking droplet {id} failed: {e}"),
                }
            }
            if start.elapsed() >= timeout {
                return Err(DoBakeError::ProvisionTimeout {
                    droplet: id,
                    timeout,
                    status: last_status,
                });
            }
            if last_progress.elapsed() >= Duration::from_secs(30) {
                last_progress = Instant::now();
                tracing::info!(
                    "[{}] droplet {id} is provisioning ({last_status}), {} of {}",
                    self.elapsed(),
                    secs(start.elapsed()),
                    secs(timeout)
                );
            }
            tokio::time::sleep(poll).await;
        }
        Err(DoBakeError::Internal("unreachable".into()))
    }

    fn got_report(&mut self, id: u64, r: SealReport) -> Result<(), DoBakeError> {
        let ok = r.status == SealStatus::Ok;
        let failure = (!ok).then(|| DoBakeError::ProvisioningFailed {
            droplet: id,
            reason: r.reason.clone().unwrap_or_else(|| "unknown".into()),
            step: r
                .failed_step
                .as_ref()
                .map(|s| format!(" (step {s})"))
                .unwrap_or_default(),
            tail: r.log_tail.join("\n"),
        });
        self.sf.update(|s| s.report = Some(r))?;
        if let Some(f) = failure {
            return Err(f);
        }
        tracing::info!(
            "[{}] droplet {id} reported: provisioning ok",
            self.elapsed()
        );
        self.mark(BakeStep::Provision)?;
        Ok(())
    }

    /// Poll until the droplet is `off` and unlocked, for at most `bound`.
    async fn wait_off(&self, id: u64, bound: Duration) -> Result<bool, DoBakeError> {
        let start = Instant::now();
        loop {
            match self.client.get_droplet(id).await {
                Ok(d) if d.status == DropletStatus::Off && !d.locked => return Ok(true),
                Ok(_) => {}
                Err(e) if e.is_not_found() => {
                    return Err(DoBakeError::DropletVanished { droplet: id });
                }
                Err(e) => tracing::warn!("checking droplet {id} failed: {e}"),
            }
            if start.elapsed() >= bound {
                return Ok(false);
            }
            tokio::time::sleep(self.opts.poll).await;
        }
    }

    /// Send a power action; retry while DigitalOcean refuses it because the
    /// droplet is busy (422 "Droplet already has a pending event.", for at most
    /// `bound`). "Droplet is already powered off" is what the action was for.
    /// An unknown outcome is left to the wait.
    async fn power_action(
        &self,
        id: u64,
        action: DropletAction,
        bound: Duration,
    ) -> Result<(), DoBakeError> {
        let start = Instant::now();
        loop {
            match self.client.droplet_action(id, &action).await {
                Ok(_) => return Ok(()),
                Err(e) if e.refusal() == Some(Refusal::AlreadyPoweredOff) => {
                    tracing::info!("{action} of droplet {id}: already off ({e})");
                    return Ok(());
                }
                Err(e) if e.refusal().is_some_and(Refusal::is_busy) && start.elapsed() < bound => {
                    tracing::info!(
                        "{action} of droplet {id} refused while it is busy ({e}); retrying"
                    );
                }
                Err(e) if e.is_not_found() => {
                    return Err(DoBakeError::DropletVanished { droplet: id });
                }
                Err(e @ (DoError::Transport { .. } | DoError::Api { .. }))
                    if e.status().is_none_or(|s| s >= 500) =>
                {
                    tracing::warn!(
                        "{action} of droplet {id}: outcome unknown ({e}); waiting for the droplet"
                    );
                    return Ok(());
                }
                Err(e) => return Err(api("powering off the builder")(e)),
            }
            tokio::time::sleep(self.opts.poll).await;
        }
    }

    /// The finisher powers off by itself; fall back to shutdown, then power_off.
    async fn power_off(&mut self) -> Result<(), DoBakeError> {
        self.phase(Phase::PoweringOff)?;
        let id = self.droplet()?;
        let bound = self.opts.power_off_after;
        if !self.wait_off(id, bound).await? {
            tracing::warn!(
                "droplet {id} is not off {} after its report: sending shutdown",
                secs(bound)
            );
            self.power_action(id, DropletAction::Shutdown, bound)
                .await?;
            if !self.wait_off(id, bound).await? {
                tracing::warn!(
                    "droplet {id} did not shut down within {}: sending power_off",
                    secs(bound)
                );
                self.power_action(id, DropletAction::PowerOff, bound)
                    .await?;
                if !self.wait_off(id, bound).await? {
                    return Err(DoBakeError::Api {
                        during: "powering off the builder",
                        source: Box::new(DoError::Timeout {
                            what: format!("droplet {id} to be off after power_off"),
                            after: bound,
                        }),
                    });
                }
            }
        }
        self.mark(BakeStep::PowerOff)?;
        Ok(())
    }

    /// Send the snapshot action once (reconciling an unknown outcome through
    /// the droplet's actions), wait for it, find the image.
    async fn snapshot(&mut self) -> Result<(), DoBakeError> {
        self.phase(Phase::Snapshotting)?;
        let id = self.droplet()?;
        let name = self.sf.state.image_name.clone();
        let action_id = match self.sf.state.snapshot_action_id {
            Some(a) => a,
            None => {
                let a = self.send_snapshot(id, &name).await?;
                self.sf.update(|s| s.snapshot_action_id = Some(a))?;
                a
            }
        };
        let disk = self.sf.state.droplet_disk_gb.unwrap_or(25);
        // DigitalOcean: 1-3 minutes per GB of used disk; the disk bounds that.
        let timeout = Duration::from_secs(600 + 180 * disk);
        tracing::info!(
            "[{}] snapshot {name:?} of droplet {id} started (action {action_id}, timeout {})",
            self.elapsed(),
            secs(timeout)
        );
        self.wait_snapshot(id, action_id, timeout).await?;
        let image = self.find_image(id, &name).await?;
        self.sf.update(|s| s.image_id = Some(image))?;
        tracing::info!("[{}] snapshot done: image {image}", self.elapsed());
        self.mark(BakeStep::Snapshot)?;
        Ok(())
    }

    /// Poll the snapshot action, every `poll` at first and then every fifth of
    /// the time spent so far (at most 30 s): a snapshot takes minutes, and this
    /// keeps the request count logarithmic while adding at most ~20% latency.
    /// `errored` fails at once; three transient errors in a row are tolerated.
    async fn wait_snapshot(
        &self,
        id: u64,
        action_id: u64,
        timeout: Duration,
    ) -> Result<(), DoBakeError> {
        let start = Instant::now();
        let mut errors = 0u32;
        let mut last_progress = Instant::now();
        loop {
            match self.client.get_action(action_id).await {
                Ok(a) => {
                    errors = 0;
                    match a.status {
                        ActionStatus::Completed => return Ok(()),
                        ActionStatus::Errored => {
                            return Err(DoBakeError::SnapshotErrored {
                                droplet: id,
                                action: action_id,
                            });
                        }
                        ActionStatus::InProgress | ActionStatus::Unknown => {}
                    }
                }
                Err(e) if e.status().is_some_and(|s| s < 500 && s != 429) => {
                    return Err(api("waiting for the snapshot")(e));
                }
                Err(e) => {
                    errors += 1;
                    if errors > 3 {
                        return Err(api("waiting for the snapshot")(e));
                    }
                    tracing::warn!("polling snapshot action {action_id} failed: {e}; trying again");
                }
            }
            let spent = start.elapsed();
            if spent >= timeout {
                return Err(DoBakeError::Api {
                    during: "waiting for the snapshot",
                    source: Box::new(DoError::Timeout {
                        what: format!("snapshot action {action_id} of droplet {id}"),
                        after: timeout,
                    }),
                });
            }
            if last_progress.elapsed() >= Duration::from_secs(30) {
                last_progress = Instant::now();
                tracing::info!(
                    "[{}] snapshot of droplet {id} in progress, {} so far",
                    self.elapsed(),
                    secs(spent)
                );
            }
            let interval =
                (spent / 5).clamp(self.opts.poll, Duration::from_secs(30).max(self.opts.poll));
            tokio::time::sleep(interval).await;
        }
    }

    async fn send_snapshot(&self, id: u64, name: &str) -> Result<u64, DoBakeError> {
        let start = Instant::now();
        let bound = self.opts.power_off_after;
        let mut unknown = 0u32;
        loop {
            match self.client.snapshot(id, name).await {
                Ok(a) => return Ok(a.id),
                Err(e) if e.refusal().is_some_and(Refusal::is_busy) && start.elapsed() < bound => {
                    tracing::info!(
                        "snapshot of droplet {id} refused while it is busy ({e}); retrying"
                    );
                }
                Err(e) if e.is_not_found() => {
                    return Err(DoBakeError::DropletVanished { droplet: id });
                }
                Err(
                    e @ (DoError::Transport { .. } | DoError::Api { .. } | DoError::Decode { .. }),
                ) if e.status().is_none_or(|s| s >= 500) && unknown < 3 => {
                    unknown += 1;
                    // Did it start anyway? A second snapshot would be a second image.
                    tokio::time::sleep(self.opts.poll).await;
                    let actions = self
                        .client
                        .list_droplet_actions(id)
                        .await
                        .map_err(api("checking whether the snapshot started"))?;
                    if let Some(a) = actions
                        .iter()
                        .filter(|a| a.kind == ActionType::Snapshot)
                        .max_by_key(|a| a.id)
                    {
                        tracing::warn!(
                            "snapshot request failed ({e}) but action {} exists: using it",
                            a.id
                        );
                        return Ok(a.id);
                    }
                    tracing::warn!(
                        "snapshot request failed ({e}) and no snapshot action exists: sending it again"
                    );
                    continue;
                }
                Err(e) => return Err(api("starting the snapshot")(e)),
            }
            tokio::time::sleep(self.opts.poll).await;
        }
    }

    /// The image id: the droplet's snapshot with our name (the newest if
    /// several), retried briefly in case the list lags the action.
    async fn find_image(&self, id: u64, name: &str) -> Result<u64, DoBakeError> {
        for attempt in 0..5u32 {
            let snaps = self
                .client
                .list_droplet_snapshots(id)
                .await
                .map_err(api("listing the droplet's snapshots"))?;
            let mut named: Vec<_> = snaps.iter().filter(|s| s.name == name).collect();
            named.sort_by_key(|s| s.id);
            if named.len() > 1 {
                tracing::warn!(
                    "droplet {id} has {} snapshots named {name:?}: using the newest ({})",
                    named.len(),
                    named.last().map(|s| s.id).unwrap_or_default()
                );
            }
            if let Some(s) = named.last() {
                return Ok(s.id);
            }
            if attempt == 4 {
                break;
            }
            tokio::time::sleep(self.opts.poll).await;
        }
        // Last resort: the private images by name.
        match self
            .client
            .newest_image_named(name)
            .await
            .map_err(api("looking up the image by name"))?
        {
            Some(i) => Ok(i.id),
            None => Err(DoBakeError::ImageNotFound {
                droplet: id,
                name: name.to_owned(),
            }),
        }
    }

    /// Describe and tag the image.
    async fn finish(&mut self) -> Result<(), DoBakeError> {
        self.phase(Phase::Finishing)?;
        let image = self
            .sf
            .state
            .image_id
            .ok_or_else(|| DoBakeError::Internal("finish without an image".into()))?;
        let st = &self.sf.state;
        let description = format!(
            "image-builder bake {} of {} (spec sha256 {}){}",
            st.bake_id,
            self.loaded.spec.name.value,
            &st.spec_sha256[..12.min(st.spec_sha256.len())],
            self.agent
                .map(|a| format!(", vm-agent sha256 {}", &a.sha256[..12.min(a.sha256.len())]))
                .unwrap_or_default()
        );
        self.client
            .update_image(
                image,
                &ImageUpdate {
                    name: None,
                    distribution: None,
                    description: Some(description),
                },
            )
            .await
            .map_err(api("describing the image"))?;
        let mut tags = vec![TAG.to_owned()];
        if let Some(d) = &self.loaded.spec.digitalocean {
            tags.extend(d.tags.iter().map(|t| t.as_str().to_owned()));
        }
        tags.dedup();
        for t in &tags {
            // The droplet create made these tags; create one only if it vanished.
            match self
                .client
                .tag_resources(t, &[TagTarget::Image(image)])
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {
                    self.client
                        .create_tag(t)
                        .await
                        .map_err(api("creating an image tag"))?;
                    self.client
                        .tag_resources(t, &[TagTarget::Image(image)])
                        .await
                        .map_err(api("tagging the image"))?;
                }
                Err(e) => return Err(api("tagging the image")(e)),
            }
        }
        self.phase(Phase::Destroying)?;
        self.mark(BakeStep::Finish)?;
        Ok(())
    }

    /// Destroy the builder (and anything carrying this bake's tag) and confirm 404.
    async fn cleanup(&mut self) -> Result<(), DoBakeError> {
        let deadline = Instant::now() + self.opts.destroy_timeout;
        let mut ids: Vec<u64> = self.sf.state.droplet_id.into_iter().collect();
        let unsure = self.sf.state.droplet_id.is_none() && self.sf.state.phase >= Phase::Creating;
        if unsure || self.sf.state.error.is_some() {
            // A create may have been in flight, or a reconcile may have picked one of two.
            let tag = self.bake_tag();
            loop {
                match self.client.list_droplets_by_tag(&tag).await {
                    Ok(found) => {
                        for d in found {
                            if !ids.contains(&d.id) {
                                ids.push(d.id);
                            }
                        }
                        break;
                    }
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!("listing droplets tagged {tag} failed: {e}; retrying");
                        tokio::time::sleep(self.opts.poll).await;
                    }
                    Err(e) => {
                        return Err(DoBakeError::Cleanup {
                            droplet: ids.first().copied().unwrap_or(0),
                            reason: e.to_string(),
                            state: self.sf.path.clone(),
                        });
                    }
                }
            }
        }
        let poll = Poll::new(
            self.opts.poll.min(Duration::from_secs(2)),
            self.opts.destroy_timeout,
        );
        for id in ids {
            loop {
                match self.client.destroy_droplet(id, poll).await {
                    Ok(()) => {
                        tracing::info!(
                            "[{}] builder droplet {id} destroyed (confirmed 404)",
                            self.elapsed()
                        );
                        if Some(id) == self.sf.state.droplet_id {
                            self.sf.update(|s| s.droplet_destroyed = true)?;
                        }
                        break;
                    }
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!("destroying droplet {id} failed: {e}; trying again");
                        tokio::time::sleep(self.opts.poll).await;
                    }
                    Err(e) => {
                        return Err(DoBakeError::Cleanup {
                            droplet: id,
                            reason: e.to_string(),
                            state: self.sf.path.clone(),
                        });
                    }
                }
            }
        }
        if self.sf.state.phase >= Phase::Creating
            && let Err(e) = self.space.delete(&self.sf.state.report_key).await
        {
            tracing::warn!("could not delete the seal report from the Space: {e}");
        }
        self.mark(BakeStep::Destroy)?;
        Ok(())
    }

    fn result(&self) -> BakeResult {
        let st = &self.sf.state;
        let image = st.image_id.unwrap_or_default();
        BakeResult {
            artifact_id: format!("{}:{image}", st.region),
            builder_type: BUILDER_TYPE.to_owned(),
            files: Vec::new(),
            timings: st.timings.clone(),
            report: st
                .report
                .clone()
                .unwrap_or_else(|| SealReport::new(SealStatus::Ok)),
            details: serde_json::json!({
                "bake_id": st.bake_id,
                "image_id": image,
                "image_name": st.image_name,
                "region": st.region,
                "size": st.size,
                "droplet_id": st.droplet_id,
                "base_image": self.plan.as_ref().map(|p| p.image_label.clone()),
                "droplet_destroyed": st.droplet_destroyed,
                "project_id": st.project_id,
                "agent_key": st.agent_key,
                "state_file": st_path(&self.sf.path),
                "resumed": self.resumed,
                "api_requests": self.client.request_count(),
                "api_retries": self.client.retry_count(),
            }),
        }
    }
}

fn st_path(p: &Path) -> String {
    p.display().to_string()
}
