//! How backend-api-2 misbehaves, so demo traces show slow hops and failures.
//!
//! Random by default (seedable for reproducible runs); a request can force an outcome with
//! `?mode=ok|slow|fail`, which every hop passes on, so tests and the demo can hit a path
//! deterministically.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a request asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Let the configured odds decide.
    #[default]
    Auto,
    Ok,
    Slow,
    Fail,
}

impl Mode {
    pub fn from_query(query: Option<&str>) -> Self {
        let Some(query) = query else {
            return Self::Auto;
        };
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "mode")
            .map_or(Self::Auto, |(_, value)| match value.as_ref() {
                "ok" => Self::Ok,
                "slow" => Self::Slow,
                "fail" => Self::Fail,
                _ => Self::Auto,
            })
    }

    /// The query fragment that forwards this mode to the next hop.
    pub fn as_query(self) -> &'static str {
        match self {
            Self::Auto => "",
            Self::Ok => "?mode=ok",
            Self::Slow => "?mode=slow",
            Self::Fail => "?mode=fail",
        }
    }
}

/// The outcome decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub delay: Duration,
    pub fail: bool,
}

/// Odds of the slow and failing paths.
#[derive(Debug)]
pub struct Chaos {
    slow_percent: u32,
    error_percent: u32,
    seed: u64,
    /// Each request draws from its own generator seeded with (seed, sequence number): no lock,
    /// and the same seed replays the same sequence.
    sequence: AtomicU64,
}

/// Delay of the slow path.
pub const SLOW_DELAY_MS: std::ops::RangeInclusive<u64> = 150..=300;
/// "Work" of a normal request, so bars in a waterfall are visible.
pub const NORMAL_DELAY_MS: std::ops::RangeInclusive<u64> = 1..=4;

impl Chaos {
    pub fn new(slow_percent: u32, error_percent: u32, seed: u64) -> Self {
        Self {
            slow_percent: slow_percent.min(100),
            error_percent: error_percent.min(100),
            seed,
            sequence: AtomicU64::new(0),
        }
    }

    pub fn decide(&self, mode: Mode) -> Outcome {
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let (slow, fail) = match mode {
            Mode::Ok => (false, false),
            Mode::Slow => (true, false),
            Mode::Fail => (false, true),
            Mode::Auto => (
                rng.random_ratio(self.slow_percent, 100),
                rng.random_ratio(self.error_percent, 100),
            ),
        };
        let delay_ms = if slow {
            rng.random_range(SLOW_DELAY_MS)
        } else {
            rng.random_range(NORMAL_DELAY_MS)
        };
        Outcome {
            delay: Duration::from_millis(delay_ms),
            fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_the_query() {
        assert_eq!(Mode::from_query(None), Mode::Auto);
        assert_eq!(Mode::from_query(Some("item=3&mode=fail")), Mode::Fail);
        assert_eq!(Mode::from_query(Some("mode=slow")), Mode::Slow);
        assert_eq!(Mode::from_query(Some("mode=ok")), Mode::Ok);
        assert_eq!(Mode::from_query(Some("mode=weird")), Mode::Auto);
        for mode in [Mode::Ok, Mode::Slow, Mode::Fail, Mode::Auto] {
            assert_eq!(Mode::from_query(mode.as_query().strip_prefix('?')), mode);
        }
    }

    #[test]
    fn forced_modes_are_obeyed() {
        let chaos = Chaos::new(0, 0, 1);
        let slow = chaos.decide(Mode::Slow);
        assert!(SLOW_DELAY_MS.contains(&(slow.delay.as_millis() as u64)));
        assert!(!slow.fail);
        assert!(chaos.decide(Mode::Fail).fail);
        let always_bad = Chaos::new(100, 100, 1);
        let ok = always_bad.decide(Mode::Ok);
        assert!(!ok.fail);
        assert!(NORMAL_DELAY_MS.contains(&(ok.delay.as_millis() as u64)));
    }

    #[test]
    fn the_odds_hold_and_a_seed_replays() {
        let draws = |seed| {
            let chaos = Chaos::new(20, 10, seed);
            (0..2000)
                .map(|_| chaos.decide(Mode::Auto))
                .collect::<Vec<_>>()
        };
        let run = draws(42);
        assert_eq!(run, draws(42));
        let slow = run
            .iter()
            .filter(|o| o.delay.as_millis() as u64 >= *SLOW_DELAY_MS.start())
            .count();
        let failed = run.iter().filter(|o| o.fail).count();
        // 2000 draws: 400 ± many standard deviations (σ ≈ 18), 200 ± (σ ≈ 13).
        assert!((300..500).contains(&slow), "{slow} slow of 2000");
        assert!((130..270).contains(&failed), "{failed} failed of 2000");
        let calm = Chaos::new(0, 0, 7);
        assert!((0..200).all(|_| {
            let outcome = calm.decide(Mode::Auto);
            !outcome.fail && NORMAL_DELAY_MS.contains(&(outcome.delay.as_millis() as u64))
        }));
    }
}
