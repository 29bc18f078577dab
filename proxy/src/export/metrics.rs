//! Exporter metrics: whether spans leave the proxy, and where they are lost when they do not.
//!
//! Registered under the `export_` prefix of the registry the caller passes (the admin server's
//! registry, itself prefixed `meshtrace_`). Spans dropped because the queue was full are counted
//! by the data path's `SpanSink`; they are read at scrape time so the counter is exact even while
//! the exporter task is busy retrying.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Why spans were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The queue between the data path and the exporter was full.
    QueueFull,
    /// The export failed for good (not retryable, retries exhausted, or shutdown deadline).
    ExportFailed,
    /// The collector accepted the request but rejected these spans (partial success).
    Rejected,
}

impl DropReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::Rejected => "rejected",
        }
    }
}

/// The result of one export request (one attempt).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestResult {
    Success,
    PartialSuccess,
    RetryableError,
    Error,
}

impl RequestResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            RequestResult::Success => "success",
            RequestResult::PartialSuccess => "partial_success",
            RequestResult::RetryableError => "retryable_error",
            RequestResult::Error => "error",
        }
    }
}

impl EncodeLabelValue for RequestResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    result: RequestResult,
}

/// The `spans_dropped{reason}` family, encoded at scrape time.
#[derive(Debug, Default)]
struct DropCounters {
    queue_full: OnceLock<Arc<AtomicU64>>,
    export_failed: AtomicU64,
    rejected: AtomicU64,
}

impl DropCounters {
    fn get(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::QueueFull => self
                .queue_full
                .get()
                .map_or(0, |c| c.load(Ordering::Relaxed)),
            DropReason::ExportFailed => self.export_failed.load(Ordering::Relaxed),
            DropReason::Rejected => self.rejected.load(Ordering::Relaxed),
        }
    }
}

impl Collector for DropCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "spans_dropped",
            "Spans that never reached the collector, by reason",
            None,
            MetricType::Counter,
        )?;
        for reason in [
            DropReason::QueueFull,
            DropReason::ExportFailed,
            DropReason::Rejected,
        ] {
            let labels = [("reason", reason.as_str())];
            let metric = family.encode_family(&labels)?;
            ConstCounter::new(self.get(reason)).encode(metric)?;
        }
        Ok(())
    }
}

/// Cheap to clone; all clones share the same counters.
#[derive(Clone, Debug)]
pub struct ExportMetrics {
    spans_exported: Counter,
    dropped: Arc<DropCounters>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histogram,
    queue_depth: Gauge,
}

impl Default for ExportMetrics {
    fn default() -> Self {
        Self {
            spans_exported: Counter::default(),
            dropped: Arc::default(),
            requests: Family::default(),
            // 1 ms .. ~33 s
            request_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            queue_depth: Gauge::default(),
        }
    }
}

impl ExportMetrics {
    /// Creates the metrics and registers them (under `export_`) in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("export");
        registry.register(
            "spans_exported",
            "Spans accepted by the collector",
            metrics.spans_exported.clone(),
        );
        registry.register_collector(Box::new(metrics.dropped.clone()));
        registry.register(
            "requests",
            "OTLP export requests (attempts), by result",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Duration of OTLP export requests (attempts)",
            Unit::Seconds,
            metrics.request_duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Spans waiting in the exporter's queue",
            metrics.queue_depth.clone(),
        );
        metrics
    }

    /// Counts the queue's full-queue drops (kept by the `SpanSink`) as `reason="queue_full"`.
    pub(crate) fn attach_queue_drops(&self, counter: Arc<AtomicU64>) {
        if self.dropped.queue_full.set(counter).is_err() {
            tracing::warn!("export metrics already attached to a span queue");
        }
    }

    pub(crate) fn exported(&self, spans: u64) {
        self.spans_exported.inc_by(spans);
    }

    pub(crate) fn drop_spans(&self, reason: DropReason, spans: u64) {
        match reason {
            DropReason::QueueFull => {}
            DropReason::ExportFailed => {
                self.dropped
                    .export_failed
                    .fetch_add(spans, Ordering::Relaxed);
            }
            DropReason::Rejected => {
                self.dropped.rejected.fetch_add(spans, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn request(&self, result: RequestResult, duration: Duration) {
        self.requests.get_or_create(&RequestLabels { result }).inc();
        self.request_duration.observe(duration.as_secs_f64());
    }

    pub(crate) fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Spans the collector accepted so far.
    pub fn spans_exported(&self) -> u64 {
        self.spans_exported.get()
    }

    /// Spans lost so far for `reason`.
    pub fn spans_dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason)
    }

    /// Export attempts so far with `result`.
    pub fn requests(&self, result: RequestResult) -> u64 {
        self.requests.get_or_create(&RequestLabels { result }).get()
    }

    /// The last observed queue depth.
    pub fn queue_depth(&self) -> i64 {
        self.queue_depth.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_reasons() {
        let mut registry = Registry::with_prefix("meshtrace");
        let metrics = ExportMetrics::register(&mut registry);
        let queue_full = Arc::new(AtomicU64::new(0));
        metrics.attach_queue_drops(queue_full.clone());
        queue_full.fetch_add(3, Ordering::Relaxed);
        metrics.drop_spans(DropReason::ExportFailed, 5);
        metrics.drop_spans(DropReason::Rejected, 2);
        metrics.exported(10);
        metrics.request(RequestResult::Success, Duration::from_millis(3));
        metrics.set_queue_depth(4);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "meshtrace_export_spans_exported_total 10",
            "meshtrace_export_spans_dropped_total{reason=\"queue_full\"} 3",
            "meshtrace_export_spans_dropped_total{reason=\"export_failed\"} 5",
            "meshtrace_export_spans_dropped_total{reason=\"rejected\"} 2",
            "meshtrace_export_requests_total{result=\"success\"} 1",
            "meshtrace_export_request_duration_seconds_count 1",
            "meshtrace_export_queue_depth 4",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(metrics.spans_dropped(DropReason::QueueFull), 3);
    }
}
