//! `image-builder fleet …`: the commands behind [`super::args`].

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use agent_status::Stage;
use do_api::{Client, Poll, Token};

use crate::cli::fleet::{
    Api, DownArgs, FleetArgs, FleetCommand, LsArgs, ReapArgs, RunArgs, SecretArgs, SshArgs,
    SshConfigArgs, UpArgs, UserDataArgs,
};
use crate::error::Error;
use crate::fleet::digitalocean::{self, AgentSummary, UpRequest};
use crate::fleet::policy::UserConfig;
use crate::fleet::ssh::{Pinned, agent_status};
use crate::fleet::state::{FleetBackend, FleetState, STATE_VERSION, StateDir};
use crate::fleet::userdata::{self, WorkerInput, WorkerSecrets};
use crate::fleet::{FleetError, FleetName, keys, local};
use crate::spec::{self, LoadedSpec};

/// Run a fleet command; `Ok(code)` is the process's exit code (a job's, for `run`/`ssh`).
pub fn run(args: &FleetArgs) -> Result<u8, Error> {
    let states = StateDir::from_env();
    let code = match &args.command {
        FleetCommand::Up(a) => up(&states, a).map(|()| 0),
        FleetCommand::Ls(a) => ls(a).map(|()| 0),
        FleetCommand::Run(a) => run_job(&states, a),
        FleetCommand::Ssh(a) => ssh(&states, a),
        FleetCommand::SshConfig(a) => ssh_config(&states, a).map(|()| 0),
        FleetCommand::Down(a) => down(&states, a).map(|()| 0),
        FleetCommand::Reap(a) => reap(&states, a).map(|()| 0),
        FleetCommand::UserData(a) => user_data(&states, a).map(|()| 0),
    }
    .map_err(Error::Fleet)?;
    // A remote exit status is 0-255 (ssh's own failure is 255).
    Ok(u8::try_from(code).unwrap_or(255))
}

fn runtime() -> Result<tokio::runtime::Runtime, FleetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FleetError::Runtime)
}

fn client(api: &Api) -> Result<Client, FleetError> {
    super::digitalocean::connection(&api.conn)
        .client()
        .map_err(FleetError::api("connecting to DigitalOcean"))
}

fn poll(api: &Api) -> Poll {
    Poll::new(api.poll, std::time::Duration::from_secs(600))
}

fn fleet_name(name: Option<&FleetName>, spec: &LoadedSpec) -> Result<FleetName, FleetError> {
    match name {
        Some(n) => Ok(n.clone()),
        None => FleetName::from_spec_name(&spec.spec.name.value).map_err(FleetError::Preflight),
    }
}

/// `--sha`, else the spec's `agent.artifact.sha`, else the spec repository's HEAD.
fn build_sha(arg: Option<&str>, spec: &LoadedSpec) -> Result<Option<String>, FleetError> {
    if let Some(s) = arg {
        if !agent_config::is_build_sha(s) {
            return Err(FleetError::Preflight(format!(
                "--sha {s:?}: expected 7 to 64 lowercase hex digits (a git sha)"
            )));
        }
        return Ok(Some(s.to_owned()));
    }
    let Some(artifact) = &spec.spec.agent.artifact else {
        return Ok(None);
    };
    if let Some(s) = &artifact.sha {
        return Ok(Some(s.value.clone()));
    }
    let dir = spec
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(crate::bake::git_sha(dir))
}

/// The workers' secrets, from 0600 files or the environment (never argv).
fn secrets(args: &SecretArgs, host_token: Option<&Token>) -> Result<WorkerSecrets, FleetError> {
    let worker_token = match &args.worker_token_file {
        Some(p) => Some(Token::from_file(p).map_err(|e| FleetError::File {
            path: p.clone(),
            message: e.to_string(),
        })?),
        None => match std::env::var("DIGITALOCEAN_WORKER_TOKEN") {
            Ok(v) if !v.trim().is_empty() => Some(
                Token::new(&v, "DIGITALOCEAN_WORKER_TOKEN")
                    .map_err(|e| FleetError::Preflight(e.to_string()))?,
            ),
            _ => None,
        },
    };
    if let (Some(w), Some(h)) = (&worker_token, host_token)
        && w == h
    {
        return Err(FleetError::Preflight(
            "the worker token is the host's own token (which can create droplets): give workers a separate \
             token that can only delete droplets, in a team or project of their own"
                .into(),
        ));
    }
    let space_key = match &args.worker_space_key_file {
        Some(p) => Some(space_key_file(p)?),
        None => match (
            std::env::var("WORKER_SPACES_ACCESS_KEY_ID"),
            std::env::var("WORKER_SPACES_SECRET_ACCESS_KEY"),
        ) {
            (Ok(id), Ok(secret)) if !id.is_empty() && !secret.is_empty() => Some((id, secret)),
            _ => None,
        },
    };
    let callback_token = match (&args.callback_url, &args.callback_token_file) {
        (None, _) => None,
        (Some(_), Some(p)) => Some(secret_file(p)?),
        (Some(_), None) => std::env::var("IMAGE_BUILDER_CALLBACK_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
    };
    Ok(WorkerSecrets {
        worker_token: worker_token.map(|t| t.expose().to_owned()),
        space_key,
        callback_token,
    })
}

/// The text of a file that holds a secret: refused unless only its owner can read it.
fn read_private_file(path: &Path) -> Result<String, FleetError> {
    artifact_store::fsutil::read_private(path)
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other))
        .map_err(|e| FleetError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// A one-line secret from a file that only its owner can read.
fn secret_file(path: &Path) -> Result<String, FleetError> {
    let text = read_private_file(path)?;
    let secret = text.trim();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        return Err(FleetError::File {
            path: path.to_owned(),
            message: "expected one token on one line".into(),
        });
    }
    Ok(secret.to_owned())
}

fn space_key_file(path: &Path) -> Result<(String, String), FleetError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct KeyFile {
        access_key_id: String,
        secret_access_key: String,
    }
    let text = read_private_file(path)?;
    let err = |message: String| FleetError::File {
        path: path.to_owned(),
        message,
    };
    // toml's messages quote the offending line: keep only the message, never the value.
    let k: KeyFile = toml::from_str(&text).map_err(|e| err(e.message().to_owned()))?;
    Ok((k.access_key_id, k.secret_access_key))
}

fn host_token(api: &Api) -> Option<Token> {
    match &api.conn.token_file {
        Some(p) => Token::from_file(p).ok(),
        None => Token::from_env().ok(),
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn up(states: &StateDir, a: &UpArgs) -> Result<(), FleetError> {
    let loaded = spec::load(&a.spec)?;
    let name = fleet_name(a.name.as_ref(), &loaded)?;
    let sha = build_sha(a.sha.as_deref(), &loaded)?;
    let policy = UserConfig::load()?;
    match a.backend {
        FleetBackend::Digitalocean => {
            let secrets = secrets(&a.secrets, host_token(&a.api).as_ref())?;
            let client = client(&a.api)?;
            let req = UpRequest {
                spec: &loaded,
                name,
                count: a.count,
                image: a.image.clone(),
                size: a.size.clone(),
                region: a.region.clone(),
                sha,
                secrets,
                power_off_only: a.secrets.power_off_only,
                one_shot: a.one_shot,
                yes: a.yes,
                wait_ready: (!a.no_wait).then_some(a.ready_timeout),
                worker_api_url: a.worker_api_url.clone(),
                worker_metadata_url: a.worker_metadata_url.clone(),
                poll: a.api.poll,
                retry: a.retry,
                callback_url: a.secrets.callback_url.clone(),
            };
            let report = runtime()?.block_on(digitalocean::up(&client, states, &policy, &req))?;
            if a.json {
                print_json(&report);
            } else {
                for w in &report.workers {
                    println!(
                        "{:<24} {:>12} {:<16} {}",
                        w.name,
                        w.id,
                        w.address.as_deref().unwrap_or("-"),
                        w.status
                    );
                }
                eprintln!(
                    "fleet {}: {} worker(s), {} created; `image-builder fleet run --fleet {} -- CMD` runs a job",
                    report.fleet,
                    report.workers.len(),
                    report.created.len(),
                    report.fleet
                );
            }
            if !report.failed.is_empty() {
                return Err(FleetError::NotReady(report.failed));
            }
        }
        FleetBackend::Qemu => {
            policy.check_human("fleet up")?;
            let image = PathBuf::from(a.image.as_deref().ok_or_else(|| {
                FleetError::Preflight("--backend qemu needs --image GOLDEN.qcow2".into())
            })?);
            let secrets = secrets(&a.secrets, None)?;
            let workers = local::up(
                states,
                &local::LocalUp {
                    spec: &loaded,
                    name,
                    count: a.count,
                    image,
                    sha,
                    secrets,
                    one_shot: a.one_shot,
                    wait_ready: (!a.no_wait).then_some(a.ready_timeout),
                    callback_url: a.secrets.callback_url.clone(),
                    retry: a.retry,
                },
            )?;
            if a.json {
                print_json(&workers);
            } else {
                for w in &workers {
                    println!(
                        "{:<24} pid {:>8} ssh 127.0.0.1:{}",
                        w.name, w.pid, w.ssh_port
                    );
                }
            }
        }
    }
    Ok(())
}

fn ls(a: &LsArgs) -> Result<(), FleetError> {
    let client = client(&a.api)?;
    let mut workers = runtime()?.block_on(digitalocean::ls(&client, a.fleet.as_ref()))?;
    if a.status {
        let states = StateDir::from_env();
        for w in &mut workers {
            let Ok(fleet) = w.fleet.parse::<FleetName>() else {
                continue;
            };
            let Some(state) = states.load(&fleet)? else {
                continue;
            };
            let pinned = Pinned::paths(&states, &state)?;
            w.agent = agent_status(&pinned, &w.name)
                .ok()
                .map(|v| AgentSummary::from_status(&v));
        }
    }
    if a.json {
        print_json(&workers);
        return Ok(());
    }
    if workers.is_empty() {
        println!("no workers");
        return Ok(());
    }
    println!(
        "{:<24} {:>10} {:<16} {:<14} {:<6} {:<8} {:>7} {:>8}  AGENT",
        "NAME", "ID", "ADDRESS", "SIZE", "REGION", "STATUS", "AGE", "COST"
    );
    for w in &workers {
        println!(
            "{:<24} {:>10} {:<16} {:<14} {:<6} {:<8} {:>6}m {:>7.3}$  {}",
            w.name,
            w.id,
            w.address.as_deref().unwrap_or("-"),
            w.size,
            w.region,
            w.status.to_string(),
            w.age_secs / 60,
            w.cost_so_far,
            w.agent.as_ref().map_or_else(
                || "-".to_owned(),
                |s| format!("{} (running {}, queued {})", s.stage, s.running, s.queued)
            )
        );
    }
    Ok(())
}

/// The fleet a worker-level command is about: the named one, else the only one known.
fn only_fleet(states: &StateDir, name: Option<&FleetName>) -> Result<FleetState, FleetError> {
    let name = match name {
        Some(n) => n.clone(),
        None => {
            let all = states.list()?;
            match all.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(FleetError::NotFound(
                        "no fleet has local state: run `fleet up` first, or name the fleet".into(),
                    ));
                }
                _ => {
                    return Err(FleetError::NotFound(format!(
                        "several fleets ({}): name one with --fleet",
                        all.iter()
                            .map(FleetName::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
    };
    states.load(&name)?.ok_or_else(|| {
        FleetError::NotFound(format!("fleet {name} has no local state (see `fleet ls`)"))
    })
}

fn fleet_of_worker(states: &StateDir, worker: &str) -> Result<FleetState, FleetError> {
    for name in states.list()? {
        if let Some(state) = states.load(&name)?
            && state.workers.iter().any(|w| w.name == worker)
        {
            return Ok(state);
        }
    }
    Err(FleetError::NotFound(format!(
        "no fleet with local state has a worker named {worker:?} (see `fleet ls`)"
    )))
}

/// `vm-agent run` for `argv`; with job variables, vm-agent takes them from the session's
/// environment (sent with `SendEnv` under [`provision::JOB_ENV_PREFIX`]).
fn remote_command(argv: &[String], with_env: bool, with_stdin: bool) -> String {
    let mut cmd = String::from("vm-agent run");
    if with_stdin {
        cmd.push_str(" --stdin");
    }
    if with_env {
        cmd.push_str(" --env-prefix ");
        cmd.push_str(provision::JOB_ENV_PREFIX);
    }
    cmd.push_str(" --");
    for a in argv {
        cmd.push(' ');
        cmd.push_str(&provision::sh_quote(a));
    }
    cmd
}

fn run_job(states: &StateDir, a: &RunArgs) -> Result<i32, FleetError> {
    let state = only_fleet(states, a.fleet.as_ref())?;
    let pinned = Pinned::paths(states, &state)?;
    let workers: Vec<String> = if a.all {
        state.workers.iter().map(|w| w.name.clone()).collect()
    } else if let Some(w) = &a.worker {
        if !state.workers.iter().any(|x| &x.name == w) {
            return Err(FleetError::NotFound(format!(
                "fleet {} has no worker {w:?}",
                state.name
            )));
        }
        vec![w.clone()]
    } else {
        // A ready worker with the fewest running jobs.
        let best = state
            .workers
            .iter()
            .filter_map(|w| {
                let s = agent_status(&pinned, &w.name).ok()?;
                (s.stage == Stage::Ready).then(|| (s.jobs.running, w.name.clone()))
            })
            .min();
        match best {
            Some((_, w)) => vec![w],
            None => {
                return Err(FleetError::NotFound(format!(
                    "no worker of fleet {} is ready",
                    state.name
                )));
            }
        }
    };
    if workers.is_empty() {
        return Err(FleetError::NotFound(format!(
            "fleet {} has no workers",
            state.name
        )));
    }
    let remote = remote_command(&a.argv, !a.env.is_empty(), a.stdin);
    // Job variables: in ssh's environment under the prefix, sent with SendEnv.
    let mut env = Vec::new();
    for name in &a.env {
        let value = std::env::var(name).map_err(|_| {
            FleetError::Preflight(format!("--env {name}: not set in this environment"))
        })?;
        env.push((format!("{}{name}", provision::JOB_ENV_PREFIX), value));
    }
    let with_env = |mut c: std::process::Command| {
        for (k, v) in &env {
            c.arg("-o").arg(format!("SendEnv={k}")).env(k, v);
        }
        c
    };
    let codes: Vec<(String, i32)> = if let [one] = workers.as_slice() {
        // One worker: stdin, stdout and stderr are the job's own.
        let mut ssh = with_env(pinned.ssh(one));
        if !a.stdin {
            // The job's stdin is empty: ssh must not read ours (the `ssh -n` trap).
            ssh.stdin(Stdio::null());
        }
        let status = ssh.arg(&remote).status().map_err(|e| FleetError::Tool {
            tool: "ssh",
            message: e.to_string(),
        })?;
        vec![(one.clone(), status.code().unwrap_or(255))]
    } else {
        let input = if a.stdin {
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut text).map_err(|e| {
                FleetError::Tool {
                    tool: "stdin",
                    message: e.to_string(),
                }
            })?;
            Some(text)
        } else {
            None
        };
        run_prefixed(&pinned, &workers, &remote, &with_env, input.as_deref())?
    };
    for (w, _) in &codes {
        for path in &a.get {
            let dir = if a.all {
                PathBuf::from(w)
            } else {
                PathBuf::from(".")
            };
            std::fs::create_dir_all(&dir).map_err(|e| FleetError::File {
                path: dir.clone(),
                message: e.to_string(),
            })?;
            let st = pinned
                .scp_from(w, path, &dir)
                .status()
                .map_err(|e| FleetError::Tool {
                    tool: "scp",
                    message: e.to_string(),
                })?;
            if !st.success() {
                return Err(FleetError::Tool {
                    tool: "scp",
                    message: format!("copying {w}:{path} back failed ({st})"),
                });
            }
        }
    }
    if a.all {
        for (w, c) in &codes {
            eprintln!("{w}: exit {c}");
        }
    }
    Ok(codes.iter().map(|(_, c)| *c).find(|c| *c != 0).unwrap_or(0))
}

/// Run on several workers at once, each output line prefixed with its worker.
fn run_prefixed(
    pinned: &Pinned,
    workers: &[String],
    remote: &str,
    with_env: &dyn Fn(std::process::Command) -> std::process::Command,
    input: Option<&[u8]>,
) -> Result<Vec<(String, i32)>, FleetError> {
    let mut children = Vec::new();
    for w in workers {
        let mut child = with_env(pinned.ssh(w))
            .arg(remote)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| FleetError::Tool {
                tool: "ssh",
                message: e.to_string(),
            })?;
        let mut pumps = Vec::new();
        if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
            let input = input.to_vec();
            pumps.push(std::thread::spawn(move || {
                use std::io::Write as _;
                // A job that stops reading closes the pipe: that is its business.
                let _written = pipe.write_all(&input);
            }));
        }
        if let Some(out) = child.stdout.take() {
            let w = w.clone();
            pumps.push(std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    println!("{w}: {line}");
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let w = w.clone();
            pumps.push(std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("{w}: {line}");
                }
            }));
        }
        children.push((w.clone(), child, pumps));
    }
    let mut codes = Vec::new();
    for (w, mut child, pumps) in children {
        let st = child.wait().map_err(|e| FleetError::Tool {
            tool: "ssh",
            message: e.to_string(),
        })?;
        for p in pumps {
            let _ = p.join();
        }
        codes.push((w, st.code().unwrap_or(255)));
    }
    Ok(codes)
}

fn ssh(states: &StateDir, a: &SshArgs) -> Result<i32, FleetError> {
    let state = fleet_of_worker(states, &a.worker)?;
    let pinned = Pinned::paths(states, &state)?;
    let mut cmd = pinned.ssh(&a.worker);
    if !a.argv.is_empty() {
        cmd.arg("--").args(&a.argv);
    }
    let st = cmd.status().map_err(|e| FleetError::Tool {
        tool: "ssh",
        message: e.to_string(),
    })?;
    Ok(st.code().unwrap_or(255))
}

fn ssh_config(states: &StateDir, a: &SshConfigArgs) -> Result<(), FleetError> {
    let names = match &a.fleet {
        Some(n) => vec![n.clone()],
        None => states.list()?,
    };
    for n in names {
        let state = states
            .load(&n)?
            .ok_or_else(|| FleetError::NotFound(format!("fleet {n} has no local state")))?;
        let pinned = Pinned::paths(states, &state)?;
        print!("{}", pinned.config_text(&state));
    }
    Ok(())
}

fn confirm_off_terminal(yes: bool, question: &str) -> Result<(), FleetError> {
    crate::backend::digitalocean::confirm(yes, question, "delete the workers")
        .map_err(FleetError::from_confirm)
}

fn down(states: &StateDir, a: &DownArgs) -> Result<(), FleetError> {
    let what = match &a.fleet {
        Some(f) => format!("Delete every worker of fleet {f}?"),
        None => "Delete every worker of every fleet?".to_owned(),
    };
    confirm_off_terminal(a.yes, &what)?;
    let report = match a.backend {
        FleetBackend::Digitalocean => {
            let client = client(&a.api)?;
            runtime()?.block_on(digitalocean::down(
                &client,
                states,
                a.fleet.as_ref(),
                a.force,
                poll(&a.api),
            ))?
        }
        FleetBackend::Qemu => {
            let fleet = a
                .fleet
                .as_ref()
                .ok_or_else(|| FleetError::NotFound("--backend qemu: name the fleet".into()))?;
            digitalocean::Deleted {
                deleted: local::down(states, fleet)?,
                kept: Vec::new(),
            }
        }
    };
    if a.json {
        print_json(&report);
    } else {
        for d in &report.deleted {
            println!("deleted {d}");
        }
        for (w, why) in &report.kept {
            eprintln!("kept {w}: {why}");
        }
    }
    if report.kept.is_empty() {
        Ok(())
    } else {
        Err(FleetError::Busy(format!(
            "{} worker(s) kept because their agent reports running jobs (--force deletes them)",
            report.kept.len()
        )))
    }
}

fn reap(states: &StateDir, a: &ReapArgs) -> Result<(), FleetError> {
    let client = client(&a.api)?;
    let report = runtime()?.block_on(digitalocean::reap(
        &client,
        states,
        a.off_grace,
        a.unreachable_grace,
        a.yes,
        poll(&a.api),
    ))?;
    if a.json {
        print_json(&report);
    } else {
        for d in &report.deleted {
            println!("deleted {d}");
        }
        for (w, why) in &report.kept {
            println!("kept {w}: {why}");
        }
    }
    Ok(())
}

fn user_data(states: &StateDir, a: &UserDataArgs) -> Result<(), FleetError> {
    let loaded = spec::load(&a.spec)?;
    let name = fleet_name(a.name.as_ref(), &loaded)?;
    let sha = build_sha(a.sha.as_deref(), &loaded)?;
    let secrets = secrets(&a.secrets, host_token(&Api::default()).as_ref())?;
    if secrets.worker_token.is_none() && !a.secrets.power_off_only {
        return Err(FleetError::NoWorkerToken);
    }
    let mut state = states.load(&name)?.unwrap_or(FleetState {
        version: STATE_VERSION,
        name: name.clone(),
        backend: FleetBackend::Digitalocean,
        user: loaded.spec.build_user.name.to_string(),
        spec_sha256: loaded.spec_hash(),
        image: String::new(),
        sha: sha.clone(),
        region: None,
        size: None,
        workers: Vec::new(),
        shared_host_key: None,
    });
    let pinned = Pinned::paths(states, &state)?;
    let identity = pinned.ensure_identity(&format!("image-builder fleet {name}"))?;
    let host_key = keys::generate(&format!("image-builder fleet {name} host"))?;
    let text = userdata::render(&WorkerInput {
        spec: &loaded,
        provider: if a.secrets.power_off_only {
            agent_config::Provider::Local
        } else {
            agent_config::Provider::Digitalocean
        },
        sha: sha.as_deref(),
        api_url: None,
        metadata_url: None,
        callback_url: a.secrets.callback_url.as_deref(),
        secrets: &secrets,
        authorized_key: &identity,
        host_key: &host_key,
        one_shot: a.one_shot,
    })?;
    state.shared_host_key = Some(host_key.public_key_only());
    states.save(&state)?;
    pinned.write(&state)?;
    match &a.output {
        Some(p) => {
            artifact_store::fsutil::write_atomic(p, text.as_bytes(), 0o600).map_err(|e| {
                FleetError::File {
                    path: p.clone(),
                    message: e.to_string(),
                }
            })?
        }
        None => print!("{text}"),
    }
    eprintln!(
        "worker user-data for fleet {name}: host key pinned for {name}-* in {}; name the droplets {name}-1, {name}-2, …",
        pinned.known_hosts.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_command_quotes_every_argument() {
        assert_eq!(
            remote_command(
                &["sh".into(), "-c".into(), "echo 'hi'; exit 3".into()],
                false,
                false
            ),
            "vm-agent run -- sh -c 'echo '\\''hi'\\''; exit 3'"
        );
        assert_eq!(
            remote_command(&["env".into()], true, true),
            "vm-agent run --stdin --env-prefix IMAGE_BUILDER_ENV_ -- env"
        );
    }
}
