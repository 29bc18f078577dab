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
//! (`IdKey`); memory is bounded by [`CorrelateSettings::max_in_flight`] and
//! [`CorrelateSettings::max_recent`], the oldest entries being evicted and counted.
//!
//! Time is injected ([`Clock`]) so the whole structure is tested without I/O or sleeping.

use std::cell::Cell;
use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

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
        let now = self.clock.now();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let shard_index = home_shard(self.shards.len());
        let mut shard = self.lock(shard_index);
        shard.expire(now);
        let entry = Entry {
            context,
            started: now,
            seq,
            candidate,
            id,
        };
        let (slot, generation, evicted) = shard.insert(entry, &self.settings, now);
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
        let now = self.clock.now();
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

    fn by_request_id(&self, id: &[u8], now: Instant) -> Option<ParentContext> {
        if id.is_empty() {
            return None;
        }
        let key = IdKey::new(id, &self.id_hasher);
        let mut newest: Option<(u64, ParentContext)> = None;
        for index in 0..self.shards.len() {
            let shard = self.lock(index);
            let Some(entry) = shard.ids.get(&key) else {
                continue;
            };
            let live = entry.expires.is_none_or(|expires| expires > now);
            if live && newest.as_ref().is_none_or(|(seq, _)| entry.seq > *seq) {
                newest = Some((entry.seq, entry.context.clone()));
            }
        }
        newest.map(|(_, context)| context)
    }

    fn in_flight_candidates(&self, now: Instant) -> Inferred {
        let oldest_start = now.checked_sub(self.settings.max_age);
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
        let now = self.clock.now();
        let mut shard = self.lock(shard_index);
        let removed = shard.remove(slot, generation, &self.settings, now);
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

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave it inconsistent in a way that matters more
        // than losing correlation: keep going with what is there.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
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

/// A request id as a map key: its bytes (inline up to [`INLINE_ID`] bytes) and their hash,
/// computed once, when the key is made, with the correlator's keyed hasher (SipHash with random
/// keys: ids come from clients, and a keyed hash keeps collisions out of their reach). The maps
/// hash a key by that number alone ([`Prehashed`]), so a request's id is hashed once, not again
/// when it is inserted, remembered, looked up and forgotten. Equality compares the bytes.
#[derive(Clone)]
struct IdKey {
    hash: u64,
    bytes: IdBytes,
}

#[derive(Clone)]
enum IdBytes {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(Box<[u8]>),
}

impl IdKey {
    fn new(id: &[u8], hasher: &RandomState) -> IdKey {
        let mut state = hasher.build_hasher();
        state.write(id);
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
            hash: state.finish(),
            bytes,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            IdBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdBytes::Heap(bytes) => bytes,
        }
    }
}

impl PartialEq for IdKey {
    fn eq(&self, other: &IdKey) -> bool {
        self.hash == other.hash && self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IdKey {}

impl Hash for IdKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The hasher of maps keyed by [`IdKey`]: the key's hash, already computed, as it is.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    /// Only `write_u64` is used ([`IdKey`]'s `Hash`); anything else is still hashed, by FNV-1a.
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = HashMap<IdKey, V, BuildHasherDefault<Prehashed>>;

impl fmt::Debug for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// One tracked inbound request.
#[derive(Debug)]
struct Entry {
    context: ParentContext,
    started: Instant,
    seq: u64,
    /// Still a candidate (plain HTTP, not aged).
    candidate: bool,
    id: Option<IdKey>,
}

/// A request id's context: owned by an in-flight entry, or remembered until `expires`.
#[derive(Debug)]
struct IdEntry {
    context: ParentContext,
    seq: u64,
    /// `None` while the request is in flight.
    expires: Option<Instant>,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    entry: Option<Entry>,
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

/// One thread's part of the registry.
#[derive(Debug)]
struct Shard {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Candidates in registration order (stale refs are skipped and compacted away).
    candidates: VecDeque<SlotRef>,
    /// Every other tracked request (upgrades, aged candidates), roughly oldest first.
    others: VecDeque<SlotRef>,
    /// Live entries, and live candidates among them.
    live: usize,
    candidates_live: usize,
    others_live: usize,
    ids: IdMap<IdEntry>,
    /// Finished requests' ids in the order their windows end.
    recent: VecDeque<(Instant, u64, IdKey)>,
    max_live: usize,
    max_recent: usize,
}

impl Shard {
    fn new(max_live: usize, max_recent: usize) -> Shard {
        Shard {
            slots: Vec::new(),
            free: Vec::new(),
            candidates: VecDeque::new(),
            others: VecDeque::new(),
            live: 0,
            candidates_live: 0,
            others_live: 0,
            ids: IdMap::default(),
            recent: VecDeque::new(),
            max_live,
            max_recent,
        }
    }

    fn get(&self, at: SlotRef) -> Option<&Entry> {
        let slot = self.slots.get(at.slot as usize)?;
        (slot.generation == at.generation)
            .then_some(slot.entry.as_ref())
            .flatten()
    }

    /// Adds `entry`, evicting the oldest tracked request first if the shard is full.
    fn insert(
        &mut self,
        entry: Entry,
        settings: &CorrelateSettings,
        now: Instant,
    ) -> (u32, u32, Evicted) {
        let mut evicted = Evicted::default();
        while self.live >= self.max_live {
            match self.evict_oldest(settings, now) {
                Some(removed) => {
                    evicted.in_flight += 1;
                    evicted.recent += removed.evicted_recent;
                    evicted.candidates += usize::from(removed.was_candidate);
                }
                None => break,
            }
        }
        if let Some(id) = &entry.id {
            self.ids.insert(
                id.clone(),
                IdEntry {
                    context: entry.context.clone(),
                    seq: entry.seq,
                    expires: None,
                },
            );
        }
        let candidate = entry.candidate;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let state = &mut self.slots[slot as usize];
        state.entry = Some(entry);
        let at = SlotRef {
            slot,
            generation: state.generation,
        };
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

    /// Evicts the oldest request of `others` (long-lived ones: tunnels, aged requests), else the
    /// oldest candidate.
    fn evict_oldest(&mut self, settings: &CorrelateSettings, now: Instant) -> Option<Removed> {
        while let Some(at) = self
            .others
            .pop_front()
            .or_else(|| self.candidates.pop_front())
        {
            if self.get(at).is_some() {
                return self.remove(at.slot, at.generation, settings, now);
            }
        }
        None
    }

    /// Ends a registration; a stale reference (slot evicted, maybe reused) does nothing.
    fn remove(
        &mut self,
        slot: u32,
        generation: u32,
        settings: &CorrelateSettings,
        now: Instant,
    ) -> Option<Removed> {
        let state = self.slots.get_mut(slot as usize)?;
        if state.generation != generation {
            return None;
        }
        let entry = state.entry.take()?;
        state.generation = state.generation.wrapping_add(1);
        self.free.push(slot);
        self.live -= 1;
        if entry.candidate {
            self.candidates_live -= 1;
        } else {
            self.others_live -= 1;
        }
        self.trim();
        self.compact();
        let evicted_recent = match entry.id {
            Some(id) => self.remember(id, entry.seq, now + settings.request_id_window),
            None => 0,
        };
        Some(Removed {
            was_candidate: entry.candidate,
            evicted_recent,
        })
    }

    /// Keeps a finished request's id until `expires`, if the id still names this request (a
    /// newer request with the same id may have taken it over). Returns how many ids were
    /// forgotten early to stay in bounds.
    fn remember(&mut self, id: IdKey, seq: u64, expires: Instant) -> u64 {
        let Some(entry) = self.ids.get_mut(&id).filter(|entry| entry.seq == seq) else {
            return 0;
        };
        if self.max_recent == 0 || entry.expires.is_some() {
            self.ids.remove(&id);
            return 0;
        }
        entry.expires = Some(expires);
        self.recent.push_back((expires, seq, id));
        let mut evicted = 0;
        while self.recent.len() > self.max_recent {
            if let Some((_, seq, id)) = self.recent.pop_front() {
                evicted += u64::from(self.forget(id, seq));
            }
        }
        evicted
    }

    /// Forgets ids whose window has ended.
    fn expire(&mut self, now: Instant) {
        while let Some((expires, _, _)) = self.recent.front() {
            if *expires > now {
                break;
            }
            if let Some((_, seq, id)) = self.recent.pop_front() {
                self.forget(id, seq);
            }
        }
    }

    /// Removes a finished id if it still belongs to request `seq`.
    fn forget(&mut self, id: IdKey, seq: u64) -> bool {
        match self.ids.entry(id) {
            MapEntry::Occupied(entry)
                if entry.get().seq == seq && entry.get().expires.is_some() =>
            {
                entry.remove();
                true
            }
            _ => false,
        }
    }

    /// Moves candidates that started before `oldest_start` to `others`; returns how many.
    fn age_candidates(&mut self, oldest_start: Option<Instant>) -> usize {
        let Some(oldest_start) = oldest_start else {
            return 0;
        };
        let mut aged = 0;
        while let Some(&at) = self.candidates.front() {
            let Some(entry) = self.get(at) else {
                self.candidates.pop_front();
                continue;
            };
            if entry.started >= oldest_start {
                break;
            }
            self.candidates.pop_front();
            if let Some(entry) = self.slots[at.slot as usize].entry.as_mut() {
                entry.candidate = false;
            }
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
            if let Some(entry) = self.get(at) {
                newest.offer(entry.seq, &entry.context);
                offered += 1;
            }
        }
    }

    /// Drops stale references at the ends of the queues (the newest request finishing first
    /// is the common case), so walking from either end does not step over them.
    fn trim(&mut self) {
        let slots = &self.slots;
        let stale = |at: &SlotRef| {
            !slots
                .get(at.slot as usize)
                .is_some_and(|s| s.generation == at.generation && s.entry.is_some())
        };
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
        let live = |at: &SlotRef| {
            slots
                .get(at.slot as usize)
                .is_some_and(|s| s.generation == at.generation && s.entry.is_some())
        };
        if self.candidates.len() > 2 * self.candidates_live + 32 {
            self.candidates.retain(live);
        }
        if self.others.len() > 2 * self.others_live + 32 {
            self.others.retain(live);
        }
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

    fn offer(&mut self, seq: u64, context: &ParentContext) {
        if self.one.is_none() && self.many.is_empty() {
            self.one = Some((seq, context.clone()));
            return;
        }
        if let Some(first) = self.one.take() {
            let all = self.max.saturating_mul(self.shards);
            self.many.reserve_exact(all.clamp(2, Newest::RESERVE));
            self.many.push(first);
        }
        self.many.push((seq, context.clone()));
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
