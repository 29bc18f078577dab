//! The finished-span record and the sink it leaves the data path through.
//!
//! This is the one contract between the trace layers (producers, on the request path) and the
//! exporter (consumer, a background task). The request path only ever calls
//! [`SpanSink::try_send`]: it never waits, and a full queue drops the span and counts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// A 128-bit trace id.
pub type TraceId = [u8; 16];
/// A 64-bit span id.
pub type SpanId = [u8; 8];

/// Span kind as OTLP defines it; the proxy only records these two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Request received by the proxy.
    Server,
    /// Request forwarded by the proxy.
    Client,
}

/// Span status as OTLP defines it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum SpanStatus {
    #[default]
    Unset,
    Ok,
    Error(Option<String>),
}

/// An attribute value. `&'static str` keys and the `Static` variant keep the common
/// attributes free of allocation.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Static(&'static str),
    String(String),
    Int(i64),
    Bool(bool),
}

/// One finished span, as recorded on the request path. The exporter turns it into OTLP (adding
/// the proxy's resource) off the request path.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `None` for a root span.
    pub parent_span_id: Option<SpanId>,
    /// W3C `tracestate`, as propagated.
    pub trace_state: Option<String>,
    /// W3C trace flags (bit 0 sampled, bit 1 random).
    pub flags: u8,
    pub kind: SpanKind,
    pub name: String,
    /// Unix time, nanoseconds.
    pub start_unix_nanos: u64,
    /// Unix time, nanoseconds.
    pub end_unix_nanos: u64,
    pub status: SpanStatus,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

/// Why a span never reached the exporter's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The bounded queue was full; the span was dropped and counted.
    QueueFull,
    /// Export is turned off or the exporter has stopped.
    Closed,
}

/// The producer side of the bounded span queue. Cheap to clone; never blocks.
#[derive(Clone, Debug)]
pub struct SpanSink {
    tx: Option<mpsc::Sender<SpanRecord>>,
    dropped_queue_full: Arc<AtomicU64>,
}

/// The consumer side, owned by the exporter task.
#[derive(Debug)]
pub struct SpanQueue {
    pub rx: mpsc::Receiver<SpanRecord>,
    /// Shared with every [`SpanSink`] clone: spans dropped because the queue was full.
    pub dropped_queue_full: Arc<AtomicU64>,
    /// The queue's capacity, for the queue-depth metric.
    pub capacity: usize,
}

impl SpanSink {
    /// A bounded queue of `capacity` spans (at least 1).
    pub fn bounded(capacity: usize) -> (SpanSink, SpanQueue) {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        (
            SpanSink {
                tx: Some(tx),
                dropped_queue_full: dropped.clone(),
            },
            SpanQueue {
                rx,
                dropped_queue_full: dropped,
                capacity,
            },
        )
    }

    /// A sink that accepts nothing: span export is off (propagation still works).
    pub fn disabled() -> SpanSink {
        SpanSink {
            tx: None,
            dropped_queue_full: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether spans sent here can reach an exporter. When false, the trace layers skip
    /// recording altogether.
    pub fn is_enabled(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Hands a span to the exporter without waiting.
    pub fn try_send(&self, span: SpanRecord) -> Result<(), SendError> {
        let Some(tx) = &self.tx else {
            return Err(SendError::Closed);
        };
        match tx.try_send(span) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                Err(SendError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// Spans currently waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx
            .as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> SpanRecord {
        SpanRecord {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            trace_state: None,
            flags: 1,
            kind: SpanKind::Server,
            name: "GET /".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            status: SpanStatus::Unset,
            attributes: vec![("http.request.method", AttrValue::Static("GET"))],
        }
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts_without_waiting() {
        let (sink, mut queue) = SpanSink::bounded(2);
        assert!(sink.try_send(record(1)).is_ok());
        assert!(sink.try_send(record(2)).is_ok());
        assert_eq!(sink.queued(), 2);
        assert_eq!(sink.try_send(record(3)), Err(SendError::QueueFull));
        assert_eq!(queue.dropped_queue_full.load(Ordering::Relaxed), 1);
        assert_eq!(queue.rx.recv().await.map(|s| s.trace_id[0]), Some(1));
        assert!(sink.try_send(record(4)).is_ok());
    }

    #[test]
    fn disabled_sink_is_closed() {
        let sink = SpanSink::disabled();
        assert!(!sink.is_enabled());
        assert_eq!(sink.try_send(record(1)), Err(SendError::Closed));
    }
}
