//! The types the proxy's parts share: facts about a connection and its requests that the data
//! path hands to the layers above it (tracing, metrics) through request/response extensions,
//! the detected protocol, and the header that marks the proxy's own error responses.

use std::net::SocketAddr;

use http::HeaderName;

/// The response header on every response the proxy produces itself when forwarding fails
/// (502/504); its value is the error's [`ErrorType`], which the SERVER span records as
/// `error.type`.
pub const PROXY_ERROR_HEADER: HeaderName = HeaderName::from_static("meshtrace-proxy-error");

/// Which listener accepted the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic from other pods to the local application.
    Inbound,
    /// Traffic from the local application to other pods.
    Outbound,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What the client speaks, as detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2,
    Opaque,
}

impl Protocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Opaque => "opaque",
        }
    }
}

/// Per-connection facts, shared by every request on the connection (one `Arc` clone per
/// request is put into the request's extensions).
#[derive(Clone, Debug)]
pub struct ConnMeta {
    pub direction: Direction,
    /// The peer that connected to the proxy.
    pub client_addr: SocketAddr,
    /// The proxy's own address for this connection.
    pub local_addr: SocketAddr,
    /// Where the connection was going before it was redirected (`SO_ORIGINAL_DST`), or the fixed
    /// target; `None` in explicit (forward-proxy) mode. Never one of the proxy's own listeners:
    /// such connections are closed when accepted.
    pub orig_dst: Option<SocketAddr>,
}

/// Response extension set by the upstream client: the address the request was actually sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamPeer(pub SocketAddr);

/// A low-cardinality name for an error, used for the `error.type` span attribute and for the
/// `meshtrace-proxy-error` response header. Implemented by the data path's error types so the
/// trace layers can stay generic over them.
pub trait ErrorType {
    fn error_type(&self) -> &'static str;
}

impl ErrorType for std::convert::Infallible {
    fn error_type(&self) -> &'static str {
        match *self {}
    }
}

/// Whether an HTTP/1.1 message asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &http::HeaderMap, option: &str) -> bool {
    connection_options(headers).any(|o| o.eq_ignore_ascii_case(option))
}

pub(crate) fn connection_options(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|option| !option.is_empty())
}
