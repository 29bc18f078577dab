//! The data path's Prometheus families.
//!
//! Label sets are resolved once per direction when the proxy starts ([`DirectionMetrics`]), so
//! the request path only touches atomics: no family lookup (which takes a lock) per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::admission::ShedReason;
use crate::client_io::ClientIo;
use crate::meta::{Direction, Protocol};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    direction: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    direction: &'static str,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    direction: &'static str,
    /// `received`: bytes read from clients; `sent`: bytes written to clients.
    flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    direction: &'static str,
    reason: &'static str,
}

const STATUS_CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];
const PROTOCOLS: [Protocol; 3] = [Protocol::Http1, Protocol::H2, Protocol::Opaque];
const SHED_REASONS: [ShedReason; 2] = [ShedReason::MaxConnections, ShedReason::FdLimit];

fn latency_histogram() -> LatencyHistogram {
    LatencyHistogram::default()
}

/// Every family of the data path, registered once.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    requests: Family<StatusLabels, Counter>,
    request_duration: Family<DirectionLabels, LatencyHistogram, fn() -> LatencyHistogram>,
    open_connections: Family<DirectionLabels, Gauge>,
    connections: Family<ProtocolLabels, Counter>,
    bytes: Family<FlowLabels, Counter>,
    shed: Family<ShedLabels, Counter>,
}

impl ProxyMetrics {
    /// Registers the families under the `meshtrace_proxy_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("meshtrace_proxy");
        let metrics = ProxyMetrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            open_connections: Family::default(),
            connections: Family::default(),
            bytes: Family::default(),
            shed: Family::default(),
        };
        registry.register(
            "requests",
            "HTTP requests answered, by direction and response status class",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from receiving an HTTP request to sending its response headers",
            metrics.request_duration.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections currently open",
            metrics.open_connections.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted, by detected protocol (opaque = forwarded as raw TCP)",
            metrics.connections.clone(),
        );
        registry.register(
            "bytes",
            "Bytes exchanged with clients (received from / sent to them), all protocols",
            metrics.bytes.clone(),
        );
        registry.register(
            "connections_shed",
            "Client connections closed to admit new ones, by direction and the limit reached (max_connections, fd_limit)",
            metrics.shed.clone(),
        );
        metrics
    }

    /// The handles of one direction, resolved once.
    pub fn direction(&self, direction: Direction) -> DirectionMetrics {
        // Each lookup is its own statement: `get_or_create` returns a read guard, and holding
        // one while creating another label set of the same family would deadlock.
        let dir = direction.as_str();
        let requests_by_class = STATUS_CLASSES.map(|status_class| {
            let labels = StatusLabels {
                direction: dir,
                status_class,
            };
            let counter = self.requests.get_or_create(&labels).clone();
            counter
        });
        let labels = DirectionLabels { direction: dir };
        let request_duration = self.request_duration.get_or_create(&labels).clone();
        let open_connections = self.open_connections.get_or_create(&labels).clone();
        let connections_by_protocol = PROTOCOLS.map(|protocol| {
            let labels = ProtocolLabels {
                direction: dir,
                protocol: protocol.as_str(),
            };
            let counter = self.connections.get_or_create(&labels).clone();
            counter
        });
        let flow = |flow| FlowLabels {
            direction: dir,
            flow,
        };
        let bytes_received = self.bytes.get_or_create(&flow("received")).clone();
        let bytes_sent = self.bytes.get_or_create(&flow("sent")).clone();
        let shed_by_reason = SHED_REASONS.map(|reason| {
            let labels = ShedLabels {
                direction: dir,
                reason: reason.as_str(),
            };
            let counter = self.shed.get_or_create(&labels).clone();
            counter
        });
        DirectionMetrics(std::sync::Arc::new(DirectionHandles {
            shed_by_reason,
            requests_by_class,
            request_duration,
            open_connections,
            connections_by_protocol,
            bytes_received,
            bytes_sent,
        }))
    }
}

/// One direction's metric handles; clones share the same atomics (and cost one reference
/// count, since a response future holds one).
#[derive(Clone, Debug)]
pub struct DirectionMetrics(std::sync::Arc<DirectionHandles>);

#[derive(Debug)]
struct DirectionHandles {
    shed_by_reason: [Counter; 2],
    requests_by_class: [Counter; 6],
    request_duration: LatencyHistogram,
    open_connections: Gauge,
    connections_by_protocol: [Counter; 3],
    bytes_received: Counter,
    bytes_sent: Counter,
}

impl DirectionMetrics {
    /// A set of handles registered nowhere (for tests and embedding).
    pub fn unregistered() -> Self {
        ProxyMetrics::register(&mut Registry::default()).direction(Direction::Inbound)
    }

    pub fn record_response(&self, status: http::StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100);
        let index = if (1..=5).contains(&class) { class } else { 0 };
        self.0.requests_by_class[index].inc();
        self.0.request_duration.observe(elapsed);
    }

    pub fn connection_detected(&self, protocol: Protocol) {
        let index = PROTOCOLS.iter().position(|p| *p == protocol).unwrap_or(2);
        self.0.connections_by_protocol[index].inc();
    }

    /// Counts a connection shed by admission control.
    pub fn connection_shed(&self, reason: ShedReason) {
        let index = SHED_REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        self.0.shed_by_reason[index].inc();
    }

    /// Counts the connection as open until the guard is dropped.
    pub fn open_connection(&self) -> OpenConnection {
        self.0.open_connections.inc();
        OpenConnection {
            gauge: self.0.open_connections.clone(),
        }
    }

    /// Wraps a client stream so every byte read from / written to it is counted.
    pub fn count_bytes<I>(&self, io: I) -> ClientIo<I> {
        ClientIo::new(io, self.0.bytes_received.clone(), self.0.bytes_sent.clone())
    }
}

/// Upper bounds of [`LatencyHistogram`]'s buckets: 1 ms doubling to ~33 s, then +Inf.
const LATENCY_BUCKETS: usize = 16;

/// A latency histogram updated with atomics alone. prometheus-client's `Histogram` locks a
/// mutex on every observation, and the request-duration histogram is shared by every
/// connection of a direction: a lock across connections on the request path.
///
/// Clones share the same counts.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(std::sync::Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    /// Observations per bucket (not cumulative), the last one being +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// The upper bound of bucket `index` in nanoseconds (1 ms × 2^index).
    const fn bound_nanos(index: usize) -> u64 {
        1_000_000 << index
    }

    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let index = (0..LATENCY_BUCKETS)
            .find(|&i| nanos <= Self::bound_nanos(i))
            .unwrap_or(LATENCY_BUCKETS);
        self.0.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (upper bound in seconds, observations) per bucket, +Inf last.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .0
            .buckets
            .iter()
            .enumerate()
            .map(|(i, count)| {
                let bound = if i < LATENCY_BUCKETS {
                    Self::bound_nanos(i) as f64 / 1e9
                } else {
                    f64::INFINITY
                };
                (bound, count.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Decrements the open-connections gauge when dropped.
#[derive(Debug)]
pub struct OpenConnection {
    gauge: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn families_are_exposed_with_direction_labels() {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        let outbound = metrics.direction(Direction::Outbound);
        outbound.record_response(http::StatusCode::BAD_GATEWAY, Duration::from_millis(3));
        outbound.connection_detected(Protocol::Opaque);
        let open = outbound.open_connection();

        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains(
            r#"meshtrace_proxy_requests_total{direction="outbound",status_class="5xx"} 1"#
        ));
        assert!(text.contains(
            r#"meshtrace_proxy_connections_total{direction="outbound",protocol="opaque"} 1"#
        ));
        assert!(text.contains(r#"meshtrace_proxy_open_connections{direction="outbound"} 1"#));
        assert!(text
            .contains(r#"meshtrace_proxy_request_duration_seconds_count{direction="outbound"} 1"#));
        drop(open);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"meshtrace_proxy_open_connections{direction="outbound"} 0"#));
    }

    #[test]
    fn latency_histogram_buckets_and_encoding() {
        let mut registry = Registry::default();
        let histogram = LatencyHistogram::default();
        registry.register("latency_seconds", "test", histogram.clone());
        for ms in [0.5, 1.0, 1.5, 3.0, 40_000.0] {
            histogram.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        // Cumulative counts: ≤1 ms: 0.5 and 1.0; ≤2 ms: +1.5; ≤4 ms: +3.0; 40 s only in +Inf.
        for expected in [
            r#"latency_seconds_bucket{le="0.001"} 2"#,
            r#"latency_seconds_bucket{le="0.002"} 3"#,
            r#"latency_seconds_bucket{le="0.004"} 4"#,
            r#"latency_seconds_bucket{le="32.768"} 4"#,
            r#"latency_seconds_bucket{le="+Inf"} 5"#,
            "latency_seconds_count 5",
            "latency_seconds_sum 40.006",
            "# TYPE latency_seconds histogram",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }
}
