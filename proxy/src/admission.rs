//! Admission of client connections on one listener: a cap on the connections open at once
//! (`MESHTRACE_MAX_CONNECTIONS`, each counted with the upstream connection it may hold), and
//! load shedding when the cap or the process's fd limit is reached, so that new clients are
//! admitted while idle ones hold descriptors.
//!
//! Shed first, oldest first: connections that sent nothing before the detect timeout and were
//! made opaque tunnels, then connections with no request in flight (idle between requests,
//! still sending a request head, or not yet detected). Connections with a request in flight and
//! detected opaque tunnels are never shed.
//!
//! No lock: the accept loop alone owns the list of connections (weak references, in accept
//! order); each connection publishes its state through atomics of its own [`ConnSlot`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::meta::Direction;
use crate::metrics::DirectionMetrics;

/// Why a connection was shed (the `reason` label of `meshtrace_proxy_connections_shed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// The listener's `MESHTRACE_MAX_CONNECTIONS` was reached.
    MaxConnections,
    /// Accepting failed for lack of descriptors (EMFILE, ENFILE) or socket memory.
    FdLimit,
}

impl ShedReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            ShedReason::MaxConnections => "max_connections",
            ShedReason::FdLimit => "fd_limit",
        }
    }
}

const DETECTING: u8 = 0;
const HTTP: u8 = 1;
/// Sent nothing before the detect timeout: forwarded as an opaque tunnel.
const OPAQUE_SILENT: u8 = 2;
const OPAQUE: u8 = 3;

/// The connections a listener has open, shared with each [`ConnSlot`].
#[derive(Debug, Default)]
struct OpenCount {
    open: AtomicUsize,
    /// Notified whenever a connection stops counting.
    ended: Notify,
}

/// One admitted connection's state, published to the accept loop.
#[derive(Debug)]
pub struct ConnSlot {
    state: AtomicU8,
    in_flight: AtomicUsize,
    counted: AtomicBool,
    shed: CancellationToken,
    open: Arc<OpenCount>,
}

impl ConnSlot {
    /// Detected HTTP/1 or h2: sheddable whenever no request is in flight.
    pub fn set_http(&self) {
        self.state.store(HTTP, Ordering::Relaxed);
    }

    /// Forwarded as opaque TCP; `silent`: because the client sent nothing before the detect
    /// timeout (shed first), rather than because it spoke another protocol (never shed).
    pub fn set_opaque(&self, silent: bool) {
        let state = if silent { OPAQUE_SILENT } else { OPAQUE };
        self.state.store(state, Ordering::Relaxed);
    }

    /// Marks a request in flight until the returned guard is dropped (with the response body).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves when the accept loop sheds this connection: its task then closes it.
    pub fn shed(&self) -> WaitForCancellationFuture<'_> {
        self.shed.cancelled()
    }

    /// Shedding order: 0 first, 1 next, `None` never.
    fn shed_rank(&self) -> Option<u8> {
        if !self.counted.load(Ordering::Acquire) {
            return None;
        }
        match self.state.load(Ordering::Relaxed) {
            OPAQUE_SILENT => Some(0),
            DETECTING => Some(1),
            HTTP if self.in_flight.load(Ordering::Relaxed) == 0 => Some(1),
            _ => None,
        }
    }

    /// Stops counting this connection against the cap (once).
    fn uncount(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.open.open.fetch_sub(1, Ordering::AcqRel);
            self.open.ended.notify_one();
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.uncount();
    }
}

/// A request in flight on a connection; see [`ConnSlot::request_started`].
#[derive(Debug)]
pub struct InFlight(Arc<ConnSlot>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener's admission control, owned by its accept loop.
#[derive(Debug)]
pub struct Admission {
    cap: usize,
    open: Arc<OpenCount>,
    /// Admitted connections in accept order (oldest first); dead entries are pruned lazily.
    slots: VecDeque<Weak<ConnSlot>>,
    direction: Direction,
    metrics: DirectionMetrics,
}

impl Admission {
    pub fn new(cap: usize, direction: Direction, metrics: DirectionMetrics) -> Self {
        Admission {
            cap: cap.max(1),
            open: Arc::default(),
            slots: VecDeque::new(),
            direction,
            metrics,
        }
    }

    /// Connections counted against the cap.
    pub fn open(&self) -> usize {
        self.open.open.load(Ordering::Acquire)
    }

    pub fn is_full(&self) -> bool {
        self.open() >= self.cap
    }

    /// Counts a newly accepted connection and returns the slot its task publishes to.
    pub fn admit(&mut self) -> Arc<ConnSlot> {
        self.open.open.fetch_add(1, Ordering::AcqRel);
        let slot = Arc::new(ConnSlot {
            state: AtomicU8::new(DETECTING),
            in_flight: AtomicUsize::new(0),
            counted: AtomicBool::new(true),
            shed: CancellationToken::new(),
            open: self.open.clone(),
        });
        if self.slots.len() >= 2 * self.open() + 64 {
            self.prune();
        }
        self.slots.push_back(Arc::downgrade(&slot));
        slot
    }

    /// Sheds the first connection in shedding order; false when none may be shed.
    pub fn shed_one(&mut self, reason: ShedReason) -> bool {
        self.prune();
        let mut best: Option<(u8, Arc<ConnSlot>)> = None;
        for slot in self.slots.iter().filter_map(Weak::upgrade) {
            match slot.shed_rank() {
                Some(0) => {
                    best = Some((0, slot));
                    break;
                }
                Some(rank) if best.is_none() => best = Some((rank, slot)),
                _ => {}
            }
        }
        let Some((_, slot)) = best else {
            return false;
        };
        slot.uncount();
        slot.shed.cancel();
        self.metrics.connection_shed(reason);
        tracing::debug!(
            direction = self.direction.as_str(),
            reason = reason.as_str(),
            "shed a connection"
        );
        true
    }

    /// Resolves when a connection stops counting (closed or shed).
    pub async fn connection_ended(&self) {
        self.open.ended.notified().await
    }

    fn prune(&mut self) {
        self.slots.retain(|slot| {
            slot.upgrade()
                .is_some_and(|slot| slot.counted.load(Ordering::Acquire))
        });
    }
}

/// How long an accept loop waits after a failed accept, and how often it says so.
#[derive(Debug)]
pub struct AcceptBackoff {
    delay: Duration,
    failures: u64,
    last_warning: Option<Instant>,
}

const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// At most one warning per interval, with the count of failures since the last.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            delay: FIRST_DELAY,
            failures: 0,
            last_warning: None,
        }
    }
}

impl AcceptBackoff {
    /// Records a failed accept; returns how long to wait before the next, and logs a warning
    /// when the last one is at least [`WARNING_INTERVAL`] old.
    pub fn failed(&mut self, direction: Direction, error: &std::io::Error) -> Duration {
        self.failures += 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARNING_INTERVAL)
        {
            tracing::warn!(
                direction = direction.as_str(),
                %error,
                failures = self.failures,
                "accept failed; backing off (one warning per 10s, failures counted since the last)"
            );
            self.last_warning = Some(now);
            self.failures = 0;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        delay
    }

    /// An accept succeeded: the next failure waits the shortest delay again.
    pub fn succeeded(&mut self) {
        self.delay = FIRST_DELAY;
    }
}

/// Whether an accept error means the process (or system) is out of descriptors or socket
/// memory, which shedding a connection relieves.
pub fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(cap: usize) -> Admission {
        Admission::new(cap, Direction::Inbound, DirectionMetrics::unregistered())
    }

    #[test]
    fn sheds_silent_tunnels_first_then_the_oldest_idle_never_busy_ones() {
        let mut admission = admission(4);
        let busy = admission.admit();
        busy.set_http();
        let _request = busy.request_started();
        let idle_old = admission.admit();
        idle_old.set_http();
        let idle_new = admission.admit();
        let silent = admission.admit();
        silent.set_opaque(true);
        assert!(admission.is_full());

        assert!(admission.shed_one(ShedReason::MaxConnections));
        assert!(silent.shed.is_cancelled());
        assert_eq!(admission.open(), 3);
        assert!(admission.shed_one(ShedReason::FdLimit));
        assert!(idle_old.shed.is_cancelled());
        assert!(admission.shed_one(ShedReason::FdLimit));
        assert!(idle_new.shed.is_cancelled());
        assert!(
            !admission.shed_one(ShedReason::FdLimit),
            "busy is never shed"
        );
        assert!(!busy.shed.is_cancelled());
        assert_eq!(admission.open(), 1);
        drop(busy);
        assert_eq!(
            admission.open(),
            1,
            "the request guard still holds the slot"
        );
    }

    #[test]
    fn closed_connections_stop_counting_once() {
        let mut admission = admission(2);
        let a = admission.admit();
        let b = admission.admit();
        assert!(admission.is_full());
        assert!(admission.shed_one(ShedReason::MaxConnections));
        drop(a);
        drop(b);
        assert_eq!(admission.open(), 0);
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_resource_exhaustion(&error));
        let delays: Vec<Duration> = (0..10)
            .map(|_| backoff.failed(Direction::Inbound, &error))
            .collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert_eq!(delays[9], MAX_DELAY);
        backoff.succeeded();
        assert_eq!(backoff.failed(Direction::Inbound, &error), FIRST_DELAY);
    }
}
