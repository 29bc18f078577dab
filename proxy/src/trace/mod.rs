//! Tracing on every hop: propagation formats, sampling, span recording, and the tower layers
//! that put SERVER and CLIENT spans around the HTTP path.
//!
//! ```text
//! hyper server → ServerSpanLayer → error→response mapping → ClientSpanLayer → upstream client
//! ```
//! [`ServerSpanLayer`] reads the incoming context (W3C, B3 single, B3 multi), takes the
//! sampling decision, and records the SERVER span until the response body ends; it hands the
//! context to [`ClientSpanLayer`] in a [`HopContext`] request extension. [`ClientSpanLayer`]
//! makes a CLIENT span per forwarded request and rewrites every propagation header with it.
//! Unsampled requests still propagate a context (flags `00`) but record nothing. Tracing never
//! fails a request: whatever cannot be parsed or written is skipped.
//!
//! Modules, in the order a request meets them:
//! - `layer`: the tower shells (`ServerSpanLayer`/`ServerSpanService`/`ServerFuture`, and
//!   the CLIENT ones); each calls `hop` and wraps the response body;
//! - `hop`: starting the SERVER and CLIENT spans of a hop, step by step (scan, extract, join,
//!   decide, record, hand off; CLIENT: record, inject);
//! - `propagation` (`w3c`, `b3`): reading the incoming context, writing the outgoing one;
//! - `sampling`: the sampling decision (sample header, B3 debug, inherited, ratio);
//! - `ids`: new trace and span ids;
//! - `attributes` (`target`, `text`, `response`): every span attribute, request and response,
//!   and the span name's inputs; `naming`: span names;
//! - `context`: the hop's context handed from the SERVER to the CLIENT span, and a sampled
//!   request's recording;
//! - `record`: a span between start and end, finished once and sent to the sink;
//! - `body`: the body wrapper that counts bytes and ends spans; `clock`: span timestamps;
//! - `metrics`: the trace layers' counters.

mod attributes;
mod body;
mod clock;
mod context;
pub mod correlate;
mod hop;
pub mod ids;
mod layer;
mod metrics;
pub mod naming;
pub mod propagation;
mod record;
pub mod sampling;

#[cfg(test)]
mod layer_tests;

use std::sync::Arc;

use http::HeaderName;

use crate::meta::Direction;
use crate::span::{SendError, SpanRecord, SpanSink};

use self::correlate::{ContextInference, CorrelateSettings, Correlator, SystemClock};

pub use body::TracedBody;
pub use context::HopContext;
pub use layer::{
    ClientFuture, ClientSpanLayer, ClientSpanService, ServerFuture, ServerSpanLayer,
    ServerSpanService,
};
pub use metrics::TraceMetrics;
pub use naming::SpanNaming;
pub use propagation::B3Forms;

// The settings are parsed in `config`; re-exported for the layers' users.
pub use crate::config::trace::{PropagationFormat, TraceArgs, TraceResponse};

/// The tracer's settings and outputs (span sink, metrics), shared by every layer instance and
/// every request recording.
#[derive(Debug)]
pub(crate) struct TracerState {
    sample_rate: f64,
    sample_header: HeaderName,
    default_b3: B3Forms,
    naming: SpanNaming,
    trace_response: TraceResponse,
    sink: SpanSink,
    metrics: TraceMetrics,
    /// The pod's in-flight inbound requests, for outbound requests without context; `None`
    /// when inference is off.
    correlator: Option<Arc<Correlator>>,
    /// `MESHTRACE_REQUEST_ID_HEADER`; `None` for `none` and when inference is off.
    request_id_header: Option<HeaderName>,
}

impl TracerState {
    pub(crate) fn send(&self, record: SpanRecord) {
        match self.sink.try_send(record) {
            Ok(()) => {
                self.metrics.spans_recorded.inc();
            }
            // Counted once, by the exporter: `meshtrace_export_spans_dropped{reason="queue_full"}`.
            Err(SendError::QueueFull) => {}
            Err(SendError::Closed) => {
                self.metrics.spans_dropped.inc();
            }
        }
    }
}

/// The runtime tracer: cheap to clone; makes the two layers.
#[derive(Clone, Debug)]
pub struct Tracer {
    state: Arc<TracerState>,
}

impl Tracer {
    /// A tracer with unregistered metrics.
    pub fn new(args: &TraceArgs, sink: SpanSink) -> Tracer {
        Tracer::with_metrics(args, sink, TraceMetrics::default())
    }

    /// A tracer counting into `metrics` (see [`TraceMetrics::register`]).
    pub fn with_metrics(args: &TraceArgs, sink: SpanSink, metrics: TraceMetrics) -> Tracer {
        let default_b3 = B3Forms {
            single: args.propagation.contains(&PropagationFormat::B3),
            multi: args.propagation.contains(&PropagationFormat::B3Multi),
        };
        let correlator = (args.context_inference != ContextInference::Off).then(|| {
            let settings = CorrelateSettings {
                mode: args.context_inference,
                request_id_window: args.request_id_window,
                max_links: args.context_max_links,
                max_age: args.context_max_age,
                // One shard per thread that may serve requests.
                shards: std::thread::available_parallelism().map_or(1, usize::from),
                ..CorrelateSettings::default()
            };
            Correlator::counting(
                settings,
                Arc::new(SystemClock),
                metrics.context_evicted.clone(),
            )
        });
        if let Some(correlator) = &correlator {
            // Expires remembered ids and gives memory back also when traffic stops.
            correlator.sweep_periodically(correlate::SWEEP_PERIOD);
        }
        Tracer {
            state: Arc::new(TracerState {
                sample_rate: args.sample_rate.clamp(0.0, 1.0),
                sample_header: args.sample_header.clone(),
                default_b3,
                naming: args.span_name,
                trace_response: args.trace_response,
                sink,
                metrics,
                // Inference off: request ids would serve nothing, so none are added.
                request_id_header: correlator.as_ref().and(args.request_id_header.0.clone()),
                correlator,
            }),
        }
    }

    /// The layer recording SERVER spans; put it right after the HTTP server. It does not
    /// correlate: see [`Tracer::server_layer_for`].
    pub fn server_layer(&self) -> ServerSpanLayer {
        ServerSpanLayer::new(self.state.clone(), None)
    }

    /// The SERVER-span layer of one direction of the proxy: inbound requests get request ids
    /// and are registered for correlation, outbound requests without trace context have their
    /// parent inferred (`correlate`).
    pub fn server_layer_for(&self, direction: Direction) -> ServerSpanLayer {
        ServerSpanLayer::new(self.state.clone(), Some(direction))
    }

    /// The layer recording CLIENT spans; put it right before the upstream client.
    pub fn client_layer(&self) -> ClientSpanLayer {
        ClientSpanLayer::new()
    }

    pub fn metrics(&self) -> &TraceMetrics {
        &self.state.metrics
    }
}
