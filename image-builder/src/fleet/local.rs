//! Fleets on this machine: N QEMU workers from a golden qcow2 (each `run-local` worker
//! with its own SSH port on 127.0.0.1), given the same worker user-data as droplets —
//! pinned host key, the fleet's identity, the agent config and secrets — with the `local`
//! destroy provider (an idle worker powers its VM off).

use std::collections::BTreeMap;
use std::path::PathBuf;

use agent_config::Provider;
use serde::Serialize;

use super::keys;
use super::progress::Progress;
use super::readiness::{Readiness, Retries};
use super::ssh::{Pinned, agent_status};
use super::state::{FleetBackend, FleetState, STATE_VERSION, StateDir, WorkerRecord};
use super::userdata::{self, WorkerInput, WorkerSecrets};
use super::{FailedWorker, FleetError, FleetName};
use crate::backend::qemu::local;
use crate::spec::LoadedSpec;

/// What `fleet up --backend qemu` is asked for.
#[derive(Debug)]
pub struct LocalUp<'a> {
    /// The spec the golden image was baked from.
    pub spec: &'a LoadedSpec,
    /// The fleet.
    pub name: FleetName,
    /// Workers wanted in all.
    pub count: usize,
    /// The golden qcow2.
    pub image: PathBuf,
    /// The build sha the workers pull.
    pub sha: Option<String>,
    /// The workers' secrets (Space key, callback token).
    pub secrets: WorkerSecrets,
    /// Each worker takes one job and then powers off.
    pub one_shot: bool,
    /// Wait this long for every worker's agent to be `ready` (None: return once QEMU runs).
    pub wait_ready: Option<std::time::Duration>,
    /// Where each worker's agent POSTs its readiness report.
    pub callback_url: Option<String>,
    /// A worker that failed to become ready is started again up to this many times.
    pub retry: u32,
}

/// A local worker of a fleet.
#[derive(Clone, Debug, Serialize)]
pub struct LocalWorkerInfo {
    /// `<fleet>-<n>`.
    pub name: String,
    /// QEMU's pid.
    pub pid: u32,
    /// SSH on 127.0.0.1.
    pub ssh_port: u16,
    /// Whether QEMU runs.
    pub running: bool,
    /// The serial console log.
    pub console: PathBuf,
}

/// `fleet up --backend qemu`: start the missing workers (idempotent like the cloud one).
pub fn up(states: &StateDir, req: &LocalUp<'_>) -> Result<Vec<LocalWorkerInfo>, FleetError> {
    local::preflight()?;
    let mut state = match states.load(&req.name)? {
        Some(s) => s,
        None => FleetState {
            version: STATE_VERSION,
            name: req.name.clone(),
            backend: FleetBackend::Qemu,
            user: req.spec.spec.build_user.name.to_string(),
            spec_sha256: req.spec.spec_hash(),
            image: req.image.display().to_string(),
            sha: req.sha.clone(),
            region: None,
            size: None,
            workers: Vec::new(),
            shared_host_key: None,
        },
    };
    let pinned = Pinned::paths(states, &state)?;
    let identity = pinned.ensure_identity(&format!("image-builder fleet {}", req.name))?;
    let running: Vec<String> = local::list()
        .into_iter()
        .filter(|w| w.running)
        .map(|w| w.name)
        .collect();
    let mut to_start: Vec<String> = (1..=req.count)
        .map(|n| req.name.worker(n))
        .filter(|name| !(running.contains(name) && state.workers.iter().any(|w| &w.name == name)))
        .collect();
    // Every worker is waited for in the first round; later rounds wait for replacements.
    let mut waiting: Vec<String> = (1..=req.count).map(|n| req.name.worker(n)).collect();
    let mut retries = Retries::new(req.retry);
    let mut progress = Progress::stderr();
    loop {
        for name in &to_start {
            retries.attempt(name);
            progress.set(name, "starting");
            start_worker(states, req, &pinned, &identity, &mut state, name)?;
        }
        let Some(limit) = req.wait_ready else { break };
        let lost = wait_ready(&pinned, &waiting, limit, &mut progress);
        if lost.is_empty() {
            break;
        }
        state
            .workers
            .retain(|w| !lost.iter().any(|f| f.worker == w.name));
        states.save(&state)?;
        pinned.write(&state)?;
        to_start = retries.lost(lost, &mut progress);
        if to_start.is_empty() {
            break;
        }
        waiting = to_start.clone();
    }
    let failed = retries.failures(|w| state.workers.iter().any(|r| r.name == w));
    if !failed.is_empty() {
        return Err(FleetError::NotReady(failed));
    }
    Ok(ls(&req.name))
}

/// Start local worker `name` with its own user-data (so its own host key) and record it.
fn start_worker(
    states: &StateDir,
    req: &LocalUp<'_>,
    pinned: &Pinned,
    identity: &str,
    state: &mut FleetState,
    name: &str,
) -> Result<(), FleetError> {
    let q = &req.spec.spec.qemu;
    let host_key = keys::generate(&format!("image-builder fleet {} host {name}", req.name))?;
    let user_data = userdata::render(&WorkerInput {
        spec: req.spec,
        provider: Provider::Local,
        sha: req.sha.as_deref(),
        api_url: None,
        metadata_url: None,
        callback_url: req.callback_url.as_deref(),
        secrets: &req.secrets,
        authorized_key: identity,
        host_key: &host_key,
        one_shot: req.one_shot,
    })?;
    let w = local::run(&local::RunLocal {
        image: req.image.clone(),
        // The golden disk boots by its own GRUB under QEMU's default firmware, at the
        // image's size.
        firmware: Default::default(),
        disk_size: None,
        name: name.to_owned(),
        user_data,
        memory_mib: q.memory.0 >> 20,
        cpus: q.cpus,
        accel: q.accel,
        ssh_port: None,
    })?;
    state.workers.retain(|r| r.name != name);
    state.workers.push(WorkerRecord {
        name: name.to_owned(),
        id: None,
        address: "127.0.0.1".into(),
        port: w.ssh_port,
        host_key: host_key.public_key_only(),
        created_at: w.started_at.clone(),
    });
    states.save(state)?;
    pinned.write(state)?;
    Ok(())
}

/// Wait until every worker's agent says `ready` over pinned SSH. A worker `degraded` or
/// not ready in time is stopped; all of them are reported together with their consoles'
/// tails, after the others were waited for.
fn wait_ready(
    pinned: &Pinned,
    workers: &[String],
    limit: std::time::Duration,
    progress: &mut Progress<std::io::Stderr>,
) -> Vec<FailedWorker> {
    let deadline = std::time::Instant::now() + limit;
    let mut pending: Vec<&str> = workers.iter().map(String::as_str).collect();
    let mut last = BTreeMap::new();
    let mut failed = Vec::new();
    while !pending.is_empty() {
        let timed_out = std::time::Instant::now() > deadline;
        let mut still = Vec::new();
        for w in pending {
            let verdict = Readiness::of(agent_status(pinned, w));
            progress.set(w, &verdict.shown());
            match verdict {
                Readiness::Ready => {}
                // The console's tail says more than the report.
                Readiness::Degraded { reason, .. } => failed.push(not_ready(w, reason)),
                Readiness::Pending { last: why, .. } => {
                    last.insert(w, why);
                    still.push(w);
                }
            }
        }
        if timed_out {
            for w in still.drain(..) {
                let reason = format!(
                    "not ready within {} ({})",
                    humantime::format_duration(limit),
                    last.get(w).map(String::as_str).unwrap_or("no status")
                );
                progress.set(w, &reason);
                failed.push(not_ready(w, reason));
            }
        }
        pending = still;
        if !pending.is_empty() {
            std::thread::sleep(std::time::Duration::from_secs(2));
            progress.tick();
        }
    }
    failed
}

/// Stop a worker that did not become ready; the report carries its console's tail.
fn not_ready(worker: &str, reason: String) -> FailedWorker {
    let console = local::list()
        .into_iter()
        .find(|w| w.name == worker)
        .map(|w| w.console);
    let tail = console
        .and_then(|c| std::fs::read_to_string(c).ok())
        .map(|t| {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(super::FAILURE_TAIL_LINES)..].join("\n")
        })
        .unwrap_or_default();
    if let Err(e) = local::stop(worker, std::time::Duration::from_secs(10)) {
        tracing::error!(worker, error = %e, "could not stop the worker that did not become ready");
    }
    FailedWorker {
        worker: worker.to_owned(),
        id: None,
        region: None,
        reason,
        tail,
    }
}

/// The fleet's local workers.
pub fn ls(name: &FleetName) -> Vec<LocalWorkerInfo> {
    local::list()
        .into_iter()
        .filter(|w| name.worker_number(&w.name).is_some())
        .map(|w| LocalWorkerInfo {
            name: w.name,
            pid: w.pid,
            ssh_port: w.ssh_port,
            running: w.running,
            console: w.console,
        })
        .collect()
}

/// `fleet down --backend qemu`: stop every worker of the fleet and forget it.
pub fn down(states: &StateDir, name: &FleetName) -> Result<Vec<String>, FleetError> {
    let mut stopped = Vec::new();
    for w in ls(name) {
        local::stop(&w.name, std::time::Duration::from_secs(10))?;
        stopped.push(w.name);
    }
    states.remove(name)?;
    Ok(stopped)
}
