//! In-VM provisioning steps, shared by the cloud-init renderer and the Packer plugin.
//!
//! Every step is a complete POSIX `sh` script meant to run as root with `sh -eu`
//! (a child shell, so `set -e` really applies: POSIX shells ignore `set -e` inside a
//! function called from an `if`/`||` context, which a runner calling steps as functions would
//! be). The
//! renderer writes them to files and runs them from `runcmd`; the Packer plugin
//! sends them through Packer's communicator. Nothing here depends on the host.
//!
//! The known first-boot fixes live here, once:
//! - an apt drop-in with `DPkg::Lock::Timeout`, installed before any package work;
//! - a bounded wait for apt's own boot-time jobs (apt-daily, unattended-upgrades)
//!   and for whatever else holds the dpkg lock;
//! - `apt-get update` retried (bounded) while another process holds the lists lock,
//!   which `DPkg::Lock::Timeout` does not cover;
//! - a sudoers drop-in for the build user validated with `visudo -cf` before it is
//!   moved into place;
//! - a seal that removes cloud-init state, logs and build secrets before a snapshot.
//!
//! The scripts are real files in `scripts/` (included with `include_str!`), each
//! starting with a comment that names its parameters. A step assigns them first,
//! shell-quoted (`TIMEOUT_SECS=600`), so a script body never goes through `format!`;
//! the watcher takes positional arguments and the Python finisher a JSON
//! [`FinisherConfig`]. [`script_param`] reads a parameter back out of a rendered step.
//!
//! `cloud-init status --wait` appears only in [`wait_cloud_init_outside`], which is
//! for callers outside cloud-init (Packer over SSH). Called from inside a cloud-init
//! stage it would wait for the stage it runs in, forever.

use std::time::Duration;

/// Where provisioning keeps its scripts and staged files in the VM (removed by the seal).
pub const WORK_DIR: &str = "/var/lib/image-builder";
/// Runtime state of provisioning (tmpfs: never part of an image).
pub const RUN_DIR: &str = "/run/image-builder";
/// The apt drop-in that makes apt/dpkg wait for the dpkg lock instead of failing.
pub const APT_LOCK_DROPIN: &str = "/etc/apt/apt.conf.d/90image-builder-dpkg-lock";
/// The sshd drop-in that accepts the variables `image-builder fleet run --env` sends
/// (`SendEnv`), so job secrets travel in the SSH protocol, never on a command line.
pub const SSHD_ACCEPT_ENV_DROPIN: &str = "/etc/ssh/sshd_config.d/60-image-builder-env.conf";
/// The prefix of those variables; `vm-agent run --env-prefix` strips it for the job.
pub const JOB_ENV_PREFIX: &str = "IMAGE_BUILDER_ENV_";
/// The drop-in's content.
pub const SSHD_ACCEPT_ENV_CONTENT: &str = "# Installed by image-builder: job variables sent by `fleet run --env` (SendEnv).\nAcceptEnv IMAGE_BUILDER_ENV_*\n";
/// Where the vm-agent binary is installed.
pub const AGENT_BIN: &str = "/usr/local/bin/vm-agent";
/// Where the vm-agent systemd unit is installed.
pub const AGENT_UNIT: &str = "/etc/systemd/system/vm-agent.service";
/// The vm-agent systemd unit itself (`templates/systemd/vm-agent.service`), one
/// definition for every route into an image (cloud-init bakes and Packer).
pub const AGENT_UNIT_FILE: &str = include_str!("../../../../templates/systemd/vm-agent.service");
/// vm-agent's config file (vm-agent's default `--config`; one definition, in agent-config).
pub use agent_config::DEFAULT_CONFIG_PATH as AGENT_CONFIG_PATH;
/// vm-agent's secrets file (vm-agent's default `paths.secrets_file`; mode 0600).
pub use agent_config::DEFAULT_SECRETS_PATH as AGENT_SECRETS_PATH;
/// Non-secret record of the bake, kept in the image.
pub const BAKED_INFO: &str = "/etc/image-builder/baked.json";

mod seal;

pub use seal::{
    BakedInfo, CLOUD_INIT_LOG, CLOUD_INIT_RESULT, FINISHER, FINISHER_CONFIG_PATH, FINISHER_PATH,
    FinisherConfig, REPORT_BEGIN, REPORT_END, SEAL_CLEAN_PATH, SealReport, SealStatus, StepResult,
    Versions, seal_clean, seal_watcher_command,
};

// The step bodies, real scripts in `scripts/`. Each one's header comment names its
// parameters; `Step::from_script` assigns them (shell-quoted) before the body.
const WAIT_APT_IDLE: &str = include_str!("../scripts/wait-apt-idle.sh");
const APT_UPDATE: &str = include_str!("../scripts/apt-update.sh");
const APT_GET: &str = include_str!("../scripts/apt-get.sh");
const SUDOERS_INSTALL: &str = include_str!("../scripts/sudoers-install.sh");
const SSHD_ENV_INSTALL: &str = include_str!("../scripts/sshd-env-install.sh");
const WAIT_CLOUD_INIT: &str = include_str!("../scripts/wait-cloud-init.sh");
const AGENT_INSTALL: &str = include_str!("../scripts/agent-install.sh");
const RUN_STEPS: &str = include_str!("../scripts/run-steps.sh");

/// One provisioning step: a name (shown in progress and in the seal report) and a
/// complete `sh` script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Short kebab-case name, e.g. `apt-update`.
    pub name: String,
    /// The script, starting with a shebang and `set -eu`.
    pub script: String,
}

impl Step {
    fn new(name: impl Into<String>, body: &str) -> Self {
        let name = name.into();
        Step {
            script: format!("#!/bin/sh\n# image-builder step: {name}\nset -eu\n{body}"),
            name,
        }
    }

    /// A step from a script in `scripts/`: `params` are assigned (shell-quoted)
    /// right after its header comment.
    fn from_script(name: &str, params: &[(&str, &str)], body: &str) -> Self {
        Step::new(name, &after_header(body, &assignments(params)))
    }
}

/// `script` with `insert` placed after its leading comment lines (the header that
/// names the parameters `insert` sets).
fn after_header(script: &str, insert: &str) -> String {
    let header_len: usize = script
        .split_inclusive('\n')
        .take_while(|line| line.starts_with('#'))
        .map(str::len)
        .sum();
    let (header, rest) = script.split_at(header_len);
    format!("{header}{insert}{rest}")
}

/// `NAME=value` lines, each value quoted with [`sh_quote`].
fn assignments(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(name, value)| format!("{name}={}\n", sh_quote(value)))
        .collect()
}

/// The value a step script assigns to `name` (a `NAME=value` line of its
/// parameters), unquoted: how a reader of rendered user-data (do-sim) finds, say,
/// the agent URL without knowing the rest of the script.
pub fn script_param(script: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    let mut offset = 0;
    for line in script.split_inclusive('\n') {
        if line.starts_with(&prefix) {
            return sh_unquote_word(&script[offset + prefix.len()..]);
        }
        offset += line.len();
    }
    None
}

/// The first shell word of `text` (quoted as [`sh_quote`] quotes), unquoted.
fn sh_unquote_word(text: &str) -> Option<String> {
    let mut word = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    q => word.push(q),
                }
            },
            '\\' => word.push(chars.next()?),
            c if c.is_whitespace() || c == ';' => break,
            c => word.push(c),
        }
    }
    Some(word)
}

/// A user command as a step: the snippet runs with `sh -eu`.
pub fn command(name: &str, run: &str) -> Step {
    let run = if run.ends_with('\n') {
        run.to_owned()
    } else {
        format!("{run}\n")
    };
    Step::new(name, &run)
}

/// Quote a string for POSIX `sh` (single quotes, `'` spelled `'\''`).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Shell that writes `content` to `path` exactly (via a temp file and rename).
fn write_file_snippet(path: &str, content: &str, mode: &str) -> String {
    let p = sh_quote(path);
    format!(
        "mkdir -p \"$(dirname {p})\"\n(umask 077 && printf '%s' {c} > {p}.tmp)\nchmod {mode} {p}.tmp\nmv -f {p}.tmp {p}\n",
        c = sh_quote(content),
    )
}

/// Content of the apt lock drop-in.
pub fn apt_lock_dropin_content(lock_timeout: Duration) -> String {
    format!(
        "// Installed by image-builder: wait for the dpkg lock instead of failing.\nDPkg::Lock::Timeout \"{}\";\n",
        lock_timeout.as_secs().max(1)
    )
}

/// Install the apt lock drop-in (for callers that cannot use cloud-init's write_files).
pub fn apt_lock_dropin(lock_timeout: Duration) -> Step {
    Step::new(
        "apt-lock-dropin",
        &write_file_snippet(
            APT_LOCK_DROPIN,
            &apt_lock_dropin_content(lock_timeout),
            "0644",
        ),
    )
}

/// Wait (bounded) until apt's boot-time jobs are done and no apt/dpkg process runs.
pub fn wait_apt_idle(timeout: Duration) -> Step {
    let secs = timeout.as_secs().max(1).to_string();
    Step::from_script("wait-apt-idle", &[("TIMEOUT_SECS", &secs)], WAIT_APT_IDLE)
}

/// `apt-get update`, retried while another process holds the lists lock (bounded).
pub fn apt_update(retries: u32) -> Step {
    let retries = retries.max(1).to_string();
    Step::from_script("apt-update", &[("RETRIES", &retries)], APT_UPDATE)
}

/// [`APT_GET`] with `args` as its positional parameters.
fn apt_get(name: &str, args: &[&str]) -> Step {
    let args: Vec<String> = args.iter().map(|a| sh_quote(a)).collect();
    Step::new(
        name,
        &after_header(APT_GET, &format!("set -- {}\n", args.join(" "))),
    )
}

/// `apt-get upgrade`.
pub fn apt_upgrade() -> Step {
    apt_get("apt-upgrade", &["upgrade"])
}

/// `apt-get install` of the given packages (a transient dpkg failure is retried once).
pub fn apt_install(packages: &[String]) -> Step {
    let mut args = vec!["install"];
    args.extend(packages.iter().map(String::as_str));
    apt_get("apt-install", &args)
}

/// The sudoers drop-in path for a user.
pub fn sudoers_path(user: &str) -> String {
    format!("/etc/sudoers.d/90-{user}")
}

/// Content of the passwordless-sudo drop-in for `user`.
pub fn sudoers_content(user: &str) -> String {
    format!(
        "# Installed by image-builder: passwordless sudo for the build user.\n{user} ALL=(ALL) NOPASSWD:ALL\n"
    )
}

/// Validate a staged sudoers drop-in with `visudo -cf` and move it into place (0440 root:root).
pub fn sudoers_install(user: &str, staged: &str) -> Step {
    Step::from_script(
        "sudoers",
        &[("STAGED", staged), ("TARGET", &sudoers_path(user))],
        SUDOERS_INSTALL,
    )
}

/// Write, validate and install the sudoers drop-in in one step (no staged file needed).
pub fn sudoers_write_and_install(user: &str) -> Step {
    let staged = format!("{WORK_DIR}/staged/sudoers-90-{user}");
    let write = write_file_snippet(&staged, &sudoers_content(user), "0440");
    Step::from_script(
        "sudoers",
        &[("STAGED", &staged), ("TARGET", &sudoers_path(user))],
        &format!("{write}{SUDOERS_INSTALL}"),
    )
}

/// Install [`SSHD_ACCEPT_ENV_CONTENT`] at [`SSHD_ACCEPT_ENV_DROPIN`], kept only if
/// `sshd -t` accepts the configuration with it (for callers that cannot use cloud-init's
/// write_files, e.g. the Packer plugin).
pub fn sshd_accept_env_install() -> Step {
    let staged = format!("{WORK_DIR}/staged/sshd-60-image-builder-env.conf");
    let write = write_file_snippet(&staged, SSHD_ACCEPT_ENV_CONTENT, "0644");
    Step::from_script(
        "sshd-accept-env",
        &[("STAGED", &staged), ("TARGET", SSHD_ACCEPT_ENV_DROPIN)],
        &format!("{write}{SSHD_ENV_INSTALL}"),
    )
}

/// Bounded wait for cloud-init to finish, for callers OUTSIDE cloud-init only (e.g.
/// Packer over SSH). Never use this from user-data: it would wait for itself.
pub fn wait_cloud_init_outside(timeout: Duration) -> Step {
    let secs = timeout.as_secs().max(1).to_string();
    Step::from_script(
        "wait-cloud-init",
        &[("TIMEOUT_SECS", &secs)],
        WAIT_CLOUD_INIT,
    )
}

/// Where the agent binary comes from during a bake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentSource {
    /// An HTTP(S) URL (e.g. a short-lived presigned GET), fetched inside the VM.
    Url(String),
    /// A file already in the VM (uploaded by Packer, or copied in by the local backend).
    Path(String),
}

/// The parameter of [`agent_install`]'s script that holds an [`AgentSource::Url`].
pub const AGENT_URL_PARAM: &str = "AGENT_URL";

/// Install vm-agent: fetch or take the binary, check its sha256, install it with its
/// unit and config, and enable the unit so that it starts on every boot.
pub fn agent_install(source: &AgentSource, sha256: &str, unit: &str, config_toml: &str) -> Step {
    let (url, path) = match source {
        AgentSource::Url(url) => (url.as_str(), ""),
        AgentSource::Path(path) => ("", path.as_str()),
    };
    Step::from_script(
        "agent-install",
        &[
            (AGENT_URL_PARAM, url),
            ("AGENT_PATH", path),
            ("AGENT_SHA256", sha256),
            ("AGENT_BIN", AGENT_BIN),
            ("UNIT_PATH", AGENT_UNIT),
            ("UNIT_CONTENT", unit),
            ("CONFIG_PATH", AGENT_CONFIG_PATH),
            ("CONFIG_CONTENT", config_toml),
        ],
        AGENT_INSTALL,
    )
}

/// The step runner: runs each `(name, path)` step file in order with `sh -eu`,
/// records name, exit code and seconds in `RUN_DIR/steps.tsv`, and stops at the
/// first failure (recorded in `RUN_DIR/failed-step`), exiting non-zero so cloud-init
/// marks its result failed.
pub fn runner_script(steps: &[(String, String)]) -> String {
    let mut script = format!(
        "#!/bin/sh\n{}",
        after_header(
            RUN_STEPS,
            &format!("set -u\n{}", assignments(&[("RUN", RUN_DIR)]))
        )
    );
    for (name, path) in steps {
        script.push_str(&format!("run_step {} {}\n", sh_quote(name), sh_quote(path)));
    }
    script.push_str("all_done\n");
    script
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh_ok(script: &str) -> std::process::Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("run sh")
    }

    #[test]
    fn sh_quote_round_trips_through_a_real_shell() {
        for s in [
            "plain",
            "it's",
            "a b",
            "$HOME",
            "`x`",
            "new\nline",
            "",
            "--flag",
            "\\",
            "\"q\"",
        ] {
            let out = sh_ok(&format!("printf %s {}", sh_quote(s)));
            assert_eq!(String::from_utf8_lossy(&out.stdout), s, "quoting {s:?}");
        }
    }

    #[test]
    fn write_file_snippet_writes_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for (i, content) in [
            "no newline",
            "with newline\n",
            "IMAGE_BUILDER_EOF\nclash\n",
            "",
            "'$x' `y`\n\n",
        ]
        .iter()
        .enumerate()
        {
            let p = dir.path().join(format!("f{i}"));
            let p = p.to_str().unwrap();
            let out = sh_ok(&write_file_snippet(p, content, "0640"));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(std::fs::read_to_string(p).unwrap(), *content);
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
                0o640
            );
        }
    }

    #[test]
    fn runner_stops_at_the_first_failing_step_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mk = |name: &str, body: &str| {
            let p = dir.path().join(format!("{name}.sh"));
            std::fs::write(&p, body).unwrap();
            (name.to_owned(), p.to_str().unwrap().to_owned())
        };
        let steps = vec![
            mk("one", "echo one > \"$OUT/one\"\n"),
            // `false` in the middle must stop this step (set -e), not just be ignored.
            mk("two", "false\necho reached > \"$OUT/two\"\n"),
            mk("three", "echo three > \"$OUT/three\"\n"),
        ];
        let script = runner_script(&steps).replace(RUN_DIR, run.to_str().unwrap());
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("OUT", dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(dir.path().join("one").exists());
        assert!(
            !dir.path().join("two").exists(),
            "set -e did not stop step two"
        );
        assert!(
            !dir.path().join("three").exists(),
            "runner went on after a failure"
        );
        assert_eq!(
            std::fs::read_to_string(run.join("failed-step"))
                .unwrap()
                .trim(),
            "two"
        );
        let tsv = std::fs::read_to_string(run.join("steps.tsv")).unwrap();
        assert!(tsv.starts_with("one\t0\t"), "{tsv}");
        assert!(tsv.contains("two\t1\t"), "{tsv}");
        assert!(!run.join("done").exists());
    }

    #[test]
    fn unset_variables_fail_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "echo \"$DEFINITELY_UNSET_VAR\"\n").unwrap();
        let out = Command::new("sh").arg("-eu").arg(&p).output().unwrap();
        assert!(!out.status.success());
    }

    #[test]
    fn apt_update_retries_are_bounded() {
        // A fake apt-get that always reports the lists lock: the step must give up
        // after the configured number of tries, not loop forever.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("apt-get");
        std::fs::write(
            &bin,
            "#!/bin/sh\necho x >> \"$COUNT\"\necho 'E: Could not get lock /var/lib/apt/lists/lock' >&2\nexit 100\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sleep = dir.path().join("sleep");
        std::fs::write(&sleep, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&sleep, std::fs::Permissions::from_mode(0o755)).unwrap();
        let count = dir.path().join("count");
        let out = Command::new("sh")
            .arg("-c")
            .arg(apt_update(3).script)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .env("COUNT", &count)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the lists lock is held"), "{err}");
        assert!(err.contains("giving up"), "{err}");
    }

    #[test]
    fn apt_update_that_exits_zero_after_failed_fetches_is_a_failure() {
        // apt-get update exits 0 when it cannot reach the mirror (it only warns);
        // the step must not pretend the lists are fresh.
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        for (name, body) in [
            (
                "apt-get",
                "#!/bin/sh\necho 'W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving'\necho 'W: Some index files failed to download. They have been ignored, or old ones used instead.'\nexit 0\n",
            ),
            ("sleep", "#!/bin/sh\nexit 0\n"),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(apt_update(2).script)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("index files failed to download"), "{err}");
    }

    #[test]
    fn status_wait_only_in_the_outside_waiter() {
        let inside = [
            apt_lock_dropin(Duration::from_secs(60)),
            wait_apt_idle(Duration::from_secs(60)),
            apt_update(3),
            apt_install(&["curl".into()]),
            sudoers_write_and_install("builder"),
            seal_clean(),
        ];
        for s in inside {
            assert!(
                !s.script.contains("status --wait"),
                "{} calls cloud-init status --wait",
                s.name
            );
        }
        assert!(!FINISHER.contains("status --wait"));
        assert!(
            !seal_watcher_command(Duration::from_secs(5))
                .join(" ")
                .contains("status --wait")
        );
        assert!(
            wait_cloud_init_outside(Duration::from_secs(5))
                .script
                .contains("status --wait")
        );
    }

    /// A directory of fake commands (`name`, body) first on PATH.
    fn fake_bin(dir: &std::path::Path, tools: &[(&str, &str)]) -> String {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for (name, body) in tools {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    #[test]
    fn script_params_read_back_what_was_assigned() {
        let url = "https://s.example/a b?X-Amz-Signature=1&x='q'\"$HOME`";
        let step = agent_install(
            &AgentSource::Url(url.into()),
            &"ab".repeat(32),
            "[Unit]\nDescription=it's\n",
            "",
        );
        assert_eq!(
            script_param(&step.script, AGENT_URL_PARAM).as_deref(),
            Some(url)
        );
        assert_eq!(
            script_param(&step.script, "AGENT_PATH").as_deref(),
            Some("")
        );
        assert_eq!(
            script_param(&step.script, "UNIT_CONTENT").as_deref(),
            Some("[Unit]\nDescription=it's\n")
        );
        assert_eq!(
            script_param(&step.script, "AGENT_BIN").as_deref(),
            Some(AGENT_BIN)
        );
        assert_eq!(script_param(&step.script, "NOT_THERE"), None);
        // The shell agrees.
        let out = sh_ok(&format!(
            "{}printf %s \"$AGENT_URL\"",
            assignments(&[(AGENT_URL_PARAM, url)])
        ));
        assert_eq!(String::from_utf8_lossy(&out.stdout), url);
    }

    /// Run the agent-install step with its paths moved into `dir` and a fake systemctl.
    fn install_agent(
        dir: &std::path::Path,
        source: &AgentSource,
        sha: &str,
    ) -> std::process::Output {
        let mut script = agent_install(source, sha, "[Unit]\n", "[agent]\nx = 'y'\n").script;
        for (name, path) in [
            ("AGENT_BIN", AGENT_BIN),
            ("UNIT_PATH", AGENT_UNIT),
            ("CONFIG_PATH", AGENT_CONFIG_PATH),
        ] {
            let moved = dir.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
            script = script.replace(
                &format!("{name}={path}\n"),
                &format!("{name}={}\n", sh_quote(moved.to_str().unwrap())),
            );
        }
        Command::new("sh")
            .arg("-euc")
            .arg(script)
            .env(
                "PATH",
                fake_bin(dir, &[("systemctl", "echo \"$*\" >> \"$CALLS\"\n")]),
            )
            .env("CALLS", dir.join("calls"))
            .output()
            .unwrap()
    }

    #[test]
    fn agent_install_checks_the_sha256_and_installs_unit_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("staged-agent");
        std::fs::write(&agent, "#!/bin/sh\necho agent\n").unwrap();
        let sha = "02fbd0d2a2e3ba89e1b3ba89fc2e6a0bd4b4e1c32f8a8b47a99b0d2ab6e4cd54";
        let got = Command::new("sha256sum").arg(&agent).output().unwrap();
        let real = String::from_utf8_lossy(&got.stdout)[..64].to_owned();
        assert_ne!(real, sha);

        // From a path: a wrong checksum stops it before anything is installed.
        let from_path = AgentSource::Path(agent.to_str().unwrap().to_owned());
        let out = install_agent(dir.path(), &from_path, sha);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
        let bin = dir.path().join(AGENT_BIN.trim_start_matches('/'));
        assert!(!bin.exists());

        let out = install_agent(dir.path(), &from_path, &real);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(&bin).unwrap(),
            "#!/bin/sh\necho agent\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(AGENT_CONFIG_PATH.trim_start_matches('/')))
                .unwrap(),
            "[agent]\nx = 'y'\n"
        );
        assert!(
            std::fs::read_to_string(dir.path().join("calls"))
                .unwrap()
                .contains("enable vm-agent.service")
        );

        // From a URL (file:// is enough for the fetch loop).
        std::fs::remove_file(&bin).unwrap();
        let url = AgentSource::Url(format!("file://{}", agent.display()));
        let out = install_agent(dir.path(), &url, &real);
        assert!(out.status.success(), "{out:?}");
        assert!(bin.exists());
    }

    #[test]
    fn apt_install_quotes_packages_and_retries_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_bin(
            dir.path(),
            &[
                (
                    "apt-get",
                    "printf '%s|' \"$@\" >> \"$CALLS\"; echo >> \"$CALLS\"\n[ -e \"$CALLS.ok\" ] || { touch \"$CALLS.ok\"; exit 100; }\n",
                ),
                ("sleep", "exit 0\n"),
            ],
        );
        let run = |step: Step| {
            let _ = std::fs::remove_file(dir.path().join("calls"));
            let _ = std::fs::remove_file(dir.path().join("calls.ok"));
            let out = Command::new("sh")
                .arg("-c")
                .arg(step.script)
                .env("PATH", &path)
                .env("CALLS", dir.path().join("calls"))
                .output()
                .unwrap();
            let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
            (out.status.success(), calls)
        };
        let (ok, calls) = run(apt_install(&["git".into(), "a b".into()]));
        assert!(ok);
        let once = "-y|-q|-o|Dpkg::Options::=--force-confdef|-o|Dpkg::Options::=--force-confold|install|git|a b|\n";
        assert_eq!(calls, format!("{once}{once}"));
        // upgrade is not retried.
        let (ok, calls) = run(apt_upgrade());
        assert!(!ok);
        assert_eq!(calls.lines().count(), 1);
    }

    /// Run the sshd drop-in step in a private mount namespace whose `/etc/ssh` and
    /// [`WORK_DIR`] are fresh tmpfs (the host's stay untouched), `/etc/ssh` holding
    /// `sshd_config` and the given drop-ins; returns the output and the drop-in's
    /// content and mode afterwards.
    fn sshd_env_step_in_sandbox(
        sshd_config: &str,
        dropins: &[(&str, &str)],
    ) -> (std::process::Output, Option<(String, u32)>) {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test needs root: it mounts a private /etc/ssh to run the step with the real sshd -t"
        );
        assert!(
            std::path::Path::new("/usr/sbin/sshd").exists(),
            "this test needs openssh-server (the real sshd -t); .ci/setup.sh installs it"
        );
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc-ssh");
        std::fs::create_dir_all(etc.join("sshd_config.d")).unwrap();
        std::fs::write(etc.join("sshd_config"), sshd_config).unwrap();
        for (name, body) in dropins {
            std::fs::write(etc.join("sshd_config.d").join(name), body).unwrap();
        }
        std::fs::write(dir.path().join("step.sh"), sshd_accept_env_install().script).unwrap();
        let out_dir = dir.path().join("out");
        let script = format!(
            "set -e\nmount -t tmpfs tmpfs /etc/ssh\ncp -a {etc}/. /etc/ssh/\nmkdir -p {work}\n\
             mount -t tmpfs tmpfs {work}\nrc=0\nsh -eu {step} || rc=$?\nmkdir -p {out}\n\
             if [ -e {target} ]; then cp {target} {out}/dropin; stat -c %a {target} > {out}/mode; fi\n\
             exit $rc\n",
            etc = etc.display(),
            work = WORK_DIR,
            step = dir.path().join("step.sh").display(),
            out = out_dir.display(),
            target = SSHD_ACCEPT_ENV_DROPIN,
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .output()
            .expect("unshare");
        let after = std::fs::read_to_string(out_dir.join("dropin"))
            .ok()
            .map(|c| {
                let mode = std::fs::read_to_string(out_dir.join("mode")).unwrap();
                (c, u32::from_str_radix(mode.trim(), 8).unwrap())
            });
        (out, after)
    }

    const DEBIAN_SSHD_CONFIG: &str =
        "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n";

    #[test]
    fn sshd_accept_env_step_installs_what_sshd_accepts_and_nothing_it_refuses() {
        // Debian's own layout, no host keys yet (a sealed image): installed, 0644.
        let (out, after) = sshd_env_step_in_sandbox(DEBIAN_SSHD_CONFIG, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            after,
            Some((SSHD_ACCEPT_ENV_CONTENT.to_owned(), 0o644)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // sshd -t refuses the configuration (another drop-in is broken): ours is not
        // left in place and the step fails saying so.
        let (out, after) = sshd_env_step_in_sandbox(
            DEBIAN_SSHD_CONFIG,
            &[("10-broken.conf", "NoSuchOption yes\n")],
        );
        assert!(!out.status.success());
        assert_eq!(
            after, None,
            "a drop-in was left beside a configuration sshd refuses"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("sshd -t refused"), "{err}");

        // A sshd_config that does not read sshd_config.d: the drop-in would be ignored.
        let (out, after) = sshd_env_step_in_sandbox("UsePAM yes\n", &[]);
        assert!(!out.status.success());
        assert_eq!(after, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not include sshd_config.d"), "{err}");
    }
}
