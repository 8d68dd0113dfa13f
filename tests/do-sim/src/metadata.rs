//! The droplet metadata service (`http://169.254.169.254` on a real droplet),
//! served on its own listener. It answers for the droplet chosen with
//! [`crate::Sim::act_as`] (or `POST /_sim/metadata {"droplet_id": N}`), and 404s
//! when none is chosen or that droplet was destroyed. In machine mode each
//! droplet also has a listener of its own that always answers as that droplet
//! ([`router_for`]).
//!
//! Plain-text items (one value per line): `/metadata/v1/id`, `hostname`,
//! `region`, `user-data`, `tags` (and `tags/`), plus the `/metadata/v1.json`
//! object in the shape DigitalOcean's own Go client decodes.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::Shared;
use crate::state::{Droplet, World};

/// Who a metadata listener answers for.
#[derive(Clone)]
struct Asker {
    shared: Arc<Shared>,
    /// `None`: the droplet chosen with `act_as`.
    droplet_id: Option<u64>,
}

/// The shared listener: answers as the droplet chosen with `act_as`.
pub fn router(shared: Arc<Shared>) -> Router {
    routes().with_state(Asker {
        shared,
        droplet_id: None,
    })
}

/// A listener that only one droplet reaches: always answers as that droplet.
pub fn router_for(shared: Arc<Shared>, droplet_id: u64) -> Router {
    routes().with_state(Asker {
        shared,
        droplet_id: Some(droplet_id),
    })
}

fn routes() -> Router<Asker> {
    Router::new()
        .route("/metadata/v1/", get(index))
        .route("/metadata/v1/id", get(|s| item(s, |_, d| d.id.to_string())))
        .route(
            "/metadata/v1/hostname",
            get(|s| item(s, |_, d| d.name.clone())),
        )
        .route(
            "/metadata/v1/region",
            get(|s| item(s, |_, d| d.region_slug.clone())),
        )
        .route(
            "/metadata/v1/user-data",
            get(|s| item(s, |_, d| d.user_data.clone().unwrap_or_default())),
        )
        .route(
            "/metadata/v1/tags",
            get(|s| item(s, |_, d| d.tags.join("\n"))),
        )
        .route(
            "/metadata/v1/tags/",
            get(|s| item(s, |_, d| d.tags.join("\n"))),
        )
        .route(
            "/metadata/v1/interfaces/public/0/ipv4/address",
            get(|s| item(s, |w, _| w.config.droplet_ipv4.clone())),
        )
        .route("/metadata/v1.json", get(all_json))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found").into_response() })
}

fn text(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn with_droplet(asker: &Asker, f: impl FnOnce(&World, &Droplet) -> Response) -> Response {
    let w = asker.shared.lock();
    match asker
        .droplet_id
        .or(w.metadata_droplet)
        .and_then(|id| w.droplets.get(&id))
    {
        Some(d) => f(&w, d),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn item(State(s): State<Asker>, f: fn(&World, &Droplet) -> String) -> Response {
    with_droplet(&s, |w, d| text(f(w, d)))
}

async fn index(State(s): State<Asker>) -> Response {
    with_droplet(&s, |_, _| {
        text("id\nhostname\nuser-data\nvendor-data\npublic-keys\nregion\ninterfaces/\ndns/\nfloating_ip/\nreserved_ip/\ntags/\nfeatures/".to_owned())
    })
}

async fn all_json(State(s): State<Asker>) -> Response {
    with_droplet(&s, |w, d| {
        let body = json!({
            "droplet_id": d.id,
            "hostname": d.name,
            "user_data": d.user_data.clone().unwrap_or_default(),
            "vendor_data": "",
            "public_keys": [],
            "region": d.region_slug,
            "tags": d.tags,
            "interfaces": {
                "public": [{
                    "ipv4": {"ip_address": w.config.droplet_ipv4, "netmask": "255.255.240.0", "gateway": "127.0.0.1"},
                    "mac": "d2:9d:0d:6c:4e:01",
                    "type": "public",
                }],
                "private": [],
            },
            "floating_ip": {"ipv4": {"active": false}},
            "reserved_ip": {"ipv4": {"active": false}, "ipv6": {"active": false}},
            "dns": {"nameservers": ["67.207.67.2", "67.207.67.3"]},
            "features": {"dhcp_enabled": false},
        });
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    })
}
