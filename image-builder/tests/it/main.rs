//! image-builder's integration tests, one binary: the AWS SDK, the simulator and the S3
//! test server are linked once instead of once per file.
//!
//! Run one area with a filter, e.g. `cargo test -p image-builder --test it do_bake::`.

#![allow(clippy::unwrap_used)]

// Shared set-up.
mod artifact_support;
mod common;
mod do_bake_support;

// The tests.
mod artifact_faults;
mod artifact_publish_pull;
mod cli_errors;
mod do_api;
mod do_api_prism;
mod do_bake;
mod do_bake_faults;
mod do_bake_kill;
mod do_bake_prism;
mod do_import;
mod exit_codes;
mod fleet;
mod fleet_cli;
mod fleet_ssh;
mod golden_disk;
mod local_bake;
mod spec_render;
