//! Trace-layer metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Counters of the trace layers. Cheap to clone (shared atomics).
#[derive(Clone, Debug, Default)]
pub struct TraceMetrics {
    /// Sample headers that were not a number (ignored).
    pub sample_header_invalid: Counter,
    /// Spans handed to the exporter's queue.
    pub spans_recorded: Counter,
    /// Spans refused because the export queue was closed (export stopped). A full queue's drops
    /// are the exporter's `meshtrace_export_spans_dropped{reason="queue_full"}`, so that each
    /// drop is counted in one family.
    pub spans_dropped: Counter,
}

impl TraceMetrics {
    /// Creates the counters and registers them (`meshtrace_trace_*`).
    pub fn register(registry: &mut Registry) -> TraceMetrics {
        let metrics = TraceMetrics::default();
        registry.register(
            "meshtrace_trace_sample_header_invalid",
            "Requests whose sample header (MESHTRACE_SAMPLE_HEADER) was not a number and was ignored",
            metrics.sample_header_invalid.clone(),
        );
        registry.register(
            "meshtrace_trace_spans_recorded",
            "Spans handed to the export queue",
            metrics.spans_recorded.clone(),
        );
        registry.register(
            "meshtrace_trace_spans_dropped",
            "Finished spans dropped because the export queue was closed (a full queue's drops are meshtrace_export_spans_dropped_total{reason=\"queue_full\"})",
            metrics.spans_dropped.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_counters_are_exposed() {
        let mut registry = Registry::default();
        let metrics = TraceMetrics::register(&mut registry);
        metrics.sample_header_invalid.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("meshtrace_trace_sample_header_invalid_total 1"),
            "{text}"
        );
        assert!(
            text.contains("meshtrace_trace_spans_recorded_total 0"),
            "{text}"
        );
        assert!(
            text.contains("meshtrace_trace_spans_dropped_total 0"),
            "{text}"
        );
    }
}
