//! The forwarding pipeline, written once and parameterised by direction.
//!
//! ```text
//! hyper server conn → WithConnMeta → RequestMetrics → [SERVER-span slot]
//!     → error→response mapping (502/504 + meshtrace-proxy-error) → [CLIENT-span slot] → Upstream
//! ```

pub mod connect;
pub mod error;
pub mod http;
pub mod pool;
pub mod resolve;
pub mod tcp;

use std::net::SocketAddr;

use hyper::body::Incoming;
use tower::ServiceBuilder;

use crate::config::DirectionConfig;
use crate::meta::Direction;
use crate::metrics::DirectionMetrics;
use crate::shutdown::WeakWatch;
use crate::trace::{ClientSpan, ServerSpan, TracedBody, Tracer};

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

/// The HTTP stack of one direction, shared (cloned) by all its connections.
pub type HttpStack =
    RequestMetrics<ServerSpan<ErrorResponse<ClientSpan<Upstream<TracedBody<Incoming>>>>>>;

/// Builds the HTTP stack of one direction.
pub fn http_stack(params: &StackParams) -> HttpStack {
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
    ServiceBuilder::new()
        .layer(RequestMetricsLayer::new(params.metrics.clone()))
        // SERVER span: sees the request as received (with `Arc<ConnMeta>` in its extensions)
        // and the response as sent, including the proxy's own 502/504s.
        .layer(params.tracer.server_layer())
        .layer(ErrorResponseLayer)
        // CLIENT span: sees the request as forwarded, the upstream's response (with
        // `UpstreamPeer` in its extensions) or a `ForwardError` (`ErrorType`).
        .layer(params.tracer.client_layer())
        .service(upstream)
}
