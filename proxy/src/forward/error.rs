//! Why forwarding failed, and the response a client gets instead.
//!
//! A proxy error must never look like an application response: it carries the
//! `meshtrace-proxy-error` header naming the cause, with 502 for an upstream that could not be
//! reached or broke the exchange and 504 for one that took too long.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Empty};

use super::request_body::ClientBodyError;
use super::BoxError;
use crate::meta::{ErrorType, PROXY_ERROR_HEADER};

/// Everything that can go wrong between receiving a request and receiving the upstream's
/// response headers.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connection to {0} refused")]
    ConnectionRefused(SocketAddr),
    #[error("timed out connecting to {0}")]
    ConnectTimeout(SocketAddr),
    #[error("{addr} is unreachable: {source}")]
    Unreachable { addr: SocketAddr, source: io::Error },
    #[error("failed to connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("could not resolve {host}: {reason}")]
    Dns { host: String, reason: String },
    #[error("no response headers from upstream within {0:?}")]
    ResponseTimeout(Duration),
    #[error("upstream connection closed or reset: {0}")]
    Reset(#[source] BoxError),
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    /// The upstream broke HTTP (e.g. a response head hyper or the codec refuses).
    #[error("upstream failed: {0}")]
    Upstream(#[source] BoxError),
    #[error(
        "the request does not name a destination (no absolute-form target, :authority or Host)"
    )]
    NoDestination,
    #[error("invalid request target {0:?}")]
    InvalidTarget(String),
    #[error("destination {0} is this proxy; refusing to loop")]
    Loop(SocketAddr),
    #[error("invalid request: {0}")]
    InvalidHost(HostError),
    /// The client's request body broke off or broke its framing before the upstream answered.
    #[error("{source}")]
    ClientBody { incomplete: bool, source: BoxError },
}

/// How a request's `Host` and target fail RFC 9112 §3.2 (see [`super::validate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("an HTTP/1.1 request without Host")]
    Missing,
    #[error("more than one Host")]
    Several,
    #[error("a Host that is not host[:port]")]
    Invalid,
    #[error("a Host that differs from the absolute-form target's authority")]
    Mismatch,
    #[error("userinfo in the target or Host")]
    Userinfo,
}

impl HostError {
    pub fn error_type(self) -> &'static str {
        match self {
            HostError::Missing => "missing_host",
            HostError::Several => "duplicate_host",
            HostError::Invalid => "invalid_host",
            HostError::Mismatch => "host_mismatch",
            HostError::Userinfo => "userinfo",
        }
    }
}

impl ForwardError {
    /// Classifies a connect error.
    pub fn connect(addr: SocketAddr, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::ConnectionRefused => ForwardError::ConnectionRefused(addr),
            io::ErrorKind::TimedOut => ForwardError::ConnectTimeout(addr),
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                ForwardError::Unreachable { addr, source }
            }
            _ => ForwardError::Connect { addr, source },
        }
    }

    /// Classifies an error from an upstream HTTP exchange.
    pub fn upstream(error: hyper::Error) -> Self {
        let client_body = std::iter::successors(std::error::Error::source(&error), |e| e.source())
            .find_map(|cause| cause.downcast_ref::<ClientBodyError>());
        if let Some(client_body) = client_body {
            let incomplete = client_body.is_incomplete();
            return ForwardError::ClientBody {
                incomplete,
                source: error.into(),
            };
        }
        if error.is_closed() || error.is_incomplete_message() || error.is_canceled() {
            return ForwardError::Reset(error.into());
        }
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<io::Error>() {
                if matches!(
                    io.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::ConnectionAborted
                ) {
                    return ForwardError::Reset(error.into());
                }
            }
            if let Some(h2) = cause.downcast_ref::<h2::Error>() {
                if h2.is_reset() || h2.is_go_away() || h2.is_io() {
                    return ForwardError::Reset(error.into());
                }
            }
            source = cause.source();
        }
        ForwardError::Upstream(error.into())
    }

    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        status_for(self.error_type())
    }
}

impl ErrorType for ForwardError {
    fn error_type(&self) -> &'static str {
        match self {
            ForwardError::ConnectionRefused(_) => "connection_refused",
            ForwardError::ConnectTimeout(_) => "connect_timeout",
            ForwardError::Unreachable { .. } => "host_unreachable",
            ForwardError::Connect { .. } => "connect_error",
            ForwardError::Dns { .. } => "dns",
            ForwardError::ResponseTimeout(_) => "timeout",
            ForwardError::Reset(_) => "reset",
            ForwardError::Handshake { .. } => "handshake",
            ForwardError::Upstream(_) => "upstream_error",
            ForwardError::NoDestination => "no_destination",
            ForwardError::InvalidTarget(_) => "invalid_target",
            ForwardError::Loop(_) => "loop_detected",
            ForwardError::InvalidHost(error) => error.error_type(),
            ForwardError::ClientBody {
                incomplete: true, ..
            } => "client_body_incomplete",
            ForwardError::ClientBody { .. } => "invalid_request_body",
        }
    }
}

/// The status for an `error.type`: timeouts are 504, requests that name no usable destination
/// or whose Host is invalid are 400, everything else is 502. Keyed by the type name so that layers between here and the
/// upstream client may wrap the error in their own type.
pub fn status_for(error_type: &str) -> StatusCode {
    match error_type {
        "connect_timeout" | "timeout" => StatusCode::GATEWAY_TIMEOUT,
        "no_destination"
        | "invalid_target"
        | "missing_host"
        | "duplicate_host"
        | "invalid_host"
        | "host_mismatch"
        | "userinfo"
        | "invalid_request_body"
        | "client_body_incomplete" => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The response sent instead of the upstream's.
pub fn error_response<B>(error_type: &'static str) -> Response<Either<B, Empty<Bytes>>> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = status_for(error_type);
    response
        .headers_mut()
        .insert(PROXY_ERROR_HEADER, HeaderValue::from_static(error_type));
    response
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// Turns the inner service's errors into proxy error responses, so the hyper server only ever
/// sees responses.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorResponseLayer;

impl<S> tower::Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ErrorResponse<S> {
    inner: S,
}

impl<S, Req, RB> tower::Service<Req> for ErrorResponse<S>
where
    S: tower::Service<Req, Response = Response<RB>>,
    S::Error: ErrorType + fmt::Display,
{
    type Response = Response<Either<RB, Empty<Bytes>>>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The upstream client is always ready; an error here would be a bug in a layer between.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                tracing::error!(%error, "proxy stack failed to become ready");
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ErrorResponseFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ErrorResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, RB, E> Future for ErrorResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: ErrorType + fmt::Display,
{
    type Output = Result<Response<Either<RB, Empty<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match std::task::ready!(self.project().inner.poll(cx)) {
            Ok(response) => response.map(Either::Left),
            Err(error) => {
                let error_type = error.error_type();
                tracing::info!(%error, error.type = error_type, "forwarding failed");
                error_response(error_type)
            }
        };
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[test]
    fn statuses() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = ForwardError::connect(addr, io::ErrorKind::ConnectionRefused.into());
        assert_eq!(refused.error_type(), "connection_refused");
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        let timeout = ForwardError::connect(addr, io::ErrorKind::TimedOut.into());
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            ForwardError::ResponseTimeout(Duration::from_secs(1)).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ForwardError::NoDestination.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(ForwardError::Loop(addr).status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn errors_become_responses_with_the_reason_header() {
        let failing = tower::service_fn(|_: ()| async {
            Err::<Response<Empty<Bytes>>, _>(ForwardError::ConnectionRefused(
                "127.0.0.1:1".parse().unwrap(),
            ))
        });
        let mut service = tower::Layer::layer(&ErrorResponseLayer, failing);
        let response = service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[PROXY_ERROR_HEADER], "connection_refused");
    }
}
