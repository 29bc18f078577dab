//! The HTTP path: serving client connections (HTTP/1 or h2, as detected) and forwarding each
//! request to its upstream with the same protocol, unchanged apart from hop-by-hop headers.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connect::connect;
use super::error::ForwardError;
use super::pool::{Affinity, Pool};
use super::resolve::Resolver;
use super::streams::{self, ConnectionStreams};
use crate::detect::Protocol;
use crate::listen::is_own_listener;
use crate::meta::{ConnMeta, Direction, UpstreamPeer};
use crate::metrics::DirectionMetrics;
use crate::shutdown::{Watch, WeakWatch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a response produced by [`Upstream`]: the upstream's own, or empty for a tunnel
/// the proxy opened itself (explicit `CONNECT`).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// What [`Upstream`] needs to know about its direction.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub direction: Direction,
    pub connect_timeout: Duration,
    /// `None`: wait for response headers forever.
    pub response_timeout: Option<Duration>,
    pub idle_timeout: Duration,
    /// The proxy's own listeners, never to be connected to.
    pub own_listeners: Vec<SocketAddr>,
}

/// The bottom of the HTTP stack: picks the destination, sends the request there over a pooled
/// connection of the client's protocol, and bridges upgrades (WebSocket, `CONNECT`).
///
/// Each client connection gets its own handle ([`Upstream::for_connection`]), which keeps the
/// upstream connections that client connection uses (see [`Affinity`]).
pub struct Upstream<B> {
    shared: Arc<Shared<B>>,
    affinity: Arc<Affinity<B>>,
}

struct Shared<B> {
    settings: UpstreamSettings,
    pool: Arc<Pool<B>>,
    resolver: Resolver,
    /// Tunnels outlive the request that opened them; they hold the drain open through this.
    tunnels: WeakWatch,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Upstream {
            shared: self.shared.clone(),
            affinity: self.affinity.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Upstream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl<B> Upstream<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub fn new(settings: UpstreamSettings, resolver: Resolver, tunnels: WeakWatch) -> Self {
        let pool = Pool::new(settings.connect_timeout, settings.idle_timeout);
        Upstream {
            affinity: Arc::new(Affinity::new(&pool)),
            shared: Arc::new(Shared {
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
            shared: self.shared.clone(),
            affinity: Arc::new(Affinity::new(&self.shared.pool)),
        }
    }

    /// The connection pool, for periodic eviction of idle connections.
    pub fn pool(&self) -> &Arc<Pool<B>> {
        &self.shared.pool
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
        Box::pin(self.shared.clone().forward(self.affinity.clone(), request))
    }
}

impl<B> Shared<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    async fn forward(
        self: Arc<Self>,
        affinity: Arc<Affinity<B>>,
        mut request: Request<B>,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        let meta = request.extensions().get::<Arc<ConnMeta>>();
        let transparent_dst = meta.and_then(|meta| meta.orig_dst);
        let conn_local = meta.map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |meta| {
            meta.local_addr
        });
        let resolved;
        let targets: &[SocketAddr] = match &transparent_dst {
            Some(dst) => std::slice::from_ref(dst),
            None => {
                let authority = explicit_destination(&mut request)?;
                let port = authority.port_u16().unwrap_or(80);
                // Boxed, as are the other rare branches below, so that the future of every
                // request is not sized for the largest one.
                resolved = Box::pin(self.resolver.resolve(authority.host(), port)).await?;
                &resolved
            }
        };
        // A connection's original destination was checked once, when it was accepted.
        if transparent_dst.is_none() {
            if let Some(own) = targets
                .iter()
                .find(|target| is_own_listener(**target, &self.settings.own_listeners, conn_local))
            {
                return Err(ForwardError::Loop(*own));
            }
        }

        let is_connect = request.method() == Method::CONNECT;
        if is_connect && transparent_dst.is_none() {
            return Box::pin(self.open_connect_tunnel(request, targets)).await;
        }

        let upgrade = is_upgrade(request.headers());
        strip_hop_by_hop(request.headers_mut(), upgrade);
        let client_upgrade = (upgrade || is_connect).then(|| hyper::upgrade::on(&mut request));

        let send = async {
            if request.version() == Version::HTTP_2 {
                self.pool.send_h2(&affinity, targets, request).await
            } else {
                self.pool.send_http1(&affinity, targets, request).await
            }
        };
        let (target, mut response) = match self.settings.response_timeout {
            Some(limit) => tokio::time::timeout(limit, send)
                .await
                .map_err(|_| ForwardError::ResponseTimeout(limit))??,
            None => send.await?,
        };

        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS
            || (is_connect && response.status().is_success());
        let switching_protocols = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(response.headers_mut(), switching_protocols);
        if let (Some(client_upgrade), true) = (client_upgrade, switched) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            self.spawn_tunnel(async move {
                let (client, upstream) = tokio::try_join!(client_upgrade, upstream_upgrade)?;
                Ok((TokioIo::new(client), TokioIo::new(upstream)))
            });
        }
        response.extensions_mut().insert(UpstreamPeer(target));
        Ok(response.map(Either::Left))
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
            super::pool::first_connected(targets, |addr| connect(addr, timeout)).await?;
        let client_upgrade = hyper::upgrade::on(&mut request);
        self.spawn_tunnel(async move { Ok((TokioIo::new(client_upgrade.await?), upstream)) });
        let mut response = Response::new(Either::Right(Empty::new()));
        response.extensions_mut().insert(UpstreamPeer(target));
        Ok(response)
    }

    fn spawn_tunnel<F, C, U>(&self, sides: F)
    where
        F: Future<Output = Result<(C, U), hyper::Error>> + Send + 'static,
        C: AsyncRead + AsyncWrite + Unpin + Send,
        U: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(watch) = self.tunnels.upgrade() else {
            return;
        };
        let direction = self.settings.direction.as_str();
        tokio::spawn(async move {
            let _in_flight = watch;
            match sides.await {
                Ok((mut client, mut upstream)) => {
                    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        Ok((sent, received)) => {
                            tracing::debug!(direction, sent, received, "tunnel closed")
                        }
                        Err(error) => tracing::debug!(direction, %error, "tunnel failed"),
                    }
                }
                Err(error) => tracing::debug!(direction, %error, "upgrade failed"),
            }
        });
    }
}

/// In explicit (forward-proxy) mode, the destination named by the request: the
/// authority-form target of `CONNECT`, the absolute-form target (which is then rewritten to
/// origin-form with a matching Host, as a forward proxy must), h2's `:authority`, or Host.
pub fn explicit_destination<B>(request: &mut Request<B>) -> Result<Authority, ForwardError> {
    let invalid = |request: &Request<B>| ForwardError::InvalidTarget(request.uri().to_string());
    if request.method() == Method::CONNECT {
        return match request.uri().authority() {
            Some(authority) if authority.port_u16().is_some() => Ok(authority.clone()),
            _ => Err(invalid(request)),
        };
    }
    if request.version() == Version::HTTP_2 {
        if let Some(authority) = request.uri().authority() {
            return Ok(authority.clone());
        }
    } else if let Some(authority) = request.uri().authority().cloned() {
        if request.uri().scheme() != Some(&Scheme::HTTP) {
            return Err(invalid(request));
        }
        let origin_form = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse::<Uri>()
            .map_err(|_| invalid(request))?;
        *request.uri_mut() = origin_form;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid(request))?;
        request.headers_mut().insert(header::HOST, host);
        return Ok(authority);
    }
    let host = request
        .headers()
        .get(header::HOST)
        .ok_or(ForwardError::NoDestination)?;
    host.to_str()
        .ok()
        .and_then(|host| host.parse::<Authority>().ok())
        .ok_or_else(|| ForwardError::InvalidTarget(format!("Host: {host:?}")))
}

/// Whether an HTTP/1.1 message asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, option: &str) -> bool {
    connection_options(headers).any(|o| o.eq_ignore_ascii_case(option))
}

fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|option| !option.is_empty())
}

/// Removes the hop-by-hop fields of RFC 9110 §7.6.1: those named by `Connection`, then
/// `Connection`, `Proxy-Connection`, `Keep-Alive`, `TE` (except `trailers`, which the proxy
/// honours end to end), `Transfer-Encoding` and `Upgrade`. With `keep_upgrade`, the upgrade
/// handshake (`Connection: upgrade` and `Upgrade`) is forwarded, since the proxy bridges it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the names is cheaper than the seven
    // hashed lookups below.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_options(headers)
            .filter(|option| !(keep_upgrade && option.eq_ignore_ascii_case("upgrade")))
            .filter_map(|option| HeaderName::from_bytes(option.as_bytes()).ok())
            .collect();
        let only_upgrade = keep_upgrade
            && named.is_empty()
            && headers.get_all(header::CONNECTION).iter().count() == 1;
        for name in named {
            if name != header::TE || !keep_te(headers) {
                headers.remove(&name);
            }
        }
        if keep_upgrade {
            if !only_upgrade {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
        } else {
            headers.remove(header::CONNECTION);
        }
    }
    for name in ["proxy-connection", "keep-alive"] {
        headers.remove(name);
    }
    if !keep_te(headers) {
        headers.remove(header::TE);
    }
    headers.remove(header::TRANSFER_ENCODING);
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// The fields `strip_hop_by_hop` may remove without being named by `Connection`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// `TE: trailers` is kept: the proxy forwards trailers, and HTTP/2 (gRPC) requires it.
fn keep_te(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TE).iter();
    matches!(
        (values.next(), values.next()),
        (Some(value), None) if value.as_bytes().eq_ignore_ascii_case(b"trailers")
    )
}

/// Counts every request by status class and its time to response headers.
#[derive(Clone, Debug)]
pub struct RequestMetricsLayer {
    metrics: DirectionMetrics,
}

impl RequestMetricsLayer {
    pub fn new(metrics: DirectionMetrics) -> Self {
        RequestMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestMetrics<S> {
    inner: S,
    metrics: DirectionMetrics,
}

impl<S, Req, RB> tower::Service<Req> for RequestMetrics<S>
where
    S: tower::Service<Req, Response = Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        RequestMetricsFuture {
            inner: self.inner.call(request),
            metrics: Some(self.metrics.clone()),
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct RequestMetricsFuture<F> {
        #[pin]
        inner: F,
        metrics: Option<DirectionMetrics>,
        start: Instant,
    }
}

impl<F, RB, E> Future for RequestMetricsFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(metrics)) = (&result, this.metrics.take()) {
            metrics.record_response(response.status(), this.start.elapsed());
        }
        Poll::Ready(result)
    }
}

/// Connects hyper to one client connection's own stack. hyper calls its services through
/// `&self`; tower's adapter for that clones the whole stack for every request, this one calls
/// the connection's stack in place. It also puts the connection's [`ConnMeta`] into every
/// request's extensions.
///
/// The stack applies no backpressure (every layer is always ready), so readiness is checked
/// without registering a waker, and a stack that is not ready fails the request rather than
/// stalling the connection.
#[derive(Debug)]
pub struct ConnectionService<S> {
    stack: std::sync::Mutex<S>,
    meta: Arc<ConnMeta>,
}

impl<S> ConnectionService<S> {
    pub fn new(stack: S, meta: Arc<ConnMeta>) -> Self {
        ConnectionService {
            stack: std::sync::Mutex::new(stack),
            meta,
        }
    }
}

/// Why a [`ConnectionService`] could not call its stack.
#[derive(Debug, thiserror::Error)]
#[error("the connection's service stack is not ready")]
pub struct NotReady;

impl<S, B> hyper::service::Service<Request<B>> for ConnectionService<S>
where
    S: tower::Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures::future::Either<
        futures::future::ErrInto<S::Future, BoxError>,
        futures::future::Ready<Result<S::Response, BoxError>>,
    >;

    fn call(&self, mut request: Request<B>) -> Self::Future {
        use futures::future::{err, Either, TryFutureExt};
        request.extensions_mut().insert(self.meta.clone());
        // Only this connection's task calls it, so the lock is never contended.
        let mut stack = self
            .stack
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match stack.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Either::Left(stack.call(request).err_into()),
            Poll::Ready(Err(error)) => Either::Right(err(error.into())),
            Poll::Pending => Either::Right(err(NotReady.into())),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = map.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Hop, close"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "kept"),
            ("trailer", "x-checksum"),
        ]);
        strip_hop_by_hop(&mut map, false);
        assert_eq!(names(&map), ["trailer", "x-end-to-end"]);
    }

    #[test]
    fn each_hop_by_hop_field_alone_is_removed() {
        for (name, value) in [
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("connection", "close"),
        ] {
            let mut map = headers(&[(name, value), ("x-end-to-end", "kept")]);
            strip_hop_by_hop(&mut map, false);
            assert_eq!(names(&map), ["x-end-to-end"], "{name}");
        }
        let end_to_end = [("host", "a"), ("accept", "*/*"), ("x-keep-alive", "1")];
        let mut map = headers(&end_to_end);
        strip_hop_by_hop(&mut map, false);
        assert_eq!(names(&map), ["accept", "host", "x-keep-alive"]);
    }

    #[test]
    fn te_trailers_survives() {
        let mut map = headers(&[("te", "trailers"), ("connection", "TE")]);
        strip_hop_by_hop(&mut map, false);
        assert_eq!(map["te"], "trailers");
        assert!(!map.contains_key("connection"));
    }

    #[test]
    fn upgrades_keep_their_handshake() {
        let mut map = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade(&map));
        strip_hop_by_hop(&mut map, true);
        assert_eq!(map["connection"], "Upgrade");
        assert_eq!(map["upgrade"], "websocket");

        let mut map = headers(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        strip_hop_by_hop(&mut map, true);
        assert_eq!(map["connection"], "upgrade");
        assert!(!map.contains_key("keep-alive"));
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    fn request(method: Method, uri: &str, version: Version, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri).version(version);
        if let Some(host) = host {
            builder = builder.header("Host", host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn explicit_destinations() {
        let mut absolute = request(
            Method::GET,
            "http://example.com:8080/a?b=c",
            Version::HTTP_11,
            Some("ignored:1"),
        );
        let authority = explicit_destination(&mut absolute).unwrap();
        assert_eq!(authority.as_str(), "example.com:8080");
        assert_eq!(absolute.uri().to_string(), "/a?b=c");
        assert_eq!(absolute.headers()["host"], "example.com:8080");

        let mut bare = request(Method::GET, "http://example.com", Version::HTTP_11, None);
        assert_eq!(explicit_destination(&mut bare).unwrap().port_u16(), None);
        assert_eq!(bare.uri().to_string(), "/");
        assert_eq!(bare.headers()["host"], "example.com");

        let mut origin = request(Method::POST, "/x", Version::HTTP_11, Some("svc:9000"));
        assert_eq!(
            explicit_destination(&mut origin).unwrap().as_str(),
            "svc:9000"
        );
        assert_eq!(origin.uri().to_string(), "/x");

        let mut connect = request(Method::CONNECT, "svc:443", Version::HTTP_11, None);
        assert_eq!(
            explicit_destination(&mut connect).unwrap().as_str(),
            "svc:443"
        );

        let mut h2 = request(
            Method::GET,
            "http://svc:50051/pkg.Svc/M",
            Version::HTTP_2,
            None,
        );
        assert_eq!(explicit_destination(&mut h2).unwrap().as_str(), "svc:50051");
        assert_eq!(h2.uri().to_string(), "http://svc:50051/pkg.Svc/M");

        let mut nothing = request(Method::GET, "/", Version::HTTP_11, None);
        assert!(matches!(
            explicit_destination(&mut nothing),
            Err(ForwardError::NoDestination)
        ));
        let mut https = request(Method::GET, "https://svc/", Version::HTTP_11, None);
        assert!(matches!(
            explicit_destination(&mut https),
            Err(ForwardError::InvalidTarget(_))
        ));
    }
}
