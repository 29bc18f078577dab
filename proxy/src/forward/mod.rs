//! The forwarding pipeline, written once and parameterised by direction.
//!
//! ```text
//! server (HTTP/1: h1::server; h2: hyper) → ConnectionService → RequestMetrics → [SERVER-span slot]
//!     → error→response mapping (400/502/504 + meshtrace-proxy-error) → Validate (Host)
//!     → [CLIENT-span slot] → Upstream
//! ```
//!
//! It learns what it needs of the rest of the proxy as parameters: the detected protocol
//! ([`serve_connection`]), the proxy's own listeners ([`OwnListeners`]), the direction's
//! settings and metrics ([`StackParams`]).
//!
//! Modules in request order: [`server`] serves a client connection, [`connection_service`]
//! hands its requests to the connection's stack, [`request_metrics`] counts them, [`error`]
//! maps failures to responses, [`validate`] refuses requests whose Host is ambiguous,
//! [`request_body`] marks the client's body errors as the client's, [`upstream`] forwards each request to the destination that
//! [`destination`] names (after the [`loop_check`], through [`resolve`]), without the
//! [`hop_by_hop`] fields, over connections from [`pool`] (opened by [`connect`]), and bridges
//! upgrades through [`tunnel`]. [`streams`] runs an h2 connection's streams on its own task;
//! [`tcp`] copies opaque connections.

pub mod body;
pub mod connect;
pub mod connection_service;
pub mod destination;
pub mod error;
pub mod expect;
pub mod h1;
pub mod h2_head;
pub mod head;
pub mod head_budget;
pub mod hop_by_hop;
pub mod loop_check;
pub mod pool;
pub mod request_body;
pub mod request_metrics;
pub mod resolve;
pub mod server;
pub mod streams;
pub mod tcp;
pub mod tunnel;
pub mod upstream;
pub mod validate;

use tower::Layer;

use crate::config::DirectionConfig;
use crate::meta::Direction;
use crate::metrics::DirectionMetrics;
use crate::shutdown::WeakWatch;
use crate::trace::{
    ClientSpanLayer, ClientSpanService, ServerSpanLayer, ServerSpanService, TracedBody, Tracer,
};

pub use self::body::ProxyBody;
pub use self::connection_service::ConnectionService;
pub use self::error::{ErrorResponse, ErrorResponseLayer, ForwardError};
pub use self::loop_check::OwnListeners;
pub use self::request_metrics::{RequestMetrics, RequestMetricsLayer};
pub use self::server::serve_connection;
pub use self::upstream::{Upstream, UpstreamSettings};
pub use self::validate::{Validate, ValidateLayer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything the HTTP stack of one direction is built from.
#[derive(Clone, Debug)]
pub struct StackParams {
    pub direction: Direction,
    pub settings: DirectionConfig,
    pub own_listeners: OwnListeners,
    pub metrics: DirectionMetrics,
    pub resolver: resolve::Resolver,
    pub tunnels: WeakWatch,
    /// Makes the SERVER and CLIENT span layers (and owns the span sink).
    pub tracer: Tracer,
}

/// The HTTP stack of one client connection.
pub type HttpStack = RequestMetrics<
    ServerSpanService<ErrorResponse<Validate<ClientSpanService<Upstream<TracedBody<ProxyBody>>>>>>,
>;

/// One direction's layers, built once; every client connection gets its own [`HttpStack`] from
/// them, so that requests need not clone a shared stack and each connection keeps its own
/// upstream connections.
#[derive(Clone, Debug)]
pub struct HttpStacks {
    metrics: RequestMetricsLayer,
    server_span: ServerSpanLayer,
    client_span: ClientSpanLayer,
    upstream: Upstream<TracedBody<ProxyBody>>,
}

impl HttpStacks {
    pub fn for_connection(&self) -> HttpStack {
        // Outermost first: metrics see every request; the SERVER span sees the request as
        // received (with `Arc<ConnMeta>` in its extensions) and the response as sent, the
        // proxy's own 502/504s included; the CLIENT span sees the request as forwarded and the
        // upstream's response (with `UpstreamPeer`) or a `ForwardError` (`ErrorType`); a
        // request refused by `Validate` (Host, userinfo) gets no CLIENT span.
        let client = self.client_span.layer(self.upstream.for_connection());
        self.metrics.layer(
            self.server_span
                .layer(ErrorResponseLayer.layer(ValidateLayer.layer(client))),
        )
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
            max_header_bytes: params.settings.max_header_bytes,
            own_listeners: params.own_listeners.clone(),
        },
        params.resolver.clone(),
        params.tunnels.clone(),
    );
    HttpStacks {
        metrics: RequestMetricsLayer::new(params.metrics.clone()),
        server_span: params.tracer.server_layer_for(params.direction),
        client_span: params.tracer.client_layer(),
        upstream,
    }
}
