//! Minimal pull client: what vm-agent links for artifacts (used to measure the
//! binary size of the pull on its own).
//!
//! ```text
//! IMAGE_BUILDER_S3_ENDPOINT=http://127.0.0.1:9000 IMAGE_BUILDER_S3_BUCKET=b \
//! SPACES_ACCESS_KEY_ID=… SPACES_SECRET_ACCESS_KEY=… \
//!   cargo run --release -p artifact-store --example pull -- SHA ROOT
//! ```

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use artifact_store::{PullConfig, S3Credentials, S3Settings, pull};
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sha, root] = args.as_slice() else {
        eprintln!("usage: pull SHA ROOT");
        return std::process::ExitCode::from(2);
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(endpoint), Some(bucket)) = (
        env("IMAGE_BUILDER_S3_ENDPOINT"),
        env("IMAGE_BUILDER_S3_BUCKET"),
    ) else {
        eprintln!("set IMAGE_BUILDER_S3_ENDPOINT and IMAGE_BUILDER_S3_BUCKET");
        return std::process::ExitCode::from(2);
    };
    let settings = S3Settings {
        endpoint,
        region: env("IMAGE_BUILDER_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
        bucket,
        path_style: env("IMAGE_BUILDER_S3_PATH_STYLE").is_some_and(|v| v == "true"),
    };
    let creds = match S3Credentials::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match pull(
        &PullConfig::new(settings, creds),
        sha,
        std::path::Path::new(root),
        None,
    )
    .await
    {
        Ok(r) => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error ({:?}): {e}", e.kind());
            std::process::ExitCode::from(if e.is_unavailable() { 3 } else { 1 })
        }
    }
}
