//! The hooks: one call from each lifecycle point of the API (see the module
//! docs of [`super`]). They run under the world lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{
    Host, Machine, MachineInfo, Pending, Power, PowerKind, Tree, complete, container, held, sweep,
};
use crate::state::{ActionStatus, World};

impl Host {
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
                    public: None,
                },
            );
            drop(inner);
            // The next free public address: another simulator on this host may hold some.
            loop {
                let n = {
                    let mut inner = self.lock();
                    inner.public_ips += 1;
                    inner.public_ips
                };
                match self.serve_public_ssh(id, n) {
                    Ok(public) => {
                        if let Some(m) = self.lock().machines.get_mut(&id) {
                            m.public = Some(public);
                        }
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && n < 65_000 => continue,
                    Err(e) => {
                        tracing::warn!(droplet = id, error = %e, "no public SSH address");
                        break;
                    }
                }
            }
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
        if boot && !self.boot(id) {
            if let Some(m) = self.lock().machines.get_mut(&id) {
                m.pending = None;
            }
            complete(w, action_id, true);
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
        if let Some((_, listener)) = m.public.take() {
            listener.abort();
        }
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
}
