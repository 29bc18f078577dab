//! Serving one client connection with hyper (HTTP/1 or h2, as detected) until it closes or
//! shutdown has wound it down.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection_service::ConnectionService;
use super::streams::{self, ConnectionStreams};
use super::BoxError;
use crate::meta::Protocol;
use crate::shutdown::Watch;

/// Serves one client connection with hyper until it closes. When shutdown starts, HTTP/1
/// closes after the response in flight and HTTP/2 sends GOAWAY and finishes its streams.
/// `header_read_timeout` bounds how long an HTTP/1 client may take to send a request's head,
/// idle time between requests included; `None` sets no bound (hyper's default is 30 s, which
/// arms a timer for every request and closes keep-alive connections that idle longer, earlier
/// than many clients' pools expect).
pub async fn serve_connection<I, S, RB>(
    protocol: Protocol,
    io: I,
    service: ConnectionService<S>,
    watch: &Watch,
    header_read_timeout: Option<Duration>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<RB>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let io = TokioIo::new(io);
    let signaled = watch.signaled();
    let result = match protocol {
        // Boxed so that the (more common) HTTP/1 connection's task is not sized for h2.
        Protocol::H2 if streams::single_threaded_runtime() => {
            Box::pin(async {
                let (streams, executor) = ConnectionStreams::new();
                let connection = hyper::server::conn::http2::Builder::new(executor)
                    .timer(TokioTimer::new())
                    .serve_connection(io, service);
                let connection = std::pin::pin!(connection);
                streams::drive(connection, streams, signaled, |connection| {
                    connection.graceful_shutdown()
                })
                .await
            })
            .await
        }
        // With several runtime threads, one connection's streams run in parallel.
        Protocol::H2 => {
            Box::pin(async {
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(io, service);
                let connection = std::pin::pin!(connection);
                until_done(connection, signaled, |connection| {
                    connection.graceful_shutdown()
                })
                .await
            })
            .await
        }
        Protocol::Http1 | Protocol::Opaque => {
            let connection = hyper::server::conn::http1::Builder::new()
                .preserve_header_case(true)
                .title_case_headers(false)
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
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
