//! `image-builder`: parse, run the command, and on failure print its error once and
//! exit with its code (README.md, "Exit codes").

use std::process::ExitCode;

use clap::Parser as _;
use image_builder::cli::Cli;
use image_builder::commands;
use image_builder::error::Error;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMAGE_BUILDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .without_time()
        .init();
    let result = match Cli::try_parse() {
        Ok(cli) => commands::run(&cli),
        // --help and --version: answers on stdout, not errors.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => Err(Error::Cli(e)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{}", e.report());
            e.exit_code().into()
        }
    }
}
