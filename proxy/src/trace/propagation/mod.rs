//! Propagation formats: reading the incoming trace context and writing the outgoing one.
//!
//! Pure functions of headers (no I/O, no clock) so every parsing rule is unit-testable.
//! Reading order is W3C Trace Context, then B3 single, then B3 multi: the first *valid* one is
//! authoritative. Writing replaces every propagation header so no stale value of any format
//! survives a hop.

pub mod b3;
#[cfg(test)]
pub(crate) mod test_support;
pub mod w3c;

use bytes::{BufMut, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::span::{SpanId, TraceId};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// W3C trace flag: the caller may have recorded the trace.
pub const FLAG_SAMPLED: u8 = 0x01;
/// W3C Level 2 trace flag: the trace id's rightmost 7 bytes are random.
pub const FLAG_RANDOM: u8 = 0x02;
/// The flag bits this proxy understands; the others are cleared when re-emitting.
pub const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// Which B3 encodings to write (or which arrived).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct B3Forms {
    /// The single `b3` header.
    pub single: bool,
    /// The `x-b3-*` headers.
    pub multi: bool,
}

impl B3Forms {
    pub const NONE: B3Forms = B3Forms {
        single: false,
        multi: false,
    };

    pub fn any(self) -> bool {
        self.single || self.multi
    }
}

/// The format that supplied the authoritative context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    TraceContext,
    B3Single,
    B3Multi,
}

/// The caller's span this hop continues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteParent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// W3C random flag, copied exactly when continuing a W3C trace; false for B3.
    pub random: bool,
    /// Valid W3C `tracestate`, only when the context came from `traceparent`.
    pub trace_state: Option<HeaderValue>,
    /// The trace id arrived as a 64-bit B3 id (kept at 64 bits in B3 output).
    pub trace_id_64: bool,
}

/// What an incoming request says about its trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The authoritative format, if any was valid.
    pub format: Option<Format>,
    /// `None`: no valid ids (or a B3 sampling-only header): a new trace starts here.
    pub parent: Option<RemoteParent>,
    /// The caller's sampling decision; `None` defers it to this proxy.
    pub sampled: Option<bool>,
    /// B3 debug (`x-b3-flags: 1` or `b3: ...-d`): force sampling.
    pub debug: bool,
    /// B3 encodings present on the request (valid or not): they are the ones written back.
    pub b3_arrived: B3Forms,
}

/// One header's values as a scan of the request's headers saw them.
#[derive(Clone, Copy, Debug, Default)]
struct HeaderOccurrences<'a> {
    first: Option<&'a HeaderValue>,
    repeated: bool,
}

impl<'a> HeaderOccurrences<'a> {
    fn add(&mut self, value: &'a HeaderValue) {
        if self.first.is_none() {
            self.first = Some(value);
        } else {
            self.repeated = true;
        }
    }

    fn present(&self) -> bool {
        self.first.is_some()
    }

    /// The only value of a header that must not repeat: `Err` when it repeats.
    fn single(&self) -> Result<Option<&'a HeaderValue>, ()> {
        if self.repeated {
            Err(())
        } else {
            Ok(self.first)
        }
    }
}

/// The propagation headers of a request, scanned in one pass over its headers. A request carries
/// a handful of headers; visiting each once costs less than a hash lookup per propagation
/// header name (nine of them, most absent).
#[derive(Debug)]
pub struct ScannedHeaders<'a> {
    headers: &'a HeaderMap,
    traceparent: HeaderOccurrences<'a>,
    tracestate: HeaderOccurrences<'a>,
    b3: HeaderOccurrences<'a>,
    x_b3_traceid: HeaderOccurrences<'a>,
    x_b3_spanid: HeaderOccurrences<'a>,
    x_b3_parentspanid: HeaderOccurrences<'a>,
    x_b3_sampled: HeaderOccurrences<'a>,
    x_b3_flags: HeaderOccurrences<'a>,
    /// The first value of the sample header the scan was asked to look for.
    sample: Option<&'a HeaderValue>,
    /// Headers the span attributes read, scanned on the way (first values).
    host: Option<&'a HeaderValue>,
    user_agent: Option<&'a HeaderValue>,
    content_type: Option<&'a HeaderValue>,
}

impl<'a> ScannedHeaders<'a> {
    /// Scans `headers` for every propagation header and `sample_header`. A header named like
    /// the sample header is only that (the proxy removes it before reading propagation).
    pub fn scan(headers: &'a HeaderMap, sample_header: Option<&HeaderName>) -> ScannedHeaders<'a> {
        let mut scanned = ScannedHeaders {
            headers,
            traceparent: HeaderOccurrences::default(),
            tracestate: HeaderOccurrences::default(),
            b3: HeaderOccurrences::default(),
            x_b3_traceid: HeaderOccurrences::default(),
            x_b3_spanid: HeaderOccurrences::default(),
            x_b3_parentspanid: HeaderOccurrences::default(),
            x_b3_sampled: HeaderOccurrences::default(),
            x_b3_flags: HeaderOccurrences::default(),
            sample: None,
            host: None,
            user_agent: None,
            content_type: None,
        };
        for (name, value) in headers {
            if sample_header == Some(name) {
                scanned.sample.get_or_insert(value);
                continue;
            }
            let seen = match name.as_str() {
                "traceparent" => &mut scanned.traceparent,
                "tracestate" => &mut scanned.tracestate,
                "b3" => &mut scanned.b3,
                "x-b3-traceid" => &mut scanned.x_b3_traceid,
                "x-b3-spanid" => &mut scanned.x_b3_spanid,
                "x-b3-parentspanid" => &mut scanned.x_b3_parentspanid,
                "x-b3-sampled" => &mut scanned.x_b3_sampled,
                "x-b3-flags" => &mut scanned.x_b3_flags,
                "host" => {
                    scanned.host.get_or_insert(value);
                    continue;
                }
                "user-agent" => {
                    scanned.user_agent.get_or_insert(value);
                    continue;
                }
                "content-type" => {
                    scanned.content_type.get_or_insert(value);
                    continue;
                }
                _ => continue,
            };
            seen.add(value);
        }
        scanned
    }

    /// The first value of the sample header, if the scan looked for it and it is there.
    pub fn sample(&self) -> Option<&'a HeaderValue> {
        self.sample
    }

    /// The first `Host`, `User-Agent` and `Content-Type` values.
    pub fn host(&self) -> Option<&'a HeaderValue> {
        self.host
    }

    pub fn user_agent(&self) -> Option<&'a HeaderValue> {
        self.user_agent
    }

    pub fn content_type(&self) -> Option<&'a HeaderValue> {
        self.content_type
    }

    /// Which propagation headers are present, one bit per name of [`ALL`].
    pub fn present(&self) -> Present {
        Present(
            [
                self.traceparent,
                self.tracestate,
                self.b3,
                self.x_b3_traceid,
                self.x_b3_spanid,
                self.x_b3_parentspanid,
                self.x_b3_sampled,
                self.x_b3_flags,
            ]
            .iter()
            .enumerate()
            .fold(0, |bits, (i, seen)| bits | u8::from(seen.present()) << i),
        )
    }

    /// Which B3 forms are present, valid or not.
    pub fn b3_arrived(&self) -> B3Forms {
        B3Forms {
            single: self.b3.present(),
            multi: self.x_b3_traceid.present()
                || self.x_b3_spanid.present()
                || self.x_b3_parentspanid.present()
                || self.x_b3_sampled.present()
                || self.x_b3_flags.present(),
        }
    }

    fn b3_single(&self) -> Option<b3::B3Context> {
        b3::parse_single(self.b3.single().ok()??.as_bytes())
    }

    fn b3_multi(&self) -> Option<b3::B3Context> {
        b3::multi_of(&b3::MultiValues {
            trace: self.x_b3_traceid.single(),
            span: self.x_b3_spanid.single(),
            parent: self.x_b3_parentspanid.single(),
            sampled: self.x_b3_sampled.single(),
            flags: self.x_b3_flags.single(),
        })
    }

    fn tracestate(&self) -> Option<HeaderValue> {
        let first = self.tracestate.first?;
        w3c::tracestate_of(
            first,
            self.tracestate
                .repeated
                .then(|| self.headers.get_all(TRACESTATE)),
        )
    }

    /// Reads the incoming context: the first valid of W3C, B3 single, B3 multi.
    pub fn extract(&self) -> Extracted {
        let b3_arrived = self.b3_arrived();
        let traceparent = self.traceparent.single().ok().flatten();
        if let Some(parent) = traceparent.and_then(|v| w3c::parse_traceparent(v.as_bytes())) {
            return Extracted {
                format: Some(Format::TraceContext),
                sampled: Some(parent.flags & FLAG_SAMPLED != 0),
                parent: Some(RemoteParent {
                    trace_id: parent.trace_id,
                    span_id: parent.parent_id,
                    random: parent.flags & FLAG_RANDOM != 0,
                    trace_state: self.tracestate(),
                    trace_id_64: self.b3_has_64_bit_id(b3_arrived, &parent.trace_id),
                }),
                debug: false,
                b3_arrived,
            };
        }
        let from_b3 = if b3_arrived.single {
            self.b3_single().map(|ctx| (Format::B3Single, ctx))
        } else {
            None
        };
        let from_b3 = from_b3.or_else(|| {
            if b3_arrived.multi {
                self.b3_multi().map(|ctx| (Format::B3Multi, ctx))
            } else {
                None
            }
        });
        match from_b3 {
            Some((format, ctx)) => Extracted {
                format: Some(format),
                parent: ctx.ids.map(|ids| RemoteParent {
                    trace_id: ids.trace_id,
                    span_id: ids.span_id,
                    random: false,
                    trace_state: None,
                    trace_id_64: ids.trace_id_64,
                }),
                sampled: ctx.sampled,
                debug: ctx.debug,
                b3_arrived,
            },
            None => Extracted {
                b3_arrived,
                ..Extracted::default()
            },
        }
    }

    /// Whether B3 headers next to a valid `traceparent` carry the same trace id as a 64-bit
    /// id, as a previous meshtrace hop writes them for a 64-bit B3 trace: B3 output then stays
    /// 64-bit across every hop instead of only the first. Only looked at when the W3C id is
    /// zero-padded.
    fn b3_has_64_bit_id(&self, b3_arrived: B3Forms, trace_id: &TraceId) -> bool {
        if trace_id[..8] != [0; 8] || !b3_arrived.any() {
            return false;
        }
        let same_64_bit = |ctx: Option<b3::B3Context>| {
            ctx.and_then(|ctx| ctx.ids)
                .is_some_and(|ids| ids.trace_id_64 && ids.trace_id == *trace_id)
        };
        (b3_arrived.single && same_64_bit(self.b3_single()))
            || (b3_arrived.multi && same_64_bit(self.b3_multi()))
    }
}

/// Reads the incoming context: the first valid of W3C, B3 single, B3 multi.
pub fn extract(headers: &HeaderMap) -> Extracted {
    ScannedHeaders::scan(headers, None).extract()
}

/// The context written on a forwarded request.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub trace_id: &'a TraceId,
    /// The span the receiver becomes a child of (this proxy's CLIENT span).
    pub span_id: &'a SpanId,
    /// That span's parent (this proxy's SERVER span), written as `x-b3-parentspanid`.
    pub parent_span_id: &'a SpanId,
    /// W3C flags; unknown bits are cleared when written.
    pub flags: u8,
    pub debug: bool,
    pub trace_state: Option<&'a HeaderValue>,
    pub trace_id_64: bool,
    /// Whether to write `traceparent` (+`tracestate`).
    pub tracecontext: bool,
    pub b3: B3Forms,
}

impl Outgoing<'_> {
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// Every propagation header, in the order of the bits of [`Present`].
const ALL: [HeaderName; 8] = [
    TRACEPARENT,
    TRACESTATE,
    B3,
    X_B3_TRACEID,
    X_B3_SPANID,
    X_B3_PARENTSPANID,
    X_B3_SAMPLED,
    X_B3_FLAGS,
];

/// Which propagation headers a request has, one bit per name of [`ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Present(u8);

/// Which propagation headers `headers` has (one pass, no hashing).
fn present(headers: &HeaderMap) -> Present {
    let mut bits = 0u8;
    for name in headers.keys() {
        bits |= match name.as_str() {
            "traceparent" => 1 << 0,
            "tracestate" => 1 << 1,
            "b3" => 1 << 2,
            "x-b3-traceid" => 1 << 3,
            "x-b3-spanid" => 1 << 4,
            "x-b3-parentspanid" => 1 << 5,
            "x-b3-sampled" => 1 << 6,
            "x-b3-flags" => 1 << 7,
            _ => 0,
        };
    }
    Present(bits)
}

/// Removes the propagation headers of [`ALL`] whose bit is set in `bits`.
fn remove(headers: &mut HeaderMap, bits: u8) {
    for (i, name) in ALL.into_iter().enumerate() {
        if bits & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

// traceparent + b3 single + x-b3-traceid/spanid/parentspanid, rounded up.
const WRITE_BUFFER: usize = 192;

/// Replaces every propagation header with `out`. All generated values share one buffer.
pub fn inject(headers: &mut HeaderMap, out: &Outgoing<'_>) {
    let present = present(headers);
    inject_into(headers, out, present);
}

/// [`inject`] into headers whose propagation headers are known to be `present` (as a
/// [`ScannedHeaders::scan`] of them just said).
pub fn inject_into(headers: &mut HeaderMap, out: &Outgoing<'_>, present: Present) {
    let present = present.0;
    // Headers about to be written replace their old values (`insert`); only the others are
    // removed, and only when present.
    let tracestate = out.tracecontext && out.trace_state.is_some();
    let written = u8::from(out.tracecontext)
        | u8::from(tracestate) << 1
        | u8::from(out.b3.single) << 2
        | if out.b3.multi {
            0b111 << 3 | if out.debug { 1 << 7 } else { 1 << 6 }
        } else {
            0
        };
    remove(headers, present & !written);
    headers.reserve((written & !present).count_ones() as usize);
    let mut buf = BytesMut::with_capacity(WRITE_BUFFER);
    if out.tracecontext {
        w3c::write_traceparent(&mut buf, out.trace_id, out.span_id, out.flags);
        push(headers, TRACEPARENT, &mut buf);
        if let Some(state) = out.trace_state {
            headers.insert(TRACESTATE, state.clone());
        }
    }
    if out.b3.single {
        b3::write_single(&mut buf, out);
        push(headers, B3, &mut buf);
    }
    if out.b3.multi {
        b3::write_trace_id(&mut buf, out.trace_id, out.trace_id_64);
        push(headers, X_B3_TRACEID, &mut buf);
        put_hex(&mut buf, out.span_id);
        push(headers, X_B3_SPANID, &mut buf);
        put_hex(&mut buf, out.parent_span_id);
        push(headers, X_B3_PARENTSPANID, &mut buf);
        if out.debug {
            headers.insert(X_B3_FLAGS, HeaderValue::from_static("1"));
        } else {
            headers.insert(
                X_B3_SAMPLED,
                HeaderValue::from_static(if out.sampled() { "1" } else { "0" }),
            );
        }
    }
}

/// Moves what was written to `buf` into a header value (hex and dashes are always valid).
fn push(headers: &mut HeaderMap, name: HeaderName, buf: &mut BytesMut) {
    match HeaderValue::from_maybe_shared(buf.split().freeze()) {
        Ok(mut value) => {
            never_indexed(&mut value);
            headers.insert(name, value);
        }
        // Hex and dashes: cannot happen; never leave a stale value behind.
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// Marks a value that is new on every request so that HTTP/2's HPACK sends it as a
/// never-indexed literal. Indexed, each request's ids would take a slot in the connection's
/// dynamic table that no later request can use, evicting the application's repeating headers
/// and costing a table search and update per header. On HTTP/1 it changes nothing.
pub(crate) fn never_indexed(value: &mut HeaderValue) {
    value.set_sensitive(true);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lowercase hex: formatted on the stack and appended at once (a
/// `put_u8` per digit checked the buffer's capacity a hundred and more times per request).
pub(crate) fn put_hex(buf: &mut BytesMut, bytes: &[u8]) {
    let mut digits = [0u8; 32];
    for chunk in bytes.chunks(digits.len() / 2) {
        for (pair, byte) in digits.chunks_exact_mut(2).zip(chunk) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        buf.put_slice(&digits[..chunk.len() * 2]);
    }
}

fn lower_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes exactly `N` bytes from `2N` lowercase hex characters (uppercase is invalid).
pub(crate) fn parse_lower_hex<const N: usize>(src: &[u8]) -> Option<[u8; N]> {
    if src.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        *byte = (lower_hex_digit(pair[0])? << 4) | lower_hex_digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::test_support::{header_map as headers, to_hex};
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn hex_round_trip_and_lowercase_only() {
        assert_eq!(parse_lower_hex::<2>(b"0aff"), Some([0x0a, 0xff]));
        assert_eq!(parse_lower_hex::<2>(b"0AFF"), None);
        assert_eq!(parse_lower_hex::<2>(b"0af"), None);
        assert_eq!(parse_lower_hex::<2>(b"0ag0"), None);
        assert_eq!(to_hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }

    #[test]
    fn no_headers_means_new_trace() {
        let got = extract(&HeaderMap::new());
        assert_eq!(got, Extracted::default());
    }

    #[test]
    fn w3c_wins_over_b3() {
        let got = extract(&headers(&[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
            ("traceparent", TP),
            ("X-B3-TraceId", "463ac35c9f6413ad"),
            ("X-B3-SpanId", "a2fb4a1d1a96d312"),
        ]));
        assert_eq!(got.format, Some(Format::TraceContext));
        let parent = got.parent.unwrap();
        assert_eq!(to_hex(&parent.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(to_hex(&parent.span_id), "b7ad6b7169203331");
        assert_eq!(got.sampled, Some(true));
        assert_eq!(
            got.b3_arrived,
            B3Forms {
                single: true,
                multi: true
            }
        );
    }

    #[test]
    fn invalid_w3c_falls_back_to_b3_single_then_multi() {
        let got = extract(&headers(&[
            (
                "traceparent",
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            ),
            ("tracestate", "a=1"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ]));
        assert_eq!(got.format, Some(Format::B3Single));
        let parent = got.parent.unwrap();
        assert_eq!(to_hex(&parent.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(
            parent.trace_state, None,
            "tracestate of an invalid traceparent"
        );
        assert_eq!(got.sampled, Some(false));

        let got = extract(&headers(&[
            ("b3", "not-valid"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(got.format, Some(Format::B3Multi));
        let parent = got.parent.unwrap();
        assert!(parent.trace_id_64);
        assert_eq!(to_hex(&parent.trace_id), "0000000000000000463ac35c9f6413ad");
        assert_eq!(got.sampled, Some(true));
    }

    #[test]
    fn w3c_keeps_a_64_bit_b3_trace_id_that_matches_it() {
        let padded = "00-0000000000000000463ac35c9f6413ad-0202020202020202-01";
        let next_hop = extract(&headers(&[
            ("traceparent", padded),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "0202020202020202"),
        ]));
        assert_eq!(next_hop.format, Some(Format::TraceContext));
        assert!(next_hop.parent.unwrap().trace_id_64);
        // A different B3 id, or a 128-bit one, does not make the W3C id 64-bit.
        for b3 in [
            "563ac35c9f6413ad-0202020202020202-1",
            "0000000000000000463ac35c9f6413ad-0202020202020202-1",
        ] {
            let other = extract(&headers(&[("traceparent", padded), ("b3", b3)]));
            assert!(!other.parent.unwrap().trace_id_64, "{b3}");
        }
    }

    #[test]
    fn all_invalid_is_a_new_trace_that_remembers_b3_forms() {
        let got = extract(&headers(&[
            (
                "traceparent",
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "a=1"),
            ("b3", "zzz"),
        ]));
        assert_eq!(got.format, None);
        assert_eq!(got.parent, None);
        assert_eq!(got.sampled, None);
        assert!(got.b3_arrived.single && !got.b3_arrived.multi);
    }

    #[test]
    fn one_scan_finds_the_sample_header_propagation_and_request_headers() {
        let map = headers(&[
            ("host", "svc:80"),
            ("x-b3-sampled", "1"),
            ("l5d-sample", "0.5"),
            ("l5d-sample", "0.1"),
            ("user-agent", "curl/8"),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
            ("traceparent", TP),
            ("content-type", "application/grpc"),
        ]);
        let sample = HeaderName::from_static("l5d-sample");
        let scanned = ScannedHeaders::scan(&map, Some(&sample));
        assert_eq!(scanned.sample().map(|v| v.as_bytes()), Some(&b"0.5"[..]));
        assert_eq!(scanned.host().unwrap(), "svc:80");
        assert_eq!(scanned.user_agent().unwrap(), "curl/8");
        assert_eq!(scanned.content_type().unwrap(), "application/grpc");
        assert_eq!(scanned.present(), Present(0b100_0011));
        let got = scanned.extract();
        assert_eq!(got.format, Some(Format::TraceContext));
        assert_eq!(
            got.parent.unwrap().trace_state,
            Some(HeaderValue::from_static("a=1,b=2")),
            "repeated tracestate fields are joined"
        );
        // A sample header named like a propagation header is only the sample header.
        let sample = HeaderName::from_static("x-b3-sampled");
        let scanned = ScannedHeaders::scan(&map, Some(&sample));
        assert_eq!(scanned.sample().map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert!(!scanned.b3_arrived().multi);
        // As if the sample header had been removed before reading propagation.
        let mut without = map.clone();
        without.remove(&sample);
        assert_eq!(scanned.extract(), extract(&without));
        assert_eq!(ScannedHeaders::scan(&map, None).present(), present(&map));
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let got = extract(&headers(&[("TraceParent", TP), ("TRACESTATE", "k=v")]));
        assert_eq!(got.format, Some(Format::TraceContext));
        assert_eq!(
            got.parent.unwrap().trace_state,
            Some(HeaderValue::from_static("k=v"))
        );
    }

    fn outgoing<'a>(
        trace_id: &'a TraceId,
        span_id: &'a SpanId,
        parent: &'a SpanId,
        b3: B3Forms,
    ) -> Outgoing<'a> {
        Outgoing {
            trace_id,
            span_id,
            parent_span_id: parent,
            flags: FLAG_SAMPLED | FLAG_RANDOM,
            debug: false,
            trace_state: None,
            trace_id_64: false,
            tracecontext: true,
            b3,
        }
    }

    #[test]
    fn inject_writes_every_format_with_the_same_ids_and_no_stale_header() {
        let mut map = headers(&[
            ("traceparent", TP),
            ("tracestate", "old=1"),
            ("b3", "0"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "0"),
            ("other", "kept"),
        ]);
        let trace_id = [0x11; 16];
        let span_id = [0x22; 8];
        let parent = [0x33; 8];
        let state = HeaderValue::from_static("new=2");
        let mut out = outgoing(
            &trace_id,
            &span_id,
            &parent,
            B3Forms {
                single: true,
                multi: true,
            },
        );
        out.trace_state = Some(&state);
        inject(&mut map, &out);
        let t = "11111111111111111111111111111111";
        let s = "2222222222222222";
        let p = "3333333333333333";
        assert_eq!(map["traceparent"], format!("00-{t}-{s}-03").as_str());
        assert_eq!(map["tracestate"], "new=2");
        assert_eq!(map["b3"], format!("{t}-{s}-1-{p}").as_str());
        assert_eq!(map["x-b3-traceid"], t);
        assert_eq!(map["x-b3-spanid"], s);
        assert_eq!(map["x-b3-parentspanid"], p);
        assert_eq!(map["x-b3-sampled"], "1");
        assert!(map.get("x-b3-flags").is_none());
        assert_eq!(map["other"], "kept");
        assert_eq!(map.len(), 8);
        for name in ["traceparent", "b3", "x-b3-traceid"] {
            assert_eq!(map.get_all(name).iter().count(), 1);
        }
        // Per-request ids are never HPACK-indexed; repeating values (tracestate, the sampled
        // flag) may be.
        for name in [
            "traceparent",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
        ] {
            assert!(map[name].is_sensitive(), "{name}");
        }
        assert!(!map["tracestate"].is_sensitive());
        assert!(!map["x-b3-sampled"].is_sensitive());
    }

    #[test]
    fn inject_only_selected_forms() {
        let mut map = headers(&[("x-b3-sampled", "1"), ("tracestate", "a=1")]);
        let (t, s, p) = ([1; 16], [2; 8], [3; 8]);
        let mut out = outgoing(&t, &s, &p, B3Forms::NONE);
        out.flags = 0;
        inject(&mut map, &out);
        assert_eq!(
            map["traceparent"],
            "00-01010101010101010101010101010101-0202020202020202-00"
        );
        assert_eq!(map.len(), 1, "{map:?}");

        let mut map = HeaderMap::new();
        let mut out = outgoing(
            &t,
            &s,
            &p,
            B3Forms {
                single: true,
                multi: false,
            },
        );
        out.tracecontext = false;
        out.flags = FLAG_SAMPLED | 0x80;
        inject(&mut map, &out);
        assert_eq!(map.len(), 1);
        assert!(map.get("b3").is_some());
    }

    #[test]
    fn inject_clears_unknown_flag_bits() {
        let mut map = HeaderMap::new();
        let (t, s, p) = ([1; 16], [2; 8], [3; 8]);
        let mut out = outgoing(&t, &s, &p, B3Forms::NONE);
        out.flags = 0xff;
        inject(&mut map, &out);
        assert!(map["traceparent"].to_str().unwrap().ends_with("-03"));
    }

    #[test]
    fn inject_debug_and_64_bit_b3() {
        let mut map = HeaderMap::new();
        let mut t = [0u8; 16];
        t[8..].copy_from_slice(&[0x46, 0x3a, 0xc3, 0x5c, 0x9f, 0x64, 0x13, 0xad]);
        let (s, p) = ([2; 8], [3; 8]);
        let mut out = outgoing(
            &t,
            &s,
            &p,
            B3Forms {
                single: true,
                multi: true,
            },
        );
        out.debug = true;
        out.trace_id_64 = true;
        inject(&mut map, &out);
        assert_eq!(map["x-b3-traceid"], "463ac35c9f6413ad");
        assert_eq!(map["x-b3-flags"], "1");
        assert!(map.get("x-b3-sampled").is_none());
        assert_eq!(
            map["b3"],
            "463ac35c9f6413ad-0202020202020202-d-0303030303030303"
        );
        assert_eq!(
            map["traceparent"],
            "00-0000000000000000463ac35c9f6413ad-0202020202020202-03"
        );
    }
}
