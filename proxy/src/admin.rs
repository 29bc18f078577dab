//! The admin server: liveness, readiness, Prometheus metrics and a loopback-only shutdown hook.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::shutdown::Trigger;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints report on and act on.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// Set once every listener is bound and accepting; cleared when shutdown starts.
    pub ready: Arc<AtomicBool>,
    pub shutdown: Trigger,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

/// Only a client on this machine may stop the proxy (the kubelet's preStop hook runs in the
/// pod's network namespace; other pods do not).
pub fn is_loopback_client(addr: IpAddr) -> bool {
    addr.to_canonical().is_loopback()
}

/// Answers one admin request.
pub fn respond<B>(
    state: &AdminState,
    request: &Request<B>,
    client: SocketAddr,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") => {
            if state.ready.load(Ordering::Acquire) && !state.shutdown.is_triggered() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut body = String::new();
            if let Err(error) =
                prometheus_client::encoding::text::encode(&mut body, &state.registry)
            {
                tracing::error!(%error, "failed to encode metrics");
                return text(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n");
            }
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        (&Method::POST, "/shutdown") => {
            if is_loopback_client(client.ip()) {
                tracing::info!(%client, "shutdown requested through the admin server");
                state.shutdown.trigger();
                text(StatusCode::OK, "shutting down\n")
            } else {
                tracing::warn!(%client, "refused a shutdown request from a non-loopback client");
                text(
                    StatusCode::FORBIDDEN,
                    "shutdown is only accepted from loopback\n",
                )
            }
        }
        (_, "/live" | "/ready" | "/metrics" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves the admin endpoints until `stop` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let (stream, client) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let response = respond(&state, &request, client);
                    async move { Ok::<_, Infallible>(response) }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AdminState {
        AdminState {
            registry: Arc::new(Registry::default()),
            ready: Arc::new(AtomicBool::new(false)),
            shutdown: Trigger::default(),
        }
    }

    fn request(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    #[test]
    fn loopback_check() {
        assert!(is_loopback_client("127.0.0.1".parse().unwrap()));
        assert!(is_loopback_client("127.8.9.10".parse().unwrap()));
        assert!(is_loopback_client("::1".parse().unwrap()));
        assert!(is_loopback_client("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback_client("10.0.0.7".parse().unwrap()));
        assert!(!is_loopback_client("::ffff:10.0.0.7".parse().unwrap()));
        assert!(!is_loopback_client("0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn shutdown_only_from_loopback() {
        let state = state();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let refused = respond(&state, &request(Method::POST, "/shutdown"), remote);
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(!state.shutdown.is_triggered());

        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let accepted = respond(&state, &request(Method::POST, "/shutdown"), local);
        assert_eq!(accepted.status(), StatusCode::OK);
        assert!(state.shutdown.is_triggered());
        assert_eq!(
            respond(&state, &request(Method::GET, "/shutdown"), local).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn readiness_follows_the_flag_and_shutdown() {
        let state = state();
        let client: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ready = || respond(&state, &request(Method::GET, "/ready"), client).status();
        assert_eq!(ready(), StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Release);
        assert_eq!(ready(), StatusCode::OK);
        state.shutdown.trigger();
        assert_eq!(ready(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            respond(&state, &request(Method::GET, "/live"), client).status(),
            StatusCode::OK
        );
    }
}
