//! The DigitalOcean commands: `reap`, `images ls|prune`, and the options of
//! `bake --backend digitalocean`.

use std::time::Duration;

use artifact_store::s3::{S3Credentials, S3Settings};
use do_api::Poll;

use super::{print_json, runtime};
use crate::backend::digitalocean::import::{self, ImportOptions, ImportReport, ImportSource};
use crate::backend::digitalocean::{
    Connection, DoBakeError, DoBakeOptions, api, confirm, images, reap,
};
use crate::cli::digitalocean::{ConnArgs, DoBakeArgs, ImagesCommand, ImagesImportArgs, ReapArgs};
use crate::error::Error;

pub(super) fn connection(args: &ConnArgs) -> Connection {
    Connection {
        api_url: args.api_url.clone(),
        token_file: args.token_file.clone(),
        api_backoff: args.api_backoff,
    }
}

fn client(args: &ConnArgs) -> Result<do_api::Client, Error> {
    Ok(connection(args).client().map_err(api("connecting"))?)
}

/// The options of a DigitalOcean bake.
pub(super) fn bake_options(args: &DoBakeArgs) -> Result<DoBakeOptions, Error> {
    let mut o = DoBakeOptions {
        connection: connection(&args.conn),
        yes: args.yes,
        resume: args.resume.clone(),
        state_dir: args.state_dir.clone(),
        ..DoBakeOptions::default()
    };
    if let Some(p) = args.poll_interval {
        o.poll = p.max(Duration::from_millis(10));
    }
    if let Some(p) = args.power_off_after {
        o.power_off_after = p;
    }
    o.space = match (&args.space_endpoint, &args.space_bucket) {
        (Some(endpoint), Some(bucket)) => Some(S3Settings {
            endpoint: endpoint.clone(),
            region: args
                .space_region
                .clone()
                .unwrap_or_else(artifact_store::s3::default_region),
            bucket: bucket.clone(),
            path_style: args.space_path_style,
        }),
        (None, None) => None,
        _ => {
            return Err(Error::Usage(
                "--space-endpoint and --space-bucket go together".into(),
            ));
        }
    };
    if let Some(f) = &args.space_credentials_file {
        o.space_credentials =
            Some(S3Credentials::from_file(f).map_err(DoBakeError::SpaceCredentials)?);
    }
    Ok(o)
}

/// `reap`: list builder droplets older than the bound and delete them.
pub fn reap(args: &ReapArgs) -> Result<(), Error> {
    let client = client(&args.conn)?;
    runtime(tokio::runtime::Builder::new_current_thread())?.block_on(async {
        let mut report = reap::find(&client, args.older_than)
            .await
            .map_err(api("listing builder droplets"))?;
        for l in &report.too_young {
            eprintln!(
                "leaving droplet {} ({}) alone: younger than {}",
                l.id,
                l.name,
                humantime::format_duration(args.older_than)
            );
        }
        if !args.json {
            for l in &report.candidates {
                println!(
                    "builder droplet {} {} ({}, created {})",
                    l.id, l.name, l.bake_tag, l.created_at
                );
            }
        }
        // Not confirmed: the report still goes out (nothing deleted), then the error.
        let confirmed = if report.candidates.is_empty() {
            Ok(())
        } else {
            confirm(
                args.yes,
                &format!("Destroy {} droplet(s)?", report.candidates.len()),
                "destroy the droplets listed above",
            )
        };
        let go = !report.candidates.is_empty() && confirmed.is_ok();
        if go {
            reap::delete(
                &client,
                &mut report,
                Poll::new(args.poll_interval, Duration::from_secs(600)),
            )
            .await
            .map_err(api("destroying builder droplets"))?;
        }
        if args.json {
            print_json(&report);
        } else if report.candidates.is_empty() {
            println!("no builder droplets to reap");
        } else if go {
            println!("destroyed {} builder droplet(s)", report.deleted.len());
        }
        Ok(confirmed?)
    })
}

/// `images ls` / `images prune` / `images import`.
pub fn images(cmd: &ImagesCommand) -> Result<(), Error> {
    match cmd {
        ImagesCommand::Import(a) => {
            let mut report = images_import(a)?;
            report.manifest = Some(import_manifest(a, &report).write(&a.out)?);
            if a.json {
                print_json(&report);
            } else {
                println!(
                    "imported {} as custom image {} ({}, {})",
                    report.name,
                    report.image_id,
                    report.status,
                    report.regions.join(",")
                );
            }
            Ok(())
        }
        ImagesCommand::Ls(a) => {
            let client = client(&a.conn)?;
            let rows = runtime(tokio::runtime::Builder::new_current_thread())?
                .block_on(images::list(&client, &a.prefix))
                .map_err(api("listing images"))?;
            if a.json {
                print_json(&rows);
            } else {
                for r in &rows {
                    println!(
                        "{:>12}  {:<48}  {}  {:>6.2} GB  {}",
                        r.id,
                        r.name,
                        r.created_at,
                        r.size_gigabytes.unwrap_or(0.0),
                        r.regions.join(",")
                    );
                }
            }
            Ok(())
        }
        ImagesCommand::Prune(a) => {
            let family = images::Family::of_spec(&crate::spec::load(&a.spec)?.spec);
            let client = client(&a.conn)?;
            let rt = runtime(tokio::runtime::Builder::new_current_thread())?;
            let found = rt
                .block_on(images::family(&client, &family))
                .map_err(api("listing images"))?;
            for r in &found.untagged {
                eprintln!(
                    "leaving image {} ({}) alone: named like {family} but not tagged {}",
                    r.id,
                    r.name,
                    crate::backend::digitalocean::TAG
                );
            }
            let (kept, doomed) = images::split_keep(found.tagged, a.keep);
            if !a.json {
                for r in &kept {
                    println!("keep    {:>12}  {}  {}", r.id, r.name, r.created_at);
                }
                for r in &doomed {
                    println!("delete  {:>12}  {}  {}", r.id, r.name, r.created_at);
                }
            }
            // Not confirmed: the JSON still goes out (nothing deleted), then the error.
            let confirmed = if doomed.is_empty() {
                Ok(())
            } else {
                confirm(
                    a.yes,
                    &format!("Delete {} image(s)?", doomed.len()),
                    "delete the images listed above",
                )
            };
            let go = !doomed.is_empty() && confirmed.is_ok();
            if go {
                rt.block_on(images::delete(&client, &doomed))
                    .map_err(api("deleting images"))?;
            }
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"kept": kept, "deleted": if go { doomed.clone() } else { vec![] }, "would_delete": if go { vec![] } else { doomed.clone() }})
                );
            }
            Ok(confirmed?)
        }
    }
}

/// `images import`: the options from the flags, then the import.
fn images_import(a: &ImagesImportArgs) -> Result<ImportReport, Error> {
    let source = match (&a.url, &a.disk, &a.space_endpoint, &a.space_bucket) {
        (Some(url), _, _, _) => ImportSource::Url(url.clone()),
        (None, Some(path), Some(endpoint), Some(bucket)) => ImportSource::Disk {
            path: {
                if !crate::backend::qemu::disk::is_whole_disk(path)? {
                    return Err(Error::input(
                        path,
                        crate::backend::qemu::disk::NOT_A_WHOLE_DISK,
                    ));
                }
                path.clone()
            },
            virtual_size: import::disk_virtual_size(path)?,
            space: S3Settings {
                endpoint: endpoint.clone(),
                region: a
                    .space_region
                    .clone()
                    .unwrap_or_else(artifact_store::s3::default_region),
                bucket: bucket.clone(),
                path_style: a.space_path_style,
            },
            credentials: match &a.space_credentials_file {
                Some(f) => S3Credentials::from_file(f),
                None => S3Credentials::from_env()
                    .and_then(|c| c.ok_or(artifact_store::s3::CredentialsError::Missing)),
            }
            .map_err(DoBakeError::SpaceCredentials)?,
            public_url: a.space_public_url.clone(),
        },
        _ => {
            return Err(Error::Usage(
                "images import needs a DISK with --space-endpoint and --space-bucket, or --url"
                    .into(),
            ));
        }
    };
    let opts = ImportOptions {
        source,
        name: a.name.clone(),
        region: a.region.clone(),
        distribution: a.distribution.clone(),
        description: a.description.clone(),
        tags: a.tags.clone(),
        keep_upload: a.keep_upload,
        poll: Poll::new(a.poll_interval.max(Duration::from_millis(10)), a.timeout),
    };
    show_import(a, &opts);
    crate::backend::digitalocean::confirm(
        a.yes,
        "Import this image?",
        "import the image shown above",
    )?;
    let client = client(&a.conn)?;
    Ok(runtime(tokio::runtime::Builder::new_current_thread())?
        .block_on(import::import(&opts, &client))?)
}

/// What an import will make and what it bills, before anything is uploaded or created.
fn show_import(a: &ImagesImportArgs, opts: &ImportOptions) {
    let from = match &opts.source {
        ImportSource::Url(url) => format!("{url} (fetched by DigitalOcean; nothing is uploaded)"),
        ImportSource::Disk {
            path,
            space,
            virtual_size,
            ..
        } => {
            format!(
                "{} ({:.1} GiB disk), converted to a zlib qcow2 and uploaded public-read to \
                 s3://{}/imports/ until the import ends{}",
                path.display(),
                *virtual_size as f64 / f64::from(1u32 << 30),
                space.bucket,
                if a.keep_upload {
                    " (kept: --keep-upload)"
                } else {
                    ""
                }
            )
        }
    };
    eprintln!(
        "image-builder will import into DigitalOcean region {}:\n  \
         image     {} (custom image, tags {}), billed per GB-month while it exists\n  \
         from      {from}\n  \
         manifest  {}",
        opts.region,
        opts.name,
        import::image_tags(&opts.tags).join(", "),
        a.out.join("manifest.json").display()
    );
}

/// The manifest of an import: the same shape as a DigitalOcean bake's.
fn import_manifest(a: &ImagesImportArgs, report: &ImportReport) -> crate::bake::Manifest {
    let mut custom = std::collections::BTreeMap::new();
    custom.insert("image_name".to_owned(), report.name.clone());
    custom.insert("image_id".to_owned(), report.image_id.to_string());
    custom.insert("imported_from".to_owned(), report.url.clone());
    let files = a
        .disk
        .iter()
        .map(|p| crate::bake::ManifestFile {
            name: p.display().to_string(),
            size: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        })
        .collect();
    crate::bake::Manifest::single(crate::bake::ManifestBuild {
        name: report.name.clone(),
        builder_type: crate::backend::digitalocean::BUILDER_TYPE.to_owned(),
        build_time: time::OffsetDateTime::now_utc().unix_timestamp(),
        files,
        artifact_id: format!("{}:{}", a.region, report.image_id),
        packer_run_uuid: String::new(),
        custom_data: custom,
        timings: Default::default(),
        image_builder: serde_json::json!({ "import": report }),
    })
}
