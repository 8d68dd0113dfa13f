//! Local workers: `run-local`, `ls-local`, `stop-local`.

use super::print_json;
use crate::cli::{LsLocalArgs, RunLocalArgs, StopLocalArgs};
use crate::error::Error;
use crate::{render, spec};

/// `run-local`.
pub fn run_local(args: &RunLocalArgs) -> Result<(), Error> {
    use crate::backend::qemu::local;
    use crate::render::ExtraFile;
    use agent_config::{Config as AgentConfig, Provider};

    local::preflight()?;
    if !crate::backend::qemu::disk::is_whole_disk(&args.image)? {
        return Err(Error::input(
            &args.image,
            crate::backend::qemu::disk::NOT_A_WHOLE_DISK,
        ));
    }
    let loaded = args.spec.as_deref().map(spec::load).transpose()?;
    let agent = match &args.agent_config {
        Some(path) => AgentConfig::load(path).map_err(|e| Error::input(path, e))?,
        None => {
            let mut config = match &loaded {
                Some(l) => crate::bake::agent_config_for(l, Provider::Local, args.sha.as_deref()),
                None => crate::bake::agent_config(
                    "builder",
                    &spec::Agent::default(),
                    Provider::Local,
                    args.sha.as_deref(),
                ),
            };
            if let Some(idle) = args.idle_timeout {
                config.timers.idle_timeout = idle;
            }
            config
        }
    };
    let user = agent.jobs.user.clone().unwrap_or_else(|| "builder".into());
    let mut files = vec![ExtraFile {
        path: provision::AGENT_CONFIG_PATH.into(),
        content: crate::bake::agent_config_toml(&agent)?.into_bytes(),
        mode: 0o644,
    }];
    if let Some(p) = &args.agent_secrets {
        let content = artifact_store::fsutil::read_private(p).map_err(|e| Error::input(p, e))?;
        files.push(ExtraFile {
            path: provision::AGENT_SECRETS_PATH.into(),
            content,
            mode: 0o600,
        });
    }
    let mut keys = Vec::new();
    for k in &args.ssh_keys {
        let text = std::fs::read_to_string(k).map_err(|e| Error::input(k, e))?;
        let key: spec::SshPublicKey = text
            .trim()
            .parse()
            .map_err(|m: String| Error::input(k, m))?;
        keys.push(key.to_string());
    }
    let user_data = render::worker_boot(&user, &keys, &files)?;
    let q = loaded.as_ref().map(|l| &l.spec.qemu);
    let opts = local::RunLocal {
        image: args.image.clone(),
        firmware: args.firmware,
        disk_size: args.disk_size,
        name: args.name.clone(),
        user_data,
        memory_mib: q.map(|q| q.memory.0 >> 20).unwrap_or(2048),
        cpus: q.map(|q| q.cpus).unwrap_or(2),
        accel: q.map(|q| q.accel).unwrap_or_default(),
        ssh_port: args.ssh_port,
    };
    let w = local::run(&opts)?;
    if args.json {
        print_json(&w);
    } else {
        println!("worker {} started (qemu pid {})", w.name, w.pid);
        println!("  ssh:     ssh -p {} {user}@127.0.0.1", w.ssh_port);
        println!("  console: {}", w.console.display());
        println!("  stop:    image-builder stop-local {}", w.name);
    }
    Ok(())
}

/// `ls-local`.
pub fn ls_local(args: &LsLocalArgs) -> Result<(), Error> {
    let ws = crate::backend::qemu::local::list();
    if args.json {
        print_json(&ws);
    } else if ws.is_empty() {
        println!("no local workers");
    } else {
        println!(
            "{:<16} {:<8} {:>8} {:>6}  IMAGE",
            "NAME", "STATE", "PID", "SSH"
        );
        for w in ws {
            println!(
                "{:<16} {:<8} {:>8} {:>6}  {}",
                w.name,
                if w.running { "running" } else { "stopped" },
                w.pid,
                w.ssh_port,
                w.image.display()
            );
        }
    }
    Ok(())
}

/// `stop-local`.
pub fn stop_local(args: &StopLocalArgs) -> Result<(), Error> {
    let w = crate::backend::qemu::local::stop(&args.name, std::time::Duration::from_secs(10))?;
    println!("stopped {} (pid {})", w.name, w.pid);
    Ok(())
}
