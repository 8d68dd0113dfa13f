//! Running jobs: queue until readiness and a free slot, then spawn as the build user in a new
//! process group with output to `<state>/jobs/<id>.log`; cancel and timeout send SIGTERM to
//! the group, then SIGKILL after `jobs.kill_grace`.

use super::{Agent, RunAs};
use crate::config::{Limit, parse_limit};
use crate::jobs::{JobRecord, JobState};
use crate::protocol::{ErrorKind, JobEnv, JobStdin};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

pub(crate) type ReqError = (ErrorKind, String);

impl Agent {
    pub(crate) fn job(&self, id: u64) -> Option<JobRecord> {
        self.lock().jobs.get(&id).cloned()
    }

    pub(crate) fn jobs(&self) -> Vec<JobRecord> {
        self.lock().jobs.values().cloned().collect()
    }

    /// Change a record and persist it.
    fn update(&self, id: u64, f: impl FnOnce(&mut JobRecord)) -> Option<JobRecord> {
        let rec = {
            let mut i = self.lock();
            let r = i.jobs.get_mut(&id)?;
            f(r);
            let r = r.clone();
            if r.state.is_final() {
                i.cancels.remove(&id);
            }
            r
        };
        if let Err(e) = self.store.save(&rec) {
            tracing::error!("{e}");
        }
        Some(rec)
    }

    fn finish(&self, id: u64, state: JobState, detail: Option<String>) -> Option<JobRecord> {
        let rec = self.update(id, |r| {
            r.state = state;
            r.finished_at = Some(SystemTime::now());
            if detail.is_some() {
                r.detail = detail;
            }
        });
        if let Some(r) = &rec {
            tracing::info!(job = id, state = state.as_str(), exit = ?r.exit_code, signal = ?r.signal, "job finished");
        }
        rec
    }

    /// Accept a job; it starts once readiness is final and a slot is free.
    pub(crate) fn submit(
        self: &Arc<Self>,
        argv: Vec<String>,
        name: Option<String>,
        timeout: Option<String>,
        env: JobEnv,
        stdin: Option<JobStdin>,
        by_uid: u32,
    ) -> Result<JobRecord, ReqError> {
        if argv.is_empty() || argv[0].is_empty() {
            return Err((ErrorKind::BadRequest, "no command given".into()));
        }
        if let Some(p) = env.0.iter().find_map(|(k, _)| JobEnv::name_problem(k)) {
            return Err((ErrorKind::BadRequest, format!("--env: {p}")));
        }
        let limit = match &timeout {
            Some(t) => {
                parse_limit(t).map_err(|e| (ErrorKind::BadRequest, format!("--timeout: {e}")))?
            }
            None => self.cfg.jobs.default_timeout,
        };
        let (tx, rx) = watch::channel(None);
        let rec = {
            let mut i = self.lock();
            if let Some(d) = &i.draining {
                return Err((ErrorKind::Draining, format!("not accepting jobs: {d}")));
            }
            let id = i.next_id;
            i.next_id += 1;
            let rec = JobRecord {
                id,
                name,
                argv,
                state: JobState::Queued,
                user: self.run_as.user.clone(),
                uid: self.run_as.uid,
                gid: self.run_as.gid,
                submitted_by: by_uid,
                submitted_at: SystemTime::now(),
                started_at: None,
                finished_at: None,
                pid: None,
                exit_code: None,
                signal: None,
                timeout: match limit {
                    Limit::Never => None,
                    l => Some(l.to_string()),
                },
                log: self.store.log_path(id),
                detail: None,
            };
            // Persist before anyone can see it, so a crash can't lose an accepted job.
            self.store
                .save(&rec)
                .map_err(|e| (ErrorKind::Internal, e.to_string()))?;
            i.jobs.insert(id, rec.clone());
            i.cancels.insert(id, tx);
            i.idle_since = None;
            rec
        };
        tracing::info!(job = rec.id, by_uid, argv = ?rec.argv, "job accepted");
        let me = self.clone();
        let id = rec.id;
        // The environment stays in memory, with this task: never in the job record on disk.
        tokio::spawn(async move { me.run_job(id, rx, limit, env, stdin).await });
        Ok(rec)
    }

    /// Ask a queued or running job to stop.
    pub(crate) fn cancel(&self, id: u64) -> Result<JobRecord, ReqError> {
        let i = self.lock();
        let Some(rec) = i.jobs.get(&id) else {
            return Err((ErrorKind::NotFound, format!("no job {id}")));
        };
        if rec.state.is_final() {
            return Err((
                ErrorKind::BadRequest,
                format!("job {id} already {}", rec.state.as_str()),
            ));
        }
        if let Some(tx) = i.cancels.get(&id) {
            tx.send_replace(Some(JobState::Cancelled));
        }
        tracing::info!(job = id, "cancel requested");
        Ok(rec.clone())
    }

    async fn run_job(
        self: Arc<Self>,
        id: u64,
        mut cancel: watch::Receiver<Option<JobState>>,
        limit: Limit,
        env: JobEnv,
        stdin: Option<JobStdin>,
    ) {
        // 1. Wait for readiness (ready or degraded).
        let mut stage = self.stage_tx.subscribe();
        tokio::select! {
            _ = stage.wait_for(|s| s.is_final()) => {}
            _ = cancelled(&mut cancel) => {
                self.finish(id, JobState::Cancelled, Some("cancelled while queued".into()));
                return;
            }
        }
        // 2. A slot.
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p,
            _ = cancelled(&mut cancel) => {
                self.finish(id, JobState::Cancelled, Some("cancelled while queued".into()));
                return;
            }
        };
        let Ok(_permit) = permit else {
            self.finish(id, JobState::Failed, Some("job slots closed".into()));
            return;
        };
        if cancel.borrow().is_some() {
            self.finish(
                id,
                JobState::Cancelled,
                Some("cancelled while queued".into()),
            );
            return;
        }
        // 3. Spawn.
        let Some(rec) = self.job(id) else { return };
        let mut child = match spawn(
            &rec,
            &self.run_as,
            &self.cfg.jobs.path_env,
            &env,
            stdin.is_some(),
        ) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start {:?}: {e}", rec.argv[0]);
                append_log(&rec, &format!("vm-agent: {msg}\n"));
                self.update(id, |r| r.exit_code = Some(127));
                self.finish(id, JobState::Failed, Some(msg));
                return;
            }
        };
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Written by its own task so a job that does not read it cannot stall the daemon;
            // dropping the pipe closes the job's stdin (EOF).
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                let _written = pipe.write_all(input.0.as_bytes()).await;
            });
        }
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        self.update(id, |r| {
            r.state = JobState::Running;
            r.started_at = Some(SystemTime::now());
            r.pid = pid;
        });
        tracing::info!(job = id, pid = ?pid, user = %rec.user, "job started");
        // 4. Wait, cancel or time out.
        let deadline = async {
            match limit.duration() {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let mut stopped_as = None;
        let status = tokio::select! {
            s = child.wait() => s,
            _ = cancelled(&mut cancel) => {
                stopped_as = Some(JobState::Cancelled);
                self.kill_group(pid, &mut child).await
            }
            _ = deadline => {
                stopped_as = Some(JobState::TimedOut);
                self.kill_group(pid, &mut child).await
            }
        };
        let (state, detail) = match (&status, stopped_as) {
            (Err(e), _) => (
                JobState::Failed,
                Some(format!("cannot wait for the job: {e}")),
            ),
            (Ok(_), Some(JobState::TimedOut)) => {
                (JobState::TimedOut, Some(format!("timed out after {limit}")))
            }
            (Ok(_), Some(s)) => (s, Some("cancelled".into())),
            (Ok(s), None) if s.success() => (JobState::Succeeded, None),
            (Ok(_), None) => (JobState::Failed, None),
        };
        if let Ok(s) = status {
            self.update(id, |r| {
                r.exit_code = s.code();
                r.signal = s.signal();
            });
        }
        self.finish(id, state, detail);
    }

    /// SIGTERM the job's process group, SIGKILL it after the grace period.
    async fn kill_group(
        &self,
        pid: Option<i32>,
        child: &mut tokio::process::Child,
    ) -> std::io::Result<std::process::ExitStatus> {
        let Some(pid) = pid else {
            return child.wait().await;
        };
        let pg = Pid::from_raw(pid);
        let _ = killpg(pg, Signal::SIGTERM);
        match tokio::time::timeout(self.cfg.jobs.kill_grace.0, child.wait()).await {
            Ok(s) => {
                // The leader is gone; make sure nothing else in its group lingers.
                let _ = killpg(pg, Signal::SIGKILL);
                s
            }
            Err(_) => {
                tracing::warn!(
                    pid,
                    "job ignored SIGTERM for {}: SIGKILL",
                    self.cfg.jobs.kill_grace
                );
                let _ = killpg(pg, Signal::SIGKILL);
                child.wait().await
            }
        }
    }
}

/// Resolves once a cancel was requested (or the job's entry was dropped).
async fn cancelled(rx: &mut watch::Receiver<Option<JobState>>) {
    let _ = rx.wait_for(|c| c.is_some()).await;
}

fn append_log(rec: &JobRecord, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&rec.log)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

fn spawn(
    rec: &JobRecord,
    run_as: &RunAs,
    path_env: &str,
    env: &JobEnv,
    with_stdin: bool,
) -> std::io::Result<tokio::process::Child> {
    use std::os::unix::fs::OpenOptionsExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&rec.log)?;
    let mut cmd = tokio::process::Command::new(&rec.argv[0]);
    cmd.args(&rec.argv[1..])
        .env_clear()
        .env("HOME", &run_as.home)
        .env("USER", &run_as.user)
        .env("LOGNAME", &run_as.user)
        .env("SHELL", &run_as.shell)
        .env("PATH", path_env)
        .env("LANG", "C.UTF-8")
        .envs(env.0.iter().map(|(k, v)| (k, v)))
        .env("VM_AGENT_JOB_ID", rec.id.to_string())
        .current_dir(if run_as.home.is_dir() {
            run_as.home.as_path()
        } else {
            std::path::Path::new("/")
        })
        .stdin(if with_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    if run_as.switch {
        let groups: Vec<nix::unistd::Gid> = run_as
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        let gid = nix::unistd::Gid::from_raw(run_as.gid);
        let uid = nix::unistd::Uid::from_raw(run_as.uid);
        set_identity(&mut cmd, groups, gid, uid);
    }
    cmd.spawn()
}

/// Drop to the build user in the child, between fork and exec: supplementary groups (parsed
/// from the group file, since NSS's `initgroups` is unusable in a static binary), then gid,
/// then uid.
#[allow(unsafe_code)]
fn set_identity(
    cmd: &mut tokio::process::Command,
    groups: Vec<nix::unistd::Gid>,
    gid: nix::unistd::Gid,
    uid: nix::unistd::Uid,
) {
    // SAFETY: the closure runs in the forked child before exec. It only makes the
    // setgroups/setgid/setuid system calls on data prepared before the fork (no allocation,
    // no locks), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            Ok(())
        });
    }
}
