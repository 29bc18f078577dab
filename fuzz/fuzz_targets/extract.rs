//! A request's propagation headers as a whole (`traceparent`, `tracestate`, `b3`, `x-b3-*`, in
//! any number, order and validity). The one-pass reader the proxy uses agrees with the
//! rules and precedence of the module's documentation (W3C, then B3 single, then B3 multi),
//! written here again from the pure parsers; the `x-b3-*`
//! context has the ids of its headers; and writing the context onward replaces every
//! propagation header with one value each that reads back as the same trace.
//!
//! Input: the first byte chooses what is written onward; each following line is one header,
//! its first byte choosing the name and the rest being the value.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meshtrace_proxy::span::{SpanId, TraceId};
use meshtrace_proxy::trace::propagation::{
    self, b3, w3c, B3Forms, Extracted, Format, Outgoing, B3, FLAG_RANDOM, FLAG_SAMPLED,
    TRACEPARENT, TRACESTATE, X_B3_FLAGS, X_B3_PARENTSPANID, X_B3_SAMPLED, X_B3_SPANID,
    X_B3_TRACEID,
};

const NAMES: [&str; 10] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "l5d-sample",
    "x-request-id",
];

fn headers_of(lines: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines.split(|&c| c == b'\n') {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        headers.append(
            HeaderName::from_static(NAMES[usize::from(which) % NAMES.len()]),
            value,
        );
    }
    headers
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The only value of a header that must not repeat; `Err` when it repeats.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a [u8]>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first.map(HeaderValue::as_bytes)),
        _ => Err(()),
    }
}

/// The `x-b3-*` rules of the B3 module's documentation, written here again: each header at most
/// once; trace and span id together or not at all; a parent only with them; `x-b3-sampled` is
/// `1`/`0`/`true`/`false`; `x-b3-flags: 1` is debug (and sampled); something must be said.
/// Ids are validated by the `b3` parser (`{trace}-{span}[-0-{parent}]`).
fn multi(headers: &HeaderMap) -> Option<b3::B3Context> {
    let trace = single(headers, &X_B3_TRACEID).ok()?;
    let span = single(headers, &X_B3_SPANID).ok()?;
    let parent = single(headers, &X_B3_PARENTSPANID).ok()?;
    let sampled = single(headers, &X_B3_SAMPLED).ok()?;
    let flags = single(headers, &X_B3_FLAGS).ok()?;
    let ids = match (trace, span) {
        (Some(trace), Some(span)) => {
            let mut joined = [trace, b"-", span].concat();
            if let Some(parent) = parent {
                joined.extend_from_slice(b"-0-");
                joined.extend_from_slice(parent);
            }
            if joined.iter().filter(|&&c| c == b'-').count()
                != 1 + 2 * usize::from(parent.is_some())
            {
                return None;
            }
            Some(b3::parse_single(&joined)?.ids?)
        }
        (None, None) if parent.is_none() => None,
        _ => return None,
    };
    let sampled = match sampled {
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        Some(_) => return None,
        None => None,
    };
    let debug = flags == Some(b"1");
    if ids.is_none() && sampled.is_none() && !debug {
        return None;
    }
    Some(b3::B3Context {
        ids,
        sampled: if debug { Some(true) } else { sampled },
        debug,
    })
}

/// The precedence of the propagation module's documentation: the first valid of W3C, B3
/// single, B3 multi.
fn expected(
    headers: &HeaderMap,
) -> (
    Option<Format>,
    Option<(TraceId, SpanId)>,
    Option<bool>,
    bool,
) {
    if let Some(tp) = single(headers, &TRACEPARENT)
        .ok()
        .flatten()
        .and_then(w3c::parse_traceparent)
    {
        let ids = Some((tp.trace_id, tp.parent_id));
        return (
            Some(Format::TraceContext),
            ids,
            Some(tp.flags & FLAG_SAMPLED != 0),
            false,
        );
    }
    let found = match single(headers, &B3)
        .ok()
        .flatten()
        .and_then(b3::parse_single)
    {
        Some(ctx) => Some((Format::B3Single, ctx)),
        None => multi(headers).map(|ctx| (Format::B3Multi, ctx)),
    };
    match found {
        Some((format, ctx)) => {
            let ids = ctx.ids.map(|ids| (ids.trace_id, ids.span_id));
            (Some(format), ids, ctx.sampled, ctx.debug)
        }
        None => (None, None, None, false),
    }
}

fn check_extracted(headers: &HeaderMap, got: &Extracted) {
    let parent_ids = got.parent.as_ref().map(|p| (p.trace_id, p.span_id));
    assert_eq!(
        (got.format, parent_ids, got.sampled, got.debug),
        expected(headers)
    );
    let has = |names: &[HeaderName]| names.iter().any(|n| headers.contains_key(n));
    let arrived = B3Forms {
        single: has(&[B3]),
        multi: has(&[
            X_B3_TRACEID,
            X_B3_SPANID,
            X_B3_PARENTSPANID,
            X_B3_SAMPLED,
            X_B3_FLAGS,
        ]),
    };
    assert_eq!(got.b3_arrived, arrived);
    if got.debug {
        assert_eq!(got.sampled, Some(true), "B3 debug implies sampled");
    }
    let Some(parent) = &got.parent else { return };
    match got.format {
        Some(Format::TraceContext) => {
            let tp = w3c::parse_traceparent(headers[TRACEPARENT].as_bytes()).expect("valid");
            assert_eq!(parent.random, tp.flags & FLAG_RANDOM != 0);
            // tracestate: only members of the request's fields, at most 32 (tracestate target
            // checks the grammar).
            if let Some(state) = &parent.trace_state {
                let fields: Vec<&[u8]> = headers
                    .get_all(TRACESTATE)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect();
                let members = state
                    .as_bytes()
                    .split(|&c| c == b',')
                    .filter(|m| !m.is_empty())
                    .count();
                assert!((1..=w3c::TRACESTATE_MAX_MEMBERS).contains(&members));
                for member in state
                    .as_bytes()
                    .split(|&c| c == b',')
                    .filter(|m| !m.is_empty())
                {
                    assert!(fields
                        .iter()
                        .any(|f| f.windows(member.len()).any(|w| w == member)));
                }
            } else {
                assert!(parent.trace_state.is_none());
            }
        }
        Some(Format::B3Multi) => {
            // The ids are written in the one x-b3-traceid and x-b3-spanid of the request.
            let trace_hex = to_hex(&parent.trace_id);
            let written = if parent.trace_id_64 {
                &trace_hex[16..]
            } else {
                &trace_hex[..]
            };
            assert_eq!(headers[X_B3_TRACEID].as_bytes(), written.as_bytes());
            assert_eq!(
                headers[X_B3_SPANID].as_bytes(),
                to_hex(&parent.span_id).as_bytes()
            );
            assert!(parent.trace_state.is_none());
        }
        Some(Format::B3Single) => assert!(parent.trace_state.is_none()),
        None => panic!("a parent without a format"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, lines)) = data.split_first() else {
        return;
    };
    let mut headers = headers_of(lines);
    let got = propagation::extract(&headers);
    check_extracted(&headers, &got);

    // Write the context onward as this proxy does, over the headers that came in.
    let fresh_trace = [0x5a; 16];
    let (trace_id, parent_span, trace_state, trace_id_64) = match &got.parent {
        Some(p) => (p.trace_id, p.span_id, p.trace_state.clone(), p.trace_id_64),
        None => (fresh_trace, [0x11; 8], None, false),
    };
    let sampled = got.sampled.unwrap_or(choice & 0x08 != 0);
    let child = [0x22; 8];
    let out = Outgoing {
        trace_id: &trace_id,
        span_id: &child,
        parent_span_id: &parent_span,
        flags: if sampled { FLAG_SAMPLED } else { 0 } | (choice & 0xf0),
        debug: got.debug,
        trace_state: trace_state.as_ref(),
        trace_id_64,
        tracecontext: choice & 0x01 != 0,
        b3: B3Forms {
            single: choice & 0x02 != 0,
            multi: choice & 0x04 != 0,
        },
    };
    let other = headers.get_all("x-request-id").iter().count();
    propagation::inject(&mut headers, &out);

    // Exactly the headers written, once each; nothing else touched.
    let count = |name| headers.get_all(name).iter().count();
    assert_eq!(count(TRACEPARENT), usize::from(out.tracecontext));
    assert_eq!(
        count(TRACESTATE),
        usize::from(out.tracecontext && trace_state.is_some())
    );
    assert_eq!(count(B3), usize::from(out.b3.single));
    for name in [X_B3_TRACEID, X_B3_SPANID, X_B3_PARENTSPANID] {
        assert_eq!(count(name), usize::from(out.b3.multi));
    }
    assert_eq!(count(X_B3_SAMPLED), usize::from(out.b3.multi && !out.debug));
    assert_eq!(count(X_B3_FLAGS), usize::from(out.b3.multi && out.debug));
    assert_eq!(headers.get_all("x-request-id").iter().count(), other);

    // Read again: the same trace, this hop's span as the parent, the same decision.
    let again = propagation::extract(&headers);
    check_extracted(&headers, &again);
    if !(out.tracecontext || out.b3.any()) {
        assert_eq!(again.format, None);
        return;
    }
    let parent = again.parent.expect("written context has ids");
    assert_eq!(parent.trace_id, trace_id);
    assert_eq!(parent.span_id, child);
    assert_eq!(again.sampled, Some(sampled || out.debug));
    if out.tracecontext {
        assert_eq!(again.format, Some(Format::TraceContext));
        assert_eq!(parent.trace_state, trace_state);
    } else {
        assert_eq!(again.debug, out.debug);
    }
});
