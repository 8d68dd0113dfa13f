//! The unix socket: mode from `socket.mode` (0660), group `socket.group`, peer credentials
//! (SO_PEERCRED) checked per request. Root, the agent's own user and members of the socket
//! group may change state (`run`, `cancel`, `hold`, `release`, `pull`); anyone who can connect may read
//! (`status`, `jobs`, `logs`).

use super::{Agent, StartError};
use crate::protocol::{ErrorKind, Request, Response};
use crate::report::Hold;
use base64::Engine;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};

const MAX_REQUEST: u64 = 1 << 20;

pub(crate) fn bind(agent: &Agent) -> Result<UnixListener, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let path = &agent.cfg.socket.path;
    if let Some(dir) = path.parent() {
        super::mkdir(dir, 0o755)?;
    }
    // A stale socket from a previous run.
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::Io(format!(
                "another vm-agent is already serving {}",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| StartError::Io(format!("cannot bind {}: {e}", path.display())))?;
    let mode = agent
        .cfg
        .socket
        .mode_bits()
        .map_err(|message| StartError::Field {
            field: "socket.mode",
            message,
        })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| StartError::Io(format!("cannot chmod {}: {e}", path.display())))?;
    if let Some(gid) = agent.socket_gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            StartError::Io(format!("cannot chown {} to gid {gid}: {e}", path.display()))
        })?;
    }
    Ok(listener)
}

pub(crate) async fn accept_loop(agent: Arc<Agent>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let a = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(a, stream).await {
                        tracing::debug!("connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::error!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Supplementary groups of a process, from `/proc/<pid>/status`.
fn proc_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

impl Agent {
    fn may_change(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.euid {
            return true;
        }
        match self.socket_gid {
            Some(g) => gid == g || pid.is_some_and(|p| proc_groups(p).contains(&g)),
            None => false,
        }
    }
}

async fn send(w: &mut OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

fn err(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

async fn handle(agent: Arc<Agent>, stream: UnixStream) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            return send(
                &mut w,
                &err(ErrorKind::BadRequest, format!("bad request: {e}")),
            )
            .await;
        }
    };
    if req.is_privileged() && !agent.may_change(uid, gid, pid) {
        let group = agent
            .cfg
            .socket
            .group
            .as_deref()
            .unwrap_or("(none configured)");
        return send(
            &mut w,
            &err(
                ErrorKind::PermissionDenied,
                format!(
                    "uid {uid} may only read status: submitting jobs or pulls needs root or group `{group}`"
                ),
            ),
        )
        .await;
    }
    match req {
        Request::Status => {
            let report = agent.report();
            send(
                &mut w,
                &Response::Status {
                    report: Box::new(report),
                },
            )
            .await
        }
        Request::Jobs => send(&mut w, &Response::Jobs { jobs: agent.jobs() }).await,
        Request::Cancel { id } => match agent.cancel(id) {
            Ok(job) => send(&mut w, &Response::Job { job }).await,
            Err((k, m)) => send(&mut w, &err(k, m)).await,
        },
        Request::Hold { duration, reason } => {
            let until = match duration.as_deref().map(crate::config::parse_limit) {
                None | Some(Ok(crate::config::Limit::Never)) => None,
                Some(Ok(crate::config::Limit::After(d))) => Some(SystemTime::now() + d),
                Some(Err(e)) => {
                    return send(&mut w, &err(ErrorKind::BadRequest, format!("--for: {e}"))).await;
                }
            };
            let hold = Hold {
                reason,
                by_uid: uid,
                since: SystemTime::now(),
                until,
            };
            tracing::info!(uid, until = ?until.map(crate::util::rfc3339), "hold");
            match agent.set_hold(Some(hold)) {
                Ok(()) => {
                    let msg = match until {
                        Some(u) => format!("held until {}", crate::util::rfc3339(u)),
                        None => "held until `vm-agent release`".into(),
                    };
                    send(&mut w, &Response::Ok { message: msg }).await
                }
                Err(e) => send(&mut w, &err(ErrorKind::Internal, e)).await,
            }
        }
        Request::Release => {
            tracing::info!(uid, "release");
            match agent.set_hold(None) {
                Ok(()) => {
                    send(
                        &mut w,
                        &Response::Ok {
                            message: "released".into(),
                        },
                    )
                    .await
                }
                Err(e) => send(&mut w, &err(ErrorKind::Internal, e)).await,
            }
        }
        Request::Pull { sha } => {
            tracing::info!(uid, sha = %sha, "pull requested");
            match agent.pull_artifact(sha).await {
                Ok(item) => {
                    send(
                        &mut w,
                        &Response::Artifact {
                            item: Box::new(item),
                        },
                    )
                    .await
                }
                Err(e) => send(&mut w, &err(ErrorKind::BadRequest, e.to_string())).await,
            }
        }
        Request::Logs { id, follow } => {
            if agent.job(id).is_none() {
                return send(&mut w, &err(ErrorKind::NotFound, format!("no job {id}"))).await;
            }
            stream_log(&agent, id, follow, &mut w, &mut reader, false).await
        }
        Request::Run {
            argv,
            name,
            timeout,
            detach,
            env,
            stdin,
        } => {
            let job = match agent.submit(argv, name, timeout, env, stdin, uid) {
                Ok(j) => j,
                Err((k, m)) => return send(&mut w, &err(k, m)).await,
            };
            let id = job.id;
            let stage = agent.stage();
            send(&mut w, &Response::Job { job }).await?;
            if !stage.is_final() {
                send(
                    &mut w,
                    &Response::Warning {
                        message: format!(
                            "worker is {}: job {id} queued until readiness",
                            stage.as_str()
                        ),
                    },
                )
                .await?;
            }
            if detach {
                return Ok(());
            }
            stream_log(&agent, id, true, &mut w, &mut reader, true).await
        }
    }
}

/// Stream a job's log: everything so far, then (with `follow`) new output until the job ends,
/// then an `exit` line with the record. With `cancel_on_hangup`, a client that goes away
/// cancels the job.
async fn stream_log<R: tokio::io::AsyncRead + Unpin>(
    agent: &Arc<Agent>,
    id: u64,
    follow: bool,
    w: &mut OwnedWriteHalf,
    reader: &mut R,
    cancel_on_hangup: bool,
) -> std::io::Result<()> {
    let Some(rec) = agent.job(id) else {
        return send(w, &err(ErrorKind::NotFound, format!("no job {id}"))).await;
    };
    let mut pos: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut hangup_buf = [0u8; 64];
    let mut last_round = false;
    loop {
        // Drain what is there.
        loop {
            let n = match std::fs::File::open(&rec.log) {
                Ok(mut f) => {
                    f.seek(SeekFrom::Start(pos))?;
                    f.read(&mut buf)?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => {
                    return send(
                        w,
                        &err(ErrorKind::Internal, format!("{}: {e}", rec.log.display())),
                    )
                    .await;
                }
            };
            if n == 0 {
                break;
            }
            pos += n as u64;
            let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
            if let Err(e) = send(w, &Response::Output { data }).await {
                if cancel_on_hangup {
                    hangup(agent, id);
                }
                return Err(e);
            }
        }
        let cur = agent.job(id).unwrap_or_else(|| rec.clone());
        if last_round || !follow {
            return send(w, &Response::Exit { job: cur }).await;
        }
        if cur.state.is_final() {
            // One more drain: output written just before the exit.
            last_round = true;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            r = reader.read(&mut hangup_buf) => {
                if matches!(r, Ok(0) | Err(_)) {
                    if cancel_on_hangup {
                        hangup(agent, id);
                    }
                    return Ok(());
                }
            }
        }
    }
}

fn hangup(agent: &Agent, id: u64) {
    if agent.job(id).is_some_and(|j| !j.state.is_final()) {
        tracing::warn!(job = id, "client disconnected: cancelling the job");
        let _ = agent.cancel(id);
    }
}
