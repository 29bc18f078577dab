//! OTLP export requests → the store's spans.
//!
//! Both receivers (gRPC and HTTP) decode to the same `ExportTraceServiceRequest`, so the
//! interpretation of OTLP (service name, ids, attribute values) lives here once.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use serde_json::{Map, Value};

use super::store::{SpanId, SpanKind, StatusCode, StoredEvent, StoredLink, StoredSpan, TraceId};

/// Service name used when a resource has no `service.name`, as the OTel SDKs do.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Spans of one request, plus how many were unusable (invalid trace or span id).
#[derive(Debug, Default)]
pub struct ConvertedSpans {
    pub spans: Vec<StoredSpan>,
    pub rejected: u64,
}

pub fn spans_from_request(request: ExportTraceServiceRequest) -> ConvertedSpans {
    let mut converted = ConvertedSpans::default();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes_to_json(r.attributes))
            .unwrap_or_default();
        let service: Arc<str> = match resource.get("service.name") {
            Some(Value::String(name)) if !name.is_empty() => Arc::from(name.as_str()),
            _ => Arc::from(UNKNOWN_SERVICE),
        };
        let resource = Arc::new(resource);
        for scope_spans in resource_spans.scope_spans {
            for otlp in scope_spans.spans {
                let (Some(trace_id), Some(span_id)) = (
                    TraceId::from_bytes(&otlp.trace_id),
                    SpanId::from_bytes(&otlp.span_id),
                ) else {
                    converted.rejected += 1;
                    continue;
                };
                let (status, status_message) = match otlp.status {
                    Some(s) => (status_code(s.code), s.message),
                    None => (StatusCode::Unset, String::new()),
                };
                converted.spans.push(StoredSpan {
                    trace_id,
                    span_id,
                    parent_span_id: SpanId::from_bytes(&otlp.parent_span_id),
                    service: service.clone(),
                    name: otlp.name,
                    kind: span_kind(otlp.kind),
                    start_unix_nano: otlp.start_time_unix_nano,
                    end_unix_nano: otlp.end_time_unix_nano.max(otlp.start_time_unix_nano),
                    status,
                    status_message,
                    attributes: attributes_to_json(otlp.attributes),
                    resource: resource.clone(),
                    events: otlp
                        .events
                        .into_iter()
                        .map(|event| StoredEvent {
                            name: event.name,
                            time_unix_nano: event.time_unix_nano,
                            attributes: attributes_to_json(event.attributes),
                        })
                        .collect(),
                    // A link with an invalid id cannot be followed: left out.
                    links: otlp
                        .links
                        .iter()
                        .filter_map(|link| {
                            Some(StoredLink {
                                trace_id: TraceId::from_bytes(&link.trace_id)?,
                                span_id: SpanId::from_bytes(&link.span_id)?,
                            })
                        })
                        .collect(),
                });
            }
        }
    }
    converted
}

fn span_kind(kind: i32) -> SpanKind {
    match span::SpanKind::try_from(kind) {
        Ok(span::SpanKind::Internal) => SpanKind::Internal,
        Ok(span::SpanKind::Server) => SpanKind::Server,
        Ok(span::SpanKind::Client) => SpanKind::Client,
        Ok(span::SpanKind::Producer) => SpanKind::Producer,
        Ok(span::SpanKind::Consumer) => SpanKind::Consumer,
        Ok(span::SpanKind::Unspecified) | Err(_) => SpanKind::Unspecified,
    }
}

fn status_code(code: i32) -> StatusCode {
    match status::StatusCode::try_from(code) {
        Ok(status::StatusCode::Ok) => StatusCode::Ok,
        Ok(status::StatusCode::Error) => StatusCode::Error,
        Ok(status::StatusCode::Unset) | Err(_) => StatusCode::Unset,
    }
}

fn attributes_to_json(attributes: Vec<KeyValue>) -> Map<String, Value> {
    attributes
        .into_iter()
        .map(|kv| (kv.key, any_value_to_json(kv.value)))
        .collect()
}

fn any_value_to_json(value: Option<AnyValue>) -> Value {
    match value.and_then(|v| v.value) {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(b),
        // JS numbers lose precision beyond 2^53: send those as strings.
        Some(any_value::Value::IntValue(i)) if i.unsigned_abs() <= (1 << 53) => Value::from(i),
        Some(any_value::Value::IntValue(i)) => Value::String(i.to_string()),
        Some(any_value::Value::DoubleValue(d)) => serde_json::Number::from_f64(d)
            .map_or_else(|| Value::String(d.to_string()), Value::Number),
        Some(any_value::Value::BytesValue(bytes)) => Value::String(hex::encode(bytes)),
        Some(any_value::Value::ArrayValue(array)) => Value::Array(
            array
                .values
                .into_iter()
                .map(|v| any_value_to_json(Some(v)))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(list)) => Value::Object(attributes_to_json(list.values)),
        Some(any_value::Value::StringValueStrindex(index)) => {
            Value::String(format!("<string table #{index}>"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn converts_ids_service_kind_status_and_attributes() {
        let otlp = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            name: "GET /".into(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: 100,
            end_time_unix_nano: 250,
            attributes: vec![
                kv("http.response.status_code", any_value::Value::IntValue(503)),
                kv("big", any_value::Value::IntValue(i64::MAX)),
                kv("ok", any_value::Value::BoolValue(true)),
                kv(
                    "list",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::DoubleValue(1.5)),
                        }],
                    }),
                ),
            ],
            status: Some(Status {
                message: "upstream failed".into(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        };
        let converted = spans_from_request(request(
            vec![kv(
                "service.name",
                any_value::Value::StringValue("frontend".into()),
            )],
            vec![otlp],
        ));
        assert_eq!(converted.rejected, 0);
        let span = &converted.spans[0];
        assert_eq!(span.trace_id, TraceId([1; 16]));
        assert_eq!(span.span_id, SpanId([2; 8]));
        assert_eq!(span.parent_span_id, Some(SpanId([3; 8])));
        assert_eq!(&*span.service, "frontend");
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(span.status, StatusCode::Error);
        assert_eq!(span.status_message, "upstream failed");
        assert_eq!(span.attributes["http.response.status_code"], 503);
        assert_eq!(span.attributes["big"], i64::MAX.to_string());
        assert_eq!(span.attributes["ok"], true);
        assert_eq!(span.attributes["list"], serde_json::json!([1.5]));
        assert_eq!(span.resource["service.name"], "frontend");
    }

    #[test]
    fn rejects_invalid_ids_and_defaults_the_service() {
        let valid = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            ..Default::default()
        };
        let short_trace = Span {
            trace_id: vec![1; 8],
            span_id: vec![2; 8],
            ..Default::default()
        };
        let zero_span = Span {
            trace_id: vec![1; 16],
            span_id: vec![0; 8],
            ..Default::default()
        };
        let converted = spans_from_request(request(vec![], vec![valid, short_trace, zero_span]));
        assert_eq!(converted.rejected, 2);
        assert_eq!(converted.spans.len(), 1);
        assert_eq!(&*converted.spans[0].service, UNKNOWN_SERVICE);
        assert_eq!(converted.spans[0].parent_span_id, None);
    }

    #[test]
    fn keeps_links_that_can_be_followed() {
        let link = |trace: Vec<u8>, span: Vec<u8>| span::Link {
            trace_id: trace,
            span_id: span,
            ..Default::default()
        };
        let otlp = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            links: vec![
                link(vec![4; 16], vec![5; 8]),
                link(vec![4; 15], vec![5; 8]),
                link(vec![6; 16], vec![0; 8]),
            ],
            ..Default::default()
        };
        let converted = spans_from_request(request(vec![], vec![otlp]));
        assert_eq!(
            converted.spans[0].links,
            vec![StoredLink {
                trace_id: TraceId([4; 16]),
                span_id: SpanId([5; 8]),
            }]
        );
    }
}
