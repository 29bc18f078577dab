//! Zipkin B3 propagation: the single `b3` header and the `x-b3-*` headers.
//!
//! Trace ids are 64 or 128 bits (a 64-bit id is left-padded to 128 for W3C and kept at 64 in
//! B3 output); span ids are 64 bits; lowercase hex only; all-zero ids are invalid. Sampling
//! state is `1`/`0`/`true`/`false`, `d` (debug, single header) or absent (defer); the multi
//! form signals debug with `x-b3-flags: 1`. A header carrying only a sampling state is valid:
//! the decision is taken, the trace starts here.

use bytes::{BufMut, BytesMut};
use http::header::HeaderValue;

use super::{parse_lower_hex, put_hex, Outgoing};
use crate::span::{SpanId, TraceId};

/// Ids carried by a B3 context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct B3Ids {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub trace_id_64: bool,
}

/// A valid B3 context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct B3Context {
    /// `None`: sampling state only.
    pub ids: Option<B3Ids>,
    pub sampled: Option<bool>,
    pub debug: bool,
}

/// Parses `{trace}-{span}[-{state}[-{parent}]]` or a lone `{state}`.
pub fn parse_single(src: &[u8]) -> Option<B3Context> {
    let mut parts = src.split(|&c| c == b'-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        // Sampling state only.
        let (sampled, debug) = parse_state(first, true)?;
        return Some(B3Context {
            ids: None,
            sampled,
            debug,
        });
    };
    let (trace_id, trace_id_64) = parse_trace_id(first)?;
    let span_id = parse_span_id(span)?;
    let (sampled, debug) = match parts.next() {
        Some(state) => parse_state(state, true)?,
        None => (None, false),
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3Context {
        ids: Some(B3Ids {
            trace_id,
            span_id,
            trace_id_64,
        }),
        sampled,
        debug,
    })
}

/// The `x-b3-*` header values of a request: `Err` for a header that repeats.
pub(crate) struct MultiValues<'a> {
    pub trace: Result<Option<&'a HeaderValue>, ()>,
    pub span: Result<Option<&'a HeaderValue>, ()>,
    pub parent: Result<Option<&'a HeaderValue>, ()>,
    pub sampled: Result<Option<&'a HeaderValue>, ()>,
    pub flags: Result<Option<&'a HeaderValue>, ()>,
}

/// [`extract_multi`] from the values already found.
pub(crate) fn multi_of(values: &MultiValues<'_>) -> Option<B3Context> {
    fn bytes(value: Result<Option<&HeaderValue>, ()>) -> Option<Option<&[u8]>> {
        value.ok().map(|v| v.map(HeaderValue::as_bytes))
    }
    let trace = bytes(values.trace)?;
    let span = bytes(values.span)?;
    let parent = bytes(values.parent)?;
    let sampled = bytes(values.sampled)?;
    let flags = bytes(values.flags)?;
    let ids = match (trace, span) {
        (Some(trace), Some(span)) => {
            let (trace_id, trace_id_64) = parse_trace_id(trace)?;
            Some(B3Ids {
                trace_id,
                span_id: parse_span_id(span)?,
                trace_id_64,
            })
        }
        (None, None) => None,
        _ => return None,
    };
    if let Some(parent) = parent {
        ids?;
        parse_span_id(parent)?;
    }
    let (sampled, _) = match sampled {
        Some(state) => parse_state(state, false)?,
        None => (None, false),
    };
    let debug = flags == Some(b"1");
    if ids.is_none() && sampled.is_none() && !debug {
        return None;
    }
    Some(B3Context {
        ids,
        sampled: if debug { Some(true) } else { sampled },
        debug,
    })
}

/// `(sampled, debug)`; `d` only in the single header.
fn parse_state(src: &[u8], allow_debug: bool) -> Option<(Option<bool>, bool)> {
    match src {
        b"1" | b"true" => Some((Some(true), false)),
        b"0" | b"false" => Some((Some(false), false)),
        b"d" if allow_debug => Some((Some(true), true)),
        _ => None,
    }
}

fn parse_trace_id(src: &[u8]) -> Option<(TraceId, bool)> {
    let (id, is_64) = match src.len() {
        16 => {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&parse_lower_hex::<8>(src)?);
            (id, true)
        }
        32 => (parse_lower_hex::<16>(src)?, false),
        _ => return None,
    };
    (id != [0; 16]).then_some((id, is_64))
}

fn parse_span_id(src: &[u8]) -> Option<SpanId> {
    parse_lower_hex::<8>(src).filter(|id| *id != [0; 8])
}

/// Appends the trace id: 16 hex characters for a 64-bit B3 trace, else 32.
pub fn write_trace_id(buf: &mut BytesMut, trace_id: &TraceId, trace_id_64: bool) {
    if trace_id_64 && trace_id[..8] == [0; 8] {
        put_hex(buf, &trace_id[8..]);
    } else {
        put_hex(buf, trace_id);
    }
}

/// Appends `{trace}-{span}-{1|0|d}-{parent}`.
pub fn write_single(buf: &mut BytesMut, out: &Outgoing<'_>) {
    write_trace_id(buf, out.trace_id, out.trace_id_64);
    buf.put_u8(b'-');
    put_hex(buf, out.span_id);
    buf.put_slice(match (out.debug, out.sampled()) {
        (true, _) => b"-d-",
        (false, true) => b"-1-",
        (false, false) => b"-0-",
    });
    put_hex(buf, out.parent_span_id);
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{single_value, to_hex};
    use super::*;
    use http::header::{HeaderMap, HeaderName};

    use super::super::{
        B3Forms, B3, X_B3_FLAGS, X_B3_PARENTSPANID, X_B3_SAMPLED, X_B3_SPANID, X_B3_TRACEID,
    };

    /// Which B3 forms are present on the request, valid or not.
    fn arrived(headers: &HeaderMap) -> B3Forms {
        B3Forms {
            single: headers.contains_key(B3),
            multi: [
                X_B3_TRACEID,
                X_B3_SPANID,
                X_B3_PARENTSPANID,
                X_B3_SAMPLED,
                X_B3_FLAGS,
            ]
            .iter()
            .any(|name| headers.contains_key(name)),
        }
    }

    /// Reads the `x-b3-*` headers; `None` when none is present, one repeats or one is invalid.
    fn extract_multi(headers: &HeaderMap) -> Option<B3Context> {
        let get = |name: &HeaderName| single_value(headers, name);
        multi_of(&MultiValues {
            trace: get(&X_B3_TRACEID),
            span: get(&X_B3_SPANID),
            parent: get(&X_B3_PARENTSPANID),
            sampled: get(&X_B3_SAMPLED),
            flags: get(&X_B3_FLAGS),
        })
    }

    const T128: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const T64: &str = "463ac35c9f6413ad";
    const S: &str = "e457b5a2e4d86bd1";
    const P: &str = "05e3ac9a4f6e3b90";

    fn single(s: &str) -> Option<B3Context> {
        parse_single(s.as_bytes())
    }

    #[test]
    fn single_full_and_partial_forms() {
        let got = single(&format!("{T128}-{S}-1-{P}")).unwrap();
        let ids = got.ids.unwrap();
        assert_eq!(to_hex(&ids.trace_id), T128);
        assert_eq!(to_hex(&ids.span_id), S);
        assert!(!ids.trace_id_64);
        assert_eq!((got.sampled, got.debug), (Some(true), false));

        let got = single(&format!("{T64}-{S}")).unwrap();
        let ids = got.ids.unwrap();
        assert!(ids.trace_id_64);
        assert_eq!(to_hex(&ids.trace_id), format!("{}{T64}", "0".repeat(16)));
        assert_eq!(got.sampled, None, "absent state defers");

        assert_eq!(
            single(&format!("{T64}-{S}-0")).unwrap().sampled,
            Some(false)
        );
        assert_eq!(
            single(&format!("{T64}-{S}-true")).unwrap().sampled,
            Some(true)
        );
        assert_eq!(
            single(&format!("{T64}-{S}-false")).unwrap().sampled,
            Some(false)
        );
        let debug = single(&format!("{T64}-{S}-d")).unwrap();
        assert_eq!((debug.sampled, debug.debug), (Some(true), true));
    }

    #[test]
    fn single_sampling_state_only() {
        assert_eq!(
            single("0"),
            Some(B3Context {
                ids: None,
                sampled: Some(false),
                debug: false
            })
        );
        assert_eq!(single("1").unwrap().sampled, Some(true));
        assert!(single("d").unwrap().debug);
        assert!(single("2").is_none());
        assert!(single("").is_none());
    }

    #[test]
    fn single_invalid() {
        for bad in [
            format!("{}-{S}-1", T128.to_uppercase()),
            format!("{T128}-{}-1", S.to_uppercase()),
            format!("{}-{S}-1", &T128[1..]),
            format!("{}-{S}-1", "0".repeat(32)),
            format!("{}-{S}-1", "0".repeat(16)),
            format!("{T128}-{}-1", "0".repeat(16)),
            format!("{T128}-{}", &S[1..]),
            format!("{T128}-{S}-x"),
            format!("{T128}-{S}-1-{}", &P[1..]),
            format!("{T128}-{S}-1-{}", "0".repeat(16)),
            format!("{T128}-{S}-1-{P}-extra"),
            format!("{T128}-{S}-"),
            format!("{T128}--1"),
            T128.to_string(),
        ] {
            assert!(single(&bad).is_none(), "{bad:?}");
        }
    }

    fn multi(pairs: &[(&str, &str)]) -> Option<B3Context> {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        extract_multi(&map)
    }

    #[test]
    fn multi_valid_forms() {
        let got = multi(&[
            ("X-B3-TraceId", T128),
            ("X-B3-SpanId", S),
            ("X-B3-ParentSpanId", P),
            ("X-B3-Sampled", "1"),
        ])
        .unwrap();
        assert_eq!(to_hex(&got.ids.unwrap().trace_id), T128);
        assert_eq!(got.sampled, Some(true));

        let got = multi(&[("x-b3-traceid", T64), ("x-b3-spanid", S)]).unwrap();
        assert!(got.ids.unwrap().trace_id_64);
        assert_eq!(got.sampled, None);

        for (state, want) in [("0", false), ("false", false), ("true", true)] {
            let got = multi(&[
                ("x-b3-traceid", T64),
                ("x-b3-spanid", S),
                ("x-b3-sampled", state),
            ]);
            assert_eq!(got.unwrap().sampled, Some(want), "{state}");
        }
    }

    #[test]
    fn multi_debug_flag() {
        let got = multi(&[
            ("x-b3-traceid", T64),
            ("x-b3-spanid", S),
            ("x-b3-flags", "1"),
        ])
        .unwrap();
        assert!(got.debug);
        assert_eq!(got.sampled, Some(true));
        let got = multi(&[
            ("x-b3-traceid", T64),
            ("x-b3-spanid", S),
            ("x-b3-flags", "0"),
        ])
        .unwrap();
        assert!(!got.debug);
    }

    #[test]
    fn multi_sampling_only() {
        let got = multi(&[("x-b3-sampled", "0")]).unwrap();
        assert_eq!((got.ids, got.sampled), (None, Some(false)));
        let got = multi(&[("x-b3-flags", "1")]).unwrap();
        assert!(got.debug && got.ids.is_none());
        assert!(multi(&[("x-b3-flags", "0")]).is_none());
        assert!(multi(&[]).is_none());
    }

    #[test]
    fn multi_invalid() {
        for bad in [
            vec![("x-b3-traceid", T64)],
            vec![("x-b3-spanid", S)],
            vec![("x-b3-traceid", &T64[1..]), ("x-b3-spanid", S)],
            vec![("x-b3-traceid", "0000000000000000"), ("x-b3-spanid", S)],
            vec![("x-b3-traceid", T64), ("x-b3-spanid", "0000000000000000")],
            vec![("x-b3-traceid", "463AC35C9F6413AD"), ("x-b3-spanid", S)],
            vec![
                ("x-b3-traceid", T64),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "d"),
            ],
            vec![
                ("x-b3-traceid", T64),
                ("x-b3-spanid", S),
                ("x-b3-sampled", "yes"),
            ],
            vec![
                ("x-b3-traceid", T64),
                ("x-b3-spanid", S),
                ("x-b3-parentspanid", "xyz"),
            ],
            vec![("x-b3-parentspanid", P)],
            vec![
                ("x-b3-traceid", T64),
                ("x-b3-traceid", T64),
                ("x-b3-spanid", S),
            ],
        ] {
            assert!(multi(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn arrived_forms() {
        let mut map = HeaderMap::new();
        assert_eq!(arrived(&map), B3Forms::NONE);
        map.insert("x-b3-flags", HeaderValue::from_static("junk"));
        assert_eq!(
            arrived(&map),
            B3Forms {
                single: false,
                multi: true
            }
        );
        map.insert("b3", HeaderValue::from_static("junk"));
        assert!(arrived(&map).single);
    }

    #[test]
    fn trace_id_written_at_the_width_it_arrived() {
        let (id, _) = parse_trace_id(T64.as_bytes()).unwrap();
        let mut buf = BytesMut::new();
        write_trace_id(&mut buf, &id, true);
        assert_eq!(&buf[..], T64.as_bytes());
        let mut buf = BytesMut::new();
        write_trace_id(&mut buf, &id, false);
        assert_eq!(buf.len(), 32);
    }
}
