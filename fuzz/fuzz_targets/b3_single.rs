//! The single `b3` header (B3 propagation, "Single Header"):
//! `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]` or a lone `{SamplingState}`.
//! What the parser accepts has that shape, and its ids and decision survive being written as
//! this proxy writes `b3` and read again.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meshtrace_proxy::trace::propagation::{self, b3, B3Forms, Outgoing, B3, FLAG_SAMPLED};

fn lower_hex_id(s: &[u8], lens: &[usize]) -> bool {
    lens.contains(&s.len())
        && s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        && s.iter().any(|&c| c != b'0')
}

fn state(s: &[u8]) -> bool {
    matches!(s, b"0" | b"1" | b"d" | b"true" | b"false")
}

fn spec_valid(src: &[u8]) -> bool {
    let parts: Vec<&[u8]> = src.split(|&c| c == b'-').collect();
    match parts[..] {
        [only] => state(only),
        [trace, span, ref rest @ ..] if rest.len() <= 2 => {
            lower_hex_id(trace, &[16, 32])
                && lower_hex_id(span, &[16])
                && rest.first().is_none_or(|s| state(s))
                && rest.get(1).is_none_or(|p| lower_hex_id(p, &[16]))
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = b3::parse_single(data);
    assert_eq!(
        parsed.is_some(),
        spec_valid(data),
        "{:?}",
        String::from_utf8_lossy(data)
    );
    let Some(ctx) = parsed else { return };
    if ctx.debug {
        assert_eq!(ctx.sampled, Some(true), "debug implies sampled");
    }
    // The request path agrees with the parser.
    let mut headers = http::HeaderMap::new();
    headers.insert(
        B3,
        http::HeaderValue::from_bytes(data).expect("b3 bytes are a header value"),
    );
    let extracted = propagation::extract(&headers);
    assert_eq!(extracted.format, Some(propagation::Format::B3Single));
    assert_eq!(extracted.sampled, ctx.sampled);
    assert_eq!(extracted.debug, ctx.debug);
    assert_eq!(
        extracted
            .parent
            .as_ref()
            .map(|p| (p.trace_id, p.span_id, p.trace_id_64)),
        ctx.ids
            .map(|ids| (ids.trace_id, ids.span_id, ids.trace_id_64)),
    );

    let Some(ids) = ctx.ids else { return };
    // The trace id is the first field, at the width it arrived.
    assert_eq!(
        ids.trace_id_64,
        data.iter().position(|&c| c == b'-') == Some(16)
    );
    // Written as this proxy writes it (this hop's span as the child of the caller's) and read
    // back: same trace id and width, the decision kept.
    let sampled = ctx.sampled.unwrap_or(false);
    let child = [0x42; 8];
    let out = Outgoing {
        trace_id: &ids.trace_id,
        span_id: &child,
        parent_span_id: &ids.span_id,
        flags: if sampled { FLAG_SAMPLED } else { 0 },
        debug: ctx.debug,
        trace_state: None,
        trace_id_64: ids.trace_id_64,
        tracecontext: false,
        b3: B3Forms {
            single: true,
            multi: false,
        },
    };
    let mut buf = BytesMut::new();
    b3::write_single(&mut buf, &out);
    assert!(spec_valid(&buf), "{:?}", String::from_utf8_lossy(&buf));
    let again = b3::parse_single(&buf).expect("written b3 parses");
    let again_ids = again.ids.expect("written b3 has ids");
    assert_eq!(again_ids.trace_id, ids.trace_id);
    assert_eq!(again_ids.trace_id_64, ids.trace_id_64);
    assert_eq!(again_ids.span_id, child);
    assert_eq!(again.debug, ctx.debug);
    assert_eq!(again.sampled, Some(sampled));
});
