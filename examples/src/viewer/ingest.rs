//! The one entry point both OTLP receivers feed: convert, store, count.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use super::convert::spans_from_request;
use super::metrics::{Protocol, ProtocolLabels, ViewerMetrics};
use super::store::TraceStore;

#[derive(Clone)]
pub struct Ingest {
    store: Arc<TraceStore>,
    metrics: ViewerMetrics,
}

impl Ingest {
    pub fn new(store: Arc<TraceStore>, metrics: ViewerMetrics) -> Self {
        Self { store, metrics }
    }

    /// Stores the request's spans and answers with OTLP partial success when some were refused,
    /// so a well-behaved exporter logs it instead of retrying forever.
    pub fn export(
        &self,
        request: ExportTraceServiceRequest,
        protocol: Protocol,
    ) -> ExportTraceServiceResponse {
        let converted = spans_from_request(request);
        let outcome = self.store.insert(converted.spans);
        self.metrics
            .spans_received
            .get_or_create(&ProtocolLabels { protocol })
            .inc_by(outcome.accepted);
        self.metrics.spans_rejected.inc_by(converted.rejected);
        self.metrics.spans_dropped.inc_by(outcome.dropped);
        self.metrics.traces_evicted.inc_by(outcome.evicted_traces);
        self.metrics
            .traces_stored
            .set(i64::try_from(self.store.trace_count()).unwrap_or(i64::MAX));
        tracing::debug!(
            ?protocol,
            accepted = outcome.accepted,
            rejected = converted.rejected,
            dropped = outcome.dropped,
            "spans received"
        );
        let refused = converted.rejected + outcome.dropped;
        let partial_success = (refused > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(refused).unwrap_or(i64::MAX),
            error_message: format!(
                "{} spans with invalid ids, {} spans over the per-trace limit of {}",
                converted.rejected,
                outcome.dropped,
                self.store.bounds().max_spans_per_trace
            ),
        });
        ExportTraceServiceResponse { partial_success }
    }
}
