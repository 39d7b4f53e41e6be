//! The HTTP edge: accept loop, routing, body limits, the request budget and graceful shutdown.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wxgate_core::{ErrorChain, metrics};
use wxgate_serve::{self as connections, ConnectionLimits};

use crate::pipeline::{self, CallbackError, CallbackQuery};
use crate::state::Gateway;

type Body = Full<Bytes>;

/// Serves `listener` until `shutdown` is cancelled, then stops accepting and lets in-flight
/// requests finish (up to 10 s). At most `gateway.max_connections` connections are open;
/// headers must arrive within `gateway.header_timeout_ms`.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener, shutdown: CancellationToken) {
    // The route future itself, not an async block around it: hyper keeps a slot of the
    // future's size per connection, and every wrapping layer adds to it.
    let limits = ConnectionLimits {
        max_connections: gateway.config.gateway.max_connections,
        header_read_timeout: gateway.config.gateway.header_timeout,
        ..ConnectionLimits::default()
    };
    let handler = move |request: Request<Incoming>| route(Arc::clone(&gateway), request);
    connections::serve(listener, limits, shutdown, handler).await;
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn route(gateway: Arc<Gateway>, req: Request<Incoming>) -> Response<Body> {
    let gateway = &gateway;
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            let (status, mut body) = match gateway.not_ready() {
                None => (StatusCode::OK, String::from("ready")),
                Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
            };
            // A vanished runtime accounts version is reported, not turned into a 503: the
            // accounts loaded before are still served, and taking every gateway out of the
            // load balancer would turn a loss an operator must repair into an outage.
            if let Some(problem) = gateway.accounts.problem() {
                body.push('\n');
                body.push_str(&problem);
            }
            return text(status, body);
        }
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, gateway.metrics.encode());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            return response;
        }
        _ => {}
    }
    let prefix = gateway.config.gateway.path_prefix.as_str();
    let Some(account_id) = path
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty() && !id.contains('/'))
    else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let started = tokio::time::Instant::now();
    let account_id = account_id.to_owned();
    let result = callback(gateway, &account_id, req).await;
    gateway
        .metrics
        .request_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok((body, outcome)) => {
            gateway.metrics.request(&account_id, outcome);
            text(StatusCode::OK, body)
        }
        Err(error) => {
            let (status, outcome) = error.status();
            gateway.metrics.request(&account_id, outcome);
            if status.is_server_error() {
                tracing::warn!(account_id = %account_id, error = %ErrorChain(&error), status = status.as_u16(), "callback not accepted");
            } else {
                tracing::info!(account_id = %account_id, error = %ErrorChain(&error), status = status.as_u16(), "callback refused");
            }
            text(status, status.canonical_reason().unwrap_or(""))
        }
    }
}

async fn callback(
    gateway: &Arc<Gateway>,
    account_id: &str,
    req: Request<Incoming>,
) -> Result<(Bytes, &'static str), CallbackError> {
    let account = gateway.account(account_id)?;
    let (head, body) = req.into_parts();
    let query = CallbackQuery::parse(head.uri.query().unwrap_or(""))?;
    if head.method == Method::GET {
        return pipeline::verify_get(&account, &query).map(|body| (body, "verified"));
    }
    let max = gateway.config.gateway.max_body_bytes;
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(CallbackError::BodyTooLarge);
    }
    let budget = gateway.config.gateway.request_budget;
    let work = async {
        let body = Limited::new(body, max)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    CallbackError::BodyTooLarge
                } else {
                    CallbackError::BodyRead
                }
            })?
            .to_bytes();
        pipeline::handle_post(gateway, &account, &query, &body).await
    };
    match tokio::time::timeout(budget, work).await {
        Ok(Ok(answer)) => Ok((answer.body, answer.outcome)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CallbackError::BudgetExceeded),
    }
}
