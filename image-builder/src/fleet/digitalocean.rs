//! Fleets on DigitalOcean: `up`, `ls`, `down`, `reap`.
//!
//! `up` is idempotent: the fleet's workers are the droplets tagged
//! `image-builder-fleet-<name>` and named `<name>-<n>`; only the missing names are
//! created, in POSTs of at most 10 `names[]` reconciled by that tag (a retried POST never
//! makes a second worker of one name). Before anything billable: the token works, the
//! droplet limit leaves room, the size is offered in the region, the image is there, the
//! caps of the user's config allow it, and the spending is shown and confirmed.
//!
//! Every worker of one POST gets the same user-data, so the workers of one batch share
//! the host key pinned for that batch (each worker's name is pinned to it separately).
//! Anyone who can read one worker's user-data can read that key anyway (the metadata
//! service serves it to every process on the droplet); no one outside the batch can.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use agent_config::Provider;
use agent_status::{Stage, StatusReport, TimerStatus};
use do_api::{Client, Droplet, DropletCreate, DropletStatus, ImageSpec, Poll, Refusal, Size};
use serde::Serialize;

use super::keys;
use super::policy::UserConfig;
use super::progress::Progress;
use super::readiness::{Readiness, Retries};
use super::ssh::{Pinned, agent_status};
use super::state::{FleetBackend, FleetState, STATE_VERSION, StateDir, WorkerRecord};
use super::userdata::{self, WorkerInput, WorkerSecrets};
use super::{DEADLINE_TAG_PREFIX, FailedWorker, FleetError, FleetName, TAG, deadline_of, fleet_of};
use crate::backend::digitalocean::images::{self, Family};
use crate::spec::LoadedSpec;

/// What `fleet up` is asked for.
#[derive(Debug)]
pub struct UpRequest<'a> {
    /// The spec the golden image was baked from.
    pub spec: &'a LoadedSpec,
    /// The fleet.
    pub name: FleetName,
    /// Workers wanted in all (existing ones count).
    pub count: usize,
    /// The golden image: id or name (None: the newest image of the spec's name family).
    pub image: Option<String>,
    /// Size slug (None: the spec's `digitalocean.size`).
    pub size: Option<String>,
    /// Region slug (None: the spec's `digitalocean.region`).
    pub region: Option<String>,
    /// The build sha the workers pull.
    pub sha: Option<String>,
    /// The workers' secrets.
    pub secrets: WorkerSecrets,
    /// Idle workers only power off (no worker token).
    pub power_off_only: bool,
    /// Each worker takes one job and then deletes itself.
    pub one_shot: bool,
    /// Confirmed on the command line.
    pub yes: bool,
    /// Wait this long for every worker to be `ready` (None: return once they are active).
    pub wait_ready: Option<Duration>,
    /// The API base URL the workers delete through (None: the client's own).
    pub worker_api_url: Option<String>,
    /// Metadata service URL for the workers (None: DigitalOcean's link-local one).
    pub worker_metadata_url: Option<String>,
    /// How often droplets are polled.
    pub poll: Duration,
    /// A worker that failed (refused by its region, not ready in time, degraded) is
    /// created again up to this many times; a refused region moves to the next one.
    pub retry: u32,
    /// Where each worker's agent POSTs its readiness report.
    pub callback_url: Option<String>,
}

/// One worker as `ls` and `up` report it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerInfo {
    /// `<fleet>-<n>`.
    pub name: String,
    /// Its fleet.
    pub fleet: String,
    /// Droplet id.
    pub id: u64,
    /// Public IPv4, once it has one.
    pub address: Option<String>,
    /// Size slug.
    pub size: String,
    /// Region slug.
    pub region: String,
    /// Droplet status.
    pub status: DropletStatus,
    /// Seconds since it was created.
    pub age_secs: u64,
    /// Dollars so far at the size's hourly price.
    pub cost_so_far: f64,
    /// When `reap` may delete it (unix seconds).
    pub deadline: Option<i64>,
    /// The agent's status (`fleet ls --status`), when asked and reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSummary>,
}

/// What the agent says about itself (from `vm-agent status --json` over pinned SSH).
#[derive(Clone, Debug, Serialize)]
pub struct AgentSummary {
    /// Readiness stage.
    pub stage: Stage,
    /// Jobs running.
    pub running: u32,
    /// Jobs queued.
    pub queued: u32,
    /// Since when it is idle (RFC 3339, as the agent writes it).
    #[serde(with = "agent_status::time::ts::opt")]
    pub idle_since: Option<SystemTime>,
    /// Its timers, as the agent reports them.
    pub timers: Vec<TimerStatus>,
}

impl AgentSummary {
    /// From `vm-agent status --json`.
    pub fn from_status(report: &StatusReport) -> AgentSummary {
        AgentSummary {
            stage: report.stage,
            running: report.jobs.running,
            queued: report.jobs.queued,
            idle_since: report.idle_since,
            timers: report.timers.clone(),
        }
    }
}

/// The result of `fleet up`.
#[derive(Clone, Debug, Serialize)]
pub struct UpReport {
    /// The fleet.
    pub fleet: String,
    /// Workers created by this run, each once (a worker replaced under `--retry` too).
    pub created: Vec<String>,
    /// Every worker of the fleet.
    pub workers: Vec<WorkerInfo>,
    /// Workers that did not become ready and were deleted (not replaced).
    pub failed: Vec<FailedWorker>,
    /// API requests this run made.
    pub api_requests: u64,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn info(d: &Droplet, price: &BTreeMap<String, f64>) -> WorkerInfo {
    let age_secs = d
        .created_at_time()
        .map(|t| u64::try_from((time::OffsetDateTime::now_utc() - t).whole_seconds()).unwrap_or(0))
        .unwrap_or(0);
    WorkerInfo {
        name: d.name.clone(),
        fleet: fleet_of(&d.tags).map(String::from).unwrap_or_default(),
        id: d.id,
        address: d.public_ipv4().map(str::to_owned),
        size: d.size_slug.clone(),
        region: d.region.slug.clone(),
        status: d.status,
        age_secs,
        cost_so_far: price.get(&d.size_slug).copied().unwrap_or(0.0) * age_secs as f64 / 3600.0,
        deadline: deadline_of(&d.tags),
        agent: None,
    }
}

async fn prices(client: &Client) -> Result<(Vec<Size>, BTreeMap<String, f64>), FleetError> {
    let sizes = client
        .sizes()
        .await
        .map_err(FleetError::api("listing sizes"))?;
    let price = sizes
        .iter()
        .map(|s| (s.slug.clone(), s.price_hourly))
        .collect();
    Ok((sizes, price))
}

async fn resolve_image(
    client: &Client,
    req: &UpRequest<'_>,
    region: &str,
) -> Result<(ImageSpec, String, Vec<String>), FleetError> {
    let image: images::ImageRow = match &req.image {
        Some(r) if r.parse::<u64>().is_ok() => {
            let id: u64 = r.parse().unwrap_or_default();
            (&client
                .get_image(id)
                .await
                .map_err(FleetError::api(format!("looking up image {id}")))?)
                .into()
        }
        Some(name) => (&client
            .newest_image_named(name)
            .await
            .map_err(FleetError::api(format!("looking up image {name:?}")))?
            .ok_or_else(|| {
                FleetError::Preflight(format!("there is no private image named {name:?}"))
            })?)
            .into(),
        None => {
            // The newest image a bake of this spec made (the same family `images prune` keeps).
            let family = Family::of_spec(&req.spec.spec);
            // The listing carries each image's regions: no second request for it.
            images::family(client, &family)
                .await
                .map_err(FleetError::api("listing golden images"))?
                .tagged
                .into_iter()
                .next()
                .ok_or_else(|| {
                    FleetError::Preflight(format!(
                        "no golden image of {}: no private image tagged {TAG} is named like {family}; bake one \
                         (`image-builder bake {} --backend digitalocean`) or pass --image",
                        req.spec.spec.name.value,
                        req.spec.path.display()
                    ))
                })?
        }
    };
    if !image.regions.iter().any(|r| r == region) {
        return Err(FleetError::Preflight(format!(
            "image {:?} (id {}) is not in region {region} (it is in: {}); transfer it or pick one of those regions",
            image.name,
            image.id,
            image.regions.join(", ")
        )));
    }
    Ok((
        ImageSpec::Id(image.id),
        format!("{:?} (id {})", image.name, image.id),
        image.regions,
    ))
}

/// `fleet up` on DigitalOcean.
pub async fn up(
    client: &Client,
    states: &StateDir,
    policy: &UserConfig,
    req: &UpRequest<'_>,
) -> Result<UpReport, FleetError> {
    let started_requests = client.request_count();
    policy.check_human("fleet up")?;
    if req.secrets.worker_token.is_none() && !req.power_off_only {
        return Err(FleetError::NoWorkerToken);
    }
    let do_spec = req.spec.spec.digitalocean.as_ref();
    let region = req
        .region
        .clone()
        .or_else(|| do_spec.map(|d| d.region.clone()))
        .ok_or_else(|| {
            FleetError::Preflight(
                "no region: pass --region or set digitalocean.region in the spec".into(),
            )
        })?;
    let size_slug = req
        .size
        .clone()
        .or_else(|| do_spec.map(|d| d.size.clone()))
        .ok_or_else(|| {
            FleetError::Preflight(
                "no size: pass --size or set digitalocean.size in the spec".into(),
            )
        })?;

    // What exists already: this fleet's workers and everything else this tool runs.
    let tagged = client
        .list_droplets_by_tag(TAG)
        .await
        .map_err(FleetError::api("listing image-builder droplets"))?;
    let (mine, others): (Vec<Droplet>, Vec<Droplet>) = tagged
        .into_iter()
        .partition(|d| fleet_of(&d.tags).as_ref() == Some(&req.name));
    let wanted: Vec<String> = (1..=req.count).map(|n| req.name.worker(n)).collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|n| !mine.iter().any(|d| &d.name == *n))
        .cloned()
        .collect();
    let (sizes, price) = prices(client).await?;
    if missing.is_empty() {
        tracing::info!(fleet = %req.name, workers = mine.len(), "the fleet has every worker asked for: nothing to create");
        return Ok(UpReport {
            fleet: req.name.to_string(),
            created: Vec::new(),
            workers: mine.iter().map(|d| info(d, &price)).collect(),
            failed: Vec::new(),
            api_requests: client.request_count() - started_requests,
        });
    }

    // Pre-flight: nothing billable before these pass.
    let account = client.account().await.map_err(|e| match e.status() {
        Some(401 | 403) => FleetError::Preflight(format!(
            "DigitalOcean refused the token ({e}); check DIGITALOCEAN_TOKEN or --token-file"
        )),
        _ => FleetError::api("reading the account")(e),
    })?;
    let in_use = client
        .list_droplets()
        .await
        .map_err(FleetError::api("counting droplets"))?
        .len() as u64;
    if in_use + missing.len() as u64 > account.droplet_limit {
        return Err(FleetError::Preflight(format!(
            "{} new workers do not fit: {in_use} droplets exist and the account allows {}",
            missing.len(),
            account.droplet_limit
        )));
    }
    let size = sizes.iter().find(|s| s.slug == size_slug).ok_or_else(|| {
        FleetError::Preflight(format!("{size_slug:?} is not a DigitalOcean size"))
    })?;
    if !size.available || !size.regions.iter().any(|r| r == &region) {
        return Err(FleetError::Preflight(format!(
            "size {size_slug} is not offered in region {region} (offered in: {})",
            size.regions.join(", ")
        )));
    }
    let (image, image_label, image_regions) = resolve_image(client, req, &region).await?;
    let other_hourly: f64 = others
        .iter()
        .map(|d| price.get(&d.size_slug).copied().unwrap_or(0.0))
        .sum();
    policy.check_caps(
        &size_slug,
        req.count.max(mine.len()),
        size.price_hourly,
        others.len(),
        other_hourly,
    )?;
    let lifetime = req.spec.spec.agent.max_lifetime.duration();
    let worst =
        lifetime.map(|l| size.price_hourly * missing.len() as f64 * (l.as_secs_f64() / 3600.0));
    eprintln!(
        "image-builder will create in DigitalOcean region {region}:\n  \
         workers   {n} × {size_slug} ({vcpus} vCPU, {mem} MiB), ${hourly:.5}/hour each, ${total:.4}/hour in all\n  \
         names     {names}\n  from      {image_label}\n  \
         at worst  {worst} (each worker deletes itself when idle; max_lifetime {life})\n  \
         droplets  {in_use} of {limit} in use",
        n = missing.len(),
        vcpus = size.vcpus,
        mem = size.memory,
        hourly = size.price_hourly,
        total = size.price_hourly * missing.len() as f64,
        names = missing.join(", "),
        worst = worst.map_or("unbounded (max_lifetime is never)".to_owned(), |w| format!(
            "${w:.2}"
        )),
        life = req.spec.spec.agent.max_lifetime,
        limit = account.droplet_limit,
    );
    let yes = req.yes;
    tokio::task::spawn_blocking(move || {
        crate::backend::digitalocean::confirm(
            yes,
            "Create these workers?",
            "create the workers shown above",
        )
    })
    .await
    .map_err(|e| FleetError::Tool {
        tool: "stdin",
        message: e.to_string(),
    })?
    .map_err(FleetError::from_confirm)?;

    // The fleet's identity and state (written before the POST: a killed `up` leaves a
    // record; `down` works from tags alone either way).
    let mut state = match states.load(&req.name)? {
        Some(s) => s,
        None => FleetState {
            version: STATE_VERSION,
            name: req.name.clone(),
            backend: FleetBackend::Digitalocean,
            user: req.spec.spec.build_user.name.to_string(),
            spec_sha256: req.spec.spec_hash(),
            image: image_label.clone(),
            sha: req.sha.clone(),
            region: Some(region.clone()),
            size: Some(size_slug.clone()),
            workers: Vec::new(),
            shared_host_key: None,
        },
    };
    let pinned = Pinned::paths(states, &state)?;
    let identity = pinned.ensure_identity(&format!("image-builder fleet {}", req.name))?;
    let deadline =
        lifetime.map(|l| now_unix() + i64::try_from(l.as_secs()).unwrap_or(i64::MAX / 2));
    let mut tags = vec![
        TAG.to_owned(),
        req.name.tag(),
        req.spec.spec.agent.ephemeral_tag.to_string(),
    ];
    if let Some(d) = deadline {
        tags.push(format!("{DEADLINE_TAG_PREFIX}{d}"));
    }
    let provider = if req.power_off_only {
        Provider::Local
    } else {
        Provider::Digitalocean
    };
    let api_url = req
        .worker_api_url
        .clone()
        .unwrap_or_else(|| client.base_url().as_str().trim_end_matches('/').to_owned());

    let mut creator = Creator {
        client,
        states,
        req,
        pinned: &pinned,
        identity: &identity,
        tags,
        provider,
        api_url,
        size_slug: size_slug.clone(),
        image,
        project: do_spec.and_then(|d| d.project.clone()),
        // Where a refused batch may go: the regions that offer the size and hold the
        // image, the one asked for first.
        regions: std::iter::once(region.clone())
            .chain(
                size.regions
                    .iter()
                    .filter(|r| **r != region && image_regions.contains(r))
                    .cloned(),
            )
            .collect(),
        region_at: 0,
        retries: Retries::new(req.retry),
        progress: Progress::stderr(),
    };

    // The fleet's droplets were listed above: the first batch's reconcile needs no listing.
    let mut created = creator.create(&missing, &mut state, Some(mine)).await?;
    let mut active = creator.wait_active(&wanted, &mut state).await?;
    if let Some(limit) = req.wait_ready {
        // Every worker is waited for in the first round (earlier ones are ready at once);
        // later rounds wait only for the replacements.
        let mut round: Vec<Droplet> = active.clone();
        loop {
            let lost = wait_ready(
                client,
                &pinned,
                &round,
                limit,
                req.poll,
                &mut creator.progress,
            )
            .await;
            if lost.is_empty() {
                break;
            }
            for f in &lost {
                state.workers.retain(|w| w.name != f.worker);
                active.retain(|d| d.name != f.worker);
            }
            let again = creator.retries.lost(lost, &mut creator.progress);
            states.save(&state)?;
            pinned.write(&state)?;
            if again.is_empty() {
                break;
            }
            // A replacement keeps its name: each worker is listed once.
            for name in creator.create(&again, &mut state, None).await? {
                if !created.contains(&name) {
                    created.push(name);
                }
            }
            round = creator.wait_active(&again, &mut state).await?;
            active.extend(round.iter().cloned());
        }
    }
    let failed = creator
        .retries
        .failures(|w| active.iter().any(|d| d.name == w));
    Ok(UpReport {
        fleet: req.name.to_string(),
        created,
        workers: active.iter().map(|d| info(d, &price)).collect(),
        failed,
        api_requests: client.request_count() - started_requests,
    })
}

/// Creates workers for one `up`: batches of at most 10 names, moved on to the next
/// region that offers the size (and holds the image) when a region refuses it, each
/// worker tried at most `1 + --retry` times.
struct Creator<'a> {
    client: &'a Client,
    states: &'a StateDir,
    req: &'a UpRequest<'a>,
    pinned: &'a Pinned,
    identity: &'a str,
    tags: Vec<String>,
    provider: Provider,
    api_url: String,
    size_slug: String,
    image: ImageSpec,
    project: Option<String>,
    regions: Vec<String>,
    /// The region in use (index into `regions`).
    region_at: usize,
    /// Creations per worker name in this run, and the workers lost.
    retries: Retries,
    progress: Progress<std::io::Stderr>,
}

impl Creator<'_> {
    fn region(&self) -> &str {
        &self.regions[self.region_at]
    }

    /// Create `names` (recording each in the state before its POST); returns the names.
    async fn create(
        &mut self,
        names: &[String],
        state: &mut FleetState,
        mut known: Option<Vec<Droplet>>,
    ) -> Result<Vec<String>, FleetError> {
        let mut created = Vec::new();
        for batch in names.chunks(do_api::MAX_NAMES_PER_CREATE) {
            let host_key = keys::generate(&format!("image-builder fleet {} host", self.req.name))?;
            let user_data = userdata::render(&WorkerInput {
                spec: self.req.spec,
                provider: self.provider,
                sha: self.req.sha.as_deref(),
                api_url: Some(&self.api_url),
                metadata_url: self.req.worker_metadata_url.as_deref(),
                callback_url: self.req.callback_url.as_deref(),
                secrets: &self.req.secrets,
                authorized_key: self.identity,
                host_key: &host_key,
                one_shot: self.req.one_shot,
            })?;
            for name in batch {
                state.workers.retain(|w| &w.name != name);
                state.workers.push(WorkerRecord {
                    name: name.clone(),
                    id: None,
                    address: String::new(),
                    port: 22,
                    host_key: host_key.public_key_only(),
                    created_at: time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                });
            }
            self.states.save(state)?;
            let droplets = loop {
                for name in batch {
                    self.retries.attempt(name);
                    self.progress
                        .set(name, &format!("creating in {}", self.region()));
                }
                let mut template = DropletCreate::new(
                    &self.req.name.worker(0),
                    self.region(),
                    &self.size_slug,
                    self.image.clone(),
                );
                template.tags = self.tags.clone();
                template.user_data = Some(user_data.clone());
                match self
                    .client
                    .create_droplets_reconciled(
                        &template,
                        batch,
                        &self.req.name.tag(),
                        known.take(),
                    )
                    .await
                {
                    Ok(d) => break d,
                    Err(e) => {
                        // A region out of this size: the next region that has it, while
                        // the batch has tries left (a 422 made nothing).
                        let refused = matches!(
                            e.refusal(),
                            Some(Refusal::SizeNotInRegion | Refusal::RegionNotAvailable)
                        );
                        if refused
                            && self.region_at + 1 < self.regions.len()
                            && batch.iter().all(|n| self.retries.may_retry(n))
                        {
                            let from = self.region().to_owned();
                            self.region_at += 1;
                            eprintln!(
                                "region {from} refused size {} ({e}); creating {} in {} instead",
                                self.size_slug,
                                batch.join(", "),
                                self.region()
                            );
                            continue;
                        }
                        let (size, region) = (self.size_slug.clone(), self.region().to_owned());
                        let tried = self.regions[..=self.region_at].join(", ");
                        return Err(
                            match crate::backend::digitalocean::preflight::explain_create_refusal(
                                &e, &size, &region,
                            ) {
                                Some(advice) if self.region_at > 0 => FleetError::Preflight(
                                    format!("{advice} (regions tried: {tried})"),
                                ),
                                Some(advice) => FleetError::Preflight(advice),
                                None => FleetError::api("creating workers")(e),
                            },
                        );
                    }
                }
            };
            for d in &droplets {
                if let Some(w) = state.workers.iter_mut().find(|w| w.name == d.name) {
                    w.id = Some(d.id);
                }
            }
            self.states.save(state)?;
            created.extend(batch.iter().cloned());
            if let Some(project) = &self.project {
                let urns: Vec<String> = droplets
                    .iter()
                    .map(|d| format!("do:droplet:{}", d.id))
                    .collect();
                self.client
                    .assign_to_project(project, &urns)
                    .await
                    .map_err(FleetError::api(format!(
                        "assigning workers to project {project}"
                    )))?;
            }
        }
        Ok(created)
    }

    /// Wait until every worker of `names` is active with an address; record and pin them.
    async fn wait_active(
        &mut self,
        names: &[String],
        state: &mut FleetState,
    ) -> Result<Vec<Droplet>, FleetError> {
        let deadline = Instant::now() + Duration::from_secs(600);
        let active = loop {
            let now = self
                .client
                .list_droplets_by_tag(&self.req.name.tag())
                .await
                .map_err(FleetError::api("waiting for the workers"))?;
            let ours: Vec<Droplet> = now
                .into_iter()
                .filter(|d| names.contains(&d.name))
                .collect();
            let reachable =
                |d: &Droplet| d.status == DropletStatus::Active && d.public_ipv4().is_some();
            for d in &ours {
                if reachable(d) {
                    self.progress.set(&d.name, "booting");
                } else {
                    self.progress.set(&d.name, &format!("droplet {}", d.status));
                }
            }
            if ours.len() >= names.len() && ours.iter().all(reachable) {
                break ours;
            }
            if Instant::now() > deadline {
                return Err(FleetError::Preflight(format!(
                    "workers of fleet {} are not active after 10 minutes; `image-builder fleet down {}` deletes them",
                    self.req.name, self.req.name
                )));
            }
            tokio::time::sleep(self.req.poll).await;
        };
        for d in &active {
            if let Some(w) = state.workers.iter_mut().find(|w| w.name == d.name) {
                w.id = Some(d.id);
                w.address = d.public_ipv4().unwrap_or_default().to_owned();
            }
        }
        self.states.save(state)?;
        self.pinned.write(state)?;
        Ok(active)
    }
}

/// Wait until every worker's agent says `ready`. A worker that is `degraded` or not ready
/// in time is deleted (confirmed gone) and returned with its reason and log tail; the
/// others keep being waited for.
async fn wait_ready(
    client: &Client,
    pinned: &Pinned,
    workers: &[Droplet],
    limit: Duration,
    poll: Duration,
    progress: &mut Progress<std::io::Stderr>,
) -> Vec<FailedWorker> {
    let deadline = Instant::now() + limit;
    let mut pending: Vec<&Droplet> = workers.iter().collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut failed = Vec::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        // Every pending worker is asked at once: one round costs one SSH round trip,
        // whatever the fleet's size.
        let asks: Vec<_> = pending
            .iter()
            .map(|d| {
                let pinned = pinned.clone();
                let name = d.name.clone();
                tokio::task::spawn_blocking(move || agent_status(&pinned, &name))
            })
            .collect();
        let timed_out = Instant::now() > deadline;
        for (d, ask) in pending.into_iter().zip(asks) {
            let verdict = Readiness::of(ask.await.unwrap_or_else(|e| Err(e.to_string())));
            progress.set(&d.name, &verdict.shown());
            match verdict {
                Readiness::Ready => {}
                Readiness::Degraded { reason, report } => {
                    failed.push(fail_worker(client, pinned, d, reason, report).await);
                }
                Readiness::Pending { last: why, .. } => {
                    last.insert(d.name.clone(), why);
                    still.push(d);
                }
            }
        }
        if timed_out {
            for d in still.drain(..) {
                let reason = format!("not ready within {}", humantime::format_duration(limit));
                progress.set(&d.name, &reason);
                let tail = last.remove(&d.name).unwrap_or_default();
                failed.push(fail_worker(client, pinned, d, reason, tail).await);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(poll).await;
        progress.tick();
    }
    failed
}

/// The last lines of the worker's cloud-init output, over its pinned SSH (None when the
/// worker cannot be reached).
fn cloud_init_tail(pinned: &Pinned, worker: &str) -> Option<String> {
    let out = pinned
        .ssh(worker)
        .args(["sudo", "-n", "tail", "-n"])
        .arg(super::FAILURE_TAIL_LINES.to_string())
        .arg("/var/log/cloud-init-output.log")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// Delete a worker that did not become ready (the tail of its cloud-init output read
/// first, when SSH reaches it).
async fn fail_worker(
    client: &Client,
    pinned: &Pinned,
    d: &Droplet,
    reason: String,
    last_status: String,
) -> FailedWorker {
    let (p, name) = (pinned.clone(), d.name.clone());
    let tail = tokio::task::spawn_blocking(move || cloud_init_tail(&p, &name))
        .await
        .ok()
        .flatten()
        .unwrap_or(last_status);
    if let Err(e) = client
        .destroy_droplet(
            d.id,
            Poll::new(Duration::from_secs(2), Duration::from_secs(300)),
        )
        .await
    {
        tracing::error!(droplet = d.id, error = %e, "could not delete the failed worker: `fleet down` deletes it");
    }
    FailedWorker {
        worker: d.name.clone(),
        id: Some(d.id),
        region: Some(d.region.slug.clone()),
        reason,
        tail,
    }
}

/// `fleet ls`: the workers of `fleet` (None: every fleet), from the cloud's tags.
pub async fn ls(client: &Client, fleet: Option<&FleetName>) -> Result<Vec<WorkerInfo>, FleetError> {
    let tag = fleet.map_or_else(|| TAG.to_owned(), FleetName::tag);
    let droplets = client
        .list_droplets_by_tag(&tag)
        .await
        .map_err(FleetError::api("listing workers"))?;
    let (_, price) = prices(client).await?;
    let mut out: Vec<WorkerInfo> = droplets
        .iter()
        .filter(|d| fleet_of(&d.tags).is_some())
        .map(|d| info(d, &price))
        .collect();
    out.sort_by(|a, b| (&a.fleet, a.id).cmp(&(&b.fleet, b.id)));
    Ok(out)
}

/// What `down` and `reap` deleted.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Deleted {
    /// Deleted and confirmed gone (404), by name.
    pub deleted: Vec<String>,
    /// Left alone, with the reason.
    pub kept: Vec<(String, String)>,
}

/// `fleet down`: delete the fleet's workers (every fleet's with `None`) and confirm each
/// with a 404. A worker whose agent reports a running job is kept unless `force`.
pub async fn down(
    client: &Client,
    states: &StateDir,
    fleet: Option<&FleetName>,
    force: bool,
    poll: Poll,
) -> Result<Deleted, FleetError> {
    let tag = fleet.map_or_else(|| TAG.to_owned(), FleetName::tag);
    let droplets: Vec<Droplet> = client
        .list_droplets_by_tag(&tag)
        .await
        .map_err(FleetError::api("listing workers"))?
        .into_iter()
        .filter(|d| fleet_of(&d.tags).is_some())
        .collect();
    let mut report = Deleted::default();
    for d in droplets {
        let Some(name) = fleet_of(&d.tags) else {
            continue;
        };
        if !force && let Some(busy) = busy(states, &name, &d.name) {
            report.kept.push((d.name.clone(), busy));
            continue;
        }
        client
            .destroy_droplet(d.id, poll)
            .await
            .map_err(FleetError::api(format!(
                "deleting worker {} ({})",
                d.name, d.id
            )))?;
        report.deleted.push(d.name.clone());
    }
    if report.kept.is_empty() {
        match fleet {
            Some(f) => states.remove(f)?,
            None => {
                for f in states.list()? {
                    if states
                        .load(&f)?
                        .is_some_and(|s| s.backend == FleetBackend::Digitalocean)
                    {
                        states.remove(&f)?;
                    }
                }
            }
        }
    }
    Ok(report)
}

/// Why a worker must not be deleted now, if its agent says so (unreachable: no reason).
fn busy(states: &StateDir, fleet: &FleetName, worker: &str) -> Option<String> {
    let state = states.load(fleet).ok()??;
    let pinned = Pinned::paths(states, &state).ok()?;
    if !pinned.config.is_file() {
        return None;
    }
    let running = agent_status(&pinned, worker).ok()?.jobs.running;
    (running > 0).then(|| {
        format!(
            "its agent reports {running} running job(s): wait, or pass --force to delete it anyway"
        )
    })
}

/// `fleet reap`: delete workers past their deadline tag, workers `off` for longer than
/// `off_grace` (a powered-off droplet still bills), and workers whose agent has been
/// unreachable over pinned SSH for `unreachable_grace` (only fleets with local state can
/// be asked); never a worker whose agent
/// reports a running job. `seen_off` remembers since when each droplet was seen off
/// (DigitalOcean records no action when a droplet powers itself off).
pub async fn reap(
    client: &Client,
    states: &StateDir,
    off_grace: Duration,
    unreachable_grace: Duration,
    delete: bool,
    poll: Poll,
) -> Result<Deleted, FleetError> {
    let now = now_unix();
    let seen_path = states.reap_seen_file();
    let seen = states.load_reap_seen(&seen_path);
    let unreachable_path = states.reap_unreachable_file();
    let unreachable = states.load_reap_seen(&unreachable_path);
    let mut still_unreachable = BTreeMap::new();
    let grace = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let droplets = client
        .list_droplets_by_tag(TAG)
        .await
        .map_err(FleetError::api("listing workers"))?;
    let mut report = Deleted::default();
    let mut still_seen = BTreeMap::new();
    for d in droplets {
        let Some(fleet) = fleet_of(&d.tags) else {
            continue;
        };
        let why = if deadline_of(&d.tags).is_some_and(|t| now >= t) {
            Some("past its deadline".to_owned())
        } else if d.status == DropletStatus::Off {
            let since = *seen.get(&d.id).unwrap_or(&now);
            still_seen.insert(d.id, since);
            (now - since >= grace(off_grace)).then(|| {
                format!(
                    "off since {}s (a powered-off droplet still bills)",
                    now - since
                )
            })
        } else if d.status == DropletStatus::Active
            && let Some(pinned) = states
                .load(&fleet)
                .ok()
                .flatten()
                .and_then(|state| Pinned::paths(states, &state).ok())
                .filter(|p| p.config.is_file())
            && let Err(e) = agent_status(&pinned, &d.name)
        {
            let since = *unreachable.get(&d.id).unwrap_or(&now);
            still_unreachable.insert(d.id, since);
            (now - since >= grace(unreachable_grace))
                .then(|| format!("its agent unreachable for {}s ({e})", now - since))
        } else {
            None
        };
        let Some(why) = why else { continue };
        if let Some(b) = busy(states, &fleet, &d.name) {
            report.kept.push((d.name.clone(), b));
            continue;
        }
        if !delete {
            report
                .kept
                .push((d.name.clone(), format!("would delete: {why}")));
            continue;
        }
        client
            .destroy_droplet(d.id, poll)
            .await
            .map_err(FleetError::api(format!(
                "deleting worker {} ({})",
                d.name, d.id
            )))?;
        still_seen.remove(&d.id);
        still_unreachable.remove(&d.id);
        report.deleted.push(format!("{} ({why})", d.name));
    }
    states.save_reap_seen(&seen_path, &still_seen)?;
    states.save_reap_seen(&unreachable_path, &still_unreachable)?;
    Ok(report)
}
