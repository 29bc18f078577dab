//! Wires the proxy together: binds the listeners, builds one pipeline per direction, serves the
//! admin endpoints, and runs until shutdown has drained every connection.
//!
//! Split into [`Proxy::bind`] and [`BoundProxy::run`] so that callers (main, tests, later the
//! exporter) can learn the bound addresses and start things before traffic flows, and decide
//! what happens after the drain (e.g. flush spans) once `run` returns.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::admin::{self, AdminState};
use crate::admission::{self, AcceptBackoff, Admission, ConnSlot, ShedReason};
use crate::client_io::ClientIo;
use crate::config::{Config, PortList};
use crate::detect;
use crate::export::{self, ExporterHandle};
use crate::fd_limit;
use crate::forward::h2_head::H2HeadGuard;
use crate::forward::head::{Exchanges, HeadGuard, HeadLimits};
use crate::forward::head_budget::HeadBudget;
use crate::forward::server::Http1Server;
use crate::forward::{self, resolve::Resolver, ConnectionService, HttpStacks, StackParams};
use crate::listen;
use crate::meta::{ConnMeta, Direction, Protocol};
use crate::metrics::{DirectionMetrics, ProxyMetrics};
use crate::shutdown::{self, DrainOutcome, Drained, Trigger, Watch};
use crate::span::SpanSink;
use crate::trace::{TraceMetrics, Tracer};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot bind the {name} listener on {addr}: {source}")]
    Bind {
        name: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot resolve MESHTRACE_INBOUND_TARGET {target:?}: {reason}")]
    InboundTarget { target: String, reason: String },
}

/// A proxy that is configured but not yet bound.
pub struct Proxy {
    config: Config,
    registry: Registry,
    spans: SpanSink,
}

impl Proxy {
    pub fn new(config: Config) -> Self {
        Proxy {
            config,
            registry: Registry::default(),
            spans: SpanSink::disabled(),
        }
    }

    /// The registry served at `/metrics`; other parts register their families here before
    /// [`Proxy::bind`].
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Starts the OTLP exporter that `config.export` describes (the `OTEL_*` settings) and
    /// sends this proxy's spans to it. Returns the handle to flush after [`BoundProxy::run`]
    /// has drained, or `None` when export is off. Must be called inside the Tokio runtime.
    pub fn start_export(&mut self) -> Result<Option<ExporterHandle>, export::StartError> {
        // Under `meshtrace_` like every other family (`meshtrace_export_spans_exported_total`).
        let registry = self.registry.sub_registry_with_prefix("meshtrace");
        let settings = self.config.export.config()?;
        let resource = self.config.export.resource();
        let (sink, handle) = export::start(settings, &resource, registry)?;
        self.spans = sink;
        Ok(handle)
    }

    /// Where the trace layers send finished spans (disabled by default).
    pub fn with_span_sink(mut self, spans: SpanSink) -> Self {
        self.spans = spans;
        self
    }

    /// Binds the admin listener (and starts serving it: `/ready` answers 503 until
    /// [`BoundProxy::run`]), then the inbound and outbound listeners.
    pub async fn bind(self) -> Result<BoundProxy, AppError> {
        let Proxy {
            config,
            mut registry,
            spans,
        } = self;
        let metrics = ProxyMetrics::register(&mut registry);
        let tracer =
            Tracer::with_metrics(&config.trace, spans, TraceMetrics::register(&mut registry));

        let (admin_addr, admin) = start_admin(config.admin_addr, registry).await?;
        let inbound_listeners = bind_all("inbound", config.inbound_addr.iter()).await?;
        let outbound_listeners = bind_all("outbound", config.outbound_addr.iter()).await?;
        let bound_addrs = |listeners: &[(TcpListener, SocketAddr)]| -> Vec<SocketAddr> {
            listeners.iter().map(|(_, addr)| *addr).collect()
        };
        let (inbound_addrs, outbound_addrs) = (
            bound_addrs(&inbound_listeners),
            bound_addrs(&outbound_listeners),
        );
        let own: Vec<SocketAddr> = inbound_addrs
            .iter()
            .chain(&outbound_addrs)
            .copied()
            .chain([admin_addr])
            .collect();
        let own_listeners = forward::OwnListeners::new(own);

        let inbound_target = match &config.inbound_target {
            Some(target) => Some(resolve_once(target).await?),
            None => None,
        };

        let max_connections = connection_cap(config.max_connections);
        // One budget for the unfinished heads of both directions.
        let head_budget = HeadBudget::new(config.max_pending_head_bytes);
        let resolver = Resolver::from_system();
        let direction = |direction: Direction, fixed_target: Option<SocketAddr>| {
            let metrics = metrics.direction(direction);
            let settings = config.direction(direction);
            let stack = forward::http_stacks(&StackParams {
                direction,
                settings,
                own_listeners: own_listeners.clone(),
                metrics: metrics.clone(),
                resolver: resolver.clone(),
                tunnels: admin.watch.downgrade(),
                tracer: tracer.clone(),
            });
            Arc::new(DirectionContext {
                direction,
                own_listeners: own_listeners.clone(),
                fixed_target,
                detect_timeout: config.detect_timeout,
                head_limits: config.head_limits(),
                head_budget: head_budget.clone(),
                opaque_ports: config.opaque_ports.clone(),
                max_connections,
                connect_timeout: settings.connect_timeout,
                metrics,
                stack,
                http1: Http1Server::new(settings.http1_codec),
            })
        };
        let inbound = direction(Direction::Inbound, inbound_target);
        let outbound = direction(Direction::Outbound, None);

        let (inbound_addr, outbound_addr) = (inbound_addrs[0], outbound_addrs[0]);
        tracing::info!(%inbound_addr, %outbound_addr, %admin_addr, ?inbound_addrs, ?outbound_addrs, "listeners bound");
        let listeners = inbound_listeners
            .into_iter()
            .map(|(listener, _)| (listener, inbound.clone()))
            .chain(
                outbound_listeners
                    .into_iter()
                    .map(|(listener, _)| (listener, outbound.clone())),
            )
            .collect();
        Ok(BoundProxy {
            listeners,
            inbound_addr,
            outbound_addr,
            admin_addr,
            ready: admin.ready,
            trigger: admin.trigger,
            watch: admin.watch,
            drained: admin.drained,
            shutdown_grace: config.shutdown_grace,
            _admin: admin.guard,
        })
    }
}

/// The connection cap per listener: `MESHTRACE_MAX_CONNECTIONS`, or derived from the fd limit.
fn connection_cap(configured: usize) -> usize {
    let cap = match configured {
        0 => fd_limit::default_max_connections(fd_limit::soft_limit()),
        set => set,
    };
    tracing::info!(max_connections = cap, "connection cap per listener");
    cap
}

/// What [`start_admin`] hands back: the admin server's handles and the shutdown channel it
/// serves `POST /shutdown` through.
struct AdminHandles {
    ready: Arc<AtomicBool>,
    trigger: Trigger,
    watch: Watch,
    drained: Drained,
    guard: DropGuard,
}

/// Binds the admin listener and starts serving it (`/ready` answers 503 until the proxy runs).
async fn start_admin(
    addr: SocketAddr,
    registry: Registry,
) -> Result<(SocketAddr, AdminHandles), AppError> {
    let (listener, admin_addr) = bind_listener("admin", addr).await?;
    let (trigger, watch, drained) = shutdown::channel();
    let ready = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let state = AdminState {
        registry: Arc::new(registry),
        ready: ready.clone(),
        shutdown: trigger.clone(),
    };
    tokio::spawn(admin::serve(
        listener,
        state,
        stop.clone().cancelled_owned(),
    ));
    let handles = AdminHandles {
        ready,
        trigger,
        watch,
        drained,
        guard: stop.drop_guard(),
    };
    Ok((admin_addr, handles))
}

async fn bind_listener(
    name: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), AppError> {
    listen::bind(addr)
        .await
        .and_then(|listener| listener.local_addr().map(|local| (listener, local)))
        .map_err(|source| AppError::Bind { name, addr, source })
}

/// Binds one listener per address of a direction (dual-stack pods have two).
async fn bind_all(
    name: &'static str,
    addrs: impl Iterator<Item = SocketAddr>,
) -> Result<Vec<(TcpListener, SocketAddr)>, AppError> {
    let mut listeners = Vec::new();
    for addr in addrs {
        listeners.push(bind_listener(name, addr).await?);
    }
    Ok(listeners)
}

async fn resolve_once(target: &str) -> Result<SocketAddr, AppError> {
    let error = |reason: String| AppError::InboundTarget {
        target: target.to_string(),
        reason,
    };
    tokio::net::lookup_host(target)
        .await
        .map_err(|e| error(e.to_string()))?
        .next()
        .ok_or_else(|| error("no addresses".to_string()))
}

/// A proxy whose sockets are bound; [`BoundProxy::run`] starts accepting.
pub struct BoundProxy {
    /// Every listening socket (one per configured address) with its direction.
    listeners: Vec<(TcpListener, Arc<DirectionContext>)>,
    /// The first inbound and outbound addresses.
    inbound_addr: SocketAddr,
    outbound_addr: SocketAddr,
    admin_addr: SocketAddr,
    ready: Arc<AtomicBool>,
    trigger: Trigger,
    watch: Watch,
    drained: Drained,
    shutdown_grace: Duration,
    /// Stops the admin server when the proxy is done (or dropped without running).
    _admin: DropGuard,
}

impl BoundProxy {
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound_addr
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Starts a graceful shutdown from anywhere (tests, other tasks); same as `POST /shutdown`.
    pub fn shutdown_trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// Accepts connections until `signal` resolves or shutdown is triggered, then stops
    /// accepting, lets in-flight requests and tunnels finish, and returns once drained or after
    /// the grace period.
    pub async fn run(self, signal: impl Future<Output = ()>) -> DrainOutcome {
        let BoundProxy {
            listeners,
            ready,
            trigger,
            watch,
            drained,
            shutdown_grace,
            _admin,
            ..
        } = self;
        for (listener, context) in listeners {
            tokio::spawn(accept_loop(listener, context, watch.clone()));
        }
        ready.store(true, Ordering::Release);
        tracing::info!("proxy ready");

        tokio::select! {
            _ = signal => trigger.trigger(),
            _ = trigger.triggered() => {}
        }
        ready.store(false, Ordering::Release);
        tracing::info!(grace = ?shutdown_grace, "shutting down: draining connections");
        drop(watch);
        let outcome = drained.wait(shutdown_grace).await;
        match outcome {
            DrainOutcome::Complete => tracing::info!("drained"),
            DrainOutcome::GraceExpired => {
                tracing::warn!("shutdown grace period expired with connections still open")
            }
        }
        outcome
    }
}

/// One direction's per-connection settings and its HTTP stack.
struct DirectionContext {
    direction: Direction,
    own_listeners: forward::OwnListeners,
    /// Inbound `MESHTRACE_INBOUND_TARGET`: overrides the original destination.
    fixed_target: Option<SocketAddr>,
    detect_timeout: Duration,
    /// Bounds on request heads (HTTP/1 timeouts and size, h2 header list size).
    head_limits: HeadLimits,
    /// `MESHTRACE_MAX_PENDING_HEAD_BYTES`, shared by both directions.
    head_budget: Option<Arc<HeadBudget>>,
    opaque_ports: PortList,
    /// `MESHTRACE_MAX_CONNECTIONS`, resolved.
    max_connections: usize,
    connect_timeout: Duration,
    metrics: DirectionMetrics,
    stack: HttpStacks,
    /// Which codec serves HTTP/1 clients, and its head buffers.
    http1: Http1Server,
}

/// Accepts connections until shutdown, within the listener's connection cap: a new client at
/// the cap, or a failed accept for lack of descriptors, sheds an idle connection to make room
/// (see [`admission`]); with none to shed, the new client waits until one ends or becomes
/// idle. Failed accepts back off (5 ms doubling to 1 s), with one warning per interval.
async fn accept_loop(listener: TcpListener, context: Arc<DirectionContext>, watch: Watch) {
    let direction = context.direction;
    let mut admission = Admission::new(context.max_connections, direction, context.metrics.clone());
    let mut backoff = AcceptBackoff::default();
    let signaled = watch.signaled();
    tokio::pin!(signaled);
    'accepting: loop {
        let accepted = tokio::select! {
            _ = &mut signaled => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if admission::is_resource_exhaustion(&error) {
                    admission.shed_one(ShedReason::FdLimit);
                }
                let delay = backoff.failed(direction, &error);
                tokio::select! {
                    _ = &mut signaled => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        backoff.succeeded();
        while admission.is_full() && !admission.shed_one(ShedReason::MaxConnections) {
            tokio::select! {
                _ = &mut signaled => break 'accepting,
                _ = admission.connection_ended() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let slot = admission.admit();
        tokio::spawn(serve_task(
            context.clone(),
            stream,
            client,
            slot,
            watch.clone(),
        ));
    }
    tracing::debug!(direction = direction.as_str(), "stopped accepting");
}

/// An admitted connection's task: serves it until it ends or is shed. Its future is what every
/// open connection costs beside its buffers, so it is kept small: paths that are rare or large
/// are boxed below it (see the `future_sizes` test).
async fn serve_task(
    context: Arc<DirectionContext>,
    stream: TcpStream,
    client_addr: SocketAddr,
    slot: Arc<ConnSlot>,
    watch: Watch,
) {
    tokio::select! {
        () = handle_connection(&context, stream, client_addr, &slot, &watch) => {}
        () = slot.shed() => {
            tracing::debug!(%client_addr, direction = context.direction.as_str(), "connection shed");
        }
    }
    drop(watch);
}

async fn handle_connection(
    context: &DirectionContext,
    stream: TcpStream,
    client_addr: SocketAddr,
    slot: &Arc<ConnSlot>,
    watch: &Watch,
) {
    let _open = context.metrics.open_connection();
    let Some((io, protocol, meta)) = accept(context, stream, client_addr, slot, watch).await else {
        return;
    };
    match protocol {
        // Boxed: the task of every HTTP connection would be sized for it.
        Protocol::Opaque => {
            let (orig_dst, timeout) = (meta.orig_dst, context.connect_timeout);
            Box::pin(forward_opaque(io, orig_dst, client_addr, timeout)).await
        }
        Protocol::Http1 | Protocol::H2 => {
            serve_http(context, protocol, io, Arc::new(meta), slot, watch).await
        }
    }
}

/// Readies an accepted connection: its destination, its protocol (detected from its first
/// bytes, which its IO replays). `None`: closed. A function of its own so that the
/// connection's task does not keep what detection needed while the connection is served.
async fn accept(
    context: &DirectionContext,
    stream: TcpStream,
    client_addr: SocketAddr,
    slot: &Arc<ConnSlot>,
    watch: &Watch,
) -> Option<(ClientIo<TcpStream>, Protocol, ConnMeta)> {
    let direction = context.direction.as_str();
    let local_addr = stream.local_addr().ok()?;
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY");
    }
    let orig_dst = original_destination(context, &stream, client_addr, local_addr)?;

    let mut io = context.metrics.count_bytes(stream);
    let opaque_port = orig_dst.is_some_and(|dst| context.opaque_ports.contains(dst.port()));
    let (protocol, prefix) = if opaque_port {
        (Protocol::Opaque, bytes::Bytes::new())
    } else {
        tokio::select! {
            detected = detect::detect(&mut io, context.detect_timeout) => match detected {
                Ok(detected) => detected,
                Err(error) => {
                    tracing::debug!(%client_addr, %error, "connection failed during detection");
                    return None;
                }
            },
            _ = watch.signaled() => return None,
        }
    };
    context.metrics.connection_detected(protocol);
    match protocol {
        // Detected with nothing read: the client was silent until the detect timeout.
        Protocol::Opaque => slot.set_opaque(!opaque_port && prefix.is_empty()),
        Protocol::Http1 | Protocol::H2 => slot.set_http(),
    }
    tracing::debug!(%client_addr, ?orig_dst, direction, protocol = protocol.as_str(), "accepted");
    let meta = ConnMeta {
        direction: context.direction,
        client_addr,
        local_addr,
        orig_dst,
    };
    Some((io.replay(prefix), protocol, meta))
}

/// Where a transparent connection was going (`None` in explicit mode), or `None` in the outer
/// option when the connection must be closed: inbound without a destination, or one that would
/// loop back into this proxy.
fn original_destination(
    context: &DirectionContext,
    stream: &TcpStream,
    client_addr: SocketAddr,
    local_addr: SocketAddr,
) -> Option<Option<SocketAddr>> {
    let direction = context.direction.as_str();
    let orig_dst = context
        .fixed_target
        .or_else(|| listen::original_dst(stream));
    if context.direction == Direction::Inbound && orig_dst.is_none() {
        tracing::warn!(
            %client_addr,
            "inbound connection without an original destination and no MESHTRACE_INBOUND_TARGET; closing"
        );
        return None;
    }
    if let Some(dst) = orig_dst {
        if context.own_listeners.reached_by(dst, local_addr) {
            tracing::warn!(%client_addr, %dst, direction, "destination is this proxy; closing to avoid a loop");
            return None;
        }
    }
    Some(orig_dst)
}

/// Copies a connection that is not HTTP to its original destination.
async fn forward_opaque(
    io: ClientIo<TcpStream>,
    orig_dst: Option<SocketAddr>,
    client_addr: SocketAddr,
    connect_timeout: Duration,
) {
    let Some(target) = orig_dst else {
        tracing::info!(%client_addr, "explicit-mode connection is not HTTP; closing");
        return;
    };
    match forward::tcp::forward(io, target, connect_timeout).await {
        Ok((sent, received)) => {
            tracing::debug!(%client_addr, %target, sent, received, "opaque connection closed")
        }
        Err(error) => tracing::info!(%client_addr, %target, %error, "opaque forwarding failed"),
    }
}

/// Serves an HTTP/1 or h2 connection through the direction's stack. Not itself `async`, so
/// that the connection's task does not hold `io` beside the future that serves it.
fn serve_http<'a>(
    context: &'a DirectionContext,
    protocol: Protocol,
    io: ClientIo<TcpStream>,
    meta: Arc<ConnMeta>,
    slot: &Arc<ConnSlot>,
    watch: &'a Watch,
) -> impl Future<Output = ()> + Send + 'a {
    // Request heads are bounded where they are read: HTTP/1 heads in time and size,
    // h2 header blocks in time (h2 bounds their size itself).
    let idle_timeout = context.head_limits.idle_timeout.is_some();
    let exchanges = (protocol == Protocol::Http1).then(|| Arc::new(Exchanges::new(idle_timeout)));
    let limits = context.head_limits;
    let io = match (&exchanges, limits.read_timeout) {
        (Some(exchanges), _) => io.guard_heads(
            HeadGuard::new(limits, exchanges.clone()).with_budget(context.head_budget.clone()),
        ),
        (None, Some(timeout)) => io.guard_h2_heads(H2HeadGuard::new(timeout)),
        (None, None) => io,
    };
    let service = ConnectionService::new(
        context.stack.for_connection(),
        meta,
        slot.clone(),
        exchanges,
    );
    forward::serve_connection(
        protocol,
        io,
        service,
        watch,
        &context.head_limits,
        &context.http1,
    )
}

#[cfg(test)]
mod future_sizes;
