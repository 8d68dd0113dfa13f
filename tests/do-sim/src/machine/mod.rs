//! Machine mode (config `machines`): every droplet is a real `systemd-nspawn -b`
//! container, booted from a real root filesystem.
//!
//! | DigitalOcean | here |
//! |---|---|
//! | public image `debian-12-x64` | a root filesystem directory ([`MachineConfig::base_rootfs`]) |
//! | droplet disk | an overlayfs: the image tree below, the droplet's `upper/` on top ([`rootfs`]) |
//! | droplet | a container (`container.rs`), `active` once its init runs |
//! | `snapshot` action | a new tree: the image tree (hard links) + the droplet's changes |
//! | droplet network | its own network namespace with only `lo` ([`netns`]) |
//! | `169.254.169.254` | a listener inside that namespace answering as that droplet |
//! | API, S3 (`forwards`) | listeners inside that namespace at the host's own addresses |
//!
//! The API contract does not change: the same routes answer the same shapes,
//! and only the timing comes from the containers. Each lifecycle point of the
//! API calls one hook here ([`Host::refuse_image`], [`Host::created`],
//! [`Host::action_started`], [`Host::destroyed`], [`Host::image_removed`],
//! [`Host::snapshot_image`]). Actions and boots the containers drive are held
//! "in progress" (their due time far in the future) until the container reports,
//! then made due now, so the simulator's lazy clock (`World::tick`) finishes
//! them on the next look.
//!
//! Locks: the world lock is always taken before the machine lock, never the
//! other way round, and nothing that ticks the world runs under the machine lock
//! (`World::tick` calls [`Host::snapshot_image`]).

pub mod container;
pub mod metadata;
pub mod netns;
pub mod rootfs;
pub mod sweep;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::api::Shared;
use crate::catalog::BASE_IMAGES;
use crate::config::SimConfig;
use crate::state::{ActionStatus, DropletStatus, World};

use container::{Boot, EXIT_REBOOT, Event, Gate};
use netns::{DropletNet, METADATA_IP};
pub use rootfs::CopyMode;
use sweep::RunDir;
pub use sweep::{Swept, sweep};

/// Default [`MachineConfig::state_dir`]: on disk (not a tmpfs `/tmp`), usually on
/// the same filesystem as `~/.cache`, so snapshot trees can hard-link the base.
pub const DEFAULT_STATE_DIR: &str = "/var/tmp/do-sim";

/// The machine mode switch (`SimConfig::machines`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Root filesystem the public images in `image_slugs` boot: the `rootfs` of
    /// `image-builder base build --json`. Never written to.
    pub base_rootfs: PathBuf,
    /// Public image slugs that boot `base_rootfs`; other public images are
    /// refused on create (422 "You specified an invalid image…").
    #[serde(default = "default_image_slugs")]
    pub image_slugs: Vec<String>,
    /// Loopback addresses (e.g. the S3 test server's `127.0.0.1:PORT`) that every
    /// droplet reaches at the same address: a listener inside the droplet's
    /// namespace forwards each connection to the address on the host, so URLs
    /// (presigned ones included) work unchanged inside the droplet. The API and
    /// the metadata listener are always reachable this way.
    #[serde(default)]
    pub forwards: Vec<SocketAddr>,
    /// Where run directories (droplet disks, snapshot trees) live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_image_slugs() -> Vec<String> {
    vec!["debian-12-x64".to_owned()]
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

impl MachineConfig {
    /// `debian-12-x64` boots `base_rootfs`; state under [`DEFAULT_STATE_DIR`].
    pub fn new(base_rootfs: impl Into<PathBuf>) -> Self {
        Self {
            base_rootfs: base_rootfs.into(),
            image_slugs: default_image_slugs(),
            forwards: Vec::new(),
            state_dir: default_state_dir(),
        }
    }

    /// Also make `addr` (loopback) reachable from inside every droplet.
    pub fn forward(mut self, addr: SocketAddr) -> Self {
        self.forwards.push(addr);
        self
    }
}

/// Why machine mode cannot start or do something.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("machine mode needs root (systemd-nspawn, network and mount namespaces); run as root")]
    NotRoot,
    #[error(
        "machine mode needs `{tool}`: install the Debian package {package} (.ci/setup.sh does)"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "base root filesystem {path}: {why}; use the `rootfs` printed by `image-builder base build --json`"
    )]
    BadRootfs { path: PathBuf, why: String },
    #[error("machines.image_slugs: {0} is not a public image of the simulator")]
    UnknownSlug(String),
    #[error("machines.forwards: {0} is not a loopback address; nothing routes out of a droplet")]
    NotLoopback(SocketAddr),
    #[error(
        "machines cannot be combined with {0}: in machine mode the container does what it plays"
    )]
    Exclusive(&'static str),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("droplet {0} has no running container")]
    NotRunning(u64),
}

impl MachineError {
    fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Where a droplet's container is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Power {
    /// The network namespace and listeners are being set up.
    Preparing,
    /// nspawn runs; the container's init is not up yet.
    Starting,
    /// The container's init runs.
    Running,
    /// No container.
    Off,
}

/// A droplet's machine as the tests see it ([`crate::Sim::machine`]).
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub droplet_id: u64,
    /// nspawn's machine name (`dosim-<pid>-<n>-<droplet id>`).
    pub machine: String,
    pub power: Power,
    /// Host pid of the container's init while it runs (for `nsenter`, `/proc/<pid>/root`).
    pub leader: Option<u32>,
    /// systemd in the container finished booting (cloud-init's final stage included).
    pub booted: bool,
    /// How many times the container was started.
    pub boots: u32,
    /// The image the droplet was created from.
    pub image_id: u64,
    /// The droplet's directory: `upper/` (its changes), `console.log`.
    pub dir: PathBuf,
    /// Latest boot: from starting nspawn to the container's init running.
    pub up_after: Option<Duration>,
    /// Latest boot: from starting nspawn to systemd's `READY=1`.
    pub booted_after: Option<Duration>,
    /// Why the latest boot failed, if it did.
    pub error: Option<String>,
}

/// What a power action waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PowerKind {
    Create,
    Shutdown,
    PowerOff,
    PowerOn,
    Reboot,
    PowerCycle,
}

impl PowerKind {
    fn from_action(kind: &str) -> Option<Self> {
        Some(match kind {
            "shutdown" => Self::Shutdown,
            "power_off" => Self::PowerOff,
            "power_on" => Self::PowerOn,
            "reboot" => Self::Reboot,
            "power_cycle" => Self::PowerCycle,
            _ => return None,
        })
    }

    /// Done once the container runs (again).
    fn completes_when_up(self) -> bool {
        matches!(
            self,
            Self::Create | Self::PowerOn | Self::Reboot | Self::PowerCycle
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    action_id: u64,
    kind: PowerKind,
}

#[derive(Debug)]
struct Machine {
    name: String,
    image_id: u64,
    dir: PathBuf,
    net: Option<Arc<DropletNet>>,
    /// The droplet's listeners (metadata, API, forwards); dropped = stopped.
    servers: JoinSet<()>,
    /// The notification reader of the current boot.
    notify: Option<tokio::task::AbortHandle>,
    power: Power,
    leader: Option<u32>,
    gate: Option<Arc<Mutex<Gate>>>,
    pending: Option<Pending>,
    boots: u32,
    booted: bool,
    launched: Option<Instant>,
    up_after: Option<Duration>,
    booted_after: Option<Duration>,
    error: Option<String>,
    destroyed: bool,
}

impl Machine {
    fn info(&self, droplet_id: u64) -> MachineInfo {
        MachineInfo {
            droplet_id,
            machine: self.name.clone(),
            power: self.power,
            leader: self.leader,
            booted: self.booted,
            boots: self.boots,
            image_id: self.image_id,
            dir: self.dir.clone(),
            up_after: self.up_after,
            booted_after: self.booted_after,
            error: self.error.clone(),
        }
    }

    /// A container exists (or is being started).
    fn has_container(&self) -> bool {
        self.gate.is_some()
    }
}

/// An image's root filesystem tree.
#[derive(Debug)]
struct Tree {
    path: PathBuf,
    /// Made by this run (a snapshot); the base is never removed.
    owned: bool,
    /// The image was deleted; the tree goes when its last droplet does.
    deleted: bool,
    /// Droplets whose disk sits on this tree.
    users: BTreeSet<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    machines: BTreeMap<u64, Machine>,
    trees: BTreeMap<u64, Tree>,
    /// Snapshot trees made but not yet claimed by their image: action id → tree.
    staged: BTreeMap<u64, PathBuf>,
}

#[derive(Debug)]
struct Links {
    shared: Weak<Shared>,
    api: SocketAddr,
    metadata: SocketAddr,
}

/// Machine mode's state and hooks; one per [`crate::Sim`].
pub struct Host {
    config: MachineConfig,
    run: RunDir,
    copy_mode: CopyMode,
    links: OnceLock<Links>,
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
    /// Boot, snapshot and removal threads, joined on shutdown.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Every async task of this host (boot followers, snapshots, teardowns).
    tasks: Mutex<JoinSet<()>>,
    /// Cleans up after this process if it ends without [`Host::shutdown`].
    reaper: Mutex<Option<sweep::Reaper>>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("run", &self.run.path)
            .field("copy_mode", &self.copy_mode)
            .finish_non_exhaustive()
    }
}

/// How long "held until the container reports" is: never, in practice.
const HELD: Duration = Duration::from_secs(10 * 365 * 86_400);

fn held() -> Instant {
    Instant::now() + HELD
}

/// Tools machine mode runs, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("systemd-nspawn", "systemd-container"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("kill", "procps"),
    ("cp", "coreutils"),
];

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn loopback_at(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// The address a droplet uses for one of the simulator's listeners: the same
/// one when it is loopback, else `127.0.0.1` with the same port.
fn inside(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_loopback() {
        addr
    } else {
        loopback_at(addr.port())
    }
}

impl Host {
    /// Check the host (root, tools, the base tree), sweep dead runs under the
    /// state directory and make this run's directory.
    pub fn new(config: MachineConfig, sim: &SimConfig) -> Result<Arc<Host>, MachineError> {
        if sim.play_vm.is_some() {
            return Err(MachineError::Exclusive("play_vm"));
        }
        if sim.auto_provision.is_some() {
            return Err(MachineError::Exclusive("auto_provision"));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(MachineError::NotRoot);
        }
        for (tool, package) in TOOLS {
            if find_tool(tool).is_none() {
                return Err(MachineError::MissingTool { tool, package });
            }
        }
        let base = &config.base_rootfs;
        let bad = |why: &str| MachineError::BadRootfs {
            path: base.clone(),
            why: why.to_owned(),
        };
        if !base.is_dir() {
            return Err(bad("not a directory"));
        }
        if !base.join("usr/lib/systemd/systemd").exists() && !base.join("sbin/init").exists() {
            return Err(bad("no systemd (usr/lib/systemd/systemd) to boot"));
        }
        let mut trees = BTreeMap::new();
        for slug in &config.image_slugs {
            let image = BASE_IMAGES
                .iter()
                .find(|b| b.slug == slug)
                .ok_or_else(|| MachineError::UnknownSlug(slug.clone()))?;
            trees.insert(
                image.id,
                Tree {
                    path: base.clone(),
                    owned: false,
                    deleted: false,
                    users: BTreeSet::new(),
                },
            );
        }
        if let Some(bad) = config.forwards.iter().find(|a| !a.ip().is_loopback()) {
            return Err(MachineError::NotLoopback(*bad));
        }
        let state = &config.state_dir;
        std::fs::create_dir_all(state)
            .map_err(|e| MachineError::io(format!("creating {}", state.display()), e))?;
        let swept = sweep(state)
            .map_err(|e| MachineError::io(format!("sweeping {}", state.display()), e))?;
        if !swept.runs.is_empty() {
            tracing::info!(runs = ?swept.runs, processes = swept.processes, "swept leftovers of dead runs");
        }
        let run = RunDir::create(state).map_err(|e| {
            MachineError::io(
                format!("creating a run directory in {}", state.display()),
                e,
            )
        })?;
        for sub in ["droplets", "images"] {
            let dir = run.path.join(sub);
            std::fs::create_dir(&dir)
                .map_err(|e| MachineError::io(format!("creating {}", dir.display()), e))?;
        }
        let copy_mode = CopyMode::probe(&run.path, base)
            .map_err(|e| MachineError::io("probing how to copy trees", e))?;
        let reaper = sweep::Reaper::start(&run)
            .map_err(|e| MachineError::io("starting the run's reaper (sh)", e))?;
        tracing::info!(run = %run.path.display(), ?copy_mode, "machine mode");
        Ok(Arc::new(Host {
            config,
            run,
            copy_mode,
            links: OnceLock::new(),
            inner: Mutex::new(Inner {
                trees,
                ..Inner::default()
            }),
            changes: watch::channel(0).0,
            threads: Mutex::new(Vec::new()),
            tasks: Mutex::new(JoinSet::new()),
            reaper: Mutex::new(Some(reaper)),
        }))
    }

    /// Called once the simulator's state and listeners exist.
    pub fn attach(&self, shared: &Arc<Shared>, api: SocketAddr, metadata: SocketAddr) {
        let _ = self.links.set(Links {
            shared: Arc::downgrade(shared),
            api,
            metadata,
        });
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shared(&self) -> Option<Arc<Shared>> {
        self.links.get().and_then(|l| l.shared.upgrade())
    }

    /// Wake everyone waiting for a change ([`Host::subscribe`]).
    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every change of a machine, a tree or an action the
    /// containers drive.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> tokio::task::AbortHandle {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task)
    }

    fn keep_thread(&self, handle: std::thread::JoinHandle<()>) {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
    }

    /// Run blocking work on a thread joined at shutdown; await its result.
    async fn blocking<T: Send + 'static>(
        &self,
        name: &str,
        work: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = std::thread::Builder::new()
            .name(format!("do-sim-{name}"))
            .spawn(move || {
                let _ = tx.send(work());
            })?;
        self.keep_thread(handle);
        rx.await
            .map_err(|_| io::Error::other(format!("{name} thread ended without a result")))?
    }

    // ----- paths -----

    fn droplet_dir(&self, id: u64) -> PathBuf {
        self.run.path.join("droplets").join(id.to_string())
    }

    /// This run's directory.
    pub fn run_dir(&self) -> &Path {
        &self.run.path
    }

    /// How snapshot trees copy their image (see [`CopyMode`]).
    pub fn copy_mode(&self) -> CopyMode {
        self.copy_mode
    }

    // ----- hooks -----

    /// Hook (`POST /v2/droplets`): refuse an image without a root filesystem.
    pub fn refuse_image(&self, image_id: u64) -> Option<&'static str> {
        match self.lock().trees.get(&image_id) {
            Some(tree) if !tree.deleted => None,
            _ => Some("You specified an invalid image for Droplet creation."),
        }
    }

    /// Hook (`POST /v2/droplets`): droplets were created, as `(droplet id, create
    /// action id)`. They stay `new` and their create actions in progress until
    /// their containers run.
    pub fn created(self: &Arc<Self>, w: &mut World, created: &[(u64, u64)]) {
        for &(id, action_id) in created {
            let Some(droplet) = w.droplets.get_mut(&id) else {
                continue;
            };
            droplet.active_at = held();
            let image_id = droplet.image_id;
            if let Some(action) = w.actions.get_mut(&action_id) {
                action.done_at = held();
            }
            let mut inner = self.lock();
            if let Some(tree) = inner.trees.get_mut(&image_id) {
                tree.users.insert(id);
            }
            inner.machines.insert(
                id,
                Machine {
                    name: self.run.machine_name(id),
                    image_id,
                    dir: self.droplet_dir(id),
                    net: None,
                    servers: JoinSet::new(),
                    notify: None,
                    power: Power::Preparing,
                    leader: None,
                    gate: None,
                    pending: Some(Pending {
                        action_id,
                        kind: PowerKind::Create,
                    }),
                    boots: 0,
                    booted: false,
                    launched: None,
                    up_after: None,
                    booted_after: None,
                    error: None,
                    destroyed: false,
                },
            );
            drop(inner);
            self.spawn(self.clone().first_boot(id));
        }
        self.bump();
    }

    /// Hook (`POST /v2/droplets/{id}/actions`): an action started. Power actions
    /// and snapshots are done by the container and finish when it reports;
    /// actions configured to error change nothing and keep their configured timing.
    pub fn action_started(self: &Arc<Self>, w: &mut World, action_id: u64) {
        let Some(action) = w.actions.get(&action_id).cloned() else {
            return;
        };
        if action.will_error {
            return;
        }
        let id = action.droplet_id;
        let mut inner = self.lock();
        let Some(image_id) = inner.machines.get(&id).map(|m| m.image_id) else {
            return;
        };
        let image = inner.trees.get(&image_id).map(|t| t.path.clone());
        let Some(m) = inner.machines.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        let mut done_at = held();
        if action.kind == "snapshot" {
            let Some(image) = image else {
                return;
            };
            drop(inner);
            if let Some(a) = w.actions.get_mut(&action_id) {
                a.done_at = done_at;
            }
            self.spawn(self.clone().snapshot(id, action_id, image));
            return;
        }
        let Some(kind) = PowerKind::from_action(&action.kind) else {
            return;
        };
        let running = m.has_container();
        let generation = m.boots;
        let mut boot = false;
        let mut orderly = None;
        let pending = match (kind, running) {
            (PowerKind::Shutdown | PowerKind::Reboot, true) => {
                orderly = Some(kind);
                true
            }
            (PowerKind::PowerOff | PowerKind::PowerCycle, true) => {
                // Kill the container's init; nspawn exits and cleans up after itself.
                let killed = match m.leader {
                    Some(leader) => container::signal(leader, Signal::SIGKILL),
                    None => {
                        sweep::kill_marked(&sweep::needle(&self.run.name, Some(id)));
                        Ok(())
                    }
                };
                if let Err(e) = killed {
                    tracing::warn!(droplet = id, error = %e, "killing the container failed");
                }
                true
            }
            (PowerKind::PowerOn | PowerKind::Reboot | PowerKind::PowerCycle, false) => {
                boot = true;
                true
            }
            // Already where the action would take it.
            (PowerKind::Shutdown | PowerKind::PowerOff, false) | (PowerKind::PowerOn, true) => {
                false
            }
            (PowerKind::Create, _) => false,
        };
        if pending {
            m.pending = Some(Pending { action_id, kind });
        } else {
            done_at = now;
        }
        drop(inner);
        if let Some(a) = w.actions.get_mut(&action_id) {
            a.done_at = done_at;
        }
        if boot {
            self.boot(id);
        }
        if let Some(kind) = orderly {
            self.spawn(self.clone().ask(id, generation, kind));
        }
        self.bump();
    }

    /// Ask a container to shut down or reboot, as the power button or
    /// ctrl-alt-del would: once its systemd handles the signal (see
    /// [`container::takes_signal`]); if the container ends first, nothing is sent.
    async fn ask(self: Arc<Self>, id: u64, generation: u32, kind: PowerKind) {
        loop {
            let leader = match self.lock().machines.get(&id) {
                Some(m) if m.boots == generation && m.has_container() => m.leader,
                _ => return,
            };
            let sent = match (kind, leader) {
                // systemd powers off; nspawn then exits 0.
                (PowerKind::Shutdown, Some(leader))
                    if container::takes_signal(leader, container::POWEROFF_SIGNAL) =>
                {
                    Some(container::send_numbered(leader, container::POWEROFF_SIGNAL))
                }
                // systemd takes SIGINT as ctrl-alt-del: a reboot; nspawn exits 133.
                (PowerKind::Reboot, Some(leader))
                    if container::takes_signal(leader, Signal::SIGINT as u32) =>
                {
                    Some(container::signal(leader, Signal::SIGINT))
                }
                _ => None,
            };
            if let Some(result) = sent {
                if let Err(e) = result {
                    tracing::warn!(droplet = id, error = %e, "signalling the container failed");
                }
                return;
            }
            // Early in a boot: systemd sets its handlers up within moments.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Hook (`World::tick`, a snapshot action completed and its image exists):
    /// the staged tree becomes the image's tree.
    pub fn snapshot_image(&self, action_id: u64, image_id: u64) {
        let mut inner = self.lock();
        let Some(staged) = inner.staged.remove(&action_id) else {
            return;
        };
        let path = self.run.path.join("images").join(image_id.to_string());
        match std::fs::rename(&staged, &path) {
            Ok(()) => {
                inner.trees.insert(
                    image_id,
                    Tree {
                        path,
                        owned: true,
                        deleted: false,
                        users: BTreeSet::new(),
                    },
                );
            }
            Err(e) => {
                tracing::error!(image_id, error = %e, staged = %staged.display(), "cannot keep a snapshot tree");
            }
        }
        drop(inner);
        self.bump();
    }

    /// Hook (droplet deleted): its actions in flight end `errored`, its container
    /// is killed, its directory and listeners removed.
    pub fn destroyed(self: &Arc<Self>, w: &mut World, id: u64) {
        let now = Instant::now();
        for a in w
            .actions
            .values_mut()
            .filter(|a| a.droplet_id == id && a.status == ActionStatus::InProgress)
        {
            a.will_error = true;
            a.done_at = now;
        }
        let mut inner = self.lock();
        let Some(m) = inner.machines.get_mut(&id) else {
            return;
        };
        m.destroyed = true;
        m.pending = None;
        if let Some(gate) = &m.gate {
            gate.lock().unwrap_or_else(|e| e.into_inner()).cancelled = true;
        }
        drop(inner);
        self.spawn(self.clone().teardown(id));
    }

    /// Hook (image or snapshot deleted): its tree goes, once no droplet's disk
    /// sits on it any more.
    pub fn image_removed(self: &Arc<Self>, image_id: u64) {
        let mut inner = self.lock();
        let Some(tree) = inner.trees.get_mut(&image_id) else {
            return;
        };
        tree.deleted = true;
        if !tree.users.is_empty() {
            return;
        }
        if let Some(tree) = inner.trees.remove(&image_id).filter(|t| t.owned) {
            drop(inner);
            let host = self.clone();
            self.spawn(async move {
                host.remove_tree(tree.path).await;
                host.bump();
            });
        }
    }

    /// Hook (`/_sim/state`): the machines, the trees and the copy mode.
    pub fn summary(&self) -> Value {
        let inner = self.lock();
        let machines: Vec<MachineInfo> = inner.machines.iter().map(|(id, m)| m.info(*id)).collect();
        let trees: BTreeMap<u64, &Path> = inner
            .trees
            .iter()
            .filter(|(_, t)| !t.deleted)
            .map(|(id, t)| (*id, t.path.as_path()))
            .collect();
        json!({
            "run_dir": self.run.path,
            "copy_mode": self.copy_mode,
            "machines": machines,
            "image_trees": trees,
        })
    }

    // ----- accessors -----

    /// A droplet's machine, while the droplet exists (and until its teardown is done).
    pub fn info(&self, droplet_id: u64) -> Option<MachineInfo> {
        self.lock()
            .machines
            .get(&droplet_id)
            .map(|m| m.info(droplet_id))
    }

    /// An image's root filesystem tree (the base for public slugs).
    pub fn image_tree(&self, image_id: u64) -> Option<PathBuf> {
        self.lock()
            .trees
            .get(&image_id)
            .filter(|t| !t.deleted)
            .map(|t| t.path.clone())
    }

    /// A running droplet's root as the container sees it (`/proc/<init>/root`).
    pub fn droplet_root(&self, droplet_id: u64) -> Option<PathBuf> {
        self.info(droplet_id)
            .and_then(|m| m.leader)
            .map(|pid| PathBuf::from(format!("/proc/{pid}/root")))
    }

    /// Run a command inside a running droplet (see [`container::exec`]).
    pub async fn exec(
        &self,
        droplet_id: u64,
        argv: &[&str],
    ) -> Result<std::process::Output, MachineError> {
        let leader = self
            .info(droplet_id)
            .and_then(|m| m.leader)
            .ok_or(MachineError::NotRunning(droplet_id))?;
        container::exec(leader, argv)
            .await
            .map_err(|e| MachineError::io(format!("running {argv:?} in droplet {droplet_id}"), e))
    }

    /// A TCP connection made from inside a droplet's network namespace (e.g. to
    /// its sshd on `127.0.0.1:22`).
    pub async fn connect(
        &self,
        droplet_id: u64,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, MachineError> {
        let net = self
            .lock()
            .machines
            .get(&droplet_id)
            .and_then(|m| m.net.clone())
            .ok_or(MachineError::NotRunning(droplet_id))?;
        let what = format!("connecting to {addr} in droplet {droplet_id}");
        let stream = self
            .blocking("connect", move || net.connect(addr))
            .await
            .map_err(|e| MachineError::io(what.clone(), e))?;
        tokio::net::TcpStream::from_std(stream).map_err(|e| MachineError::io(what, e))
    }

    // ----- a droplet's life -----

    async fn first_boot(self: Arc<Self>, id: u64) {
        let prepared = self.prepare(id).await;
        {
            let mut inner = self.lock();
            if let Some(m) = inner.machines.get_mut(&id) {
                m.power = Power::Off;
                if let Err(e) = &prepared {
                    m.error = Some(e.to_string());
                }
            }
        }
        match prepared {
            Ok(()) => self.boot(id),
            Err(e) => {
                tracing::error!(droplet = id, error = %e, "cannot prepare the droplet's machine");
                self.boot_failed(id);
            }
        }
        self.bump();
    }

    /// The droplet's directories, network namespace and listeners.
    async fn prepare(self: &Arc<Self>, id: u64) -> Result<(), MachineError> {
        let dir = self.droplet_dir(id);
        for sub in ["upper", "work", "root"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| MachineError::io(format!("creating {}", d.display()), e))?;
        }
        let links = self
            .links
            .get()
            .ok_or_else(|| MachineError::io("machine mode", io::Error::other("not attached")))?;
        let net = Arc::new(
            self.blocking("netns", DropletNet::create)
                .await
                .map_err(|e| MachineError::io("creating the droplet's network namespace", e))?,
        );
        let metadata_80 = SocketAddr::new(IpAddr::V4(METADATA_IP), 80);
        let mut addrs = vec![metadata_80, inside(links.metadata), inside(links.api)];
        addrs.extend(self.config.forwards.iter().copied());
        let bind_net = net.clone();
        let bind_addrs = addrs.clone();
        let listeners = self
            .blocking("bind", move || bind_net.bind(bind_addrs))
            .await
            .map_err(|e| MachineError::io("binding the droplet's listeners", e))?;
        let shared = self
            .shared()
            .ok_or_else(|| MachineError::io("machine mode", io::Error::other("simulator gone")))?;
        let mut servers = JoinSet::new();
        for (i, (listener, addr)) in listeners.into_iter().zip(addrs).enumerate() {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| MachineError::io(format!("serving {addr} in a droplet"), e))?;
            match i {
                0 | 1 => {
                    let router = metadata::router(shared.clone(), id);
                    servers.spawn(async move {
                        if let Err(e) = axum::serve(listener, router).await {
                            tracing::warn!(error = %e, "a droplet's metadata listener failed");
                        }
                    });
                }
                2 => {
                    let router = crate::api::router(shared.clone());
                    servers.spawn(crate::server::serve_api(listener, shared.clone(), router));
                }
                _ => {
                    servers.spawn(forward(listener, addr));
                }
            }
        }
        let mut inner = self.lock();
        match inner.machines.get_mut(&id) {
            Some(m) if !m.destroyed => {
                m.net = Some(net);
                m.servers = servers;
                Ok(())
            }
            // Destroyed meanwhile: the listeners stop here, the teardown does the rest.
            _ => Ok(()),
        }
    }

    /// Start (or restart) a droplet's container.
    fn boot(self: &Arc<Self>, id: u64) {
        let mut inner = self.lock();
        let Some(m) = inner.machines.get_mut(&id) else {
            return;
        };
        if m.destroyed || m.has_container() {
            return;
        }
        let Some(net) = m.net.clone() else {
            return;
        };
        let image_id = m.image_id;
        let image = inner.trees.get(&image_id).map(|t| t.path.clone());
        let Some(m) = inner.machines.get_mut(&id) else {
            return;
        };
        let Some(image) = image else {
            m.error = Some("the image tree is gone".to_owned());
            return;
        };
        m.boots += 1;
        m.power = Power::Starting;
        m.leader = None;
        m.booted = false;
        m.launched = Some(Instant::now());
        m.up_after = None;
        m.booted_after = None;
        m.error = None;
        let generation = m.boots;
        let gate = Arc::new(Mutex::new(Gate::default()));
        m.gate = Some(gate.clone());
        let dir = m.dir.clone();
        let machine = m.name.clone();
        drop(inner);

        let (tx, rx) = mpsc::unbounded_channel();
        let notify = dir.join("notify");
        let _ = std::fs::remove_file(&notify);
        let started = tokio::net::UnixDatagram::bind(&notify).and_then(|socket| {
            let reader = self.spawn(container::read_notifications(socket, tx.clone()));
            if let Some(m) = self.lock().machines.get_mut(&id) {
                m.notify = Some(reader);
            }
            let boot = Boot {
                machine,
                dir,
                image,
                notify,
                marker: self.run.marker(id),
                net: net.handle()?,
            };
            container::launch(boot, gate, tx.clone())
        });
        match started {
            Ok(thread) => self.keep_thread(thread),
            Err(e) => {
                let _ = tx.send(Event::Failed(format!("starting the container: {e}")));
            }
        }
        self.spawn(self.clone().follow(id, generation, rx));
    }

    async fn follow(
        self: Arc<Self>,
        id: u64,
        generation: u32,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        while let Some(event) = events.recv().await {
            let last = matches!(event, Event::Exited(_) | Event::Failed(_));
            self.on_event(id, generation, event);
            if last {
                break;
            }
        }
    }

    fn on_event(self: &Arc<Self>, id: u64, generation: u32, event: Event) {
        let Some(shared) = self.shared() else {
            return;
        };
        let mut restart = false;
        {
            let mut w = shared.lock();
            let mut inner = self.lock();
            let Some(m) = inner.machines.get_mut(&id) else {
                return;
            };
            if m.boots != generation || !m.has_container() {
                return;
            }
            match event {
                Event::Leader(pid) => {
                    m.leader = Some(pid);
                    m.power = Power::Running;
                    m.up_after = m.launched.map(|t| t.elapsed());
                    if !m.destroyed {
                        let now = Instant::now();
                        if let Some(d) = w.droplets.get_mut(&id) {
                            d.status = DropletStatus::Active;
                            d.active_at = d.active_at.min(now);
                        }
                        if let Some(p) = m.pending.filter(|p| p.kind.completes_when_up()) {
                            m.pending = None;
                            complete(&mut w, p.action_id, false);
                        }
                    }
                }
                Event::Booted => {
                    m.booted = true;
                    m.booted_after = m.launched.map(|t| t.elapsed());
                }
                Event::Exited(_) | Event::Failed(_) => {
                    let code = match &event {
                        Event::Exited(code) => *code,
                        _ => None,
                    };
                    if let Event::Failed(reason) = &event {
                        tracing::error!(droplet = id, %reason, "the container could not start");
                        m.error = Some(reason.clone());
                    }
                    let was_up = m.leader.is_some();
                    m.leader = None;
                    m.power = Power::Off;
                    m.gate = None;
                    m.booted = false;
                    if let Some(reader) = m.notify.take() {
                        reader.abort();
                    }
                    sweep::remove_nspawn_leftovers(&m.name, &m.dir);
                    if !m.destroyed {
                        let pending = m.pending.take();
                        let mut off = false;
                        match pending {
                            Some(p)
                                if matches!(p.kind, PowerKind::Shutdown | PowerKind::PowerOff) =>
                            {
                                off = true;
                                complete(&mut w, p.action_id, false);
                            }
                            Some(p)
                                if matches!(p.kind, PowerKind::Reboot | PowerKind::PowerCycle)
                                    && was_up =>
                            {
                                m.pending = pending;
                                restart = true;
                            }
                            // Died before it was up.
                            Some(p) => {
                                off = true;
                                if m.error.is_none() {
                                    m.error = Some(format!(
                                        "the container ended (exit status {code:?}) before its init ran; see {}",
                                        m.dir.join("console.log").display()
                                    ));
                                }
                                complete(&mut w, p.action_id, true);
                            }
                            // The guest rebooted itself.
                            None if code == Some(EXIT_REBOOT) => restart = true,
                            // The guest powered itself off, or died.
                            None => off = true,
                        }
                        if off && let Some(d) = w.droplets.get_mut(&id) {
                            d.status = DropletStatus::Off;
                        }
                    }
                }
            }
        }
        self.bump();
        if restart {
            self.boot(id);
        }
    }

    /// The first boot could not even be prepared: the create action errors.
    fn boot_failed(self: &Arc<Self>, id: u64) {
        let Some(shared) = self.shared() else {
            return;
        };
        let mut w = shared.lock();
        let mut inner = self.lock();
        let Some(m) = inner.machines.get_mut(&id) else {
            return;
        };
        if let Some(p) = m.pending.take() {
            complete(&mut w, p.action_id, true);
        }
        if let Some(d) = w.droplets.get_mut(&id) {
            d.status = DropletStatus::Off;
        }
    }

    async fn snapshot(self: Arc<Self>, droplet_id: u64, action_id: u64, image: PathBuf) {
        let upper = self.droplet_dir(droplet_id).join("upper");
        let staging = self
            .run
            .path
            .join("images")
            .join(format!(".staging-{action_id}"));
        let mode = self.copy_mode;
        let out = staging.clone();
        let started = Instant::now();
        let result = self
            .blocking("snapshot", move || {
                let r = rootfs::flatten(mode, &image, &upper, &out);
                if r.is_err() {
                    let _ = rootfs::remove_any(&out);
                }
                r
            })
            .await;
        let Some(shared) = self.shared() else {
            return;
        };
        {
            let mut w = shared.lock();
            let wanted = w
                .actions
                .get(&action_id)
                .is_some_and(|a| a.status == ActionStatus::InProgress && !a.will_error);
            match result {
                Ok(()) if wanted => {
                    tracing::info!(droplet_id, action_id, took = ?started.elapsed(), "snapshot tree made");
                    self.lock().staged.insert(action_id, staging);
                    complete(&mut w, action_id, false);
                }
                Ok(()) => {
                    // The droplet was destroyed meanwhile; nobody claims the tree.
                    let _ = rootfs::remove_any(&staging);
                }
                Err(e) => {
                    tracing::error!(droplet_id, action_id, error = %e, "snapshot failed");
                    complete(&mut w, action_id, true);
                }
            }
        }
        self.bump();
    }

    async fn teardown(self: Arc<Self>, id: u64) {
        let needle = sweep::needle(&self.run.name, Some(id));
        let mut changes = self.subscribe();
        loop {
            changes.borrow_and_update();
            let (quiet, leader) = match self.lock().machines.get(&id) {
                Some(m) => (m.power != Power::Preparing && !m.has_container(), m.leader),
                None => return,
            };
            if quiet {
                break;
            }
            match leader {
                // nspawn sees its container die, exits and cleans up after itself.
                Some(pid) => {
                    let _ = container::signal(pid, Signal::SIGKILL);
                }
                None => {
                    let needle = needle.clone();
                    let _ = self
                        .blocking("kill", move || Ok(sweep::kill_marked(&needle).len()))
                        .await;
                }
            }
            // The exit is reported as a change; look again now and then in case a
            // starting nspawn slipped past the kill.
            let _ = tokio::time::timeout(Duration::from_millis(250), changes.changed()).await;
        }
        // A container whose nspawn died before it reported the leader.
        let orphans = needle.clone();
        let _ = self
            .blocking("kill", move || {
                Ok(sweep::kill_until_gone(&orphans, Duration::from_secs(10)))
            })
            .await;
        let dir = self.droplet_dir(id);
        self.remove_tree(dir).await;
        let freed = {
            let mut inner = self.lock();
            let image_id = inner.machines.remove(&id).map(|m| m.image_id);
            let mut freed = None;
            if let Some(image_id) = image_id
                && let Some(tree) = inner.trees.get_mut(&image_id)
            {
                tree.users.remove(&id);
                if tree.deleted && tree.users.is_empty() {
                    freed = inner.trees.remove(&image_id).filter(|t| t.owned);
                }
            }
            freed
        };
        if let Some(tree) = freed {
            self.remove_tree(tree.path).await;
        }
        self.bump();
    }

    async fn remove_tree(&self, path: PathBuf) {
        let shown = path.display().to_string();
        if let Err(e) = self.blocking("rm", move || rootfs::remove_any(&path)).await {
            tracing::warn!(path = %shown, error = %e, "cannot remove a tree");
        }
    }

    /// Stop every container of this run and remove the run directory. Blocking;
    /// called when the simulator is dropped.
    pub fn shutdown(&self) {
        let machines = {
            let mut inner = self.lock();
            for m in inner.machines.values_mut() {
                m.destroyed = true;
                if let Some(gate) = &m.gate {
                    gate.lock().unwrap_or_else(|e| e.into_inner()).cancelled = true;
                }
            }
            std::mem::take(&mut inner.machines)
        };
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
        // Kill each container's init: its nspawn reaps it, cleans up after itself
        // and exits, which ends the boot thread waiting for it.
        for m in machines.values() {
            if let Some(leader) = m.leader {
                let _ = container::signal(leader, Signal::SIGKILL);
            }
        }
        drop(machines);
        let started = Instant::now();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Whatever is left (an nspawn still starting, a container whose nspawn died).
        let needle = sweep::needle(&self.run.name, None);
        if !sweep::kill_until_gone(&needle, Duration::from_secs(20)) {
            tracing::error!(run = %self.run.name, "containers survive SIGKILL; the next sweep retries");
        }
        for t in threads {
            let _ = t.join();
        }
        let stopped = started.elapsed();
        sweep::remove_run_leftovers(&self.run.path, &self.run.name);
        if let Err(e) = std::fs::remove_dir_all(&self.run.path) {
            tracing::error!(run = %self.run.path.display(), error = %e, "cannot remove the run directory; the next sweep retries");
        }
        if let Some(reaper) = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            reaper.finish();
        }
        tracing::debug!(run = %self.run.name, ?stopped, total = ?started.elapsed(), "machine mode shut down");
    }
}

/// Make an action due now (`errored` when `failed`); the next tick finishes it.
fn complete(w: &mut World, action_id: u64, failed: bool) {
    if let Some(a) = w.actions.get_mut(&action_id) {
        a.done_at = Instant::now();
        a.will_error |= failed;
    }
}

/// Forward every connection accepted inside a droplet to `to` on the host.
async fn forward(listener: tokio::net::TcpListener, to: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, %to, "accepting a forwarded connection failed");
                return;
            }
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            match tokio::net::TcpStream::connect(to).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::debug!(error = %e, %to, "forward target refused"),
            }
        });
    }
}
