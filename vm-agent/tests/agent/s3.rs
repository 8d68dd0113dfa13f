//! The real S3 server of the artifact tests (`s3-test-server`: s3s-fs on 127.0.0.1, keys
//! unique per server because tests scan every process's argv for their own server's
//! secret), plus publishing with image-builder's own publish code (the same code the host
//! CLI runs).
#![allow(dead_code)]

use artifact_store::publish::{PublishOptions, PublishReport, publish};
use artifact_store::s3::{self, S3Credentials, S3Settings};
pub use s3_test_server::{BUCKET, S3Server, pseudo_random, write_file};
use std::path::PathBuf;

/// What the agent tests do with a server beyond starting it.
pub trait Publish {
    /// Publish `paths` as build `sha` with image-builder's publish (manifest last).
    fn publish(&self, sha: &str, paths: &[PathBuf]) -> PublishReport;
}

impl Publish for S3Server {
    fn publish(&self, sha: &str, paths: &[PathBuf]) -> PublishReport {
        let settings = S3Settings {
            endpoint: self.endpoint(),
            region: "us-east-1".into(),
            bucket: BUCKET.into(),
            path_style: true,
        };
        let creds = S3Credentials::new(&self.access_key, &self.secret_key);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let client = s3::client(&settings, &creds, None);
            publish(
                &client,
                BUCKET,
                sha,
                paths,
                &PublishOptions::default(),
                None,
            )
            .await
            .expect("publish")
        })
    }
}
