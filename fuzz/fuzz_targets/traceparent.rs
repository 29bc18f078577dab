//! `traceparent` (W3C Trace Context §3.2): the parser agrees with the specification's grammar,
//! written here independently, and whatever it accepts re-serialises to a valid version-00
//! `traceparent` carrying the same ids and the known flags.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshtrace_proxy::trace::propagation::{self, w3c, FLAG_SAMPLED, KNOWN_FLAGS, TRACEPARENT};

fn lower_hex(s: &[u8], len: usize) -> bool {
    s.len() == len && s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn non_zero(s: &[u8]) -> bool {
    s.iter().any(|&c| c != b'0')
}

/// The specification's text: `version "-" trace-id "-" parent-id "-" trace-flags`, all
/// lowercase hex; version `ff` invalid; version `00` is exactly that; a higher version may
/// continue after a `-`; all-zero ids invalid.
fn spec_valid(src: &[u8]) -> bool {
    let mut fields = src.splitn(5, |&c| c == b'-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let rest = fields.next();
    lower_hex(version, 2)
        && version != b"ff"
        && lower_hex(trace, 32)
        && non_zero(trace)
        && lower_hex(parent, 16)
        && non_zero(parent)
        && lower_hex(flags, 2)
        && (rest.is_none() || version != b"00")
}

fuzz_target!(|data: &[u8]| {
    let parsed = w3c::parse_traceparent(data);
    assert_eq!(
        parsed.is_some(),
        spec_valid(data),
        "{:?}",
        String::from_utf8_lossy(data)
    );
    let Some(tp) = parsed else { return };

    // Re-serialised: 55 bytes, version 00, same ids, only the flags this proxy knows.
    let mut buf = BytesMut::new();
    w3c::write_traceparent(&mut buf, &tp.trace_id, &tp.parent_id, tp.flags);
    assert_eq!(buf.len(), w3c::TRACEPARENT_LEN);
    assert!(spec_valid(&buf));
    let again = w3c::parse_traceparent(&buf).expect("re-serialised traceparent parses");
    assert_eq!(again.version, 0);
    assert_eq!(
        (again.trace_id, again.parent_id),
        (tp.trace_id, tp.parent_id)
    );
    assert_eq!(again.flags, tp.flags & KNOWN_FLAGS);
    // A version-00 value whose flags are all known comes back byte for byte.
    if data.starts_with(b"00-") && tp.flags & !KNOWN_FLAGS == 0 {
        assert_eq!(&buf[..], data);
    }

    // The request path: `traceparent` alone on a request is the authoritative context.
    let mut headers = http::HeaderMap::new();
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    headers.insert(TRACEPARENT, value);
    let extracted = propagation::extract(&headers);
    assert_eq!(extracted.format, Some(propagation::Format::TraceContext));
    let parent = extracted.parent.expect("a valid traceparent is a parent");
    assert_eq!(
        (parent.trace_id, parent.span_id),
        (tp.trace_id, tp.parent_id)
    );
    assert_eq!(extracted.sampled, Some(tp.flags & FLAG_SAMPLED != 0));
    // The same field twice is invalid (§3.2: more than one traceparent).
    headers.append(TRACEPARENT, headers[TRACEPARENT].clone());
    assert_eq!(propagation::extract(&headers).parent, None);
});
