//! The API listener: our own accept loop around the axum [`Router`], so that a
//! fault can close a connection without any response, plus everything every
//! `/v2` response shares: bearer auth (401), the rate-limit window and its
//! headers (`ratelimit-limit`, `ratelimit-remaining`, `ratelimit-reset`),
//! `x-request-id`, injected faults (held responses wait at their gate) and the
//! request log.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::api::{ReqId, Shared, error_response, json_response};
use crate::config::Fault;
use crate::state::LoggedRequest;

/// Returned to hyper to make it close the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
pub struct DroppedConnection;

/// Accept connections forever (until the task is aborted).
pub async fn serve_api(listener: TcpListener, shared: Arc<Shared>, router: Router) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                handle(shared.clone(), router.clone(), req.map(Body::new))
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

/// Route key used for counting and fault matching: numeric ids and uuids become
/// `{id}`, tag names `{tag}`, ssh key fingerprints `{key}`.
pub fn route_key(method: &Method, path: &str) -> String {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let norm: Vec<String> = segs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let prev = if i > 0 { segs[i - 1] } else { "" };
            if prev == "tags" && i >= 3 {
                "{tag}".to_owned()
            } else if prev == "keys" {
                "{key}".to_owned()
            } else if !s.is_empty()
                && (s.chars().all(|c| c.is_ascii_digit()) || uuid::Uuid::parse_str(s).is_ok())
            {
                "{id}".to_owned()
            } else {
                (*s).to_owned()
            }
        })
        .collect();
    format!("{method} {}", norm.join("/"))
}

fn fault_name(f: &Fault) -> String {
    match f {
        Fault::RateLimit { .. } => "rate_limit",
        Fault::ServerError { .. } => "server_error",
        Fault::ServerErrorAfterCommit { .. } => "server_error_after_commit",
        Fault::Drop => "drop",
        Fault::DropAfterCommit => "drop_after_commit",
        Fault::Delay { .. } => "delay",
        Fault::Hold { .. } => "hold",
        Fault::Respond { .. } => "respond",
    }
    .to_owned()
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn server_error(code: u16, request_id: &str) -> Response<Body> {
    error_response(
        status_of(code),
        "server_error",
        "Server was unable to give you a response.",
        request_id,
    )
}

async fn handle(
    shared: Arc<Shared>,
    router: Router,
    mut req: Request<Body>,
) -> Result<Response<Body>, DroppedConnection> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/_sim/") {
        return Ok(infallible(router.oneshot(req).await));
    }
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let route = route_key(&method, &path);
    let request_id = uuid::Uuid::new_v4().to_string();

    let (fault, rate, reset_secs, authorized) = {
        let mut w = shared.lock();
        let fault = w.count_and_match_fault(&route);
        let rate = w.consume_rate();
        let reset_secs = w.seconds_until_reset();
        let authorized = authorized(&req, &w.config, method.as_str(), &path);
        (fault, rate, reset_secs, authorized)
    };
    let (limit, remaining, reset_epoch, exhausted) = rate;

    let log = |status: u16, fault: &Option<Fault>| {
        let mut w = shared.lock();
        let seq = w.log.len() as u64 + 1;
        w.log.push(LoggedRequest {
            seq,
            method: method.to_string(),
            route: route.clone(),
            uri: uri.clone(),
            status,
            request_id: request_id.clone(),
            fault: fault.as_ref().map(fault_name),
            token: match &authorized {
                Auth::Scoped(name) | Auth::OutOfScope(name) => Some(name.clone()),
                _ => None,
            },
        });
    };

    let mut resp = if authorized == Auth::No {
        error_response(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unable to authenticate you",
            &request_id,
        )
    } else if let Auth::OutOfScope(_) = authorized {
        // DigitalOcean's answer to a token without the scope (403 `Forbidden`).
        error_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "You are not authorized to perform this operation",
            &request_id,
        )
    } else if exhausted {
        rate_limited(reset_secs.max(1), &request_id)
    } else {
        match &fault {
            Some(Fault::Drop) => {
                log(0, &fault);
                return Err(DroppedConnection);
            }
            Some(Fault::RateLimit { retry_after_secs }) => {
                rate_limited(*retry_after_secs, &request_id)
            }
            Some(Fault::ServerError { status }) => server_error(*status, &request_id),
            Some(Fault::Respond { status, body }) => json_response(status_of(*status), body),
            _ => {
                req.extensions_mut().insert(ReqId(request_id.clone()));
                let resp = infallible(router.oneshot(req).await);
                match &fault {
                    Some(Fault::DropAfterCommit) => {
                        log(0, &fault);
                        return Err(DroppedConnection);
                    }
                    Some(Fault::ServerErrorAfterCommit { status }) => {
                        server_error(*status, &request_id)
                    }
                    Some(Fault::Delay { ms }) => {
                        tokio::time::sleep(Duration::from_millis(*ms)).await;
                        resp
                    }
                    Some(Fault::Hold { gate }) => {
                        shared.gates.hold(gate).await;
                        resp
                    }
                    _ => resp,
                }
            }
        }
    };
    let h = resp.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(limit));
    h.insert("ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("ratelimit-reset", HeaderValue::from(reset_epoch));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    log(resp.status().as_u16(), &fault);
    Ok(resp)
}

fn rate_limited(retry_after_secs: u64, request_id: &str) -> Response<Body> {
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "API Rate limit exceeded.",
        request_id,
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// No token, or an unknown one.
    No,
    /// The full-access token.
    Full,
    /// A scoped token (its name) allowed this request.
    Scoped(String),
    /// A scoped token (its name) without the scope this request needs.
    OutOfScope(String),
}

fn authorized(
    req: &Request<Body>,
    config: &crate::config::SimConfig,
    method: &str,
    path: &str,
) -> Auth {
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return Auth::No;
    };
    if let Some(scoped) = config.scoped_tokens.iter().find(|t| t.token == token) {
        return if scoped.allows(method, path) {
            Auth::Scoped(scoped.name.clone())
        } else {
            Auth::OutOfScope(scoped.name.clone())
        };
    }
    match config.token.as_deref() {
        Some(want) if token == want => Auth::Full,
        None if !token.is_empty() => Auth::Full,
        _ => Auth::No,
    }
}

fn infallible(r: Result<Response<Body>, Infallible>) -> Response<Body> {
    match r {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_normalise_ids_tags_and_keys() {
        assert_eq!(
            route_key(&Method::GET, "/v2/droplets/123"),
            "GET /v2/droplets/{id}"
        );
        assert_eq!(
            route_key(&Method::POST, "/v2/droplets/123/actions"),
            "POST /v2/droplets/{id}/actions"
        );
        assert_eq!(route_key(&Method::GET, "/v2/droplets"), "GET /v2/droplets");
        assert_eq!(
            route_key(&Method::POST, "/v2/tags/image-builder/resources"),
            "POST /v2/tags/{tag}/resources"
        );
        assert_eq!(route_key(&Method::GET, "/v2/tags"), "GET /v2/tags");
        assert_eq!(
            route_key(
                &Method::POST,
                "/v2/projects/6b5d6e0a-7c1b-4f0e-9a3e-2f6c1d0a0001/resources"
            ),
            "POST /v2/projects/{id}/resources"
        );
        assert_eq!(
            route_key(&Method::DELETE, "/v2/account/keys/3b:16:e4"),
            "DELETE /v2/account/keys/{key}"
        );
    }
}
