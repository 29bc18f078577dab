//! A request's propagation headers as a whole (`traceparent`, `tracestate`, `b3`, `x-b3-*`, in
//! any number, order and validity). The one-pass reader the proxy uses agrees with the
//! per-format readers and the precedence W3C, then B3 single, then B3 multi; the `x-b3-*`
//! context has the ids of its headers; and writing the context onward replaces every
//! propagation header with one value each that reads back as the same trace.
//!
//! Input: the first byte chooses what is written onward; each following line is one header,
//! its first byte choosing the name and the rest being the value.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meshtrace_proxy::trace::propagation::{
    self, b3, to_hex, w3c, B3Forms, Extracted, Format, Outgoing, B3, FLAG_RANDOM, FLAG_SAMPLED,
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

/// The precedence of the propagation module's documentation, from the per-format readers.
fn expected(headers: &HeaderMap) -> Extracted {
    let b3_arrived = b3::arrived(headers);
    if let Some(tp) = w3c::extract(headers) {
        return Extracted {
            format: Some(Format::TraceContext),
            sampled: Some(tp.flags & FLAG_SAMPLED != 0),
            debug: false,
            b3_arrived,
            parent: None,
        };
    }
    let single = b3_arrived
        .single
        .then(|| b3::extract_single(headers))
        .flatten();
    let (format, ctx) = match single {
        Some(ctx) => (Format::B3Single, ctx),
        None => match b3::extract_multi(headers) {
            Some(ctx) => (Format::B3Multi, ctx),
            None => {
                return Extracted {
                    b3_arrived,
                    ..Extracted::default()
                }
            }
        },
    };
    Extracted {
        format: Some(format),
        sampled: ctx.sampled,
        debug: ctx.debug,
        b3_arrived,
        parent: None,
    }
}

fn check_extracted(headers: &HeaderMap, got: &Extracted) {
    let want = expected(headers);
    assert_eq!(
        (got.format, got.sampled, got.debug, got.b3_arrived),
        (want.format, want.sampled, want.debug, want.b3_arrived)
    );
    if got.debug {
        assert_eq!(got.sampled, Some(true), "B3 debug implies sampled");
    }
    let Some(parent) = &got.parent else {
        assert!(got.format != Some(Format::TraceContext));
        return;
    };
    match got.format {
        Some(Format::TraceContext) => {
            let tp = w3c::extract(headers).expect("W3C format needs a valid traceparent");
            assert_eq!(
                (parent.trace_id, parent.span_id),
                (tp.trace_id, tp.parent_id)
            );
            assert_eq!(parent.random, tp.flags & FLAG_RANDOM != 0);
            assert_eq!(parent.trace_state, w3c::extract_tracestate(headers));
        }
        Some(Format::B3Multi) => {
            // The ids are those of the one x-b3-traceid and x-b3-spanid on the request.
            let trace = headers.get_all(X_B3_TRACEID).iter().collect::<Vec<_>>();
            let span = headers.get_all(X_B3_SPANID).iter().collect::<Vec<_>>();
            assert_eq!((trace.len(), span.len()), (1, 1));
            let trace_hex = to_hex(&parent.trace_id);
            let written = if parent.trace_id_64 {
                &trace_hex[16..]
            } else {
                &trace_hex[..]
            };
            assert_eq!(trace[0].as_bytes(), written.as_bytes());
            assert_eq!(span[0].as_bytes(), to_hex(&parent.span_id).as_bytes());
            assert!(parent.trace_state.is_none());
        }
        Some(Format::B3Single) => {
            let ctx = b3::extract_single(headers).expect("B3 single format needs a valid b3");
            let ids = ctx.ids.expect("a parent from b3 has ids");
            assert_eq!(
                (parent.trace_id, parent.span_id),
                (ids.trace_id, ids.span_id)
            );
        }
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
