//! Correlate: which inbound request an outbound request belongs to when the application did not
//! forward trace headers.
//!
//! One proxy process serves both directions of a pod, so it sees the inbound requests the
//! application is serving and the outbound requests it makes meanwhile. The inbound side
//! [registers](Correlator::register) each HTTP request with the context the application received
//! (the inbound CLIENT span) and keeps the returned [`InFlight`] guard until the response ends;
//! the outbound side, for a request that carries no trace context, [infers](Correlator::infer)
//! its parent:
//!
//! 1. a remembered request id (in flight, or finished less than the window ago) → that request,
//!    exactly ([`Source::RequestId`]);
//! 2. else exactly one candidate in flight → that one, a good guess ([`Source::SoleInFlight`]);
//! 3. else two or more → no parent, links to the newest candidates ([`Source::Ambiguous`]);
//! 4. else nothing in flight → background work ([`Source::Background`]).
//!
//! Candidates are plain HTTP requests younger than the age bound: upgrades, `CONNECT` and
//! requests older than the bound (long polls, streams) never count.
//!
//! Cost: the registry is split into shards, one per worker thread (a thread registers into its
//! own shard), each behind its own mutex: registering and finishing take only the shard of the
//! thread that does it, uncontended while tasks stay on their thread. Inferring reads every
//! shard (a few of them, each briefly) because the application's outbound request may be
//! served by another thread than its inbound one. Nothing is allocated per request in steady
//! state (ids up to [`INLINE_ID`] bytes are stored inline), and a request's id is hashed once
//! (`IdKey`).
//!
//! Memory: a request is one 112-byte `Record`, its context and id stored once: in a slot while
//! it is in flight, then moved to a chunked queue (`Recent`) while its id is remembered; the id
//! table holds 4-byte references to records. It is bounded by
//! [`CorrelateSettings::max_in_flight`] and [`CorrelateSettings::max_recent`], the oldest
//! entries being evicted and counted, and goes back after a burst: chunks of the queue as their
//! ids expire, and the rest by [`Correlator::sweep`], which also expires ids when no traffic
//! comes (the proxy sweeps every [`SWEEP_PERIOD`]).
//!
//! Time is injected ([`Clock`]) so the whole structure is tested without I/O or sleeping.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use http::HeaderValue;

pub use crate::config::trace::ContextInference;
use crate::span::{SpanId, TraceId};

/// `meshtrace.context.source`: how an outbound SERVER span's parent was found ([`Source`]).
pub const ATTR_SOURCE: &str = "meshtrace.context.source";
/// `meshtrace.context.candidates`: how many inbound requests could have been the parent.
pub const ATTR_CANDIDATES: &str = "meshtrace.context.candidates";

/// How an outbound SERVER span's parent was found (`meshtrace.context.source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The application sent trace context.
    Propagated,
    /// A request id tied the request to an inbound one.
    RequestId,
    /// The only inbound request in flight.
    SoleInFlight,
    /// Several candidates: a new trace with links to them.
    Ambiguous,
    /// Nothing in flight (or inference off): a new trace.
    Background,
}

impl Source {
    /// Every source, in the order of their metric label.
    pub const ALL: [Source; 5] = [
        Source::Propagated,
        Source::RequestId,
        Source::SoleInFlight,
        Source::Ambiguous,
        Source::Background,
    ];

    /// The attribute and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Propagated => "propagated",
            Source::RequestId => "request_id",
            Source::SoleInFlight => "sole_in_flight",
            Source::Ambiguous => "ambiguous",
            Source::Background => "background",
        }
    }

    /// Whether the parent is inferred rather than sent by the application.
    pub fn is_inferred(self) -> bool {
        matches!(self, Source::RequestId | Source::SoleInFlight)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The context the application received with an inbound request: the inbound CLIENT span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// W3C flags (sampled, random).
    pub flags: u8,
    /// The trace id arrived as a 64-bit B3 id.
    pub trace_id_64: bool,
    /// W3C `tracestate` as forwarded to the application.
    pub trace_state: Option<HeaderValue>,
}

impl ParentContext {
    /// A span link to this context's span.
    pub fn to_link(&self) -> crate::span::SpanLink {
        crate::span::SpanLink {
            trace_id: self.trace_id,
            span_id: self.span_id,
            trace_state: self
                .trace_state
                .as_ref()
                .and_then(|state| state.to_str().ok())
                .filter(|state| !state.is_empty())
                .map(crate::span::SharedStr::from),
            flags: self.flags,
        }
    }
}

/// The outcome of [`Correlator::infer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inferred {
    /// Exact: the request id of an inbound request.
    RequestId(ParentContext),
    /// A good guess: the only candidate in flight.
    SoleInFlight(ParentContext),
    /// `candidates` in flight; `links` are the newest of them, newest first.
    Ambiguous {
        links: Vec<ParentContext>,
        candidates: usize,
    },
    /// Nothing in flight.
    Background,
}

impl Inferred {
    /// The span links of an ambiguous outbound request (no allocation otherwise).
    pub fn links(&self) -> crate::span::Links {
        match self {
            Inferred::Ambiguous { links, .. } => links.iter().map(ParentContext::to_link).collect(),
            _ => Vec::new(),
        }
    }

    pub fn source(&self) -> Source {
        match self {
            Inferred::RequestId(_) => Source::RequestId,
            Inferred::SoleInFlight(_) => Source::SoleInFlight,
            Inferred::Ambiguous { .. } => Source::Ambiguous,
            Inferred::Background => Source::Background,
        }
    }

    /// The inferred parent, for the two sources that give one.
    pub fn parent(&self) -> Option<&ParentContext> {
        match self {
            Inferred::RequestId(parent) | Inferred::SoleInFlight(parent) => Some(parent),
            Inferred::Ambiguous { .. } | Inferred::Background => None,
        }
    }
}

/// A source of monotonic time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
}

/// [`Instant::now`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Bounds and behaviour of a [`Correlator`].
#[derive(Clone, Debug)]
pub struct CorrelateSettings {
    pub mode: ContextInference,
    /// How long a finished request's id is still remembered.
    pub request_id_window: Duration,
    /// Most links an ambiguous outbound span carries.
    pub max_links: usize,
    /// Requests in flight longer than this are no longer candidates.
    pub max_age: Duration,
    /// Most requests tracked in flight (the oldest are evicted beyond).
    pub max_in_flight: usize,
    /// Most finished requests whose ids are remembered (the oldest are forgotten beyond).
    pub max_recent: usize,
    /// Number of shards; one per worker thread is right.
    pub shards: usize,
}

impl Default for CorrelateSettings {
    fn default() -> Self {
        CorrelateSettings {
            mode: ContextInference::Infer,
            request_id_window: Duration::from_secs(10),
            max_links: 8,
            max_age: Duration::from_secs(60),
            max_in_flight: 10_000,
            max_recent: 10_000,
            shards: 1,
        }
    }
}

/// What the inbound side registers.
#[derive(Clone, Debug)]
pub struct Registration<'a> {
    /// The request id the application received, if any.
    pub request_id: Option<&'a [u8]>,
    /// The inbound CLIENT span's context.
    pub context: ParentContext,
    /// A plain HTTP request (not an upgrade, not `CONNECT`).
    pub candidate: bool,
}

/// Counters of a [`Correlator`], for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CorrelateStats {
    /// Requests tracked in flight.
    pub in_flight: usize,
    /// Request ids remembered (in flight and finished within the window).
    pub request_ids: usize,
    /// In-flight requests evicted because the bound was reached.
    pub evicted_in_flight: u64,
    /// Finished requests' ids forgotten before their window ended because the bound was reached.
    pub evicted_recent: u64,
}

/// Where a [`Correlator`] counts evictions (shared counters, e.g. registered metrics).
#[derive(Clone, Debug, Default)]
pub struct EvictionCounters {
    /// In-flight requests evicted because the bound was reached.
    pub in_flight: prometheus_client::metrics::counter::Counter,
    /// Finished requests' ids forgotten before their window ended because the bound was reached.
    pub recent: prometheus_client::metrics::counter::Counter,
}

/// The pod's in-flight inbound HTTP requests and recently seen request ids.
#[derive(Debug)]
pub struct Correlator {
    settings: CorrelateSettings,
    shards: Box<[Mutex<Shard>]>,
    clock: Arc<dyn Clock>,
    /// Time zero of the shards' compact times ([`Correlator::ticks`]).
    epoch: Instant,
    /// `request_id_window` and `max_age` in ticks.
    window: u64,
    max_age: u64,
    /// Registration order across shards (newest first among links).
    next_seq: AtomicU64,
    /// Candidates in flight across shards, aged ones included: zero means background work
    /// without taking any lock.
    candidates: AtomicUsize,
    evicted: EvictionCounters,
    /// Hashes request ids (keyed: see [`IdKey`]); one for all shards, so that a lookup's key
    /// matches in every shard.
    id_hasher: RandomState,
}

/// Request ids up to this many bytes are stored without an allocation (a UUID is 36).
pub const INLINE_ID: usize = 46;

/// How often the proxy [sweeps](Correlator::sweep) its correlator.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(1);

impl Correlator {
    pub fn new(settings: CorrelateSettings, clock: Arc<dyn Clock>) -> Arc<Correlator> {
        Correlator::counting(settings, clock, EvictionCounters::default())
    }

    /// A correlator counting its evictions into `evicted`.
    pub fn counting(
        settings: CorrelateSettings,
        clock: Arc<dyn Clock>,
        evicted: EvictionCounters,
    ) -> Arc<Correlator> {
        let shards = settings.shards.max(1);
        let per_shard = |total: usize| total.div_ceil(shards).max(1);
        let shards = (0..shards)
            .map(|_| {
                Mutex::new(Shard::new(
                    per_shard(settings.max_in_flight),
                    per_shard(settings.max_recent),
                ))
            })
            .collect();
        Arc::new(Correlator {
            epoch: clock.now(),
            window: nanos(settings.request_id_window),
            max_age: nanos(settings.max_age),
            settings,
            shards,
            clock,
            next_seq: AtomicU64::new(1),
            candidates: AtomicUsize::new(0),
            evicted,
            id_hasher: RandomState::new(),
        })
    }

    pub fn settings(&self) -> &CorrelateSettings {
        &self.settings
    }

    /// Tracks an inbound request until the returned guard is dropped (when its response has
    /// ended, failed or been abandoned). Nothing is tracked when inference is off, or in
    /// request-id mode for a request without an id.
    pub fn register(self: &Arc<Self>, registration: Registration<'_>) -> InFlight {
        let Registration {
            request_id,
            context,
            candidate,
        } = registration;
        let candidate = candidate && self.settings.mode == ContextInference::Infer;
        let id = match (self.settings.mode, request_id) {
            (ContextInference::Off, _) | (ContextInference::RequestId, None) => {
                return InFlight::none()
            }
            (_, id) => id
                .filter(|id| !id.is_empty())
                .map(|id| IdKey::new(id, &self.id_hasher)),
        };
        let now = self.now();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let record = Record::in_flight(context, seq, now, candidate, id);
        let shard_index = home_shard(self.shards.len());
        let mut shard = self.lock(shard_index);
        shard.expire(now);
        let (slot, generation, evicted) = shard.insert(record, self.window, now);
        if candidate {
            // Counted before the shard is released, so that no eviction can be counted first.
            self.candidates.fetch_add(1, Ordering::Relaxed);
        }
        drop(shard);
        self.count_evicted(evicted);
        InFlight {
            owner: Some(Owner {
                correlator: self.clone(),
                shard: shard_index,
                slot,
                generation,
            }),
        }
    }

    /// The parent of an outbound request that carries no trace context, `request_id` being the
    /// value of its request id header.
    pub fn infer(&self, request_id: Option<&[u8]>) -> Inferred {
        let request_id = request_id.filter(|id| !id.is_empty());
        let nothing_in_flight = self.candidates.load(Ordering::Relaxed) == 0;
        if self.settings.mode == ContextInference::Off
            || (request_id.is_none() && nothing_in_flight)
        {
            // The common case of a pod without inbound traffic: no clock, no lock.
            return Inferred::Background;
        }
        let now = self.now();
        if let Some(parent) = request_id.and_then(|id| self.by_request_id(id, now)) {
            return Inferred::RequestId(parent);
        }
        if self.settings.mode == ContextInference::RequestId || nothing_in_flight {
            return Inferred::Background;
        }
        self.in_flight_candidates(now)
    }

    /// Current counts.
    pub fn stats(&self) -> CorrelateStats {
        let mut stats = CorrelateStats {
            evicted_in_flight: self.evicted.in_flight.get(),
            evicted_recent: self.evicted.recent.get(),
            ..CorrelateStats::default()
        };
        for index in 0..self.shards.len() {
            let shard = self.lock(index);
            stats.in_flight += shard.live;
            stats.request_ids += shard.ids.len();
        }
        stats
    }

    /// Forgets the request ids whose window has ended and gives back the memory of a past
    /// burst: storage that is mostly empty is shrunk (to about twice what it holds, so that
    /// steady traffic does not reallocate). Registering and finishing expire ids too, but only
    /// while there is traffic; the proxy sweeps every [`SWEEP_PERIOD`]
    /// ([`Correlator::sweep_periodically`]).
    pub fn sweep(&self) {
        let now = self.now();
        for index in 0..self.shards.len() {
            let mut shard = self.lock(index);
            shard.expire(now);
            shard.shrink();
        }
    }

    /// Sweeps every `period` on the current tokio runtime for as long as the correlator lives
    /// (the task holds it weakly, and ends with it). Outside a runtime nothing is started.
    pub fn sweep_periodically(
        self: &Arc<Self>,
        period: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        crate::periodic::every(self, period, Correlator::sweep)
    }

    /// Bytes of heap the registry holds for its own storage (slots, id table, queues), from
    /// their capacities; boxed `tracestate`s and ids longer than [`INLINE_ID`] come on top.
    pub fn heap_bytes(&self) -> usize {
        (0..self.shards.len())
            .map(|index| self.lock(index).heap_bytes())
            .sum()
    }

    fn by_request_id(&self, id: &[u8], now: u64) -> Option<ParentContext> {
        if id.is_empty() {
            return None;
        }
        let hash = IdKey::hash_of(id, &self.id_hasher);
        let mut newest: Option<(u64, ParentContext)> = None;
        for index in 0..self.shards.len() {
            let shard = self.lock(index);
            let Some(record) = shard.by_id(hash, id) else {
                continue;
            };
            let live = record.is_in_flight() || record.time > now;
            if live && newest.as_ref().is_none_or(|(seq, _)| record.seq > *seq) {
                newest = Some((record.seq, record.context()));
            }
        }
        newest.map(|(_, context)| context)
    }

    fn in_flight_candidates(&self, now: u64) -> Inferred {
        let oldest_start = now.checked_sub(self.max_age);
        let mut newest = Newest::new(self.settings.max_links.max(1), self.shards.len());
        let mut total = 0;
        for index in 0..self.shards.len() {
            let mut shard = self.lock(index);
            let aged = shard.age_candidates(oldest_start);
            if aged > 0 {
                self.candidates.fetch_sub(aged, Ordering::Relaxed);
            }
            total += shard.candidates_live;
            shard.newest_candidates(&mut newest);
        }
        match total {
            0 => Inferred::Background,
            1 => newest
                .into_sole()
                .map_or(Inferred::Background, Inferred::SoleInFlight),
            candidates => Inferred::Ambiguous {
                links: newest.into_links(self.settings.max_links),
                candidates,
            },
        }
    }

    fn finish(&self, shard_index: usize, slot: u32, generation: u32) {
        let now = self.now();
        let mut shard = self.lock(shard_index);
        let removed = shard.retire(slot, generation, self.window, now);
        shard.expire(now);
        drop(shard);
        if let Some(removed) = removed {
            if removed.was_candidate {
                self.candidates.fetch_sub(1, Ordering::Relaxed);
            }
            self.count_evicted(Evicted {
                in_flight: 0,
                recent: removed.evicted_recent,
                candidates: 0,
            });
        }
    }

    fn count_evicted(&self, evicted: Evicted) {
        if evicted.in_flight > 0 {
            self.evicted.in_flight.inc_by(evicted.in_flight);
        }
        if evicted.recent > 0 {
            self.evicted.recent.inc_by(evicted.recent);
        }
        if evicted.candidates > 0 {
            self.candidates
                .fetch_sub(evicted.candidates, Ordering::Relaxed);
        }
    }

    /// The clock's time as the shards keep it: nanoseconds since the correlator was made (8
    /// bytes where an `Instant` takes 16; lasts 584 years).
    fn now(&self) -> u64 {
        nanos(self.clock.now().saturating_duration_since(self.epoch))
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave it inconsistent in a way that matters more
        // than losing correlation: keep going with what is there.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A duration in nanoseconds, saturating.
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Which shard the current thread registers into.
fn home_shard(shards: usize) -> usize {
    static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static THREAD_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
    }
    if shards <= 1 {
        return 0;
    }
    let index = THREAD_INDEX
        .try_with(|cell| match cell.get() {
            Some(index) => index,
            None => {
                let index = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
                cell.set(Some(index));
                index
            }
        })
        .unwrap_or(0);
    index % shards
}

/// Keeps an inbound request registered; dropping it ends the registration (the request id stays
/// remembered for the window).
#[derive(Debug)]
pub struct InFlight {
    owner: Option<Owner>,
}

#[derive(Debug)]
struct Owner {
    correlator: Arc<Correlator>,
    shard: usize,
    slot: u32,
    generation: u32,
}

impl InFlight {
    /// A guard that tracks nothing.
    pub fn none() -> InFlight {
        InFlight { owner: None }
    }

    /// Whether a request is tracked.
    pub fn is_tracked(&self) -> bool {
        self.owner.is_some()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner
                .correlator
                .finish(owner.shard, owner.slot, owner.generation);
        }
    }
}

/// A request id as stored: its bytes (inline up to [`INLINE_ID`] bytes) and their hash,
/// computed once, when the id is registered, with the correlator's keyed hasher (SipHash with
/// random keys: ids come from clients, and a keyed hash keeps collisions out of their reach).
/// The id table finds a record by that number, so a request's id is hashed once, not again
/// when it is remembered or forgotten; equality compares the bytes.
struct IdKey {
    hash: u64,
    bytes: IdBytes,
}

enum IdBytes {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(Box<[u8]>),
}

impl IdKey {
    /// No id (a record without one).
    const NONE: IdKey = IdKey {
        hash: 0,
        bytes: IdBytes::Inline {
            len: 0,
            bytes: [0; INLINE_ID],
        },
    };

    fn new(id: &[u8], hasher: &RandomState) -> IdKey {
        let bytes = if id.len() <= INLINE_ID {
            let mut bytes = [0; INLINE_ID];
            bytes[..id.len()].copy_from_slice(id);
            IdBytes::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            IdBytes::Heap(id.into())
        };
        IdKey {
            hash: IdKey::hash_of(id, hasher),
            bytes,
        }
    }

    fn hash_of(id: &[u8], hasher: &RandomState) -> u64 {
        let mut state = hasher.build_hasher();
        state.write(id);
        state.finish()
    }

    fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            IdBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdBytes::Heap(bytes) => bytes,
        }
    }
}

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// [`Record::state`]: tracked in flight (in a slot; else remembered in [`Recent`], or a free
/// slot).
const IN_FLIGHT: u8 = 1;
/// [`Record::state`]: in flight and still a candidate (plain HTTP, not aged).
const CANDIDATE: u8 = 2;
/// [`Record::state`]: the id table points at this record for its id (a newer request with the
/// same id takes it over).
const OWNS_ID: u8 = 4;

/// One inbound request: the only copy of its context and id, in a slot while it is in flight,
/// then moved to [`Recent`] while its id is remembered. 112 bytes (`record_is_compact`).
#[derive(Debug)]
struct Record {
    trace_id: TraceId,
    span_id: SpanId,
    /// W3C `tracestate`, almost always absent: boxed, so that it takes one word otherwise.
    trace_state: Option<Box<HeaderValue>>,
    seq: u64,
    /// In flight: when it started; remembered: when its window ends ([`Correlator::now`]).
    time: u64,
    id: IdKey,
    /// Of the slot, bumped when the slot is released ([`SlotRef`]).
    generation: u32,
    flags: u8,
    trace_id_64: bool,
    /// [`IN_FLIGHT`], [`CANDIDATE`], [`OWNS_ID`].
    state: u8,
}

impl Record {
    fn in_flight(
        context: ParentContext,
        seq: u64,
        now: u64,
        candidate: bool,
        id: Option<IdKey>,
    ) -> Record {
        let mut state = IN_FLIGHT;
        if candidate {
            state |= CANDIDATE;
        }
        if id.is_some() {
            state |= OWNS_ID;
        }
        Record {
            trace_id: context.trace_id,
            span_id: context.span_id,
            // A copy: the received value may be a slice of the request's whole head, which a
            // remembered id would otherwise keep alive for its window.
            trace_state: context
                .trace_state
                .map(|state| Box::new(HeaderValue::from_bytes(state.as_bytes()).unwrap_or(state))),
            seq,
            time: now,
            id: id.unwrap_or(IdKey::NONE),
            generation: 0,
            flags: context.flags,
            trace_id_64: context.trace_id_64,
            state,
        }
    }

    /// An unused slot of generation `generation`, or an emptied place in [`Recent`].
    fn free(generation: u32) -> Record {
        Record {
            trace_id: TraceId::default(),
            span_id: SpanId::default(),
            trace_state: None,
            seq: 0,
            time: 0,
            id: IdKey::NONE,
            generation,
            flags: 0,
            trace_id_64: false,
            state: 0,
        }
    }

    fn context(&self) -> ParentContext {
        ParentContext {
            trace_id: self.trace_id,
            span_id: self.span_id,
            flags: self.flags,
            trace_id_64: self.trace_id_64,
            trace_state: self.trace_state.as_deref().cloned(),
        }
    }

    fn is_in_flight(&self) -> bool {
        self.state & IN_FLIGHT != 0
    }

    fn owns_id(&self) -> bool {
        self.state & OWNS_ID != 0
    }

    /// Whether this is the in-flight request `at` refers to.
    fn is(&self, at: SlotRef) -> bool {
        self.generation == at.generation && self.is_in_flight()
    }
}

/// The id table's value: where a request id's record is, a slot index, or [`REMEMBERED`] and
/// a position in [`Recent`].
const REMEMBERED: u32 = 1 << 31;

/// The record an id table value names.
fn record_at<'a>(slots: &'a [Record], recent: &'a Recent, at: u32) -> Option<&'a Record> {
    if at & REMEMBERED != 0 {
        recent.get(at & !REMEMBERED)
    } else {
        slots.get(at as usize)
    }
}

/// The id hash of the record an id table value names (for the table's resizing).
fn hash_at(slots: &[Record], recent: &Recent, at: u32) -> u64 {
    record_at(slots, recent, at).map_or(0, |record| record.id.hash)
}

/// A slot of a shard at a given generation: stale once the slot is reused.
#[derive(Clone, Copy, Debug)]
struct SlotRef {
    slot: u32,
    generation: u32,
}

#[derive(Debug, Default)]
struct Evicted {
    in_flight: u64,
    recent: u64,
    candidates: usize,
}

struct Removed {
    was_candidate: bool,
    evicted_recent: u64,
}

/// Storage smaller than this is never shrunk.
const KEEP: usize = 64;

/// Whether storage holding `len` of `capacity` should shrink (to about `2 * len`: growing
/// doubles, so steady traffic never swings between the two).
fn mostly_empty(len: usize, capacity: usize) -> bool {
    capacity > KEEP && len < capacity / 4
}

fn shrink_queue(queue: &mut VecDeque<SlotRef>) {
    if mostly_empty(queue.len(), queue.capacity()) {
        queue.shrink_to(2 * queue.len());
    }
}

/// One thread's part of the registry.
#[derive(Debug)]
struct Shard {
    /// In-flight records, and free slots.
    slots: Vec<Record>,
    free: Vec<u32>,
    /// The generation of slots made anew: above that of every slot given back by shrinking,
    /// so that no stale guard can match a new one.
    new_generation: u32,
    /// Candidates in registration order (stale refs are skipped and compacted away).
    candidates: VecDeque<SlotRef>,
    /// Every other tracked request (upgrades, aged candidates), roughly oldest first.
    others: VecDeque<SlotRef>,
    /// Live entries, and live candidates among them.
    live: usize,
    candidates_live: usize,
    others_live: usize,
    /// Request id hash → the record owning the id (see [`REMEMBERED`]).
    ids: HashTable<u32>,
    /// Finished requests, their ids remembered, in the order their windows end.
    recent: Recent,
    max_live: usize,
    max_recent: usize,
}

impl Shard {
    fn new(max_live: usize, max_recent: usize) -> Shard {
        Shard {
            slots: Vec::new(),
            free: Vec::new(),
            new_generation: 0,
            candidates: VecDeque::new(),
            others: VecDeque::new(),
            live: 0,
            candidates_live: 0,
            others_live: 0,
            ids: HashTable::new(),
            recent: Recent::default(),
            max_live,
            max_recent,
        }
    }

    fn get(&self, at: SlotRef) -> Option<&Record> {
        self.slots
            .get(at.slot as usize)
            .filter(|record| record.is(at))
    }

    /// The record owning request id `id` (of hash `hash`).
    fn by_id(&self, hash: u64, id: &[u8]) -> Option<&Record> {
        let (slots, recent) = (&self.slots, &self.recent);
        let at = self.ids.find(hash, |&at| {
            record_at(slots, recent, at).is_some_and(|record| record.id.as_bytes() == id)
        })?;
        record_at(slots, recent, *at)
    }

    /// Adds `record`, evicting the oldest tracked request first if the shard is full.
    fn insert(&mut self, mut record: Record, window: u64, now: u64) -> (u32, u32, Evicted) {
        let mut evicted = Evicted::default();
        while self.live >= self.max_live {
            match self.evict_oldest(window, now) {
                Some(removed) => {
                    evicted.in_flight += 1;
                    evicted.recent += removed.evicted_recent;
                    evicted.candidates += usize::from(removed.was_candidate);
                }
                None => break,
            }
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Record::free(self.new_generation));
                (self.slots.len() - 1) as u32
            }
        };
        let candidate = record.state & CANDIDATE != 0;
        let at = SlotRef {
            slot,
            generation: self.slots[slot as usize].generation,
        };
        record.generation = at.generation;
        let owns_id = record.owns_id();
        self.slots[slot as usize] = record;
        if owns_id {
            self.claim_id(slot);
        }
        self.live += 1;
        if candidate {
            self.candidates.push_back(at);
            self.candidates_live += 1;
        } else {
            self.others.push_back(at);
            self.others_live += 1;
        }
        (slot, at.generation, evicted)
    }

    /// Points the id table at the request in `slot` for its id, taking the id over from an
    /// older request that had it.
    fn claim_id(&mut self, slot: u32) {
        let Shard {
            slots, recent, ids, ..
        } = self;
        let (slots, recent) = (&*slots, &*recent);
        let Some(id) = slots.get(slot as usize).map(|record| &record.id) else {
            return;
        };
        let previous = match ids.entry(
            id.hash,
            |&at| {
                record_at(slots, recent, at)
                    .is_some_and(|other| other.id.as_bytes() == id.as_bytes())
            },
            |&at| hash_at(slots, recent, at),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => {
                Some(std::mem::replace(entry.get_mut(), slot))
            }
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert(slot);
                None
            }
        };
        let previous = previous.and_then(|at| {
            if at & REMEMBERED != 0 {
                self.recent.get_mut(at & !REMEMBERED)
            } else {
                self.slots.get_mut(at as usize)
            }
        });
        if let Some(previous) = previous {
            previous.state &= !OWNS_ID;
            if !previous.is_in_flight() {
                // Its place in `recent` goes when its window ends; its heap parts go now.
                previous.trace_state = None;
                previous.id = IdKey::NONE;
            }
        }
    }

    /// Removes the id table's value `at` for the id of hash `hash`.
    fn unlink_id(&mut self, hash: u64, at: u32) {
        if let Ok(entry) = self.ids.find_entry(hash, |&value| value == at) {
            entry.remove();
        }
    }

    /// Evicts the oldest request of `others` (long-lived ones: tunnels, aged requests), else the
    /// oldest candidate.
    fn evict_oldest(&mut self, window: u64, now: u64) -> Option<Removed> {
        while let Some(at) = self
            .others
            .pop_front()
            .or_else(|| self.candidates.pop_front())
        {
            if self.get(at).is_some() {
                return self.retire(at.slot, at.generation, window, now);
            }
        }
        None
    }

    /// Ends a registration, its id remembered until `now + window`; a stale reference (slot
    /// evicted, maybe reused) does nothing.
    fn retire(&mut self, slot: u32, generation: u32, window: u64, now: u64) -> Option<Removed> {
        let at = SlotRef { slot, generation };
        let state = self
            .slots
            .get_mut(slot as usize)
            .filter(|record| record.is(at))?;
        let record = std::mem::replace(state, Record::free(generation.wrapping_add(1)));
        self.free.push(slot);
        self.live -= 1;
        let was_candidate = record.state & CANDIDATE != 0;
        if was_candidate {
            self.candidates_live -= 1;
        } else {
            self.others_live -= 1;
        }
        self.trim();
        self.compact();
        let evicted_recent = if record.owns_id() {
            self.remember(record, slot, now.saturating_add(window))
        } else {
            0
        };
        Some(Removed {
            was_candidate,
            evicted_recent,
        })
    }

    /// Keeps the id of a finished request (until then in `slot`) until `expires`. Returns how
    /// many ids were forgotten early to stay in bounds.
    fn remember(&mut self, mut record: Record, slot: u32, expires: u64) -> u64 {
        let hash = record.id.hash;
        if self.max_recent == 0 {
            self.unlink_id(hash, slot);
            return 0;
        }
        record.state = OWNS_ID;
        record.time = expires;
        let position = self.recent.push(record);
        if let Some(at) = self.ids.find_mut(hash, |&at| at == slot) {
            *at = REMEMBERED | position;
        }
        let mut evicted = 0;
        while self.recent.len() > self.max_recent {
            if let Some((position, record)) = self.recent.pop_front() {
                if record.owns_id() {
                    self.unlink_id(record.id.hash, REMEMBERED | position);
                    evicted += 1;
                }
            }
        }
        evicted
    }

    /// Forgets ids whose window has ended.
    fn expire(&mut self, now: u64) {
        while let Some(front) = self.recent.front() {
            if front.owns_id() && front.time > now {
                break;
            }
            if let Some((position, record)) = self.recent.pop_front() {
                if record.owns_id() {
                    self.unlink_id(record.id.hash, REMEMBERED | position);
                }
            }
        }
    }

    /// Gives back the memory of storage that is mostly empty (see [`mostly_empty`]).
    fn shrink(&mut self) {
        self.compact();
        shrink_queue(&mut self.candidates);
        shrink_queue(&mut self.others);
        self.shrink_slots();
        if mostly_empty(self.ids.len(), self.ids.capacity()) {
            let Shard {
                slots, recent, ids, ..
            } = self;
            ids.shrink_to(2 * ids.len(), |&at| hash_at(slots, recent, at));
        }
        self.recent.shrink();
    }

    /// Cuts the free slots after the last one in flight, and reorders the free list so that
    /// the lowest slots are reused first: slots in flight gather at the front, and what a
    /// long request pins at the end is cut once it has ended.
    fn shrink_slots(&mut self) {
        if !mostly_empty(self.live, self.slots.capacity()) {
            return;
        }
        let end = self
            .slots
            .iter()
            .rposition(Record::is_in_flight)
            .map_or(0, |last| last + 1);
        for cut in &self.slots[end..] {
            self.new_generation = self.new_generation.max(cut.generation);
        }
        self.slots.truncate(end);
        self.slots.shrink_to(2 * self.live);
        self.free.clear();
        let slots = &self.slots;
        self.free.extend(
            (0..end as u32)
                .rev()
                .filter(|&slot| !slots[slot as usize].is_in_flight()),
        );
        self.free.shrink_to(2 * self.free.len());
    }

    fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        // hashbrown: 7/8 of the buckets (all below 8) are usable; one byte of control each,
        // and a group's width more.
        let buckets = match self.ids.capacity() {
            0 => 0,
            capacity if capacity < 8 => (capacity + 1).next_power_of_two(),
            capacity => (capacity / 7 * 8).next_power_of_two(),
        };
        let table = if buckets == 0 {
            0
        } else {
            buckets * (size_of::<u32>() + 1) + 16
        };
        self.slots.capacity() * size_of::<Record>()
            + self.free.capacity() * size_of::<u32>()
            + (self.candidates.capacity() + self.others.capacity()) * size_of::<SlotRef>()
            + table
            + self.recent.heap_bytes()
    }

    /// Moves candidates that started before `oldest_start` to `others`; returns how many.
    fn age_candidates(&mut self, oldest_start: Option<u64>) -> usize {
        let Some(oldest_start) = oldest_start else {
            return 0;
        };
        let mut aged = 0;
        while let Some(&at) = self.candidates.front() {
            let Some(record) = self.get(at) else {
                self.candidates.pop_front();
                continue;
            };
            if record.time >= oldest_start {
                break;
            }
            self.candidates.pop_front();
            self.slots[at.slot as usize].state &= !CANDIDATE;
            self.candidates_live -= 1;
            self.others_live += 1;
            self.others.push_back(at);
            aged += 1;
        }
        aged
    }

    /// Offers this shard's newest candidates to `newest`.
    fn newest_candidates(&self, newest: &mut Newest) {
        let mut offered = 0;
        for &at in self.candidates.iter().rev() {
            if offered == newest.max {
                break;
            }
            if let Some(record) = self.get(at) {
                newest.offer(record.seq, record.context());
                offered += 1;
            }
        }
    }

    /// Drops stale references at the ends of the queues (the newest request finishing first
    /// is the common case), so walking from either end does not step over them.
    fn trim(&mut self) {
        let slots = &self.slots;
        let stale = |at: &SlotRef| !slots.get(at.slot as usize).is_some_and(|r| r.is(*at));
        for queue in [&mut self.candidates, &mut self.others] {
            while queue.back().is_some_and(stale) {
                queue.pop_back();
            }
            while queue.front().is_some_and(stale) {
                queue.pop_front();
            }
        }
    }

    /// Drops stale references once they outnumber the live ones, so the queues stay
    /// proportional to what is tracked.
    fn compact(&mut self) {
        let slots = &self.slots;
        let live = |at: &SlotRef| slots.get(at.slot as usize).is_some_and(|r| r.is(*at));
        if self.candidates.len() > 2 * self.candidates_live + 32 {
            self.candidates.retain(live);
        }
        if self.others.len() > 2 * self.others_live + 32 {
            self.others.retain(live);
        }
    }
}

/// Records in one chunk of [`Recent`] (28 KiB).
const RECENT_CHUNK: usize = 256;
/// Positions in [`Recent`] count modulo 2³¹ (the id table's values keep the top bit).
const POSITION_MASK: u32 = REMEMBERED - 1;

/// Remembered records, oldest first, in chunks of [`RECENT_CHUNK`]: growing never copies or
/// overshoots by more than a chunk, and a chunk goes back as soon as its records have expired.
/// Records are named by their position, which counts every record ever pushed.
#[derive(Debug, Default)]
struct Recent {
    chunks: VecDeque<Vec<Record>>,
    /// Records of the first chunk already popped.
    head: usize,
    /// Position of the first chunk's first record.
    first: u32,
    /// Position of the next record pushed.
    next: u32,
    len: usize,
    /// An emptied chunk, kept for the next one needed.
    spare: Option<Vec<Record>>,
}

impl Recent {
    fn len(&self) -> usize {
        self.len
    }

    /// Appends `record`; returns its position.
    fn push(&mut self, record: Record) -> u32 {
        if self
            .chunks
            .back()
            .is_none_or(|chunk| chunk.len() == RECENT_CHUNK)
        {
            if self.chunks.is_empty() {
                self.first = self.next;
                self.head = 0;
            }
            let chunk = self
                .spare
                .take()
                .unwrap_or_else(|| Vec::with_capacity(RECENT_CHUNK));
            self.chunks.push_back(chunk);
        }
        if let Some(chunk) = self.chunks.back_mut() {
            chunk.push(record);
        }
        let position = self.next;
        self.next = self.next.wrapping_add(1) & POSITION_MASK;
        self.len += 1;
        position
    }

    fn front(&self) -> Option<&Record> {
        self.chunks.front()?.get(self.head)
    }

    /// Removes the oldest record; returns it and its position.
    fn pop_front(&mut self) -> Option<(u32, Record)> {
        let chunk = self.chunks.front_mut()?;
        let record = std::mem::replace(chunk.get_mut(self.head)?, Record::free(0));
        let position = self.first.wrapping_add(self.head as u32) & POSITION_MASK;
        self.head += 1;
        self.len -= 1;
        if self.head == RECENT_CHUNK {
            if let Some(mut done) = self.chunks.pop_front() {
                if self.spare.is_none() {
                    done.clear();
                    self.spare = Some(done);
                }
            }
            self.first = self.first.wrapping_add(RECENT_CHUNK as u32) & POSITION_MASK;
            self.head = 0;
        }
        Some((position, record))
    }

    /// Where the record at `position` is, if it is still here.
    fn index(&self, position: u32) -> Option<(usize, usize)> {
        let offset = (position.wrapping_sub(self.first) & POSITION_MASK) as usize;
        (offset >= self.head && offset < self.head + self.len)
            .then_some((offset / RECENT_CHUNK, offset % RECENT_CHUNK))
    }

    fn get(&self, position: u32) -> Option<&Record> {
        let (chunk, index) = self.index(position)?;
        self.chunks.get(chunk)?.get(index)
    }

    fn get_mut(&mut self, position: u32) -> Option<&mut Record> {
        let (chunk, index) = self.index(position)?;
        self.chunks.get_mut(chunk)?.get_mut(index)
    }

    /// Gives back the spare chunk while little is remembered, and every chunk when nothing is.
    fn shrink(&mut self) {
        if self.len < RECENT_CHUNK {
            self.spare = None;
        }
        if self.len == 0 {
            self.chunks = VecDeque::new();
            self.head = 0;
            self.first = self.next;
        } else if mostly_empty(self.chunks.len(), self.chunks.capacity()) {
            self.chunks.shrink_to(2 * self.chunks.len());
        }
    }

    fn heap_bytes(&self) -> usize {
        let chunks = self.chunks.iter().chain(&self.spare);
        chunks.map(Vec::capacity).sum::<usize>() * std::mem::size_of::<Record>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<Record>>()
    }
}

/// The newest candidates seen across shards; allocates only when there are two or more, and
/// then once: for all that `shards` shards can offer, `max` each (up to [`Newest::RESERVE`]).
struct Newest {
    max: usize,
    shards: usize,
    one: Option<(u64, ParentContext)>,
    many: Vec<(u64, ParentContext)>,
}

impl Newest {
    /// Most candidates reserved for at once (more grow the list as they come).
    const RESERVE: usize = 64;

    fn new(max: usize, shards: usize) -> Newest {
        Newest {
            max,
            shards,
            one: None,
            many: Vec::new(),
        }
    }

    fn offer(&mut self, seq: u64, context: ParentContext) {
        if self.one.is_none() && self.many.is_empty() {
            self.one = Some((seq, context));
            return;
        }
        if let Some(first) = self.one.take() {
            let all = self.max.saturating_mul(self.shards);
            self.many.reserve_exact(all.clamp(2, Newest::RESERVE));
            self.many.push(first);
        }
        self.many.push((seq, context));
    }

    fn into_sole(self) -> Option<ParentContext> {
        self.one.map(|(_, context)| context)
    }

    fn into_links(self, max: usize) -> Vec<ParentContext> {
        let mut all = self.many;
        all.extend(self.one);
        all.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        all.truncate(max);
        all.into_iter().map(|(_, context)| context).collect()
    }
}

#[cfg(test)]
#[path = "correlate_tests.rs"]
mod tests;
