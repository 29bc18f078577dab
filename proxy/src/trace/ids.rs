//! Trace and span id generation.
//!
//! Ids only need to be unique and uniformly random (the ratio sampler reads the low 64 bits of
//! the trace id), not unpredictable, so a fast non-cryptographic generator per thread is used:
//! no lock is ever shared between connections.

use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::span::{SpanId, TraceId};

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(seeded_rng());
}

fn seeded_rng() -> SmallRng {
    SmallRng::try_from_os_rng().unwrap_or_else(|_| {
        // No OS entropy: fall back to time and thread identity, still unique per thread.
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        std::thread::current().id().hash(&mut hasher);
        std::time::SystemTime::now().hash(&mut hasher);
        SmallRng::seed_from_u64(hasher.finish())
    })
}

fn next_nonzero_u64() -> u64 {
    RNG.with(|rng| {
        let mut rng = rng.borrow_mut();
        loop {
            let value = rng.next_u64();
            if value != 0 {
                return value;
            }
        }
    })
}

/// A new random 128-bit trace id; never all zero (both halves are non-zero).
pub fn new_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&next_nonzero_u64().to_be_bytes());
    id[8..].copy_from_slice(&next_nonzero_u64().to_be_bytes());
    id
}

/// Length of a request id made by [`new_request_id`].
pub const REQUEST_ID_LEN: usize = 36;

/// A new random request id: a UUID (version 4) in its hyphenated lowercase text form, as
/// Envoy, nginx and most frameworks make them. Formatted on the stack.
pub fn new_request_id() -> [u8; REQUEST_ID_LEN] {
    let mut random = [0u8; 16];
    random[..8].copy_from_slice(&next_nonzero_u64().to_be_bytes());
    random[8..].copy_from_slice(&next_nonzero_u64().to_be_bytes());
    let uuid = uuid::Builder::from_random_bytes(random).into_uuid();
    let mut text = [0u8; REQUEST_ID_LEN];
    uuid.hyphenated().encode_lower(&mut text);
    text
}

/// A new random 64-bit span id; never all zero.
pub fn new_span_id() -> SpanId {
    next_nonzero_u64().to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_nonzero_and_distinct() {
        let mut spans = HashSet::new();
        let mut traces = HashSet::new();
        for _ in 0..10_000 {
            let span = new_span_id();
            let trace = new_trace_id();
            assert_ne!(span, [0; 8]);
            assert_ne!(trace, [0; 16]);
            assert_ne!(trace[8..], [0; 8]);
            spans.insert(span);
            traces.insert(trace);
        }
        assert_eq!(spans.len(), 10_000);
        assert_eq!(traces.len(), 10_000);
    }

    #[test]
    fn request_ids_are_distinct_version_4_uuids() {
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let id = new_request_id();
            let text = std::str::from_utf8(&id).unwrap();
            let parsed = uuid::Uuid::parse_str(text).unwrap();
            assert_eq!(parsed.get_version_num(), 4, "{text}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{text}");
            assert_eq!(text, parsed.hyphenated().to_string());
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn threads_get_different_sequences() {
        let a = std::thread::spawn(new_span_id).join().unwrap();
        let b = std::thread::spawn(new_span_id).join().unwrap();
        assert_ne!(a, b);
    }
}
