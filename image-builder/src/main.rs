use std::process::ExitCode;

use clap::Parser as _;
use image_builder::cli::{self, Cli, Command};

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
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Render(a) => cli::render_cmd(a),
        Command::Validate(a) => cli::validate_cmd(a),
        Command::Bake(a) => cli::bake_cmd(a),
        Command::Base(cli::BaseCommand::Build(a)) => cli::base_build_cmd(a),
        Command::RunLocal(a) => cli::run_local_cmd(a),
        Command::LsLocal(a) => cli::ls_local_cmd(a),
        Command::StopLocal(a) => cli::stop_local_cmd(a),
        Command::Artifact(a) => image_builder::artifact::run(a),
        Command::Reap(a) => image_builder::backend::digitalocean::cli::reap_cmd(a),
        Command::Images(c) => image_builder::backend::digitalocean::cli::images_cmd(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::CliError::Invalid(_)) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
