//! `SpanRecord` → OTLP messages: the definition of what a record means in OTLP.
//!
//! The exporter itself writes the wire format directly ([`super::wire`]); these typed messages
//! are the reference it is tested against byte for byte. All spans of one proxy share one
//! resource and one instrumentation scope, so a batch becomes a single `ResourceSpans` with a
//! single `ScopeSpans`.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, SpanFlags, Status,
};

use crate::span::{AttrValue, SharedStr, SpanKind, SpanLink, SpanRecord, SpanStatus};

/// The instrumentation scope every proxy span carries.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "meshtrace-proxy".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// One export request for `spans`, all under `resource`.
pub fn export_request(
    resource: &Resource,
    scope: &InstrumentationScope,
    spans: impl IntoIterator<Item = SpanRecord>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope.clone()),
                spans: spans.into_iter().map(span_to_proto).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// OTLP span flags: the W3C flags, plus whether the parent is remote. A SERVER span's parent
/// is the caller's (remote) span; a CLIENT span's parent is this proxy's SERVER span.
pub fn span_flags(record: &SpanRecord) -> u32 {
    let parent_is_remote = record.parent_span_id.is_some() && record.kind == SpanKind::Server;
    let mut flags = u32::from(record.flags) | SpanFlags::ContextHasIsRemoteMask as u32;
    if parent_is_remote {
        flags |= SpanFlags::ContextIsRemoteMask as u32;
    }
    flags
}

/// OTLP flags of a link: the W3C flags, and that the linked span is not remote (links point
/// to spans this proxy recorded itself: the candidates' inbound CLIENT spans).
pub fn link_flags(link: &SpanLink) -> u32 {
    u32::from(link.flags) | SpanFlags::ContextHasIsRemoteMask as u32
}

/// Converts one link.
pub fn link_to_proto(link: &SpanLink) -> span::Link {
    span::Link {
        trace_id: link.trace_id.to_vec(),
        span_id: link.span_id.to_vec(),
        trace_state: link
            .trace_state
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        flags: link_flags(link),
    }
}

/// The OTLP status code of a status.
pub fn status_code(status: &SpanStatus) -> status::StatusCode {
    match status {
        SpanStatus::Unset => status::StatusCode::Unset,
        SpanStatus::Ok => status::StatusCode::Ok,
        SpanStatus::Error(_) => status::StatusCode::Error,
    }
}

/// The OTLP value of an attribute of the span named `name`.
pub fn attribute_value(value: AttrValue, name: &SharedStr) -> any_value::Value {
    match value {
        AttrValue::Static(s) => any_value::Value::StringValue(s.to_owned()),
        AttrValue::String(s) => any_value::Value::StringValue(s),
        AttrValue::Shared(s) => any_value::Value::StringValue(s.as_str().to_owned()),
        AttrValue::Text { start, end } => {
            any_value::Value::StringValue(name.sibling(start, end).to_owned())
        }
        AttrValue::Ip(ip) => any_value::Value::StringValue(ip.to_string()),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(b),
    }
}

/// Converts one record.
pub fn span_to_proto(record: SpanRecord) -> Span {
    let kind = match record.kind {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
    };
    let flags = span_flags(&record);
    let code = status_code(&record.status) as i32;
    let status = match record.status {
        SpanStatus::Unset => None,
        SpanStatus::Ok => Some(Status {
            message: String::new(),
            code,
        }),
        SpanStatus::Error(message) => Some(Status {
            message: message.unwrap_or_default(),
            code,
        }),
    };
    Span {
        trace_id: record.trace_id.to_vec(),
        span_id: record.span_id.to_vec(),
        trace_state: record
            .trace_state
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        parent_span_id: record
            .parent_span_id
            .map(|id| id.to_vec())
            .unwrap_or_default(),
        flags,
        name: record.name.as_str().to_owned(),
        kind: kind as i32,
        start_time_unix_nano: record.start_unix_nanos,
        end_time_unix_nano: record.end_unix_nanos,
        attributes: record
            .attributes
            .into_iter()
            .map(|(key, value)| KeyValue {
                key: key.to_owned(),
                value: Some(AnyValue {
                    value: Some(attribute_value(value, &record.name)),
                }),
                key_strindex: 0,
            })
            .collect(),
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: record.links.iter().map(link_to_proto).collect(),
        dropped_links_count: 0,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: SpanKind, parent: Option<[u8; 8]>) -> SpanRecord {
        SpanRecord {
            trace_id: [0xab; 16],
            span_id: [0x01; 8],
            parent_span_id: parent,
            trace_state: Some("vendor=x".into()),
            flags: 0x03,
            kind,
            name: "GET /users/{id}".into(),
            start_unix_nanos: 1_000,
            end_unix_nanos: 2_000,
            status: SpanStatus::Error(Some("upstream reset".into())),
            attributes: vec![
                ("http.request.method", AttrValue::Static("GET")),
                ("url.path", AttrValue::String("/users/7".into())),
                ("http.response.status_code", AttrValue::Int(502)),
                ("meshtrace.sampled", AttrValue::Bool(true)),
            ],
            links: Vec::new(),
        }
    }

    #[test]
    fn server_span_with_remote_parent() {
        let span = span_to_proto(record(SpanKind::Server, Some([0x02; 8])));
        assert_eq!(span.trace_id, vec![0xab; 16]);
        assert_eq!(span.span_id, vec![0x01; 8]);
        assert_eq!(span.parent_span_id, vec![0x02; 8]);
        assert_eq!(span.trace_state, "vendor=x");
        assert_eq!(span.flags, 0x03 | 0x100 | 0x200);
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(span.name, "GET /users/{id}");
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (1_000, 2_000)
        );
        let status = span.status.expect("status");
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "upstream reset");
        let values: Vec<(String, Option<any_value::Value>)> = span
            .attributes
            .into_iter()
            .map(|kv| (kv.key, kv.value.and_then(|v| v.value)))
            .collect();
        assert_eq!(
            values,
            vec![
                (
                    "http.request.method".into(),
                    Some(any_value::Value::StringValue("GET".into()))
                ),
                (
                    "url.path".into(),
                    Some(any_value::Value::StringValue("/users/7".into()))
                ),
                (
                    "http.response.status_code".into(),
                    Some(any_value::Value::IntValue(502))
                ),
                (
                    "meshtrace.sampled".into(),
                    Some(any_value::Value::BoolValue(true))
                ),
            ]
        );
    }

    #[test]
    fn root_and_client_spans_have_local_or_no_parent() {
        let root = span_to_proto(record(SpanKind::Server, None));
        assert!(root.parent_span_id.is_empty());
        assert_eq!(root.flags, 0x03 | 0x100);
        let client = span_to_proto(record(SpanKind::Client, Some([0x05; 8])));
        assert_eq!(client.kind, span::SpanKind::Client as i32);
        assert_eq!(client.flags, 0x03 | 0x100);
    }

    #[test]
    fn unset_and_ok_status() {
        let mut r = record(SpanKind::Client, None);
        r.status = SpanStatus::Unset;
        assert_eq!(span_to_proto(r.clone()).status, None);
        r.status = SpanStatus::Ok;
        assert_eq!(
            span_to_proto(r).status.map(|s| s.code),
            Some(status::StatusCode::Ok as i32)
        );
    }

    #[test]
    fn request_groups_spans_under_one_resource_and_scope() {
        let resource = Resource {
            attributes: vec![],
            dropped_attributes_count: 0,
            entity_refs: vec![],
        };
        let request = export_request(
            &resource,
            &scope(),
            vec![
                record(SpanKind::Server, None),
                record(SpanKind::Client, Some([1; 8])),
            ],
        );
        assert_eq!(request.resource_spans.len(), 1);
        let scopes = &request.resource_spans[0].scope_spans;
        assert_eq!(scopes.len(), 1);
        assert_eq!(scopes[0].spans.len(), 2);
        assert_eq!(
            scopes[0].scope.as_ref().map(|s| s.name.as_str()),
            Some("meshtrace-proxy")
        );
    }
}
