//! `SpanRecord`s straight to the OTLP protobuf wire format, off the request path.
//!
//! Building `opentelemetry-proto` messages first costs an owned `String` per attribute key and
//! value and a `Vec` per span, only to be thrown away after encoding; with every request
//! sampled that was most of the exporter's CPU. This encoder writes the same bytes prost would
//! write for [`encode::export_request`] (same fields, tag order, minimal varints; the tests
//! check it byte for byte and decode it with the generated types) into one buffer per batch.
//! Resource and scope never change, so they are encoded once.
//!
//! Field numbers are those of `opentelemetry/proto/{collector/trace,trace,common}/v1/*.proto`.
//!
//! [`encode::export_request`]: super::encode::export_request

use std::fmt::Write;
use std::net::IpAddr;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::encoding::{encoded_len_varint, WireType};
use prost::Message;

use crate::span::{AttrValue, SharedStr, SpanKind, SpanLink, SpanRecord, SpanStatus};

use super::encode::{link_flags, span_flags, status_code};

/// `ExportTraceServiceRequest.resource_spans`.
const REQUEST_RESOURCE_SPANS: u32 = 1;
/// `ResourceSpans.resource`, `ResourceSpans.scope_spans`.
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
/// `ScopeSpans.scope`, `ScopeSpans.spans`.
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
/// `Span` fields.
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_TRACE_STATE: u32 = 3;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START_TIME: u32 = 7;
const SPAN_END_TIME: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_LINKS: u32 = 13;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
/// `Span.Link` fields.
const LINK_TRACE_ID: u32 = 1;
const LINK_SPAN_ID: u32 = 2;
const LINK_TRACE_STATE: u32 = 3;
const LINK_FLAGS: u32 = 6;
/// `Status.message`, `Status.code`.
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
/// `KeyValue.key`, `KeyValue.value`.
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
/// `AnyValue.value` oneof members.
const ANY_STRING: u32 = 1;
const ANY_BOOL: u32 = 2;
const ANY_INT: u32 = 3;

/// The longest length prefix of one message: a 64-bit varint.
const MAX_VARINT: usize = 10;
/// Room reserved per span for the first spans of a batch when the last batch says nothing.
const SPAN_BYTES_GUESS: usize = 512;
/// Length-prefix bytes reserved in front of each span; most spans need exactly this many.
const SPAN_LEN_GUESS: usize = 2;

/// Encodes batches of spans under one proxy's resource and scope.
#[derive(Debug)]
pub struct BatchEncoder {
    /// `ResourceSpans.resource` and `ScopeSpans.scope`, key and length prefix included.
    resource_field: Vec<u8>,
    scope_field: Vec<u8>,
    /// Size of the last batch, to size the next buffer in one allocation.
    last_len: usize,
}

impl BatchEncoder {
    pub fn new(resource: &Resource, scope: &InstrumentationScope) -> BatchEncoder {
        let mut resource_field = Vec::new();
        put_message(&mut resource_field, RESOURCE_SPANS_RESOURCE, resource);
        let mut scope_field = Vec::new();
        put_message(&mut scope_field, SCOPE_SPANS_SCOPE, scope);
        BatchEncoder {
            resource_field,
            scope_field,
            last_len: 0,
        }
    }

    /// One `ExportTraceServiceRequest` with all `spans` under the resource and scope.
    pub fn encode(&mut self, spans: &[SpanRecord]) -> Bytes {
        let mut batch = self.start();
        self.append(&mut batch, spans);
        self.finish(batch)
    }

    /// An empty batch. Spans are appended as they arrive ([`BatchEncoder::append`]) and the
    /// request is completed by [`BatchEncoder::finish`]. Nothing is allocated until the first
    /// span arrives (an exporter waiting for spans holds no buffer), and then room for a batch
    /// like the last one finished: one allocation per batch under steady load, and a few
    /// hundred bytes, not room for a full batch, for the odd span of an idle proxy.
    pub fn start(&self) -> EncodedBatch {
        EncodedBatch {
            buf: Vec::new(),
            spans: 0,
        }
    }

    /// Appends `spans` to `batch`.
    pub fn append(&self, batch: &mut EncodedBatch, spans: &[SpanRecord]) {
        if batch.buf.is_empty() && !spans.is_empty() {
            // The prefix (request → ResourceSpans → resource, ScopeSpans → scope) is written
            // last, right before the spans, once their total length is known: room for it
            // first, and for the whole batch in one allocation.
            let headroom = self.headroom();
            let first = spans.len() * SPAN_BYTES_GUESS;
            batch.buf.reserve_exact(headroom + self.last_len.max(first));
            batch.buf.resize(headroom, 0);
        }
        for (i, span) in spans.iter().enumerate() {
            if let Some(ahead) = spans.get(i + PREFETCH_AHEAD) {
                touch(ahead);
            }
            put_span(&mut batch.buf, span);
        }
        batch.spans += spans.len();
    }

    /// The `ExportTraceServiceRequest` of everything appended to `batch`.
    pub fn finish(&mut self, batch: EncodedBatch) -> Bytes {
        let EncodedBatch { mut buf, .. } = batch;
        let headroom = self.headroom();
        if buf.len() < headroom {
            // No span was appended.
            buf.resize(headroom, 0);
        }
        let spans_len = buf.len() - headroom;
        self.last_len = spans_len;

        let scope_spans_len = self.scope_field.len() + spans_len;
        let resource_spans_len = self.resource_field.len()
            + key_len(RESOURCE_SPANS_SCOPE_SPANS)
            + encoded_len_varint(scope_spans_len as u64)
            + scope_spans_len;
        let mut prefix = Vec::with_capacity(headroom);
        put_key(
            &mut prefix,
            REQUEST_RESOURCE_SPANS,
            WireType::LengthDelimited,
        );
        put_varint(&mut prefix, resource_spans_len as u64);
        prefix.extend_from_slice(&self.resource_field);
        put_key(
            &mut prefix,
            RESOURCE_SPANS_SCOPE_SPANS,
            WireType::LengthDelimited,
        );
        put_varint(&mut prefix, scope_spans_len as u64);
        prefix.extend_from_slice(&self.scope_field);
        let start = headroom - prefix.len();
        buf[start..headroom].copy_from_slice(&prefix);
        Bytes::from(buf).slice(start..)
    }

    /// Room kept in front of a batch's spans for the request's prefix.
    fn headroom(&self) -> usize {
        2 * (1 + MAX_VARINT) + self.resource_field.len() + self.scope_field.len()
    }
}

/// A request being encoded: the spans appended so far, behind room for the prefix.
#[derive(Debug)]
pub struct EncodedBatch {
    /// Empty until the first span, then the headroom for the prefix and the spans.
    buf: Vec<u8>,
    spans: usize,
}

impl EncodedBatch {
    /// Spans appended so far.
    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }
}

/// How many spans ahead of the one being encoded [`touch`] reads.
const PREFETCH_AHEAD: usize = 2;

/// Reads a few bytes of a span's attribute list and text, so that their cache lines are on
/// their way while the spans before it are encoded. A batch is encoded long after its spans
/// were recorded; each span's attributes and text are separate allocations, out of cache by
/// then, and encoding them one after the other waited on each miss in turn.
#[inline]
fn touch(span: &SpanRecord) {
    let attributes = span.attributes.as_slice();
    let first = attributes.first().map_or(0, |(key, _)| key.len());
    // The middle of the list, a few cache lines further (each attribute is 48 bytes).
    let middle = attributes
        .get(attributes.len() / 2)
        .map_or(0, |(key, _)| key.len());
    let name = span.name.as_bytes().first().copied().unwrap_or(0);
    std::hint::black_box((first, middle, name));
}

/// A base-128 varint, as `prost::encoding::encode_varint` writes it, but in one append: a
/// `Vec` is not worth a capacity check per byte on the exporter's hottest path.
#[inline]
fn put_varint(buf: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        buf.push(value as u8);
        return;
    }
    let (bytes, len) = varint(value);
    buf.extend_from_slice(&bytes[..len]);
}

/// The varint bytes of `value` and how many there are.
#[inline]
fn varint(mut value: u64) -> ([u8; MAX_VARINT], usize) {
    let mut bytes = [0u8; MAX_VARINT];
    let mut len = 0;
    while value >= 0x80 {
        bytes[len] = value as u8 | 0x80;
        value >>= 7;
        len += 1;
    }
    bytes[len] = value as u8;
    (bytes, len + 1)
}

/// The key of a field numbered below 16: one byte.
const fn one_byte_key(field: u32, wire_type: WireType) -> u8 {
    (field << 3 | wire_type as u32) as u8
}

fn key_len(field: u32) -> usize {
    encoded_len_varint(u64::from(field << 3))
}

fn put_key(buf: &mut Vec<u8>, field: u32, wire_type: WireType) {
    put_varint(buf, u64::from(field << 3 | wire_type as u32));
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    put_key(buf, field, WireType::LengthDelimited);
    put_varint(buf, value.len() as u64);
    buf.extend_from_slice(value);
}

/// A proto3 `string`/`bytes` field: absent when empty.
fn put_nonempty(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        put_bytes(buf, field, value);
    }
}

fn put_message(buf: &mut Vec<u8>, field: u32, message: &impl Message) {
    put_key(buf, field, WireType::LengthDelimited);
    put_varint(buf, message.encoded_len() as u64);
    message.encode_raw(buf);
}

fn put_fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(buf, field, WireType::SixtyFourBit);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn put_fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        put_key(buf, field, WireType::ThirtyTwoBit);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn put_uint(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(buf, field, WireType::Varint);
        put_varint(buf, value);
    }
}

/// `ScopeSpans.spans`: one length-prefixed `Span`.
fn put_span(buf: &mut Vec<u8>, span: &SpanRecord) {
    put_key(buf, SCOPE_SPANS_SPANS, WireType::LengthDelimited);
    let len_at = buf.len();
    buf.resize(len_at + SPAN_LEN_GUESS, 0);
    let body_at = buf.len();
    put_span_body(buf, span);
    let body_len = buf.len() - body_at;
    let len_len = encoded_len_varint(body_len as u64);
    // Move the body if its length prefix is not the size guessed.
    if len_len > SPAN_LEN_GUESS {
        let grow = len_len - SPAN_LEN_GUESS;
        buf.resize(buf.len() + grow, 0);
        buf.copy_within(body_at..body_at + body_len, body_at + grow);
    } else if len_len < SPAN_LEN_GUESS {
        let shrink = SPAN_LEN_GUESS - len_len;
        buf.copy_within(body_at..body_at + body_len, body_at - shrink);
        buf.truncate(buf.len() - shrink);
    }
    let (prefix, len_len) = varint(body_len as u64);
    buf[len_at..len_at + len_len].copy_from_slice(&prefix[..len_len]);
}

fn put_span_body(buf: &mut Vec<u8>, span: &SpanRecord) {
    put_bytes(buf, SPAN_TRACE_ID, &span.trace_id);
    put_bytes(buf, SPAN_SPAN_ID, &span.span_id);
    if let Some(state) = &span.trace_state {
        put_nonempty(buf, SPAN_TRACE_STATE, state.as_bytes());
    }
    if let Some(parent) = &span.parent_span_id {
        put_bytes(buf, SPAN_PARENT_SPAN_ID, parent);
    }
    put_nonempty(buf, SPAN_NAME, span.name.as_bytes());
    let kind = match span.kind {
        SpanKind::Server => opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server,
        SpanKind::Client => opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client,
    };
    put_uint(buf, SPAN_KIND, kind as u64);
    put_fixed64(buf, SPAN_START_TIME, span.start_unix_nanos);
    put_fixed64(buf, SPAN_END_TIME, span.end_unix_nanos);
    for (key, value) in &span.attributes {
        put_attribute(buf, key, value, &span.name);
    }
    put_links(buf, &span.links);
    let status = match &span.status {
        SpanStatus::Unset => None,
        SpanStatus::Ok => Some(""),
        SpanStatus::Error(message) => Some(message.as_deref().unwrap_or_default()),
    };
    if let Some(message) = status {
        let code = status_code(&span.status) as u64;
        let mut len = 0;
        if !message.is_empty() {
            len +=
                key_len(STATUS_MESSAGE) + encoded_len_varint(message.len() as u64) + message.len();
        }
        if code != 0 {
            len += key_len(STATUS_CODE) + encoded_len_varint(code);
        }
        put_key(buf, SPAN_STATUS, WireType::LengthDelimited);
        put_varint(buf, len as u64);
        put_nonempty(buf, STATUS_MESSAGE, message.as_bytes());
        put_uint(buf, STATUS_CODE, code);
    }
    put_fixed32(buf, SPAN_FLAGS, span_flags(span));
}

/// `Span.links`: one length-prefixed `Span.Link` per link.
fn put_links(buf: &mut Vec<u8>, links: &[SpanLink]) {
    for link in links {
        let trace_state = link.trace_state.as_deref().unwrap_or_default().as_bytes();
        let flags = link_flags(link);
        let mut len = 2 * key_len(LINK_TRACE_ID) + 2 + link.trace_id.len() + link.span_id.len();
        if !trace_state.is_empty() {
            len += key_len(LINK_TRACE_STATE)
                + encoded_len_varint(trace_state.len() as u64)
                + trace_state.len();
        }
        if flags != 0 {
            len += key_len(LINK_FLAGS) + 4;
        }
        put_key(buf, SPAN_LINKS, WireType::LengthDelimited);
        put_varint(buf, len as u64);
        put_bytes(buf, LINK_TRACE_ID, &link.trace_id);
        put_bytes(buf, LINK_SPAN_ID, &link.span_id);
        put_nonempty(buf, LINK_TRACE_STATE, trace_state);
        put_fixed32(buf, LINK_FLAGS, flags);
    }
}

/// Text of an address, formatted on the stack.
struct IpText {
    bytes: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: &IpAddr) -> IpText {
        let mut text = IpText {
            bytes: [0; 48],
            len: 0,
        };
        match ip {
            // The common case, without the formatting machinery.
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            // The longest address text (IPv4-mapped IPv6) is 45 bytes: this cannot fail.
            IpAddr::V6(_) => {
                let _ = write!(text, "{ip}");
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `Span.attributes`: one length-prefixed `KeyValue { key, value: AnyValue { .. } }`.
fn put_attribute(buf: &mut Vec<u8>, key: &str, value: &AttrValue, name: &SharedStr) {
    let ip;
    // The `AnyValue` oneof member: its field, and its payload (text or varint).
    let (field, text, number): (u32, &[u8], u64) = match value {
        AttrValue::Static(s) => (ANY_STRING, s.as_bytes(), 0),
        AttrValue::String(s) => (ANY_STRING, s.as_bytes(), 0),
        AttrValue::Shared(s) => (ANY_STRING, s.as_bytes(), 0),
        AttrValue::Text { start, end } => (ANY_STRING, name.sibling(*start, *end).as_bytes(), 0),
        AttrValue::Ip(addr) => {
            ip = IpText::new(addr);
            (ANY_STRING, ip.as_bytes(), 0)
        }
        AttrValue::Int(i) => (ANY_INT, &[], *i as u64),
        AttrValue::Bool(b) => (ANY_BOOL, &[], u64::from(*b)),
    };
    // A oneof member is written even when it holds its type's default value.
    let member_len = key_len(field)
        + if field == ANY_STRING {
            encoded_len_varint(text.len() as u64) + text.len()
        } else {
            encoded_len_varint(number)
        };
    let mut kv_len = key_len(KEY_VALUE_VALUE) + encoded_len_varint(member_len as u64) + member_len;
    if !key.is_empty() {
        kv_len += key_len(KEY_VALUE_KEY) + encoded_len_varint(key.len() as u64) + key.len();
    }
    if kv_len < 0x80 && !key.is_empty() {
        // The usual attribute: every length fits in one byte, so it is a few appends.
        buf.reserve(2 + kv_len);
        buf.extend_from_slice(&[
            one_byte_key(SPAN_ATTRIBUTES, WireType::LengthDelimited),
            kv_len as u8,
            one_byte_key(KEY_VALUE_KEY, WireType::LengthDelimited),
            key.len() as u8,
        ]);
        buf.extend_from_slice(key.as_bytes());
        if field == ANY_STRING {
            buf.extend_from_slice(&[
                one_byte_key(KEY_VALUE_VALUE, WireType::LengthDelimited),
                member_len as u8,
                one_byte_key(ANY_STRING, WireType::LengthDelimited),
                text.len() as u8,
            ]);
            buf.extend_from_slice(text);
        } else {
            let (number, len) = varint(number);
            buf.extend_from_slice(&[
                one_byte_key(KEY_VALUE_VALUE, WireType::LengthDelimited),
                member_len as u8,
                one_byte_key(field, WireType::Varint),
            ]);
            buf.extend_from_slice(&number[..len]);
        }
        return;
    }
    put_key(buf, SPAN_ATTRIBUTES, WireType::LengthDelimited);
    put_varint(buf, kv_len as u64);
    put_nonempty(buf, KEY_VALUE_KEY, key.as_bytes());
    put_key(buf, KEY_VALUE_VALUE, WireType::LengthDelimited);
    put_varint(buf, member_len as u64);
    if field == ANY_STRING {
        put_bytes(buf, field, text);
    } else {
        put_key(buf, field, WireType::Varint);
        put_varint(buf, number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExportArgs;
    use crate::export::encode::{export_request, scope};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::{span, status};
    use std::sync::Arc;

    fn resource() -> Resource {
        ExportArgs {
            workload: Some("checkout".into()),
            pod_name: Some("checkout-7d9f-abcde".into()),
            resource_attributes: Some("empty=,team=a%2Cb".into()),
            ..ExportArgs::default()
        }
        .resource()
        .to_proto()
    }

    /// Every shape a record can take: each attribute variant (defaults and extremes
    /// included), each status, with and without parent and trace state.
    fn records() -> Vec<SpanRecord> {
        let text: Arc<str> = Arc::from("GET /users/{id}/users/7héllo");
        let mut records = Vec::new();
        for n in 0u8..12 {
            let kind = if n % 2 == 0 {
                SpanKind::Server
            } else {
                SpanKind::Client
            };
            let status = match n % 4 {
                0 => SpanStatus::Unset,
                1 => SpanStatus::Ok,
                2 => SpanStatus::Error(Some("upstream reset".into())),
                _ => SpanStatus::Error(None),
            };
            let mut attributes = vec![
                ("http.request.method", AttrValue::Static("GET")),
                (
                    "url.path",
                    AttrValue::Shared(SharedStr::slice(&text, 15..23).unwrap()),
                ),
                ("user_agent.original", AttrValue::String("curl/8".into())),
                ("empty", AttrValue::String(String::new())),
                ("client.address", AttrValue::Ip("10.1.2.3".parse().unwrap())),
                (
                    "network.peer.address",
                    AttrValue::Ip("::ffff:192.168.100.200".parse().unwrap()),
                ),
                (
                    "server.address",
                    AttrValue::Ip("fe80::1:2:3:4".parse().unwrap()),
                ),
                ("server.port", AttrValue::Int(8080)),
                ("zero", AttrValue::Int(0)),
                ("negative", AttrValue::Int(-5)),
                ("max", AttrValue::Int(i64::MAX)),
                ("min", AttrValue::Int(i64::MIN)),
                ("true", AttrValue::Bool(true)),
                ("false", AttrValue::Bool(false)),
                ("", AttrValue::Static("no key")),
                (
                    "shared.unicode",
                    AttrValue::Shared(SharedStr::slice(&text, 23..29).unwrap()),
                ),
                // Ranges of the text the span's name is a slice of.
                ("text.path", AttrValue::Text { start: 15, end: 23 }),
                ("text.unicode", AttrValue::Text { start: 23, end: 29 }),
                ("text.outside", AttrValue::Text { start: 23, end: 99 }),
            ];
            // Long values and many attributes: length prefixes of more than one byte, and a
            // span longer than 16 KiB (three-byte prefix).
            let long = "x".repeat(usize::from(n) * 1500);
            attributes.push(("long", AttrValue::String(long)));
            let times = if n == 3 {
                (0, 0)
            } else {
                (1_700_000_000_000_000_000 + u64::from(n), u64::MAX)
            };
            records.push(SpanRecord {
                trace_id: [n.wrapping_mul(17) | 1; 16],
                span_id: [n | 0x80; 8],
                parent_span_id: (n % 3 != 0).then_some([n; 8]),
                trace_state: match n % 3 {
                    0 => None,
                    1 => Some(SharedStr::from("")),
                    _ => Some("vendor=opaque,rojo=00f067aa0ba902b7".into()),
                },
                flags: n % 4,
                kind,
                name: if n == 5 {
                    SharedStr::from("")
                } else {
                    SharedStr::slice(&text, 0..15).unwrap()
                },
                start_unix_nanos: times.0,
                end_unix_nanos: times.1,
                status,
                attributes,
                links: (0..usize::from(n % 3))
                    .map(|i| SpanLink {
                        trace_id: [n ^ 0x55; 16],
                        span_id: [i as u8 + 1; 8],
                        trace_state: (i == 1).then(|| SharedStr::from("vendor=linked")),
                        flags: n % 2,
                    })
                    .collect(),
            });
        }
        // A tiny span (one-byte length prefix).
        records.push(SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            trace_state: None,
            flags: 0,
            kind: SpanKind::Client,
            name: "".into(),
            start_unix_nanos: 0,
            end_unix_nanos: 0,
            status: SpanStatus::Unset,
            attributes: Vec::new(),
            links: Vec::new(),
        });
        records
    }

    #[test]
    fn same_bytes_as_the_generated_types() {
        let resource = resource();
        let scope = scope();
        let mut encoder = BatchEncoder::new(&resource, &scope);
        let spans = records();
        for batch in [&spans[..0], &spans[..1], &spans[..]] {
            let wire = encoder.encode(batch);
            let typed = export_request(&resource, &scope, batch.iter().cloned());
            assert_eq!(wire.as_ref(), typed.encode_to_vec().as_slice());
            let decoded = ExportTraceServiceRequest::decode(wire).expect("valid protobuf");
            assert_eq!(decoded, typed);
        }
    }

    #[test]
    fn decoded_fields_match_the_records() {
        let resource = resource();
        let mut encoder = BatchEncoder::new(&resource, &scope());
        let records = records();
        let decoded = ExportTraceServiceRequest::decode(encoder.encode(&records)).unwrap();
        assert_eq!(decoded.resource_spans.len(), 1);
        let resource_spans = &decoded.resource_spans[0];
        assert_eq!(resource_spans.resource.as_ref(), Some(&resource));
        assert_eq!(resource_spans.scope_spans.len(), 1);
        let scope_spans = &resource_spans.scope_spans[0];
        let scope = scope_spans.scope.as_ref().unwrap();
        assert_eq!(scope.name, "meshtrace-proxy");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(scope_spans.spans.len(), records.len());
        for (span, record) in scope_spans.spans.iter().zip(&records) {
            assert_eq!(span.trace_id, record.trace_id);
            assert_eq!(span.span_id, record.span_id);
            assert_eq!(
                span.parent_span_id,
                record
                    .parent_span_id
                    .map(|p| p.to_vec())
                    .unwrap_or_default()
            );
            assert_eq!(
                span.trace_state,
                record.trace_state.as_deref().unwrap_or_default()
            );
            assert_eq!(span.name, record.name.as_str());
            let kind = match record.kind {
                SpanKind::Server => span::SpanKind::Server,
                SpanKind::Client => span::SpanKind::Client,
            };
            assert_eq!(span.kind, kind as i32);
            assert_eq!(span.start_time_unix_nano, record.start_unix_nanos);
            assert_eq!(span.end_time_unix_nano, record.end_unix_nanos);
            let remote = record.kind == SpanKind::Server && record.parent_span_id.is_some();
            assert_eq!(
                span.flags,
                u32::from(record.flags) | 0x100 | if remote { 0x200 } else { 0 }
            );
            match &record.status {
                SpanStatus::Unset => assert_eq!(span.status, None),
                SpanStatus::Ok => {
                    let status = span.status.as_ref().unwrap();
                    assert_eq!(status.code, status::StatusCode::Ok as i32);
                    assert_eq!(status.message, "");
                }
                SpanStatus::Error(message) => {
                    let status = span.status.as_ref().unwrap();
                    assert_eq!(status.code, status::StatusCode::Error as i32);
                    assert_eq!(&status.message, message.as_deref().unwrap_or_default());
                }
            }
            assert_eq!(span.attributes.len(), record.attributes.len());
            for (kv, (key, value)) in span.attributes.iter().zip(&record.attributes) {
                assert_eq!(kv.key, *key);
                let got = kv.value.as_ref().and_then(|v| v.value.clone());
                let want = match value {
                    AttrValue::Int(i) => Value::IntValue(*i),
                    AttrValue::Bool(b) => Value::BoolValue(*b),
                    text => Value::StringValue(record.text_of(text).unwrap().into_owned()),
                };
                if *key == "text.path" && !record.name.is_empty() {
                    assert_eq!(got, Some(Value::StringValue("/users/7".into())));
                }
                assert_eq!(got, Some(want), "{key}");
            }
            assert!(span.events.is_empty());
            assert_eq!(span.links.len(), record.links.len());
            for (link, want) in span.links.iter().zip(&record.links) {
                assert_eq!(link.trace_id, want.trace_id);
                assert_eq!(link.span_id, want.span_id);
                assert_eq!(
                    link.trace_state,
                    want.trace_state.as_deref().unwrap_or_default()
                );
                assert_eq!(link.flags, u32::from(want.flags) | 0x100);
            }
        }
        let peer = &scope_spans.spans[0].attributes[5];
        assert_eq!(
            peer.value.as_ref().and_then(|v| v.value.clone()),
            Some(Value::StringValue("::ffff:192.168.100.200".into()))
        );
    }

    #[test]
    fn links_are_the_bytes_of_the_generated_types() {
        use crate::export::encode::link_to_proto;
        use crate::span::SpanLink;
        let links = vec![
            SpanLink {
                trace_id: [7; 16],
                span_id: [8; 8],
                trace_state: None,
                flags: 1,
            },
            SpanLink {
                trace_id: [9; 16],
                span_id: [10; 8],
                trace_state: Some("vendor=x".into()),
                flags: 0,
            },
            SpanLink {
                trace_id: [11; 16],
                span_id: [12; 8],
                trace_state: Some(SharedStr::from("k=".repeat(100).as_str())),
                flags: 3,
            },
        ];
        let mut ours = Vec::new();
        put_links(&mut ours, &links);
        let typed = opentelemetry_proto::tonic::trace::v1::Span {
            links: links.iter().map(link_to_proto).collect(),
            ..Default::default()
        };
        assert_eq!(ours, typed.encode_to_vec());
        let decoded = opentelemetry_proto::tonic::trace::v1::Span::decode(ours.as_slice()).unwrap();
        assert_eq!(decoded.links.len(), 3);
        assert_eq!(decoded.links[0].trace_id, vec![7; 16]);
        assert_eq!(decoded.links[0].flags, 0x101, "sampled, not remote");
        assert_eq!(decoded.links[1].trace_state, "vendor=x");
        let mut none = Vec::new();
        put_links(&mut none, &[]);
        assert!(none.is_empty());
    }

    #[test]
    fn addresses_are_written_as_std_formats_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.7",
            "127.0.0.1",
            "255.255.255.255",
            "100.20.3.99",
            "::",
            "::1",
            "fe80::1:2:3:4",
            "::ffff:192.168.100.200",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(&ip).as_bytes(), ip.to_string().as_bytes());
        }
        for n in 0..=255u8 {
            let ip = IpAddr::from([n, n / 3, 255 - n, n % 10]);
            assert_eq!(IpText::new(&ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn varints_match_prost() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            put_varint(&mut ours, value);
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(value, &mut theirs);
            assert_eq!(ours, theirs, "{value}");
        }
    }

    #[test]
    fn each_batch_is_independent() {
        let resource = resource();
        let mut encoder = BatchEncoder::new(&resource, &scope());
        let records = records();
        let big = encoder.encode(&records);
        let small = encoder.encode(&records[..2]);
        let again = encoder.encode(&records);
        assert_eq!(big, again);
        let small = ExportTraceServiceRequest::decode(small).unwrap();
        assert_eq!(small.resource_spans[0].scope_spans[0].spans.len(), 2);
    }

    #[test]
    fn a_batch_appended_in_pieces_is_the_batch_encoded_at_once() {
        let resource = resource();
        let mut encoder = BatchEncoder::new(&resource, &scope());
        let records = records();
        assert!(records.len() >= 3, "needs pieces of different sizes");
        let whole = encoder.encode(&records);
        let mut batch = encoder.start();
        assert!(batch.is_empty());
        encoder.append(&mut batch, &records[..1]);
        encoder.append(&mut batch, &[]);
        encoder.append(&mut batch, &records[1..]);
        assert_eq!(batch.len(), records.len());
        assert_eq!(encoder.finish(batch), whole);
        let empty = encoder.finish(encoder.start());
        let decoded = ExportTraceServiceRequest::decode(empty).unwrap();
        assert!(decoded.resource_spans[0].scope_spans[0].spans.is_empty());
    }
}
