//! S3 client settings shared by publish (host) and pull (vm-agent).
//!
//! One function builds the client: [`client`]. It pins the settings that
//! S3-compatible stores (DigitalOcean Spaces, Garage, s3s, MinIO) need:
//! - request checksum calculation and response checksum validation are
//!   **when required** (recent SDKs otherwise send CRC32 trailers with
//!   `aws-chunked` encoding, which several stores reject or mis-store);
//! - path-style addressing is a setting (`path_style`), the endpoint is given
//!   explicitly, the region defaults to `us-east-1`;
//! - credentials come from [`S3Credentials`]: the environment
//!   (`SPACES_ACCESS_KEY_ID`/`SPACES_SECRET_ACCESS_KEY`, else
//!   `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`), a 0600 `KEY=VALUE` file, or a
//!   struct the caller filled from its own secrets file. Their `Debug` is redacted.
//! - TLS is rustls (aws-lc), no OpenSSL. Names are resolved by hyper-util's
//!   `getaddrinfo` resolver (glibc NSS) unless the caller passes its own
//!   [`ResolveDns`] (e.g. a hickory adapter for a static binary).

use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    retry::RetryConfig, timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
pub use aws_smithy_runtime_api::client::dns::{ResolveDns, SharedDnsResolver};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use serde::{Deserialize, Serialize};

/// Where the artifacts live. Not secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL, e.g. `https://fra1.digitaloceanspaces.com` or `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// Region used for signing (`us-east-1` works for Spaces).
    #[serde(default = "default_region")]
    pub region: String,
    /// Bucket (Space) name.
    pub bucket: String,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-host style.
    #[serde(default)]
    pub path_style: bool,
}

pub use agent_config::default_region;

/// An access key pair. `Debug` never prints the values.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    access_key_id: String,
    secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Variable names tried by [`S3Credentials::from_env`], in order.
pub const ENV_KEY_PAIRS: [(&str, &str); 2] = [
    ("SPACES_ACCESS_KEY_ID", "SPACES_SECRET_ACCESS_KEY"),
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
];

/// Why credentials could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// One variable of a pair is set, the other is not.
    #[error("{set} is set but {missing} is not")]
    HalfPair {
        /// The variable that is set.
        set: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// No credentials anywhere.
    #[error(
        "no S3 credentials: set SPACES_ACCESS_KEY_ID and SPACES_SECRET_ACCESS_KEY (or the AWS_* names), or give a 0600 credentials file"
    )]
    Missing,
    /// The credentials file cannot be read.
    #[error("{}: cannot read credentials file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The credentials file is readable by group or others.
    #[error("{}: mode {mode:04o} is too open; credentials files must be 0600 (chmod 600)", path.display())]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file lacks a key.
    #[error("{}: line {line}: {reason}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line (0: whole file).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl S3Credentials {
    /// A key pair from values the caller already holds (e.g. vm-agent's secrets file).
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        }
    }

    /// The access key id (not secret on its own, but still not logged by this crate).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret key, for handing the pair on to a process that pulls (vm-agent's pull
    /// child reads it from a pipe). Never log it.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// From the process environment: `Ok(None)` when neither pair is set.
    pub fn from_env() -> Result<Option<Self>, CredentialsError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, CredentialsError> {
        for (id_name, secret_name) in ENV_KEY_PAIRS {
            match (get(id_name), get(secret_name)) {
                (Some(id), Some(secret)) => return Ok(Some(Self::new(id, secret))),
                (Some(_), None) => {
                    return Err(CredentialsError::HalfPair {
                        set: id_name,
                        missing: secret_name,
                    });
                }
                (None, Some(_)) => {
                    return Err(CredentialsError::HalfPair {
                        set: secret_name,
                        missing: id_name,
                    });
                }
                (None, None) => {}
            }
        }
        Ok(None)
    }

    /// From a `KEY=VALUE` file (the same names as the environment; `#` comments,
    /// optional `export ` and quotes). The file must not be readable by group or others.
    pub fn from_file(path: &Path) -> Result<Self, CredentialsError> {
        let read_err = |source| CredentialsError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CredentialsError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let mut vars = std::collections::HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                return Err(CredentialsError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: "expected KEY=VALUE".into(),
                });
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            vars.insert(k.trim().to_string(), v.to_string());
        }
        Self::from_lookup(|k| vars.get(k).filter(|v| !v.is_empty()).cloned())
            .map_err(|e| CredentialsError::Syntax {
                path: path.to_path_buf(),
                line: 0,
                reason: e.to_string(),
            })?
            .ok_or_else(|| CredentialsError::Syntax {
                path: path.to_path_buf(),
                line: 0,
                reason: "no SPACES_ACCESS_KEY_ID/SPACES_SECRET_ACCESS_KEY (or AWS_*) pair".into(),
            })
    }
}

/// A [`ResolveDns`] backed by hickory: reads `/etc/resolv.conf` and `/etc/hosts`
/// itself, so name resolution works in a statically linked binary without NSS.
#[derive(Clone)]
pub struct HickoryDns(std::sync::Arc<hickory_resolver::TokioResolver>);

impl fmt::Debug for HickoryDns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HickoryDns")
    }
}

impl HickoryDns {
    /// From the system configuration (`/etc/resolv.conf`, `/etc/hosts`).
    pub fn from_system_conf() -> Result<Self, String> {
        hickory_resolver::TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map(|r| Self(std::sync::Arc::new(r)))
            .map_err(|e| format!("cannot set up the DNS resolver from /etc/resolv.conf: {e}"))
    }

    /// As a resolver for [`client`] / `PullConfig::resolver`.
    pub fn shared(self) -> SharedDnsResolver {
        SharedDnsResolver::new(self)
    }
}

impl ResolveDns for HickoryDns {
    fn resolve_dns<'a>(
        &'a self,
        name: &'a str,
    ) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        let r = self.0.clone();
        aws_smithy_runtime_api::client::dns::DnsFuture::new(async move {
            r.lookup_ip(name)
                .await
                .map(|l| l.iter().collect())
                .map_err(aws_smithy_runtime_api::client::dns::ResolveDnsError::new)
        })
    }
}

/// Build the S3 client. `resolver`: `None` uses `getaddrinfo` (glibc NSS).
pub fn client(
    settings: &S3Settings,
    creds: &S3Credentials,
    resolver: Option<SharedDnsResolver>,
) -> aws_sdk_s3::Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http =
        aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
    let http = match resolver {
        Some(r) => http.build_with_resolver(r),
        None => http.build_https(),
    };
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(settings.endpoint.trim_end_matches('/'))
        .region(Region::new(settings.region.clone()))
        .force_path_style(settings.path_style)
        .credentials_provider(Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.clone(),
            None,
            None,
            "image-builder",
        ))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// What went wrong talking to the store, in the terms callers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteKind {
    /// 404 / NoSuchKey / NoSuchBucket.
    NotFound,
    /// 401 / 403: wrong keys, clock skew, no permission.
    AccessDenied,
    /// Could not connect, timed out, connection dropped.
    Unreachable,
    /// Anything else (5xx after retries, malformed answers).
    Other,
}

/// A classified S3 error with the server's code and message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} s3://{bucket}/{key}: {}", describe(self))]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: RemoteKind,
    /// The operation (GetObject, PutObject, …).
    pub operation: &'static str,
    /// The bucket.
    pub bucket: String,
    /// The key (or prefix).
    pub key: String,
    /// HTTP status, if a response came back.
    pub status: Option<u16>,
    /// The S3 error code (AccessDenied, SignatureDoesNotMatch, …).
    pub code: Option<String>,
    /// Server message or transport error text.
    pub message: String,
}

fn describe(e: &RemoteError) -> String {
    let mut s = match e.kind {
        RemoteKind::NotFound => "not found".to_string(),
        RemoteKind::AccessDenied => {
            "access denied (check the access key, the secret, the bucket name and the key's permissions)"
                .to_string()
        }
        RemoteKind::Unreachable => "store unreachable".to_string(),
        RemoteKind::Other => "request failed".to_string(),
    };
    if let Some(st) = e.status {
        s.push_str(&format!(" [HTTP {st}"));
        if let Some(c) = &e.code {
            s.push_str(&format!(" {c}"));
        }
        s.push(']');
    }
    if !e.message.is_empty() {
        s.push_str(": ");
        s.push_str(&e.message);
    }
    s
}

/// Classify an SDK error.
pub fn classify<E>(
    err: &SdkError<E, HttpResponse>,
    operation: &'static str,
    bucket: &str,
    key: &str,
) -> RemoteError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut out = RemoteError {
        kind: RemoteKind::Other,
        operation,
        bucket: bucket.to_string(),
        key: key.to_string(),
        status: None,
        code: None,
        message: String::new(),
    };
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            out.status = Some(status);
            out.code = se.err().code().map(str::to_string);
            out.message = se.err().message().unwrap_or_default().to_string();
            out.kind = kind_of(status, out.code.as_deref());
        }
        SdkError::ResponseError(re) => {
            let status = re.raw().status().as_u16();
            out.status = Some(status);
            out.kind = kind_of(status, None);
            out.message = error_chain(err);
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            out.kind = RemoteKind::Unreachable;
            out.message = error_chain(err);
        }
        _ => out.message = error_chain(err),
    }
    out
}

fn kind_of(status: u16, code: Option<&str>) -> RemoteKind {
    match (status, code) {
        (404, _) | (_, Some("NoSuchKey" | "NoSuchBucket" | "NotFound")) => RemoteKind::NotFound,
        (401 | 403, _)
        | (_, Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")) => {
            RemoteKind::AccessDenied
        }
        _ => RemoteKind::Other,
    }
}

/// The error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let c = S3Credentials::new("AKIDSECRETID", "very-secret-value");
        let d = format!("{c:?}");
        assert!(
            !d.contains("AKIDSECRETID") && !d.contains("very-secret-value"),
            "{d}"
        );
    }

    #[test]
    fn env_lookup_prefers_spaces_names_and_rejects_half_pairs() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = S3Credentials::from_lookup(env(&[
            ("SPACES_ACCESS_KEY_ID", "s"),
            ("SPACES_SECRET_ACCESS_KEY", "t"),
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c, S3Credentials::new("s", "t"));
        let c = S3Credentials::from_lookup(env(&[
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c, S3Credentials::new("a", "b"));
        assert!(S3Credentials::from_lookup(env(&[])).unwrap().is_none());
        let e = S3Credentials::from_lookup(env(&[("SPACES_ACCESS_KEY_ID", "s")])).unwrap_err();
        assert!(
            e.to_string().contains("SPACES_SECRET_ACCESS_KEY is not"),
            "{e}"
        );
    }

    #[test]
    fn file_must_be_private_and_complete() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("creds");
        std::fs::write(
            &p,
            "# keys\nexport SPACES_ACCESS_KEY_ID=\"id1\"\nSPACES_SECRET_ACCESS_KEY='s1'\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = S3Credentials::from_file(&p).unwrap_err();
        assert!(e.to_string().contains("too open"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            S3Credentials::from_file(&p).unwrap(),
            S3Credentials::new("id1", "s1")
        );
        std::fs::write(&p, "SPACES_ACCESS_KEY_ID=x\n").unwrap();
        let e = S3Credentials::from_file(&p).unwrap_err();
        assert!(
            e.to_string()
                .contains("but SPACES_SECRET_ACCESS_KEY is not"),
            "{e}"
        );
    }

    #[test]
    fn settings_reject_unknown_fields_and_default_region() {
        let s: S3Settings =
            serde_json::from_str(r#"{"endpoint":"http://127.0.0.1:1","bucket":"b"}"#).unwrap();
        assert_eq!(s.region, "us-east-1");
        assert!(!s.path_style);
        assert!(
            serde_json::from_str::<S3Settings>(r#"{"endpoint":"e","bucket":"b","secret":"x"}"#)
                .is_err()
        );
    }
}
