//! One meshed hop, in process: client → outbound proxy (explicit mode) → inbound proxy (fixed
//! target) → server, both proxies exporting to one real OTLP receiver. Checks what a tracing
//! backend would see: four chained spans, resources, attributes, propagation and sampling.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestProxy;
use futures::StreamExt;
use http::HeaderMap;
use meshtrace_proxy::export::ExporterHandle;
use meshtrace_proxy::trace::TraceArgs;
use meshtrace_tests::client::{exchange, RawResponse};
use meshtrace_tests::otlp::{OtlpReceiver, ReceivedSpan, ReceiverProtocol};
use meshtrace_tests::upstream::{HttpUpstream, RawHttpUpstream};
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
        // The client asked for nothing (no sample header): its response is not changed.
        assert_eq!(response.header("traceresponse"), None);

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

/// What the application answers, byte for byte: mixed-case names, an order no library would
/// choose, a `Date` (which a proxy may legitimately refresh) and hop-by-hop fields.
const APP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nX-App-Header: MiXeD Case\r\nContent-Type: text/plain; charset=utf-8\r\ncache-control: no-store\r\nDate: Sat, 21 Nov 2026 12:00:00 GMT\r\nKeep-Alive: timeout=5\r\nVary: Accept-Encoding, X-Other\r\nContent-Length: 19\r\n\r\nhello from the app\n";

/// Hop-by-hop fields (RFC 9110 §7.6.1) and `Date`: the only fields a proxy may change.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "date",
];

/// A response head's lines without the hop-by-hop fields and `Date`.
fn end_to_end_head(response: &RawResponse) -> String {
    response
        .head_str()
        .split_inclusive("\r\n")
        .filter(|line| {
            let name = line.split(':').next().unwrap_or_default();
            !HOP_BY_HOP.contains(&name.to_ascii_lowercase().as_str())
        })
        .collect()
}

#[tokio::test]
async fn responses_are_byte_identical_unless_the_client_sent_a_sample_header() {
    let app = RawHttpUpstream::start(APP_RESPONSE).await;
    // Every request is sampled: recording a trace does not change the response either.
    let mesh = Mesh::start(ReceiverProtocol::Http, app.addr(), trace_args(1.0)).await;
    let direct = exchange(
        app.addr(),
        b"GET /orders/7 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    )
    .await;
    app.next_request().await;
    assert_eq!(direct.status(), 200, "{}", direct.head_str());
    let caller_context = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n";
    // Started by the caller's proxy, or joined from the client's context.
    for headers in ["", caller_context] {
        let meshed = mesh.get("/orders/7", headers).await;
        app.next_request().await;
        assert_eq!(
            end_to_end_head(&meshed),
            end_to_end_head(&direct),
            "{headers:?}"
        );
        assert_eq!(meshed.body, direct.body);
    }
    // A sample header asks for the trace: `traceresponse` is then the only addition.
    let asked = mesh.get("/orders/7", "l5d-sample: 1\r\n").await;
    app.next_request().await;
    let traceresponse = asked.header("traceresponse").expect("traceresponse");
    traceparent(&traceresponse);
    let without: String = end_to_end_head(&asked)
        .split_inclusive("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("traceresponse:"))
        .collect();
    assert_eq!(without, end_to_end_head(&direct));
    mesh.shutdown().await;
}

impl Mesh {
    /// Sends a request forced into the trace with `l5d-sample: 1`, waits for its four spans and
    /// asserts they are the only spans ever received: whatever came before was not traced.
    async fn assert_nothing_else_traced(&self) {
        let response = self.get("/barrier", "l5d-sample: 1\r\n").await;
        assert_eq!(response.status(), 200, "{}", response.head_str());
        let traceresponse = response.header("traceresponse").expect("traceresponse");
        let (trace_id, _, _) = traceparent(&traceresponse);
        let spans = self.hop_spans().await;
        for s in &spans {
            assert_eq!(
                hex(&s.span.trace_id),
                trace_id,
                "only the barrier is traced"
            );
        }
    }
}

#[tokio::test]
async fn sample_header_one_traces_despite_rate_zero_and_answers_traceresponse() {
    let server = HttpUpstream::start().await;
    let mesh = Mesh::start(ReceiverProtocol::Http, server.addr(), trace_args(0.0)).await;
    let response = mesh.get("/orders/1", "l5d-sample: 1\r\n").await;
    assert_eq!(response.status(), 200);
    let (trace_id, span_id, flags) =
        traceparent(&response.header("traceresponse").expect("traceresponse"));
    assert_eq!(u8::from_str_radix(&flags, 16).expect("hex") & 1, 1);
    let [out_server, _, in_server, _] = mesh.hop_spans().await;
    assert_eq!(hex(&out_server.span.trace_id), trace_id);
    assert_eq!(hex(&out_server.span.span_id), span_id);
    assert_eq!(in_server.span.trace_id, out_server.span.trace_id);
    // Consumed by the proxy that applied it: neither the callee's proxy nor the server sees it.
    let seen = server.wait_for_requests(1).await;
    assert!(seen[0].headers.get("l5d-sample").is_none());
    mesh.shutdown().await;
}

#[tokio::test]
async fn sample_header_zero_beats_a_sampled_parent() {
    let server = HttpUpstream::start().await;
    let mesh = Mesh::start(ReceiverProtocol::Http, server.addr(), trace_args(1.0)).await;
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = mesh
        .get(
            "/orders/2",
            &format!("traceparent: {parent}\r\nl5d-sample: 0\r\n"),
        )
        .await;
    assert_eq!(response.status(), 200);
    let seen = server.wait_for_requests(1).await;
    let (trace_id, parent_id, flags) =
        traceparent(header(&seen[0].headers, "traceparent").expect("traceparent"));
    assert_eq!(trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(parent_id, "b7ad6b7169203331");
    assert_eq!(flags, "00");
    assert_eq!(header(&seen[0].headers, "x-b3-sampled"), Some("0"));
    mesh.assert_nothing_else_traced().await;
    mesh.shutdown().await;
}

/// What the server saw: W3C (trace id, parent id, flags) and B3 (trace id, span id, sampled).
fn both_formats(headers: &HeaderMap) -> ((String, String, String), (String, String, String)) {
    let w3c = traceparent(header(headers, "traceparent").expect("traceparent"));
    let b3 = if let Some(single) = header(headers, "b3") {
        let fields: Vec<&str> = single.split('-').collect();
        assert!(fields.len() >= 3, "{single}");
        (
            fields[0].to_string(),
            fields[1].to_string(),
            fields[2].to_string(),
        )
    } else {
        let get = |name| header(headers, name).expect(name).to_string();
        (get("x-b3-traceid"), get("x-b3-spanid"), get("x-b3-sampled"))
    };
    (w3c, b3)
}

#[tokio::test]
async fn b3_only_and_w3c_only_both_reach_the_server_in_both_formats() {
    let server = HttpUpstream::start().await;
    let mesh = Mesh::start(ReceiverProtocol::Http, server.addr(), trace_args(0.0)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let cases = [
        format!("traceparent: 00-{trace}-00f067aa0ba902b7-01\r\n"),
        format!("X-B3-TraceId: {trace}\r\nX-B3-SpanId: 00f067aa0ba902b7\r\nX-B3-Sampled: 1\r\n"),
        format!("b3: {trace}-00f067aa0ba902b7-1\r\n"),
    ];
    for (n, case) in cases.iter().enumerate() {
        let response = mesh.get("/items", case).await;
        assert_eq!(response.status(), 200);
        let seen = server.wait_for_requests(n + 1).await;
        let ((w_trace, w_parent, w_flags), (b_trace, b_span, b_sampled)) =
            both_formats(&seen[n].headers);
        assert_eq!(w_trace, trace, "{case}");
        assert_eq!(b_trace, trace, "{case}");
        assert_eq!(w_parent, b_span, "{case}");
        assert_ne!(
            w_parent, "00f067aa0ba902b7",
            "{case}: a new CLIENT span per hop"
        );
        assert_eq!(w_flags, "01", "{case}");
        assert_eq!(b_sampled, "1", "{case}");
    }
    // Sampled by the incoming decision although the rate is 0: 4 spans per request.
    let spans = mesh.receiver.wait_for_spans(12, WAIT).await.expect("spans");
    assert_eq!(spans.len(), 12);
    mesh.shutdown().await;
}

#[tokio::test]
async fn b3_64_bit_ids_stay_64_bit_in_b3_and_are_padded_in_w3c() {
    let server = HttpUpstream::start().await;
    let mesh = Mesh::start(ReceiverProtocol::Grpc, server.addr(), trace_args(0.0)).await;
    let short = "a3ce929d0e0e4736";
    let response = mesh
        .get(
            "/items",
            &format!(
                "X-B3-TraceId: {short}\r\nX-B3-SpanId: 00f067aa0ba902b7\r\nX-B3-Sampled: 1\r\n"
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let seen = server.wait_for_requests(1).await;
    let ((w_trace, w_parent, _), (b_trace, b_span, _)) = both_formats(&seen[0].headers);
    assert_eq!(b_trace, short);
    assert_eq!(w_trace, format!("0000000000000000{short}"));
    assert_eq!(w_parent, b_span);
    let spans = mesh.hop_spans().await;
    for s in &spans {
        assert_eq!(hex(&s.span.trace_id), w_trace);
    }
    mesh.shutdown().await;
}

#[tokio::test]
async fn invalid_traceparent_restarts_the_trace_and_drops_tracestate() {
    let server = HttpUpstream::start().await;
    let mesh = Mesh::start(ReceiverProtocol::Http, server.addr(), trace_args(1.0)).await;
    // Uppercase hex is invalid in W3C.
    let invalid = "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01";
    let response = mesh
        .get(
            "/items",
            &format!("traceparent: {invalid}\r\ntracestate: vendor=value\r\n"),
        )
        .await;
    assert_eq!(response.status(), 200);
    let seen = server.wait_for_requests(1).await;
    let (trace_id, _, _) = traceparent(header(&seen[0].headers, "traceparent").expect("tp"));
    assert_ne!(trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert!(seen[0].headers.get("tracestate").is_none());
    let [out_server, ..] = mesh.hop_spans().await;
    assert!(out_server.span.parent_span_id.is_empty(), "a new root");
    assert_eq!(hex(&out_server.span.trace_id), trace_id);
    assert_eq!(out_server.span.trace_state, "");
    // The client sent no sample header: the response is not changed.
    assert!(response.header("traceresponse").is_none());
    mesh.shutdown().await;
}

#[tokio::test]
async fn refused_upstream_still_yields_four_spans_with_error_status() {
    // A port with nothing listening: bind, learn the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let mesh = Mesh::start(ReceiverProtocol::Grpc, closed, trace_args(1.0)).await;
    let response = mesh.get("/users/7", "").await;
    assert_eq!(response.status(), 502, "{}", response.head_str());
    let spans = mesh.hop_spans().await;
    let [out_server, out_client, in_server, in_client] = &spans;
    for s in &spans {
        let status = s.span.status.clone().unwrap_or_default();
        assert_eq!(status.code, StatusCode::Error as i32, "{s:#?}");
    }
    assert_eq!(
        string_attr(in_client, "error.type").as_deref(),
        Some("connection_refused")
    );
    assert!(
        string_attr(in_server, "error.type").is_some(),
        "{in_server:#?}"
    );
    for s in [out_server, out_client] {
        assert_eq!(int_attr(s, "http.response.status_code"), Some(502));
    }
    mesh.shutdown().await;
}

/// A server whose one response streams `first`, then waits for the test's go-ahead and
/// streams the last chunk, noting the moment (Unix nanos) it released it.
async fn gated_stream_server(
    release: tokio::sync::oneshot::Receiver<()>,
    released_at: tokio::sync::oneshot::Sender<u64>,
) -> SocketAddr {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let gate = std::sync::Mutex::new(Some((release, released_at)));
        let service = hyper::service::service_fn(move |_request| {
            let (release, released_at) = gate.lock().expect("lock").take().expect("one request");
            let frames = futures::stream::once(async { Bytes::from_static(b"first chunk;") })
                .chain(futures::stream::once(async move {
                    let _ = release.await;
                    let _ = released_at.send(unix_nanos());
                    Bytes::from_static(b"last chunk")
                }))
                .map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk)));
            async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(frames)))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
    addr
}

fn unix_nanos() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since_epoch.as_nanos()).expect("fits")
}

#[tokio::test]
async fn streamed_response_spans_end_after_the_last_body_byte() {
    use http_body_util::{BodyExt, Empty};

    let (release, release_rx) = tokio::sync::oneshot::channel();
    let (released_tx, released_at) = tokio::sync::oneshot::channel();
    let server = gated_stream_server(release_rx, released_tx).await;
    let mesh = Mesh::start(ReceiverProtocol::Http, server, trace_args(1.0)).await;

    let stream = tokio::net::TcpStream::connect(mesh.outbound.outbound)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let callee = mesh.inbound.inbound;
    let request = http::Request::get(format!("http://{callee}/stream"))
        .header("host", callee.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("response head in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    // The head went through both proxies; only now does the server send its last chunk.
    release.send(()).expect("server waiting");
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"first chunk;last chunk");
    let released_at = released_at.await.expect("release time");

    let spans = mesh.hop_spans().await;
    for s in &spans {
        assert!(
            s.span.end_time_unix_nano >= released_at,
            "{:?} ended {} ns before the last chunk was released",
            s.span.kind,
            released_at - s.span.end_time_unix_nano
        );
        assert_eq!(
            int_attr(s, "http.response.body.size"),
            Some(body.len() as i64)
        );
    }
    mesh.shutdown().await;
}

#[tokio::test]
async fn grpc_over_http2_records_rpc_attributes_and_status() {
    use meshtrace_tests::grpc;

    let server = grpc::GrpcServer::start().await;
    let mesh = Mesh::start(ReceiverProtocol::Grpc, server.addr(), trace_args(1.0)).await;
    // h2 to the caller's outbound proxy, naming the callee's inbound proxy in `:authority`.
    let channel = grpc::channel(mesh.outbound.outbound, mesh.inbound.inbound).await;
    let (reply, _) = grpc::echo(channel, "hello").await.expect("echo");
    assert_eq!(reply, "hello");

    let spans = mesh.hop_spans().await;
    let [out_server, out_client, in_server, in_client] = &spans;
    assert_eq!(out_client.span.parent_span_id, out_server.span.span_id);
    assert_eq!(in_server.span.parent_span_id, out_client.span.span_id);
    assert_eq!(in_client.span.parent_span_id, in_server.span.span_id);
    for s in &spans {
        assert_eq!(
            string_attr(s, "rpc.system").as_deref(),
            Some("grpc"),
            "{s:#?}"
        );
        assert_eq!(
            string_attr(s, "rpc.service").as_deref(),
            Some("meshtrace.test.Test")
        );
        assert_eq!(string_attr(s, "rpc.method").as_deref(), Some("Echo"));
        assert_eq!(int_attr(s, "rpc.grpc.status_code"), Some(0), "{s:#?}");
        assert_eq!(
            string_attr(s, "network.protocol.version").as_deref(),
            Some("2")
        );
        assert_eq!(
            string_attr(s, "http.request.method").as_deref(),
            Some("POST")
        );
        assert_ne!(
            s.span.status.clone().unwrap_or_default().code,
            StatusCode::Error as i32
        );
    }
    mesh.shutdown().await;
}

#[tokio::test]
async fn body_sizes_are_the_bytes_forwarded_each_way() {
    let server = HttpUpstream::start().await;
    let mesh = Mesh::start(ReceiverProtocol::Http, server.addr(), trace_args(1.0)).await;
    let callee = mesh.inbound.inbound;
    let body = "hello, mesh";
    let request = format!(
        "POST http://{callee}/echo HTTP/1.1\r\nHost: {callee}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = exchange(mesh.outbound.outbound, request.as_bytes()).await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    assert_eq!(response.body, body.as_bytes());
    for s in mesh.hop_spans().await {
        assert_eq!(
            string_attr(&s, "http.request.method").as_deref(),
            Some("POST")
        );
        assert_eq!(
            int_attr(&s, "http.request.body.size"),
            Some(body.len() as i64),
            "{s:#?}"
        );
        assert_eq!(
            int_attr(&s, "http.response.body.size"),
            Some(body.len() as i64),
            "{s:#?}"
        );
    }
    mesh.shutdown().await;
}

#[tokio::test]
async fn grpc_error_status_marks_every_span_as_error() {
    use meshtrace_tests::grpc::{self, EchoReply, EchoRequest};

    let server = grpc::GrpcServer::start().await;
    let mesh = Mesh::start(ReceiverProtocol::Http, server.addr(), trace_args(1.0)).await;
    let channel = grpc::channel(mesh.outbound.outbound, mesh.inbound.inbound).await;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let status = client
        .unary(
            tonic::Request::new(EchoRequest {
                message: "x".into(),
            }),
            http::uri::PathAndQuery::from_static("/meshtrace.test.Test/Missing"),
            tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .expect_err("no such method");
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    for s in mesh.hop_spans().await {
        assert_eq!(string_attr(&s, "rpc.method").as_deref(), Some("Missing"));
        assert_eq!(
            int_attr(&s, "rpc.grpc.status_code"),
            Some(tonic::Code::Unimplemented as i64),
            "{s:#?}"
        );
        assert_eq!(int_attr(&s, "http.response.status_code"), Some(200));
        let span_status = s.span.status.clone().unwrap_or_default();
        assert_eq!(span_status.code, StatusCode::Error as i32, "{s:#?}");
    }
    mesh.shutdown().await;
}

/// Every span of a gRPC call that ended without a response ends in error with `code` as its
/// `rpc.grpc.status_code`.
fn assert_grpc_ended_with(spans: &[ReceivedSpan], code: tonic::Code) {
    for s in spans {
        assert_eq!(string_attr(s, "rpc.method").as_deref(), Some("Wait"));
        assert_eq!(
            int_attr(s, "rpc.grpc.status_code"),
            Some(code as i64),
            "{s:#?}"
        );
        assert!(string_attr(s, "error.type").is_some(), "{s:#?}");
        let span_status = s.span.status.clone().unwrap_or_default();
        assert_eq!(span_status.code, StatusCode::Error as i32, "{s:#?}");
    }
}

#[tokio::test]
async fn grpc_call_cancelled_by_the_client_records_cancelled() {
    use meshtrace_tests::grpc;

    // Without a deadline, and well before one.
    for timeout in [None, Some(Duration::from_secs(600))] {
        let server = grpc::GrpcServer::start().await;
        let mesh = Mesh::start(ReceiverProtocol::Http, server.addr(), trace_args(1.0)).await;
        let channel = grpc::channel(mesh.outbound.outbound, mesh.inbound.inbound).await;
        let call = tokio::spawn(grpc::wait(channel, timeout));
        server.wait_called().await;
        // The client gives up: its stream is reset with RST_STREAM(CANCEL).
        call.abort();
        assert_grpc_ended_with(&mesh.hop_spans().await, tonic::Code::Cancelled);
        mesh.shutdown().await;
    }
}

#[tokio::test]
async fn grpc_call_past_its_deadline_records_deadline_exceeded() {
    use meshtrace_tests::grpc;

    let server = grpc::GrpcServer::start().await;
    let mesh = Mesh::start(ReceiverProtocol::Http, server.addr(), trace_args(1.0)).await;
    let channel = grpc::channel(mesh.outbound.outbound, mesh.inbound.inbound).await;
    let deadline = Duration::from_millis(500);
    // The server ignores `grpc-timeout`; the client enforces its deadline as gRPC clients do:
    // when it passes, the client stops waiting and resets the stream.
    // (tonic's channel enforces the `grpc-timeout` it sends itself, and reports `Cancelled`.)
    let call = tokio::time::timeout(deadline, grpc::wait(channel, Some(deadline))).await;
    assert!(!matches!(call, Ok(Ok(()))), "Wait never answers");
    server.wait_called().await;
    assert_grpc_ended_with(&mesh.hop_spans().await, tonic::Code::DeadlineExceeded);
    mesh.shutdown().await;
}

/// A gRPC server that starts answering every call (headers, one `CountReply`) and, once told
/// to, cancels it with `RST_STREAM(CANCEL)`.
async fn cancelling_grpc_server(cancel: std::sync::Arc<tokio::sync::Notify>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    let cancel = cancel.clone();
                    tokio::spawn(async move {
                        let head = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("response");
                        let Ok(mut send) = respond.send_response(head, false) else {
                            return;
                        };
                        // One length-prefixed message: CountReply { i: 1 }.
                        let message = bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
                        let _ = send.send_data(message, false);
                        cancel.notified().await;
                        send.send_reset(h2::Reason::CANCEL);
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn grpc_call_the_server_cancels_records_cancelled() {
    use meshtrace_tests::grpc::{CountReply, CountRequest, COUNT_PATH};

    let cancel = std::sync::Arc::new(tokio::sync::Notify::new());
    let server = cancelling_grpc_server(cancel.clone()).await;
    let mesh = Mesh::start(ReceiverProtocol::Http, server, trace_args(1.0)).await;
    let channel =
        meshtrace_tests::grpc::channel(mesh.outbound.outbound, mesh.inbound.inbound).await;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let mut replies = client
        .server_streaming(
            tonic::Request::new(CountRequest { n: 2 }),
            http::uri::PathAndQuery::from_static(COUNT_PATH),
            tonic_prost::ProstCodec::<CountRequest, CountReply>::default(),
        )
        .await
        .expect("response headers")
        .into_inner();
    let first = replies.message().await.expect("first reply");
    assert_eq!(first, Some(CountReply { i: 1 }));
    // The server cancels the call mid-stream.
    cancel.notify_one();
    let status = replies.message().await.expect_err("the server cancelled");
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");

    let [_, _, _, callee_client] = mesh.hop_spans().await;
    assert_eq!(
        int_attr(&callee_client, "rpc.grpc.status_code"),
        Some(tonic::Code::Cancelled as i64),
        "{callee_client:#?}"
    );
    assert_eq!(
        int_attr(&callee_client, "http.response.status_code"),
        Some(200)
    );
    let span_status = callee_client.span.status.clone().unwrap_or_default();
    assert_eq!(span_status.code, StatusCode::Error as i32);
    mesh.shutdown().await;
}
