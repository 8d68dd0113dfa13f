//! `artifact publish|ls|gc|pull`: sha-keyed builds in an S3-compatible store.

use artifact_store::progress::{Progress, mib};
use artifact_store::publish::{self, PublishOptions};
use artifact_store::pull::{self, PullConfig};
use artifact_store::remote::{self, GcOptions};
use artifact_store::s3::{self, CredentialsError, S3Credentials, S3Settings};

use super::{print_json, runtime};
use crate::cli::artifact::{
    ArtifactArgs, ArtifactCommand, GcArgs, LsArgs, PublishArgs, PullArgs, StoreArgs,
};
use crate::error::Error;

/// Run an artifact command.
pub fn run(args: &ArtifactArgs) -> Result<(), Error> {
    let rt = runtime(tokio::runtime::Builder::new_multi_thread())?;
    rt.block_on(async {
        match &args.command {
            ArtifactCommand::Publish(a) => publish_cmd(&args.store, a).await,
            ArtifactCommand::Ls(a) => ls_cmd(&args.store, a).await,
            ArtifactCommand::Gc(a) => gc_cmd(&args.store, a).await,
            ArtifactCommand::Pull(a) => pull_cmd(&args.store, a).await,
        }
    })
}

/// The store's settings, or which flag/variable is missing.
fn settings(store: &StoreArgs) -> Result<S3Settings, Error> {
    let endpoint = store.endpoint.clone().ok_or_else(|| {
        Error::Usage("no endpoint: pass --endpoint or set IMAGE_BUILDER_S3_ENDPOINT".into())
    })?;
    let bucket = store.bucket.clone().ok_or_else(|| {
        Error::Usage("no bucket: pass --bucket or set IMAGE_BUILDER_S3_BUCKET".into())
    })?;
    Ok(S3Settings {
        endpoint,
        region: store.region.clone().unwrap_or_else(s3::default_region),
        bucket,
        path_style: store.path_style,
    })
}

/// Keys from `--credentials-file`, else the environment; `None` if neither.
fn credentials(store: &StoreArgs) -> Result<Option<S3Credentials>, Error> {
    Ok(match &store.credentials_file {
        Some(p) => Some(S3Credentials::from_file(p)?),
        None => S3Credentials::from_env()?,
    })
}

fn client(store: &StoreArgs) -> Result<(aws_sdk_s3::Client, S3Settings), Error> {
    let settings = settings(store)?;
    let creds = credentials(store)?.ok_or(CredentialsError::Missing)?;
    Ok((s3::client(&settings, &creds, None), settings))
}

async fn publish_cmd(store: &StoreArgs, a: &PublishArgs) -> Result<(), Error> {
    let (client, settings) = client(store)?;
    let sha = match &a.sha {
        Some(s) => s.clone(),
        None => publish::git_head_sha(&std::env::current_dir().unwrap_or_else(|_| ".".into()))?,
    };
    let opts = PublishOptions {
        concurrency: a.concurrency,
        multipart_threshold: a.multipart_threshold,
        part_size: a.part_size,
        force: a.force,
    };
    let progress = Progress::new("publish");
    let report = publish::publish(
        &client,
        &settings.bucket,
        &sha,
        &a.paths,
        &opts,
        Some(progress.bar()),
    )
    .await;
    progress.finish();
    let report = report?;
    if a.json {
        print_json(&report);
    } else {
        println!(
            "published {} to s3://{}/builds/{}/: {} files ({} uploaded, {} skipped), {:.1} MiB uploaded in {:.1}s, manifest {}",
            report.sha,
            report.bucket,
            report.sha,
            report.files,
            report.uploaded,
            report.skipped,
            mib(report.bytes_uploaded),
            report.seconds,
            report.manifest
        );
    }
    Ok(())
}

async fn ls_cmd(store: &StoreArgs, a: &LsArgs) -> Result<(), Error> {
    let (client, settings) = client(store)?;
    if let Some(sha) = &a.sha {
        artifact_store::manifest::validate_sha(sha).map_err(|e| Error::Usage(e.to_string()))?;
        let m = publish::fetch_manifest(&client, &settings.bucket, sha)
            .await?
            .ok_or_else(|| Error::NotPublished(sha.clone()))?
            .map_err(|e| Error::InvalidManifest {
                sha: sha.clone(),
                detail: e.to_string(),
            })?;
        if a.json {
            print_json(&m);
        } else {
            println!(
                "{} created {} ({} files)",
                m.sha,
                m.created_at,
                m.files.len()
            );
            for f in &m.files {
                println!("{f}");
            }
        }
        return Ok(());
    }
    let builds = if a.all {
        remote::list_all(&client, &settings.bucket).await?
    } else {
        remote::list_builds(&client, &settings.bucket).await?
    };
    if a.json {
        print_json(&builds);
    } else {
        for b in &builds {
            match (b.complete, &b.manifest_error) {
                (true, None) => println!(
                    "{}  {}  {:>5} files  {:>10.1} MiB",
                    b.sha,
                    b.created_at.as_deref().unwrap_or("-"),
                    b.files.unwrap_or(0),
                    mib(b.manifest_bytes.unwrap_or(0))
                ),
                (true, Some(e)) => println!("{}  INVALID MANIFEST: {e}", b.sha),
                (false, _) => println!(
                    "{}  incomplete ({} objects, last write {})",
                    b.sha,
                    b.objects,
                    b.last_modified.as_deref().unwrap_or("-")
                ),
            }
        }
    }
    Ok(())
}

async fn gc_cmd(store: &StoreArgs, a: &GcArgs) -> Result<(), Error> {
    let (client, settings) = client(store)?;
    let report = remote::gc(
        &client,
        &settings.bucket,
        &GcOptions {
            keep: a.keep,
            incomplete_older_than: a.incomplete_older_than,
            dry_run: a.dry_run,
        },
    )
    .await?;
    if a.json {
        print_json(&report);
    } else {
        let verb = if a.dry_run { "would delete" } else { "deleted" };
        println!(
            "kept {} builds; {verb} {} builds and {} incomplete uploads ({} objects, {:.1} MiB)",
            report.kept.len(),
            report.deleted.len(),
            report.deleted_incomplete.len(),
            report.objects_deleted,
            mib(report.bytes_freed)
        );
    }
    Ok(())
}

async fn pull_cmd(store: &StoreArgs, a: &PullArgs) -> Result<(), Error> {
    let mut cfg = PullConfig::new(settings(store)?, credentials(store)?);
    cfg.cache_max_bytes = a.cache_max_bytes;
    cfg.max_requests = a.concurrency;
    cfg.chunk_size = a.chunk_size;
    cfg.chunks_in_flight = a.chunks_in_flight;
    let progress = Progress::new("pull");
    let report = pull::pull(&cfg, &a.sha, &a.root, Some(progress.bar())).await;
    progress.finish();
    let report = report?;
    if a.json {
        print_json(&report);
    } else if report.already_installed {
        println!(
            "{} already installed in {}",
            report.sha,
            report.dir.display()
        );
    } else {
        println!(
            "installed {} in {}: {} files, {:.1} MiB in {:.2}s ({:.1} MiB/s)",
            report.sha,
            report.dir.display(),
            report.files,
            mib(report.bytes_total),
            report.seconds,
            mib(report.bytes_total) / report.seconds.max(0.001)
        );
    }
    Ok(())
}
