//! Heads between the codec and the service stack: a parsed head becomes `http` parts (what the
//! tracing and forwarding layers read and change), and parts become a head again on the way out.
//!
//! The parts carry the head as received ([`RawHead`]), so the head written onward keeps the
//! received bytes: every field the layers left alone leaves byte for byte, in its place (order,
//! case, repeats, spacing), a field whose values the layers changed is written with the new
//! values where its first line was, removed fields (hop-by-hop) are dropped, and added fields
//! (trace context) follow the received ones. hyper regroups repeated fields and rebuilds every
//! line; this is what issue 17 moves away from.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, StatusCode, Uri, Version};
use http_body::SizeHint;

use super::error::HeadError;
use super::head::{self, Field, RequestHead, ResponseHead, Span};

/// A head as received, kept in its message's extensions so it can be written onward with its
/// bytes, order, case and repeats.
#[derive(Clone, Debug)]
pub struct RawHead {
    /// The buffer the head was parsed from (at least up to the head's end).
    bytes: Bytes,
    fields: Vec<Field>,
    /// The start line without its CRLF.
    start_line: Span,
    /// What the start line said, to tell whether the layers changed it.
    start: StartLine,
    /// The message had framing fields (Content-Length or Transfer-Encoding).
    framed: bool,
}

#[derive(Clone, Debug)]
enum StartLine {
    Request { method: Method, uri: Uri },
    Response { status: StatusCode },
}

/// Builds a request's parts (method, target, version, fields) from a checked head, with a
/// [`RawHead`] extension. `bytes` is the buffer the head was parsed from (the spans in `head`
/// and `fields` index into it), at least up to `head.end`.
pub fn request_parts(
    bytes: Bytes,
    head: &RequestHead,
    fields: &[Field],
) -> Result<http::request::Parts, HeadError> {
    let method =
        Method::from_bytes(head.method_span.get(&bytes)).map_err(|_| HeadError::StartLine)?;
    let uri =
        Uri::from_maybe_shared(bytes.slice(range(head.target))).map_err(|_| HeadError::Target)?;
    let headers = header_map(&bytes, fields)?;
    let line_end = line_end(&bytes, head.start);
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method.clone();
    parts.uri = uri.clone();
    parts.version = http_version(head.version);
    parts.headers = headers;
    parts.extensions.insert(RawHead {
        start_line: span(head.start, line_end),
        start: StartLine::Request { method, uri },
        framed: head.body.chunked || head.body.content_length.is_some(),
        fields: fields.to_vec(),
        bytes,
    });
    Ok(parts)
}

/// Builds a response's parts from a checked head, with a [`RawHead`] extension; as
/// [`request_parts`].
pub fn response_parts(
    bytes: Bytes,
    head: &ResponseHead,
    fields: &[Field],
) -> Result<http::response::Parts, HeadError> {
    let status = StatusCode::from_u16(head.status).map_err(|_| HeadError::StartLine)?;
    let headers = header_map(&bytes, fields)?;
    let line_end = line_end(&bytes, head.start);
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = http_version(head.version);
    parts.headers = headers;
    parts.extensions.insert(RawHead {
        start_line: span(head.start, line_end),
        start: StartLine::Response { status },
        framed: head.body.chunked || head.body.content_length.is_some(),
        fields: fields.to_vec(),
        bytes,
    });
    Ok(parts)
}

fn header_map(bytes: &Bytes, fields: &[Field]) -> Result<HeaderMap, HeadError> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.get(bytes)).map_err(|_| HeadError::FieldSyntax)?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(range(field.value)))
            .map_err(|_| HeadError::FieldSyntax)?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn http_version(version: head::Version) -> Version {
    match version {
        head::Version::Http10 => Version::HTTP_10,
        head::Version::Http11 => Version::HTTP_11,
    }
}

fn range(span: Span) -> std::ops::Range<usize> {
    span.start as usize..span.end as usize
}

fn span(start: usize, end: usize) -> Span {
    Span {
        start: start as u32,
        end: end as u32,
    }
}

/// Where the line starting at `start` ends (its CR).
fn line_end(bytes: &[u8], start: usize) -> usize {
    bytes[start..]
        .iter()
        .position(|b| *b == b'\r')
        .map_or(bytes.len(), |at| start + at)
}

/// How the body that follows a written head is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFraming {
    /// No body follows (a Content-Length field in the parts is still written as it is: a
    /// response to HEAD, a 304).
    None,
    /// Exactly this many bytes; a Content-Length field is added if the parts have none.
    Length(u64),
    /// Chunked; `Transfer-Encoding: chunked` is written.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// What the response's framing depends on in the request it answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub head: bool,
    pub connect: bool,
    /// The client speaks HTTP/1.0: no chunked responses.
    pub http10: bool,
}

/// The framing of a request sent upstream: its Content-Length, else none for a body known to
/// be empty, else chunked.
pub fn request_framing(parts: &http::request::Parts, body: &SizeHint) -> OutFraming {
    if let Some(length) = content_length(&parts.headers) {
        return match length {
            0 => OutFraming::None,
            n => OutFraming::Length(n),
        };
    }
    match body.exact() {
        Some(0) => OutFraming::None,
        Some(n) if parts.version == Version::HTTP_10 => OutFraming::Length(n),
        _ if parts.version == Version::HTTP_10 => OutFraming::None,
        _ => OutFraming::Chunked,
    }
}

/// The framing of a response written to the client (RFC 9112 §6.3 from the writer's side):
/// no body for HEAD, 1xx, 204, 304 and a 2xx to CONNECT; the Content-Length when there is one;
/// close-delimited when the received response was (so it stays so) or the client speaks
/// HTTP/1.0; a body of known size gets a Content-Length; otherwise chunked.
pub fn response_framing(
    parts: &http::response::Parts,
    body: &SizeHint,
    request: RequestFacts,
) -> OutFraming {
    let status = parts.status;
    if request.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || (request.connect && status.is_success())
    {
        return OutFraming::None;
    }
    if let Some(length) = content_length(&parts.headers) {
        return OutFraming::Length(length);
    }
    let received_close_delimited = parts
        .extensions
        .get::<RawHead>()
        .is_some_and(|raw| !raw.framed);
    match body.exact() {
        _ if received_close_delimited => OutFraming::Close,
        Some(n) => OutFraming::Length(n),
        None if request.http10 => OutFraming::Close,
        None => OutFraming::Chunked,
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(CONTENT_LENGTH)?;
    std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()
}

/// Appends the request head (request line, fields, blank line) to `out`.
pub fn write_request_head(parts: &http::request::Parts, framing: OutFraming, out: &mut BytesMut) {
    let raw = parts.extensions.get::<RawHead>();
    let unchanged = raw.filter(|raw| {
        matches!(&raw.start, StartLine::Request { method, uri }
            if *method == parts.method && *uri == parts.uri)
            && http_version_of_line(raw) == Some(parts.version)
    });
    match unchanged {
        Some(raw) => out.put_slice(raw.start_line.get(&raw.bytes)),
        None => {
            out.put_slice(parts.method.as_str().as_bytes());
            out.put_u8(b' ');
            write_target(&parts.uri, &parts.method, out);
            out.put_slice(version_token(parts.version));
        }
    }
    out.put_slice(b"\r\n");
    write_fields(raw, &parts.headers, framing, out);
}

/// Appends the response head (status line, fields, blank line) to `out`.
pub fn write_response_head(parts: &http::response::Parts, framing: OutFraming, out: &mut BytesMut) {
    let raw = parts.extensions.get::<RawHead>();
    let unchanged = raw.filter(|raw| {
        matches!(&raw.start, StartLine::Response { status } if *status == parts.status)
            && http_version_of_line(raw) == Some(parts.version)
    });
    match unchanged {
        Some(raw) => out.put_slice(raw.start_line.get(&raw.bytes)),
        None => write_status_line(parts.status, out),
    }
    out.put_slice(b"\r\n");
    write_fields(raw, &parts.headers, framing, out);
}

/// `HTTP/1.1 {code} {reason}`: the proxy's own responses, or a status the layers changed.
pub fn write_status_line(status: StatusCode, out: &mut BytesMut) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
}

fn http_version_of_line(raw: &RawHead) -> Option<Version> {
    let line = raw.start_line.get(&raw.bytes);
    let token = match raw.start {
        StartLine::Request { .. } => line.get(line.len().checked_sub(8)?..)?,
        StartLine::Response { .. } => line.get(..8)?,
    };
    match token {
        b"HTTP/1.1" => Some(Version::HTTP_11),
        b"HTTP/1.0" => Some(Version::HTTP_10),
        _ => None,
    }
}

fn version_token(version: Version) -> &'static [u8] {
    if version == Version::HTTP_10 {
        b" HTTP/1.0"
    } else {
        b" HTTP/1.1"
    }
}

/// The request-target: authority-form for CONNECT, `*` kept, else origin- or absolute-form as
/// the URI holds it.
fn write_target(uri: &Uri, method: &Method, out: &mut BytesMut) {
    if method == Method::CONNECT {
        if let Some(authority) = uri.authority() {
            out.put_slice(authority.as_str().as_bytes());
            return;
        }
    }
    if uri.scheme().is_some() {
        out.put_slice(uri.to_string().as_bytes());
        return;
    }
    match uri.path_and_query() {
        Some(target) => out.put_slice(target.as_str().as_bytes()),
        None => out.put_u8(b'/'),
    }
}

/// The field lines and the blank line: the received lines whose values the parts still hold,
/// in place; changed fields at their first line; added ones after; framing per `framing`.
fn write_fields(
    raw: Option<&RawHead>,
    headers: &HeaderMap,
    framing: OutFraming,
    out: &mut BytesMut,
) {
    // Room for the received head and the usual additions (trace context): no regrowth.
    out.reserve(raw.map_or(0, |raw| raw.bytes.len()) + ADDED_FIELDS_ROOM);
    let start = out.len();
    let framing_written = match raw.map(|raw| (raw, write_in_order(raw, headers, framing, out))) {
        Some((_, Some(te_written))) => te_written,
        Some((raw, None)) => {
            out.truncate(start);
            let te_written = write_received(raw, headers, framing, out);
            write_added(Some(raw), headers, out);
            te_written
        }
        None => {
            write_added(None, headers, out);
            false
        }
    };
    match framing {
        OutFraming::Chunked if !framing_written => {
            write_line(b"transfer-encoding", b"chunked", out);
        }
        OutFraming::Length(n) if !headers.contains_key(CONTENT_LENGTH) => {
            use std::fmt::Write;
            out.put_slice(b"content-length: ");
            let _ = write!(out, "{n}\r\n");
        }
        _ => {}
    }
    out.put_slice(b"\r\n");
}

/// Bytes reserved beyond the received head for the fields the layers add.
const ADDED_FIELDS_ROOM: usize = 512;
/// Received heads with more field lines than this take the general path.
const IN_ORDER_MAX_FIELDS: usize = 64;

/// The fields of `headers` the received head did not have, after the received ones.
fn write_added(raw: Option<&RawHead>, headers: &HeaderMap, out: &mut BytesMut) {
    for name in headers.keys() {
        if *name == TRANSFER_ENCODING || raw.is_some_and(|raw| raw.has_field(name.as_str())) {
            continue;
        }
        for value in headers.get_all(name) {
            write_line(name.as_str().as_bytes(), value.as_bytes(), out);
        }
    }
}

/// What became of the received lines of one name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Unknown,
    /// The parts hold the same values: the lines leave as received.
    Kept,
    /// Changed (written at the first line) or removed: later lines are not written.
    Replaced,
}

/// [`write_received`] and [`write_added`] in one pass over both, without hashing, for the
/// common case: the parts hold the received names in the order of their first lines (some
/// removed), then the added ones (how `request_parts` builds them and the layers change them).
/// `None`, with `out` partly written, when the layers moved a field: the caller starts over the
/// general way. Returns whether a Transfer-Encoding line was written for a chunked body.
fn write_in_order(
    raw: &RawHead,
    headers: &HeaderMap,
    framing: OutFraming,
    out: &mut BytesMut,
) -> Option<bool> {
    if raw.fields.len() > IN_ORDER_MAX_FIELDS {
        return None;
    }
    let mut fates = [Fate::Unknown; IN_ORDER_MAX_FIELDS];
    let mut entries = headers
        .iter()
        .filter(|(name, _)| **name != TRANSFER_ENCODING)
        .peekable();
    let mut te_written = false;
    for (at, field) in raw.fields.iter().enumerate() {
        let name = field.name.get(&raw.bytes);
        if let Some(written) = raw.transfer_encoding_line(field, framing, out) {
            te_written |= written;
            continue;
        }
        let first = raw.first_line_of(at);
        if first == at {
            fates[at] = match entries.peek() {
                Some((key, _)) if same_name(name, key) => {
                    let key: &HeaderName = key;
                    raw.compare_group(at, key, &mut entries, headers, out)
                }
                // Not next in the parts: removed, unless the layers moved it.
                _ if headers.contains_key(std::str::from_utf8(name).ok()?) => return None,
                _ => Fate::Replaced,
            };
        }
        if fates[first] == Fate::Kept {
            raw.write_line_as_received(field, out);
        }
    }
    for (name, value) in entries {
        write_line(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    Some(te_written)
}

fn same_name(received: &[u8], name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    received.len() == name.len() && received.eq_ignore_ascii_case(name)
}

/// The received field lines, as [`write_fields`] describes; whether a Transfer-Encoding line
/// was written for a chunked body.
fn write_received(
    raw: &RawHead,
    headers: &HeaderMap,
    framing: OutFraming,
    out: &mut BytesMut,
) -> bool {
    let mut te_written = false;
    for (at, field) in raw.fields.iter().enumerate() {
        let name = field.name.get(&raw.bytes);
        if let Some(written) = raw.transfer_encoding_line(field, framing, out) {
            te_written |= written;
            continue;
        }
        let first = raw.first_line_of(at);
        let Ok(name_str) = std::str::from_utf8(name) else {
            continue;
        };
        if raw.values_unchanged(first, name_str, headers) {
            raw.write_line_as_received(field, out);
        } else if first == at {
            for value in headers.get_all(name_str) {
                write_line(name, value.as_bytes(), out);
            }
        }
    }
    te_written
}

impl RawHead {
    /// Consumes the values of `key` (the next name in `entries`, the name of line `at`, its
    /// first) and compares them with the received lines of that name. Changed: the parts'
    /// values are written here, under the received name's case.
    fn compare_group<'a>(
        &self,
        at: usize,
        key: &HeaderName,
        entries: &mut std::iter::Peekable<impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>>,
        headers: &HeaderMap,
        out: &mut BytesMut,
    ) -> Fate {
        let name = self.fields[at].name.get(&self.bytes);
        let mut received = self.fields[at..]
            .iter()
            .filter(|field| same_name(field.name.get(&self.bytes), key));
        let mut kept = true;
        while let Some((_, value)) = entries.next_if(|(next, _)| *next == key) {
            kept &= received
                .next()
                .is_some_and(|field| field.value.get(&self.bytes) == value.as_bytes());
        }
        if kept && received.next().is_none() {
            return Fate::Kept;
        }
        for value in headers.get_all(key) {
            write_line(name, value.as_bytes(), out);
        }
        Fate::Replaced
    }

    /// For a Transfer-Encoding line: written (with the received codings, `gzip, chunked` too,
    /// since the body stays chunked) when the body is chunked, else dropped; `Some(written)`.
    /// `None` for any other line.
    fn transfer_encoding_line(
        &self,
        field: &Field,
        framing: OutFraming,
        out: &mut BytesMut,
    ) -> Option<bool> {
        let name = field.name.get(&self.bytes);
        if !name.eq_ignore_ascii_case(b"transfer-encoding") {
            return None;
        }
        let chunked = framing == OutFraming::Chunked;
        if chunked {
            write_line(name, field.value.get(&self.bytes), out);
        }
        Some(chunked)
    }

    /// The whole line as received, its spacing included.
    fn write_line_as_received(&self, field: &Field, out: &mut BytesMut) {
        let start = field.name.start as usize;
        out.put_slice(&self.bytes[start..line_end(&self.bytes, start)]);
        out.put_slice(b"\r\n");
    }

    /// The index of the first field line with the same name as line `at`.
    fn first_line_of(&self, at: usize) -> usize {
        let name = self.fields[at].name.get(&self.bytes);
        self.fields[..at]
            .iter()
            .position(|field| {
                let other = field.name.get(&self.bytes);
                other.len() == name.len() && other.eq_ignore_ascii_case(name)
            })
            .unwrap_or(at)
    }

    /// Whether the parts hold exactly the values the received lines named `name` (the first
    /// at line `first`) had, in the same order.
    fn values_unchanged(&self, first: usize, name: &str, headers: &HeaderMap) -> bool {
        let mut received = self.fields[first..].iter().filter(|field| {
            let other = field.name.get(&self.bytes);
            other.len() == name.len() && other.eq_ignore_ascii_case(name.as_bytes())
        });
        let mut current = headers.get_all(name).iter();
        loop {
            match (received.next(), current.next()) {
                (None, None) => return true,
                (Some(field), Some(value)) if field.value.get(&self.bytes) == value.as_bytes() => {}
                _ => return false,
            }
        }
    }

    fn has_field(&self, name: &str) -> bool {
        self.fields.iter().any(|field| {
            let other = field.name.get(&self.bytes);
            other.len() == name.len() && other.eq_ignore_ascii_case(name.as_bytes())
        })
    }
}

fn write_line(name: &[u8], value: &[u8], out: &mut BytesMut) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests;
