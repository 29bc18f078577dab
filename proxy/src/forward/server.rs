//! Serving one client connection with hyper (HTTP/1 or h2, as detected) until it closes or
//! shutdown has wound it down.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use futures::future::Either;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::ProxyBody;
use super::connection_service::ConnectionService;
use super::h1::{self, HeadPool};
use super::head::HeadLimits;
use super::streams::{self, ConnectionStreams};
use super::BoxError;
use crate::config::Http1Codec;
use crate::meta::Protocol;
use crate::shutdown::Watch;

/// Serves one client connection (HTTP/1 on the proxy's codec or hyper's, as configured; h2
/// with hyper) until it closes. When shutdown starts, HTTP/1
/// closes after the response in flight and HTTP/2 sends GOAWAY and finishes its streams.
/// HTTP/1 request heads are bounded in time and size by the connection's IO
/// ([`HeadGuard`](super::head::HeadGuard)): hyper's own header-read timeout is off (it would
/// count idle time between requests too) and its head size limit sits above
/// `limits.max_bytes` as a backstop only. h2 header lists are bounded by `SETTINGS_MAX_HEADER_LIST_SIZE`.
///
/// Not itself `async`: the connection's task holds just the future of the path taken, and the
/// hyper paths (h2, and HTTP/1 when `MESHTRACE_HTTP1_CODEC=hyper`) are boxed so that the task
/// of the common HTTP/1 connection is not sized for them.
pub fn serve_connection<'a, I, S, RB>(
    protocol: Protocol,
    io: I,
    service: ConnectionService<S>,
    watch: &'a Watch,
    limits: &HeadLimits,
    http1: &'a Http1Server,
) -> impl Future<Output = ()> + Send + 'a
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<ProxyBody>, Response = Response<RB>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    if protocol == Protocol::Http1 && http1.codec == Http1Codec::Meshtrace {
        let limits = h1::Limits {
            max_head_bytes: limits.max_bytes,
            max_fields: MAX_HEADER_FIELDS,
        };
        let serve = h1::server::serve_h1(io, service, watch, limits, &http1.heads);
        return Either::Left(serve);
    }
    Either::Right(Box::pin(serve_hyper(protocol, io, service, watch, *limits)))
}

/// [`serve_connection`] with hyper.
async fn serve_hyper<I, S, RB>(
    protocol: Protocol,
    io: I,
    service: ConnectionService<S>,
    watch: &Watch,
    limits: HeadLimits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<ProxyBody>, Response = Response<RB>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let limits = &limits;
    let io = TokioIo::new(io);
    let service = HyperBodies(service);
    let signaled = watch.signaled();
    let result = match protocol {
        Protocol::H2 if streams::single_threaded_runtime() => {
            let (streams, executor) = ConnectionStreams::new();
            let connection = hyper::server::conn::http2::Builder::new(executor)
                .timer(TokioTimer::new())
                .max_header_list_size(h2_header_list_size(limits))
                .serve_connection(io, service);
            let connection = std::pin::pin!(connection);
            streams::drive(connection, streams, signaled, |connection| {
                connection.graceful_shutdown()
            })
            .await
        }
        // With several runtime threads, one connection's streams run in parallel.
        Protocol::H2 => {
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(h2_header_list_size(limits))
                .serve_connection(io, service);
            let connection = std::pin::pin!(connection);
            until_done(connection, signaled, |connection| {
                connection.graceful_shutdown()
            })
            .await
        }
        Protocol::Http1 | Protocol::Opaque => {
            let connection = hyper::server::conn::http1::Builder::new()
                .preserve_header_case(true)
                .title_case_headers(false)
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_headers(MAX_HEADER_FIELDS)
                .max_header_size(hyper_backstop(limits))
                .serve_connection(io, service)
                .with_upgrades();
            let connection = std::pin::pin!(connection);
            until_done(connection, signaled, |connection| {
                connection.graceful_shutdown()
            })
            .await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "client connection ended with an error");
    }
}

/// How HTTP/1 client connections are served: by which codec, and (for the proxy's own) from
/// which pool their head buffers come.
#[derive(Clone, Debug)]
pub struct Http1Server {
    pub codec: Http1Codec,
    pub heads: HeadPool,
}

impl Http1Server {
    pub fn new(codec: Http1Codec) -> Self {
        Http1Server {
            codec,
            heads: HeadPool::new(HEAD_POOL_CAP, HEAD_BUF_BYTES, HEAD_BUF_RETAIN_BYTES),
        }
    }
}

/// Free head buffers a listener keeps: enough for a burst of new heads without allocating,
/// few enough that an idle proxy holds little (at most this × [`HEAD_BUF_RETAIN_BYTES`]).
const HEAD_POOL_CAP: usize = 64;
/// A head buffer's first size: most request heads fit.
const HEAD_BUF_BYTES: usize = 2 * 1024;
/// Buffers that grew past this (large heads) are freed rather than pooled.
const HEAD_BUF_RETAIN_BYTES: usize = 16 * 1024;

/// The most fields an HTTP/1 head may have: well above what legal traffic uses (100
/// `tracestate` lines are legal); heads are bounded by size first.
pub const MAX_HEADER_FIELDS: usize = 1000;

/// hyper's own head size limit for HTTP/1 servers, a backstop only: above the head limit, so
/// that the [`HeadGuard`](super::head::HeadGuard) answers first.
fn hyper_backstop(limits: &HeadLimits) -> usize {
    limits.max_bytes.saturating_mul(2)
}

/// The h2 `SETTINGS_MAX_HEADER_LIST_SIZE` for the head limit.
pub fn h2_header_list_size(limits: &HeadLimits) -> u32 {
    u32::try_from(limits.max_bytes).unwrap_or(u32::MAX)
}

/// Runs `connection` to its end; once `signaled`, asks it to wind down (`graceful`) first.
async fn until_done<C: Future>(
    mut connection: Pin<&mut C>,
    signaled: impl Future<Output = ()>,
    graceful: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    tokio::select! {
        biased;
        result = connection.as_mut() => result,
        _ = signaled => {
            graceful(connection.as_mut());
            connection.await
        }
    }
}

/// Hands hyper's requests to the stack with their bodies as [`ProxyBody`].
struct HyperBodies<S>(S);

impl<S> hyper::service::Service<Request<Incoming>> for HyperBodies<S>
where
    S: hyper::service::Service<Request<ProxyBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.0.call(request.map(ProxyBody::Hyper))
    }
}
