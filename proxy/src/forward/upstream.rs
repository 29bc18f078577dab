//! The bottom of the HTTP stack: the upstream client, which sends each request to its
//! destination over a pooled connection of the client's protocol and bridges upgrades.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Body;

use super::body::ProxyBody;
use super::connect::connect;
use super::destination::explicit_targets;
use super::error::ForwardError;
use super::expect::{ContinueGate, ExpectAnswer};
use super::h1::exchange;
use super::hop_by_hop::{is_upgrade, strip_hop_by_hop};
use super::loop_check::OwnListeners;
use super::pool::{self, Affinity, Pool};
use super::request_body::ClientBody;
use super::resolve::Resolver;
use super::tunnel::Tunnels;
use super::BoxError;
use crate::meta::{ConnMeta, Direction, UpstreamPeer};
use crate::shutdown::WeakWatch;

/// A client connection's upgraded IO, once handed over.
type UpgradeFuture = Pin<Box<dyn Future<Output = Result<exchange::BoxIo, BoxError>> + Send>>;

/// The body of a response produced by [`Upstream`]: the upstream's own (read by hyper for h2,
/// by the codec for HTTP/1), or empty (no body, or a tunnel the proxy opened itself for an
/// explicit `CONNECT`).
pub type UpstreamBody = ProxyBody;

/// What [`Upstream`] needs to know about its direction.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub direction: Direction,
    pub connect_timeout: Duration,
    /// `None`: wait for response headers forever.
    pub response_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    /// The largest response head (HTTP/1) or header list (h2) accepted; larger is a 502.
    pub max_header_bytes: usize,
    /// The proxy's own listeners, never to be connected to.
    pub own_listeners: OwnListeners,
}

/// The bottom of the HTTP stack: picks the destination, sends the request there over a pooled
/// connection of the client's protocol, and bridges upgrades (WebSocket, `CONNECT`).
///
/// Each client connection gets its own handle ([`Upstream::for_connection`]), which keeps the
/// upstream connections that client connection uses (see [`Affinity`]).
pub struct Upstream<B> {
    client: Arc<UpstreamClient<B>>,
    affinity: Arc<Affinity<ContinueGate<ClientBody<B>>>>,
}

/// One direction's upstream client, shared by the [`Upstream`] handles of all its client
/// connections.
struct UpstreamClient<B> {
    settings: UpstreamSettings,
    pool: Arc<Pool<ContinueGate<ClientBody<B>>>>,
    resolver: Resolver,
    tunnels: Tunnels,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            client: self.client.clone(),
            affinity: self.affinity.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Upstream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.client.settings)
            .finish_non_exhaustive()
    }
}

impl<B> Upstream<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// `drain`: tunnels hold the shutdown drain open through it.
    pub fn new(settings: UpstreamSettings, resolver: Resolver, drain: WeakWatch) -> Self {
        let pool = Pool::new(
            settings.connect_timeout,
            settings.idle_timeout,
            settings.max_header_bytes,
        );
        let tunnels = Tunnels {
            direction: settings.direction,
            drain,
        };
        Upstream {
            affinity: Arc::new(Affinity::new(&pool)),
            client: Arc::new(UpstreamClient {
                settings,
                pool,
                resolver,
                tunnels,
            }),
        }
    }

    /// A handle for one more client connection: same pool and settings, its own upstream
    /// connections.
    pub fn for_connection(&self) -> Self {
        Upstream {
            client: self.client.clone(),
            affinity: Arc::new(Affinity::new(&self.client.pool)),
        }
    }

    /// The connection pool, for periodic eviction of idle connections.
    pub fn pool(&self) -> &Arc<Pool<ContinueGate<ClientBody<B>>>> {
        &self.client.pool
    }
}

impl<B> tower::Service<Request<B>> for Upstream<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<UpstreamBody>;
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ForwardError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(self.client.clone().forward(self.affinity.clone(), request))
    }
}

impl<B> UpstreamClient<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// The future of one request, boxed by [`Upstream::call`]. An `async` block rather than an
    /// `async fn`, which would keep the request twice (as passed, and as moved into its body);
    /// the test `request_future_stays_small` bounds its size.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn forward(
        self: Arc<Self>,
        affinity: Arc<Affinity<ContinueGate<ClientBody<B>>>>,
        mut request: Request<B>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ForwardError>> {
        async move {
            let meta = request.extensions().get::<Arc<ConnMeta>>();
            let transparent_dst = meta.and_then(|meta| meta.orig_dst);
            let conn_local = meta.map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |meta| {
                meta.local_addr
            });
            // A connection's original destination was checked for loops once, when it was
            // accepted; the destinations a request names are checked by `explicit_targets`.
            let resolved;
            let targets: &[SocketAddr] = match &transparent_dst {
                Some(dst) => std::slice::from_ref(dst),
                None => {
                    let own_listeners = &self.settings.own_listeners;
                    let explicit =
                        explicit_targets(&mut request, conn_local, &self.resolver, own_listeners);
                    // Boxed, as are the other rare branches below, so that the future of every
                    // request is not sized for the largest one.
                    resolved = Box::pin(explicit).await?;
                    &resolved
                }
            };

            let is_connect = request.method() == Method::CONNECT;
            if is_connect && transparent_dst.is_none() {
                return Box::pin(self.open_connect_tunnel(request, targets)).await;
            }

            let upgrade = is_upgrade(request.headers());
            strip_hop_by_hop(request.headers_mut(), upgrade);
            // Boxed (as are the other rare branches): an upgrade's hand-off waits beside the request.
            let client_upgrade = (upgrade || is_connect)
                .then(|| -> UpgradeFuture { Box::pin(exchange::on_request(&mut request)) });
            // The pool's future is held once, pinned where it is awaited (not moved into an
            // `async` block or out of a local), and the gated request only inside it.
            let mut expect = None;
            let timeout = self.settings.response_timeout;
            let (target, mut response) = if request.version() == Version::HTTP_2 {
                let gated = gate(request, &mut expect);
                let send = std::pin::pin!(within(
                    timeout,
                    self.pool.send_h2(&affinity, targets, gated)
                ));
                let (target, response) = send.await??;
                (target, response.map(ProxyBody::Hyper))
            } else {
                let gated = gate(request, &mut expect);
                let send = std::pin::pin!(within(
                    timeout,
                    self.pool.send_http1(&affinity, targets, gated)
                ));
                send.await??
            };
            if let Some(expect) = expect {
                expect.final_response(response.status());
            }

            let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS
                || (is_connect && response.status().is_success());
            let switching_protocols = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            strip_hop_by_hop(response.headers_mut(), switching_protocols);
            if let (Some(client_upgrade), true) = (client_upgrade, switched) {
                let upstream_upgrade = exchange::on_response(&mut response);
                self.tunnels
                    .spawn(async move { tokio::try_join!(client_upgrade, upstream_upgrade) });
            }
            response.extensions_mut().insert(UpstreamPeer(target));
            Ok(response)
        }
    }

    /// Explicit mode `CONNECT host:port`: the proxy itself opens the TCP connection and answers
    /// 200, then copies bytes both ways.
    async fn open_connect_tunnel(
        &self,
        mut request: Request<B>,
        targets: &[SocketAddr],
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        let timeout = self.settings.connect_timeout;
        let (target, upstream) =
            pool::first_connected(targets, |addr| connect(addr, timeout)).await?;
        let client_upgrade = exchange::on_request(&mut request);
        self.tunnels
            .spawn(async move { Ok((client_upgrade.await?, upstream)) });
        let mut response = Response::new(ProxyBody::Empty);
        response.extensions_mut().insert(UpstreamPeer(target));
        Ok(response)
    }
}

/// `request` with its body gated on `100-continue` (see [`ContinueGate`]), and into `expect`
/// what the gate needs to know of the upstream's answer.
fn gate<B>(
    request: Request<B>,
    expect: &mut Option<ExpectAnswer>,
) -> Request<ContinueGate<ClientBody<B>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (request, answer) = ContinueGate::request(request.map(ClientBody::new));
    *expect = Some(answer);
    request
}

pin_project_lite::pin_project! {
    /// `inner`, failed with [`ForwardError::ResponseTimeout`] unless it completes within the
    /// response timeout (if any). The timer sits beside the future rather than around an
    /// `async` block, so that the request's future holds the pool's future once.
    struct Within<F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        limit: Duration,
    }
}

fn within<F: Future>(limit: Option<Duration>, inner: F) -> Within<F> {
    Within {
        inner,
        timer: limit.map(tokio::time::sleep),
        limit: limit.unwrap_or_default(),
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.inner.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(ForwardError::ResponseTimeout(*this.limit))),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TracedBody;

    fn future_size<A, B, C, F: Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The most the future of one request may take: 2,496 bytes with rustc 1.95, of which the
    /// pool's HTTP/1 send takes 1,256 (it was 4,096 when an `async fn` and an `async` block
    /// each kept another copy of the request and of the send, and 3,112 while the pool's send
    /// and the codec client's kept the request as well as the request made ready to send).
    const REQUEST_FUTURE_BOUND: usize = 2816;

    /// [`Upstream::call`] boxes this future once per request, at its full size, for as long as
    /// the request is in flight: at 1,000 requests in flight each KiB of it is a MiB of the
    /// proxy's memory. A size is fixed for a given compiler; the bound leaves some headroom.
    #[test]
    fn request_future_stays_small() {
        let size = future_size(UpstreamClient::<TracedBody<ProxyBody>>::forward);
        type Bd = ContinueGate<ClientBody<TracedBody<ProxyBody>>>;
        eprintln!(
            "a request's future: {size} bytes; the pool's HTTP/1 send: {}",
            future_size(
                |a: &Arc<Pool<Bd>>, b: &Affinity<Bd>, c: (&[SocketAddr], Request<Bd>)| {
                    let (addrs, request) = c;
                    let pool = a.clone();
                    async move { pool.send_http1(b, addrs, request).await }
                }
            )
        );
        assert!(size <= REQUEST_FUTURE_BOUND, "{size}");
    }
}
