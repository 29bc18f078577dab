//! Bounds on the request heads of one HTTP/1 client connection, enforced where its bytes are
//! read ([`ClientIo`](crate::client_io::ClientIo)).
//!
//! hyper's own `header_read_timeout` starts when hyper starts waiting for a head, so it also
//! cuts keep-alive connections that merely idle between requests, and its size limit answers a
//! bare 431 that cannot be told from the application's. Here a head starts with its first byte
//! read while no exchange is in progress and ends where its empty line is read (a scan for the
//! line ending, no parse); an exchange runs from hyper handing the request to the service
//! ([`Exchanges::begin`]) until hyper drops the response body. A head that takes longer than the
//! head timeout is answered 408, one larger than the limit 431, both with
//! `meshtrace-proxy-error` and written by the IO itself (hyper holds no response then); bytes
//! over the limit are never handed to hyper, so nothing of such a request is forwarded. The idle
//! timeout closes a connection that sends nothing for that long between exchanges. One timer
//! per connection, made on its first deadline and reset for each later one. A head that spans
//! reads is also charged to the process-wide [`HeadBudget`]; chosen to make room, it is answered
//! 431 (`request_head_budget`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::head_budget::{HeadBudget, PendingCharge};

/// How long a rejected connection's further bytes are read and discarded after the answer, so
/// that closing with unread data (a TCP reset) does not destroy the answer before the client
/// reads it (the "lingering close" of RFC 9112 §9.6).
const LINGER: Duration = Duration::from_secs(2);

/// The limits on one connection's request heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// From a head's first byte to its end; `None`: unbounded.
    pub read_timeout: Option<Duration>,
    /// Between exchanges, before a head's first byte; `None`: unbounded.
    pub idle_timeout: Option<Duration>,
    /// A head's size, request line and line endings included.
    pub max_bytes: usize,
}

/// The exchanges of one connection, as its service sees them: shared between the service,
/// which begins them, and the connection's IO, which must know whether bytes read belong to a
/// head.
#[derive(Debug, Default)]
pub struct Exchanges {
    begun: AtomicU32,
    ended: AtomicU32,
    /// The connection was upgraded (101, CONNECT 2xx): its bytes are no longer HTTP/1.
    upgraded: AtomicBool,
    /// With an idle timeout: the connection's task, woken when an exchange ends so that its
    /// IO starts the idle timer (hyper itself does not read again until the client sends).
    task: Option<AtomicWaker>,
}

impl Exchanges {
    /// `idle_timeout`: whether an idle timeout applies (the ends of exchanges then wake the
    /// connection's task).
    pub fn new(idle_timeout: bool) -> Self {
        Exchanges {
            task: idle_timeout.then(AtomicWaker::new),
            ..Exchanges::default()
        }
    }

    /// hyper handed a request to the service; the exchange lasts until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> ExchangeGuard {
        self.begun.fetch_add(1, Ordering::Relaxed);
        ExchangeGuard(self.clone())
    }

    /// The connection now carries a tunnel: never look for heads again.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }

    fn begun(&self) -> u32 {
        self.begun.load(Ordering::Relaxed)
    }

    fn busy(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
            || self.begun.load(Ordering::Relaxed) != self.ended.load(Ordering::Relaxed)
    }
}

/// Ends its exchange when dropped (hyper drops the response body once it is written).
#[derive(Debug)]
pub struct ExchangeGuard(Arc<Exchanges>);

impl ExchangeGuard {
    /// The exchange upgraded the connection to a tunnel.
    pub fn upgraded(&self) {
        self.0.upgraded();
    }
}

impl Drop for ExchangeGuard {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Relaxed);
        if let Some(task) = &self.0.task {
            task.wake();
        }
    }
}

/// Where the connection is, as seen from the bytes it reads.
#[derive(Debug)]
enum Phase {
    /// Between exchanges; `since` is set only when an idle timeout applies.
    Idle { since: Option<Instant> },
    /// A head is arriving. `begun` is the exchange count when it started: a change means hyper
    /// has already parsed it (from bytes it held) and the bytes read since are a body.
    Head {
        started: Instant,
        bytes: usize,
        end: EndScan,
        begun: u32,
    },
    /// The head's end was read; hyper has yet to hand it to the service.
    Complete { begun: u32 },
    /// An exchange (or a tunnel) is in progress: bytes read are its body.
    Exchange,
    /// Writing the rejection, then discarding what the client still sends until `until`.
    Rejecting {
        response: &'static [u8],
        written: usize,
        until: Instant,
    },
    /// Rejected or idle too long: every read ends the stream.
    Closed,
}

/// Why a connection is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    HeadTimeout,
    TooLarge,
    /// Among the largest unfinished heads when the process-wide budget was exceeded.
    OverBudget,
    Idle,
}

/// 408 for a head that took too long (RFC 9110 §15.5.9).
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
    meshtrace-proxy-error: request_head_timeout\r\n\
    content-length: 0\r\nconnection: close\r\n\r\n";

/// 431 for a head over the limit (RFC 6585 §5).
const HEAD_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
    meshtrace-proxy-error: request_head_too_large\r\n\
    content-length: 0\r\nconnection: close\r\n\r\n";

/// 431 for one of the largest unfinished heads when together they hold more than the budget.
const HEAD_BUDGET_EXCEEDED: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
    meshtrace-proxy-error: request_head_budget\r\n\
    content-length: 0\r\nconnection: close\r\n\r\n";

/// Enforces [`HeadLimits`] on one HTTP/1 connection's reads.
#[derive(Debug)]
pub struct HeadGuard {
    limits: HeadLimits,
    exchanges: Arc<Exchanges>,
    phase: Phase,
    /// Made on the first deadline, reset for each later one.
    timer: Option<Pin<Box<Sleep>>>,
    /// The last write or flush did not complete: hyper may still hold part of a response, so
    /// a rejection must not be written past it.
    write_blocked: bool,
    /// The process-wide budget for unfinished heads, if any.
    budget: Option<Arc<HeadBudget>>,
    /// The current head's charge, once it spans reads.
    charge: Option<PendingCharge>,
}

impl HeadGuard {
    /// The guard for a connection whose first head is about to be read.
    pub fn new(limits: HeadLimits, exchanges: Arc<Exchanges>) -> Self {
        HeadGuard {
            limits,
            exchanges,
            phase: Phase::Idle { since: None },
            timer: None,
            write_blocked: false,
            budget: None,
            charge: None,
        }
    }

    /// Charges heads that span reads to `budget` (shared by all connections).
    pub fn with_budget(mut self, budget: Option<Arc<HeadBudget>>) -> Self {
        self.budget = budget;
        self
    }

    /// Accounts `bytes` just read. `false`: they must not be handed on, the head went over
    /// the limit and the connection is now being rejected.
    #[must_use]
    pub fn on_read(&mut self, bytes: &[u8]) -> bool {
        self.sync();
        if bytes.is_empty() {
            return true;
        }
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Head {
                started: Instant::now(),
                bytes: 0,
                end: EndScan::default(),
                begun: self.exchanges.begun(),
            };
        }
        let Phase::Head {
            bytes: ref mut total,
            ref mut end,
            begun,
            ..
        } = self.phase
        else {
            return true;
        };
        let head_len = end.feed(bytes);
        *total += head_len.unwrap_or(bytes.len());
        if *total > self.limits.max_bytes {
            self.reject(Cut::TooLarge);
            return false;
        }
        if head_len.is_some() {
            self.phase = Phase::Complete { begun };
            self.charge = None;
        } else if let Some(budget) = &self.budget {
            let total = *total;
            match &mut self.charge {
                Some(charge) => charge.set(total),
                None => self.charge = Some(budget.register(total)),
            }
            if self.charge.as_ref().is_some_and(PendingCharge::is_evicted) {
                self.reject(Cut::OverBudget);
                return false;
            }
        }
        true
    }

    /// Drives a rejection or a close: `Some` (the poll to return from the read) while the
    /// answer is written and the client's further bytes discarded, and once the stream is
    /// over (end of stream); `None` while reads proceed as usual.
    pub fn poll_cut<T: AsyncRead + AsyncWrite>(
        &mut self,
        cx: &mut Context<'_>,
        mut io: Pin<&mut T>,
    ) -> Option<Poll<io::Result<()>>> {
        loop {
            let Phase::Rejecting {
                response,
                ref mut written,
                ..
            } = self.phase
            else {
                return matches!(self.phase, Phase::Closed).then_some(Poll::Ready(Ok(())));
            };
            if *written < response.len() {
                match io.as_mut().poll_write(cx, &response[*written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => *written += n,
                    Poll::Ready(_) => {
                        self.phase = Phase::Closed;
                        continue;
                    }
                    Poll::Pending => return Some(Poll::Pending),
                }
                if *written == response.len() {
                    // The client learns that nothing more will come.
                    let _ = io.as_mut().poll_shutdown(cx);
                }
                continue;
            }
            let mut scratch = [0; 512];
            let mut discard = ReadBuf::new(&mut scratch);
            match io.as_mut().poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if !discard.filled().is_empty() => continue,
                Poll::Ready(_) => self.phase = Phase::Closed,
                Poll::Pending if self.poll_deadline(cx).is_ready() => self.phase = Phase::Closed,
                Poll::Pending => return Some(Poll::Pending),
            }
        }
    }

    /// After a read that would block: whether a deadline has passed, which starts a cut
    /// ([`HeadGuard::poll_cut`]). Otherwise the timer will wake the task at the deadline.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.sync();
        if let (Phase::Exchange, Some(task)) = (&self.phase, &self.exchanges.task) {
            task.register(cx.waker());
        }
        let evicted = self.charge.as_ref().is_some_and(|c| c.evicted(cx.waker()));
        if evicted {
            self.reject(Cut::OverBudget);
            return true;
        }
        match self.poll_deadline(cx) {
            Poll::Ready(cut) => {
                self.reject(cut);
                true
            }
            Poll::Pending => false,
        }
    }

    /// Records whether a write or flush of hyper's could complete.
    pub fn on_write<T>(&mut self, result: &Poll<io::Result<T>>) {
        self.write_blocked = result.is_pending();
    }

    /// Follows the exchanges the service began and ended since the last look.
    fn sync(&mut self) {
        let begun = match self.phase {
            Phase::Head { begun, .. } | Phase::Complete { begun } => Some(begun),
            Phase::Idle { .. } | Phase::Exchange => None,
            Phase::Rejecting { .. } | Phase::Closed => return,
        };
        if begun.is_some_and(|begun| begun != self.exchanges.begun()) {
            self.phase = Phase::Exchange;
        }
        if self.exchanges.busy() {
            self.phase = Phase::Exchange;
        } else if let Phase::Exchange = self.phase {
            let since = self.limits.idle_timeout.map(|_| Instant::now());
            self.phase = Phase::Idle { since };
        }
        if !matches!(self.phase, Phase::Head { .. }) {
            // The head was parsed (from bytes hyper held): it holds nothing pending any more.
            self.charge = None;
        }
    }

    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Cut> {
        let (deadline, cut) = match self.phase {
            Phase::Head { started, .. } => match self.limits.read_timeout {
                Some(timeout) => (started + timeout, Cut::HeadTimeout),
                None => return Poll::Pending,
            },
            Phase::Idle { since: Some(since) } => match self.limits.idle_timeout {
                Some(timeout) => (since + timeout, Cut::Idle),
                None => return Poll::Pending,
            },
            Phase::Rejecting { until, .. } => (until, Cut::Idle),
            _ => return Poll::Pending,
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(cut)
    }

    fn reject(&mut self, cut: Cut) {
        self.charge = None;
        let response = match cut {
            Cut::HeadTimeout => REQUEST_TIMEOUT,
            Cut::TooLarge => HEAD_TOO_LARGE,
            Cut::OverBudget => HEAD_BUDGET_EXCEEDED,
            Cut::Idle => {
                self.phase = Phase::Closed;
                return;
            }
        };
        tracing::debug!(?cut, "rejecting a request head");
        self.phase = if self.write_blocked {
            // A response of hyper's is still unwritten: an answer now would garble it.
            Phase::Closed
        } else {
            Phase::Rejecting {
                response,
                written: 0,
                until: Instant::now() + LINGER,
            }
        };
    }
}

/// Finds the end of a head: the empty line after the request line and fields, with CRLF or
/// bare LF line endings (as hyper's parser accepts them). Empty lines before the request line
/// (RFC 9112 §2.2) do not end it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndScan {
    /// Seen a byte other than CR or LF.
    started: bool,
    /// Bytes since the last LF, if they are all CR (at most one counts).
    after_lf: Option<u8>,
}

impl EndScan {
    /// Feeds the next bytes; `Some(n)`: the head ends after `bytes[..n]`. Jumps from line
    /// ending to line ending (memchr), looking only at the bytes after each LF.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        if !self.started {
            i = bytes.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
            self.started = true;
            self.after_lf = None;
        }
        // A line ending split across reads: the bytes after its LF so far.
        if let Some(seen) = self.after_lf.take() {
            match self.after_empty_line(bytes, i, seen) {
                Ok(end) => return Some(end),
                Err(true) => return None,
                Err(false) => {}
            }
        }
        while let Some(lf) = memchr::memchr(b'\n', &bytes[i..]) {
            i += lf + 1;
            match self.after_empty_line(bytes, i, 0) {
                Ok(end) => return Some(end),
                Err(true) => return None,
                Err(false) => {}
            }
        }
        None
    }

    /// Looks at `bytes[at..]`, which follow an LF and `seen` CRs: `Ok(end)` when they end the
    /// head, `Err(true)` when they run out first (state kept), `Err(false)` for a field line.
    fn after_empty_line(&mut self, bytes: &[u8], at: usize, seen: u8) -> Result<usize, bool> {
        match (seen, bytes.get(at)) {
            (_, Some(b'\n')) => Ok(at + 1),
            (0, Some(b'\r')) => self.after_empty_line(bytes, at + 1, 1),
            (_, None) => {
                self.after_lf = Some(seen);
                Err(true)
            }
            _ => Err(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(chunks: &[&[u8]]) -> Option<usize> {
        let mut scan = EndScan::default();
        let mut offset = 0;
        for chunk in chunks {
            if let Some(n) = scan.feed(chunk) {
                return Some(offset + n);
            }
            offset += chunk.len();
        }
        None
    }

    #[test]
    fn finds_the_empty_line_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(end_of(&[head]), Some(head.len() - 4));
        for split in 0..head.len() {
            let (a, b) = head.split_at(split);
            assert_eq!(end_of(&[a, b]), Some(head.len() - 4), "split at {split}");
        }
    }

    #[test]
    fn accepts_bare_lf_and_ignores_leading_empty_lines() {
        assert_eq!(end_of(&[b"GET / HTTP/1.1\nHost: a\n\nx"]), Some(24));
        assert_eq!(end_of(&[b"\r\n\r\n\r\nGET / HTTP/1.1\r\n"]), None);
        assert_eq!(end_of(&[b"\r\n", b"GET / HTTP/1.1\r\n\r\n"]), Some(20));
    }

    #[test]
    fn a_lone_cr_is_not_a_line_ending() {
        assert_eq!(end_of(&[b"GET / HTTP/1.1\r\nA: b\r\r\n"]), None);
    }
}
