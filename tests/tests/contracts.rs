//! The contracts between image-builder and vm-agent, checked from both sides: what
//! image-builder writes, vm-agent's own parser must read, with the same meaning.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use image_builder::{bake, spec};
use vm_agent::config::{Config, Limit, Provider};

fn example() -> spec::LoadedSpec {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/examples/worker.yaml");
    spec::load(&p).unwrap()
}

#[test]
fn baked_agent_config_is_read_by_vm_agent_with_the_same_meaning() {
    let loaded = example();
    for (provider, want) in [
        ("local", Provider::Local),
        ("digitalocean", Provider::Digitalocean),
    ] {
        let text = bake::agent_config_toml(&loaded, provider);
        let cfg =
            Config::from_toml(&text, Path::new("/etc/vm-agent/config.toml")).unwrap_or_else(|e| {
                panic!("vm-agent rejects the config image-builder bakes:\n{e}\n---\n{text}")
            });
        assert_eq!(cfg.destroy.provider, want);
        assert_eq!(cfg.destroy.ephemeral_tag, "ephemeral");
        assert_eq!(cfg.jobs.user.as_deref(), Some("builder"));
        assert_eq!(
            cfg.timers.idle_timeout,
            Limit::After(Duration::from_secs(30 * 60))
        );
        assert_eq!(
            cfg.timers.max_lifetime,
            Limit::After(Duration::from_secs(12 * 3600))
        );
        assert_eq!(
            cfg.timers.no_job_timeout,
            Limit::After(Duration::from_secs(20 * 60))
        );
    }
}

#[test]
fn never_in_the_spec_is_never_in_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.yaml");
    std::fs::write(
        &p,
        "name: t\nbase: {qemu: bookworm}\nbuild_user: {name: builder}\nagent:\n  max_lifetime: never\n  idle_timeout: 1h30m\n",
    )
    .unwrap();
    let loaded = spec::load(&p).unwrap();
    let cfg = Config::from_toml(&bake::agent_config_toml(&loaded, "local"), &p).unwrap();
    assert_eq!(cfg.timers.max_lifetime, Limit::Never);
    assert_eq!(
        cfg.timers.idle_timeout,
        Limit::After(Duration::from_secs(5400))
    );
}

#[test]
fn image_builder_writes_the_agent_files_where_vm_agent_reads_them() {
    assert_eq!(
        vm_agent::config::DEFAULT_CONFIG_PATH,
        provision::AGENT_CONFIG_PATH
    );
    assert_eq!(
        vm_agent::config::Config::default().paths.secrets_file,
        std::path::PathBuf::from(provision::AGENT_SECRETS_PATH)
    );
}
