//! The sampling decision: one consistent answer per trace.
//!
//! Order: (1) the per-request sample header (`l5d-sample: <rate>`), (2) B3 debug, (3) the
//! decision inherited from the incoming context, (4) the configured ratio. Rules 1 and 4 use
//! [`ratio_sampled`], a pure function of the trace id, so every proxy that sees the same trace
//! with the same rate reaches the same answer.

use http::HeaderValue;

use crate::span::TraceId;

use super::TracerState;

/// Why a request is (not) sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The per-request sample header was applied.
    SampleHeader,
    /// B3 debug forced sampling.
    Debug,
    /// The caller's decision was kept.
    Inherited,
    /// This proxy's configured ratio.
    Ratio,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub sampled: bool,
    pub reason: Reason,
}

/// Parses a sample-header value as a rate clamped to `[0, 1]`; `None` when it is not a number.
pub fn parse_rate(value: &[u8]) -> Option<f64> {
    let rate: f64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    if rate.is_nan() {
        return None;
    }
    Some(rate.clamp(0.0, 1.0))
}

/// The sample header's rate if it is a number; one that is not is counted and ignored.
pub(super) fn sample_header_rate(tracer: &TracerState, value: &HeaderValue) -> Option<f64> {
    let rate = parse_rate(value.as_bytes());
    if rate.is_none() {
        tracer.metrics.sample_header_invalid.inc();
        tracing::debug!(header = %tracer.sample_header, "ignoring a non-numeric sample header");
    }
    rate
}

/// The deterministic trace-id ratio rule.
///
/// Let `x` be the trace id's low 64 bits read as a big-endian unsigned integer (the last 16 hex
/// characters of the W3C trace id; a 64-bit B3 id is exactly these bits). The trace is sampled
/// iff `rate >= 1`, or `rate > 0` and `x < floor(rate * 2^64)`. Rate 0 never samples, rate 1
/// always does, and a trace sampled at rate `r` is sampled at every rate above `r`.
pub fn ratio_sampled(trace_id: &TraceId, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low);
    // 2^64 as f64 is exact; the product is < 2^64 so the cast cannot saturate wrongly.
    let threshold = (rate * 18_446_744_073_709_551_616.0) as u64;
    x < threshold
}

/// Applies the decision order.
///
/// `sample_header`: the parsed sample-header rate, if the header was present and valid.
/// `debug`: B3 debug. `inherited`: the caller's decision, `None` when it deferred or there was
/// no valid context. `rate`: the configured rate.
pub fn decide(
    sample_header: Option<f64>,
    debug: bool,
    inherited: Option<bool>,
    trace_id: &TraceId,
    rate: f64,
) -> Decision {
    if let Some(header_rate) = sample_header {
        return Decision {
            sampled: ratio_sampled(trace_id, header_rate),
            reason: Reason::SampleHeader,
        };
    }
    if debug {
        return Decision {
            sampled: true,
            reason: Reason::Debug,
        };
    }
    if let Some(sampled) = inherited {
        return Decision {
            sampled,
            reason: Reason::Inherited,
        };
    }
    Decision {
        sampled: ratio_sampled(trace_id, rate),
        reason: Reason::Ratio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_with_low(low: u64) -> TraceId {
        let mut id = [0xee; 16];
        id[8..].copy_from_slice(&low.to_be_bytes());
        id
    }

    #[test]
    fn rate_parsing_and_clamping() {
        assert_eq!(parse_rate(b"1"), Some(1.0));
        assert_eq!(parse_rate(b"0"), Some(0.0));
        assert_eq!(parse_rate(b"0.25"), Some(0.25));
        assert_eq!(parse_rate(b" 0.5 "), Some(0.5));
        assert_eq!(parse_rate(b"1e-1"), Some(0.1));
        assert_eq!(parse_rate(b"7"), Some(1.0));
        assert_eq!(parse_rate(b"-3"), Some(0.0));
        assert_eq!(parse_rate(b"inf"), Some(1.0));
        assert_eq!(parse_rate(b"-inf"), Some(0.0));
        for bad in [&b""[..], b"NaN", b"yes", b"0.5x", b"\xff", b"1,0"] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ratio_edges() {
        assert!(!ratio_sampled(&id_with_low(0), 0.0));
        assert!(ratio_sampled(&id_with_low(u64::MAX), 1.0));
        assert!(!ratio_sampled(&id_with_low(u64::MAX), 0.999_999));
        // floor(rate * 2^64): below one id's width nothing is sampled, from 2^-64 on id 0 is.
        assert!(!ratio_sampled(&id_with_low(0), f64::MIN_POSITIVE));
        assert!(ratio_sampled(
            &id_with_low(0),
            1.0 / 18_446_744_073_709_551_616.0
        ));
        assert!(!ratio_sampled(
            &id_with_low(1),
            1.0 / 18_446_744_073_709_551_616.0
        ));
        assert!(!ratio_sampled(&id_with_low(0), f64::NAN));
        // Exactly at the threshold: 0.5 * 2^64 = 2^63.
        assert!(ratio_sampled(&id_with_low((1 << 63) - 1), 0.5));
        assert!(!ratio_sampled(&id_with_low(1 << 63), 0.5));
    }

    #[test]
    fn ratio_reads_only_the_low_64_bits() {
        let mut a = id_with_low(42);
        let b = id_with_low(42);
        a[..8].copy_from_slice(&[0x01; 8]);
        for rate in [0.0, 1e-18, 0.01, 0.5, 1.0] {
            assert_eq!(ratio_sampled(&a, rate), ratio_sampled(&b, rate));
        }
    }

    #[test]
    fn ratio_is_deterministic_monotonic_and_roughly_proportional() {
        let ids: Vec<TraceId> = (0..20_000)
            .map(|_| crate::trace::ids::new_trace_id())
            .collect();
        for &rate in &[0.01, 0.1, 0.5, 0.9] {
            let first: Vec<bool> = ids.iter().map(|id| ratio_sampled(id, rate)).collect();
            let again: Vec<bool> = ids.iter().map(|id| ratio_sampled(id, rate)).collect();
            assert_eq!(first, again);
            let hits = first.iter().filter(|s| **s).count() as f64 / ids.len() as f64;
            assert!((hits - rate).abs() < 0.02, "rate {rate} sampled {hits}");
        }
        for id in &ids {
            if ratio_sampled(id, 0.1) {
                assert!(ratio_sampled(id, 0.2));
            }
        }
    }

    #[test]
    fn decision_order() {
        let id = id_with_low(u64::MAX / 2); // sampled at 0.6, not at 0.4
                                            // 1. The sample header beats debug, inheritance and the configured rate.
        let d = decide(Some(0.0), true, Some(true), &id, 1.0);
        assert_eq!((d.sampled, d.reason), (false, Reason::SampleHeader));
        let d = decide(Some(1.0), false, Some(false), &id, 0.0);
        assert_eq!((d.sampled, d.reason), (true, Reason::SampleHeader));
        let d = decide(Some(0.6), false, Some(false), &id, 0.0);
        assert!(d.sampled);
        let d = decide(Some(0.4), false, Some(true), &id, 1.0);
        assert!(!d.sampled);
        // 2. Debug beats an inherited "no".
        let d = decide(None, true, Some(false), &id, 0.0);
        assert_eq!((d.sampled, d.reason), (true, Reason::Debug));
        // 3. Inherited beats the configured rate, both ways.
        let d = decide(None, false, Some(true), &id, 0.0);
        assert_eq!((d.sampled, d.reason), (true, Reason::Inherited));
        let d = decide(None, false, Some(false), &id, 1.0);
        assert_eq!((d.sampled, d.reason), (false, Reason::Inherited));
        // 4. Otherwise the configured ratio.
        let d = decide(None, false, None, &id, 0.6);
        assert_eq!((d.sampled, d.reason), (true, Reason::Ratio));
        let d = decide(None, false, None, &id, 0.4);
        assert_eq!((d.sampled, d.reason), (false, Reason::Ratio));
    }
}
