//! Span attributes from OpenTelemetry's stable HTTP semantic conventions (plus `rpc.*` for
//! gRPC and `meshtrace.direction`).
//!
//! Only computed for sampled requests. Never reads credentials: `Authorization`,
//! `Proxy-Authorization`, `Cookie` and `Set-Cookie` are never looked at, URLs are rebuilt from
//! host, port and path so userinfo and query strings cannot leak into a span.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

#[cfg(test)]
use http::header::{HeaderMap, CONTENT_TYPE, HOST, USER_AGENT};
use http::request::Parts;
use http::uri::Authority;
use http::{HeaderValue, Method, Version};

use crate::meta::ConnMeta;
use crate::span::{attributes_with_capacity, AttrValue, SharedStr};

use super::naming::{known_method, push_span_name, SpanNaming};

pub use crate::span::Attributes;

pub const DIRECTION: &str = "meshtrace.direction";
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_REQUEST_METHOD_ORIGINAL: &str = "http.request.method_original";
pub const URL_PATH: &str = "url.path";
pub const URL_SCHEME: &str = "url.scheme";
pub const URL_FULL: &str = "url.full";
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const CLIENT_ADDRESS: &str = "client.address";
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
pub const NETWORK_PEER_PORT: &str = "network.peer.port";
pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const HTTP_REQUEST_BODY_SIZE: &str = "http.request.body.size";
pub const HTTP_RESPONSE_BODY_SIZE: &str = "http.response.body.size";
pub const ERROR_TYPE: &str = "error.type";
pub const RPC_SYSTEM: &str = "rpc.system";
pub const RPC_SERVICE: &str = "rpc.service";
pub const RPC_METHOD: &str = "rpc.method";
pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";

/// `network.protocol.version` values.
pub fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "unknown",
    }
}

/// Whether the request is gRPC (`content-type: application/grpc[+proto|...]`).
#[cfg(test)]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    grpc_content_type(headers.get(CONTENT_TYPE))
}

fn grpc_content_type(content_type: Option<&HeaderValue>) -> bool {
    content_type.is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The request headers the span attributes read (each header's first value). The SERVER
/// layer takes them from the scan that finds the propagation headers, with no lookup of its
/// own.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHeaders<'a> {
    pub host: Option<&'a HeaderValue>,
    pub user_agent: Option<&'a HeaderValue>,
    pub content_type: Option<&'a HeaderValue>,
}

impl<'a> RequestHeaders<'a> {
    #[cfg(test)]
    pub fn of(headers: &'a HeaderMap) -> RequestHeaders<'a> {
        RequestHeaders {
            host: headers.get(HOST),
            user_agent: headers.get(USER_AGENT),
            content_type: headers.get(CONTENT_TYPE),
        }
    }

    /// Whether the request is gRPC (see [`is_grpc`]).
    pub fn is_grpc(&self) -> bool {
        grpc_content_type(self.content_type)
    }

    fn user_agent(&self) -> Option<&'a str> {
        self.user_agent.and_then(|v| v.to_str().ok())
    }
}

/// `(rpc.service, rpc.method)` from a gRPC path `/{package.Service}/{Method}`.
pub fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

fn push_method(attrs: &mut Attributes, method: &Method) {
    match known_method(method) {
        Some(name) => attrs.push((HTTP_REQUEST_METHOD, AttrValue::Static(name))),
        None => {
            attrs.push((HTTP_REQUEST_METHOD, AttrValue::Static("_OTHER")));
            attrs.push((
                HTTP_REQUEST_METHOD_ORIGINAL,
                AttrValue::String(method.as_str().to_owned()),
            ));
        }
    }
}

/// The host and port the request was addressed to: the URI authority (HTTP/2, absolute
/// form), else the `Host` header (`host`, the request's). Userinfo is never part of the
/// result. A plain `name[:port]` header is read in place; any other is parsed, and `known` is
/// one already parsed for this request: reused when the header is the same, so the header is
/// parsed (and copied) once per request, not once per span.
pub fn addressed<'a>(
    req: &'a Parts,
    host: Option<&'a HeaderValue>,
    known: Option<&'a Authority>,
) -> Option<Addressed<'a>> {
    if let Some(authority) = req.uri.authority() {
        return Some(Addressed::Borrowed(authority));
    }
    let host = host?;
    if let Some(plain) = plain_host(host.as_bytes()) {
        return Some(Addressed::Plain(plain));
    }
    if let Some(known) = known.filter(|k| k.as_str().as_bytes() == host.as_bytes()) {
        return Some(Addressed::Borrowed(known));
    }
    Authority::try_from(host.as_bytes())
        .ok()
        .map(Addressed::Parsed)
}

/// [`addressed`] with the request's own `Host` header.
#[cfg(test)]
pub fn target_authority<'a>(req: &'a Parts, known: Option<&'a Authority>) -> Option<Addressed<'a>> {
    addressed(req, req.headers.get(HOST), known)
}

/// Where a request was addressed (see [`addressed`]).
#[derive(Debug)]
pub enum Addressed<'a> {
    /// The URI's authority, or one already parsed for this request.
    Borrowed(&'a Authority),
    /// The `Host` header, parsed.
    Parsed(Authority),
    /// A plain `name[:port]` `Host` header, read in place.
    Plain(&'a str),
}

impl Addressed<'_> {
    pub fn target(&self) -> Target<'_> {
        match self {
            Addressed::Borrowed(authority) => Target::of(authority),
            Addressed::Parsed(authority) => Target::of(authority),
            Addressed::Plain(text) => Target::of_plain(text),
        }
    }

    /// The parsed `Host` header, for the CLIENT span to reuse.
    pub fn into_parsed(self) -> Option<Authority> {
        match self {
            Addressed::Parsed(authority) => Some(authority),
            Addressed::Borrowed(_) | Addressed::Plain(_) => None,
        }
    }
}

/// `name[:port]`, the name letters, digits, dots and dashes, the port a number below 65536:
/// what nearly every `Host` header is. The `http` crate accepts each of these as an authority
/// and splits it at the colon, so it need not parse (and copy) them; anything else it parses.
fn plain_host(value: &[u8]) -> Option<&str> {
    let (name, port) = match value.iter().position(|&c| c == b':') {
        Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
        None => (value, None),
    };
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
    let port_ok = port.is_none_or(|port| {
        (1..=5).contains(&port.len())
            && port.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some()
    });
    if name_ok && port_ok {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// An authority's host (brackets kept) and port, parsed once: `Authority::host` and `port`
/// parse the authority again on every call.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The authority as written.
    raw: &'a str,
    host: &'a str,
    /// As written, and as a number.
    port: Option<(&'a str, u16)>,
}

impl<'a> Target<'a> {
    fn of(authority: &'a Authority) -> Target<'a> {
        // What `Authority::port` does, keeping the text's lifetime.
        let text = authority.as_str();
        let port = text.rfind(':').and_then(|colon| {
            let port = text.get(colon + 1..)?;
            Some((port, port.parse::<u16>().ok()?))
        });
        Target {
            raw: text,
            host: authority.host(),
            port,
        }
    }

    /// A [`plain_host`].
    fn of_plain(text: &'a str) -> Target<'a> {
        match text.split_once(':') {
            Some((host, port)) => Target {
                raw: text,
                host,
                port: port.parse::<u16>().ok().map(|n| (port, n)),
            },
            None => Target {
                raw: text,
                host: text,
                port: None,
            },
        }
    }
}

fn scheme(req: &Parts) -> &'static str {
    match req.uri.scheme_str() {
        Some("https") => "https",
        _ => "http",
    }
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The strings of one sampled request that its spans record, copied once into one shared
/// allocation: the span name, path, target host, user agent and gRPC method. Both spans of the
/// request take slices of it instead of a `String` per attribute. The text is held once and
/// its strings as ranges, so making it costs one reference count, not one per string.
#[derive(Debug)]
pub struct RequestText {
    text: Arc<str>,
    name: TextRange,
    path: TextRange,
    /// `server.address` from the request's authority (brackets stripped).
    host: Option<TextRange>,
    user_agent: Option<TextRange>,
    rpc_service: Option<TextRange>,
    rpc_method: Option<TextRange>,
    /// `url.full` of the CLIENT span if the request is forwarded as received.
    url_full: Option<TextRange>,
    /// The scheme and authority the request was addressed to, as written, and its port.
    scheme: &'static str,
    authority: Option<TextRange>,
    port: Option<u16>,
    /// The W3C `tracestate` the request's spans record.
    trace_state: Option<TextRange>,
}

/// A range of a [`RequestText`]'s text.
#[derive(Clone, Copy, Debug)]
struct TextRange {
    start: u32,
    end: u32,
}

impl TextRange {
    /// Request text is bounded by the HTTP server's header limits, far below 4 GiB.
    fn of(range: Range<usize>) -> TextRange {
        match (u32::try_from(range.start), u32::try_from(range.end)) {
            (Ok(start), Ok(end)) => TextRange { start, end },
            _ => TextRange { start: 0, end: 0 },
        }
    }
}

thread_local! {
    /// Where a request's text is assembled before its one allocation; reused per thread.
    static SCRATCH: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// A scratch buffer that grew past this is not kept.
const MAX_KEPT_SCRATCH: usize = 16 * 1024;

impl RequestText {
    /// Assembles the text of a request as the SERVER layer sees it.
    pub fn new(
        naming: SpanNaming,
        req: &Parts,
        headers: &RequestHeaders<'_>,
        target: Option<Target<'_>>,
        orig_dst: Option<SocketAddr>,
        grpc: bool,
        trace_state: Option<&str>,
    ) -> RequestText {
        let build = |s: &mut String| {
            s.clear();
            let path = req.uri.path();
            let name = {
                let start = s.len();
                push_span_name(s, naming, &req.method, path);
                start..s.len()
            };
            let mut push = |value: &str| {
                let start = s.len();
                s.push_str(value);
                start..s.len()
            };
            let path_range = push(path);
            let host = target.map(|t| push(strip_brackets(t.host)));
            let authority = target.map(|t| push(t.raw));
            let agent = headers.user_agent().map(&mut push);
            let rpc = if grpc { grpc_method(path) } else { None }
                .map(|(service, method)| (push(service), push(method)));
            let trace_state = trace_state.map(&mut push);
            let url_start = s.len();
            let url =
                push_url_full(s, scheme(req), target, orig_dst, path).then_some(url_start..s.len());
            RequestText {
                text: Arc::from(s.as_str()),
                name: TextRange::of(name),
                path: TextRange::of(path_range),
                host: host.map(TextRange::of),
                user_agent: agent.map(TextRange::of),
                rpc_service: rpc
                    .as_ref()
                    .map(|(service, _)| TextRange::of(service.clone())),
                rpc_method: rpc.map(|(_, method)| TextRange::of(method)),
                url_full: url.map(TextRange::of),
                scheme: scheme(req),
                authority: authority.map(TextRange::of),
                port: target.and_then(|t| t.port).map(|(_, port)| port),
                trace_state: trace_state.map(TextRange::of),
            }
        };
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                let text = build(&mut scratch);
                if scratch.capacity() > MAX_KEPT_SCRATCH {
                    *scratch = String::with_capacity(256);
                }
                text
            }
            Err(_) => build(&mut String::new()),
        })
    }

    fn str(&self, range: TextRange) -> &str {
        self.text
            .get(range.start as usize..range.end as usize)
            .unwrap_or_default()
    }

    /// A range of the text as an attribute value of a span named by this text.
    fn attr(&self, range: TextRange) -> AttrValue {
        AttrValue::Text {
            start: range.start,
            end: range.end,
        }
    }

    fn shared(&self, range: TextRange) -> SharedStr {
        SharedStr::from_parts(self.text.clone(), range.start, range.end)
    }

    /// The span name.
    pub fn name(&self) -> SharedStr {
        self.shared(self.name)
    }

    /// The W3C `tracestate` the request's spans record.
    pub fn trace_state(&self) -> Option<SharedStr> {
        self.trace_state.map(|r| self.shared(r))
    }

    #[cfg(test)]
    pub fn path(&self) -> &str {
        self.str(self.path)
    }

    #[cfg(test)]
    pub fn host(&self) -> Option<&str> {
        self.host.map(|r| self.str(r))
    }

    #[cfg(test)]
    pub fn user_agent(&self) -> Option<&str> {
        self.user_agent.map(|r| self.str(r))
    }

    #[cfg(test)]
    pub fn url_full(&self) -> Option<&str> {
        self.url_full.map(|r| self.str(r))
    }

    /// Whether `req` is still addressed as it was when this text was made (same scheme,
    /// authority and path), so that what was read from it then holds.
    fn addressed_as_made(&self, req: &Parts, host: Option<&HeaderValue>) -> bool {
        let now = match req.uri.authority() {
            Some(authority) => Some(authority.as_str().as_bytes()),
            None => host.map(HeaderValue::as_bytes),
        };
        let then = self.authority.map(|range| self.str(range).as_bytes());
        now == then && self.str(self.path) == req.uri.path() && self.scheme == scheme(req)
    }

    /// `value` as an attribute value: a slice of this text when it is one of its strings (the
    /// CLIENT span usually records what the SERVER span did), else a copy.
    pub fn value(&self, value: &str) -> AttrValue {
        [
            self.host,
            self.user_agent,
            self.rpc_service,
            self.rpc_method,
            Some(self.path),
        ]
        .into_iter()
        .flatten()
        .find(|known| self.str(*known) == value)
        .map_or_else(
            || AttrValue::String(value.to_owned()),
            |known| self.attr(known),
        )
    }
}

/// `server.address` and `server.port` of an authority: its host as `text` has it, and its port
/// or the scheme's.
fn server_target(target: Target<'_>, text: &RequestText, scheme: &str) -> (AttrValue, u16) {
    let port = target.port.map_or(default_port(scheme), |(_, port)| port);
    (text.value(strip_brackets(target.host)), port)
}

/// `server.address` and `server.port`: from the authority (see [`server_target`]), else from
/// `fallback`.
fn push_server_target(
    attrs: &mut Attributes,
    target: Option<(AttrValue, u16)>,
    fallback: Option<SocketAddr>,
) {
    match (target, fallback) {
        (Some((address, port)), _) => {
            attrs.push((SERVER_ADDRESS, address));
            attrs.push((SERVER_PORT, AttrValue::Int(i64::from(port))));
        }
        (None, Some(addr)) => {
            attrs.push((SERVER_ADDRESS, AttrValue::Ip(addr.ip())));
            attrs.push((SERVER_PORT, AttrValue::Int(i64::from(addr.port()))));
        }
        (None, None) => {}
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

fn push_peer(attrs: &mut Attributes, peer: SocketAddr) {
    attrs.push((NETWORK_PEER_ADDRESS, AttrValue::Ip(peer.ip())));
    attrs.push((NETWORK_PEER_PORT, AttrValue::Int(i64::from(peer.port()))));
}

fn push_common(
    attrs: &mut Attributes,
    req: &Parts,
    headers: &RequestHeaders<'_>,
    conn: Option<&ConnMeta>,
    grpc: bool,
    text: &RequestText,
) {
    if let Some(conn) = conn {
        attrs.push((DIRECTION, AttrValue::Static(conn.direction.as_str())));
    }
    push_method(attrs, &req.method);
    attrs.push((
        NETWORK_PROTOCOL_VERSION,
        AttrValue::Static(protocol_version(req.version)),
    ));
    if let Some(agent) = headers.user_agent() {
        attrs.push((USER_AGENT_ORIGINAL, text.value(agent)));
    }
    if grpc {
        attrs.push((RPC_SYSTEM, AttrValue::Static("grpc")));
        if let Some((service, method)) = grpc_method(req.uri.path()) {
            attrs.push((RPC_SERVICE, text.value(service)));
            attrs.push((RPC_METHOD, text.value(method)));
        }
    }
}

/// Attribute capacity: what is known at the start plus what `finish` adds, so a span's
/// attributes are one allocation.
fn capacity(base: usize, grpc: bool) -> usize {
    base + if grpc { 4 } else { 0 }
}

/// Attributes of the SERVER span known when the request arrives. `target` is where the
/// request was [`addressed`].
pub fn server(
    req: &Parts,
    headers: &RequestHeaders<'_>,
    conn: Option<&ConnMeta>,
    grpc: bool,
    target: Option<Target<'_>>,
    text: &RequestText,
) -> Attributes {
    let mut attrs = attributes_with_capacity(capacity(16, grpc));
    push_common(&mut attrs, req, headers, conn, grpc, text);
    let scheme = scheme(req);
    attrs.push((URL_PATH, text.attr(text.path)));
    attrs.push((URL_SCHEME, AttrValue::Static(scheme)));
    let fallback = conn.map(|c| c.orig_dst.unwrap_or(c.local_addr));
    let target = target.map(|target| server_target(target, text, scheme));
    push_server_target(&mut attrs, target, fallback);
    if let Some(conn) = conn {
        attrs.push((CLIENT_ADDRESS, AttrValue::Ip(conn.client_addr.ip())));
        push_peer(&mut attrs, conn.client_addr);
    }
    attrs
}

/// Attributes of the CLIENT span known when the request is forwarded. `known` is the
/// authority the SERVER span parsed, if any (see [`addressed`]).
pub fn client(
    req: &Parts,
    headers: &RequestHeaders<'_>,
    conn: Option<&ConnMeta>,
    grpc: bool,
    known: Option<&Authority>,
    text: &RequestText,
) -> Attributes {
    let mut attrs = attributes_with_capacity(capacity(14, grpc));
    push_common(&mut attrs, req, headers, conn, grpc, text);
    let scheme = scheme(req);
    let orig_dst = conn.and_then(|c| c.orig_dst);
    if text.addressed_as_made(req, headers.host) {
        // Forwarded as it arrived (nothing between the layers readdresses a request): what
        // the SERVER layer read from the authority holds, and is not parsed again.
        if let Some(url) = text.url_full {
            attrs.push((URL_FULL, text.attr(url)));
        }
        let target = text
            .host
            .map(|host| (text.attr(host), text.port.unwrap_or(default_port(scheme))));
        push_server_target(&mut attrs, target, orig_dst);
        return attrs;
    }
    let authority = addressed(req, headers.host, known);
    let target = authority.as_ref().map(Addressed::target);
    let url = SCRATCH.with(|scratch| {
        let mut scratch = scratch.try_borrow_mut().ok()?;
        scratch.clear();
        if !push_url_full(&mut scratch, scheme, target, orig_dst, req.uri.path()) {
            return Some(None);
        }
        Some(Some(match text.url_full {
            Some(known) if text.str(known) == scratch.as_str() => text.attr(known),
            _ => AttrValue::String(scratch.clone()),
        }))
    });
    let url = url.unwrap_or_else(|| {
        let mut url = String::new();
        push_url_full(&mut url, scheme, target, orig_dst, req.uri.path())
            .then_some(AttrValue::String(url))
    });
    if let Some(url) = url {
        attrs.push((URL_FULL, url));
    }
    let target = target.map(|target| server_target(target, text, scheme));
    push_server_target(&mut attrs, target, orig_dst);
    attrs
}

/// Appends `url.full`, `scheme://host[:port]/path` (no userinfo, no query, no fragment), to
/// `out`; false (and nothing appended) when there is no target.
fn push_url_full(
    out: &mut String,
    scheme: &str,
    target: Option<Target<'_>>,
    fallback: Option<SocketAddr>,
    path: &str,
) -> bool {
    let path = if path.is_empty() { "/" } else { path };
    match (target, fallback) {
        (Some(target), _) => {
            out.push_str(scheme);
            out.push_str("://");
            out.push_str(target.host);
            if let Some((port, _)) = target.port {
                out.push(':');
                out.push_str(port);
            }
        }
        (None, Some(addr)) => {
            use std::fmt::Write;
            out.push_str(scheme);
            // Writing to a String cannot fail.
            let _ = write!(out, "://{addr}");
        }
        (None, None) => return false,
    }
    out.push_str(path);
    true
}

/// Adds the network peer after the response, for the CLIENT span.
pub fn push_upstream_peer(attrs: &mut Attributes, peer: SocketAddr) {
    push_peer(attrs, peer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Direction;
    use http::Request;
    use std::sync::Arc;

    fn conn() -> Arc<ConnMeta> {
        Arc::new(ConnMeta {
            direction: Direction::Inbound,
            client_addr: "10.0.0.7:51000".parse().unwrap(),
            local_addr: "10.0.0.9:4143".parse().unwrap(),
            orig_dst: Some("10.0.0.9:8080".parse().unwrap()),
        })
    }

    /// The attribute's value, strings normalised to `String` whatever their representation.
    fn get(attrs: &Attributes, key: &str) -> Option<AttrValue> {
        let value = attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)?;
        Some(match value {
            AttrValue::Static(_) | AttrValue::Int(_) | AttrValue::Bool(_) => value.clone(),
            AttrValue::Text { .. } => panic!("{key}: unresolved text; use `resolved`"),
            text => AttrValue::String(text.to_text(&SharedStr::from(""))?.into_owned()),
        })
    }

    /// `attrs` with their request-text ranges turned into the strings they are in `text`.
    fn resolved(mut attrs: Attributes, text: &RequestText) -> Attributes {
        let name = text.name();
        for (_, value) in &mut attrs {
            if let AttrValue::Text { .. } = value {
                let resolved = value.to_text(&name).map(|t| t.into_owned());
                *value = AttrValue::String(resolved.unwrap_or_default());
            }
        }
        attrs
    }

    /// Calls `attributes` with what the layers compute from a request before its attributes.
    fn with_request_text<R>(
        req: &Parts,
        conn: Option<&ConnMeta>,
        grpc: bool,
        attributes: impl FnOnce(&RequestHeaders, Option<Addressed>, &RequestText) -> R,
    ) -> R {
        let headers = RequestHeaders::of(&req.headers);
        let authority = target_authority(req, None);
        let target = authority.as_ref().map(Addressed::target);
        let orig_dst = conn.and_then(|c| c.orig_dst);
        let text = RequestText::new(
            SpanNaming::Template,
            req,
            &headers,
            target,
            orig_dst,
            grpc,
            None,
        );
        attributes(&headers, authority, &text)
    }

    /// SERVER attributes as the layer computes them.
    fn server_of(req: &Parts, conn: Option<&ConnMeta>, grpc: bool) -> Attributes {
        with_request_text(req, conn, grpc, |headers, authority, text| {
            let target = authority.as_ref().map(Addressed::target);
            resolved(server(req, headers, conn, grpc, target, text), text)
        })
    }

    /// CLIENT attributes as the layer computes them, for a request the SERVER layer saw the
    /// same way.
    fn client_of(req: &Parts, conn: Option<&ConnMeta>, grpc: bool) -> Attributes {
        with_request_text(req, conn, grpc, |headers, authority, text| {
            let known = authority.and_then(Addressed::into_parsed);
            resolved(client(req, headers, conn, grpc, known.as_ref(), text), text)
        })
    }

    fn s(v: &str) -> AttrValue {
        AttrValue::String(v.into())
    }

    fn secret_request() -> Parts {
        Request::builder()
            .method("POST")
            .uri("http://alice:hunter2@svc.ns:8080/orders/7?token=s3cr3t")
            .header("authorization", "Bearer s3cr3t")
            .header("proxy-authorization", "Basic s3cr3t")
            .header("cookie", "session=s3cr3t")
            .header("user-agent", "curl/8")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn assert_no_secrets(attrs: &Attributes) {
        let dump = format!("{attrs:?}");
        for secret in [
            "s3cr3t", "hunter2", "alice", "token", "frag", "Bearer", "session",
        ] {
            assert!(!dump.contains(secret), "{secret} leaked: {dump}");
        }
    }

    #[test]
    fn server_attributes() {
        let conn = conn();
        let req = Request::builder()
            .uri("/orders/7?x=1")
            .header("host", "svc.ns:8080")
            .header("user-agent", "curl/8")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let attrs = server_of(&req, Some(&conn), false);
        assert_eq!(get(&attrs, DIRECTION), Some(AttrValue::Static("inbound")));
        assert_eq!(
            get(&attrs, HTTP_REQUEST_METHOD),
            Some(AttrValue::Static("GET"))
        );
        assert_eq!(get(&attrs, URL_PATH), Some(s("/orders/7")));
        assert_eq!(get(&attrs, URL_SCHEME), Some(AttrValue::Static("http")));
        assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("svc.ns")));
        assert_eq!(get(&attrs, SERVER_PORT), Some(AttrValue::Int(8080)));
        assert_eq!(get(&attrs, CLIENT_ADDRESS), Some(s("10.0.0.7")));
        assert_eq!(get(&attrs, NETWORK_PEER_ADDRESS), Some(s("10.0.0.7")));
        assert_eq!(get(&attrs, NETWORK_PEER_PORT), Some(AttrValue::Int(51000)));
        assert_eq!(
            get(&attrs, NETWORK_PROTOCOL_VERSION),
            Some(AttrValue::Static("1.1"))
        );
        assert_eq!(get(&attrs, USER_AGENT_ORIGINAL), Some(s("curl/8")));
        assert_eq!(get(&attrs, RPC_SYSTEM), None);
    }

    #[test]
    fn server_target_falls_back_to_original_destination() {
        let conn = conn();
        let req = Request::builder().uri("/").body(()).unwrap().into_parts().0;
        let attrs = server_of(&req, Some(&conn), false);
        assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("10.0.0.9")));
        assert_eq!(get(&attrs, SERVER_PORT), Some(AttrValue::Int(8080)));
    }

    #[test]
    fn client_attributes_and_url_full() {
        let conn = conn();
        let req = Request::builder()
            .uri("/a/b?q=1")
            .header("host", "[::1]:9000")
            .version(Version::HTTP_2)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let attrs = client_of(&req, Some(&conn), false);
        assert_eq!(get(&attrs, URL_FULL), Some(s("http://[::1]:9000/a/b")));
        assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("::1")));
        assert_eq!(
            get(&attrs, NETWORK_PROTOCOL_VERSION),
            Some(AttrValue::Static("2"))
        );
        assert_eq!(get(&attrs, CLIENT_ADDRESS), None);

        let req = Request::builder()
            .uri("/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let attrs = client_of(&req, Some(&conn), false);
        assert_eq!(get(&attrs, URL_FULL), Some(s("http://10.0.0.9:8080/x")));
        let attrs = client_of(&req, None, false);
        assert_eq!(get(&attrs, URL_FULL), None);
        assert_eq!(get(&attrs, DIRECTION), None);
    }

    /// CLIENT attributes of `req` from a request text made for `seen`, the request as the
    /// SERVER layer saw it.
    fn client_after(seen: &Parts, req: &Parts, conn: Option<&ConnMeta>) -> Attributes {
        with_request_text(seen, conn, false, |_, authority, text| {
            let known = authority.and_then(Addressed::into_parsed);
            let headers = RequestHeaders::of(&req.headers);
            resolved(
                client(req, &headers, conn, false, known.as_ref(), text),
                text,
            )
        })
    }

    fn parts(uri: &str, host: Option<&str>) -> Parts {
        let mut builder = Request::builder().uri(uri).header("user-agent", "curl/8");
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    /// The CLIENT layer reuses what the SERVER layer read from the authority when the request
    /// is forwarded as it arrived, and reads it again when it is not: both give the same
    /// attributes as reading the forwarded request afresh.
    #[test]
    fn client_target_is_reused_only_for_an_unchanged_request() {
        let conn = conn();
        let requests = [
            parts("/a/b?q=1", Some("svc.ns:9000")),
            parts("/a", Some("svc.ns")),
            parts("/a", Some("[::1]:9000")),
            parts("/a", Some("Svc_Name:80")),
            parts("/a", None),
            parts("http://abs.example:81/p", Some("ignored:1")),
            parts("https://abs.example/p", None),
        ];
        let elsewhere = parts("/other", Some("elsewhere:1234"));
        for req in &requests {
            for conn in [Some(conn.as_ref()), None] {
                let reused = client_after(req, req, conn);
                let fresh = client_after(&elsewhere, req, conn);
                assert_eq!(reused, fresh, "{:?} {:?}", req.uri, req.headers);
                // And the other way round: a request readdressed after the SERVER layer
                // saw it is described as forwarded.
                let readdressed = client_after(req, &elsewhere, conn);
                assert_eq!(
                    get(&readdressed, SERVER_ADDRESS),
                    Some(s("elsewhere")),
                    "{:?}",
                    req.uri
                );
                assert_eq!(get(&readdressed, SERVER_PORT), Some(AttrValue::Int(1234)));
                if conn.is_some() || req.headers.contains_key("host") {
                    assert!(get(&reused, URL_FULL).is_some(), "{:?}", req.uri);
                }
            }
        }
        let path_changed = client_after(&requests[0], &parts("/c", Some("svc.ns:9000")), None);
        assert_eq!(
            get(&path_changed, URL_FULL),
            Some(s("http://svc.ns:9000/c"))
        );
    }

    #[test]
    fn never_records_credentials_query_or_userinfo() {
        let conn = conn();
        let req = secret_request();
        let server_attrs = server_of(&req, Some(&conn), false);
        let client_attrs = client_of(&req, Some(&conn), false);
        assert_no_secrets(&server_attrs);
        assert_no_secrets(&client_attrs);
        assert_eq!(
            get(&client_attrs, URL_FULL),
            Some(s("http://svc.ns:8080/orders/7"))
        );
        assert_eq!(get(&server_attrs, SERVER_ADDRESS), Some(s("svc.ns")));
    }

    #[test]
    fn grpc_attributes() {
        let req = Request::builder()
            .method("POST")
            .uri("/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert!(is_grpc(&req.headers));
        let attrs = client_of(&req, None, true);
        assert_eq!(get(&attrs, RPC_SYSTEM), Some(AttrValue::Static("grpc")));
        assert_eq!(get(&attrs, RPC_SERVICE), Some(s("helloworld.Greeter")));
        assert_eq!(get(&attrs, RPC_METHOD), Some(s("SayHello")));
        assert_eq!(grpc_method("/onlyservice"), None);
        assert_eq!(grpc_method("/a/b/c"), None);
        assert_eq!(grpc_method("//m"), None);
    }

    #[test]
    fn spans_share_one_text_per_request() {
        let conn = conn();
        let req = Request::builder()
            .uri("/orders/7")
            .header("host", "svc.ns:8080")
            .header("user-agent", "curl/8")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let headers = RequestHeaders::of(&req.headers);
        let authority = target_authority(&req, None);
        assert!(matches!(authority, Some(Addressed::Plain("svc.ns:8080"))));
        let target = authority.as_ref().map(Addressed::target);
        let text = RequestText::new(
            SpanNaming::Template,
            &req,
            &headers,
            target,
            conn.orig_dst,
            false,
            Some("k=v"),
        );
        assert_eq!(text.trace_state().as_deref(), Some("k=v"));
        assert_eq!(text.name(), "GET /orders/{id}");
        assert_eq!(text.path(), "/orders/7");
        assert_eq!(text.host().unwrap(), "svc.ns");
        assert_eq!(text.user_agent().unwrap(), "curl/8");
        // The CLIENT layer reuses the request's strings.
        let known = authority.and_then(Addressed::into_parsed);
        assert!(known.is_none(), "a plain Host header is not parsed");
        // Any other Host header is parsed once, by the SERVER layer, and reused.
        let mut bracketed = req.clone();
        bracketed
            .headers
            .insert(HOST, "[::1]:8080".parse().unwrap());
        let parsed = target_authority(&bracketed, None).and_then(Addressed::into_parsed);
        assert_eq!(parsed.as_ref().map(Authority::as_str), Some("[::1]:8080"));
        assert!(matches!(
            target_authority(&bracketed, parsed.as_ref()),
            Some(Addressed::Borrowed(known)) if std::ptr::eq(known, parsed.as_ref().unwrap())
        ));
        let attrs = client(&req, &headers, Some(&conn), false, known.as_ref(), &text);
        assert_eq!(text.url_full().unwrap(), "http://svc.ns:8080/orders/7");
        for key in [SERVER_ADDRESS, USER_AGENT_ORIGINAL, URL_FULL] {
            let value = attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
            assert!(
                matches!(value, Some(AttrValue::Text { .. })),
                "{key}: {value:?}"
            );
        }
        let attrs = resolved(attrs, &text);
        assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("svc.ns")));
        assert_eq!(get(&attrs, USER_AGENT_ORIGINAL), Some(s("curl/8")));
        assert_eq!(
            get(&attrs, URL_FULL),
            Some(s("http://svc.ns:8080/orders/7"))
        );

        // A request changed between the layers is recorded as forwarded.
        let mut forwarded = req.clone();
        forwarded
            .headers
            .insert(HOST, "other.ns:9090".parse().unwrap());
        forwarded
            .headers
            .insert(USER_AGENT, "proxy/2".parse().unwrap());
        let headers = RequestHeaders::of(&forwarded.headers);
        let attrs = resolved(
            client(
                &forwarded,
                &headers,
                Some(&conn),
                false,
                known.as_ref(),
                &text,
            ),
            &text,
        );
        assert_eq!(get(&attrs, SERVER_ADDRESS), Some(s("other.ns")));
        assert_eq!(get(&attrs, SERVER_PORT), Some(AttrValue::Int(9090)));
        assert_eq!(get(&attrs, USER_AGENT_ORIGINAL), Some(s("proxy/2")));
        assert_eq!(
            get(&attrs, URL_FULL),
            Some(s("http://other.ns:9090/orders/7"))
        );
    }

    #[test]
    fn targets_split_like_the_http_crate() {
        for text in [
            "svc.ns",
            "svc.ns:8080",
            "[::1]:9000",
            "[::1]",
            "user:pw@svc:81",
            "svc:0",
            "svc:65535",
            "svc:99999",
            "svc:",
            "svc:08080",
            "10.0.0.1:443",
            "-.a-b.",
            "a..b:1",
            "Svc.NS:80",
            "svc.ns:80:81",
            "svc ns",
            "svc%41",
            "",
        ] {
            // A plain Host header is read in place exactly as the http crate would split it.
            let plain = plain_host(text.as_bytes());
            let Ok(authority) = Authority::try_from(text) else {
                assert_eq!(plain, None, "{text} is not an authority");
                continue;
            };
            if let Some(plain) = plain {
                assert_eq!(plain, text);
                let target = Target::of_plain(plain);
                assert_eq!(target.host, authority.host(), "{text}");
                assert_eq!(
                    target.port.map(|(s, n)| (s.to_owned(), n)),
                    authority
                        .port()
                        .map(|p| (p.as_str().to_owned(), p.as_u16())),
                    "{text}"
                );
            }
            let target = Target::of(&authority);
            assert_eq!(target.host, authority.host(), "{text}");
            assert_eq!(
                target.port,
                authority
                    .port()
                    .map(|p| (p.as_str().to_owned(), p.as_u16()))
                    .as_ref()
                    .map(|(s, n)| (s.as_str(), *n)),
                "{text}"
            );
        }
    }

    #[test]
    fn addresses_are_typed_until_exported() {
        let conn = conn();
        let req = Request::builder().uri("/").body(()).unwrap().into_parts().0;
        let attrs = server_of(&req, Some(&conn), false);
        let client_address = attrs
            .iter()
            .find(|(k, _)| *k == CLIENT_ADDRESS)
            .map(|(_, v)| v);
        assert_eq!(
            client_address,
            Some(&AttrValue::Ip("10.0.0.7".parse().unwrap()))
        );
    }

    #[test]
    fn unknown_methods_are_bounded() {
        let req = Request::builder()
            .method("PURGE")
            .uri("/")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let attrs = server_of(&req, None, false);
        assert_eq!(
            get(&attrs, HTTP_REQUEST_METHOD),
            Some(AttrValue::Static("_OTHER"))
        );
        assert_eq!(get(&attrs, HTTP_REQUEST_METHOD_ORIGINAL), Some(s("PURGE")));
    }
}
