//! `do-sim --listen 127.0.0.1:PORT [--metadata-listen 127.0.0.1:PORT] [--config faults.json]`
//! `do-sim --sweep [--config machines.json]`
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Stateful DigitalOcean API simulator (see tests/do-sim/README.md).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of the /v2 API (and the /_sim control API).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address of the droplet metadata service.
    #[arg(long, default_value = "127.0.0.1:0")]
    metadata_listen: SocketAddr,
    /// JSON config: timings, limits, restricted sizes, faults (see README).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Remove the leftovers of killed machine-mode runs (containers, trees) under
    /// the state directory (`machines.state_dir` of --config, else /var/tmp/do-sim)
    /// and exit.
    #[arg(long)]
    sweep: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading simulator config {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("parsing simulator config {}", path.display()))?
        }
        None => do_sim::SimConfig::default(),
    };
    if args.sweep {
        let config: do_sim::SimConfig = config;
        let state_dir = config.machines.map_or_else(
            || PathBuf::from(do_sim::machine::DEFAULT_STATE_DIR),
            |m| m.state_dir,
        );
        let swept = do_sim::machine::sweep(&state_dir)
            .with_context(|| format!("sweeping {}", state_dir.display()))?;
        println!(
            "{}",
            serde_json::json!({"runs": swept.runs, "processes": swept.processes})
        );
        return Ok(());
    }
    let api = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let md = tokio::net::TcpListener::bind(args.metadata_listen)
        .await
        .with_context(|| format!("binding {}", args.metadata_listen))?;
    let sim = do_sim::Sim::start_on(config, api, md).context("starting the simulator")?;
    // Data on stdout (machine-readable), logs on stderr.
    println!(
        "{}",
        serde_json::json!({"api_url": sim.api_url(), "metadata_url": sim.metadata_url()})
    );
    tracing::info!(api = %sim.api_url(), metadata = %sim.metadata_url(), "do-sim listening");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
