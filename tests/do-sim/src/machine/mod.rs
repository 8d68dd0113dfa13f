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
//! API calls one hook (`hooks.rs`: [`Host::refuse_image`], [`Host::created`],
//! [`Host::action_started`], [`Host::destroyed`], [`Host::image_removed`],
//! [`Host::snapshot_image`]); `life.rs` boots containers, follows what they
//! report, makes snapshot trees and tears droplets and the run down. Actions and boots the containers drive are held
//! "in progress" (their due time far in the future) until the container reports,
//! then made due now, so the simulator's lazy clock (`World::tick`) finishes
//! them on the next look.
//!
//! Locks: the world lock is always taken before the machine lock, never the
//! other way round, and nothing that ticks the world runs under the machine lock
//! (`World::tick` calls [`Host::snapshot_image`]).

pub mod container;
mod hooks;
mod life;
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

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::Shared;
use crate::catalog::BASE_IMAGES;
use crate::config::SimConfig;
use crate::state::World;

use container::Gate;
use netns::DropletNet;
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
    /// Latest boot: from starting nspawn to the container's init running
    /// (milliseconds in JSON).
    #[serde(serialize_with = "millis")]
    pub up_after: Option<Duration>,
    /// Latest boot: from starting nspawn to systemd's `READY=1`.
    #[serde(serialize_with = "millis")]
    pub booted_after: Option<Duration>,
    /// Why the latest boot failed, if it did.
    pub error: Option<String>,
}

fn millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_millis()),
        None => s.serialize_none(),
    }
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
    /// The droplet's public address (`127.77.x.y`), where the host reaches its
    /// `127.0.0.1:22` (SSH), as a client reaches a droplet's public IPv4 on port 22.
    public: Option<(std::net::Ipv4Addr, tokio::task::AbortHandle)>,
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
    /// Public addresses handed out so far (the next is `127.77.0.0` + this + 1).
    public_ips: u32,
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

    /// A droplet's public IPv4 (`networks.v4`): its own loopback address, on whose port
    /// 22 the host reaches the droplet's SSH.
    pub fn public_ip(&self, droplet_id: u64) -> Option<std::net::Ipv4Addr> {
        self.lock()
            .machines
            .get(&droplet_id)
            .and_then(|m| m.public.as_ref().map(|p| p.0))
    }

    /// Listen on the droplet's public address, port 22, and carry each connection to
    /// `127.0.0.1:22` inside the droplet (whichever boot of it runs now).
    fn serve_public_ssh(
        self: &Arc<Self>,
        droplet_id: u64,
        n: u32,
    ) -> std::io::Result<(std::net::Ipv4Addr, tokio::task::AbortHandle)> {
        let [_, _, hi, lo] = n.to_be_bytes();
        let ip = std::net::Ipv4Addr::new(127, 77, hi, lo);
        let std_listener = std::net::TcpListener::bind((ip, 22))?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let host = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let inside: SocketAddr = ([127, 0, 0, 1], 22).into();
            while let Ok((mut outside, _)) = listener.accept().await {
                let Some(host) = host.upgrade() else { return };
                tokio::spawn(async move {
                    // A droplet that is off or not booted yet refuses, as a real one would.
                    if let Ok(mut stream) = host.connect(droplet_id, inside).await {
                        let _closed =
                            tokio::io::copy_bidirectional(&mut outside, &mut stream).await;
                    }
                });
            }
        });
        Ok((ip, task.abort_handle()))
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
}

/// Make an action due now (`errored` when `failed`); the next tick finishes it.
fn complete(w: &mut World, action_id: u64, failed: bool) {
    if let Some(a) = w.actions.get_mut(&action_id) {
        a.done_at = Instant::now();
        a.will_error |= failed;
    }
}
