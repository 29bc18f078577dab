//! Where a request was addressed: its authority or `Host` header, split into host and port
//! once per request (the inputs of `server.address`, `server.port` and `url.full`).

use http::request::Parts;
use http::uri::Authority;
use http::HeaderValue;

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
pub(super) fn plain_host(value: &[u8]) -> Option<&str> {
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
    pub(super) raw: &'a str,
    pub(super) host: &'a str,
    /// As written, and as a number.
    pub(super) port: Option<(&'a str, u16)>,
}

impl<'a> Target<'a> {
    pub(super) fn of(authority: &'a Authority) -> Target<'a> {
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
    pub(super) fn of_plain(text: &'a str) -> Target<'a> {
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

pub(super) fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}
