//! Upstream HTTP connections: HTTP/1 keep-alive connections pooled per destination address,
//! one multiplexed HTTP/2 connection per destination address.
//!
//! HTTP/1 runs on the proxy's codec ([`h1::client`]); HTTP/2 on `hyper::client::conn` rather
//! than hyper-util's pooled client, because the proxy must choose the destination address
//! itself (the original destination, not the request's authority) while leaving the request
//! target and `:authority` exactly as the client sent them.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::body::ProxyBody;
use super::connect::connect;
use super::error::ForwardError;
use super::h1::client::{Connection, InFlight, Outgoing};
use super::h1::fields::RawHead;
use super::h1::pool::HeadPool;
use super::h1::Limits;
use super::streams::{self, ConnectionStreams};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct IdleHttp1 {
    conn: Connection,
    since: Instant,
}

struct IdleHyperHttp1<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

/// One client connection's own upstream connections: the HTTP/1 connection its last request
/// used (HTTP/1 requests on a client connection come one at a time, so it is almost always free
/// again for the next one: its last exchange is checked without waiting) and its HTTP/2
/// connection. Requests use these without touching the
/// direction's shared [`Pool`], whose locks are then only taken when a connection is missing,
/// busy or broken. When the client connection goes, its HTTP/1 connection returns to the pool.
///
/// Its locks are the client connection's alone (one request at a time for HTTP/1, and short
/// critical sections for h2 streams), so they are uncontended.
pub struct Affinity<B> {
    pool: Weak<Pool<B>>,
    http1: Mutex<Option<(SocketAddr, InFlight)>>,
    /// For requests hyper's HTTP/1 server read (see [`Pool::send_http1`]).
    hyper_http1: Mutex<Option<(SocketAddr, http1::SendRequest<B>)>>,
    h2: Mutex<Option<(SocketAddr, http2::SendRequest<B>)>>,
}

impl<B> std::fmt::Debug for Affinity<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affinity").finish_non_exhaustive()
    }
}

impl<B> Affinity<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    pub fn new(pool: &Arc<Pool<B>>) -> Self {
        Affinity {
            pool: Arc::downgrade(pool),
            http1: Mutex::new(None),
            hyper_http1: Mutex::new(None),
            h2: Mutex::new(None),
        }
    }

    /// The client connection's HTTP/1 connection to `addr`, if it is free and open.
    fn take_http1(&self, addr: SocketAddr) -> Option<Connection> {
        let mut own = lock(&self.http1);
        let (own_addr, in_flight) = own.as_mut()?;
        if *own_addr != addr {
            return None;
        }
        match in_flight.try_idle() {
            // Still busy: it goes to the pool when the next one replaces it.
            Poll::Pending => None,
            Poll::Ready(conn) => {
                *own = None;
                conn.and_then(|mut conn| conn.is_open().then_some(conn))
            }
        }
    }

    /// Makes `in_flight` the client connection's HTTP/1 connection; the one it replaces (still
    /// busy, or to another address) goes back to the pool.
    fn keep_http1(&self, pool: &Arc<Pool<B>>, addr: SocketAddr, in_flight: InFlight) {
        let replaced = lock(&self.http1).replace((addr, in_flight));
        if let Some((addr, in_flight)) = replaced {
            pool.http1_idle.return_when_idle(addr, in_flight);
        }
    }

    /// The client connection's hyper HTTP/1 connection to `addr`, if it is free.
    fn take_hyper_http1(&self, addr: SocketAddr) -> Option<http1::SendRequest<B>> {
        let mut own = lock(&self.hyper_http1);
        match own.as_ref() {
            Some((own_addr, sender)) if *own_addr == addr && sender.is_ready() => {
                own.take().map(|(_, sender)| sender)
            }
            _ => None,
        }
    }

    /// Makes `sender` the client connection's hyper HTTP/1 connection; the one it replaces
    /// (still busy, or to another address) goes back to the pool.
    fn keep_hyper_http1(
        &self,
        pool: &Arc<Pool<B>>,
        addr: SocketAddr,
        sender: http1::SendRequest<B>,
    ) {
        let replaced = lock(&self.hyper_http1).replace((addr, sender));
        match replaced {
            Some((addr, sender)) if !sender.is_closed() => {
                pool.return_hyper_when_idle(addr, sender)
            }
            _ => {}
        }
    }

    /// Sends over the client connection's HTTP/2 connection when it goes to one of `addrs`
    /// and is open; gives the request back otherwise.
    fn try_send_h2(
        &self,
        addrs: &[SocketAddr],
        request: Request<B>,
    ) -> OwnH2<impl Future<Output = Http2Sent<B>>, B> {
        let mut own = lock(&self.h2);
        match own.as_mut() {
            Some((addr, sender)) if !sender.is_closed() && addrs.contains(addr) => {
                OwnH2::Sent(*addr, sender.try_send_request(request))
            }
            _ => {
                // Closed or elsewhere: forget it (the pool keeps the shared connections).
                *own = None;
                OwnH2::Unsent(request)
            }
        }
    }
}

/// What [`Affinity::try_send_h2`] did with the request.
enum OwnH2<F, B> {
    Sent(SocketAddr, F),
    Unsent(Request<B>),
}

type Http2Sent<B> = Result<Response<Incoming>, TrySendError<Request<B>>>;

impl<B> Drop for Affinity<B> {
    fn drop(&mut self) {
        let own = self
            .http1
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        // One still busy (the client left mid-exchange) comes back once its exchange ends,
        // if it can carry another request.
        let own_hyper = self
            .hyper_http1
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if let Some((addr, in_flight)) = own {
            pool.http1_idle.return_when_idle(addr, in_flight);
        }
        // A hyper one still busy is dropped: hyper closes it once the exchange ends.
        if let Some((addr, sender)) = own_hyper {
            if sender.is_ready() {
                pool.push_idle_hyper_http1(addr, sender);
            }
        }
    }
}

/// Connections to every destination of one direction.
pub struct Pool<B> {
    http1_idle: Arc<Http1Idle>,
    hyper_http1_idle: Mutex<HashMap<SocketAddr, Vec<IdleHyperHttp1<B>>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<B>>>,
    /// Serialises HTTP/2 connection attempts per destination, so that a burst of first
    /// requests shares one connection instead of racing to open one each.
    h2_connecting: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// The largest response head (HTTP/1) or header list (h2) accepted from upstreams.
    max_header_bytes: usize,
    /// Buffers HTTP/1 response heads are read into, lent while a head arrives.
    heads: HeadPool,
}

/// Free response head buffers a direction keeps (at most this × [`HEAD_BUF_RETAIN_BYTES`]).
const HEAD_POOL_CAP: usize = 64;
/// A response head buffer's first size: the head and the start of its body, in one read.
const HEAD_BUF_BYTES: usize = 4 * 1024;
/// Buffers that grew past this (large heads) are freed rather than pooled.
const HEAD_BUF_RETAIN_BYTES: usize = 16 * 1024;

impl<B> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<B> Pool<B> {
    fn push_idle_hyper_http1(&self, addr: SocketAddr, sender: http1::SendRequest<B>) {
        lock(&self.hyper_http1_idle)
            .entry(addr)
            .or_default()
            .push(IdleHyperHttp1 {
                sender,
                since: Instant::now(),
            });
    }
}

/// One direction's idle HTTP/1 connections, per address.
#[derive(Default)]
struct Http1Idle(Mutex<HashMap<SocketAddr, Vec<IdleHttp1>>>);

impl Http1Idle {
    fn push(&self, addr: SocketAddr, conn: Connection) {
        lock(&self.0).entry(addr).or_default().push(IdleHttp1 {
            conn,
            since: Instant::now(),
        });
    }

    /// Puts the connection back once its exchange has ended (request sent, response body read
    /// to the end), if it can carry another request; one that closes or was upgraded never
    /// comes back.
    fn return_when_idle(self: &Arc<Self>, addr: SocketAddr, mut in_flight: InFlight) {
        match in_flight.try_idle() {
            Poll::Ready(Some(conn)) => self.push(addr, conn),
            Poll::Ready(None) => {}
            Poll::Pending => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let pool = Arc::downgrade(self);
                runtime.spawn(async move {
                    let conn = in_flight.idle().await;
                    if let (Some(conn), Some(pool)) = (conn, pool.upgrade()) {
                        pool.push(addr, conn);
                    }
                });
            }
        }
    }
}

/// A poisoned lock only means another task panicked mid-update of a cache; the map itself is
/// still consistent (every update is a single insert/remove), so keep using it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tries the addresses in order (e.g. `::1` then `127.0.0.1` for `localhost`) and returns the
/// first connection made, or the last error.
pub(crate) async fn first_connected<T, F, Fut>(
    addrs: &[SocketAddr],
    mut connect: F,
) -> Result<(SocketAddr, T), ForwardError>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<T, ForwardError>>,
{
    let mut last_error = ForwardError::NoDestination;
    for &addr in addrs {
        match connect(addr).await {
            Ok(connected) => return Ok((addr, connected)),
            Err(error) => {
                tracing::debug!(%addr, %error, "connect failed");
                last_error = error;
            }
        }
    }
    Err(last_error)
}

impl<B> Pool<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A new pool; inside a Tokio runtime it also starts a task that evicts idle connections
    /// for as long as the pool exists.
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_header_bytes: usize,
    ) -> Arc<Self> {
        let pool = Arc::new(Pool {
            http1_idle: Arc::default(),
            hyper_http1_idle: Mutex::new(HashMap::new()),
            h2: Mutex::new(HashMap::new()),
            h2_connecting: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
            max_header_bytes,
            heads: HeadPool::new(HEAD_POOL_CAP, HEAD_BUF_BYTES, HEAD_BUF_RETAIN_BYTES),
        });
        let period = (idle_timeout / 2).max(Duration::from_millis(100));
        crate::periodic::every(&pool, period, Pool::evict_idle);
        pool
    }

    /// Sends an HTTP/1 request to one of `addrs`: over the client connection's own upstream
    /// connection when it is free, else an idle pooled one, else a new connection to the first
    /// address that accepts. Connections found closed are dropped before any byte is sent on
    /// them. The connection used becomes the client connection's own. Returns the address used
    /// with the response.
    ///
    /// A request the codec's server read (it carries its [`RawHead`]) goes over the codec's
    /// client, which writes its head back as received; one hyper's server read goes over
    /// hyper's client, the only one that knows the header case hyper kept for it.
    pub fn send_http1<'a>(
        self: &'a Arc<Self>,
        affinity: &'a Affinity<B>,
        addrs: &'a [SocketAddr],
        request: Request<B>,
    ) -> impl Future<Output = Result<(SocketAddr, Response<ProxyBody>), ForwardError>> + 'a {
        // Each path's future holds the request once: boxed for hyper's (rare: only with
        // `MESHTRACE_HTTP1_CODEC=hyper`), made `Outgoing` (its head already written) for the
        // codec's. Every request in flight keeps this future, so its size is memory per request.
        if request.extensions().get::<RawHead>().is_none() {
            let hyper = Box::pin(self.send_hyper_http1(affinity, addrs, request));
            return futures::future::Either::Left(async move {
                let (addr, response) = hyper.await?;
                Ok((addr, response.map(ProxyBody::Hyper)))
            });
        }
        futures::future::Either::Right(self.send_codec_http1(
            affinity,
            addrs,
            Outgoing::new(request),
        ))
    }

    /// [`Pool::send_http1`] over the codec's client. An `async` block rather than an `async
    /// fn`, which would keep `out` twice.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn send_codec_http1<'a>(
        self: &'a Arc<Self>,
        affinity: &'a Affinity<B>,
        addrs: &'a [SocketAddr],
        mut out: Outgoing<B>,
    ) -> impl Future<Output = Result<(SocketAddr, Response<ProxyBody>), ForwardError>> + 'a {
        async move {
            let reused = addrs.iter().find_map(|&addr| {
                let conn = affinity
                    .take_http1(addr)
                    .or_else(|| self.take_idle_http1(addr))?;
                Some((addr, conn))
            });
            let (addr, conn) = match reused {
                Some(reused) => reused,
                None => {
                    let timeout = self.connect_timeout;
                    Box::pin(first_connected(addrs, |addr| {
                        Connection::connect(addr, timeout)
                    }))
                    .await?
                }
            };
            let limits = Limits {
                max_head_bytes: self.max_header_bytes,
                ..Limits::default()
            };
            let (response, after) = conn.exchange(&mut out, &limits, &self.heads).await?;
            // Free again once this exchange completes (request sent, response body read).
            affinity.keep_http1(self, addr, out.in_flight(after));
            Ok((addr, response))
        }
    }

    /// [`Pool::send_http1`] over hyper's client. A connection that turns out to be closed
    /// gives the request back unsent, and the next one is tried.
    async fn send_hyper_http1(
        self: &Arc<Self>,
        affinity: &Affinity<B>,
        addrs: &[SocketAddr],
        mut request: Request<B>,
    ) -> Result<(SocketAddr, Response<Incoming>), ForwardError> {
        for &addr in addrs {
            let mut own = affinity.take_hyper_http1(addr);
            while let Some(mut sender) = own.take().or_else(|| self.take_idle_hyper_http1(addr)) {
                let response = sender.try_send_request(request);
                // Free again once this exchange completes (response body read to the end).
                affinity.keep_hyper_http1(self, addr, sender);
                match response.await {
                    Ok(response) => return Ok((addr, response)),
                    Err(mut error) => match error.take_message() {
                        Some(unsent) => {
                            tracing::debug!(%addr, error = %error.error(), "pooled connection unusable; retrying");
                            request = unsent;
                        }
                        None => return Err(ForwardError::upstream(error.into_error())),
                    },
                }
            }
        }
        let (addr, mut sender) = Box::pin(first_connected(addrs, |addr| {
            self.connect_hyper_http1(addr)
        }))
        .await?;
        let response = sender.send_request(request);
        affinity.keep_hyper_http1(self, addr, sender);
        let response = response.await.map_err(ForwardError::upstream)?;
        Ok((addr, response))
    }

    /// Sends an HTTP/2 request, sharing one connection per destination address; the client
    /// connection keeps its own handle on it so that its requests skip the shared cache.
    pub async fn send_h2(
        &self,
        affinity: &Affinity<B>,
        addrs: &[SocketAddr],
        request: Request<B>,
    ) -> Result<(SocketAddr, Response<Incoming>), ForwardError> {
        let request = match affinity.try_send_h2(addrs, request) {
            OwnH2::Sent(addr, response) => match response.await {
                Ok(response) => return Ok((addr, response)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => unsent,
                    None => return Err(ForwardError::upstream(error.into_error())),
                },
            },
            OwnH2::Unsent(request) => request,
        };
        let (addr, mut sender) = match self.cached_h2(addrs) {
            Some(cached) => cached,
            None => Box::pin(self.connect_h2_shared(addrs)).await?,
        };
        sender.ready().await.map_err(ForwardError::upstream)?;
        let response = sender.send_request(request);
        *lock(&affinity.h2) = Some((addr, sender));
        let response = response.await.map_err(ForwardError::upstream)?;
        Ok((addr, response))
    }

    /// Opens the shared HTTP/2 connection to one of `addrs` (the caller found none cached).
    /// Attempts are serialised per destination: whoever waited finds the connection the first
    /// one made.
    async fn connect_h2_shared(
        &self,
        addrs: &[SocketAddr],
    ) -> Result<(SocketAddr, http2::SendRequest<B>), ForwardError> {
        let Some(key) = addrs.first() else {
            return Err(ForwardError::NoDestination);
        };
        let gate = lock(&self.h2_connecting).entry(*key).or_default().clone();
        let _connecting = gate.lock().await;
        if let Some(cached) = self.cached_h2(addrs) {
            return Ok(cached);
        }
        let (addr, sender) = first_connected(addrs, |addr| self.connect_h2(addr)).await?;
        lock(&self.h2).insert(addr, sender.clone());
        Ok((addr, sender))
    }

    fn cached_h2(&self, addrs: &[SocketAddr]) -> Option<(SocketAddr, http2::SendRequest<B>)> {
        let h2 = lock(&self.h2);
        addrs.iter().find_map(|addr| {
            let sender = h2.get(addr).filter(|s| !s.is_closed())?;
            Some((*addr, sender.clone()))
        })
    }

    /// Drops idle HTTP/1 connections older than the idle timeout and closed HTTP/2 ones.
    pub fn evict_idle(&self) {
        let now = Instant::now();
        lock(&self.http1_idle.0).retain(|_, idle| {
            idle.retain_mut(|idle| {
                now.duration_since(idle.since) < self.idle_timeout && idle.conn.is_open()
            });
            !idle.is_empty()
        });
        lock(&self.hyper_http1_idle).retain(|_, idle| {
            idle.retain(|conn| {
                now.duration_since(conn.since) < self.idle_timeout && !conn.sender.is_closed()
            });
            !idle.is_empty()
        });
        lock(&self.h2).retain(|_, sender| !sender.is_closed());
        lock(&self.h2_connecting).retain(|_, gate| Arc::strong_count(gate) > 1);
    }

    /// Number of idle pooled HTTP/1 connections (for tests and debugging).
    pub fn idle_http1(&self) -> usize {
        let codec: usize = lock(&self.http1_idle.0).values().map(Vec::len).sum();
        let hyper: usize = lock(&self.hyper_http1_idle).values().map(Vec::len).sum();
        codec + hyper
    }

    fn take_idle_http1(&self, addr: SocketAddr) -> Option<Connection> {
        let mut idle = lock(&self.http1_idle.0);
        let conns = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(mut conn) = conns.pop() {
            if now.duration_since(conn.since) < self.idle_timeout && conn.conn.is_open() {
                return Some(conn.conn);
            }
        }
        idle.remove(&addr);
        None
    }

    fn take_idle_hyper_http1(&self, addr: SocketAddr) -> Option<http1::SendRequest<B>> {
        let mut idle = lock(&self.hyper_http1_idle);
        let conns = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(conn) = conns.pop() {
            if conn.sender.is_ready() && now.duration_since(conn.since) < self.idle_timeout {
                return Some(conn.sender);
            }
        }
        idle.remove(&addr);
        None
    }

    /// Puts the connection back once the exchange in flight on it has completed (response
    /// body read to the end). A connection that closes or was upgraded never comes back.
    fn return_hyper_when_idle(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut sender: http1::SendRequest<B>,
    ) {
        if sender.is_ready() {
            self.push_idle_hyper_http1(addr, sender);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            if let Some(pool) = pool.upgrade() {
                pool.push_idle_hyper_http1(addr, sender);
            }
        });
    }

    async fn connect_hyper_http1(
        &self,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<B>, ForwardError> {
        let stream = connect(addr, self.connect_timeout).await?;
        let (sender, connection) = http1::Builder::new()
            .preserve_header_case(true)
            .title_case_headers(false)
            // A response head past the limit is an upstream error, so a 502.
            .max_header_size(self.max_header_bytes)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ForwardError::upstream)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream HTTP/1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn connect_h2(&self, addr: SocketAddr) -> Result<http2::SendRequest<B>, ForwardError> {
        let stream = TokioIo::new(connect(addr, self.connect_timeout).await?);
        let handshake_failed = |source| ForwardError::Handshake { addr, source };
        let ended = move |result: Result<(), hyper::Error>| {
            if let Err(error) = result {
                tracing::debug!(%addr, %error, "upstream HTTP/2 connection ended");
            }
        };
        if streams::single_threaded_runtime() {
            // hyper runs the connection and, per request, a future that hands the response back:
            // here they all run in this connection's task instead of a task each.
            let (streams, executor) = ConnectionStreams::new();
            let (sender, connection) = http2::Builder::new(executor)
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
                .handshake(stream)
                .await
                .map_err(handshake_failed)?;
            tokio::spawn(async move {
                let connection = std::pin::pin!(connection);
                ended(streams::drive(connection, streams, std::future::pending(), |_| {}).await);
            });
            Ok(sender)
        } else {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
                .handshake(stream)
                .await
                .map_err(handshake_failed)?;
            tokio::spawn(async move { ended(connection.await) });
            Ok(sender)
        }
    }
}
