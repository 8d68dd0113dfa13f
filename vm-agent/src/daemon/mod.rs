//! The daemon: staged readiness, the job table, timers and self-destroy, served over a unix
//! socket (see [`server`]). Single-threaded tokio runtime (small RSS); state lives in one
//! `Mutex<Inner>` held only for short, non-async sections.

mod exec;
pub mod server;

use crate::artifacts::{ArtifactFetcher, ArtifactItem, PullRefused};
use crate::cloud_init::{self, CloudInitState, CloudInitStatus};
use crate::config::{Config, ConfigError, Secrets};
use crate::destroy::{self, DestroyState, Destroyer, Guard, Outcome};
use crate::error::{EXIT_CONFIG, EXIT_FAILURE, Error};
use crate::hostkeys;
use crate::jobs::{JobRecord, JobState, JobStore};
use crate::report::{
    DestroyStatus, Hold, JobsSummary, REPORT_VERSION, RunAsReport, Stage, StageEntry, StatusReport,
    SystemStats,
};
use crate::sessions::{self, Session, SessionSource, SystemSessions};
use crate::timers::{self, TimerInputs, TimerStatus};
use crate::users;
use crate::util;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{Semaphore, watch};

/// Who jobs run as.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: String,
    /// Switch identity (setgroups/setgid/setuid) before exec: only when root.
    pub switch: bool,
    pub note: Option<String>,
}

/// Startup errors, mapped to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid config: field `{field}`: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Io(String),
}

impl StartError {
    /// 78 for a config problem (systemd does not restart), 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) | StartError::Field { .. } => EXIT_CONFIG,
            StartError::Io(_) => EXIT_FAILURE,
        }
    }
}

/// Resolve the job identity from the config and our own euid.
pub fn resolve_run_as(cfg: &Config, euid: u32) -> Result<RunAs, StartError> {
    let p = &cfg.paths;
    let me = |note: Option<String>| {
        let name = users::user_name(&p.passwd_file, euid).unwrap_or_else(|| euid.to_string());
        let info = users::lookup_user(&p.passwd_file, &p.group_file, &name).ok();
        let gid = nix::unistd::getegid().as_raw();
        RunAs {
            user: name,
            uid: euid,
            gid,
            groups: vec![],
            home: info
                .as_ref()
                .map(|i| i.home.clone())
                .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/")),
            shell: info.map(|i| i.shell).unwrap_or_else(|| "/bin/sh".into()),
            switch: false,
            note,
        }
    };
    match &cfg.jobs.user {
        None => Ok(me(Some(
            "jobs.user is unset: jobs run as the agent's own user".into(),
        ))),
        Some(u) if euid != 0 => Ok(me(Some(format!(
            "agent is not root: jobs run as the agent's own user instead of `{u}`"
        )))),
        Some(u) => {
            let info = users::lookup_user(&p.passwd_file, &p.group_file, u).map_err(|e| {
                StartError::Field {
                    field: "jobs.user",
                    message: e.to_string(),
                }
            })?;
            Ok(RunAs {
                user: info.name,
                uid: info.uid,
                gid: info.gid,
                groups: info.groups,
                home: info.home,
                shell: info.shell,
                switch: true,
                note: None,
            })
        }
    }
}

pub(crate) struct Inner {
    stage: Stage,
    reason: Option<String>,
    history: Vec<StageEntry>,
    cloud_init: CloudInitStatus,
    jobs: BTreeMap<u64, JobRecord>,
    cancels: HashMap<u64, watch::Sender<Option<JobState>>>,
    next_id: u64,
    hold: Option<Hold>,
    ready_at: Option<SystemTime>,
    idle_since: Option<SystemTime>,
    sessions: Vec<Session>,
    timers: Vec<TimerStatus>,
    draining: Option<String>,
    destroy: DestroyStatus,
    /// Self-destroy finished or was refused for good: timers no longer fire.
    destroy_done: bool,
    destroying: bool,
    /// After a guard blocked self-destroy, don't fire again before this.
    retry_at: Option<SystemTime>,
    callback: Option<String>,
}

impl Inner {
    /// How many jobs are in `state`.
    fn jobs_in(&self, state: JobState) -> usize {
        self.jobs.values().filter(|j| j.state == state).count()
    }
}

/// Everything the daemon needs, injectable for tests.
pub struct Parts {
    pub sessions: Box<dyn SessionSource>,
    pub fetcher: Box<dyn ArtifactFetcher>,
    pub destroyer: Box<dyn Destroyer>,
}

pub struct Agent {
    pub cfg: Config,
    secrets: Secrets,
    pub run_as: RunAs,
    euid: u32,
    socket_gid: Option<u32>,
    store: JobStore,
    inner: Mutex<Inner>,
    stage_tx: watch::Sender<Stage>,
    slots: Arc<Semaphore>,
    parts: Parts,
    started_at: SystemTime,
    boot_time: SystemTime,
}

fn boot_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(sysinfo::System::boot_time().unwrap_or(0))
}

fn hold_path(cfg: &Config) -> PathBuf {
    cfg.paths.state_dir.join("hold.json")
}

impl Agent {
    /// Prepare directories, load job records (marking interrupted ones `lost`) and the hold.
    pub fn new(cfg: Config, secrets: Secrets, parts: Parts) -> Result<Arc<Agent>, StartError> {
        let euid = nix::unistd::geteuid().as_raw();
        let run_as = resolve_run_as(&cfg, euid)?;
        let socket_gid = match &cfg.socket.group {
            Some(g) => Some(users::lookup_group(&cfg.paths.group_file, g).map_err(|e| {
                StartError::Field {
                    field: "socket.group",
                    message: e.to_string(),
                }
            })?),
            None => None,
        };
        for (dir, mode) in [
            (&cfg.paths.runtime_dir, 0o755),
            (&cfg.paths.state_dir, 0o750),
        ] {
            mkdir(dir, mode)?;
        }
        let store =
            JobStore::open(&cfg.paths.state_dir).map_err(|e| StartError::Io(e.to_string()))?;
        let records = store.load_and_recover();
        let next_id = records.last().map(|r| r.id + 1).unwrap_or(1);
        let hold: Option<Hold> = std::fs::read(hold_path(&cfg))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let now = SystemTime::now();
        let (stage_tx, _) = watch::channel(Stage::Booting);
        let slots = Arc::new(Semaphore::new(cfg.jobs.max_concurrent as usize));
        let provider = parts.destroyer.provider().to_string();
        Ok(Arc::new(Agent {
            inner: Mutex::new(Inner {
                stage: Stage::Booting,
                reason: None,
                history: vec![StageEntry {
                    stage: Stage::Booting,
                    at: now,
                    reason: None,
                }],
                cloud_init: CloudInitStatus::with_state(CloudInitState::NotStarted),
                jobs: records.into_iter().map(|r| (r.id, r)).collect(),
                cancels: HashMap::new(),
                next_id,
                hold,
                ready_at: None,
                idle_since: None,
                sessions: vec![],
                timers: vec![],
                draining: None,
                destroy: DestroyStatus {
                    provider,
                    state: DestroyState::Armed,
                    ..Default::default()
                },
                destroy_done: false,
                destroying: false,
                retry_at: None,
                callback: None,
            }),
            cfg,
            secrets,
            run_as,
            euid,
            socket_gid,
            store,
            stage_tx,
            slots,
            parts,
            started_at: now,
            boot_time: boot_time(),
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock aborts the process (panic = abort in release), so a
        // poisoned lock only happens in tests; the data is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_stage(&self, stage: Stage, reason: Option<String>) {
        {
            let mut i = self.lock();
            i.stage = stage;
            if reason.is_some() {
                i.reason = reason.clone();
            }
            i.history.push(StageEntry {
                stage,
                at: SystemTime::now(),
                reason: reason.clone(),
            });
        }
        match &reason {
            Some(r) => tracing::warn!(stage = stage.as_str(), "stage: {} ({r})", stage.as_str()),
            None => tracing::info!(stage = stage.as_str(), "stage: {}", stage.as_str()),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
            "stage: {}",
            stage.as_str()
        ))]);
        self.stage_tx.send_replace(stage);
    }

    /// The staged readiness sequence. Runs once.
    pub async fn readiness(self: Arc<Self>) {
        let c = &self.cfg.cloud_init;
        let mut reasons: Vec<String> = vec![];
        self.set_stage(Stage::WaitingCloudInit, None);
        let started = tokio::time::Instant::now();
        let final_ci = if !c.wait {
            CloudInitStatus::with_state(CloudInitState::Skipped)
        } else {
            loop {
                let dirs = c.status_dirs.clone();
                let nb = self.boot_time;
                let st =
                    tokio::task::spawn_blocking(move || cloud_init::read_status(&dirs, Some(nb)))
                        .await
                        .unwrap_or_else(|_| {
                            CloudInitStatus::with_state(CloudInitState::NotStarted)
                        });
                self.lock().cloud_init = st.clone();
                if st.state.is_final() {
                    break st;
                }
                if let Some(t) = c.timeout.duration()
                    && started.elapsed() >= t
                {
                    let mut st = st;
                    st.state = CloudInitState::TimedOut;
                    break st;
                }
                tokio::time::sleep(c.poll_interval.0).await;
            }
        };
        match final_ci.state {
            CloudInitState::Error => reasons.push(format!(
                "cloud-init finished with errors: {}",
                final_ci.errors.join("; ")
            )),
            CloudInitState::TimedOut => reasons.push(format!(
                "cloud-init did not finish within {} (last stage: {})",
                c.timeout,
                final_ci.stage.as_deref().unwrap_or("none")
            )),
            _ => {}
        }
        self.lock().cloud_init = final_ci;

        self.set_stage(Stage::FetchingArtifacts, None);
        let outcome = self.parts.fetcher.fetch().await;
        if let Some(r) = outcome.degraded {
            reasons.push(r);
        }

        let now = SystemTime::now();
        {
            let mut i = self.lock();
            i.ready_at = Some(now);
            i.idle_since = Some(now);
        }
        if reasons.is_empty() {
            self.set_stage(Stage::Ready, None);
        } else {
            self.set_stage(Stage::Degraded, Some(reasons.join("; ")));
        }
        self.announce().await;
    }

    /// Ready file, sd_notify READY=1, readiness callback.
    async fn announce(&self) {
        let report = self.report();
        let name = if report.stage == Stage::Ready {
            "ready"
        } else {
            "degraded"
        };
        let path = self.cfg.paths.runtime_dir.join(name);
        let mut body = serde_json::to_vec_pretty(&report).unwrap_or_default();
        body.push(b'\n');
        if let Err(e) = util::write_atomic(&path, &body, 0o644) {
            tracing::error!("cannot write {}: {e}", path.display());
        }
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(report.stage.as_str()),
        ]);
        if let Some(url) = &self.cfg.readiness.callback_url {
            let result = self.callback(url, &report).await;
            match &result {
                Ok(m) => tracing::info!("readiness callback: {m}"),
                Err(m) => tracing::error!("readiness callback failed: {m}"),
            }
            self.lock().callback = Some(match result {
                Ok(m) => m,
                Err(m) => format!("failed: {m}"),
            });
        }
    }

    async fn callback(&self, url: &str, report: &StatusReport) -> Result<String, String> {
        let r = &self.cfg.readiness;
        let http = reqwest::Client::builder()
            .timeout(r.callback_timeout.0)
            .build()
            .map_err(|e| e.to_string())?;
        let mut last = String::new();
        for attempt in 1..=r.callback_attempts.max(1) {
            let mut req = http.post(url).json(report);
            if let Some(t) = &self.secrets.callback_token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    return Ok(format!("POST {url}: {}", resp.status()));
                }
                Ok(resp) => last = format!("POST {url}: {}", resp.status()),
                Err(e) => last = format!("POST {url}: {e}"),
            }
            if attempt < r.callback_attempts {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
        Err(last)
    }

    /// Pull `sha` now (`vm-agent pull SHA`); `status` shows it while it runs.
    pub async fn pull_artifact(&self, sha: String) -> Result<ArtifactItem, PullRefused> {
        self.parts.fetcher.pull(sha).await
    }

    /// Why the machine is busy (not idle), if it is. `pulling`: an artifact pull is running.
    fn busy_reason(i: &Inner, now: SystemTime, pulling: Option<String>) -> Option<String> {
        let running = i.jobs_in(JobState::Running);
        let queued = i.jobs_in(JobState::Queued);
        if running > 0 {
            return Some(format!("{running} job(s) running"));
        }
        if queued > 0 {
            return Some(format!("{queued} job(s) queued"));
        }
        if let Some(h) = &i.hold
            && h.until.is_none_or(|u| u > now)
        {
            return Some("hold".into());
        }
        if pulling.is_some() {
            return pulling;
        }
        if let Some(s) = i.sessions.first() {
            return Some(format!(
                "{} session(s) open ({}@{})",
                i.sessions.len(),
                s.user,
                s.tty.as_deref().unwrap_or("notty")
            ));
        }
        None
    }

    /// One timer tick: refresh sessions, expire the hold, update idle/timers, maybe fire.
    pub fn tick(self: &Arc<Self>) {
        let sessions = self.parts.sessions.sessions();
        let pulling = self.parts.fetcher.busy();
        let now = SystemTime::now();
        let fired = {
            let mut i = self.lock();
            i.sessions = sessions;
            if let Some(h) = &i.hold
                && h.until.is_some_and(|u| u <= now)
            {
                tracing::info!("hold expired");
                i.hold = None;
                let _ = std::fs::remove_file(hold_path(&self.cfg));
            }
            let busy = Self::busy_reason(&i, now, pulling);
            if busy.is_some() {
                i.idle_since = None;
            } else if i.ready_at.is_some() && i.idle_since.is_none() {
                i.idle_since = Some(now);
            }
            let inputs = TimerInputs {
                now,
                boot_time: self.boot_time,
                ready_at: i.ready_at,
                idle_since: i.idle_since,
                busy,
                jobs_ever: !i.jobs.is_empty(),
                job_ended: i.jobs.values().any(|j| {
                    !matches!(
                        j.state,
                        JobState::Queued | JobState::Running | JobState::Lost
                    )
                }),
                jobs_active: i.jobs_in(JobState::Running) + i.jobs_in(JobState::Queued) > 0,
            };
            let (statuses, fired) = timers::evaluate(&self.cfg.timers, &inputs);
            i.timers = statuses;
            match fired {
                Some(f)
                    if !i.destroy_done && !i.destroying && i.retry_at.is_none_or(|r| now >= r) =>
                {
                    i.destroying = true;
                    i.draining = Some(format!("{} timer fired: {}", f.timer, f.reason));
                    i.destroy.state = DestroyState::Draining;
                    i.destroy.timer = Some(f.timer);
                    i.destroy.at = Some(now);
                    Some(f)
                }
                _ => None,
            }
        };
        if let Some(f) = fired {
            let me = self.clone();
            tokio::spawn(async move { me.self_destroy(f).await });
        }
    }

    async fn self_destroy(self: Arc<Self>, fired: timers::Fired) {
        let reason = format!("{} timer fired: {}", fired.timer, fired.reason);
        tracing::warn!("{reason}; draining (new jobs are refused)");
        let grace = self.cfg.timers.warn_grace.0;
        if self.cfg.sessions.warn_users {
            let sessions = self.lock().sessions.clone();
            let msg = format!(
                "vm-agent: this machine will be destroyed in {} ({reason}). Run `vm-agent hold` to keep it.",
                crate::config::Dur(grace)
            );
            let n = sessions::warn_sessions(&sessions, &self.cfg.sessions.dev_dir, &msg);
            if n > 0 {
                tracing::warn!("warned {n} terminal(s)");
            }
        }
        tokio::time::sleep(grace).await;
        let record = {
            let mut i = self.lock();
            i.destroy.state = DestroyState::Destroying;
            format!(
                "vm-agent: destroying this machine ({}): {reason}; jobs running {}, queued {}\n",
                self.cfg.destroy.provider,
                i.jobs_in(JobState::Running),
                i.jobs_in(JobState::Queued)
            )
        };
        // The agent's own record of why the machine ends, where an operator (or a test)
        // reads it after the machine is gone: e.g. /dev/console, the serial console.
        if let Some(path) = &self.cfg.destroy.record_file
            && let Err(e) = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, record.as_bytes()))
        {
            tracing::warn!("cannot write the destroy record to {}: {e}", path.display());
        }
        let guard = AgentGuard { agent: &self };
        let outcome = self.parts.destroyer.destroy(&guard, &reason).await;
        let mut i = self.lock();
        i.destroy.state = outcome.state();
        i.destroy.detail = Some(outcome.detail().to_string());
        i.destroy.at = Some(SystemTime::now());
        i.destroying = false;
        match &outcome {
            Outcome::Destroyed(d) => {
                // The machine is going away: stay drained, never fire again.
                tracing::warn!("self-destroy: {d}");
                i.destroy_done = true;
            }
            Outcome::DryRun(_) => {
                i.destroy_done = true;
                i.draining = None;
            }
            Outcome::Blocked(b) => {
                let wait = self.cfg.timers.tick.0 * 5;
                tracing::warn!(
                    "self-destroy blocked: {b}; no longer draining, re-checking in {}",
                    crate::config::Dur(wait)
                );
                i.draining = None;
                i.retry_at = Some(SystemTime::now() + wait);
            }
            Outcome::Refused(r) => {
                tracing::error!("SELF-DESTROY REFUSED: {r}");
                i.destroy_done = true;
                i.draining = None;
            }
            Outcome::PoweredOff(d) => {
                tracing::error!("SELF-DESTROY FELL BACK TO POWER-OFF: {d}");
                i.destroy_done = true;
            }
            Outcome::Failed(e) => {
                tracing::error!("SELF-DESTROY FAILED: {e}");
                i.destroy_done = true;
                i.draining = None;
            }
        }
    }

    /// The readiness report / status.
    pub fn report(&self) -> StatusReport {
        let now = SystemTime::now();
        let system = system_stats(&self.cfg.paths.state_dir);
        let host_keys = hostkeys::host_keys(&self.cfg.paths.ssh_host_key_dir);
        let artifacts = self.parts.fetcher.report();
        let i = self.lock();
        let running = i.jobs_in(JobState::Running);
        let queued = i.jobs_in(JobState::Queued);
        StatusReport {
            report_version: REPORT_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            stage: i.stage,
            reason: i.reason.clone(),
            history: i.history.clone(),
            now,
            boot_time: self.boot_time,
            agent_started_at: self.started_at,
            uptime_secs: util::secs_between(self.boot_time, now),
            cloud_init: i.cloud_init.clone(),
            artifacts,
            jobs: JobsSummary {
                running: running as u32,
                queued: queued as u32,
                total: i.jobs.len() as u64,
                max_concurrent: self.cfg.jobs.max_concurrent,
                run_as: RunAsReport {
                    user: self.run_as.user.clone(),
                    uid: self.run_as.uid,
                    gid: self.run_as.gid,
                    note: self.run_as.note.clone(),
                },
                recent: i.jobs.values().rev().take(10).rev().cloned().collect(),
            },
            idle_since: i.idle_since,
            hold: i.hold.clone(),
            sessions: i.sessions.clone(),
            timers: i.timers.clone(),
            draining: i.draining.clone(),
            destroy: i.destroy.clone(),
            callback: i.callback.clone(),
            system,
            ssh_host_keys: host_keys,
        }
    }

    pub fn set_hold(&self, hold: Option<Hold>) -> Result<(), String> {
        let path = hold_path(&self.cfg);
        match &hold {
            Some(h) => {
                let data = serde_json::to_vec_pretty(h).unwrap_or_default();
                util::write_atomic(&path, &data, 0o640)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
            },
        }
        let mut i = self.lock();
        i.hold = hold;
        if i.hold.is_some() {
            i.idle_since = None;
        }
        Ok(())
    }

    pub fn stage(&self) -> Stage {
        *self.stage_tx.borrow()
    }
}

struct AgentGuard<'a> {
    agent: &'a Arc<Agent>,
}

impl Guard for AgentGuard<'_> {
    fn check(&self) -> Result<(), String> {
        // Fresh session scan, not the cached one.
        let sessions = self.agent.parts.sessions.sessions();
        let pulling = self.agent.parts.fetcher.busy();
        let mut i = self.agent.lock();
        i.sessions = sessions;
        match Agent::busy_reason(&i, SystemTime::now(), pulling) {
            Some(b) => Err(b),
            None => Ok(()),
        }
    }
}

fn mkdir(dir: &Path, mode: u32) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| StartError::Io(format!("cannot create {}: {e}", dir.display())))
}

fn system_stats(state_dir: &Path) -> SystemStats {
    let load = sysinfo::System::load_average()
        .map(|l| [l.one, l.five, l.fifteen])
        .unwrap_or_default();
    let (mem_total, mem_avail) = sysinfo::System::new()
        .map(|mut s| {
            s.refresh_memory();
            (s.total_memory(), s.available_memory())
        })
        .unwrap_or((0, 0));
    let (disk_total, disk_avail) = nix::sys::statvfs::statvfs(state_dir)
        .map(|s| {
            let f = s.fragment_size();
            (s.blocks() * f, s.blocks_available() * f)
        })
        .unwrap_or((0, 0));
    SystemStats {
        load,
        mem_total_bytes: mem_total,
        mem_available_bytes: mem_avail,
        disk_total_bytes: disk_total,
        disk_available_bytes: disk_avail,
    }
}

/// Load config + secrets and run the daemon until SIGTERM/SIGINT.
pub fn main(config_path: &Path, dry_run: bool) -> Result<(), Error> {
    let cfg = Config::load(config_path).map_err(|e| {
        tracing::error!("{e}");
        Error::Refused(e.into())
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    let secrets =
        Secrets::load(&cfg.paths.secrets_file, euid).map_err(|e| Error::Refused(e.into()))?;
    let parts = Parts {
        sessions: Box::new(SystemSessions {
            logind_dir: cfg.sessions.logind_dir.clone(),
            proc_dir: cfg.sessions.proc_dir.clone(),
        }),
        fetcher: crate::artifacts::from_config(&cfg, &secrets),
        destroyer: destroy::from_config(&cfg, &secrets, dry_run),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(async move {
        let agent = Agent::new(cfg, secrets, parts).map_err(Error::Refused)?;
        Ok(serve(agent).await?)
    })
}

/// Bind the socket and run readiness, timers and the server until a signal.
pub async fn serve(agent: Arc<Agent>) -> Result<(), StartError> {
    let listener = server::bind(&agent)?;
    tracing::info!(
        socket = %agent.cfg.socket.path.display(),
        provider = agent.parts.destroyer.provider(),
        run_as = %agent.run_as.user,
        "vm-agent {} started",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(n) = &agent.run_as.note {
        tracing::warn!("{n}");
    }
    tokio::spawn(agent.clone().readiness());
    let ticker = agent.clone();
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(ticker.cfg.timers.tick.0);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            iv.tick().await;
            ticker.tick();
        }
    });
    let server = tokio::spawn(server::accept_loop(agent.clone(), listener));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| StartError::Io(format!("cannot install SIGTERM handler: {e}")))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    server.abort();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&agent.cfg.socket.path);
    Ok(())
}
