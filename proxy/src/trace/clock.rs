//! Span timestamps.
//!
//! Unix time is read once and every later timestamp is that anchor plus a monotonic
//! [`Instant`] offset, so span durations are exact even if the wall clock is stepped.

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
}
