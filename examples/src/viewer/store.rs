//! Recent traces in bounded memory.
//!
//! The viewer is a local debugging tool fed by any OTLP source, so it must never grow without
//! bound: it keeps at most `max_traces` traces (the oldest-created trace is evicted first) and at
//! most `max_spans_per_trace` spans in each (later spans of an over-full trace are dropped and
//! counted). A single mutex is enough: ingest batches and UI queries are rare and short compared
//! with a proxy's data path.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;

/// Limits on what the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreBounds {
    pub max_traces: usize,
    pub max_spans_per_trace: usize,
}

/// A 16-byte W3C/OTLP trace id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// Parses the 32 hex digits used in URLs and the JSON API.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(Self(id))
    }

    /// Takes an OTLP `bytes` trace id; the all-zero id is invalid per the spec.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let id: [u8; 16] = bytes.try_into().ok()?;
        (id != [0; 16]).then_some(Self(id))
    }
}

impl SpanId {
    /// Takes an OTLP `bytes` span id; the all-zero id is invalid per the spec.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let id: [u8; 8] = bytes.try_into().ok()?;
        (id != [0; 8]).then_some(Self(id))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// OTLP span kind, named the way the UI shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

/// OTLP status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

/// A span event, kept so the UI can show e.g. exceptions or retries.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// One span as the viewer keeps it: ids decoded, service name resolved from the resource,
/// attribute values already in their JSON form.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub service: Arc<str>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: StatusCode,
    pub status_message: String,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub resource: Arc<serde_json::Map<String, serde_json::Value>>,
    pub events: Vec<StoredEvent>,
    /// Spans this one is linked to (OpenTelemetry span links), e.g. the candidate parents of a
    /// request whose parent a proxy could not tell.
    pub links: Vec<StoredLink>,
}

/// A span link: another span, possibly of another trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

impl StoredSpan {
    fn is_error(&self) -> bool {
        self.status == StatusCode::Error
    }
}

/// What happened to the spans of one ingest call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    pub accepted: u64,
    /// Spans refused because their trace already holds `max_spans_per_trace` spans.
    pub dropped: u64,
    /// Traces evicted to stay within `max_traces`.
    pub evicted_traces: u64,
}

/// List filter of `GET /api/traces`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub limit: usize,
}

/// One row of the trace list.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub trace_id: String,
    pub root_name: String,
    pub root_service: String,
    /// False when the trace's true root (a span without parent) has not arrived (yet).
    pub root_complete: bool,
    pub services: Vec<String>,
    pub span_count: usize,
    pub error_count: usize,
    /// Exact start as a decimal string: unix nanoseconds do not fit a JSON/JS number.
    pub start_time_unix_nano: String,
    pub start_time_unix_ms: f64,
    pub duration_ms: f64,
    pub dropped_spans: u64,
}

/// A span as the trace page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanView {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub kind: SpanKind,
    pub name: String,
    pub start_time_unix_nano: String,
    /// Offset from the trace's first span start.
    pub start_offset_ms: f64,
    pub duration_ms: f64,
    pub status: StatusView,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub resource: serde_json::Map<String, serde_json::Value>,
    pub events: Vec<EventView>,
    pub links: Vec<LinkView>,
}

/// A span link as the trace page shows it (a reference to open).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkView {
    pub trace_id: String,
    pub span_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusView {
    pub code: StatusCode,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub name: String,
    pub offset_ms: f64,
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// A whole trace for `GET /api/traces/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceDetail {
    #[serde(flatten)]
    pub summary: TraceSummary,
    /// Sorted by start time.
    pub spans: Vec<SpanView>,
}

#[derive(Default)]
struct TraceEntry {
    spans: Vec<StoredSpan>,
    services: BTreeSet<Arc<str>>,
    start_unix_nano: u64,
    end_unix_nano: u64,
    error_count: usize,
    dropped_spans: u64,
}

impl TraceEntry {
    fn add(&mut self, span: StoredSpan, max_spans: usize) -> bool {
        if let Some(existing) = self.spans.iter_mut().find(|s| s.span_id == span.span_id) {
            // An exporter retry re-sent it: the latest copy wins.
            *existing = span;
            self.recompute();
            return true;
        }
        if self.spans.len() >= max_spans {
            self.dropped_spans += 1;
            return false;
        }
        if self.spans.is_empty() || span.start_unix_nano < self.start_unix_nano {
            self.start_unix_nano = span.start_unix_nano;
        }
        self.end_unix_nano = self.end_unix_nano.max(span.end_unix_nano);
        self.error_count += usize::from(span.is_error());
        self.services.insert(span.service.clone());
        self.spans.push(span);
        true
    }

    fn recompute(&mut self) {
        self.start_unix_nano = self
            .spans
            .iter()
            .map(|s| s.start_unix_nano)
            .min()
            .unwrap_or(0);
        self.end_unix_nano = self
            .spans
            .iter()
            .map(|s| s.end_unix_nano)
            .max()
            .unwrap_or(0);
        self.error_count = self.spans.iter().filter(|s| s.is_error()).count();
        self.services = self.spans.iter().map(|s| s.service.clone()).collect();
    }

    /// The earliest span without a parent; failing that, the earliest span whose parent is
    /// not in the trace (the trace is then shown as incomplete).
    fn root(&self) -> Option<(&StoredSpan, bool)> {
        let earliest = |a: &&StoredSpan, b: &&StoredSpan| a.start_unix_nano.cmp(&b.start_unix_nano);
        if let Some(root) = self
            .spans
            .iter()
            .filter(|s| s.parent_span_id.is_none())
            .min_by(earliest)
        {
            return Some((root, true));
        }
        let ids: HashSet<SpanId> = self.spans.iter().map(|s| s.span_id).collect();
        self.spans
            .iter()
            .filter(|s| s.parent_span_id.is_some_and(|p| !ids.contains(&p)))
            .min_by(earliest)
            .map(|s| (s, false))
    }

    fn summary(&self, trace_id: TraceId) -> TraceSummary {
        let root = self.root();
        TraceSummary {
            trace_id: trace_id.to_string(),
            root_name: root.map(|(s, _)| s.name.clone()).unwrap_or_default(),
            root_service: root.map(|(s, _)| s.service.to_string()).unwrap_or_default(),
            root_complete: root.is_some_and(|(_, complete)| complete),
            services: self.services.iter().map(|s| s.to_string()).collect(),
            span_count: self.spans.len(),
            error_count: self.error_count,
            start_time_unix_nano: self.start_unix_nano.to_string(),
            start_time_unix_ms: self.start_unix_nano as f64 / 1e6,
            duration_ms: nanos_to_ms(self.end_unix_nano.saturating_sub(self.start_unix_nano)),
            dropped_spans: self.dropped_spans,
        }
    }

    fn detail(&self, trace_id: TraceId) -> TraceDetail {
        let origin = self.start_unix_nano;
        let mut spans: Vec<&StoredSpan> = self.spans.iter().collect();
        spans.sort_by_key(|s| s.start_unix_nano);
        TraceDetail {
            summary: self.summary(trace_id),
            spans: spans
                .into_iter()
                .map(|span| SpanView {
                    span_id: span.span_id.to_string(),
                    parent_span_id: span.parent_span_id.map(|p| p.to_string()),
                    service: span.service.to_string(),
                    kind: span.kind,
                    name: span.name.clone(),
                    start_time_unix_nano: span.start_unix_nano.to_string(),
                    start_offset_ms: nanos_to_ms(span.start_unix_nano.saturating_sub(origin)),
                    duration_ms: nanos_to_ms(
                        span.end_unix_nano.saturating_sub(span.start_unix_nano),
                    ),
                    status: StatusView {
                        code: span.status,
                        message: span.status_message.clone(),
                    },
                    attributes: span.attributes.clone(),
                    resource: (*span.resource).clone(),
                    events: span
                        .events
                        .iter()
                        .map(|event| EventView {
                            name: event.name.clone(),
                            offset_ms: nanos_to_ms(event.time_unix_nano.saturating_sub(origin)),
                            attributes: event.attributes.clone(),
                        })
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|link| LinkView {
                            trace_id: link.trace_id.to_string(),
                            span_id: link.span_id.to_string(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

fn nanos_to_ms(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

#[derive(Default)]
struct Inner {
    traces: HashMap<TraceId, TraceEntry>,
    /// Creation order, oldest first: the eviction queue.
    order: VecDeque<TraceId>,
}

/// The shared store; cheap to clone via `Arc`.
pub struct TraceStore {
    bounds: StoreBounds,
    inner: Mutex<Inner>,
}

impl TraceStore {
    pub fn new(bounds: StoreBounds) -> Self {
        let bounds = StoreBounds {
            max_traces: bounds.max_traces.max(1),
            max_spans_per_trace: bounds.max_spans_per_trace.max(1),
        };
        Self {
            bounds,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn bounds(&self) -> StoreBounds {
        self.bounds
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps structurally broken.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn insert(&self, spans: impl IntoIterator<Item = StoredSpan>) -> InsertOutcome {
        let mut outcome = InsertOutcome::default();
        let mut inner = self.lock();
        for span in spans {
            let trace_id = span.trace_id;
            if !inner.traces.contains_key(&trace_id) {
                while inner.traces.len() >= self.bounds.max_traces {
                    let Some(oldest) = inner.order.pop_front() else {
                        break;
                    };
                    if inner.traces.remove(&oldest).is_some() {
                        outcome.evicted_traces += 1;
                    }
                }
                inner.order.push_back(trace_id);
            }
            let entry = inner.traces.entry(trace_id).or_default();
            if entry.add(span, self.bounds.max_spans_per_trace) {
                outcome.accepted += 1;
            } else {
                outcome.dropped += 1;
            }
        }
        outcome
    }

    /// Newest traces first (by first span start), at most `query.limit`.
    pub fn list(&self, query: &TraceQuery) -> Vec<TraceSummary> {
        let inner = self.lock();
        let mut matching: Vec<(&TraceId, &TraceEntry)> = inner
            .traces
            .iter()
            .filter(|(_, entry)| match &query.service {
                Some(service) => entry.services.contains(service.as_str()),
                None => true,
            })
            .collect();
        matching.sort_by(|a, b| {
            b.1.start_unix_nano
                .cmp(&a.1.start_unix_nano)
                .then_with(|| a.0.cmp(b.0))
        });
        matching
            .into_iter()
            .take(query.limit)
            .map(|(id, entry)| entry.summary(*id))
            .collect()
    }

    pub fn get(&self, trace_id: TraceId) -> Option<TraceDetail> {
        let inner = self.lock();
        inner
            .traces
            .get(&trace_id)
            .map(|entry| entry.detail(trace_id))
    }

    /// Every service name seen in a stored trace, sorted.
    pub fn services(&self) -> Vec<String> {
        let inner = self.lock();
        let services: BTreeSet<&Arc<str>> = inner
            .traces
            .values()
            .flat_map(|entry| entry.services.iter())
            .collect();
        services.into_iter().map(|s| s.to_string()).collect()
    }

    pub fn trace_count(&self) -> usize {
        self.lock().traces.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        trace: u8,
        id: u8,
        parent: Option<u8>,
        service: &str,
        start: u64,
        end: u64,
    ) -> StoredSpan {
        StoredSpan {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([id; 8]),
            parent_span_id: parent.map(|p| SpanId([p; 8])),
            service: Arc::from(service),
            name: format!("span-{id}"),
            kind: SpanKind::Server,
            start_unix_nano: start,
            end_unix_nano: end,
            status: StatusCode::Unset,
            status_message: String::new(),
            attributes: serde_json::Map::new(),
            resource: Arc::new(serde_json::Map::new()),
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    fn bounds(max_traces: usize, max_spans_per_trace: usize) -> StoreBounds {
        StoreBounds {
            max_traces,
            max_spans_per_trace,
        }
    }

    fn all() -> TraceQuery {
        TraceQuery {
            service: None,
            limit: usize::MAX,
        }
    }

    #[test]
    fn evicts_the_oldest_trace_when_full() {
        let store = TraceStore::new(bounds(2, 10));
        store.insert([span(1, 1, None, "a", 10, 20)]);
        store.insert([span(2, 1, None, "a", 30, 40)]);
        // More spans for trace 1 do not make it younger: it was created first.
        store.insert([span(1, 2, Some(1), "a", 11, 12)]);
        let outcome = store.insert([span(3, 1, None, "a", 50, 60)]);
        assert_eq!(outcome.evicted_traces, 1);
        assert!(store.get(TraceId([1; 16])).is_none());
        assert!(store.get(TraceId([2; 16])).is_some());
        assert!(store.get(TraceId([3; 16])).is_some());
        assert_eq!(store.trace_count(), 2);
    }

    #[test]
    fn drops_spans_beyond_the_per_trace_bound() {
        let store = TraceStore::new(bounds(10, 2));
        let outcome = store.insert([
            span(1, 1, None, "a", 0, 10),
            span(1, 2, Some(1), "a", 1, 2),
            span(1, 3, Some(1), "a", 3, 4),
        ]);
        assert_eq!(outcome.accepted, 2);
        assert_eq!(outcome.dropped, 1);
        let list = store.list(&all());
        assert_eq!(list[0].span_count, 2);
        assert_eq!(list[0].dropped_spans, 1);
    }

    #[test]
    fn a_resent_span_replaces_the_earlier_copy() {
        let store = TraceStore::new(bounds(10, 10));
        store.insert([span(1, 1, None, "a", 0, 10)]);
        let mut failed = span(1, 1, None, "a", 0, 30);
        failed.status = StatusCode::Error;
        store.insert([failed]);
        let list = store.list(&all());
        assert_eq!(list[0].span_count, 1);
        assert_eq!(list[0].error_count, 1);
        assert_eq!(list[0].duration_ms, 30.0 / 1e6);
    }

    #[test]
    fn summary_finds_root_services_errors_and_duration() {
        let store = TraceStore::new(bounds(10, 10));
        let mut failing = span(7, 3, Some(2), "backend", 4_000_000, 9_000_000);
        failing.status = StatusCode::Error;
        store.insert([
            span(7, 2, Some(1), "frontend", 2_000_000, 10_000_000),
            failing,
            span(7, 1, None, "frontend", 1_000_000, 11_000_000),
        ]);
        let list = store.list(&all());
        assert_eq!(list.len(), 1);
        let summary = &list[0];
        assert_eq!(summary.trace_id, "07".repeat(16));
        assert_eq!(summary.root_name, "span-1");
        assert_eq!(summary.root_service, "frontend");
        assert!(summary.root_complete);
        assert_eq!(summary.services, vec!["backend", "frontend"]);
        assert_eq!(summary.span_count, 3);
        assert_eq!(summary.error_count, 1);
        assert_eq!(summary.duration_ms, 10.0);
        assert_eq!(summary.start_time_unix_nano, "1000000");
    }

    #[test]
    fn a_trace_missing_its_root_is_shown_from_its_earliest_orphan() {
        let store = TraceStore::new(bounds(10, 10));
        store.insert([
            span(1, 3, Some(2), "b", 5, 6),
            span(1, 2, Some(9), "a", 4, 8),
        ]);
        let summary = &store.list(&all())[0];
        assert_eq!(summary.root_name, "span-2");
        assert!(!summary.root_complete);
    }

    #[test]
    fn list_filters_by_service_sorts_newest_first_and_limits() {
        let store = TraceStore::new(bounds(10, 10));
        store.insert([
            span(1, 1, None, "a", 100, 200),
            span(2, 1, None, "b", 300, 400),
            span(3, 1, None, "a", 500, 600),
            span(3, 2, Some(1), "c", 510, 520),
        ]);
        let only_a = store.list(&TraceQuery {
            service: Some("a".into()),
            limit: 10,
        });
        let ids: Vec<&str> = only_a.iter().map(|s| &s.trace_id[..2]).collect();
        assert_eq!(ids, vec!["03", "01"]);
        let newest = store.list(&TraceQuery {
            service: None,
            limit: 1,
        });
        assert_eq!(newest.len(), 1);
        assert_eq!(&newest[0].trace_id[..2], "03");
        assert_eq!(store.services(), vec!["a", "b", "c"]);
    }

    #[test]
    fn detail_orders_spans_and_gives_offsets() {
        let store = TraceStore::new(bounds(10, 10));
        store.insert([
            span(1, 2, Some(1), "a", 3_000_000, 5_500_000),
            span(1, 1, None, "a", 1_000_000, 9_000_000),
        ]);
        let detail = store.get(TraceId([1; 16])).expect("stored");
        assert_eq!(detail.spans.len(), 2);
        assert_eq!(detail.spans[0].span_id, "01".repeat(8));
        assert_eq!(detail.spans[0].parent_span_id, None);
        assert_eq!(detail.spans[1].parent_span_id, Some("01".repeat(8)));
        assert_eq!(detail.spans[1].start_offset_ms, 2.0);
        assert_eq!(detail.spans[1].duration_ms, 2.5);
        assert!(detail.spans[0].links.is_empty());
    }

    #[test]
    fn detail_shows_links_as_references() {
        let store = TraceStore::new(bounds(10, 10));
        let mut linked = span(1, 1, None, "a", 0, 10);
        linked.links.push(StoredLink {
            trace_id: TraceId([2; 16]),
            span_id: SpanId([3; 8]),
        });
        store.insert([linked]);
        let detail = store.get(TraceId([1; 16])).expect("stored");
        let json = serde_json::to_value(&detail.spans[0].links).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"traceId": "02".repeat(16), "spanId": "03".repeat(8)}])
        );
    }

    #[test]
    fn ids_parse_and_reject_invalid_values() {
        assert_eq!(
            TraceId::from_hex(&"ab".repeat(16)),
            Some(TraceId([0xab; 16]))
        );
        assert_eq!(TraceId::from_hex("abc"), None);
        assert_eq!(TraceId::from_hex(&"zz".repeat(16)), None);
        assert_eq!(TraceId::from_bytes(&[0; 16]), None);
        assert_eq!(TraceId::from_bytes(&[1; 15]), None);
        assert_eq!(SpanId::from_bytes(&[0; 8]), None);
        assert_eq!(SpanId::from_bytes(&[2; 8]), Some(SpanId([2; 8])));
    }
}
