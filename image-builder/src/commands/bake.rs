//! `bake` and `base build`.

use super::{print_json, runtime};
use crate::backend::qemu::{QemuBakeOptions, base};
use crate::bake::BakeRequest;
use crate::cli::{BakeArgs, BaseBuildArgs};
use crate::error::Error;

/// `bake`.
pub fn bake(args: &BakeArgs) -> Result<(), Error> {
    let req = BakeRequest {
        spec: args.spec.clone(),
        out_dir: args.out.clone(),
        agent_bin: args.agent_bin.clone(),
        artifact_sha: args.sha.clone(),
        qemu: QemuBakeOptions {
            way: args.way,
            no_boot_check: args.no_boot_check,
            boot_check_firmware: args.boot_check_firmware.clone(),
            keep_work: args.keep_work,
        },
        digitalocean: super::digitalocean::bake_options(&args.digitalocean)?,
    };
    let manifest = runtime(tokio::runtime::Builder::new_current_thread())?
        .block_on(crate::bake::bake(args.backend, &req))?;
    if args.json {
        print_json(&manifest);
    } else {
        for b in &manifest.builds {
            println!("baked {} ({})", b.name, b.builder_type);
            println!("  artifact: {}", b.artifact_id);
            for f in &b.files {
                println!("  file:     {} ({} MiB)", f.name, f.size >> 20);
            }
            let t: Vec<String> = b
                .custom_data
                .iter()
                .filter(|(k, _)| k.starts_with("time_"))
                .map(|(k, v)| format!("{}={v}s", &k[5..k.len() - 2]))
                .collect();
            println!("  timings:  {}", t.join(" "));
            println!("  manifest: {}", args.out.join("manifest.json").display());
            if args.backend == crate::bake::BackendKind::Qemu {
                // The golden disk boots by itself (BIOS or UEFI); this boots a worker from it.
                let me = std::env::args()
                    .next()
                    .unwrap_or_else(|| "image-builder".into());
                println!(
                    "  next:     boot a worker from it (in the background; stop-local stops it):"
                );
                println!(
                    "            {me} run-local {} --spec {} --ssh-key ~/.ssh/id_ed25519.pub",
                    b.artifact_id,
                    args.spec.display()
                );
            }
        }
    }
    Ok(())
}

/// `base build`.
pub fn base_build(args: &BaseBuildArgs) -> Result<(), Error> {
    let spec = base::BaseSpec {
        suite: args.suite.clone(),
        ..Default::default()
    };
    let b = base::build(&spec)?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(|source| Error::Write {
            path: out.clone(),
            source,
        })?;
        let dest = out.join(b.disk.file_name().unwrap_or_default());
        std::fs::copy(&b.disk, &dest).map_err(|source| Error::Write { path: dest, source })?;
    }
    if args.json {
        print_json(&b);
    } else {
        println!(
            "base {} ({}){}: {}",
            b.key,
            b.suite,
            if b.cache_hit {
                ", cache hit"
            } else {
                ", built"
            },
            b.dir.display()
        );
    }
    Ok(())
}
