//! `packer-plugin-vmagent` (also installed as `packer-provisioner-vmagent` for
//! Packer 1.6.6). See the crate README for the handshake choice.
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PACKER_PLUGIN_VMAGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // A panic on any thread ends the plugin (as `panic = "abort"` does in release
    // builds): Packer then sees the plugin exit instead of a hung RPC.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(70);
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match packer_plugin::server::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("packer-plugin-vmagent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
