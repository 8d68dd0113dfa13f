//! The simulated account: droplets, actions, images, projects, tags, ssh keys,
//! the rate-limit window and the request log.
//!
//! Time is evaluated lazily: every access first calls [`World::tick`], which moves
//! droplets and actions forward to "now" (`new` → `active` after the boot delay,
//! actions `in-progress` → `completed`/`errored` after their duration, provisioning
//! powering the droplet `off`). No background task is needed, and a paused world
//! stays exactly as the test left it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::catalog::{self, BASE_IMAGES};
use crate::config::{Fault, FaultRule, ProvisionPlan, ProvisionResult, SimConfig};

/// Status of a simulated droplet (the contract's enum, minus `archive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropletStatus {
    New,
    Active,
    Off,
}

impl DropletStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Active => "active",
            Self::Off => "off",
        }
    }
}

/// The in-VM provisioning as the simulator plays it.
#[derive(Debug, Clone, Serialize)]
pub struct Provision {
    pub result: ProvisionResult,
    /// Set when the droplet powered itself off.
    pub finished: bool,
    #[serde(skip)]
    pub off_at: Instant,
}

#[derive(Debug, Clone)]
pub struct Droplet {
    pub id: u64,
    pub name: String,
    pub size_slug: String,
    pub region_slug: String,
    pub image_id: u64,
    pub tags: Vec<String>,
    pub user_data: Option<String>,
    pub vpc_uuid: String,
    pub created: Instant,
    pub active_at: Instant,
    pub status: DropletStatus,
    pub snapshot_ids: Vec<u64>,
    pub provision: Option<Provision>,
    /// Plan to apply once active (from `auto_provision`).
    pub pending_plan: Option<ProvisionPlan>,
}

/// What a droplet was created as and where it went, kept after it is deleted
/// (a bake destroys its builder before a test can look at it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropletRecord {
    pub name: String,
    pub image_id: u64,
    pub region: String,
    pub size: String,
    pub tags: Vec<String>,
    /// Ids of the projects it was assigned to, in order.
    pub projects: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActionStatus {
    #[serde(rename = "in-progress")]
    InProgress,
    #[serde(rename = "completed")]
    Completed,
    #[serde(rename = "errored")]
    Errored,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in-progress",
            Self::Completed => "completed",
            Self::Errored => "errored",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Action {
    pub id: u64,
    pub kind: String,
    pub droplet_id: u64,
    pub region_slug: String,
    pub started: Instant,
    pub done_at: Instant,
    pub will_error: bool,
    pub status: ActionStatus,
    /// Snapshot name for `snapshot` actions.
    pub snapshot_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub id: u64,
    pub name: String,
    /// `base` or `snapshot`.
    pub kind: &'static str,
    pub distribution: String,
    pub slug: Option<String>,
    pub public: bool,
    pub regions: Vec<String>,
    pub created_at: OffsetDateTime,
    pub min_disk_size: u64,
    pub size_gigabytes: f64,
    pub description: String,
    pub tags: Vec<String>,
    /// The droplet a snapshot was taken from.
    pub source_droplet: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub is_default: bool,
    /// Resource URNs assigned to the project, with their assignment time.
    pub resources: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SshKey {
    pub id: u64,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
}

/// One line of the request log.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LoggedRequest {
    pub seq: u64,
    pub method: String,
    /// Route key: `"POST /v2/droplets"`, `"GET /v2/droplets/{id}"`, ...
    pub route: String,
    /// Path and query as sent.
    pub uri: String,
    /// HTTP status answered; 0 when the connection was dropped.
    pub status: u16,
    pub request_id: String,
    /// Name of the injected fault, if any.
    pub fault: Option<String>,
    /// The scoped token the request came with (its name), if it was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct InstalledFault {
    pub rule: FaultRule,
    /// Calls of the route seen before the rule was installed.
    pub base: u64,
}

/// The whole simulated account.
#[derive(Debug)]
pub struct World {
    pub config: SimConfig,
    start_instant: Instant,
    start_wall: OffsetDateTime,
    next_droplet_id: u64,
    next_action_id: u64,
    next_image_id: u64,
    next_key_id: u64,
    pub droplets: BTreeMap<u64, Droplet>,
    /// Every droplet ever created (existing and deleted).
    pub records: BTreeMap<u64, DropletRecord>,
    pub actions: BTreeMap<u64, Action>,
    pub images: BTreeMap<u64, Image>,
    /// Custom image imports (`POST /v2/images`), by image id.
    pub imports: BTreeMap<u64, crate::custom_images::Import>,
    pub projects: Vec<Project>,
    pub tags: BTreeMap<String, ()>,
    pub ssh_keys: BTreeMap<u64, SshKey>,
    pub faults: Vec<InstalledFault>,
    pub log: Vec<LoggedRequest>,
    pub counts: BTreeMap<String, u64>,
    pub total_requests: u64,
    pub rate_remaining: u64,
    pub rate_reset_at: Instant,
    /// The droplet the metadata listener answers for.
    pub metadata_droplet: Option<u64>,
    /// What the VM player did, per droplet (kept after the droplet is deleted).
    pub played: BTreeMap<u64, crate::vm::Played>,
    /// Machine mode's hooks (`SimConfig::machines`); `None` otherwise.
    pub machines: Option<std::sync::Arc<crate::machine::Host>>,
}

pub const DEFAULT_PROJECT_ID: &str = "6b5d6e0a-7c1b-4f0e-9a3e-2f6c1d0a0001";
pub const OTHER_PROJECT_ID: &str = "6b5d6e0a-7c1b-4f0e-9a3e-2f6c1d0a0002";
pub const OWNER_UUID: &str = "3c1d6f0b8a7e4d2c9b1a0f6e5d4c3b2a1f0e9d8c";
pub const ACCOUNT_UUID: &str = "b6fr89dbf6d9156cace5f3c78dc9851d957381ef";

impl World {
    pub fn new(config: SimConfig) -> Self {
        let now = Instant::now();
        let start_wall = OffsetDateTime::now_utc();
        let mut images = BTreeMap::new();
        for b in BASE_IMAGES {
            images.insert(
                b.id,
                Image {
                    id: b.id,
                    name: b.name.to_owned(),
                    kind: "base",
                    distribution: b.distribution.to_owned(),
                    slug: Some(b.slug.to_owned()),
                    public: true,
                    regions: catalog::REGIONS
                        .iter()
                        .filter(|r| r.available)
                        .map(|r| r.slug.to_owned())
                        .collect(),
                    created_at: start_wall - Duration::from_secs(86_400 * 90),
                    min_disk_size: 15,
                    size_gigabytes: 2.36,
                    description: String::new(),
                    tags: Vec::new(),
                    source_droplet: None,
                },
            );
        }
        let faults = config
            .faults
            .iter()
            .map(|rule| InstalledFault {
                rule: rule.clone(),
                base: 0,
            })
            .collect();
        let rate_remaining = config.ratelimit.remaining;
        let rate_reset_at = now + Duration::from_secs(config.ratelimit.reset_secs);
        Self {
            config,
            start_instant: now,
            start_wall,
            next_droplet_id: 400_000_001,
            next_action_id: 900_000_001,
            next_image_id: 150_000_001,
            next_key_id: 5_000_001,
            droplets: BTreeMap::new(),
            records: BTreeMap::new(),
            actions: BTreeMap::new(),
            images,
            imports: BTreeMap::new(),
            projects: vec![
                Project {
                    id: DEFAULT_PROJECT_ID.to_owned(),
                    name: "Default".to_owned(),
                    is_default: true,
                    resources: BTreeMap::new(),
                },
                Project {
                    id: OTHER_PROJECT_ID.to_owned(),
                    name: "image-builder".to_owned(),
                    is_default: false,
                    resources: BTreeMap::new(),
                },
            ],
            tags: BTreeMap::new(),
            ssh_keys: BTreeMap::new(),
            faults,
            log: Vec::new(),
            counts: BTreeMap::new(),
            total_requests: 0,
            rate_remaining,
            rate_reset_at,
            metadata_droplet: None,
            played: BTreeMap::new(),
            machines: None,
        }
    }

    /// Wall-clock time of an instant.
    pub fn wall(&self, at: Instant) -> OffsetDateTime {
        let offset = at.saturating_duration_since(self.start_instant);
        self.start_wall + offset
    }

    pub fn now_wall(&self) -> OffsetDateTime {
        self.wall(Instant::now())
    }

    // ----- time -----

    /// Move every droplet and action forward to `now`.
    pub fn tick(&mut self) {
        let now = Instant::now();
        // Droplets finish booting.
        let booted: Vec<u64> = self
            .droplets
            .values()
            .filter(|d| d.status == DropletStatus::New && now >= d.active_at)
            .map(|d| d.id)
            .collect();
        for id in booted {
            if let Some(d) = self.droplets.get_mut(&id) {
                d.status = DropletStatus::Active;
                if let Some(plan) = d.pending_plan.take() {
                    d.provision = Some(Provision {
                        result: plan.result,
                        finished: false,
                        off_at: d.active_at + Duration::from_millis(plan.after_ms),
                    });
                }
            }
        }
        // Actions finish, in the order they were due.
        let mut due: Vec<(Instant, u64)> = self
            .actions
            .values()
            .filter(|a| a.status == ActionStatus::InProgress && now >= a.done_at)
            .map(|a| (a.done_at, a.id))
            .collect();
        due.sort();
        for (_, id) in due {
            self.finish_action(id);
        }
        // Provisioning powers the droplet off (only when it is running and unlocked).
        let locked: BTreeSet<u64> = self
            .actions
            .values()
            .filter(|a| a.status == ActionStatus::InProgress && a.kind != "create")
            .map(|a| a.droplet_id)
            .collect();
        for d in self.droplets.values_mut() {
            if let Some(p) = d.provision.as_mut()
                && !p.finished
                && now >= p.off_at
                && d.status == DropletStatus::Active
                && !locked.contains(&d.id)
            {
                p.finished = true;
                d.status = DropletStatus::Off;
            }
        }
    }

    fn finish_action(&mut self, id: u64) {
        let Some(action) = self.actions.get_mut(&id) else {
            return;
        };
        action.status = if action.will_error {
            ActionStatus::Errored
        } else {
            ActionStatus::Completed
        };
        if action.status == ActionStatus::Errored {
            return;
        }
        let action = action.clone();
        let completed_wall = self.wall(action.done_at);
        let Some(droplet) = self.droplets.get_mut(&action.droplet_id) else {
            return;
        };
        match action.kind.as_str() {
            "shutdown" | "power_off" => droplet.status = DropletStatus::Off,
            "power_on" | "reboot" | "power_cycle" => droplet.status = DropletStatus::Active,
            "snapshot" => {
                let image_id = self.next_image_id;
                self.next_image_id += 1;
                droplet.snapshot_ids.push(image_id);
                let size_disk = catalog::size(&droplet.size_slug).map_or(25, |s| s.disk);
                let distribution = self
                    .images
                    .get(&droplet.image_id)
                    .map_or_else(|| "Unknown".to_owned(), |i| i.distribution.clone());
                let name = action.snapshot_name.clone().unwrap_or_else(|| {
                    format!("{}-{}", droplet.name, completed_wall.unix_timestamp())
                });
                self.images.insert(
                    image_id,
                    Image {
                        id: image_id,
                        name,
                        kind: "snapshot",
                        distribution,
                        slug: None,
                        public: false,
                        regions: vec![droplet.region_slug.clone()],
                        created_at: completed_wall,
                        min_disk_size: size_disk,
                        size_gigabytes: 1.52,
                        description: String::new(),
                        tags: Vec::new(),
                        source_droplet: Some(droplet.id),
                    },
                );
                // Machine mode: the snapshot's tree becomes this image's.
                if let Some(machines) = &self.machines {
                    machines.snapshot_image(action.id, image_id);
                }
            }
            _ => {}
        }
    }

    pub fn is_locked(&self, droplet_id: u64) -> bool {
        self.actions.values().any(|a| {
            a.droplet_id == droplet_id && a.status == ActionStatus::InProgress && a.kind != "create"
        })
    }

    // ----- ids -----

    pub fn alloc_droplet_id(&mut self) -> u64 {
        let id = self.next_droplet_id;
        self.next_droplet_id += 1;
        id
    }

    pub fn alloc_action_id(&mut self) -> u64 {
        let id = self.next_action_id;
        self.next_action_id += 1;
        id
    }

    pub fn alloc_image_id(&mut self) -> u64 {
        let id = self.next_image_id;
        self.next_image_id += 1;
        id
    }

    pub fn alloc_key_id(&mut self) -> u64 {
        let id = self.next_key_id;
        self.next_key_id += 1;
        id
    }

    // ----- actions -----

    /// Start an action on a droplet; returns its id.
    pub fn start_action(
        &mut self,
        droplet_id: u64,
        kind: &str,
        snapshot_name: Option<String>,
    ) -> u64 {
        let now = Instant::now();
        let id = self.alloc_action_id();
        let (region_slug, done_at) = match self.droplets.get(&droplet_id) {
            Some(d) if kind == "create" => (d.region_slug.clone(), d.active_at),
            Some(d) => (
                d.region_slug.clone(),
                now + Duration::from_millis(self.config.action_duration_ms(kind)),
            ),
            None => ("nyc3".to_owned(), now),
        };
        let will_error = self.config.errored_actions.iter().any(|k| k == kind);
        self.actions.insert(
            id,
            Action {
                id,
                kind: kind.to_owned(),
                droplet_id,
                region_slug,
                started: now,
                done_at,
                will_error,
                status: ActionStatus::InProgress,
                snapshot_name,
            },
        );
        id
    }

    // ----- faults and rate limits -----

    /// Count a call of `route` and return the fault that applies to it, if any.
    pub fn count_and_match_fault(&mut self, route: &str) -> Option<Fault> {
        self.total_requests += 1;
        let n = {
            let c = self.counts.entry(route.to_owned()).or_insert(0);
            *c += 1;
            *c
        };
        let total = self.total_requests;
        self.faults.iter().find_map(|f| {
            let seen = if f.rule.route == "*" {
                total
            } else if f.rule.route == route {
                n
            } else {
                return None;
            };
            let rel = seen.checked_sub(f.base)?;
            (rel >= f.rule.nth && rel < f.rule.nth + f.rule.times).then(|| f.rule.fault.clone())
        })
    }

    pub fn install_faults(&mut self, rules: Vec<FaultRule>) {
        self.faults = rules
            .into_iter()
            .map(|rule| {
                let base = if rule.route == "*" {
                    self.total_requests
                } else {
                    self.counts.get(&rule.route).copied().unwrap_or(0)
                };
                InstalledFault { rule, base }
            })
            .collect();
    }

    /// Consume one request from the rate-limit window. Returns
    /// `(limit, remaining, reset_epoch_secs, exhausted)`.
    pub fn consume_rate(&mut self) -> (u64, u64, i64, bool) {
        let now = Instant::now();
        if now >= self.rate_reset_at {
            self.rate_remaining = self.config.ratelimit.limit;
            self.rate_reset_at = now + Duration::from_secs(self.config.ratelimit.reset_secs);
        }
        let exhausted = self.rate_remaining == 0;
        self.rate_remaining = self.rate_remaining.saturating_sub(1);
        let reset_wall = self.wall(self.rate_reset_at);
        // Whole seconds, rounded up: the window has moved on by then.
        let reset = reset_wall.unix_timestamp() + i64::from(reset_wall.nanosecond() > 0);
        (
            self.config.ratelimit.limit,
            self.rate_remaining,
            reset,
            exhausted,
        )
    }

    pub fn seconds_until_reset(&self) -> u64 {
        let left = self.rate_reset_at.saturating_duration_since(Instant::now());
        left.as_secs() + u64::from(left.subsec_nanos() > 0)
    }

    // ----- provisioning -----

    pub fn provision(&mut self, droplet_id: u64, plan: ProvisionPlan) -> bool {
        let now = Instant::now();
        let Some(d) = self.droplets.get_mut(&droplet_id) else {
            return false;
        };
        d.provision = Some(Provision {
            result: plan.result,
            finished: false,
            off_at: now + Duration::from_millis(plan.after_ms),
        });
        true
    }

    // ----- JSON views -----

    pub fn image_json(&self, img: &Image) -> Value {
        let import = self.imports.get(&img.id);
        json!({
            "id": img.id,
            "name": img.name,
            "type": img.kind,
            "distribution": img.distribution,
            "slug": img.slug,
            "public": img.public,
            "regions": img.regions,
            "created_at": rfc3339(img.created_at),
            "min_disk_size": img.min_disk_size,
            "size_gigabytes": img.size_gigabytes,
            "description": img.description,
            "tags": img.tags,
            "status": import.map_or("available", |i| i.status),
            "error_message": import.map_or("", |i| i.error_message.as_str()),
        })
    }

    pub fn droplet_json(&self, d: &Droplet) -> Value {
        let size = catalog::size(&d.size_slug);
        let region = catalog::region(&d.region_slug);
        let image = self.images.get(&d.image_id).map(|i| self.image_json(i));
        let public = self
            .machines
            .as_ref()
            .and_then(|m| m.public_ip(d.id))
            .map(|ip| ip.to_string());
        let ip = public.as_ref().unwrap_or(&self.config.droplet_ipv4);
        json!({
            "id": d.id,
            "name": d.name,
            "memory": size.map_or(1024, |s| s.memory),
            "vcpus": size.map_or(1, |s| s.vcpus),
            "disk": size.map_or(25, |s| s.disk),
            "locked": self.is_locked(d.id),
            "status": d.status.as_str(),
            "kernel": null,
            "created_at": rfc3339(self.wall(d.created)),
            "features": ["monitoring", "droplet_agent"],
            "backup_ids": [],
            "next_backup_window": null,
            "snapshot_ids": d.snapshot_ids,
            "image": image.unwrap_or_else(|| json!({})),
            "volume_ids": [],
            "size": size.map_or_else(|| json!({}), catalog::size_json),
            "size_slug": d.size_slug,
            "networks": {
                "v4": if d.status == DropletStatus::New { json!([]) } else { json!([
                    {"ip_address": ip, "netmask": "255.255.240.0", "gateway": "127.0.0.1", "type": "public"}
                ]) },
                "v6": [],
            },
            "region": region.map_or_else(|| json!({}), catalog::region_json),
            "tags": d.tags,
            "vpc_uuid": d.vpc_uuid,
        })
    }

    pub fn action_json(&self, a: &Action) -> Value {
        let completed_at =
            (a.status != ActionStatus::InProgress).then(|| rfc3339(self.wall(a.done_at)));
        let region = catalog::region(&a.region_slug);
        json!({
            "id": a.id,
            "status": a.status.as_str(),
            "type": a.kind,
            "started_at": rfc3339(self.wall(a.started)),
            "completed_at": completed_at,
            "resource_id": a.droplet_id,
            "resource_type": "droplet",
            "region": region.map_or_else(|| json!({}), catalog::region_json),
            "region_slug": a.region_slug,
        })
    }

    /// Compact state for `GET /_sim/state` and for test assertions.
    pub fn summary(&self) -> Value {
        let droplets: Vec<Value> = self
            .droplets
            .values()
            .map(|d| {
                json!({
                    "id": d.id,
                    "name": d.name,
                    "status": d.status.as_str(),
                    "locked": self.is_locked(d.id),
                    "tags": d.tags,
                    "size": d.size_slug,
                    "region": d.region_slug,
                    "image": d.image_id,
                    "snapshot_ids": d.snapshot_ids,
                    "provision": d.provision,
                    "played": self.played.get(&d.id),
                    "created_at": rfc3339(self.wall(d.created)),
                })
            })
            .collect();
        let actions: Vec<Value> = self
            .actions
            .values()
            .map(|a| json!({"id": a.id, "type": a.kind, "droplet_id": a.droplet_id, "status": a.status.as_str()}))
            .collect();
        let images: Vec<Value> = self
            .images
            .values()
            .filter(|i| !i.public)
            .map(|i| json!({"id": i.id, "name": i.name, "tags": i.tags, "description": i.description, "source_droplet": i.source_droplet, "created_at": rfc3339(i.created_at)}))
            .collect();
        json!({
            "droplets": droplets,
            "deleted_droplets": self
                .records
                .keys()
                .filter(|id| !self.droplets.contains_key(id))
                .collect::<Vec<_>>(),
            "actions": actions,
            "images": images,
            "projects": self.projects,
            "tags": self.tags.keys().collect::<Vec<_>>(),
            "ssh_keys": self.ssh_keys.values().collect::<Vec<_>>(),
            "metadata_droplet": self.metadata_droplet,
            "machines": self.machines.as_ref().map(|m| m.summary()),
            "total_requests": self.total_requests,
            "requests_by_route": self.counts,
        })
    }
}

/// RFC 3339 with second precision and `Z`, as DigitalOcean prints timestamps.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
