//! The forwarding pipeline, written once and parameterised by direction.
//!
//! ```text
//! hyper server conn → ConnectionService → RequestMetrics → [SERVER-span slot]
//!     → error→response mapping (502/504 + meshtrace-proxy-error) → [CLIENT-span slot] → Upstream
//! ```

pub mod connect;
pub mod error;
pub mod http;
pub mod pool;
pub mod resolve;
pub mod streams;
pub mod tcp;

use std::net::SocketAddr;

use hyper::body::Incoming;
use tower::Layer;

use crate::config::DirectionConfig;
use crate::meta::Direction;
use crate::metrics::DirectionMetrics;
use crate::shutdown::WeakWatch;
use crate::trace::{
    ClientSpanLayer, ClientSpanService, ServerSpanLayer, ServerSpanService, TracedBody, Tracer,
};

pub use self::error::{ErrorResponse, ErrorResponseLayer, ForwardError, PROXY_ERROR_HEADER};
pub use self::http::{RequestMetrics, RequestMetricsLayer, Upstream, UpstreamSettings};

/// Everything the HTTP stack of one direction is built from.
#[derive(Clone, Debug)]
pub struct StackParams {
    pub direction: Direction,
    pub settings: DirectionConfig,
    pub own_listeners: Vec<SocketAddr>,
    pub metrics: DirectionMetrics,
    pub resolver: resolve::Resolver,
    pub tunnels: WeakWatch,
    /// Makes the SERVER and CLIENT span layers (and owns the span sink).
    pub tracer: Tracer,
}

/// The HTTP stack of one client connection.
pub type HttpStack = RequestMetrics<
    ServerSpanService<ErrorResponse<ClientSpanService<Upstream<TracedBody<Incoming>>>>>,
>;

/// One direction's layers, built once; every client connection gets its own [`HttpStack`] from
/// them, so that requests need not clone a shared stack and each connection keeps its own
/// upstream connections.
#[derive(Clone, Debug)]
pub struct HttpStacks {
    metrics: RequestMetricsLayer,
    server_span: ServerSpanLayer,
    client_span: ClientSpanLayer,
    upstream: Upstream<TracedBody<Incoming>>,
}

impl HttpStacks {
    pub fn for_connection(&self) -> HttpStack {
        // Outermost first: metrics see every request; the SERVER span sees the request as
        // received (with `Arc<ConnMeta>` in its extensions) and the response as sent, the
        // proxy's own 502/504s included; the CLIENT span sees the request as forwarded and the
        // upstream's response (with `UpstreamPeer`) or a `ForwardError` (`ErrorType`).
        self.metrics.layer(self.server_span.layer(
            ErrorResponseLayer.layer(self.client_span.layer(self.upstream.for_connection())),
        ))
    }
}

/// Builds the HTTP stacks of one direction.
pub fn http_stacks(params: &StackParams) -> HttpStacks {
    let upstream = Upstream::new(
        UpstreamSettings {
            direction: params.direction,
            connect_timeout: params.settings.connect_timeout,
            response_timeout: params.settings.response_timeout,
            idle_timeout: params.settings.idle_timeout,
            own_listeners: params.own_listeners.clone(),
        },
        params.resolver.clone(),
        params.tunnels.clone(),
    );
    HttpStacks {
        metrics: RequestMetricsLayer::new(params.metrics.clone()),
        server_span: params.tracer.server_layer(),
        client_span: params.tracer.client_layer(),
        upstream,
    }
}
