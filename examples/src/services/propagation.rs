//! The one thing a meshed application should do for tracing: copy the incoming trace context onto
//! its outgoing calls, so the proxies can join the hops into one trace. Many applications do not;
//! a sample service can play one of them ([`Forwarding`]) to show how the proxy still connects
//! its traces (by the request id it forwards, or by the one request it is serving).
//!
//! `l5d-sample` is deliberately not in the list: the proxy consumes it on the way in, and the
//! sampling decision travels in the trace context itself (W3C flags / `x-b3-sampled`).

use http::{HeaderMap, HeaderName};

/// W3C Trace Context and both B3 encodings.
pub const TRACE_HEADERS: [HeaderName; 8] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("b3"),
    HeaderName::from_static("x-b3-traceid"),
    HeaderName::from_static("x-b3-spanid"),
    HeaderName::from_static("x-b3-parentspanid"),
    HeaderName::from_static("x-b3-sampled"),
    HeaderName::from_static("x-b3-flags"),
];

/// The request id header most applications and proxies use.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Which incoming headers a sample service copies onto its outgoing calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Forwarding {
    /// The trace headers ([`TRACE_HEADERS`]): a well-behaved traced application.
    #[default]
    #[value(name = "trace-headers")]
    TraceHeaders,
    /// Only `x-request-id`, as many logging setups do.
    #[value(name = "request-id")]
    RequestId,
    /// Nothing: an application that knows nothing about tracing.
    None,
}

impl Forwarding {
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::TraceHeaders => "trace-headers",
            Forwarding::RequestId => "request-id",
            Forwarding::None => "none",
        }
    }
}

/// Copies the headers `forwarding` names (all values, in order) from `incoming` into
/// `outgoing`.
pub fn copy_headers(forwarding: Forwarding, incoming: &HeaderMap, outgoing: &mut HeaderMap) {
    static REQUEST_ID_ONLY: [HeaderName; 1] = [REQUEST_ID];
    let names: &[HeaderName] = match forwarding {
        Forwarding::TraceHeaders => &TRACE_HEADERS,
        Forwarding::RequestId => &REQUEST_ID_ONLY,
        Forwarding::None => &[],
    };
    for name in names {
        for value in incoming.get_all(name) {
            outgoing.append(name.clone(), value.clone());
        }
    }
}

/// Copies every trace header of `incoming` (all values, in order) into `outgoing`.
pub fn copy_trace_headers(incoming: &HeaderMap, outgoing: &mut HeaderMap) {
    copy_headers(Forwarding::TraceHeaders, incoming, outgoing);
}

/// The trace headers present, as a JSON object (for the services' responses, so a `curl` shows
/// what each hop received).
pub fn trace_headers_json(headers: &HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    TRACE_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            Some((name.as_str().to_owned(), serde_json::Value::from(value)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_trace_headers_only() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        incoming.append("tracestate", "a=1".parse().unwrap());
        incoming.append("tracestate", "b=2".parse().unwrap());
        incoming.insert("x-b3-sampled", "1".parse().unwrap());
        incoming.insert("l5d-sample", "1".parse().unwrap());
        incoming.insert("authorization", "secret".parse().unwrap());
        let mut outgoing = HeaderMap::new();
        copy_trace_headers(&incoming, &mut outgoing);
        assert_eq!(outgoing.len(), 4);
        assert_eq!(outgoing["traceparent"], incoming["traceparent"]);
        let states: Vec<_> = outgoing.get_all("tracestate").iter().collect();
        assert_eq!(states, vec!["a=1", "b=2"]);
        assert_eq!(outgoing["x-b3-sampled"], "1");
        assert!(!outgoing.contains_key("l5d-sample"));
        assert!(!outgoing.contains_key("authorization"));
        let json = trace_headers_json(&incoming);
        assert_eq!(json.len(), 3);
        assert_eq!(json["x-b3-sampled"], "1");
    }

    #[test]
    fn forwards_only_what_the_mode_names() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        incoming.insert("x-request-id", "req-1".parse().unwrap());
        let copied = |forwarding| {
            let mut outgoing = HeaderMap::new();
            copy_headers(forwarding, &incoming, &mut outgoing);
            let mut names: Vec<_> = outgoing.keys().map(|k| k.as_str().to_owned()).collect();
            names.sort();
            names
        };
        assert_eq!(copied(Forwarding::TraceHeaders), ["traceparent"]);
        assert_eq!(copied(Forwarding::RequestId), ["x-request-id"]);
        assert!(copied(Forwarding::None).is_empty());
    }
}
