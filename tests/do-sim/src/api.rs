//! The DigitalOcean `/v2` routes the simulator serves, plus the `/_sim` control API.
//!
//! Handlers lock the [`World`], call [`World::tick`], and answer with the
//! contract's shapes. Cross-cutting concerns (auth, rate-limit headers, request
//! ids, faults, the request log) live in [`crate::server`], not here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::catalog;
use crate::config::{FaultRule, ProvisionPlan, SimConfig};
use crate::state::{
    DEFAULT_PROJECT_ID, Droplet, DropletRecord, DropletStatus, Image, LoggedRequest, OWNER_UUID,
    SshKey, World, rfc3339,
};

/// State shared by the API listener, the metadata listener and the [`crate::Sim`] handle.
#[derive(Debug)]
pub struct Shared {
    pub world: Mutex<World>,
    /// Gates of the `hold` fault (outside the world's lock: holding must not block it).
    pub gates: crate::gates::Gates,
}

impl Shared {
    /// Lock the world and bring it up to date. A poisoned lock is recovered: the
    /// simulator's state is plain data and a panicking test must not hide others' results.
    pub fn lock(&self) -> MutexGuard<'_, World> {
        let mut w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        w.tick();
        w
    }
}

pub type AppState = Arc<Shared>;

/// Request id of the current API request (inserted by the server wrapper).
#[derive(Debug, Clone)]
pub struct ReqId(pub String);

type Q = Query<HashMap<String, String>>;

pub const MAX_USER_DATA: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2/account", get(account))
        .route("/v2/account/keys", get(keys_list).post(keys_create))
        .route("/v2/account/keys/{key}", get(keys_get).delete(keys_delete))
        .route("/v2/actions/{id}", get(action_get))
        .route(
            "/v2/droplets",
            get(droplets_list)
                .post(droplets_create)
                .delete(droplets_delete_by_tag),
        )
        .route("/v2/droplets/{id}", get(droplet_get).delete(droplet_delete))
        .route("/v2/droplets/{id}/snapshots", get(droplet_snapshots))
        .route(
            "/v2/droplets/{id}/actions",
            get(droplet_actions_list).post(droplet_action_post),
        )
        .route(
            "/v2/droplets/{id}/actions/{action_id}",
            get(droplet_action_get),
        )
        .route(
            "/v2/images",
            get(images_list).post(crate::custom_images::create),
        )
        .route(
            "/v2/images/{id}",
            get(image_get).put(image_update).delete(image_delete),
        )
        .route("/v2/snapshots", get(snapshots_list))
        .route(
            "/v2/snapshots/{id}",
            get(snapshot_get).delete(snapshot_delete),
        )
        .route("/v2/projects", get(projects_list))
        .route("/v2/projects/default", get(project_default))
        .route(
            "/v2/projects/default/resources",
            get(default_project_resources_list).post(default_project_assign),
        )
        .route(
            "/v2/projects/{id}/resources",
            get(project_resources_list).post(project_assign),
        )
        .route("/v2/sizes", get(sizes_list))
        .route("/v2/regions", get(regions_list))
        .route("/v2/tags", get(tags_list).post(tags_create))
        .route("/v2/tags/{tag}", get(tag_get).delete(tag_delete))
        .route(
            "/v2/tags/{tag}/resources",
            post(tag_assign).delete(tag_unassign),
        )
        // Control API (not DigitalOcean's; never logged or counted).
        .route("/_sim/state", get(sim_state))
        .route("/_sim/requests", get(sim_requests))
        .route("/_sim/requests/reset", post(sim_requests_reset))
        .route("/_sim/config", get(sim_config_get).put(sim_config_put))
        .route(
            "/_sim/faults",
            get(sim_faults_get)
                .post(sim_faults_set)
                .delete(sim_faults_clear),
        )
        .route("/_sim/gates", get(sim_gates))
        .route("/_sim/gates/{gate}/release", post(sim_gate_release))
        .route("/_sim/droplets/{id}/provision", post(sim_provision))
        .route("/_sim/droplets/{id}/user-data", get(sim_user_data))
        .route("/_sim/metadata", post(sim_metadata))
        .route("/_sim/images", post(sim_seed_image))
        .fallback(not_found_fallback)
        .with_state(state)
}

// ----- response helpers -----

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

pub fn error_response(status: StatusCode, id: &str, message: &str, request_id: &str) -> Response {
    json_response(
        status,
        &json!({"id": id, "message": message, "request_id": request_id}),
    )
}

fn not_found(rid: &ReqId) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        "The resource you were accessing could not be found.",
        &rid.0,
    )
}

/// DigitalOcean's own wordings of the 422 (`unprocessable_entity`) refusals the
/// simulator plays, each with where it was seen in a real response. DigitalOcean
/// gives every 422 the same `id` and no field name, so clients tell them apart by
/// these messages: keep them verbatim. The client (`do-api`'s `Refusal`) has its
/// own copy on purpose, so a test cannot pass on a sentence only one side knows.
/// A 422 not listed here uses the simulator's own words (no DigitalOcean wording
/// was found for it); no client logic depends on those.
pub mod refusal {
    /// Full body `{"id":"unprocessable_entity","message":...}` in
    /// OpenRouterLabs/spawn#3059 and #2516 (2026); pry0cc/axiom#422 (2021).
    pub const DROPLET_LIMIT: &str = "creating this/these droplet(s) will exceed your droplet limit";
    /// digitalocean/api-v2#36 (2014), after DigitalOcean removed a stray leading
    /// "Size "; the only published wording of this refusal.
    pub const SIZE_RESTRICTED: &str =
        "This size is currently restricted please send an additional payment to unlock.";
    /// Full body in OpenRouterLabs/spawn#2768 (2026); ChainSafe/forest-iac#437 (2024).
    pub const SIZE_NOT_IN_REGION: &str = "Size is not available in this region.";
    /// Full body in digitalocean/api-v2#41 (2014); pachadotdev/analogsea#180 (2019).
    pub const REGION_NOT_AVAILABLE: &str = "Region is not available";
    /// docker/machine#288 (2015); scrapoxy/scrapoxy#89 (2018, `id=unprocessable_entity`).
    pub const INVALID_SIZE: &str = "You specified an invalid size for Droplet creation.";
    /// pry0cc/axiom#829 (2025); digitalocean/terraform-provider-digitalocean#1035
    /// (2023); full body in matt-major/do-wrapper#37. Also the answer to a
    /// private image's name instead of its id (hashicorp/terraform#4309).
    pub const INVALID_IMAGE: &str = "You specified an invalid image for Droplet creation.";
    /// Quoted in digitalocean/api-v2#36 (2014); no later sample was found.
    pub const IMAGE_NOT_IN_REGION: &str = "The image you specified is not available in the selected region, you can transfer it to this region from the images pages.";
    /// Raw HTTP dump of a 422 in digitalocean/doctl#257 (2023).
    pub const INVALID_HOSTNAME: &str =
        "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)";
    /// Full body in hashicorp/packer#1814 (a snapshot action) and
    /// digitalocean/api-v2#129; DigitalOcean's Terraform provider retries on it
    /// (`digitalocean/volume/resource_volume_attachment.go`).
    pub const PENDING_EVENT: &str = "Droplet already has a pending event.";
    /// Full body in puphpet/puphpet#1948 (2015); digitalocean/packer-plugin-digitalocean#113 (2023).
    pub const SSH_KEY_IN_USE: &str = "SSH Key is already in use on your account";
}

pub(crate) fn unprocessable(rid: &ReqId, message: &str) -> Response {
    error_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable_entity",
        message,
        &rid.0,
    )
}

fn bad_request(rid: &ReqId, message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", message, &rid.0)
}

fn no_content() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
    )
        .into_response()
}

async fn not_found_fallback(rid: Option<Extension<ReqId>>) -> Response {
    let rid = rid.map_or_else(|| ReqId(String::new()), |Extension(r)| r);
    not_found(&rid)
}

#[allow(clippy::result_large_err)] // Response is the natural error of a handler helper.
fn parse_body<T: for<'de> Deserialize<'de>>(rid: &ReqId, body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| bad_request(rid, &format!("error parsing request body: {e}")))
}

fn parse_id(raw: &str) -> Option<u64> {
    raw.parse::<u64>().ok().filter(|id| *id > 0)
}

fn host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned()
}

/// One page of `items` under `key`, with `links.pages` and `meta.total`
/// (per_page default 20, at most 200; page default 1).
fn paginate(
    key: &str,
    items: Vec<Value>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    path: &str,
) -> Value {
    let per_page = q
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 200);
    let page = q
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let page_items: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    // Keep the other query parameters (e.g. tag_name) in the links.
    let mut extra: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "page" && k.as_str() != "per_page")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    extra.sort();
    let link = |p: usize| {
        let mut u = url::Url::parse(&format!("http://{}{}", host(headers), path))
            .unwrap_or_else(|_| url::Url::parse("http://127.0.0.1/").expect("static URL parses"));
        {
            let mut qp = u.query_pairs_mut();
            for (k, v) in &extra {
                qp.append_pair(k, v);
            }
            qp.append_pair("page", &p.to_string());
            qp.append_pair("per_page", &per_page.to_string());
        }
        u.to_string()
    };
    let mut pages = serde_json::Map::new();
    if page > 1 {
        pages.insert("first".into(), Value::String(link(1)));
        pages.insert("prev".into(), Value::String(link((page - 1).min(last))));
    }
    if page < last {
        pages.insert("next".into(), Value::String(link(page + 1)));
        pages.insert("last".into(), Value::String(link(last)));
    }
    let links = if pages.is_empty() {
        json!({})
    } else {
        json!({"pages": pages})
    };
    json!({ key: page_items, "links": links, "meta": {"total": total} })
}

fn ok_page(
    key: &str,
    items: Vec<Value>,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    path: &str,
) -> Response {
    json_response(StatusCode::OK, &paginate(key, items, q, headers, path))
}

fn valid_name(name: &str) -> bool {
    // ^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$, at most 255 characters.
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    let last_ok = name
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    !name.is_empty() && name.len() <= 255 && ok_chars && last_ok
}

pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 255
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':')
}

// ----- account, sizes, regions -----

async fn account(State(s): State<AppState>) -> Response {
    let w = s.lock();
    json_response(
        StatusCode::OK,
        &json!({"account": {
            "droplet_limit": w.config.droplet_limit,
            "floating_ip_limit": 3,
            "email": "sammy@example.com",
            "name": "Sammy the Shark",
            "uuid": crate::state::ACCOUNT_UUID,
            "email_verified": true,
            "status": "active",
            "status_message": "",
            "team": {"uuid": "5df3e3004a2f4d0fa4b6e1b7f6a8c4a1", "name": "My Team"},
        }}),
    )
}

async fn sizes_list(q: Q, headers: HeaderMap) -> Response {
    let items = catalog::SIZES.iter().map(catalog::size_json).collect();
    ok_page("sizes", items, &q, &headers, "/v2/sizes")
}

async fn regions_list(q: Q, headers: HeaderMap) -> Response {
    let items = catalog::REGIONS.iter().map(catalog::region_json).collect();
    ok_page("regions", items, &q, &headers, "/v2/regions")
}

// ----- ssh keys -----

fn key_json(k: &SshKey) -> Value {
    json!({"id": k.id, "fingerprint": k.fingerprint, "public_key": k.public_key, "name": k.name})
}

fn find_key<'a>(w: &'a World, ident: &str) -> Option<&'a SshKey> {
    match parse_id(ident) {
        Some(id) => w.ssh_keys.get(&id),
        None => w.ssh_keys.values().find(|k| k.fingerprint == ident),
    }
}

async fn keys_list(State(s): State<AppState>, q: Q, headers: HeaderMap) -> Response {
    let w = s.lock();
    let items = w.ssh_keys.values().map(key_json).collect();
    ok_page("ssh_keys", items, &q, &headers, "/v2/account/keys")
}

#[derive(Deserialize)]
struct KeyCreate {
    name: String,
    public_key: String,
}

async fn keys_create(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    body: Bytes,
) -> Response {
    let req: KeyCreate = match parse_body(&rid, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut w = s.lock();
    if req.public_key.split_whitespace().count() < 2 {
        return unprocessable(&rid, "Key invalid, type not supported");
    }
    if w.ssh_keys.values().any(|k| k.public_key == req.public_key) {
        return unprocessable(&rid, refusal::SSH_KEY_IN_USE);
    }
    let digest = Sha256::digest(req.public_key.as_bytes());
    let fingerprint = digest[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let id = w.alloc_key_id();
    let key = SshKey {
        id,
        name: req.name,
        public_key: req.public_key,
        fingerprint,
    };
    let body = json!({"ssh_key": key_json(&key)});
    w.ssh_keys.insert(id, key);
    json_response(StatusCode::CREATED, &body)
}

async fn keys_get(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(ident): Path<String>,
) -> Response {
    let w = s.lock();
    match find_key(&w, &ident) {
        Some(k) => json_response(StatusCode::OK, &json!({"ssh_key": key_json(k)})),
        None => not_found(&rid),
    }
}

async fn keys_delete(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(ident): Path<String>,
) -> Response {
    let mut w = s.lock();
    let Some(id) = find_key(&w, &ident).map(|k| k.id) else {
        return not_found(&rid);
    };
    w.ssh_keys.remove(&id);
    no_content()
}

// ----- droplets -----

#[derive(Deserialize)]
struct DropletCreate {
    name: Option<String>,
    names: Option<Vec<String>>,
    region: Option<String>,
    size: Option<String>,
    image: Option<Value>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    user_data: Option<String>,
    vpc_uuid: Option<String>,
}

async fn droplets_create(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: DropletCreate = match parse_body(&rid, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let names: Vec<String> = match (&req.name, &req.names) {
        (Some(n), None) => vec![n.clone()],
        (None, Some(ns)) if !ns.is_empty() && ns.len() <= 10 => ns.clone(),
        (None, Some(_)) => {
            return unprocessable(&rid, "names must list between 1 and 10 droplet names");
        }
        _ => return unprocessable(&rid, "exactly one of name or names is required"),
    };
    if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
        tracing::debug!("refusing droplet name {bad:?}");
        return unprocessable(&rid, refusal::INVALID_HOSTNAME);
    }
    let Some(size_slug) = req.size.as_deref() else {
        return unprocessable(&rid, "size is required");
    };
    let Some(image_ref) = req.image.as_ref() else {
        return unprocessable(&rid, "image is required");
    };
    let Some(size) = catalog::size(size_slug) else {
        return unprocessable(&rid, refusal::INVALID_SIZE);
    };
    let mut w = s.lock();
    if w.config.restricted_sizes.iter().any(|r| r == size.slug) {
        return unprocessable(&rid, refusal::SIZE_RESTRICTED);
    }
    let region = match req.region.as_deref() {
        Some(r) => match catalog::region(r) {
            Some(region) if region.available => region,
            _ => return unprocessable(&rid, refusal::REGION_NOT_AVAILABLE),
        },
        None => match catalog::REGIONS
            .iter()
            .find(|r| r.available && r.sizes.contains(&size.slug))
        {
            Some(r) => r,
            None => return unprocessable(&rid, refusal::SIZE_NOT_IN_REGION),
        },
    };
    if !region.sizes.contains(&size.slug) {
        return unprocessable(&rid, refusal::SIZE_NOT_IN_REGION);
    }
    let image_id = match image_ref {
        Value::Number(n) => n.as_u64().filter(|id| w.images.contains_key(id)),
        Value::String(slug) => w
            .images
            .values()
            .find(|i| i.public && i.slug.as_deref() == Some(slug))
            .map(|i| i.id),
        _ => None,
    };
    let Some(image_id) = image_id else {
        return unprocessable(&rid, refusal::INVALID_IMAGE);
    };
    // Machine mode: only images with a root filesystem boot.
    if let Some(refusal) = w.machines.as_ref().and_then(|m| m.refuse_image(image_id)) {
        return unprocessable(&rid, refusal);
    }
    if w.images
        .get(&image_id)
        .is_some_and(|i| !i.regions.iter().any(|r| r == region.slug))
    {
        return unprocessable(&rid, refusal::IMAGE_NOT_IN_REGION);
    }
    if req
        .user_data
        .as_ref()
        .is_some_and(|u| u.len() > MAX_USER_DATA)
    {
        return unprocessable(&rid, "user_data exceeds the 64 KiB limit");
    }
    let tags = req.tags.clone().unwrap_or_default();
    if let Some(bad) = tags.iter().find(|t| !valid_tag(t)) {
        return unprocessable(
            &rid,
            &format!("tag '{bad}' is invalid: only letters, digits, '_', '-' and ':' are allowed"),
        );
    }
    if w.droplets.len() as u64 + names.len() as u64 > w.config.droplet_limit {
        return unprocessable(&rid, refusal::DROPLET_LIMIT);
    }
    for t in &tags {
        w.tags.insert(t.clone(), ());
    }
    let now = Instant::now();
    let boot = Duration::from_millis(w.config.droplet_boot_ms);
    let plan = w.config.auto_provision;
    let vpc = req
        .vpc_uuid
        .clone()
        .unwrap_or_else(|| "5a4981aa-9653-4bd1-bef5-d6bff52042e4".to_owned());
    let mut created = Vec::new();
    for name in names {
        let id = w.alloc_droplet_id();
        w.records.insert(
            id,
            DropletRecord {
                name: name.clone(),
                image_id,
                region: region.slug.to_owned(),
                size: size.slug.to_owned(),
                tags: tags.clone(),
                projects: Vec::new(),
            },
        );
        w.droplets.insert(
            id,
            Droplet {
                id,
                name,
                size_slug: size.slug.to_owned(),
                region_slug: region.slug.to_owned(),
                image_id,
                tags: tags.clone(),
                user_data: req.user_data.clone(),
                vpc_uuid: vpc.clone(),
                created: now,
                active_at: now + boot,
                status: DropletStatus::New,
                snapshot_ids: Vec::new(),
                provision: None,
                pending_plan: plan,
            },
        );
        let action_id = w.start_action(id, "create", None);
        created.push((id, action_id));
    }
    // Machine mode: boot a container per droplet.
    if let Some(machines) = w.machines.clone() {
        machines.created(&mut w, &created);
    }
    if let Some(play) = w.config.play_vm.clone() {
        for (id, _) in &created {
            if let Some(ud) = req.user_data.clone() {
                crate::vm::spawn_player(s.clone(), *id, ud, play.clone(), boot);
            }
        }
    }
    let base = format!("http://{}", host(&headers));
    let links: Vec<Value> = created
        .iter()
        .map(|(_, a)| json!({"id": a, "rel": "create", "href": format!("{base}/v2/actions/{a}")}))
        .collect();
    let droplets: Vec<Value> = created
        .iter()
        .filter_map(|(id, _)| w.droplets.get(id))
        .map(|d| w.droplet_json(d))
        .collect();
    let body = if req.names.is_some() {
        json!({"droplets": droplets, "links": {"actions": links}})
    } else {
        json!({"droplet": droplets.into_iter().next(), "links": {"actions": links}})
    };
    json_response(StatusCode::ACCEPTED, &body)
}

async fn droplets_list(State(s): State<AppState>, q: Q, headers: HeaderMap) -> Response {
    let w = s.lock();
    let tag = q.get("tag_name");
    let name = q.get("name");
    let items = w
        .droplets
        .values()
        .filter(|d| tag.is_none_or(|t| d.tags.iter().any(|x| x == t)))
        .filter(|d| name.is_none_or(|n| &d.name == n))
        .map(|d| w.droplet_json(d))
        .collect();
    ok_page("droplets", items, &q, &headers, "/v2/droplets")
}

async fn droplets_delete_by_tag(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    q: Q,
) -> Response {
    let Some(tag) = q.get("tag_name") else {
        return unprocessable(&rid, "tag_name is required");
    };
    let mut w = s.lock();
    let ids: Vec<u64> = w
        .droplets
        .values()
        .filter(|d| d.tags.iter().any(|t| t == tag))
        .map(|d| d.id)
        .collect();
    for id in ids {
        remove_droplet(&mut w, id);
    }
    no_content()
}

fn remove_droplet(w: &mut World, id: u64) {
    w.droplets.remove(&id);
    let urn = format!("do:droplet:{id}");
    for p in &mut w.projects {
        p.resources.remove(&urn);
    }
    if w.metadata_droplet == Some(id) {
        // The metadata service of a destroyed droplet is gone with it.
        w.metadata_droplet = None;
    }
    // Machine mode: kill the container, remove its disk.
    if let Some(machines) = w.machines.clone() {
        machines.destroyed(w, id);
    }
}

async fn droplet_get(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
) -> Response {
    let w = s.lock();
    match parse_id(&id).and_then(|id| w.droplets.get(&id)) {
        Some(d) => json_response(StatusCode::OK, &json!({"droplet": w.droplet_json(d)})),
        None => not_found(&rid),
    }
}

async fn droplet_delete(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
) -> Response {
    let mut w = s.lock();
    match parse_id(&id).filter(|id| w.droplets.contains_key(id)) {
        Some(id) => {
            remove_droplet(&mut w, id);
            no_content()
        }
        None => not_found(&rid),
    }
}

async fn droplet_snapshots(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
    q: Q,
    headers: HeaderMap,
) -> Response {
    let w = s.lock();
    let Some(d) = parse_id(&id).and_then(|id| w.droplets.get(&id)) else {
        return not_found(&rid);
    };
    let items = d
        .snapshot_ids
        .iter()
        .filter_map(|i| w.images.get(i))
        .map(|i| {
            json!({
                "id": i.id,
                "name": i.name,
                "created_at": rfc3339(i.created_at),
                "regions": i.regions,
                "min_disk_size": i.min_disk_size,
                "size_gigabytes": i.size_gigabytes,
                "type": "snapshot",
            })
        })
        .collect();
    ok_page(
        "snapshots",
        items,
        &q,
        &headers,
        &format!("/v2/droplets/{}/snapshots", d.id),
    )
}

#[derive(Deserialize)]
struct ActionRequest {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
}

const SUPPORTED_ACTIONS: &[&str] = &[
    "shutdown",
    "power_off",
    "power_on",
    "reboot",
    "power_cycle",
    "snapshot",
];

async fn droplet_action_post(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let req: ActionRequest = match parse_body(&rid, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut w = s.lock();
    let Some(droplet_id) = parse_id(&id).filter(|id| w.droplets.contains_key(id)) else {
        return not_found(&rid);
    };
    if !SUPPORTED_ACTIONS.contains(&req.kind.as_str()) {
        return unprocessable(
            &rid,
            &format!(
                "action type '{}' is not supported by this simulator",
                req.kind
            ),
        );
    }
    let status = w.droplets.get(&droplet_id).map(|d| d.status);
    if status == Some(DropletStatus::New) || w.is_locked(droplet_id) {
        return unprocessable(&rid, refusal::PENDING_EVENT);
    }
    let name = if req.kind == "snapshot" {
        req.name
    } else {
        None
    };
    let action_id = w.start_action(droplet_id, &req.kind, name);
    // Machine mode: the container does the action.
    if let Some(machines) = w.machines.clone() {
        machines.action_started(&mut w, action_id);
    }
    match w.actions.get(&action_id) {
        Some(a) => json_response(StatusCode::CREATED, &json!({"action": w.action_json(a)})),
        None => not_found(&rid),
    }
}

async fn droplet_actions_list(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
    q: Q,
    headers: HeaderMap,
) -> Response {
    let w = s.lock();
    let Some(droplet_id) = parse_id(&id).filter(|id| w.droplets.contains_key(id)) else {
        return not_found(&rid);
    };
    let items = w
        .actions
        .values()
        .filter(|a| a.droplet_id == droplet_id)
        .map(|a| w.action_json(a))
        .collect();
    ok_page(
        "actions",
        items,
        &q,
        &headers,
        &format!("/v2/droplets/{droplet_id}/actions"),
    )
}

async fn droplet_action_get(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path((id, action_id)): Path<(String, String)>,
) -> Response {
    let w = s.lock();
    let action = parse_id(&action_id)
        .and_then(|a| w.actions.get(&a))
        .filter(|a| Some(a.droplet_id) == parse_id(&id));
    match action {
        Some(a) => json_response(StatusCode::OK, &json!({"action": w.action_json(a)})),
        None => not_found(&rid),
    }
}

async fn action_get(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
) -> Response {
    let w = s.lock();
    match parse_id(&id).and_then(|id| w.actions.get(&id)) {
        Some(a) => json_response(StatusCode::OK, &json!({"action": w.action_json(a)})),
        None => not_found(&rid),
    }
}

// ----- images and snapshots -----

async fn images_list(State(s): State<AppState>, q: Q, headers: HeaderMap) -> Response {
    let w = s.lock();
    let private = q.get("private").map(|v| v == "true");
    let kind = q.get("type").map(String::as_str);
    let tag = q.get("tag_name");
    let items = w
        .images
        .values()
        .filter(|i| match private {
            Some(true) => !i.public,
            _ => true,
        })
        .filter(|i| match kind {
            Some("distribution") => i.public && i.kind == "base",
            Some(_) => false,
            None => true,
        })
        .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| x == t)))
        .map(|i| w.image_json(i))
        .collect();
    ok_page("images", items, &q, &headers, "/v2/images")
}

fn find_image<'a>(w: &'a World, raw: &str) -> Option<&'a Image> {
    match parse_id(raw) {
        Some(id) => w.images.get(&id),
        // Slugs address public images only; a private image needs its id.
        None => w
            .images
            .values()
            .find(|i| i.public && i.slug.as_deref() == Some(raw)),
    }
}

async fn image_get(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
) -> Response {
    let w = s.lock();
    match find_image(&w, &id) {
        Some(i) => json_response(StatusCode::OK, &json!({"image": w.image_json(i)})),
        None => not_found(&rid),
    }
}

#[derive(Deserialize)]
struct ImageUpdate {
    name: Option<String>,
    distribution: Option<String>,
    description: Option<String>,
}

pub const DISTRIBUTIONS: &[&str] = &[
    "Arch Linux",
    "CentOS",
    "CoreOS",
    "Debian",
    "Fedora",
    "Fedora Atomic",
    "FreeBSD",
    "Gentoo",
    "openSUSE",
    "RancherOS",
    "Rocky Linux",
    "Ubuntu",
    "Unknown",
];

async fn image_update(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let req: ImageUpdate = match parse_body(&rid, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut w = s.lock();
    let Some(id) = parse_id(&id).filter(|id| w.images.get(id).is_some_and(|i| !i.public)) else {
        return not_found(&rid);
    };
    if let Some(d) = &req.distribution
        && !DISTRIBUTIONS.contains(&d.as_str())
    {
        return unprocessable(&rid, &format!("distribution '{d}' is not valid"));
    }
    if let Some(img) = w.images.get_mut(&id) {
        if let Some(n) = req.name {
            img.name = n;
        }
        if let Some(d) = req.distribution {
            img.distribution = d;
        }
        if let Some(d) = req.description {
            img.description = d;
        }
    }
    match w.images.get(&id) {
        Some(i) => json_response(StatusCode::OK, &json!({"image": w.image_json(i)})),
        None => not_found(&rid),
    }
}

fn remove_image(w: &mut World, id: u64) {
    w.images.remove(&id);
    for d in w.droplets.values_mut() {
        d.snapshot_ids.retain(|s| *s != id);
    }
    // Machine mode: the image's tree goes.
    if let Some(machines) = &w.machines {
        machines.image_removed(id);
    }
}

async fn image_delete(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
) -> Response {
    let mut w = s.lock();
    match parse_id(&id).filter(|id| w.images.get(id).is_some_and(|i| !i.public)) {
        Some(id) => {
            remove_image(&mut w, id);
            no_content()
        }
        None => not_found(&rid),
    }
}

fn snapshot_json(i: &Image) -> Value {
    json!({
        "id": i.id.to_string(),
        "name": i.name,
        "created_at": rfc3339(i.created_at),
        "regions": i.regions,
        "min_disk_size": i.min_disk_size,
        "size_gigabytes": i.size_gigabytes,
        "resource_id": i.source_droplet.map(|d| d.to_string()).unwrap_or_default(),
        "resource_type": "droplet",
        "tags": i.tags,
    })
}

async fn snapshots_list(State(s): State<AppState>, q: Q, headers: HeaderMap) -> Response {
    let w = s.lock();
    let want_volume = q.get("resource_type").is_some_and(|t| t == "volume");
    let items = w
        .images
        .values()
        .filter(|i| !want_volume && !i.public && i.kind == "snapshot")
        .map(snapshot_json)
        .collect();
    ok_page("snapshots", items, &q, &headers, "/v2/snapshots")
}

async fn snapshot_get(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
) -> Response {
    let w = s.lock();
    match parse_id(&id)
        .and_then(|id| w.images.get(&id))
        .filter(|i| i.kind == "snapshot")
    {
        Some(i) => json_response(StatusCode::OK, &json!({"snapshot": snapshot_json(i)})),
        None => not_found(&rid),
    }
}

async fn snapshot_delete(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(id): Path<String>,
) -> Response {
    let mut w = s.lock();
    match parse_id(&id).filter(|id| w.images.get(id).is_some_and(|i| i.kind == "snapshot")) {
        Some(id) => {
            remove_image(&mut w, id);
            no_content()
        }
        None => not_found(&rid),
    }
}

// ----- projects -----

fn project_json(w: &World, p: &crate::state::Project) -> Value {
    let _ = w;
    json!({
        "id": p.id,
        "owner_uuid": OWNER_UUID,
        "owner_id": 258_992,
        "name": p.name,
        "description": "",
        "purpose": "Service or API",
        "environment": "Development",
        "created_at": "2024-01-15T10:00:00Z",
        "updated_at": "2024-01-15T10:00:00Z",
        "is_default": p.is_default,
    })
}

async fn projects_list(State(s): State<AppState>, q: Q, headers: HeaderMap) -> Response {
    let w = s.lock();
    let items = w.projects.iter().map(|p| project_json(&w, p)).collect();
    ok_page("projects", items, &q, &headers, "/v2/projects")
}

async fn project_default(State(s): State<AppState>, Extension(rid): Extension<ReqId>) -> Response {
    let w = s.lock();
    match w.projects.iter().find(|p| p.is_default) {
        Some(p) => json_response(StatusCode::OK, &json!({"project": project_json(&w, p)})),
        None => not_found(&rid),
    }
}

fn resource_json(headers: &HeaderMap, urn: &str, assigned_at: &str, status: &str) -> Value {
    let self_link = match urn.strip_prefix("do:droplet:") {
        Some(id) => format!("http://{}/v2/droplets/{id}", host(headers)),
        None => format!("http://{}/v2/", host(headers)),
    };
    json!({"urn": urn, "assigned_at": assigned_at, "links": {"self": self_link}, "status": status})
}

#[derive(Deserialize)]
struct Assignment {
    resources: Vec<String>,
}

fn assign(s: &AppState, rid: &ReqId, headers: &HeaderMap, project: &str, body: &Bytes) -> Response {
    let req: Assignment = match parse_body(rid, body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut w = s.lock();
    let Some(idx) = w.projects.iter().position(|p| {
        if project == "default" {
            p.is_default
        } else {
            p.id == project
        }
    }) else {
        return not_found(rid);
    };
    let now = rfc3339(w.now_wall());
    let mut out = Vec::new();
    for urn in req.resources {
        let exists = match urn.strip_prefix("do:droplet:") {
            Some(id) => parse_id(id).is_some_and(|id| w.droplets.contains_key(&id)),
            None => {
                return unprocessable(
                    rid,
                    &format!(
                        "resource '{urn}' cannot be assigned by this simulator (only do:droplet:ID)"
                    ),
                );
            }
        };
        if !exists {
            out.push(resource_json(headers, &urn, &now, "not_found"));
            continue;
        }
        for p in &mut w.projects {
            p.resources.remove(&urn);
        }
        w.projects[idx].resources.insert(urn.clone(), now.clone());
        let project_id = w.projects[idx].id.clone();
        if let Some(r) = urn
            .strip_prefix("do:droplet:")
            .and_then(parse_id)
            .and_then(|id| w.records.get_mut(&id))
        {
            r.projects.push(project_id);
        }
        out.push(resource_json(headers, &urn, &now, "ok"));
    }
    json_response(StatusCode::OK, &json!({"resources": out}))
}

async fn project_assign(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    assign(&s, &rid, &headers, &id, &body)
}

async fn default_project_assign(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    assign(&s, &rid, &headers, "default", &body)
}

fn list_resources(
    s: &AppState,
    rid: &ReqId,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    project: &str,
) -> Response {
    let w = s.lock();
    let Some(p) = w.projects.iter().find(|p| {
        if project == "default" {
            p.is_default
        } else {
            p.id == project
        }
    }) else {
        return not_found(rid);
    };
    let items = p
        .resources
        .iter()
        .map(|(urn, at)| resource_json(headers, urn, at, "assigned"))
        .collect();
    ok_page(
        "resources",
        items,
        q,
        headers,
        &format!("/v2/projects/{project}/resources"),
    )
}

async fn project_resources_list(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Q,
) -> Response {
    list_resources(&s, &rid, &headers, &q, &id)
}

async fn default_project_resources_list(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    headers: HeaderMap,
    q: Q,
) -> Response {
    list_resources(&s, &rid, &headers, &q, DEFAULT_PROJECT_ID)
}

// ----- tags -----

fn tag_json(w: &World, name: &str) -> Value {
    let droplets = w
        .droplets
        .values()
        .filter(|d| d.tags.iter().any(|t| t == name))
        .count();
    let images = w
        .images
        .values()
        .filter(|i| i.tags.iter().any(|t| t == name))
        .count();
    json!({
        "name": name,
        "resources": {
            "count": droplets + images,
            "droplets": {"count": droplets},
            "images": {"count": images},
            "volumes": {"count": 0},
            "volume_snapshots": {"count": 0},
            "databases": {"count": 0},
        },
    })
}

#[derive(Deserialize)]
struct TagCreate {
    name: String,
}

async fn tags_create(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    body: Bytes,
) -> Response {
    let req: TagCreate = match parse_body(&rid, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if !valid_tag(&req.name) {
        return unprocessable(
            &rid,
            &format!("tag name '{}' contains invalid characters", req.name),
        );
    }
    let mut w = s.lock();
    // Tag names keep the capitalisation they were first created with.
    let name = w
        .tags
        .keys()
        .find(|t| t.eq_ignore_ascii_case(&req.name))
        .cloned()
        .unwrap_or(req.name);
    w.tags.insert(name.clone(), ());
    json_response(StatusCode::CREATED, &json!({"tag": tag_json(&w, &name)}))
}

async fn tags_list(State(s): State<AppState>, q: Q, headers: HeaderMap) -> Response {
    let w = s.lock();
    let items = w.tags.keys().map(|t| tag_json(&w, t)).collect();
    ok_page("tags", items, &q, &headers, "/v2/tags")
}

async fn tag_get(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(tag): Path<String>,
) -> Response {
    let w = s.lock();
    if w.tags.contains_key(&tag) {
        json_response(StatusCode::OK, &json!({"tag": tag_json(&w, &tag)}))
    } else {
        not_found(&rid)
    }
}

async fn tag_delete(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(tag): Path<String>,
) -> Response {
    let mut w = s.lock();
    if w.tags.remove(&tag).is_none() {
        return not_found(&rid);
    }
    for d in w.droplets.values_mut() {
        d.tags.retain(|t| t != &tag);
    }
    for i in w.images.values_mut() {
        i.tags.retain(|t| t != &tag);
    }
    no_content()
}

#[derive(Deserialize)]
struct TagResources {
    resources: Vec<TagResource>,
}

#[derive(Deserialize)]
struct TagResource {
    resource_id: String,
    resource_type: String,
}

fn tag_resources(s: &AppState, rid: &ReqId, tag: &str, body: &Bytes, add: bool) -> Response {
    let req: TagResources = match parse_body(rid, body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut w = s.lock();
    if !w.tags.contains_key(tag) {
        return not_found(rid);
    }
    // Check everything first so a bad resource changes nothing.
    for r in &req.resources {
        let found = match (r.resource_type.as_str(), parse_id(&r.resource_id)) {
            ("droplet", Some(id)) => w.droplets.contains_key(&id),
            ("image", Some(id)) => w.images.get(&id).is_some_and(|i| !i.public),
            _ => false,
        };
        if !found {
            return not_found(rid);
        }
    }
    for r in &req.resources {
        let Some(id) = parse_id(&r.resource_id) else {
            continue;
        };
        let tags = match r.resource_type.as_str() {
            "droplet" => w.droplets.get_mut(&id).map(|d| &mut d.tags),
            _ => w.images.get_mut(&id).map(|i| &mut i.tags),
        };
        if let Some(tags) = tags {
            if add && !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_owned());
            } else if !add {
                tags.retain(|t| t != tag);
            }
        }
    }
    no_content()
}

async fn tag_assign(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(tag): Path<String>,
    body: Bytes,
) -> Response {
    tag_resources(&s, &rid, &tag, &body, true)
}

async fn tag_unassign(
    State(s): State<AppState>,
    Extension(rid): Extension<ReqId>,
    Path(tag): Path<String>,
    body: Bytes,
) -> Response {
    tag_resources(&s, &rid, &tag, &body, false)
}

// ----- control API -----

async fn sim_state(State(s): State<AppState>) -> Response {
    let w = s.lock();
    json_response(StatusCode::OK, &w.summary())
}

/// `GET /_sim/requests`: the request log and the counts per route.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RequestLog {
    pub total: u64,
    pub by_route: std::collections::BTreeMap<String, u64>,
    pub entries: Vec<LoggedRequest>,
}

pub fn request_log(w: &World) -> RequestLog {
    RequestLog {
        total: w.total_requests,
        by_route: w.counts.clone(),
        entries: w.log.clone(),
    }
}

async fn sim_requests(State(s): State<AppState>) -> Response {
    let w = s.lock();
    Json(request_log(&w)).into_response()
}

async fn sim_requests_reset(State(s): State<AppState>) -> Response {
    let mut w = s.lock();
    w.log.clear();
    w.counts.clear();
    w.total_requests = 0;
    let rules: Vec<FaultRule> = w.faults.iter().map(|f| f.rule.clone()).collect();
    w.install_faults(rules);
    StatusCode::NO_CONTENT.into_response()
}

async fn sim_config_get(State(s): State<AppState>) -> Response {
    let w = s.lock();
    Json(w.config.clone()).into_response()
}

async fn sim_config_put(State(s): State<AppState>, body: Bytes) -> Response {
    let cfg: SimConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("invalid config: {e}")).into_response(),
    };
    let mut w = s.lock();
    let faults = cfg.faults.clone();
    w.config = cfg;
    w.install_faults(faults);
    StatusCode::NO_CONTENT.into_response()
}

async fn sim_faults_get(State(s): State<AppState>) -> Response {
    let w = s.lock();
    let rules: Vec<&FaultRule> = w.faults.iter().map(|f| &f.rule).collect();
    Json(json!(rules)).into_response()
}

async fn sim_faults_set(State(s): State<AppState>, body: Bytes) -> Response {
    let rules: Vec<FaultRule> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("invalid fault rules: {e}")).into_response();
        }
    };
    let mut w = s.lock();
    w.install_faults(rules);
    StatusCode::NO_CONTENT.into_response()
}

async fn sim_faults_clear(State(s): State<AppState>) -> Response {
    let mut w = s.lock();
    w.install_faults(Vec::new());
    StatusCode::NO_CONTENT.into_response()
}

async fn sim_gates(State(s): State<AppState>) -> Response {
    Json(s.gates.snapshot()).into_response()
}

async fn sim_gate_release(State(s): State<AppState>, Path(gate): Path<String>) -> Response {
    s.gates.release(&gate);
    StatusCode::NO_CONTENT.into_response()
}

async fn sim_provision(State(s): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    let plan: ProvisionPlan = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid provision plan: {e}"),
            )
                .into_response();
        }
    };
    let mut w = s.lock();
    match parse_id(&id) {
        Some(id) if w.provision(id, plan) => StatusCode::NO_CONTENT.into_response(),
        _ => (StatusCode::NOT_FOUND, format!("no droplet {id}")).into_response(),
    }
}

/// `GET /_sim/droplets/{id}/user-data`: the user-data a droplet was created
/// with (`text/plain`), 404 if there is no such droplet or it had none.
async fn sim_user_data(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let w = s.lock();
    match parse_id(&id)
        .and_then(|id| w.droplets.get(&id))
        .and_then(|d| d.user_data.clone())
    {
        Some(ud) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            ud,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no user-data for droplet {id}"),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataAs {
    droplet_id: Option<u64>,
}

async fn sim_metadata(State(s): State<AppState>, body: Bytes) -> Response {
    let req: MetadataAs = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("invalid body: {e}")).into_response(),
    };
    let mut w = s.lock();
    w.metadata_droplet = req.droplet_id;
    StatusCode::NO_CONTENT.into_response()
}

/// Body of `POST /_sim/images`: seed a private snapshot image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedImage {
    pub name: String,
    /// RFC 3339; defaults to now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_at: Option<time::OffsetDateTime>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub region: Option<String>,
}

pub fn seed_image(w: &mut World, seed: SeedImage) -> u64 {
    let id = w.alloc_image_id();
    let created_at = seed.created_at.unwrap_or_else(|| w.now_wall());
    w.images.insert(
        id,
        Image {
            id,
            name: seed.name,
            kind: "snapshot",
            distribution: "Debian".to_owned(),
            slug: None,
            public: false,
            regions: vec![seed.region.unwrap_or_else(|| "nyc3".to_owned())],
            created_at,
            min_disk_size: 25,
            size_gigabytes: 1.52,
            description: String::new(),
            tags: seed.tags,
            source_droplet: None,
        },
    );
    id
}

async fn sim_seed_image(State(s): State<AppState>, body: Bytes) -> Response {
    let seed: SeedImage = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("invalid image: {e}")).into_response(),
    };
    let mut w = s.lock();
    let id = seed_image(&mut w, seed);
    (StatusCode::CREATED, Json(json!({"image_id": id}))).into_response()
}
