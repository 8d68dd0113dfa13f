//! Integration tests: the real `vm-agent` binary, run as a daemon in a temp dir.
mod artifacts;
mod common;
mod config_errors;
mod exit_codes;
mod fleet_contract;
mod jobs;
mod readiness;
mod s3;
mod selfdestroy;
mod unit;
