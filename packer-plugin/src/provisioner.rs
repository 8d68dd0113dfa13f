//! The `vmagent` provisioner: the methods Packer calls (`ConfigSpec`, `Prepare`,
//! `Provision`, `Cancel`) and the step runner.
//!
//! The step scripts are `provision` — the same ones the cloud-init
//! renderer uses — so a Packer bake and an image-builder bake provision alike.
//! Each step is sent through Packer's communicator as
//! `sh -c WRAPPER vmagent SCRIPT`: the wrapper kills the step when its stdin
//! (held open by the plugin) hits EOF (for `Cancel`), bounds it with `timeout`, and uses `sudo -n` when the remote user is
//! not root (unless `use_sudo = false`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use provision::{AgentSource, Step, sh_quote};
use sha2::{Digest, Sha256};

use crate::config::{self, Config};
use crate::remote::{Channel, Remote};
use crate::wire::broker::Broker;
use crate::wire::gob;
use crate::wire::msgpack::Value;

/// The vm-agent unit used when `agent_unit` is not set: the same unit every bake installs.
pub const DEFAULT_AGENT_UNIT: &str = provision::AGENT_UNIT_FILE;

/// Exit status of `timeout` when the step ran out of time.
const TIMEOUT_EXIT: i64 = 124;

/// One step to run, with the uploads it needs first.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    pub step: Step,
    /// (local path, remote path) uploaded before the step runs.
    pub uploads: Vec<(std::path::PathBuf, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// The steps for a configuration. `nonce` makes staged file names unique.
pub fn plan(cfg: &Config, nonce: &str) -> Result<Vec<PlannedStep>, PlanError> {
    let mut out = Vec::new();
    let plain = |step: Step| PlannedStep {
        step,
        uploads: Vec::new(),
    };
    if cfg.wait_for_cloud_init {
        out.push(plain(provision::wait_cloud_init_outside(
            cfg.cloud_init_timeout,
        )));
    }
    if cfg.apt_lock_fix {
        out.push(plain(provision::apt_lock_dropin(cfg.apt_lock_timeout)));
    }
    if cfg.wait_apt_idle {
        out.push(plain(provision::wait_apt_idle(cfg.apt_lock_timeout)));
    }
    if let Some(user) = &cfg.sudoers_user {
        out.push(plain(provision::sudoers_write_and_install(user)));
    }
    let staged_agent = format!("{}/vm-agent.{nonce}", cfg.staging_dir.trim_end_matches('/'));
    if let Some(agent) = &cfg.agent {
        let read = |what, p: &std::path::Path| {
            std::fs::read(p).map_err(|source| PlanError::Read {
                what,
                path: p.display().to_string(),
                source,
            })
        };
        let binary = read("agent_path", &agent.binary)?;
        let sha256 = hex::encode(Sha256::digest(&binary));
        let config_toml =
            String::from_utf8_lossy(&read("agent_config", &agent.config)?).into_owned();
        let unit = match &agent.unit {
            Some(p) => String::from_utf8_lossy(&read("agent_unit", p)?).into_owned(),
            None => DEFAULT_AGENT_UNIT.to_string(),
        };
        out.push(PlannedStep {
            step: provision::agent_install(
                &AgentSource::Path(staged_agent.clone()),
                &sha256,
                &unit,
                &config_toml,
            ),
            uploads: vec![(agent.binary.clone(), staged_agent.clone())],
        });
        // Workers made from this image take `fleet run --env` variables through SSH.
        out.push(plain(provision::sshd_accept_env_install()));
    }
    for (i, c) in cfg.commands.iter().enumerate() {
        out.push(plain(provision::command(&format!("command-{}", i + 1), c)));
    }
    out.push(plain(provision::command(
        "cleanup",
        &format!("rm -f {}", sh_quote(&staged_agent)),
    )));
    if cfg.seal {
        out.push(plain(provision::seal_clean()));
    }
    Ok(out)
}

/// The remote command for one step (see the module docs).
///
/// The step runs under `timeout` in the background with stdin from /dev/null; a
/// watcher reads the session's stdin (which the plugin holds open) and kills
/// the step when it hits EOF: that is how `Cancel` — or Packer dropping the SSH
/// connection — stops a running step.
pub fn wrap(cfg: &Config, step: &Step) -> String {
    let mut script = String::new();
    for (k, v) in &cfg.environment {
        script.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    script.push_str(&step.script);
    let secs = cfg.step_timeout.as_secs().max(1);
    // The step gets its own session (setsid) so the watcher can kill everything
    // in it, including commands that made their own process group (`timeout`).
    let wrapper = format!(
        "exec 3<&0; K=; \
         if [ \"$(id -u)\" -ne 0 ] && [ {sudo} = yes ]; then K='sudo -n'; \
         setsid timeout -k 10 {secs} sudo -n -- sh -c \"$1\" </dev/null & \
         else setsid timeout -k 10 {secs} sh -c \"$1\" </dev/null & fi; \
         c=$!; \
         ( cat <&3 >/dev/null 2>&1; $K pkill -TERM -s $c || $K kill -TERM -- -$c ) >/dev/null 2>&1 & \
         w=$!; exec 3<&-; \
         wait $c; rc=$?; kill $w 2>/dev/null; exit $rc",
        sudo = if cfg.use_sudo { "yes" } else { "no" },
    );
    format!("sh -c {} vmagent {}", sh_quote(&wrapper), sh_quote(&script))
}

/// What a running Provision needs to be cancelled.
struct Running {
    remote: Remote,
}

/// Provisioner state shared by the RPC handler threads.
pub struct Provisioner {
    broker: Broker,
    config: Mutex<Option<Config>>,
    running: Mutex<Option<Running>>,
    cancelled: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Provisioner {
    pub fn new(broker: Broker) -> Arc<Provisioner> {
        Arc::new(Provisioner {
            broker,
            config: Mutex::new(None),
            running: Mutex::new(None),
            cancelled: AtomicBool::new(false),
        })
    }

    /// Dispatch one RPC (`Provisioner.*`).
    pub fn handle(&self, method: &str, args: Value) -> Result<Value, String> {
        match method {
            "Provisioner.ConfigSpec" => Ok(Value::map([(
                "ConfigSpec",
                Value::Bin(gob::encode_object_spec(&config::spec())),
            )])),
            "Provisioner.Prepare" => {
                let configs = match args.get("Configs") {
                    Some(Value::Array(items)) => items.clone(),
                    Some(Value::Nil) | None => Vec::new(),
                    Some(other) => {
                        return Err(format!("vmagent: Prepare: unexpected Configs {other:?}"));
                    }
                };
                let cfg = config::prepare(&configs).map_err(|e| e.to_string())?;
                tracing::info!(?cfg, "prepared");
                *lock(&self.config) = Some(cfg);
                Ok(Value::Nil)
            }
            "Provisioner.Provision" => {
                let id = args
                    .get("StreamID")
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or("vmagent: Provision without a StreamID")?;
                self.provision(id).map(|()| Value::Nil)
            }
            "Provisioner.Cancel" => {
                self.cancel();
                Ok(Value::Nil)
            }
            other => Err(format!("rpc: can't find method {other}")),
        }
    }

    fn provision(&self, stream_id: u32) -> Result<(), String> {
        self.cancelled.store(false, Ordering::SeqCst);
        let cfg = lock(&self.config)
            .clone()
            .ok_or("vmagent: Provision called before Prepare")?;
        let remote = Remote::connect(&self.broker, stream_id)
            .map_err(|e| format!("vmagent: cannot reach Packer's Ui/Communicator: {e}"))?;
        let nonce = format!("{:016x}", rand::random::<u64>());
        let planned = plan(&cfg, &nonce).map_err(|e| format!("vmagent: {e}"))?;
        *lock(&self.running) = Some(Running {
            remote: remote.clone(),
        });
        let result = self.run_steps(&cfg, &remote, &planned);
        *lock(&self.running) = None;
        result
    }

    fn run_steps(
        &self,
        cfg: &Config,
        remote: &Remote,
        planned: &[PlannedStep],
    ) -> Result<(), String> {
        let names: Vec<&str> = planned.iter().map(|p| p.step.name.as_str()).collect();
        say(
            remote,
            &format!("vmagent: provisioning: {}", names.join(" > ")),
        );
        let total = planned.len();
        for (i, p) in planned.iter().enumerate() {
            let name = &p.step.name;
            if self.cancelled.load(Ordering::SeqCst) {
                return Err(format!("vmagent: cancelled before step {name:?}"));
            }
            say(remote, &format!("vmagent: step {}/{total}: {name}", i + 1));
            for (local, remote_path) in &p.uploads {
                remote.upload(local, remote_path).map_err(|e| {
                    format!(
                        "vmagent: step {name:?}: uploading {} to {remote_path}: {e}",
                        local.display()
                    )
                })?;
                message(
                    remote,
                    &format!("vmagent: uploaded {} to {remote_path}", local.display()),
                );
            }
            let ui = remote.clone();
            let status = remote
                .run(&wrap(cfg, &p.step), move |ch, line| {
                    let r = match ch {
                        Channel::Stdout => ui.message(line),
                        Channel::Stderr => ui.error(line),
                    };
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "cannot forward remote output");
                    }
                })
                .map_err(|e| format!("vmagent: step {name:?}: {e}"))?;
            if self.cancelled.load(Ordering::SeqCst) {
                return Err(format!("vmagent: cancelled during step {name:?}"));
            }
            match status {
                0 => {}
                TIMEOUT_EXIT => {
                    return Err(format!(
                        "vmagent: step {name:?} timed out after {} (step_timeout)",
                        humantime::format_duration(cfg.step_timeout)
                    ));
                }
                code => {
                    return Err(format!(
                        "vmagent: step {name:?} failed with exit status {code}"
                    ));
                }
            }
        }
        say(remote, "vmagent: all steps succeeded");
        Ok(())
    }

    /// Stop the running step (EOF on its stdin makes the wrapper kill it) and
    /// make Provision fail.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(r) = lock(&self.running).as_ref() {
            tracing::info!("cancel: closing the running step's stdin");
            r.remote.close_stdin();
        }
    }
}

fn say(remote: &Remote, text: &str) {
    if let Err(e) = remote.say(text) {
        tracing::warn!(error = %e, "Ui.Say failed");
    }
}

fn message(remote: &Remote, text: &str) {
    if let Err(e) = remote.message(text) {
        tracing::warn!(error = %e, "Ui.Message failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn cfg() -> Config {
        config::validate(config::RawConfig::default()).unwrap()
    }

    #[test]
    fn default_plan_runs_the_shared_steps_in_order() {
        let names: Vec<String> = plan(&cfg(), "n")
            .unwrap()
            .into_iter()
            .map(|p| p.step.name)
            .collect();
        assert_eq!(
            names,
            [
                "wait-cloud-init",
                "apt-lock-dropin",
                "wait-apt-idle",
                "cleanup",
                "seal"
            ]
        );
    }

    #[test]
    fn wrapped_command_runs_the_script_with_its_environment() {
        let mut c = cfg();
        c.use_sudo = false;
        c.environment.insert("GREETING".into(), "it's me".into());
        let step = provision::command("t", "echo \"$GREETING\"; echo err >&2; exit 3");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(wrap(&c, &step))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Hold stdin open as the plugin does (EOF would cancel the step).
        let _stdin = child.stdin.take();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's me\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    }

    #[test]
    fn eof_on_stdin_stops_a_running_step() {
        // A nested `timeout` makes its own process group: it must die too.
        let step = provision::command("slow", "timeout 60 sleep 60; echo finished");
        let started = std::time::Instant::now();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(wrap(&cfg(), &step))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        assert!(started.elapsed().as_secs() < 30, "the step was not stopped");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("finished"));
    }

    #[test]
    fn step_timeout_gives_124() {
        let mut c = cfg();
        c.step_timeout = std::time::Duration::from_secs(1);
        let step = provision::command("slow", "sleep 30");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(wrap(&c, &step))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let _stdin = child.stdin.take();
        assert_eq!(child.wait().unwrap().code(), Some(TIMEOUT_EXIT as i32));
    }
}
