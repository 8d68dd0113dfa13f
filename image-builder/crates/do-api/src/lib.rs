//! DigitalOcean API client, shared by the bake and by
//! vm-agent's self-destroy. Async (tokio), reqwest with rustls (no OpenSSL).
//!
//! # Building a client
//! * [`Client::from_env`]: token from `DIGITALOCEAN_TOKEN` (or
//!   `DIGITALOCEAN_ACCESS_TOKEN`), base URL from `DIGITALOCEAN_API_URL`
//!   (default `https://api.digitalocean.com`, like Packer's `api_url`).
//! * [`Client::new_with_base`]`(url, token, policy)`: the test seam (simulator, Prism proxy).
//! * [`Token::from_file`] reads a token file and refuses modes wider than 0600.
//!   A [`Token`] prints as `Token(<redacted>)` and has no `Display`.
//!
//! # Behaviour
//! * [`RetryPolicy`]: 429 waits for `retry-after` (seconds or HTTP date) on any
//!   call; 5xx (not 501) and network errors are retried with capped exponential
//!   backoff and jitter for idempotent calls only; requests are paced when
//!   `ratelimit-remaining` runs low, spread until `ratelimit-reset`.
//! * Creates are never blindly retried: [`Client::create_droplet_reconciled`]
//!   lists droplets by the create's unique tag after an unknown outcome and
//!   only re-sends when none exists.
//! * Lists collect every page by following `links.pages.next`
//!   ([`Client::with_page_size`], default 200).
//! * Errors ([`DoError::Api`]) carry the method, path, HTTP status and DO's
//!   `id`, `message` and `request_id` (from the body or the `x-request-id` header).
//! * [`Client::wait_action`] fails at once on an `errored` action.
//! * [`Client::request_count`] counts every HTTP attempt (for benchmarks).
//!
//! # Calls
//! | area | methods |
//! |---|---|
//! | droplets | `create_droplet`, `create_droplet_reconciled`, `get_droplet`, `list_droplets`, `list_droplets_by_tag`, `delete_droplet`, `delete_droplets_by_tag`, `wait_droplet_gone`, `destroy_droplet`, `wait_droplet_status`, `list_droplet_snapshots`, `list_droplet_actions` |
//! | actions | `droplet_action`, `shutdown`, `power_off`, `power_on`, `snapshot`, `get_action`, `wait_action` |
//! | images | `list_private_images`, `images_named`, `newest_image_named`, `images_with_prefix`, `get_image`, `get_image_by_ref`, `update_image`, `delete_image`, `create_custom_image`, `wait_custom_image` |
//! | snapshots | `list_droplet_snapshots_all`, `delete_snapshot` |
//! | projects | `list_projects`, `default_project`, `assign_to_project` |
//! | account etc. | `account`, `sizes`, `regions`, `create_tag`, `tag_resources`, `list_ssh_keys`, `create_ssh_key`, `delete_ssh_key` |
//!
//! [`metadata::MetadataClient`] reads the droplet metadata service (`/metadata/v1/id`, `/metadata/v1/tags`).

mod client;
mod custom_images;
mod droplets;
mod error;
pub mod metadata;
pub mod models;
mod resources;
mod retry;
mod token;

pub use client::{API_URL_ENV, Client, DEFAULT_API_URL, DEFAULT_PAGE_SIZE};
pub use custom_images::{CustomImageCreate, ImportState};
pub use droplets::{Deleted, MAX_NAMES_PER_CREATE, Poll};
pub use error::{DoError, Refusal, TokenError, UNPROCESSABLE_ENTITY};
pub use models::*;
pub use retry::{RetryPolicy, parse_retry_after};
pub use token::{TOKEN_ENV_VARS, Token};
