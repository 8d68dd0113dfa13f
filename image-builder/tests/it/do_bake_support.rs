//! Shared set-up of the DigitalOcean bake tests: the simulator (which plays the
//! builder VM: it fetches the agent through the presigned URL, PUTs the seal
//! report, powers off), a real S3 server (s3s-fs) as the Space, a spec, a fake
//! agent binary and 0600 secret files.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use do_sim::{PlayVm, ProvisionResult, Sim, SimConfig};
use image_builder::backend::digitalocean::{Connection, DoBakeOptions};
use image_builder::bake::BakeRequest;

pub use crate::artifact_support::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY, creds};

pub const TOKEN: &str = "dop_v1_test_token_for_the_simulator";

/// A spec for the bake tests; `extra` is appended (YAML).
pub fn spec_text(timeout: &str, do_extra: &str) -> String {
    format!(
        "name: ci-worker\nbase:\n  digitalocean: debian-12-x64\nbuild_user:\n  name: builder\n\
         agent:\n  install: true\nsnapshot:\n  name: \"{{name}}-{{timestamp}}-{{spec_hash}}\"\n\
         digitalocean:\n  region: nyc3\n  size: s-1vcpu-1gb\n  tags: [ci]\n{do_extra}bake:\n  timeout: {timeout}\n"
    )
}

pub fn fast_sim() -> SimConfig {
    SimConfig {
        token: Some(TOKEN.into()),
        droplet_boot_ms: 100,
        action_ms: 100,
        play_vm: Some(PlayVm {
            result: ProvisionResult::Ok,
            report_after_ms: 100,
            after_ms: 50,
            fetch_agent: true,
            no_report: false,
        }),
        ..SimConfig::default()
    }
}

fn secret_file(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Everything one bake needs.
pub struct Env {
    pub sim: Sim,
    pub dir: tempfile::TempDir,
    pub spec: PathBuf,
    pub agent: PathBuf,
    pub agent_sha256: String,
    pub token_file: PathBuf,
    pub space_creds_file: PathBuf,
    pub state_dir: PathBuf,
    pub out: PathBuf,
    pub s3_port: u16,
}

impl Env {
    pub async fn new(cfg: SimConfig, spec: &str, s3_port: u16) -> Self {
        let sim = Sim::start(cfg).await.expect("simulator starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let spec_path = dir.path().join("spec.yaml");
        std::fs::write(&spec_path, spec).expect("write spec");
        // A fake static agent: random bytes, so its sha256 is unique per test.
        let agent = dir.path().join("vm-agent");
        let mut bytes = vec![0u8; 256 * 1024];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ rand_byte();
        }
        std::fs::write(&agent, &bytes).expect("write agent");
        let agent_sha256 = image_builder::bake::sha256_file(&agent).expect("sha256");
        let token_file = dir.path().join("do-token");
        secret_file(&token_file, TOKEN);
        let space_creds_file = dir.path().join("space.env");
        secret_file(
            &space_creds_file,
            &format!("SPACES_ACCESS_KEY_ID={ACCESS_KEY}\nSPACES_SECRET_ACCESS_KEY={SECRET_KEY}\n"),
        );
        let state_dir = dir.path().join("state");
        let out = dir.path().join("out");
        Env {
            sim,
            spec: spec_path,
            agent,
            agent_sha256,
            token_file,
            space_creds_file,
            state_dir,
            out,
            dir,
            s3_port,
        }
    }

    pub fn options(&self) -> DoBakeOptions {
        DoBakeOptions {
            connection: Connection {
                api_url: Some(self.sim.api_url()),
                token_file: Some(self.token_file.clone()),
                api_backoff: Some(Duration::from_millis(20)),
            },
            yes: true,
            resume: None,
            space: Some(crate::artifact_support::settings_for(self.s3_port)),
            space_credentials: Some(creds()),
            state_dir: Some(self.state_dir.clone()),
            poll: Duration::from_millis(30),
            power_off_after: Duration::from_secs(2),
            destroy_timeout: Duration::from_secs(30),
        }
    }

    pub fn request(&self) -> BakeRequest {
        BakeRequest {
            spec: self.spec.clone(),
            out_dir: self.out.clone(),
            agent_bin: Some(self.agent.clone()),
            artifact_sha: None,
            qemu: Default::default(),
            digitalocean: self.options(),
        }
    }

    /// Flags of `image-builder bake SPEC --backend digitalocean` for this env.
    pub fn bake_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "bake".into(),
            self.spec.display().to_string(),
            "--backend".into(),
            "digitalocean".into(),
            "--out".into(),
            self.out.display().to_string(),
            "--agent-bin".into(),
            self.agent.display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--poll-interval".into(),
            "30ms".into(),
            "--power-off-after".into(),
            "2s".into(),
            "--space-endpoint".into(),
            format!("http://127.0.0.1:{}", self.s3_port),
            "--space-bucket".into(),
            BUCKET.into(),
            "--space-path-style".into(),
            "--space-credentials-file".into(),
            self.space_creds_file.display().to_string(),
        ];
        a.extend(self.conn_args());
        a
    }

    /// `--api-url`, `--token-file`, `--api-backoff`.
    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "--api-url".into(),
            self.sim.api_url(),
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--api-backoff".into(),
            "20ms".into(),
        ]
    }

    /// The state files written so far.
    pub fn state_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.state_dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Private images the snapshots made.
    pub fn snapshot_images(&self) -> Vec<serde_json::Value> {
        self.sim.state()["images"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| !i["source_droplet"].is_null())
            .collect()
    }
}

fn rand_byte() -> u8 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() % 251) as u8
}
