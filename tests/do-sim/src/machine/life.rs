//! A droplet's life: its first boot (namespace, listeners), each boot of its
//! container and what the container reports, snapshots, teardown, and the
//! shutdown of the whole run.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::container::{Boot, EXIT_REBOOT, Event, Gate};
use super::netns::{DropletNet, METADATA_IP};
use super::{
    Host, MachineError, Power, PowerKind, complete, container, inside, metadata, rootfs, sweep,
};
use crate::state::{ActionStatus, DropletStatus};

impl Host {
    pub(super) async fn first_boot(self: Arc<Self>, id: u64) {
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
            Ok(()) => {
                if !self.boot(id) {
                    self.boot_failed(id);
                }
            }
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

    /// Start (or restart) a droplet's container. `false`: it cannot be started
    /// (destroyed, never prepared, its image tree gone) or already runs.
    pub(super) fn boot(self: &Arc<Self>, id: u64) -> bool {
        let mut inner = self.lock();
        let Some(image_id) = inner.machines.get(&id).map(|m| m.image_id) else {
            return false;
        };
        let image = inner.trees.get(&image_id).map(|t| t.path.clone());
        let Some(m) = inner.machines.get_mut(&id) else {
            return false;
        };
        if m.destroyed || m.has_container() {
            return false;
        }
        let (Some(net), Some(image)) = (m.net.clone(), image) else {
            m.error = Some("the droplet's network or image tree is gone".to_owned());
            return false;
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
        true
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
        if restart && !self.boot(id) {
            self.boot_failed(id);
        }
    }

    /// A boot could not be started: the action waiting for it errors, the droplet is off.
    pub(super) fn boot_failed(self: &Arc<Self>, id: u64) {
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

    pub(super) async fn snapshot(self: Arc<Self>, droplet_id: u64, action_id: u64, image: PathBuf) {
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

    pub(super) async fn teardown(self: Arc<Self>, id: u64) {
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

    pub(super) async fn remove_tree(&self, path: PathBuf) {
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
