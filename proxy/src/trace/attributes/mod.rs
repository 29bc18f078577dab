//! Span attributes from OpenTelemetry's stable HTTP semantic conventions (plus `rpc.*` for
//! gRPC and `meshtrace.direction`), and the span name's inputs: request attributes here
//! ([`server_request`], [`client`]), where a request was addressed in [`target`], the
//! request's strings in [`text`], response attributes and `error.type` in [`response`].
//!
//! Only computed for sampled requests. Never reads credentials: `Authorization`,
//! `Proxy-Authorization`, `Cookie` and `Set-Cookie` are never looked at, URLs are rebuilt from
//! host, port and path so userinfo and query strings cannot leak into a span.

mod response;
mod target;
#[cfg(test)]
mod tests;
mod text;

use std::net::SocketAddr;

use http::request::Parts;
use http::uri::Authority;
use http::{HeaderValue, Method, Version};

use crate::meta::ConnMeta;
use crate::span::{attributes_with_capacity, AttrValue};

use super::naming::{known_method, SpanNaming};

pub use self::response::{grpc_timeout, ResponseAttributes, ERROR_OTHER};
use self::target::strip_brackets;
pub use self::target::{addressed, Addressed, Target};
pub use self::text::RequestText;
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
    /// Whether the request is gRPC (`content-type: application/grpc[+proto|...]`).
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

fn scheme(req: &Parts) -> &'static str {
    match req.uri.scheme_str() {
        Some("https") => "https",
        _ => "http",
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
    attrs.push((URL_PATH, text.path_attr()));
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
        if let Some(url) = text.url_full_attr() {
            attrs.push((URL_FULL, url));
        }
        push_server_target(&mut attrs, text.target_attrs(), orig_dst);
        return attrs;
    }
    let authority = addressed(req, headers.host, known);
    let target = authority.as_ref().map(Addressed::target);
    if let Some(url) = text.url_full_of(scheme, target, orig_dst, req.uri.path()) {
        attrs.push((URL_FULL, url));
    }
    let target = target.map(|target| server_target(target, text, scheme));
    push_server_target(&mut attrs, target, orig_dst);
    attrs
}

/// What the SERVER span records of its request when it arrives, and what the request's
/// CLIENT span reuses.
pub struct ServerRequest {
    /// The request's strings (span name included), shared by both spans.
    pub text: RequestText,
    /// The SERVER span's request attributes.
    pub attributes: Attributes,
    /// The `Host` header, when it had to be parsed, for the CLIENT span to reuse.
    pub host_header: Option<Authority>,
    pub grpc: bool,
}

/// Builds what the SERVER span records of `req`: its text (named by `naming`, with the
/// `tracestate` the spans record) and its attributes.
pub fn server_request(
    naming: SpanNaming,
    req: &Parts,
    headers: &RequestHeaders<'_>,
    conn: Option<&ConnMeta>,
    trace_state: Option<&str>,
) -> ServerRequest {
    let grpc = headers.is_grpc();
    let addressed = addressed(req, headers.host, None);
    let target = addressed.as_ref().map(Addressed::target);
    let orig_dst = conn.and_then(|c| c.orig_dst);
    let text = RequestText::new(naming, req, headers, target, orig_dst, grpc, trace_state);
    let attributes = server(req, headers, conn, grpc, target, &text);
    ServerRequest {
        text,
        attributes,
        host_header: addressed.and_then(Addressed::into_parsed),
        grpc,
    }
}
