//! The end of a bake inside the VM: the seal report (the contract between the VM
//! and every bake backend), the finisher that writes it, the watcher that starts the
//! finisher, and the seal itself.
//!
//! [`SealReport`] is the one definition of the report. The finisher
//! (`scripts/seal-finisher.py`) writes it; the tests in this module run the real
//! script and parse its output with these types (`deny_unknown_fields`), so the two
//! cannot drift. The finisher's inputs are a [`FinisherConfig`] (JSON) written beside it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{RUN_DIR, Step, WORK_DIR};

/// The bake finisher, a Python 3 script (python3 is always there with cloud-init).
///
/// Started detached at boot with its [`FinisherConfig`] as its only argument, it
/// waits for nothing itself (the watcher waited for cloud-init), builds the seal
/// report, seals the image on success, prints the report on the console between
/// [`REPORT_BEGIN`] and [`REPORT_END`], PUTs it to the report URL when there is
/// one, removes itself and its config, and powers off.
pub const FINISHER: &str = include_str!("../scripts/seal-finisher.py");

/// Where a bake writes the finisher in the VM.
pub const FINISHER_PATH: &str = "/var/lib/image-builder/seal.py";
/// Where a bake writes the finisher's [`FinisherConfig`] (mode 0600: it holds the
/// presigned report URL).
pub const FINISHER_CONFIG_PATH: &str = "/var/lib/image-builder/seal.json";
/// Where a bake writes [`seal_clean`].
pub const SEAL_CLEAN_PATH: &str = "/var/lib/image-builder/seal.sh";

/// cloud-init writes this when all its stages are done.
pub const CLOUD_INIT_RESULT: &str = "/run/cloud-init/result.json";
/// The output of cloud-init's stages and of `runcmd` (the report carries its tail).
pub const CLOUD_INIT_LOG: &str = "/var/log/cloud-init-output.log";

/// Marker printed on the console before the seal report.
pub const REPORT_BEGIN: &str = "IMAGE-BUILDER-SEAL-REPORT-BEGIN";
/// Marker printed on the console after the seal report.
pub const REPORT_END: &str = "IMAGE-BUILDER-SEAL-REPORT-END";

const WATCHER: &str = include_str!("../scripts/seal-watcher.sh");
const SEAL_CLEAN: &str = include_str!("../scripts/seal-clean.sh");

/// Whether provisioning succeeded and the image was sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SealStatus {
    /// Every step ran, cloud-init reported no error, and the seal ran.
    Ok,
    /// Something failed; the report says what.
    Failed,
}

impl fmt::Display for SealStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SealStatus::Ok => "ok",
            SealStatus::Failed => "failed",
        })
    }
}

/// The seal report: written by the bake finisher in the VM, read by every bake backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealReport {
    /// Format version ([`SealReport::VERSION`]).
    pub version: u32,
    /// Whether the image is good to snapshot.
    pub status: SealStatus,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// The step that failed (`seal` when sealing itself failed).
    #[serde(default)]
    pub failed_step: Option<String>,
    /// cloud-init's own errors (from `result.json`).
    #[serde(default)]
    pub cloud_init_errors: Vec<String>,
    /// Steps that ran, with exit codes and durations.
    #[serde(default)]
    pub steps: Vec<StepResult>,
    /// The tail of `/var/log/cloud-init-output.log` (or of the seal's output when the
    /// seal failed).
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// cloud-init, kernel and OS versions.
    #[serde(default)]
    pub versions: Versions,
    /// When the finisher ran (UTC, RFC 3339).
    #[serde(default)]
    pub finished_at: Option<String>,
}

impl SealReport {
    /// The report format this crate writes and reads.
    pub const VERSION: u32 = 1;

    /// A report with `status` and nothing else.
    pub fn new(status: SealStatus) -> Self {
        SealReport {
            version: Self::VERSION,
            status,
            reason: None,
            failed_step: None,
            cloud_init_errors: Vec::new(),
            steps: Vec::new(),
            log_tail: Vec::new(),
            versions: Versions::default(),
            finished_at: None,
        }
    }

    /// A failure with only a reason.
    pub fn failed(reason: &str) -> Self {
        SealReport {
            reason: Some(reason.to_owned()),
            ..Self::new(SealStatus::Failed)
        }
    }

    /// The report as the finisher prints it on the console: between
    /// [`REPORT_BEGIN`] and [`REPORT_END`], on lines of their own.
    pub fn console_text(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        let body = serde_json::to_string(self).unwrap_or_default();
        format!("{REPORT_BEGIN}\n{body}\n{REPORT_END}")
    }
}

/// One step in a [`SealReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepResult {
    /// Step name.
    pub name: String,
    /// Its exit code.
    pub exit_code: i32,
    /// How long it took.
    pub seconds: u64,
}

/// What the builder ran, in a [`SealReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    /// `cloud-init --version`.
    #[serde(default)]
    pub cloud_init: String,
    /// The running kernel's release.
    #[serde(default)]
    pub kernel: String,
    /// `PRETTY_NAME` from `/etc/os-release`.
    #[serde(default)]
    pub os: String,
}

/// The non-secret record of a bake, kept in the image at [`crate::BAKED_INFO`].
/// The finisher adds `baked_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakedInfo {
    /// The spec's image name.
    pub image: String,
    /// sha256 of the spec.
    pub spec_sha256: String,
    /// The image-builder that rendered the bake.
    pub image_builder_version: String,
}

/// Everything the finisher reads, writes and runs: the JSON file it is started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinisherConfig {
    /// Where to PUT the report (a presigned URL), if anywhere.
    pub report_url: Option<String>,
    /// The seal ([`seal_clean`]), run with `sh -eu` when provisioning succeeded.
    pub seal_script: String,
    /// The step runner's directory (`steps.tsv`, `failed-step`, `done`); the report
    /// is also written there (`seal-report.json`).
    pub run_dir: String,
    /// cloud-init's `result.json`.
    pub cloud_init_result: String,
    /// cloud-init's output log.
    pub cloud_init_log: String,
    /// `os-release`, for the OS name in the report.
    pub os_release: String,
    /// Written to `baked_info_path` (with `baked_at`) when provisioning succeeded.
    pub baked_info: BakedInfo,
    /// See [`crate::BAKED_INFO`].
    pub baked_info_path: String,
    /// Where to print the report: the first of these that opens (else stdout).
    pub consoles: Vec<String>,
    /// See [`REPORT_BEGIN`].
    pub report_begin: String,
    /// See [`REPORT_END`].
    pub report_end: String,
    /// The [`SealReport::version`] to write.
    pub report_version: u32,
    /// Run at the very end; empty: nothing (tests).
    pub poweroff: Vec<String>,
}

impl FinisherConfig {
    /// The finisher of a bake: the standard paths in the VM, power off at the end.
    pub fn new(report_url: Option<String>, baked_info: BakedInfo) -> Self {
        FinisherConfig {
            report_url,
            seal_script: SEAL_CLEAN_PATH.to_owned(),
            run_dir: RUN_DIR.to_owned(),
            cloud_init_result: CLOUD_INIT_RESULT.to_owned(),
            cloud_init_log: CLOUD_INIT_LOG.to_owned(),
            os_release: "/etc/os-release".to_owned(),
            baked_info,
            baked_info_path: crate::BAKED_INFO.to_owned(),
            consoles: vec!["/dev/console".to_owned(), "/dev/ttyS0".to_owned()],
            report_begin: REPORT_BEGIN.to_owned(),
            report_end: REPORT_END.to_owned(),
            report_version: SealReport::VERSION,
            poweroff: vec!["systemctl".to_owned(), "poweroff".to_owned()],
        }
    }

    /// The config file's content (pretty JSON: it is read in the user-data, too).
    pub fn to_json(&self) -> String {
        // Only strings, numbers and lists of them: serializing cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// The part of the seal that removes state and secrets (no report, no power-off).
/// Run last, right before a snapshot.
pub fn seal_clean() -> Step {
    Step::from_script("seal", &[("WORK_DIR", WORK_DIR)], SEAL_CLEAN)
}

/// The boot-time watcher for a bake (a `bootcmd` entry): in its own transient unit
/// (so no cloud-init stage waits for it), it waits for cloud-init to finish and runs
/// the finisher at [`FINISHER_PATH`] with its config at [`FINISHER_CONFIG_PATH`]; if
/// provisioning broke before the finisher was written it still prints a failed
/// report on the console and powers off, so a bake never waits for its timeout.
pub fn seal_watcher_command(timeout: Duration) -> Vec<String> {
    let fallback =
        SealReport::failed("provisioning failed before the seal step was installed").console_text();
    [
        "systemd-run",
        "--no-block",
        "--collect",
        "--unit=image-builder-seal",
        "--description=image-builder bake finisher",
        "/bin/sh",
        "-c",
        WATCHER,
        "image-builder-seal",
        CLOUD_INIT_RESULT,
        &timeout.as_secs().max(1).to_string(),
        FINISHER_PATH,
        FINISHER_CONFIG_PATH,
        &fallback,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A fake VM for the finisher: a temp dir with cloud-init's result and log, the
    /// runner's files, os-release, a seal script and a console file.
    struct FakeVm {
        dir: tempfile::TempDir,
    }

    impl FakeVm {
        fn new() -> Self {
            let vm = FakeVm {
                dir: tempfile::tempdir().unwrap(),
            };
            std::fs::create_dir_all(vm.path("run")).unwrap();
            vm.write(
                "os-release",
                "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
            );
            vm.write(
                "cloud-init-output.log",
                "Cloud-init v. 24.1 running 'modules:final'\nimage-builder: all steps done\n",
            );
            vm.write("seal.sh", "echo sealed > \"$(dirname \"$0\")/sealed\"\n");
            vm
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn write(&self, rel: &str, text: &str) {
            std::fs::write(self.path(rel), text).unwrap();
        }

        fn config(&self, report_url: Option<String>) -> FinisherConfig {
            let p = |rel: &str| self.path(rel).to_str().unwrap().to_owned();
            FinisherConfig {
                seal_script: p("seal.sh"),
                run_dir: p("run"),
                cloud_init_result: p("result.json"),
                cloud_init_log: p("cloud-init-output.log"),
                os_release: p("os-release"),
                baked_info_path: p("etc/baked.json"),
                consoles: vec![p("console")],
                poweroff: Vec::new(),
                ..FinisherConfig::new(
                    report_url,
                    BakedInfo {
                        image: "ci-worker".into(),
                        spec_sha256: "ab".repeat(32),
                        image_builder_version: "0.1.0".into(),
                    },
                )
            }
        }

        /// Run the real finisher (a copy: it removes itself) and return the report
        /// it wrote, the one on the console, and what it printed.
        fn finish(&self, cfg: &FinisherConfig) -> (SealReport, SealReport) {
            let script = self.path("seal.py");
            std::fs::write(&script, FINISHER).unwrap();
            let config = self.path("seal.json");
            std::fs::write(&config, cfg.to_json()).unwrap();
            let out = Command::new("python3")
                .arg(&script)
                .arg(&config)
                .output()
                .expect("python3");
            assert!(
                out.status.success(),
                "finisher failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!script.exists() && !config.exists(), "finisher left itself");
            let written =
                parse(&std::fs::read_to_string(self.path("run/seal-report.json")).unwrap());
            let console = std::fs::read_to_string(self.path("console")).unwrap();
            let body = console
                .strip_prefix(&format!("{REPORT_BEGIN}\n"))
                .and_then(|c| c.strip_suffix(&format!("\n{REPORT_END}\n")))
                .unwrap_or_else(|| panic!("no report between the markers: {console:?}"));
            (written, parse(body))
        }
    }

    fn parse(json: &str) -> SealReport {
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    fn result_json(errors: &[&str]) -> String {
        serde_json::json!({"v1": {"datasource": "DataSourceNoCloud", "errors": errors}}).to_string()
    }

    /// Answer one HTTP request with 200 and hand back its request line and body.
    fn one_put(listener: TcpListener) -> std::thread::JoinHandle<(String, String)> {
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            (request_line, String::from_utf8(body).unwrap())
        })
    }

    #[test]
    fn finisher_reports_success_seals_and_uploads() {
        let vm = FakeVm::new();
        vm.write("result.json", &result_json(&[]));
        vm.write("run/steps.tsv", "apt-update\t0\t12\nsudoers\t0\t0\n");
        vm.write("run/done", "");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/bakes/x/seal-report.json?X-Amz-Signature=1",
            listener.local_addr().unwrap()
        );
        let server = one_put(listener);
        let (written, console) = vm.finish(&vm.config(Some(url)));
        let (request_line, uploaded) = server.join().unwrap();

        assert_eq!(written, console);
        assert_eq!(parse(&uploaded), written);
        assert!(
            request_line.starts_with("PUT /bakes/x/seal-report.json?X-Amz-Signature=1 "),
            "{request_line}"
        );
        assert_eq!(written.version, SealReport::VERSION);
        assert_eq!(written.status, SealStatus::Ok, "{written:?}");
        assert_eq!(written.reason, None);
        assert_eq!(
            written.steps,
            vec![
                StepResult {
                    name: "apt-update".into(),
                    exit_code: 0,
                    seconds: 12
                },
                StepResult {
                    name: "sudoers".into(),
                    exit_code: 0,
                    seconds: 0
                },
            ]
        );
        assert_eq!(
            written.log_tail.last().unwrap(),
            "image-builder: all steps done"
        );
        assert_eq!(written.versions.os, "Debian GNU/Linux 12 (bookworm)");
        assert!(!written.versions.kernel.is_empty());
        assert!(written.finished_at.is_some());
        // Sealed, and the record of the bake written with the finish time.
        assert!(vm.path("sealed").exists());
        let baked: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(vm.path("etc/baked.json")).unwrap())
                .unwrap();
        assert_eq!(baked["image"], "ci-worker");
        assert_eq!(
            baked["baked_at"],
            written.finished_at.clone().unwrap().as_str()
        );
    }

    #[test]
    fn finisher_reports_a_failed_step_without_sealing() {
        let vm = FakeVm::new();
        vm.write(
            "result.json",
            &result_json(&["('scripts_user', RuntimeError())"]),
        );
        vm.write("run/steps.tsv", "apt-update\t0\t3\napt-install\t100\t2\n");
        vm.write("run/failed-step", "apt-install\n");
        vm.write(
            "cloud-init-output.log",
            "E: Unable to locate package no-such-package\n",
        );
        let (written, console) = vm.finish(&vm.config(None));
        assert_eq!(written, console);
        assert_eq!(written.status, SealStatus::Failed);
        assert_eq!(written.failed_step.as_deref(), Some("apt-install"));
        assert_eq!(written.reason.as_deref(), Some("step apt-install failed"));
        assert_eq!(
            written.cloud_init_errors,
            vec!["('scripts_user', RuntimeError())".to_owned()]
        );
        assert_eq!(written.steps[1].exit_code, 100);
        assert_eq!(
            written.log_tail,
            vec!["E: Unable to locate package no-such-package".to_owned()]
        );
        assert!(!vm.path("sealed").exists(), "a failed bake was sealed");
        assert!(!vm.path("etc/baked.json").exists());
    }

    #[test]
    fn finisher_reports_missing_cloud_init_result_and_a_failed_seal() {
        let vm = FakeVm::new();
        let (written, _) = vm.finish(&vm.config(None));
        assert_eq!(written.status, SealStatus::Failed);
        assert!(
            written
                .reason
                .as_deref()
                .unwrap()
                .contains("cloud-init did not finish"),
            "{written:?}"
        );

        let vm = FakeVm::new();
        vm.write("result.json", &result_json(&[]));
        vm.write("run/done", "");
        vm.write("seal.sh", "echo 'fstrim: cannot' >&2\nexit 3\n");
        let (written, _) = vm.finish(&vm.config(None));
        assert_eq!(written.status, SealStatus::Failed);
        assert_eq!(written.failed_step.as_deref(), Some("seal"));
        assert_eq!(
            written.reason.as_deref(),
            Some("the seal step failed (exit 3)")
        );
        assert_eq!(written.log_tail, vec!["fstrim: cannot".to_owned()]);
    }

    #[test]
    fn unknown_report_fields_and_statuses_are_rejected() {
        let ok = r#"{"version":1,"status":"ok"}"#;
        assert_eq!(parse(ok), SealReport::new(SealStatus::Ok));
        for bad in [
            r#"{"version":1,"status":"ok","extra":1}"#,
            r#"{"version":1,"status":"fine"}"#,
            r#"{"version":1,"status":"ok","steps":[{"name":"a","exit_code":0,"seconds":1,"x":0}]}"#,
        ] {
            assert!(serde_json::from_str::<SealReport>(bad).is_err(), "{bad}");
        }
    }

    /// Run the watcher's script as `sh -c` would, with `/dev/console` and
    /// `systemctl` faked.
    fn run_watcher(dir: &Path, args: &[String]) -> std::process::Output {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let systemctl = bin.join("systemctl");
        std::fs::write(&systemctl, "#!/bin/sh\necho \"$*\" >> \"$CALLS\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let console = dir.join("console");
        let script = args[7].replace("/dev/console", console.to_str().unwrap());
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .args(&args[8..])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("CALLS", dir.join("calls"))
            .output()
            .unwrap()
    }

    #[test]
    fn watcher_without_a_finisher_prints_a_failed_report_and_powers_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = seal_watcher_command(Duration::from_secs(1));
        assert_eq!(args[..3], ["systemd-run", "--no-block", "--collect"]);
        // No result.json ever: the bounded wait ends; no finisher: the fallback.
        args[9] = dir.path().join("result.json").to_str().unwrap().to_owned();
        args[11] = dir.path().join("seal.py").to_str().unwrap().to_owned();
        let out = run_watcher(dir.path(), &args);
        assert!(out.status.success(), "{out:?}");
        let console = std::fs::read_to_string(dir.path().join("console")).unwrap();
        let body = console
            .strip_prefix(&format!("{REPORT_BEGIN}\n"))
            .and_then(|c| c.strip_suffix(&format!("\n{REPORT_END}\n")))
            .unwrap();
        let report = parse(body);
        assert_eq!(report.status, SealStatus::Failed);
        assert_eq!(
            report.reason.as_deref(),
            Some("provisioning failed before the seal step was installed")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("calls")).unwrap(),
            "poweroff\n"
        );
    }

    #[test]
    fn watcher_hands_over_to_the_finisher_with_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = seal_watcher_command(Duration::from_secs(30));
        let result = dir.path().join("result.json");
        std::fs::write(&result, "{}").unwrap();
        let finisher = dir.path().join("seal.py");
        std::fs::write(
            &finisher,
            "import sys\nopen(sys.argv[1] + '.seen', 'w').write('yes')\n",
        )
        .unwrap();
        args[9] = result.to_str().unwrap().to_owned();
        args[11] = finisher.to_str().unwrap().to_owned();
        args[12] = dir.path().join("seal.json").to_str().unwrap().to_owned();
        let out = run_watcher(dir.path(), &args);
        assert!(out.status.success(), "{out:?}");
        assert!(dir.path().join("seal.json.seen").exists());
        assert!(!dir.path().join("calls").exists(), "powered off itself");
    }

    #[test]
    fn vm_paths_are_under_the_work_dir() {
        for p in [FINISHER_PATH, FINISHER_CONFIG_PATH, SEAL_CLEAN_PATH] {
            assert!(p.starts_with(&format!("{WORK_DIR}/")), "{p}");
        }
        let cfg = FinisherConfig::new(
            None,
            BakedInfo {
                image: "i".into(),
                spec_sha256: "s".into(),
                image_builder_version: "v".into(),
            },
        );
        assert_eq!(cfg.seal_script, SEAL_CLEAN_PATH);
        let back: FinisherConfig = serde_json::from_str(&cfg.to_json()).unwrap();
        assert_eq!(back, cfg);
    }
}
