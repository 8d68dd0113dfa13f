//! What a droplet's own metadata listener serves: DigitalOcean's metadata
//! service answering as that droplet (`crate::metadata`), plus a NoCloud seed
//! for cloud-init under `/nocloud/`.
//!
//! Why NoCloud and not cloud-init's DigitalOcean datasource: that datasource first
//! checks DMI (`sys_vendor` must be `DigitalOcean`), and cloud-init reads no DMI
//! data inside a container, so it can never select itself there. NoCloud's
//! network seed needs nothing but HTTP: `meta-data` (instance id and hostname),
//! `user-data` (the droplet's, byte for byte) and `vendor-data` (empty).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::Shared;
use crate::state::Droplet;

#[derive(Clone)]
struct Seed {
    shared: Arc<Shared>,
    droplet_id: u64,
}

/// The router for one droplet's metadata listener.
pub fn router(shared: Arc<Shared>, droplet_id: u64) -> Router {
    let nocloud = Router::new()
        .route("/nocloud/meta-data", get(meta_data))
        .route("/nocloud/user-data", get(user_data))
        .route("/nocloud/vendor-data", get(vendor_data))
        .with_state(Seed {
            shared: shared.clone(),
            droplet_id,
        });
    crate::metadata::router_for(shared, droplet_id).merge(nocloud)
}

fn answer(seed: &Seed, body: impl FnOnce(&Droplet) -> String) -> Response {
    let w = seed.shared.lock();
    match w.droplets.get(&seed.droplet_id) {
        Some(d) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body(d),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// YAML; the values are JSON strings (valid YAML), so a name like `on` or `1234`
/// stays a string.
fn meta_data_yaml(d: &Droplet) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quote(&d.id.to_string()),
        quote(&d.name)
    )
}

async fn meta_data(State(seed): State<Seed>) -> Response {
    answer(&seed, meta_data_yaml)
}

async fn user_data(State(seed): State<Seed>) -> Response {
    answer(&seed, |d| d.user_data.clone().unwrap_or_default())
}

async fn vendor_data(State(seed): State<Seed>) -> Response {
    answer(&seed, |_| String::new())
}
