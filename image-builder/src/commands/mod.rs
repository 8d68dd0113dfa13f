//! The functions behind the commands: each takes its parsed arguments
//! ([`crate::cli`]), calls the library, prints its result on stdout and returns
//! [`Error`]. None prints an error: `main.rs` does, once.

mod artifact;
mod bake;
mod digitalocean;
mod fleet;
mod local;
mod spec;

pub use spec::{ModeReport, ValidateReport, validate_report};

use crate::cli::{BaseCommand, Cli, Command};
use crate::error::Error;

/// Run the command `cli` names; `Ok` is the exit code (0, or a job's own for `fleet run`
/// and `fleet ssh`).
pub fn run(cli: &Cli) -> Result<u8, Error> {
    let done = match &cli.command {
        Command::Render(a) => spec::render(a),
        Command::Validate(a) => spec::validate(a),
        Command::Bake(a) => bake::bake(a),
        Command::Base(BaseCommand::Build(a)) => bake::base_build(a),
        Command::RunLocal(a) => local::run_local(a),
        Command::LsLocal(a) => local::ls_local(a),
        Command::StopLocal(a) => local::stop_local(a),
        Command::Artifact(a) => artifact::run(a),
        Command::Reap(a) => digitalocean::reap(a),
        Command::Images(c) => digitalocean::images(c),
        Command::Fleet(a) => return fleet::run(a),
    };
    done.map(|()| 0)
}

/// A runtime from `builder`, with I/O and timers.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, Error> {
    builder.enable_all().build().map_err(Error::Runtime)
}

/// `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}
