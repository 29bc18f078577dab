//! W3C Trace Context as the specification reads today (<https://www.w3.org/TR/trace-context/>,
//! Level 1 with its current `tracestate` key grammar; the `random` flag of Level 2):
//! `traceparent` and `tracestate`.
//!
//! `traceparent`: lowercase hex only; version `ff` is invalid; a future version is parsed for
//! its first four fields (and re-emitted as `00`); version `00` with anything after the flags is
//! invalid; all-zero ids are invalid; more than one `traceparent` field is invalid.
//!
//! `tracestate`: fields are combined in order, empty members dropped. A key is
//! `( lcalpha / DIGIT ) 0*255 ( keychar )` with `keychar = lcalpha / DIGIT / "_" / "-" / "*" /
//! "/" / "@"` (no tenant/system split); a value is 1 to 256 printable ASCII characters except
//! `,` and `=`, not ending in a space. A repeated key does not invalidate the list: the later
//! entry is dropped and the rest propagates. Only a list that breaks the grammar or has more
//! than 32 members is dropped whole.

use bytes::{BufMut, BytesMut};
use http::header::{GetAll, HeaderValue};

use super::{parse_lower_hex, put_hex, KNOWN_FLAGS};
use crate::span::{SpanId, TraceId};

/// The length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;
/// The most list members a valid `tracestate` has.
pub const TRACESTATE_MAX_MEMBERS: usize = 32;

/// A valid `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    /// As received, unknown bits included (they are cleared when written).
    pub flags: u8,
}

/// Parses one `traceparent` value.
pub fn parse_traceparent(src: &[u8]) -> Option<TraceParent> {
    if src.len() < TRACEPARENT_LEN {
        return None;
    }
    let [version] = parse_lower_hex::<1>(&src[0..2])?;
    if version == 0xff {
        return None;
    }
    if version == 0 && src.len() != TRACEPARENT_LEN {
        return None;
    }
    // A future version may append fields, always after another dash.
    if src.len() > TRACEPARENT_LEN && src[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    if src[2] != b'-' || src[35] != b'-' || src[52] != b'-' {
        return None;
    }
    let trace_id = parse_lower_hex::<16>(&src[3..35])?;
    let parent_id = parse_lower_hex::<8>(&src[36..52])?;
    let [flags] = parse_lower_hex::<1>(&src[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

/// Appends `00-{trace-id}-{span-id}-{flags}`, keeping only the flag bits this proxy knows.
pub fn write_traceparent(buf: &mut BytesMut, trace_id: &TraceId, span_id: &SpanId, flags: u8) {
    buf.put_slice(b"00-");
    put_hex(buf, trace_id);
    buf.put_u8(b'-');
    put_hex(buf, span_id);
    buf.put_u8(b'-');
    put_hex(buf, &[flags & KNOWN_FLAGS]);
}

/// A `traceparent`-shaped header value (also used for `traceresponse`).
pub fn traceparent_value(trace_id: &TraceId, span_id: &SpanId, flags: u8) -> Option<HeaderValue> {
    let mut buf = BytesMut::with_capacity(TRACEPARENT_LEN);
    write_traceparent(&mut buf, trace_id, span_id, flags);
    let mut value = HeaderValue::from_maybe_shared(buf.freeze()).ok()?;
    super::never_indexed(&mut value);
    Some(value)
}

/// The request's `tracestate` given its first field and, when there are several, all
/// of them (the scan that found the first one already knows whether it repeats).
///
/// One field without empty members or repeated keys is kept byte for byte (no copy).
/// Otherwise the members are joined by `,` in order, without the empty ones and without a
/// repeated key's later entries (the leftmost entry is a vendor's latest position). `None` when
/// absent, empty, over [`TRACESTATE_MAX_MEMBERS`] members or breaking the grammar.
pub(crate) fn tracestate_of(
    first: &HeaderValue,
    all: Option<GetAll<'_, HeaderValue>>,
) -> Option<HeaderValue> {
    let fields = || {
        all.as_ref()
            .map(GetAll::iter)
            .into_iter()
            .flatten()
            .chain(all.is_none().then_some(first))
    };
    let mut members = 0usize;
    let mut rewrite = all.is_some();
    let mut keys: [&[u8]; TRACESTATE_MAX_MEMBERS] = [&[]; TRACESTATE_MAX_MEMBERS];
    for field in fields() {
        for member in field.as_bytes().split(|&c| c == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                rewrite = true;
                continue;
            }
            let key = parse_member(member)?;
            if members == TRACESTATE_MAX_MEMBERS {
                return None;
            }
            // A repeated key does not invalidate the list: its later entry is dropped.
            rewrite |= keys[..members].contains(&key);
            keys[members] = key;
            members += 1;
        }
    }
    if members == 0 {
        return None;
    }
    if !rewrite {
        return Some(first.clone());
    }
    let mut joined = BytesMut::new();
    let mut kept = 0usize;
    for (index, member) in fields()
        .flat_map(|field| field.as_bytes().split(|&c| c == b','))
        .map(trim_ows)
        .filter(|member| !member.is_empty())
        .enumerate()
    {
        if keys[..kept].contains(&keys[index]) {
            continue;
        }
        keys[kept] = keys[index];
        kept += 1;
        if !joined.is_empty() {
            joined.put_u8(b',');
        }
        joined.put_slice(member);
    }
    HeaderValue::from_maybe_shared(joined.freeze()).ok()
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Validates `key=value`; returns the key.
fn parse_member(member: &[u8]) -> Option<&[u8]> {
    let eq = member.iter().position(|&c| c == b'=')?;
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    (valid_key(key) && valid_value(value)).then_some(key)
}

/// `keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"`.
fn key_char(c: u8) -> bool {
    matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@')
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`: 1 to 256 characters; `@` may appear anywhere
/// after the first one, any number of times.
fn valid_key(key: &[u8]) -> bool {
    match key.split_first() {
        Some((&first, rest)) => {
            rest.len() <= 255
                && (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.iter().all(|&c| key_char(c))
        }
        None => false,
    }
}

/// `0*255(chr) nblk-chr`: printable ASCII except `,` and `=`, not ending in a space.
fn valid_value(value: &[u8]) -> bool {
    let nblk = |c: u8| matches!(c, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    match value.split_last() {
        Some((&last, init)) => {
            value.len() <= 256 && nblk(last) && init.iter().all(|&c| c == b' ' || nblk(c))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{header_map as map, single_value, to_hex};
    use super::*;
    use http::header::HeaderMap;

    use super::super::{TRACEPARENT, TRACESTATE};

    /// Reads the request's `traceparent`; `None` when missing, repeated or invalid.
    fn extract(headers: &HeaderMap) -> Option<TraceParent> {
        let value = single_value(headers, &TRACEPARENT).ok()??;
        parse_traceparent(value.as_bytes())
    }

    /// Reads the request's `tracestate` (call only when its `traceparent` was valid).
    ///
    /// One field without empty members is kept byte for byte (no copy); several fields or empty
    /// members are rewritten as the members joined by `,`. `None` when absent, empty or invalid.
    fn extract_tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
        let mut fields = headers.get_all(TRACESTATE).iter();
        let first = fields.next()?;
        let repeated = fields.next().is_some();
        tracestate_of(first, repeated.then(|| headers.get_all(TRACESTATE)))
    }

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const SPAN: &str = "b7ad6b7169203331";

    fn tp(version: &str, trace: &str, span: &str, flags: &str) -> String {
        format!("{version}-{trace}-{span}-{flags}")
    }

    fn parse(s: &str) -> Option<TraceParent> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn valid_version_00() {
        let got = parse(&tp("00", TRACE, SPAN, "01")).unwrap();
        assert_eq!(got.version, 0);
        assert_eq!(to_hex(&got.trace_id), TRACE);
        assert_eq!(to_hex(&got.parent_id), SPAN);
        assert_eq!(got.flags, 1);
        assert_eq!(parse(&tp("00", TRACE, SPAN, "00")).unwrap().flags, 0);
        assert_eq!(parse(&tp("00", TRACE, SPAN, "03")).unwrap().flags, 3);
    }

    #[test]
    fn unknown_flags_are_accepted_and_kept_until_written() {
        assert_eq!(parse(&tp("00", TRACE, SPAN, "ff")).unwrap().flags, 0xff);
        let mut buf = BytesMut::new();
        write_traceparent(&mut buf, &[1; 16], &[2; 8], 0xfd);
        assert!(buf.ends_with(b"-01"));
    }

    #[test]
    fn uppercase_hex_is_invalid_everywhere() {
        assert!(parse(&tp("00", &TRACE.to_uppercase(), SPAN, "01")).is_none());
        assert!(parse(&tp("00", TRACE, &SPAN.to_uppercase(), "01")).is_none());
        assert!(parse(&tp("00", TRACE, SPAN, "0A")).is_none());
        assert!(parse(&tp("0A", TRACE, SPAN, "01")).is_none());
    }

    #[test]
    fn version_ff_is_invalid() {
        assert!(parse(&tp("ff", TRACE, SPAN, "01")).is_none());
    }

    #[test]
    fn version_00_with_extra_content_is_invalid() {
        assert!(parse(&format!("{}-extra", tp("00", TRACE, SPAN, "01"))).is_none());
        assert!(parse(&format!("{}-", tp("00", TRACE, SPAN, "01"))).is_none());
        assert!(parse(&format!("{}0", tp("00", TRACE, SPAN, "01"))).is_none());
    }

    #[test]
    fn future_versions_parse_their_first_four_fields() {
        let got = parse(&format!("{}-what-ever", tp("cc", TRACE, SPAN, "01"))).unwrap();
        assert_eq!(got.version, 0xcc);
        assert_eq!(got.flags, 1);
        assert!(parse(&tp("01", TRACE, SPAN, "00")).is_some());
        // Extra content must start with a dash.
        assert!(parse(&format!("{}x", tp("cc", TRACE, SPAN, "01"))).is_none());
        // Still lowercase-hex, non-zero, well-delimited.
        assert!(parse(&tp("cc", &"0".repeat(32), SPAN, "01")).is_none());
        // Re-emitted as version 00.
        let mut buf = BytesMut::new();
        write_traceparent(&mut buf, &got.trace_id, &got.parent_id, got.flags);
        assert_eq!(&buf[..], tp("00", TRACE, SPAN, "01").as_bytes());
    }

    #[test]
    fn zero_ids_are_invalid() {
        assert!(parse(&tp("00", &"0".repeat(32), SPAN, "01")).is_none());
        assert!(parse(&tp("00", TRACE, &"0".repeat(16), "01")).is_none());
    }

    #[test]
    fn malformed_shapes_are_invalid() {
        for bad in [
            String::new(),
            "00".into(),
            tp("00", &TRACE[1..], SPAN, "01"),
            tp("00", TRACE, &SPAN[1..], "01"),
            tp("00", TRACE, SPAN, "1"),
            tp("0", TRACE, SPAN, "01"),
            format!("00_{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}_{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}_01"),
            format!("00-{}g-{SPAN}-01", &TRACE[1..]),
            format!(" 00-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-0x"),
        ] {
            assert!(parse(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn more_than_one_traceparent_is_invalid() {
        let good = tp("00", TRACE, SPAN, "01");
        assert!(extract(&map(&[("traceparent", &good)])).is_some());
        assert!(extract(&map(&[("traceparent", &good), ("traceparent", &good)])).is_none());
    }

    fn state(fields: &[&str]) -> Option<String> {
        let pairs: Vec<_> = fields.iter().map(|f| ("tracestate", *f)).collect();
        extract_tracestate(&map(&pairs)).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn tracestate_single_field_kept_as_received() {
        assert_eq!(
            state(&["congo=t61rcWkgMzE"]).as_deref(),
            Some("congo=t61rcWkgMzE")
        );
        assert_eq!(
            state(&["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE")
        );
        assert_eq!(
            state(&["tenant1@vendor=v", "a=b c"]).as_deref(),
            Some("tenant1@vendor=v,a=b c")
        );
        // Kept without a copy: the same bytes.
        let first = HeaderValue::from_static("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
        let kept = tracestate_of(&first, None).unwrap();
        assert_eq!(kept.as_bytes().as_ptr(), first.as_bytes().as_ptr());
    }

    #[test]
    fn tracestate_fields_combined_in_order_empty_members_dropped() {
        assert_eq!(state(&["a=1", "b=2"]).as_deref(), Some("a=1,b=2"));
        assert_eq!(state(&["a=1,,  ,b=2", ""]).as_deref(), Some("a=1,b=2"));
        assert_eq!(state(&[" , "]), None);
        assert_eq!(state(&[]), None);
    }

    #[test]
    fn tracestate_grammar_violations_drop_it() {
        for bad in [
            "A=1",        // uppercase key
            "_a=1",       // key starts with neither lcalpha nor DIGIT
            "@a=1",       // nor with '@'
            "a",          // no '='
            "=1",         // empty key
            "a=",         // empty value
            "a=x=y",      // '=' in value
            "a=x\ty",     // tab in value
            "a=x\u{e9}y", // non-ASCII in value
            "a@B=1",      // uppercase after '@'
            "a.b=1",      // '.' is no keychar
            "a b=1",      // space in key
        ] {
            assert_eq!(state(&[bad]), None, "{bad:?}");
        }
        // Whitespace around a member is list OWS, not part of the value.
        assert_eq!(state(&["a=1 \t"]).as_deref(), Some("a=1 \t"));
        // One bad member drops the whole list, even across fields.
        assert_eq!(state(&["a=1", "B=2"]), None);
    }

    #[test]
    fn tracestate_keys_take_at_signs_anywhere_after_the_first_character() {
        let key256 = format!("{}@{}", "t".repeat(200), "v".repeat(55));
        for good in [
            "foo@=1",
            "foo@@bar=1",
            "foo@bar@baz=1",
            "0@a=1",
            "a@0b=1", // a digit after '@'
            "a@_=1",
            "1a=1", // a key may start with a digit
            "a_-*/@9=1",
            &format!("{key256}=1"),
        ] {
            assert_eq!(state(&[good]).as_deref(), Some(good), "{good:?}");
        }
    }

    #[test]
    fn tracestate_key_and_value_lengths() {
        // A key is at most 256 characters, '@' or not; no tenant/system length of its own.
        let key256 = format!("a{}", "b".repeat(255));
        assert!(state(&[&format!("{key256}=1")]).is_some());
        assert!(state(&[&format!("{key256}b=1")]).is_none());
        let tenant250 = format!("0{}@{}", "t".repeat(249), "s".repeat(5));
        assert_eq!(tenant250.len(), 256);
        assert!(state(&[&format!("{tenant250}=1")]).is_some());
        assert!(state(&[&format!("{tenant250}s=1")]).is_none());
        let system200 = format!("t@{}", "s".repeat(200));
        assert!(state(&[&format!("{system200}=1")]).is_some());
        let value256 = "v".repeat(256);
        assert!(state(&[&format!("a={value256}")]).is_some());
        assert!(state(&[&format!("a={value256}v")]).is_none());
        // Leading spaces belong to the value.
        assert!(state(&[&format!("a= {}", "v".repeat(255))]).is_some());
        assert!(state(&[&format!("a= {value256}")]).is_none());
    }

    #[test]
    fn tracestate_repeated_keys_keep_the_list_and_drop_the_later_entry() {
        assert_eq!(state(&["foo=1,foo=1"]).as_deref(), Some("foo=1"));
        assert_eq!(state(&["foo=1,foo=2"]).as_deref(), Some("foo=1"));
        assert_eq!(
            state(&["a=1,foo=1,b=2,foo=2,c=3"]).as_deref(),
            Some("a=1,foo=1,b=2,c=3")
        );
        // The same key in two header lines.
        assert_eq!(
            state(&["foo=1,bar=2", "foo=3"]).as_deref(),
            Some("foo=1,bar=2")
        );
        assert_eq!(state(&["foo=1", "foo=1"]).as_deref(), Some("foo=1"));
        // A repeated key with a grammar error elsewhere still drops the list.
        assert_eq!(state(&["foo=1,foo=2,B=3"]), None);
    }

    #[test]
    fn tracestate_member_limit_is_32() {
        let members: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert!(state(&[&members.join(",")]).is_some());
        // Spread over fields, with empty members that do not count.
        let (a, b) = members.split_at(10);
        assert!(state(&[&a.join(","), "", &format!(",{}", b.join(","))]).is_some());
        let mut over = members.clone();
        over.push("k32=v".into());
        assert!(state(&[&over.join(",")]).is_none());
        // A repeated key is still a member of the list received.
        over.pop();
        over.push("k0=again".into());
        assert!(state(&[&over.join(",")]).is_none());
    }

    #[test]
    fn traceresponse_value_shape() {
        let v = traceparent_value(&[0xab; 16], &[0xcd; 8], 0x01).unwrap();
        assert_eq!(
            v,
            format!("00-{}-{}-01", "ab".repeat(16), "cd".repeat(8)).as_str()
        );
        assert!(
            v.is_sensitive(),
            "a per-request value is never HPACK-indexed"
        );
    }
}
