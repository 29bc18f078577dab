//! The one thing a meshed application must do for tracing: copy the incoming trace context onto
//! its outgoing calls, so the proxies can join the hops into one trace.
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

/// Copies every trace header of `incoming` (all values, in order) into `outgoing`.
pub fn copy_trace_headers(incoming: &HeaderMap, outgoing: &mut HeaderMap) {
    for name in &TRACE_HEADERS {
        for value in incoming.get_all(name) {
            outgoing.append(name.clone(), value.clone());
        }
    }
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
}
