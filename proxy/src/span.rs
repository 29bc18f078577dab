//! The finished-span record and the sink it leaves the data path through.
//!
//! This is the one contract between the trace layers (producers, on the request path) and the
//! exporter (consumer, a background task). The request path only ever calls
//! [`SpanSink::try_send`]: it never waits, and a full queue drops the span and counts it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

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

/// An attribute value. `&'static str` keys, the `Static`, `Int`, `Ip` and `Shared` variants keep
/// the attributes the proxy records free of per-attribute allocation: values stay the typed data
/// they are and are only turned into text when the exporter encodes them.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Static(&'static str),
    String(String),
    Int(i64),
    Bool(bool),
    /// An address, exported as its text form (`10.0.0.7`, `::1`).
    Ip(IpAddr),
    /// A slice of one request's text, shared by its spans (one allocation per request).
    Shared(SharedStr),
    /// `start..end` of the text the span's `name` is a slice of: a string of the request
    /// that costs neither a copy nor a reference count (read with [`SpanRecord::text_of`]).
    Text {
        start: u32,
        end: u32,
    },
}

impl AttrValue {
    /// The exported string value, if this is one (addresses are formatted); `base` is the
    /// name of the span the value belongs to (see [`AttrValue::Text`]).
    pub fn to_text<'a>(&'a self, base: &'a SharedStr) -> Option<Cow<'a, str>> {
        match self {
            AttrValue::Static(s) => Some(Cow::Borrowed(s)),
            AttrValue::String(s) => Some(Cow::Borrowed(s)),
            AttrValue::Shared(s) => Some(Cow::Borrowed(s.as_str())),
            AttrValue::Text { start, end } => Some(Cow::Borrowed(base.sibling(*start, *end))),
            AttrValue::Ip(ip) => Some(Cow::Owned(ip.to_string())),
            AttrValue::Int(_) | AttrValue::Bool(_) => None,
        }
    }
}

/// An immutable string that is a slice of a shared text: cloning it is a reference count, and
/// the strings of one request (span name, path, host, user agent) share one allocation.
#[derive(Clone)]
pub struct SharedStr {
    text: Arc<str>,
    start: u32,
    end: u32,
}

impl SharedStr {
    /// The whole of `text`.
    pub fn new(text: Arc<str>) -> SharedStr {
        let end = u32::try_from(text.len()).unwrap_or(0);
        let text = if end as usize == text.len() {
            text
        } else {
            Arc::from("")
        };
        SharedStr {
            text,
            start: 0,
            end,
        }
    }

    /// `text[range]`; `None` when the range is out of bounds or not on character boundaries.
    pub fn slice(text: &Arc<str>, range: std::ops::Range<usize>) -> Option<SharedStr> {
        text.get(range.clone())?;
        Some(SharedStr {
            text: text.clone(),
            start: u32::try_from(range.start).ok()?,
            end: u32::try_from(range.end).ok()?,
        })
    }

    /// `text[start..end]`, bounds checked when read (an out-of-bounds slice reads as empty).
    pub(crate) fn from_parts(text: Arc<str>, start: u32, end: u32) -> SharedStr {
        SharedStr { text, start, end }
    }

    /// `start..end` of the whole text this is a slice of (empty when out of bounds).
    pub fn sibling(&self, start: u32, end: u32) -> &str {
        self.text
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        // Bounds and boundaries were checked when the slice was made.
        self.text
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for SharedStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &SharedStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> SharedStr {
        SharedStr::new(Arc::from(s))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> SharedStr {
        SharedStr::new(Arc::from(s))
    }
}

/// One finished span, as recorded on the request path. The exporter turns it into OTLP (adding
/// the proxy's resource) off the request path.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `None` for a root span.
    pub parent_span_id: Option<SpanId>,
    /// W3C `tracestate`, as propagated (a slice of the request's shared text).
    pub trace_state: Option<SharedStr>,
    /// W3C trace flags (bit 0 sampled, bit 1 random).
    pub flags: u8,
    pub kind: SpanKind,
    /// Shared by a request's SERVER and CLIENT spans.
    pub name: SharedStr,
    /// Unix time, nanoseconds.
    pub start_unix_nanos: u64,
    /// Unix time, nanoseconds.
    pub end_unix_nanos: u64,
    pub status: SpanStatus,
    pub attributes: Attributes,
    /// Span links (empty, without an allocation, for almost every span).
    pub links: Links,
}

impl SpanRecord {
    /// The exported string value of one of this span's attribute values.
    pub fn text_of<'a>(&'a self, value: &'a AttrValue) -> Option<Cow<'a, str>> {
        value.to_text(&self.name)
    }
}

/// An OpenTelemetry span link: a span this one relates to without being its child (the
/// candidates of an outbound request whose parent could not be told apart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanLink {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// W3C `tracestate` of the linked span.
    pub trace_state: Option<SharedStr>,
    /// W3C trace flags of the linked span (bit 0 sampled, bit 1 random).
    pub flags: u8,
}

/// A span's links: empty for almost every span, and then without an allocation.
pub type Links = Vec<SpanLink>;

/// A span's attribute list.
pub type Attributes = Vec<(&'static str, AttrValue)>;

/// Most attribute lists kept per thread for reuse (a few hundred KiB at most).
const ATTRIBUTE_POOL_MAX: usize = 512;

thread_local! {
    /// Attribute lists of exported spans, for new spans on this thread. The exporter frees
    /// spans a batch at a time; handing their (cleared) lists back spares the request path an
    /// allocation per span and the allocator a bulk free. No lock: each thread has its own.
    static ATTRIBUTE_POOL: RefCell<Vec<Attributes>> = const { RefCell::new(Vec::new()) };
}

/// An empty attribute list with room for `capacity` attributes, reused when one is pooled.
pub fn attributes_with_capacity(capacity: usize) -> Attributes {
    let pooled = ATTRIBUTE_POOL
        .try_with(|pool| pool.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten();
    match pooled {
        Some(mut attrs) => {
            attrs.reserve(capacity);
            attrs
        }
        None => Attributes::with_capacity(capacity),
    }
}

/// Gives an exported span's attribute list back for reuse on this thread.
pub fn recycle_attributes(mut attrs: Attributes) {
    attrs.clear();
    if attrs.capacity() == 0 || attrs.capacity() > 64 {
        return;
    }
    let _ = ATTRIBUTE_POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            if pool.len() < ATTRIBUTE_POOL_MAX {
                pool.push(attrs);
            }
        }
    });
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
///
/// The queue is a lock-free list of blocks of 31 spans (`crossbeam-channel`'s list flavour),
/// bounded by its length: a span costs the producer one compare-and-swap and the consumer
/// another, and the queue holds memory only for the spans in it (an array of `capacity` spans
/// would hold ~370 KiB at the default 2,048 even when idle). Producers racing at the bound can
/// exceed it by at most one span each. Tokio's bounded channel, used before, cost several
/// atomics per span on each side plus a mutex on every receive (its semaphore's permit release),
/// more than a span's recording. The consumer is woken through [`QueueSignal`] instead.
#[derive(Clone, Debug)]
pub struct SpanSink {
    tx: Option<Sender<SpanRecord>>,
    /// Spans queued beyond this are dropped and counted.
    capacity: usize,
    dropped_queue_full: Arc<AtomicU64>,
    signal: Arc<QueueSignal>,
    /// Set when the consumer stops taking spans (shutdown) or is gone.
    closed: Arc<AtomicBool>,
}

/// Wakes the exporter when a given number of spans is queued, so that while it accumulates a
/// batch it is woken once (batch full) instead of once per span. Waking a task per span cost
/// more than recording the span.
#[derive(Debug, Default)]
pub struct QueueSignal {
    notify: Notify,
    armed: AtomicBool,
    /// Queue length at which an armed signal fires.
    threshold: AtomicUsize,
}

impl QueueSignal {
    /// Asks to be notified once `threshold` spans are queued. Check the queue after arming:
    /// spans queued before this call do not notify.
    pub fn arm(&self, threshold: usize) {
        self.threshold.store(threshold.max(1), Ordering::Relaxed);
        self.armed.store(true, Ordering::SeqCst);
        // See `on_queued`: either the producer sees the signal armed, or the caller's queue
        // check that follows (a `SeqCst` load of the queue's tail) sees the producer's span.
        fence(Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }

    /// Resolves after the armed threshold was reached, or a sink was dropped (possibly
    /// spuriously: re-check).
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Called by a producer right after its span entered the queue; `queued` reads the queue
    /// length, only when the signal is armed.
    ///
    /// No fence here: the queue's tail is advanced by a sequentially consistent
    /// compare-and-swap (crossbeam-channel's list flavour) and read by the consumer's length
    /// check with a sequentially consistent load, so this `SeqCst` load of `armed` and the
    /// consumer's `SeqCst` store of it are in one total order with them: either the producer
    /// sees the signal armed, or the consumer's check after arming sees the span. A fence per
    /// span (`mfence`) was most of the cost of handing a span over.
    fn on_queued(&self, queued: impl FnOnce() -> usize) {
        if self.armed.load(Ordering::SeqCst)
            && queued() >= self.threshold.load(Ordering::Relaxed)
            && self.armed.swap(false, Ordering::AcqRel)
        {
            self.notify.notify_one();
        }
    }
}

impl Drop for SpanSink {
    fn drop(&mut self) {
        // Sender first, then the wake-up: an exporter accumulating a batch learns that the last
        // sink is gone without waiting for its schedule delay.
        if self.tx.take().is_some() {
            self.signal.notify.notify_one();
        }
    }
}

/// The consumer side, owned by the exporter task.
#[derive(Debug)]
pub struct SpanQueue {
    pub rx: Receiver<SpanRecord>,
    /// Shared with every [`SpanSink`] clone: spans dropped because the queue was full.
    pub dropped_queue_full: Arc<AtomicU64>,
    /// The queue's capacity, for the queue-depth metric.
    pub capacity: usize,
    /// Notifies the consumer at a queue length it chooses.
    pub signal: Arc<QueueSignal>,
    closed: Arc<AtomicBool>,
}

/// What [`SpanQueue::take`] found after taking what was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// More may come.
    Open,
    /// The queue is empty and every sink is gone: nothing more will come.
    Finished,
}

impl SpanQueue {
    /// Moves queued spans into `batch` until it holds `max`, without waiting; returns how many
    /// were moved.
    pub fn take(&self, batch: &mut Vec<SpanRecord>, max: usize) -> (usize, Taken) {
        let mut taken = 0;
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(span) => {
                    batch.push(span);
                    taken += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return (taken, Taken::Finished),
            }
        }
        (taken, Taken::Open)
    }

    /// Waits for the next span; `None` once the queue is empty and every sink is gone.
    pub async fn recv(&self) -> Option<SpanRecord> {
        loop {
            match self.rx.try_recv() {
                Ok(span) => return Some(span),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let notified = self.signal.notified();
            self.signal.arm(1);
            if self.rx.is_empty() {
                notified.await;
            }
            self.signal.disarm();
        }
    }

    /// Spans currently queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Refuses new spans from now on ([`SendError::Closed`]); what is queued stays to be taken.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

impl Drop for SpanQueue {
    fn drop(&mut self) {
        self.close();
    }
}

impl SpanSink {
    /// A bounded queue of `capacity` spans (at least 1).
    pub fn bounded(capacity: usize) -> (SpanSink, SpanQueue) {
        let capacity = capacity.max(1);
        let (tx, rx) = crossbeam_channel::unbounded();
        let dropped = Arc::new(AtomicU64::new(0));
        let signal = Arc::new(QueueSignal::default());
        let closed = Arc::new(AtomicBool::new(false));
        (
            SpanSink {
                tx: Some(tx),
                capacity,
                dropped_queue_full: dropped.clone(),
                signal: signal.clone(),
                closed: closed.clone(),
            },
            SpanQueue {
                rx,
                dropped_queue_full: dropped,
                capacity,
                signal,
                closed,
            },
        )
    }

    /// A sink that accepts nothing: span export is off (propagation still works).
    pub fn disabled() -> SpanSink {
        SpanSink {
            tx: None,
            capacity: 0,
            dropped_queue_full: Arc::new(AtomicU64::new(0)),
            signal: Arc::new(QueueSignal::default()),
            closed: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether spans sent here can reach an exporter. When false, the trace layers skip
    /// recording altogether.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some() && !self.closed.load(Ordering::Relaxed)
    }

    /// Hands a span to the exporter without waiting.
    pub fn try_send(&self, span: SpanRecord) -> Result<(), SendError> {
        let Some(tx) = &self.tx else {
            return Err(SendError::Closed);
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        if tx.len() >= self.capacity {
            self.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::QueueFull);
        }
        match tx.try_send(span) {
            Ok(()) => {
                self.signal.on_queued(|| tx.len());
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(SendError::Closed),
        }
    }

    /// Spans currently waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
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
            links: Vec::new(),
        }
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts_without_waiting() {
        let (sink, queue) = SpanSink::bounded(2);
        assert!(sink.try_send(record(1)).is_ok());
        assert!(sink.try_send(record(2)).is_ok());
        assert_eq!(sink.queued(), 2);
        assert_eq!(sink.try_send(record(3)), Err(SendError::QueueFull));
        assert_eq!(queue.dropped_queue_full.load(Ordering::Relaxed), 1);
        assert_eq!(queue.rx.try_recv().map(|s| s.trace_id[0]), Ok(1));
        assert!(sink.try_send(record(4)).is_ok());
    }

    #[test]
    fn shared_str_slices_one_text() {
        let text: Arc<str> = Arc::from("GET /a/{id}héllo");
        let name = SharedStr::slice(&text, 0..11).unwrap();
        assert_eq!(name, "GET /a/{id}");
        assert_eq!(SharedStr::slice(&text, 11..17).unwrap(), "héllo");
        assert!(
            SharedStr::slice(&text, 11..13).is_none(),
            "not a char boundary"
        );
        assert!(SharedStr::slice(&text, 0..99).is_none());
        assert_eq!(SharedStr::from("x").as_str(), "x");
        assert_eq!(format!("{name:?}"), "\"GET /a/{id}\"");
        assert_eq!(
            AttrValue::Ip("::1".parse().unwrap())
                .to_text(&name)
                .as_deref(),
            Some("::1")
        );
        assert_eq!(AttrValue::Int(1).to_text(&name), None);
        let text = AttrValue::Text { start: 11, end: 17 };
        assert_eq!(text.to_text(&name).as_deref(), Some("héllo"));
        assert_eq!(name.sibling(11, 99), "", "out of bounds");
    }

    #[tokio::test]
    async fn signal_fires_at_the_armed_queue_length() {
        let (sink, queue) = SpanSink::bounded(8);
        queue.signal.arm(3);
        let notified = queue.signal.notified();
        tokio::pin!(notified);
        sink.try_send(record(1)).unwrap();
        sink.try_send(record(2)).unwrap();
        assert!(futures_now(notified.as_mut()).is_none(), "fired early");
        sink.try_send(record(3)).unwrap();
        assert!(futures_now(notified.as_mut()).is_some(), "did not fire");
        // Disarmed once fired: a fourth span does not leave a stored notification.
        sink.try_send(record(4)).unwrap();
        let again = queue.signal.notified();
        tokio::pin!(again);
        assert!(futures_now(again.as_mut()).is_none());
    }

    fn futures_now<F: std::future::Future + Unpin>(fut: F) -> Option<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut fut = fut;
        match std::pin::Pin::new(&mut fut).poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn attribute_lists_are_reused_on_their_thread() {
        std::thread::spawn(|| {
            let mut attrs = attributes_with_capacity(16);
            attrs.push(("k", AttrValue::Int(1)));
            let ptr = attrs.as_ptr();
            recycle_attributes(attrs);
            let again = attributes_with_capacity(8);
            assert!(again.is_empty());
            assert_eq!(again.as_ptr(), ptr);
            assert!(again.capacity() >= 16);
            // A list that is too small grows.
            recycle_attributes(again);
            assert!(attributes_with_capacity(40).capacity() >= 40);
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn recv_waits_for_a_span_and_ends_when_every_sink_is_gone() {
        let (sink, queue) = SpanSink::bounded(4);
        let producer = sink.clone();
        let sent = tokio::spawn(async move {
            tokio::task::yield_now().await;
            producer.try_send(record(7)).unwrap();
        });
        assert_eq!(queue.recv().await.map(|s| s.trace_id[0]), Some(7));
        sent.await.unwrap();
        sink.try_send(record(8)).unwrap();
        drop(sink);
        let mut batch = Vec::new();
        assert_eq!(queue.take(&mut batch, 10), (1, Taken::Finished));
        assert_eq!(queue.take(&mut batch, 10), (0, Taken::Finished));
        assert_eq!(queue.recv().await, None);
    }

    #[test]
    fn a_closed_or_dropped_queue_refuses_spans() {
        let (sink, queue) = SpanSink::bounded(4);
        sink.try_send(record(1)).unwrap();
        queue.close();
        assert!(!sink.is_enabled());
        assert_eq!(sink.try_send(record(2)), Err(SendError::Closed));
        let mut batch = Vec::new();
        assert_eq!(
            queue.take(&mut batch, 10),
            (1, Taken::Open),
            "queued spans stay"
        );
        let (sink, queue) = SpanSink::bounded(4);
        drop(queue);
        assert!(!sink.is_enabled());
        assert_eq!(sink.try_send(record(3)), Err(SendError::Closed));
    }

    #[test]
    fn disabled_sink_is_closed() {
        let sink = SpanSink::disabled();
        assert!(!sink.is_enabled());
        assert_eq!(sink.try_send(record(1)), Err(SendError::Closed));
    }
}
