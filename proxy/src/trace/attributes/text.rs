//! The strings of a sampled request that its spans record (span name, path, target, user
//! agent, gRPC method, `url.full`, `tracestate`), copied once per request into one shared text.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use http::request::Parts;
use http::HeaderValue;

use crate::span::{AttrValue, SharedStr};

use super::super::naming::{push_span_name, SpanNaming};
use super::target::{strip_brackets, Target};
use super::{default_port, grpc_method, scheme, RequestHeaders};

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

    /// Whether `req` is still addressed as it was when this text was made (same scheme,
    /// authority and path), so that what was read from it then holds.
    pub(super) fn addressed_as_made(&self, req: &Parts, host: Option<&HeaderValue>) -> bool {
        let now = match req.uri.authority() {
            Some(authority) => Some(authority.as_str().as_bytes()),
            None => host.map(HeaderValue::as_bytes),
        };
        let then = self.authority.map(|range| self.str(range).as_bytes());
        now == then && self.str(self.path) == req.uri.path() && self.scheme == scheme(req)
    }

    /// `value` as an attribute value: a slice of this text when it is one of its strings (the
    /// CLIENT span usually records what the SERVER span did), else a copy.
    pub(super) fn value(&self, value: &str) -> AttrValue {
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

    /// `url.path`.
    pub(super) fn path_attr(&self) -> AttrValue {
        self.attr(self.path)
    }

    /// `url.full` as the SERVER layer saw the request, for a request forwarded as it arrived.
    pub(super) fn url_full_attr(&self) -> Option<AttrValue> {
        self.url_full.map(|url| self.attr(url))
    }

    /// `server.address` and `server.port` as the SERVER layer read them from the authority,
    /// for a request forwarded as it arrived.
    pub(super) fn target_attrs(&self) -> Option<(AttrValue, u16)> {
        self.host.map(|host| {
            let port = self.port.unwrap_or(default_port(self.scheme));
            (self.attr(host), port)
        })
    }

    /// `url.full` of a request addressed to `target` (else `fallback`): a slice of this text
    /// when it is the one the SERVER layer saw, else a copy. Assembled in the scratch buffer.
    pub(super) fn url_full_of(
        &self,
        scheme: &str,
        target: Option<Target<'_>>,
        fallback: Option<SocketAddr>,
        path: &str,
    ) -> Option<AttrValue> {
        let url = SCRATCH.with(|scratch| {
            let mut scratch = scratch.try_borrow_mut().ok()?;
            scratch.clear();
            if !push_url_full(&mut scratch, scheme, target, fallback, path) {
                return Some(None);
            }
            Some(Some(match self.url_full {
                Some(known) if self.str(known) == scratch.as_str() => self.attr(known),
                _ => AttrValue::String(scratch.clone()),
            }))
        });
        url.unwrap_or_else(|| {
            let mut url = String::new();
            push_url_full(&mut url, scheme, target, fallback, path)
                .then_some(AttrValue::String(url))
        })
    }
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

#[cfg(test)]
mod test_access {
    use super::RequestText;

    /// The request's strings, for tests.
    impl RequestText {
        pub(in crate::trace::attributes) fn path(&self) -> &str {
            self.str(self.path)
        }

        pub(in crate::trace::attributes) fn host(&self) -> Option<&str> {
            self.host.map(|r| self.str(r))
        }

        pub(in crate::trace::attributes) fn user_agent(&self) -> Option<&str> {
            self.user_agent.map(|r| self.str(r))
        }

        pub(in crate::trace::attributes) fn url_full(&self) -> Option<&str> {
            self.url_full.map(|r| self.str(r))
        }
    }
}
