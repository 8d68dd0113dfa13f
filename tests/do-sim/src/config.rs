//! Simulator configuration: timings, account limits, catalogue restrictions and
//! injected faults. Loaded from JSON (`do-sim --config faults.json`), built in Rust
//! tests, or changed at run time through the control API (`POST /_sim/faults`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything that shapes how the simulator behaves. Every field has a default,
/// so `{}` is a valid config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Bearer token the API accepts. `None` accepts any non-empty token.
    pub token: Option<String>,
    /// More tokens, each limited to its scopes as DigitalOcean's custom-scoped tokens are
    /// (`droplet:read`, `droplet:delete`, …): e.g. a fleet's worker token. A request
    /// outside its scopes is answered 403. The request log names the token used.
    #[serde(default)]
    pub scoped_tokens: Vec<ScopedToken>,
    /// How long a new droplet stays `new` before it becomes `active`.
    pub droplet_boot_ms: u64,
    /// Default duration of a droplet action (shutdown, power_off, power_on, ...).
    pub action_ms: u64,
    /// Per action type overrides of `action_ms` (e.g. `{"snapshot": 30000}` for a slow snapshot).
    pub action_ms_by_type: BTreeMap<String, u64>,
    /// Action types that end `errored` instead of `completed` (e.g. `["snapshot"]`).
    pub errored_actions: Vec<String>,
    /// `account.droplet_limit`; creating beyond it answers 422.
    pub droplet_limit: u64,
    /// Size slugs that are listed but answer 422 "restricted" on create.
    pub restricted_sizes: Vec<String>,
    /// IPv4 address handed out as every droplet's public address (loopback by default,
    /// so a tool that SSHes to the droplet reaches a local sshd).
    pub droplet_ipv4: String,
    /// Rate-limit window: `ratelimit-limit`, the starting `ratelimit-remaining`,
    /// and the seconds until `ratelimit-reset`. At remaining 0 the API answers 429.
    pub ratelimit: RateLimitConfig,
    /// Play the in-VM provisioning automatically for every new droplet.
    pub auto_provision: Option<ProvisionPlan>,
    /// Play the whole in-VM part of an image-builder bake for every new droplet
    /// whose user-data carries a seal finisher: fetch the agent through its
    /// presigned URL, PUT a seal report to the presigned report URL, power off.
    pub play_vm: Option<PlayVm>,
    /// Injected faults, matched in order against each request.
    pub faults: Vec<FaultRule>,
    /// Machine mode: droplets are real containers (see `crate::machine`). Read
    /// when the simulator starts; excludes `play_vm` and `auto_provision`.
    pub machines: Option<crate::machine::MachineConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            token: None,
            scoped_tokens: Vec::new(),
            droplet_boot_ms: 200,
            action_ms: 200,
            action_ms_by_type: BTreeMap::new(),
            errored_actions: Vec::new(),
            droplet_limit: 25,
            restricted_sizes: vec!["g-2vcpu-8gb".to_owned()],
            droplet_ipv4: "127.0.0.1".to_owned(),
            ratelimit: RateLimitConfig::default(),
            auto_provision: None,
            play_vm: None,
            faults: Vec::new(),
            machines: None,
        }
    }
}

impl SimConfig {
    /// Duration of an action of the given type, in milliseconds.
    pub fn action_duration_ms(&self, kind: &str) -> u64 {
        self.action_ms_by_type
            .get(kind)
            .copied()
            .unwrap_or(self.action_ms)
    }
}

/// The rolling rate-limit window the simulator reports in its headers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub limit: u64,
    pub remaining: u64,
    pub reset_secs: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            limit: 5000,
            remaining: 5000,
            reset_secs: 60,
        }
    }
}

/// Outcome of the simulated in-VM provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionResult {
    Ok,
    Failed,
}

/// "Provisioning finishes with `result` and the droplet powers itself off
/// `after_ms` after it was requested (or after the droplet became active, for
/// `auto_provision`)."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionPlan {
    pub result: ProvisionResult,
    #[serde(default)]
    pub after_ms: u64,
}

/// How [`SimConfig::play_vm`] plays a bake's builder VM. After the droplet
/// is active and `report_after_ms` more, the player GETs the agent URL found
/// in the user-data (`fetch_agent`), PUTs a seal report with `result` to the
/// report URL (unless `no_report`: a VM that dies without reporting), and
/// powers the droplet off `after_ms` later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayVm {
    pub result: ProvisionResult,
    /// Time "provisioning" takes once the droplet is active, before the report.
    #[serde(default)]
    pub report_after_ms: u64,
    /// From the report to `off`.
    #[serde(default)]
    pub after_ms: u64,
    #[serde(default = "yes")]
    pub fetch_agent: bool,
    /// Power off without a report (a finisher that never ran).
    #[serde(default)]
    pub no_report: bool,
}

fn yes() -> bool {
    true
}

/// One injected fault: applies to calls `nth ..= nth + times - 1` of `route`
/// (1-based, counted per route since start or the last log reset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Route key as shown in the request log, e.g. `"POST /v2/droplets"` or
    /// `"GET /v2/actions/{id}"`. `"*"` matches every API route.
    pub route: String,
    /// First affected call of that route (1-based).
    #[serde(default = "one")]
    pub nth: u64,
    /// Number of consecutive affected calls.
    #[serde(default = "one")]
    pub times: u64,
    pub fault: Fault,
}

fn one() -> u64 {
    1
}

/// A token limited to some scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    /// How the request log names it.
    pub name: String,
    /// The bearer token.
    pub token: String,
    /// `resource:action` scopes, e.g. `droplet:read`, `droplet:delete`.
    pub scopes: Vec<String>,
}

impl ScopedToken {
    /// The scope a request needs: `<resource>:read` for GET, `droplet:delete` for a
    /// droplet DELETE, `<resource>:create`/`update` for writes (DigitalOcean's scope names).
    pub fn required_scope(method: &str, path: &str) -> String {
        let resource = path
            .trim_start_matches("/v2/")
            .split('/')
            .next()
            .unwrap_or("")
            .trim_end_matches('s')
            .replace("droplet_action", "droplet");
        let resource = if resource.is_empty() {
            "account".to_owned()
        } else {
            resource
        };
        let action = match method {
            "GET" | "HEAD" => "read",
            "DELETE" => "delete",
            "POST" if path.contains("/actions") => "update",
            "POST" => "create",
            _ => "update",
        };
        format!("{resource}:{action}")
    }

    /// Whether this token may make the request.
    pub fn allows(&self, method: &str, path: &str) -> bool {
        let need = Self::required_scope(method, path);
        self.scopes.contains(&need)
    }
}

/// What happens to an affected call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// 429 `too_many_requests` with `retry-after: SECS`; nothing is processed.
    RateLimit { retry_after_secs: u64 },
    /// A 5xx error before the request is processed (nothing changes).
    ServerError { status: u16 },
    /// The request IS processed (e.g. the droplet is created), then a 5xx is
    /// returned instead of the real response: the client cannot know the outcome.
    ServerErrorAfterCommit { status: u16 },
    /// The connection is closed without a response, before processing.
    Drop,
    /// The request is processed, then the connection is closed without a response.
    DropAfterCommit,
    /// The response is delayed by `ms` (the request is processed normally).
    Delay { ms: u64 },
    /// The request IS processed, then its response is held until `gate` is
    /// released ([`crate::Sim::release`], `POST /_sim/gates/{gate}/release`).
    /// [`crate::Sim::wait_held`] returns once a response is held there: the
    /// client is then provably inside that call, and a test can act (kill it,
    /// signal it, look at the state) at that point without guessing timings.
    Hold { gate: String },
    /// Answer with this status and JSON body instead (nothing is processed).
    /// Used to check that a contract checker catches a bad response.
    Respond {
        status: u16,
        body: serde_json::Value,
    },
}
