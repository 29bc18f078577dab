//! One meshed hop, in process: client → outbound proxy (explicit mode) → inbound proxy (fixed
//! target) → server, both proxies exporting to one real OTLP receiver. Checks what a tracing
//! backend would see: four chained spans, resources, attributes, propagation and sampling.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestProxy;
use http::HeaderMap;
use meshtrace_proxy::export::ExporterHandle;
use meshtrace_proxy::trace::TraceArgs;
use meshtrace_tests::client::{exchange, RawResponse};
use meshtrace_tests::otlp::{OtlpReceiver, ReceivedSpan, ReceiverProtocol};
use meshtrace_tests::upstream::HttpUpstream;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

/// Generous: the machine is small and shared.
const WAIT: Duration = Duration::from_secs(30);
const CALLER: &str = "frontend";
const CALLEE: &str = "users";

/// The caller's outbound proxy, the callee's inbound proxy and the receiver they export to.
struct Mesh {
    receiver: OtlpReceiver,
    outbound: TestProxy,
    inbound: TestProxy,
    exporters: Vec<ExporterHandle>,
}

fn protocol_name(protocol: ReceiverProtocol) -> &'static str {
    match protocol {
        ReceiverProtocol::Grpc => "grpc",
        ReceiverProtocol::Http => "http/protobuf",
    }
}

impl Mesh {
    /// Both proxies with the trace settings `trace`; the inbound one forwards to `server`.
    async fn start(protocol: ReceiverProtocol, server: SocketAddr, trace: TraceArgs) -> Mesh {
        let receiver = OtlpReceiver::start(protocol).await;
        let endpoint = receiver.endpoint();
        let protocol = protocol_name(protocol);
        let mut caller = common::exporting_to(common::config(), &endpoint, protocol, CALLER);
        caller.trace = trace.clone();
        let mut callee =
            common::exporting_to(common::fixed_target(server), &endpoint, protocol, CALLEE);
        callee.trace = trace;
        let (outbound, out_exporter) = common::start_exporting(caller).await;
        let (inbound, in_exporter) = common::start_exporting(callee).await;
        Mesh {
            receiver,
            outbound,
            inbound,
            exporters: out_exporter.into_iter().chain(in_exporter).collect(),
        }
    }

    /// Sends `GET {path}` to the callee through the caller's outbound proxy (absolute form,
    /// as an `http_proxy` client does) with the extra header lines `headers`.
    async fn get(&self, path: &str, headers: &str) -> RawResponse {
        let callee = self.inbound.inbound;
        let request = format!(
            "GET http://{callee}{path} HTTP/1.1\r\nHost: {callee}\r\n{headers}Connection: close\r\n\r\n"
        );
        exchange(self.outbound.outbound, request.as_bytes()).await
    }

    /// Waits for exactly the four spans of one hop and returns them in chain order:
    /// SERVER(caller), CLIENT(caller), SERVER(callee), CLIENT(callee).
    async fn hop_spans(&self) -> [ReceivedSpan; 4] {
        let spans = self.receiver.wait_for_spans(4, WAIT).await.expect("spans");
        assert_eq!(spans.len(), 4, "{spans:#?}");
        let find = |service: &str, kind: SpanKind| {
            let matching: Vec<&ReceivedSpan> = spans
                .iter()
                .filter(|s| {
                    s.resource_attr("service.name").as_deref() == Some(service)
                        && s.span.kind == kind as i32
                })
                .collect();
            assert_eq!(matching.len(), 1, "{service} {kind:?}: {spans:#?}");
            matching[0].clone()
        };
        [
            find(CALLER, SpanKind::Server),
            find(CALLER, SpanKind::Client),
            find(CALLEE, SpanKind::Server),
            find(CALLEE, SpanKind::Client),
        ]
    }

    async fn shutdown(self) {
        self.outbound.shutdown().await;
        self.inbound.shutdown().await;
        for exporter in self.exporters {
            exporter.shutdown(WAIT).await.expect("exporter flushes");
        }
    }
}

fn trace_args(sample_rate: f64) -> TraceArgs {
    TraceArgs {
        sample_rate,
        ..TraceArgs::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `traceparent` split into (trace id, parent id, flags).
fn traceparent(value: &str) -> (String, String, String) {
    let fields: Vec<&str> = value.split('-').collect();
    assert_eq!(fields.len(), 4, "{value}");
    assert_eq!(fields[0], "00", "{value}");
    (
        fields[1].to_string(),
        fields[2].to_string(),
        fields[3].to_string(),
    )
}

fn string_attr(span: &ReceivedSpan, key: &str) -> Option<String> {
    match span.attr(key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(span: &ReceivedSpan, key: &str) -> Option<i64> {
    match span.attr(key) {
        Some(Value::IntValue(i)) => Some(i),
        _ => None,
    }
}

/// Every string in the exported data: names, status messages, attribute values, resources.
fn all_strings(spans: &[ReceivedSpan]) -> Vec<String> {
    let mut out = Vec::new();
    for s in spans {
        out.push(s.span.name.clone());
        out.push(s.span.trace_state.clone());
        if let Some(status) = &s.span.status {
            out.push(status.message.clone());
        }
        for kv in s.span.attributes.iter().chain(&s.resource.attributes) {
            out.push(kv.key.clone());
            if let Some(Value::StringValue(v)) = kv.value.as_ref().and_then(|v| v.value.clone()) {
                out.push(v);
            }
        }
    }
    out
}

#[tokio::test]
async fn one_hop_yields_four_chained_spans_with_resources_and_attributes() {
    for protocol in [ReceiverProtocol::Http, ReceiverProtocol::Grpc] {
        let server = HttpUpstream::start().await;
        let mesh = Mesh::start(protocol, server.addr(), trace_args(1.0)).await;
        let response = mesh
            .get(
                "/users/12345?token=querysecret",
                "Authorization: Bearer authsecret\r\nCookie: session=cookiesecret\r\nUser-Agent: mesh-test/1\r\n",
            )
            .await;
        assert_eq!(response.status(), 200, "{}", response.head_str());

        let [out_server, out_client, in_server, in_client] = mesh.hop_spans().await;
        let all = [
            out_server.clone(),
            out_client.clone(),
            in_server.clone(),
            in_client.clone(),
        ];
        // One trace, started by the caller's proxy.
        let trace_id = out_server.span.trace_id.clone();
        assert_eq!(trace_id.len(), 16);
        for s in &all {
            assert_eq!(s.span.trace_id, trace_id, "{protocol:?}");
            assert_eq!(s.span.name, "GET /users/{id}", "{protocol:?}");
            assert_eq!(s.span.span_id.len(), 8);
        }
        // Parentage: SERVER(out) ← CLIENT(out) ← SERVER(in) ← CLIENT(in).
        assert!(out_server.span.parent_span_id.is_empty(), "root");
        assert_eq!(out_client.span.parent_span_id, out_server.span.span_id);
        assert_eq!(in_server.span.parent_span_id, out_client.span.span_id);
        assert_eq!(in_client.span.parent_span_id, in_server.span.span_id);
        // The server sees the inbound CLIENT span as its parent, sampled.
        let seen = server.wait_for_requests(1).await;
        let (seen_trace, seen_parent, seen_flags) = traceparent(
            header(&seen[0].headers, "traceparent").expect("traceparent at the server"),
        );
        assert_eq!(seen_trace, hex(&trace_id));
        assert_eq!(seen_parent, hex(&in_client.span.span_id));
        assert_eq!(u8::from_str_radix(&seen_flags, 16).expect("hex") & 1, 1);
        assert_eq!(
            header(&seen[0].headers, "x-b3-spanid"),
            Some(hex(&in_client.span.span_id).as_str())
        );
        // The proxy that started the trace tells the client.
        let traceresponse = response.header("traceresponse").expect("traceresponse");
        let (tr_trace, tr_span, _) = traceparent(&traceresponse);
        assert_eq!(tr_trace, hex(&trace_id));
        assert_eq!(tr_span, hex(&out_server.span.span_id));

        // Attributes.
        let callee = mesh.inbound.inbound;
        for s in &all {
            assert_eq!(
                string_attr(s, "http.request.method").as_deref(),
                Some("GET")
            );
            assert_eq!(int_attr(s, "http.response.status_code"), Some(200));
            assert_eq!(
                string_attr(s, "network.protocol.version").as_deref(),
                Some("1.1"),
                "{:?}",
                s.span.name
            );
            assert_eq!(int_attr(s, "http.response.body.size"), Some(2), "{s:#?}");
            assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
        }
        for s in [&out_server, &in_server] {
            assert_eq!(string_attr(s, "url.path").as_deref(), Some("/users/12345"));
            assert!(string_attr(s, "client.address").is_some(), "{s:#?}");
            assert_eq!(
                string_attr(s, "user_agent.original").as_deref(),
                Some("mesh-test/1")
            );
        }
        assert_eq!(
            string_attr(&out_client, "url.full"),
            Some(format!("http://{callee}/users/12345"))
        );
        assert_eq!(
            string_attr(&out_client, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            int_attr(&out_client, "server.port"),
            Some(i64::from(callee.port()))
        );
        // The inbound proxy forwards the request as named (Host) to the local server.
        assert_eq!(
            string_attr(&in_client, "url.full"),
            Some(format!("http://{callee}/users/12345"))
        );
        assert_eq!(
            int_attr(&in_client, "network.peer.port"),
            Some(i64::from(server.addr().port())),
            "{in_client:#?}"
        );
        assert_eq!(
            string_attr(&out_server, "meshtrace.direction").as_deref(),
            Some("outbound")
        );
        assert_eq!(
            string_attr(&out_client, "meshtrace.direction").as_deref(),
            Some("outbound")
        );
        assert_eq!(
            string_attr(&in_server, "meshtrace.direction").as_deref(),
            Some("inbound")
        );
        assert_eq!(
            string_attr(&in_client, "meshtrace.direction").as_deref(),
            Some("inbound")
        );
        // Nothing secret, no query string, anywhere.
        for text in all_strings(&all) {
            for secret in ["querysecret", "authsecret", "cookiesecret", "token=", "?"] {
                assert!(!text.contains(secret), "{secret:?} exported in {text:?}");
            }
        }
        mesh.shutdown().await;
    }
}
