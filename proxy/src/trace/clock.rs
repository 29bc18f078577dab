//! Span timestamps.
//!
//! Unix time is read once and every later timestamp is that anchor plus a monotonic
//! [`Instant`] offset, so span durations are exact even if the wall clock is stepped.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Anchor {
    instant: Instant,
    unix_nanos: u64,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| Anchor {
        instant: Instant::now(),
        unix_nanos: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
    })
}

/// Unix time in nanoseconds of `instant`, on the anchored monotonic timeline.
pub fn unix_nanos(instant: Instant) -> u64 {
    let anchor = anchor();
    let offset = instant.saturating_duration_since(anchor.instant).as_nanos();
    anchor
        .unix_nanos
        .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// Unix time in nanoseconds, now.
pub fn now_unix_nanos() -> u64 {
    // Touch the anchor first so the very first call is not earlier than the anchor.
    anchor();
    unix_nanos(Instant::now())
}

thread_local! {
    /// The end of the last span a response body finished during the current body poll on
    /// this thread, and the request it belonged to (see [`body_end`]).
    static BODY_END: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
}

/// Forgets any body end recorded so far; call before polling an inner body.
pub fn start_body_poll() {
    let _ = BODY_END.try_with(|end| end.set(None));
}

/// The end time of a span of request `request` finishing as its response body ends. A
/// request's SERVER and CLIENT response bodies end in the same poll (the CLIENT one inside the
/// SERVER one): the first to finish reads the clock, the other reuses that instant instead of
/// reading the clock again. Only an end recorded since the caller's [`start_body_poll`]
/// counts, so the shared instant is never older than the caller's poll.
pub fn body_end(request: usize) -> u64 {
    let recorded = BODY_END
        .try_with(Cell::get)
        .ok()
        .flatten()
        .filter(|(of, _)| *of == request);
    match recorded {
        Some((_, at)) => at,
        None => {
            let at = now_unix_nanos();
            let _ = BODY_END.try_with(|end| end.set(Some((request, at))));
            at
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_close_to_wall_clock() {
        let a = now_unix_nanos();
        let b = now_unix_nanos();
        assert!(b >= a);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        // Same clock within a minute (generous: the anchor may be old in a long test run).
        assert!(wall.abs_diff(b) < 60_000_000_000);
    }

    #[test]
    fn a_body_end_is_shared_within_one_poll_by_one_request() {
        start_body_poll();
        let first = body_end(1);
        assert_eq!(body_end(1), first, "same request, same poll");
        let other = body_end(2);
        assert!(other >= first, "another request reads the clock");
        start_body_poll();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(body_end(2) > other, "a new poll reads the clock");
    }
}
