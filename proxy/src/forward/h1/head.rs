//! Request and response heads on `httparse`, checked for everything that decides framing.
//!
//! A parse keeps the head's bytes where they are: fields are recorded as offsets into the
//! caller's buffer, in the order, case and repetition they arrived, so forwarding can write the
//! original bytes. The facts the proxy acts on (body framing, keep-alive, upgrade, Host,
//! `Expect`) are derived once, after every rule below held.
//!
//! Rules (RFC 9112 unless noted): leading empty lines before a request-line are skipped (§2.2);
//! every line ends in CRLF, with no bare CR, bare LF or NUL anywhere in the head (§2.2: a
//! recipient *may* accept a bare LF; this proxy forwards the bytes as received, so it refuses
//! them rather than let the next hop read the head differently); no whitespace between a field
//! name and its colon, no obs-fold (§5.1, §5.2, both refused by `httparse`), no framing field
//! spelled with an underscore (`Content_Length`, see `is_framing_alias`); the head fits
//! `max_head_bytes` and `max_fields` (431); the request-target has the form its method allows
//! (§3.2), without userinfo (RFC 9110 §4.2.4); Host per §3.2; Content-Length and
//! Transfer-Encoding per §6.1–§6.3 and RFC 9110 §8.6 (see [`body_fields`]).

use std::mem::MaybeUninit;

use super::error::HeadError;
use super::target::{self, TargetForm};

/// Default head limit, `MESHTRACE_HTTP1_MAX_HEADER_BYTES`' default.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most fields a head may carry; also the size of the parser's field slots (on the stack).
pub const MAX_FIELDS: usize = 1_000;

/// Bounds of one head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes from the start line's first byte to the blank line's LF, inclusive, plus any empty
    /// lines skipped before a request-line.
    pub max_head_bytes: usize,
    /// Field lines; at most [`MAX_FIELDS`].
    pub max_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_fields: MAX_FIELDS,
        }
    }
}

/// A byte range of the head buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    /// The bytes this span covers in `buf`, the buffer the head was parsed from.
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// The fields the proxy itself reads; every other field is `Other` and passes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    Te,
    /// `traceparent`, `tracestate`, `b3`, `x-b3-*`, `l5d-sample`.
    Trace,
    Other,
}

impl FieldKind {
    fn of(name: &[u8]) -> FieldKind {
        const NAMES: [(&str, FieldKind); 16] = [
            ("host", FieldKind::Host),
            ("content-length", FieldKind::ContentLength),
            ("transfer-encoding", FieldKind::TransferEncoding),
            ("connection", FieldKind::Connection),
            ("upgrade", FieldKind::Upgrade),
            ("expect", FieldKind::Expect),
            ("te", FieldKind::Te),
            ("traceparent", FieldKind::Trace),
            ("tracestate", FieldKind::Trace),
            ("b3", FieldKind::Trace),
            ("x-b3-traceid", FieldKind::Trace),
            ("x-b3-spanid", FieldKind::Trace),
            ("x-b3-parentspanid", FieldKind::Trace),
            ("x-b3-sampled", FieldKind::Trace),
            ("x-b3-flags", FieldKind::Trace),
            ("l5d-sample", FieldKind::Trace),
        ];
        NAMES
            .iter()
            .find(|(known, _)| {
                known.len() == name.len() && known.as_bytes().eq_ignore_ascii_case(name)
            })
            .map_or(FieldKind::Other, |(_, kind)| *kind)
    }
}

/// One field line, as offsets into the head buffer; `value` is without surrounding whitespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: Span,
    pub value: Span,
    pub kind: FieldKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// The methods whose semantics change framing or the target's form (RFC 9110 §9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Head,
    Connect,
    Options,
    Other,
}

impl Method {
    fn of(token: &[u8]) -> Method {
        match token {
            b"HEAD" => Method::Head,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// What the framing fields say, once they were found unambiguous.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyFields {
    pub content_length: Option<u64>,
    pub chunked: bool,
}

/// What the `Connection` (and `Upgrade`) fields ask of this hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionFacts {
    /// RFC 9112 §9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only with `keep-alive`.
    pub keep_alive: bool,
    /// `Upgrade` present and named in `Connection` on an HTTP/1.1 message (RFC 9110 §7.8).
    pub upgrade: bool,
}

/// A checked request head: where its parts are in the buffer, and what it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Offset of the request-line (after skipped empty lines).
    pub start: usize,
    /// Offset just past the blank line: where the body (or the next message) begins.
    pub end: usize,
    pub method: Method,
    pub method_span: Span,
    pub target: Span,
    pub target_form: TargetForm,
    pub version: Version,
    /// The authority to route by: the Host value, or the target's authority.
    pub authority: Option<Span>,
    pub body: BodyFields,
    pub connection: ConnectionFacts,
    /// `Expect: 100-continue` (RFC 9110 §10.1.1).
    pub expect_continue: bool,
    /// A Host-class refusal ([`HeadError::is_host_class`]) that [`parse_request_deferring_host`]
    /// left for the service stack to answer; always `None` from [`parse_request`].
    pub host_error: Option<HeadError>,
}

/// A checked response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub start: usize,
    pub end: usize,
    pub version: Version,
    pub status: u16,
    pub body: BodyFields,
    pub connection: ConnectionFacts,
}

/// Parses and checks a request head at the start of `buf`. `Ok(None)`: not complete yet (and
/// within the limits); read more. `fields` is cleared and receives the head's field lines.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
    fields: &mut Vec<Field>,
) -> Result<Option<RequestHead>, HeadError> {
    match parse_request_deferring_host(buf, limits, fields)? {
        Some(RequestHead {
            host_error: Some(error),
            ..
        }) => Err(error),
        head => Ok(head),
    }
}

/// As [`parse_request`], except that a head whose only fault is its Host or userinfo (where
/// the request goes, not how it is framed) is returned with that fault in `host_error` and no
/// `authority`: the proxy's service stack refuses it (`forward::validate`), so that it is
/// answered, counted and traced as on every other path.
pub fn parse_request_deferring_host(
    buf: &[u8],
    limits: &Limits,
    fields: &mut Vec<Field>,
) -> Result<Option<RequestHead>, HeadError> {
    let start = skip_empty_lines(buf);
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        &buf[start..],
        &mut slots[..limits.max_fields.min(MAX_FIELDS)],
    );
    let Some(len) = complete(parsed, start, buf.len(), limits)? else {
        return Ok(None);
    };
    let end = start + len;
    check_line_endings(&buf[start..end])?;
    record_fields(buf, req.headers, fields)?;
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::StartLine);
    };
    let version = version(minor)?;
    let method_span = Span::of(buf, method.as_bytes());
    let method = Method::of(method.as_bytes());
    let target = Span::of(buf, path.as_bytes());
    let (parsed_target, mut host_error) = match target::parse(method, path.as_bytes()) {
        Err(error) if error.is_host_class() => {
            (target::ParsedTarget::unrouted(method), Some(error))
        }
        parsed => (parsed?, None),
    };
    let authority = match target::check_host(buf, fields, version, &parsed_target, target.start) {
        _ if host_error.is_some() => None,
        Err(error) if error.is_host_class() => {
            host_error = Some(error);
            None
        }
        checked => checked?,
    };
    Ok(Some(RequestHead {
        start,
        end,
        method,
        method_span,
        target,
        target_form: parsed_target.form,
        version,
        authority,
        body: body_fields(buf, fields, version)?,
        connection: connection_facts(buf, fields, version),
        expect_continue: expect_continue(buf, fields),
        host_error,
    }))
}

/// Parses and checks a response head at the start of `buf`; as [`parse_request`].
pub fn parse_response(
    buf: &[u8],
    limits: &Limits,
    fields: &mut Vec<Field>,
) -> Result<Option<ResponseHead>, HeadError> {
    let start = skip_empty_lines(buf);
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        &buf[start..],
        &mut slots[..limits.max_fields.min(MAX_FIELDS)],
    );
    let Some(len) = complete(parsed, start, buf.len(), limits)? else {
        return Ok(None);
    };
    let end = start + len;
    check_line_endings(&buf[start..end])?;
    record_fields(buf, res.headers, fields)?;
    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(HeadError::StartLine);
    };
    let version = version(minor)?;
    Ok(Some(ResponseHead {
        start,
        end,
        version,
        status,
        body: body_fields(buf, fields, version)?,
        connection: connection_facts(buf, fields, version),
    }))
}

/// RFC 9112 §2.2: a server SHOULD ignore at least one empty line (CRLF) received before the
/// request-line. Only CRLF pairs are skipped; a bare LF is left for the parser to refuse.
fn skip_empty_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    while buf.get(at..at + 2) == Some(b"\r\n") {
        at += 2;
    }
    at
}

/// The head's length once complete and within the limits. The skipped empty lines before it
/// (`skipped` bytes) count towards the limit, so that they cannot grow a buffer without bound.
fn complete(
    parsed: httparse::Result<usize>,
    skipped: usize,
    available: usize,
    limits: &Limits,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if skipped + len > limits.max_head_bytes => {
            Err(HeadError::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if available >= limits.max_head_bytes => {
            Err(HeadError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyFields),
        Err(httparse::Error::Version) => Err(HeadError::Version),
        Err(httparse::Error::Token | httparse::Error::Status) => Err(HeadError::StartLine),
        Err(httparse::Error::NewLine) => Err(HeadError::LineEnding),
        Err(_) => Err(HeadError::FieldSyntax),
    }
}

/// RFC 9112 §2.2: lines end in CRLF; a bare CR is refused, and so (here) is a bare LF and NUL.
fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    let mut previous = 0u8;
    for (at, &byte) in head.iter().enumerate() {
        let bad = match byte {
            0 => true,
            b'\n' => previous != b'\r',
            b'\r' => head.get(at + 1) != Some(&b'\n'),
            _ => false,
        };
        if bad {
            return Err(HeadError::LineEnding);
        }
        previous = byte;
    }
    Ok(())
}

fn version(minor: u8) -> Result<Version, HeadError> {
    match minor {
        0 => Ok(Version::Http10),
        1 => Ok(Version::Http11),
        _ => Err(HeadError::Version),
    }
}

fn record_fields(
    buf: &[u8],
    parsed: &[httparse::Header<'_>],
    fields: &mut Vec<Field>,
) -> Result<(), HeadError> {
    fields.clear();
    for header in parsed {
        let kind = FieldKind::of(header.name.as_bytes());
        if kind == FieldKind::Other && is_framing_alias(header.name.as_bytes()) {
            return Err(HeadError::FramingFieldAlias);
        }
        fields.push(Field {
            name: Span::of(buf, header.name.as_bytes()),
            value: Span::of(buf, trim_ows(header.value)),
            kind,
        });
    }
    Ok(())
}

/// `Content_Length` / `Transfer_Encoding`: legal field names (`_` is a tchar), but servers that
/// map `_` to `-` (CGI-style header maps) would read them as framing fields this proxy ignored,
/// the next hop framing the message differently: a smuggling shape, refused.
fn is_framing_alias(name: &[u8]) -> bool {
    let alias = |framing: &[u8]| {
        name.len() == framing.len()
            && name
                .iter()
                .zip(framing)
                .all(|(n, f)| n.eq_ignore_ascii_case(f) || (*n == b'_' && *f == b'-'))
    };
    alias(b"content-length") || alias(b"transfer-encoding")
}

/// Without leading and trailing SP / HTAB (RFC 9110 §5.5 OWS).
pub(super) fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |at| at + 1);
    &value[start..end]
}

/// The elements of the comma-separated lists in every `kind` field, trimmed (RFC 9110 §5.6.1).
fn list_elements<'a>(
    buf: &'a [u8],
    fields: &'a [Field],
    kind: FieldKind,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    fields
        .iter()
        .filter(move |field| field.kind == kind)
        .flat_map(move |field| field.value.get(buf).split(|b| *b == b','))
        .map(trim_ows)
}

/// Content-Length and Transfer-Encoding, refused wherever two recipients could disagree.
///
/// - Transfer-Encoding (all its field lines read as one list, RFC 9110 §5.3): every element a
///   bare token, `chunked` exactly once and last (§6.1, §6.3 item 4: otherwise 400), other
///   codings only from the registered compression codings (else 501, §6.1), and never in an
///   HTTP/1.0 message (§6.1: its framing is faulty). Responses are held to the same rule:
///   a response whose Transfer-Encoding does not end in `chunked` is refused (not read
///   close-delimited), because the proxy never forwards framing it did not fully understand.
/// - Content-Length: exactly one field line holding `1*DIGIT` that fits in 64 bits. RFC 9110
///   §8.6 lets a recipient either reject a list of identical values (`5, 5`, or two lines of
///   `5`) or replace it with one value; the proxy forwards the head's bytes unchanged and so
///   cannot replace, hence it rejects every list and every repetition.
/// - Both present: refused (§6.3 item 3 allows it and it is the CL.TE / TE.CL smuggling shape).
pub fn body_fields(
    buf: &[u8],
    fields: &[Field],
    version: Version,
) -> Result<BodyFields, HeadError> {
    let chunked = transfer_encoding(buf, fields, version)?;
    let content_length = content_length(buf, fields)?;
    if chunked && content_length.is_some() {
        return Err(HeadError::ContentLengthWithTransferEncoding);
    }
    Ok(BodyFields {
        content_length,
        chunked,
    })
}

/// `true` when Transfer-Encoding is present (and then valid, ending in `chunked`).
fn transfer_encoding(buf: &[u8], fields: &[Field], version: Version) -> Result<bool, HeadError> {
    let present = fields.iter().any(|f| f.kind == FieldKind::TransferEncoding);
    if !present {
        return Ok(false);
    }
    if fields.iter().any(|f| f.kind == FieldKind::ContentLength) {
        return Err(HeadError::ContentLengthWithTransferEncoding);
    }
    if version == Version::Http10 {
        return Err(HeadError::TransferEncodingHttp10);
    }
    let mut elements = list_elements(buf, fields, FieldKind::TransferEncoding).peekable();
    let mut unknown = false;
    while let Some(coding) = elements.next() {
        if coding.is_empty() || !coding.iter().all(|b| target::is_tchar(*b)) {
            return Err(HeadError::TransferEncodingInvalid);
        }
        let is_chunked = coding.eq_ignore_ascii_case(b"chunked");
        let last = elements.peek().is_none();
        if is_chunked != last {
            return Err(HeadError::TransferEncodingInvalid);
        }
        unknown |= !is_chunked && !is_compression(coding);
    }
    if unknown {
        return Err(HeadError::TransferCodingUnknown);
    }
    Ok(true)
}

/// The codings of the HTTP Transfer Coding Registry besides `chunked` (RFC 9112 §7).
fn is_compression(coding: &[u8]) -> bool {
    [
        &b"gzip"[..],
        b"x-gzip",
        b"deflate",
        b"compress",
        b"x-compress",
    ]
    .iter()
    .any(|known| coding.eq_ignore_ascii_case(known))
}

fn content_length(buf: &[u8], fields: &[Field]) -> Result<Option<u64>, HeadError> {
    let mut lines = fields.iter().filter(|f| f.kind == FieldKind::ContentLength);
    let Some(field) = lines.next() else {
        return Ok(None);
    };
    if lines.next().is_some() || field.value.get(buf).contains(&b',') {
        return Err(HeadError::ContentLengthRepeated);
    }
    parse_decimal(field.value.get(buf))
        .map(Some)
        .ok_or(HeadError::ContentLengthInvalid)
}

/// `1*DIGIT` into a u64, or `None` (empty, a sign, a space, any other byte, or overflow).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &b| {
        let digit = (b as char).to_digit(10)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

fn connection_facts(buf: &[u8], fields: &[Field], version: Version) -> ConnectionFacts {
    let (mut close, mut keep_alive, mut upgrade) = (false, false, false);
    for option in list_elements(buf, fields, FieldKind::Connection) {
        close |= option.eq_ignore_ascii_case(b"close");
        keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
        upgrade |= option.eq_ignore_ascii_case(b"upgrade");
    }
    let has_upgrade = fields.iter().any(|f| f.kind == FieldKind::Upgrade);
    ConnectionFacts {
        keep_alive: !close && (version == Version::Http11 || keep_alive),
        upgrade: version == Version::Http11 && upgrade && has_upgrade,
    }
}

fn expect_continue(buf: &[u8], fields: &[Field]) -> bool {
    list_elements(buf, fields, FieldKind::Expect).any(|e| e.eq_ignore_ascii_case(b"100-continue"))
}
