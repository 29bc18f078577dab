//! The request-target's form (RFC 9112 §3.2) and the Host rules that tie it to the head
//! (RFC 9112 §3.2, §3.2.2; RFC 9110 §4.2, §7.2).

use super::error::HeadError;
use super::head::{Field, FieldKind, Method, Span, Version};

/// RFC 9112 §3.2's four forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query` (scheme `http` or `https`)
    Absolute,
    /// `host:port`, CONNECT only
    Authority,
    /// `*`, OPTIONS only
    Asterisk,
}

/// A target's form, and for absolute and authority form where its authority lies (offsets into
/// the target) and the scheme's default port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedTarget {
    pub form: TargetForm,
    authority: Option<(usize, usize)>,
    default_port: Option<&'static [u8]>,
}

impl ParsedTarget {
    /// The target of a request refused for its userinfo: its form by the method, no authority.
    pub fn unrouted(method: Method) -> Self {
        let form = match method {
            Method::Connect => TargetForm::Authority,
            _ => TargetForm::Absolute,
        };
        ParsedTarget {
            form,
            authority: None,
            default_port: None,
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks `target` against the forms `method` allows. A fragment (`#`) is never part of a
/// request-target (RFC 9112 §3.2); absolute form is accepted for `http` and `https` only, with
/// a non-empty authority (RFC 9110 §4.2.1) and without userinfo (RFC 9110 §4.2.4).
pub fn parse(method: Method, target: &[u8]) -> Result<ParsedTarget, HeadError> {
    if target.contains(&b'#') || target.is_empty() {
        return Err(HeadError::Target);
    }
    let plain = |form| ParsedTarget {
        form,
        authority: None,
        default_port: None,
    };
    match (method, target[0]) {
        (Method::Connect, _) => authority_form(target),
        (Method::Options, b'*') if target == b"*" => Ok(plain(TargetForm::Asterisk)),
        (_, b'/') => Ok(plain(TargetForm::Origin)),
        _ => absolute_form(target),
    }
}

/// RFC 9112 §3.2.3: `uri-host ":" port`, the port required and not empty.
fn authority_form(target: &[u8]) -> Result<ParsedTarget, HeadError> {
    if target.contains(&b'@') {
        return Err(HeadError::Userinfo);
    }
    let (host, port) = split_port(target).ok_or(HeadError::Target)?;
    if host.is_empty() || port.is_empty() || !is_host(host) {
        return Err(HeadError::Target);
    }
    Ok(ParsedTarget {
        form: TargetForm::Authority,
        authority: Some((0, target.len())),
        default_port: None,
    })
}

fn absolute_form(target: &[u8]) -> Result<ParsedTarget, HeadError> {
    let (scheme_len, default_port) = if starts_with_ignore_case(target, b"http://") {
        (7, &b"80"[..])
    } else if starts_with_ignore_case(target, b"https://") {
        (8, &b"443"[..])
    } else {
        return Err(HeadError::Target);
    };
    let rest = &target[scheme_len..];
    let len = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    let authority = &rest[..len];
    if authority.contains(&b'@') {
        return Err(HeadError::Userinfo);
    }
    let empty_host =
        authority.is_empty() || split_port(authority).is_some_and(|(h, _)| h.is_empty());
    if empty_host || !is_host_port(authority) {
        return Err(HeadError::Target);
    }
    Ok(ParsedTarget {
        form: TargetForm::Absolute,
        authority: Some((scheme_len, scheme_len + len)),
        default_port: Some(default_port),
    })
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `uri-host [ ":" port ]` split at the port's colon (outside an IP-literal), if there is one.
fn split_port(authority: &[u8]) -> Option<(&[u8], &[u8])> {
    let host_end = if authority.first() == Some(&b'[') {
        authority.iter().position(|b| *b == b']')? + 1
    } else {
        authority
            .iter()
            .position(|b| *b == b':')
            .unwrap_or(authority.len())
    };
    match authority.get(host_end) {
        Some(b':') => Some((&authority[..host_end], &authority[host_end + 1..])),
        _ => None,
    }
}

/// RFC 3986 `host [ ":" port ]`: a host of reg-name / IPv4 / IP-literal characters, an
/// optional all-digit port, nothing else.
fn is_host_port(authority: &[u8]) -> bool {
    match split_port(authority) {
        Some((host, port)) => is_host(host) && port.iter().all(u8::is_ascii_digit),
        None => is_host(authority),
    }
}

fn is_host(host: &[u8]) -> bool {
    if let Some(literal) = host.strip_prefix(b"[") {
        let Some(inner) = literal.strip_suffix(b"]") else {
            return false;
        };
        return !inner.is_empty()
            && inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || b":.vV".contains(b));
    }
    // reg-name = *( unreserved / pct-encoded / sub-delims ); IPv4 is a subset.
    host.iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b))
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host, any request at most one, and its
/// value is `uri-host [ ":" port ]` (empty allowed). An absolute-form target's authority must
/// name the same host and port (the scheme's default port standing in for an absent one);
/// RFC 9112 §3.2.2 lets a proxy prefer the target, but a next hop that reads Host would then
/// see a different origin than the one the proxy routed to, so a mismatch is refused.
/// Returns the authority to route by: the target's for absolute and authority form, else Host.
pub fn check_host(
    buf: &[u8],
    fields: &[Field],
    version: Version,
    target: &ParsedTarget,
    target_offset: u32,
) -> Result<Option<Span>, HeadError> {
    let mut hosts = fields.iter().filter(|f| f.kind == FieldKind::Host);
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::HostRepeated);
    }
    if host.is_none() && version == Version::Http11 {
        return Err(HeadError::HostMissing);
    }
    if let Some(host) = host {
        if !is_host_port(host.value.get(buf)) {
            return Err(HeadError::HostInvalid);
        }
    }
    let Some((start, end)) = target.authority else {
        return Ok(host.map(|h| h.value));
    };
    let authority = Span {
        start: target_offset + start as u32,
        end: target_offset + end as u32,
    };
    if let (Some(host), Some(default_port)) = (host, target.default_port) {
        let same = same_origin(authority.get(buf), host.value.get(buf), default_port);
        if !same {
            return Err(HeadError::HostMismatch);
        }
    }
    Ok(Some(authority))
}

/// Same host (ASCII case-insensitive) and same port, an absent or empty port being `default`.
fn same_origin(a: &[u8], b: &[u8], default: &[u8]) -> bool {
    let parts = |authority| {
        let (host, port): (&[u8], &[u8]) = split_port(authority).unwrap_or((authority, b""));
        (host, if port.is_empty() { default } else { port })
    };
    let ((host_a, port_a), (host_b, port_b)) = (parts(a), parts(b));
    host_a.eq_ignore_ascii_case(host_b) && port_a == port_b
}
