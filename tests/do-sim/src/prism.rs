//! Run Stoplight Prism as a contract-checking proxy in front of the simulator
//! (or of anything else): `prism proxy SPEC UPSTREAM --errors`. With `--errors`
//! Prism answers any request or response that breaks DigitalOcean's OpenAPI
//! contract with an `application/problem+json` error (422 for a bad request,
//! 500 for a bad response) instead of passing it through, and logs the violation.
//!
//! Prism is installed by `.ci/setup-prism.sh` into `~/.cache/image-builder/prism`
//! (override with `PRISM_BIN=/path/to/prism`). The contract is the bundled spec in
//! `tests/do-sim/contract/digitalocean-openapi.yaml` (override with `DO_OPENAPI_SPEC`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Content type of Prism's own error responses (contract violations with `--errors`).
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum PrismError {
    #[error(
        "prism (@stoplight/prism-cli) is not installed: looked for {searched}. \
         Run .ci/setup-prism.sh (needs node and npm) or set PRISM_BIN"
    )]
    NotInstalled { searched: String },
    #[error("the OpenAPI contract {0} is missing (set DO_OPENAPI_SPEC)")]
    NoSpec(PathBuf),
    #[error("starting prism {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not reserve a local port for prism: {0}")]
    Port(#[source] std::io::Error),
    #[error("prism did not start listening within {timeout:?}; its output:\n{output}")]
    NotReady { timeout: Duration, output: String },
}

/// The bundled DigitalOcean OpenAPI document the checks run against.
pub fn spec_path() -> PathBuf {
    std::env::var_os("DO_OPENAPI_SPEC").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contract/digitalocean-openapi.yaml"),
        PathBuf::from,
    )
}

/// Where `.ci/setup-prism.sh` installs prism, then `PATH`.
pub fn find_binary() -> Result<PathBuf, PrismError> {
    let mut searched = Vec::new();
    if let Some(p) = std::env::var_os("PRISM_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        searched.push(p.display().to_string());
    }
    let home = std::env::var_os("PRISM_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("image-builder/prism"))
        });
    if let Some(home) = home {
        let p = home.join("node_modules/.bin/prism");
        if p.is_file() {
            return Ok(p);
        }
        searched.push(p.display().to_string());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("prism");
            if p.is_file() {
                return Ok(p);
            }
        }
        searched.push("prism on PATH".to_owned());
    }
    Err(PrismError::NotInstalled {
        searched: searched.join(", "),
    })
}

/// A running `prism proxy`. Dropping it kills prism.
#[derive(Debug)]
pub struct Prism {
    child: Child,
    url: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Prism {
    /// Start `prism proxy SPEC UPSTREAM --errors` on a free 127.0.0.1 port and
    /// wait until it listens (loading the 3 MB spec takes ~20 s).
    pub async fn proxy(upstream: &str) -> Result<Self, PrismError> {
        let bin = find_binary()?;
        let spec = spec_path();
        if !spec.is_file() {
            return Err(PrismError::NoSpec(spec));
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(PrismError::Port)?;
            l.local_addr().map_err(PrismError::Port)?.port()
        };
        let mut child = Command::new(&bin)
            .arg("proxy")
            .arg(&spec)
            .arg(upstream)
            .args(["--errors", "-h", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| PrismError::Spawn {
                bin: bin.clone(),
                source,
            })?;
        let output = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, output.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, output.clone());
        }
        let prism = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            output,
        };
        let timeout = Duration::from_secs(240);
        Self::wait_ready(prism, port, Instant::now(), timeout).await
    }

    async fn wait_ready(
        mut prism: Self,
        port: u16,
        start: Instant,
        timeout: Duration,
    ) -> Result<Self, PrismError> {
        loop {
            let listening = prism.output().iter().any(|l| l.contains("is listening on"));
            if listening
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                return Ok(prism);
            }
            if matches!(prism.child.try_wait(), Ok(Some(_))) || start.elapsed() > timeout {
                let output = prism.output().join("\n");
                return Err(PrismError::NotReady { timeout, output });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Base URL to send API requests to (same paths as the upstream).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything prism printed so far.
    pub fn output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Prism's log lines that report a contract violation or an error
    /// (`✖ error`, `⚠ warning`, `Violation`).
    pub fn violations(&self) -> Vec<String> {
        self.output()
            .into_iter()
            .filter(|l| {
                l.contains('\u{2716}')
                    || l.contains('\u{26a0}')
                    || l.to_lowercase().contains("violation")
            })
            .collect()
    }
}

fn collect(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
