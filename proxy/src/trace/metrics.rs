//! Trace-layer metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::correlate::{EvictionCounters, Source};

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
    /// Outbound requests by how their parent was found, indexed by [`Source`] (each counter
    /// taken from the family once, so counting takes no lock).
    pub context_source: [Counter; Source::ALL.len()],
    /// Correlate entries evicted to stay within bounds.
    pub context_evicted: EvictionCounters,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl TraceMetrics {
    /// Counts an outbound request whose parent was found by `source`.
    pub fn count_source(&self, source: Source) {
        self.context_source[source as usize].inc();
    }
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
        // Each counter is taken from its family once (a statement each: a family's guard must
        // be gone before it creates the next one), so counting never takes the family's lock.
        let sources = Family::<SourceLabel, Counter>::default();
        let context_source = Source::ALL.map(|source| {
            let counter = sources
                .get_or_create(&SourceLabel {
                    source: source.as_str(),
                })
                .clone();
            counter
        });
        registry.register(
            "meshtrace_trace_context_source",
            "Outbound requests by how their parent was found: propagated (sent by the application), request_id, sole_in_flight (inferred), ambiguous (new trace with links), background (new trace)",
            sources.clone(),
        );
        let evicted = Family::<KindLabel, Counter>::default();
        let in_flight = evicted
            .get_or_create(&KindLabel { kind: "in_flight" })
            .clone();
        let recent = evicted.get_or_create(&KindLabel { kind: "recent" }).clone();
        registry.register(
            "meshtrace_trace_context_evicted",
            "Context-inference entries evicted to stay within bounds: in_flight (tracked inbound requests), recent (request ids of finished requests)",
            evicted,
        );
        TraceMetrics {
            context_source,
            context_evicted: EvictionCounters { in_flight, recent },
            ..metrics
        }
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
        metrics.count_source(Source::SoleInFlight);
        metrics.count_source(Source::SoleInFlight);
        metrics.context_evicted.recent.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "meshtrace_trace_context_source_total{source=\"sole_in_flight\"} 2",
            "meshtrace_trace_context_source_total{source=\"propagated\"} 0",
            "meshtrace_trace_context_evicted_total{kind=\"recent\"} 1",
            "meshtrace_trace_context_evicted_total{kind=\"in_flight\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
