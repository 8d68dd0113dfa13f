//! The contracts between image-builder and vm-agent, checked from both sides: the agent
//! config image-builder writes for a spec (one type, `agent_config::Config`, serialized with
//! serde) is read by vm-agent's own parser with the spec's meaning.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use agent_config::{Config, Limit, Provider};
use image_builder::{bake, spec};

fn example() -> spec::LoadedSpec {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/examples/worker.yaml");
    spec::load(&p).unwrap()
}

/// What the agent on the worker reads: the text image-builder writes, parsed by vm-agent.
fn as_the_agent_reads_it(config: &Config) -> Config {
    let text = bake::agent_config_toml(config).unwrap();
    vm_agent::config::Config::from_toml(&text, Path::new(provision::AGENT_CONFIG_PATH))
        .unwrap_or_else(|e| {
            panic!("vm-agent rejects the config image-builder writes:\n{e}\n---\n{text}")
        })
}

#[test]
fn baked_agent_config_is_read_by_vm_agent_with_the_same_meaning() {
    let loaded = example();
    for provider in [Provider::Local, Provider::Digitalocean] {
        let cfg = as_the_agent_reads_it(&bake::agent_config_for(&loaded, provider, None));
        assert_eq!(cfg.destroy.provider, provider);
        assert_eq!(cfg.destroy.ephemeral_tag, "ephemeral");
        assert_eq!(cfg.jobs.user.as_deref(), Some("builder"));
        assert_eq!(cfg.socket.group.as_deref(), Some("builder"));
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
fn the_specs_artifact_section_becomes_the_agents_artifacts_table() {
    let loaded = example();
    let a = as_the_agent_reads_it(&bake::agent_config_for(&loaded, Provider::Local, None))
        .artifacts
        .expect("the example spec has agent.artifact, so the agent gets [artifacts]");
    assert_eq!(a.bucket, "ci-artifacts");
    assert_eq!(a.endpoint, "https://nyc3.digitaloceanspaces.com");
    assert_eq!(a.region, "nyc3");
    assert!(!a.required);
    assert!(!a.path_style);
    assert_eq!(a.sha, None, "the example names no sha");

    // A sha and `required` in the spec reach the agent; a flag's sha wins over the spec's.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.yaml");
    std::fs::write(
        &p,
        "name: t\nbase: {qemu: bookworm}\nbuild_user: {name: ci}\nagent:\n  artifact:\n    bucket: b\n    endpoint: http://127.0.0.1:9000\n    path_style: true\n    sha: 0123abc\n    required: true\n",
    )
    .unwrap();
    let loaded = spec::load(&p).unwrap();
    let a = as_the_agent_reads_it(&bake::agent_config_for(&loaded, Provider::Local, None))
        .artifacts
        .unwrap();
    assert_eq!(a.sha.as_deref(), Some("0123abc"));
    assert!(a.required && a.path_style);
    assert_eq!(a.region, agent_config::DEFAULT_S3_REGION);
    assert_eq!(a.endpoint, "http://127.0.0.1:9000");
    let a = as_the_agent_reads_it(&bake::agent_config_for(
        &loaded,
        Provider::Local,
        Some("fedcba9876"),
    ))
    .artifacts
    .unwrap();
    assert_eq!(a.sha.as_deref(), Some("fedcba9876"));
}

#[test]
fn a_spec_without_artifact_gives_an_agent_without_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.yaml");
    std::fs::write(
        &p,
        "name: t\nbase: {qemu: bookworm}\nbuild_user: {name: builder}\n",
    )
    .unwrap();
    let loaded = spec::load(&p).unwrap();
    let cfg = as_the_agent_reads_it(&bake::agent_config_for(&loaded, Provider::Local, None));
    assert_eq!(cfg.artifacts, None);
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
    let cfg = as_the_agent_reads_it(&bake::agent_config_for(&loaded, Provider::Local, None));
    assert_eq!(cfg.timers.max_lifetime, Limit::Never);
    assert_eq!(
        cfg.timers.idle_timeout,
        Limit::After(Duration::from_secs(5400))
    );
}
