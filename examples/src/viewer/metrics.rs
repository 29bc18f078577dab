//! What the viewer received and had to throw away, so a user can tell an empty UI caused by
//! "nothing sent" from one caused by "everything rejected".

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which receiver a span came in through.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: Protocol,
}

#[derive(Clone, Debug, Default)]
pub struct ViewerMetrics {
    pub spans_received: Family<ProtocolLabels, Counter>,
    pub spans_rejected: Counter,
    pub spans_dropped: Counter,
    pub traces_evicted: Counter,
    pub traces_stored: Gauge,
}

impl ViewerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let viewer = registry.sub_registry_with_prefix("meshtrace_viewer");
        viewer.register(
            "spans_received",
            "Spans accepted into the store, by OTLP receiver",
            metrics.spans_received.clone(),
        );
        viewer.register(
            "spans_rejected",
            "Spans refused because their trace or span id is invalid",
            metrics.spans_rejected.clone(),
        );
        viewer.register(
            "spans_dropped",
            "Spans dropped because their trace already holds the maximum number of spans",
            metrics.spans_dropped.clone(),
        );
        viewer.register(
            "traces_evicted",
            "Traces evicted (oldest first) to stay within the maximum number of traces",
            metrics.traces_evicted.clone(),
        );
        viewer.register(
            "traces_stored",
            "Traces currently held in memory",
            metrics.traces_stored.clone(),
        );
        metrics
    }
}
