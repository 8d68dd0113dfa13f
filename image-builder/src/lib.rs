//! image-builder: turn one image spec into cloud-init user-data, golden images and
//! sha-keyed build artifacts.
//!
//! The crate is a library first; `main.rs` is a thin CLI: it parses [`cli::Cli`],
//! hands it to [`commands::run`], and prints the one [`error::Error`] a command can
//! return, exiting with its code. The contracts it shares with the worker live in
//! their own crates, which it depends on: `provision` (in-VM steps, seal report),
//! `agent-config` (vm-agent's config and secrets), `do-api` (the DigitalOcean API
//! client) and `artifact-store` (sha-keyed builds in an S3-compatible store).

pub mod agent_binary;
pub mod backend;
pub mod bake;
pub mod cli;
pub mod commands;
pub mod error;
pub mod fleet;
pub mod render;
pub mod spec;
pub mod validate;
