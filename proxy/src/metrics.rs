//! The data path's Prometheus families.
//!
//! Label sets are resolved once per direction when the proxy starts ([`DirectionMetrics`]), so
//! the request path only touches atomics: no family lookup (which takes a lock) per request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::detect::Protocol;
use crate::meta::Direction;

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

const STATUS_CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];
const PROTOCOLS: [Protocol; 3] = [Protocol::Http1, Protocol::H2, Protocol::Opaque];

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every family of the data path, registered once.
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    requests: Family<StatusLabels, Counter>,
    request_duration: Family<DirectionLabels, Histogram, fn() -> Histogram>,
    open_connections: Family<DirectionLabels, Gauge>,
    connections: Family<ProtocolLabels, Counter>,
    bytes: Family<FlowLabels, Counter>,
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
        DirectionMetrics(std::sync::Arc::new(DirectionHandles {
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
    requests_by_class: [Counter; 6],
    request_duration: Histogram,
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
        self.0.request_duration.observe(elapsed.as_secs_f64());
    }

    pub fn connection_detected(&self, protocol: Protocol) {
        let index = PROTOCOLS.iter().position(|p| *p == protocol).unwrap_or(2);
        self.0.connections_by_protocol[index].inc();
    }

    /// Counts the connection as open until the guard is dropped.
    pub fn open_connection(&self) -> OpenConnection {
        self.0.open_connections.inc();
        OpenConnection {
            gauge: self.0.open_connections.clone(),
        }
    }

    /// Wraps a client stream so every byte read from / written to it is counted.
    pub fn count_bytes<I>(&self, io: I) -> CountingIo<I> {
        CountingIo {
            io,
            received: self.0.bytes_received.clone(),
            sent: self.0.bytes_sent.clone(),
        }
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

pin_project_lite::pin_project! {
    /// A client stream that counts the bytes passing through it.
    #[derive(Debug)]
    pub struct CountingIo<I> {
        #[pin]
        io: I,
        received: Counter,
        sent: Counter,
    }
}

impl<I> CountingIo<I> {
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead> AsyncRead for CountingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.io.poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.received.inc_by(read as u64);
        }
        result
    }
}

impl<I: AsyncWrite> AsyncWrite for CountingIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = result {
            this.sent.inc_by(written as u64);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = result {
            this.sent.inc_by(written as u64);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
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
}
