//! do-sim: a stateful DigitalOcean API simulator (and droplet metadata service)
//! whose responses follow DigitalOcean's published OpenAPI contract.
//!
//! Start one per test with [`Sim::start`]; it binds `127.0.0.1` on ephemeral
//! ports (one for the `/v2` API, one for the metadata service) and stops when
//! the handle is dropped. The same server runs standalone as the `do-sim` binary.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use do_sim::{Fault, FaultRule, Sim, SimConfig};
//! let sim = Sim::start(SimConfig::default()).await?;
//! sim.set_faults(vec![FaultRule {
//!     route: "POST /v2/droplets".into(),
//!     nth: 1,
//!     times: 1,
//!     fault: Fault::ServerErrorAfterCommit { status: 500 },
//! }]);
//! // ... point the client at sim.api_url() ...
//! assert_eq!(sim.count("POST /v2/droplets"), 0);
//! # Ok(()) }
//! ```
//!
//! The control API (`/_sim/...`, on the API listener, no auth, not counted) and
//! the config file format are documented in `tests/do-sim/README.md`.

pub mod api;
pub mod catalog;
pub mod config;
pub mod custom_images;
pub mod gates;
pub mod machine;
pub mod metadata;
pub mod prism;
pub mod server;
pub mod state;
pub mod vm;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use api::{RequestLog, SeedImage};
pub use config::{
    Fault, FaultRule, PlayVm, ProvisionPlan, ProvisionResult, RateLimitConfig, ScopedToken,
    SimConfig,
};
pub use gates::GateState;
pub use machine::{MachineConfig, MachineError, MachineInfo, Power};
pub use state::{DEFAULT_PROJECT_ID, DropletRecord, OTHER_PROJECT_ID};
pub use vm::{Played, bake_urls};

use api::Shared;
use state::World;

/// A running simulator. Dropping it stops both listeners.
#[derive(Debug)]
pub struct Sim {
    shared: Arc<Shared>,
    api_addr: SocketAddr,
    metadata_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// Machine mode (`SimConfig::machines`).
    machines: Option<Arc<machine::Host>>,
}

/// Errors from the [`Sim`] handle's helpers.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the simulator has no droplet {0}")]
    NoSuchDroplet(u64),
    #[error("the simulator is not in machine mode (SimConfig::machines)")]
    NoMachines,
    #[error(transparent)]
    Machine(#[from] MachineError),
}

impl Sim {
    /// Bind `127.0.0.1:0` for the API and the metadata service and start serving.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        let api = TcpListener::bind("127.0.0.1:0").await?;
        let md = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(config, api, md)
    }

    /// Serve on listeners the caller bound (the binary uses this for `--listen`).
    /// In machine mode this checks the host and sweeps dead runs first (blocking).
    pub fn start_on(
        config: SimConfig,
        api: TcpListener,
        metadata: TcpListener,
    ) -> std::io::Result<Self> {
        let api_addr = api.local_addr()?;
        let metadata_addr = metadata.local_addr()?;
        let machines = match &config.machines {
            Some(mc) => {
                Some(machine::Host::new(mc.clone(), &config).map_err(std::io::Error::other)?)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            world: Mutex::new(World::new(config)),
            gates: gates::Gates::default(),
        });
        if let Some(host) = &machines {
            host.attach(&shared, api_addr, metadata_addr);
            shared.lock().machines = Some(host.clone());
        }
        let api_router = api::router(shared.clone());
        let md_router = metadata::router(shared.clone());
        let t1 = tokio::spawn(server::serve_api(api, shared.clone(), api_router));
        let t2 = tokio::spawn(async move {
            if let Err(e) = axum::serve(metadata, md_router).await {
                tracing::error!(error = %e, "metadata listener failed");
            }
        });
        Ok(Self {
            shared,
            api_addr,
            metadata_addr,
            tasks: vec![t1, t2],
            machines,
        })
    }

    /// Base URL of the DigitalOcean API, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Base URL of the droplet metadata service (paths start with `/metadata/v1/`).
    pub fn metadata_url(&self) -> String {
        format!("http://{}", self.metadata_addr)
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn metadata_addr(&self) -> SocketAddr {
        self.metadata_addr
    }

    fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        let mut w = self.shared.lock();
        f(&mut w)
    }

    /// Replace the injected faults. `nth` counts calls of the route made after this call.
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        self.with(|w| w.install_faults(rules));
    }

    pub fn clear_faults(&self) {
        self.set_faults(Vec::new());
    }

    /// Return once `count` responses have been held at `gate` by a
    /// [`Fault::Hold`] rule (at once if they already were). It has no deadline
    /// of its own: wrap it in `tokio::time::timeout` to fail a test that never
    /// gets there.
    pub async fn wait_held(&self, gate: &str, count: u64) {
        self.shared.gates.wait_held(gate, count).await;
    }

    /// Let the responses held at `gate` go, and stop holding there.
    pub fn release(&self, gate: &str) {
        self.shared.gates.release(gate);
    }

    /// Every gate of the `hold` fault and how many responses it held.
    pub fn gates(&self) -> BTreeMap<String, GateState> {
        self.shared.gates.snapshot()
    }

    /// Change the configuration in place (timings, limits, errored actions, ...).
    pub fn update_config(&self, f: impl FnOnce(&mut SimConfig)) {
        self.with(|w| f(&mut w.config));
    }

    /// Play the in-VM provisioning: it finishes with `plan.result` and the
    /// droplet powers itself off `plan.after_ms` from now.
    pub fn provision(&self, droplet_id: u64, plan: ProvisionPlan) -> Result<(), SimError> {
        if self.with(|w| w.provision(droplet_id, plan)) {
            Ok(())
        } else {
            Err(SimError::NoSuchDroplet(droplet_id))
        }
    }

    /// The result of a droplet's provisioning once it has powered off, if any.
    pub fn provision_result(&self, droplet_id: u64) -> Option<ProvisionResult> {
        self.with(|w| {
            w.droplets
                .get(&droplet_id)
                .and_then(|d| d.provision.as_ref())
                .filter(|p| p.finished)
                .map(|p| p.result)
        })
    }

    /// The user-data droplet `droplet_id` was created with (while it exists).
    pub fn user_data(&self, droplet_id: u64) -> Option<String> {
        self.with(|w| {
            w.droplets
                .get(&droplet_id)
                .and_then(|d| d.user_data.clone())
        })
    }

    /// What the VM player did for a droplet (see [`SimConfig::play_vm`]), also
    /// after the droplet was deleted.
    pub fn played(&self, droplet_id: u64) -> Option<vm::Played> {
        self.with(|w| w.played.get(&droplet_id).cloned())
    }

    /// Every droplet ever created (existing and deleted), for "exactly one droplet" checks.
    pub fn droplets_ever_created(&self) -> usize {
        self.with(|w| w.records.len())
    }

    /// What droplet `droplet_id` was created as (image, region, size, tags) and
    /// the projects it was assigned to, also after it was deleted.
    pub fn droplet_record(&self, droplet_id: u64) -> Option<DropletRecord> {
        self.with(|w| w.records.get(&droplet_id).cloned())
    }

    /// Make the metadata service answer as `droplet_id` (`None`: answer 404).
    pub fn act_as(&self, droplet_id: Option<u64>) {
        self.with(|w| w.metadata_droplet = droplet_id);
    }

    /// Add a private snapshot image (for image lookup and prune tests); returns its id.
    pub fn seed_private_image(&self, seed: SeedImage) -> u64 {
        self.with(|w| api::seed_image(w, seed))
    }

    /// Image `id` is in `region` too (what a finished `transfer` action leaves).
    pub fn add_image_region(&self, id: u64, region: &str) {
        self.with(|w| {
            if let Some(i) = w.images.get_mut(&id)
                && !i.regions.iter().any(|r| r == region)
            {
                i.regions.push(region.to_owned());
            }
        });
    }

    /// The request log: total, counts per route, and every request in order.
    pub fn requests(&self) -> RequestLog {
        self.with(|w| api::request_log(w))
    }

    /// Calls of one route key, e.g. `"POST /v2/droplets"`.
    pub fn count(&self, route: &str) -> u64 {
        self.with(|w| w.counts.get(route).copied().unwrap_or(0))
    }

    /// Forget the request log and the per-route counts (faults are re-based).
    pub fn reset_requests(&self) {
        self.with(|w| {
            w.log.clear();
            w.counts.clear();
            w.total_requests = 0;
            let rules = w.faults.iter().map(|f| f.rule.clone()).collect();
            w.install_faults(rules);
        });
    }

    /// Ids of the droplets that exist now.
    pub fn droplet_ids(&self) -> Vec<u64> {
        self.with(|w| w.droplets.keys().copied().collect())
    }

    /// Ids of droplets carrying `tag`.
    pub fn droplets_tagged(&self, tag: &str) -> Vec<u64> {
        self.with(|w| {
            w.droplets
                .values()
                .filter(|d| d.tags.iter().any(|t| t == tag))
                .map(|d| d.id)
                .collect()
        })
    }

    /// The same compact state as `GET /_sim/state`.
    pub fn state(&self) -> Value {
        self.with(|w| w.summary())
    }

    // ----- machine mode -----

    fn host(&self) -> Result<&Arc<machine::Host>, SimError> {
        self.machines.as_ref().ok_or(SimError::NoMachines)
    }

    /// Machine mode: a droplet's container, while the droplet exists.
    pub fn machine(&self, droplet_id: u64) -> Option<MachineInfo> {
        self.machines.as_ref()?.info(droplet_id)
    }

    /// Machine mode: an image's root filesystem tree (a snapshot's, or the base
    /// for a public slug); `None` once the image is deleted.
    pub fn image_tree(&self, image_id: u64) -> Option<std::path::PathBuf> {
        // Through the world lock: a snapshot's tree is claimed when the world
        // sees its action complete.
        self.with(|_| ());
        self.machines.as_ref()?.image_tree(image_id)
    }

    /// Machine mode: a running droplet's root directory as its container sees it.
    pub fn droplet_tree(&self, droplet_id: u64) -> Option<std::path::PathBuf> {
        self.machines.as_ref()?.droplet_root(droplet_id)
    }

    /// Machine mode: run a command inside a running droplet (`nsenter`).
    pub async fn exec(
        &self,
        droplet_id: u64,
        argv: &[&str],
    ) -> Result<std::process::Output, SimError> {
        Ok(self.host()?.exec(droplet_id, argv).await?)
    }

    /// Machine mode: a TCP connection made from inside a droplet's network
    /// namespace (to reach a service in the droplet, e.g. `127.0.0.1:22`).
    pub async fn connect_in_droplet(
        &self,
        droplet_id: u64,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, SimError> {
        Ok(self.host()?.connect(droplet_id, addr).await?)
    }

    /// Machine mode: wait until `probe` returns `Some`. It is asked now and after
    /// every change the containers make (boots, exits, snapshots, removals), so a
    /// test waits for an event, not for a time.
    pub async fn wait_until<T>(&self, mut probe: impl FnMut(&Sim) -> Option<T>) -> T {
        let Some(host) = &self.machines else {
            panic!("wait_until needs machine mode (SimConfig::machines)");
        };
        let mut changes = host.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(found) = probe(self) {
                return found;
            }
            if changes.changed().await.is_err() {
                panic!("the machine host stopped while waiting");
            }
        }
    }

    /// Machine mode: this run's directory (droplet disks, snapshot trees).
    pub fn machine_run_dir(&self) -> Option<&std::path::Path> {
        self.machines.as_ref().map(|m| m.run_dir())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Machine mode: no container, process or tree outlives the simulator.
        if let Some(host) = &self.machines {
            host.shutdown();
        }
    }
}
