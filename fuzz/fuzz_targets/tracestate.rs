//! `tracestate` (W3C Trace Context §3.3): each input line is one `tracestate` field of a request
//! that has a valid `traceparent`.
//! Whatever the parser keeps is a list of at most 32 members, each valid by the current
//! grammar (written here from the specification's ABNF), taken in order from the input's
//! members; it reads back as itself; and a list with a member that breaks the grammar is
//! dropped whole.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meshtrace_proxy::trace::propagation::{self, w3c, TRACEPARENT, TRACESTATE};

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// The list's non-empty members, OWS around them removed (§3.3.1.1).
fn members<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    fields
        .into_iter()
        .flat_map(|field| field.split(|&c| c == b','))
        .map(trim_ows)
        .filter(|m| !m.is_empty())
        .collect()
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`,
/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"`.
fn spec_key(key: &[u8]) -> bool {
    let keychar =
        |c: &u8| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@');
    matches!(key.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && key.len() <= 256
        && key.iter().all(keychar)
}

/// `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`, `chr = %x20 / nblk-chr`.
fn spec_value(value: &[u8]) -> bool {
    let nblk = |c: u8| matches!(c, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    matches!(value.last(), Some(&c) if nblk(c))
        && value.len() <= 256
        && value.iter().all(|&c| c == b' ' || nblk(c))
}

fn spec_member(member: &[u8]) -> bool {
    match member.iter().position(|&c| c == b'=') {
        Some(eq) => spec_key(&member[..eq]) && spec_value(&member[eq + 1..]),
        None => false,
    }
}

/// The `tracestate` the proxy keeps for a request with these fields.
fn kept_of(headers: &HeaderMap) -> Option<HeaderValue> {
    propagation::extract(headers)
        .parent
        .expect("valid traceparent")
        .trace_state
}

fn headers_of(fields: &[&[u8]]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    for field in fields {
        if let Ok(value) = HeaderValue::from_bytes(field) {
            headers.append(TRACESTATE, value);
        }
    }
    headers
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&c| c == b'\n').collect();
    let headers = headers_of(&lines);
    let input: Vec<&[u8]> = headers
        .get_all(TRACESTATE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let input_members = members(input.iter().copied());
    let kept = kept_of(&headers);

    // A member outside the grammar (the current one, which accepts more keys than the
    // earlier tenant@system rules) invalidates the whole list.
    if !input_members.iter().all(|m| spec_member(m)) {
        assert_eq!(kept, None, "{input_members:?}");
    }
    let Some(kept) = kept else { return };
    let out = members([kept.as_bytes()]);
    assert!(
        !out.is_empty() && out.len() <= w3c::TRACESTATE_MAX_MEMBERS,
        "{out:?}"
    );
    assert!(out.iter().all(|m| spec_member(m)), "{out:?}");
    // Only the input's members, in their order (duplicates may be dropped, nothing is added).
    let mut rest = input_members.iter();
    for member in &out {
        assert!(
            rest.any(|m| m == member),
            "{member:?} not from {input_members:?} in order"
        );
    }
    // Read again, the value is kept as it is.
    let again = kept_of(&headers_of(&[kept.as_bytes()]));
    assert_eq!(again.as_ref(), Some(&kept));
});
