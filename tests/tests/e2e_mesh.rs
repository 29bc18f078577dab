//! End to end: pods as network namespaces on one node, each meshed the way the injector does
//! it (`meshtrace-proxy init`, then the real proxy binary as uid 2102), applications that know
//! nothing about the mesh, and a real OTLP receiver outside the pods.
//!
//! The applications are listeners and clients of the test process created inside the pods
//! (`Pod::listen`/`Pod::connect`), so iptables sees them as the pods' own traffic. Every
//! test has its own node (subnet, pods, receiver), so they run in parallel; namespaces and
//! proxy processes go away on drop, also when an assertion fails.
//!
//! Negative checks ("no spans") are ordered before a positive request whose spans are awaited:
//! each proxy exports in order, so spans that should not exist would have arrived first.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshtrace_tests::client::{RawClient, RawResponse};
use meshtrace_tests::netns::{MeshedProxy, Node, Pod, PROXY_ADMIN_PORT};
use meshtrace_tests::otlp::{OtlpReceiver, ReceivedSpan, ReceiverProtocol};
use meshtrace_tests::tcp::{ServerFirst, TcpEcho};
use meshtrace_tests::upstream::{generated_body, matches_pattern, HttpUpstream, RawHttpUpstream};
use meshtrace_tests::ws::WsEcho;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Generous: debug binaries on a small, shared machine.
const PATIENCE: Duration = Duration::from_secs(60);
/// The port the sample applications listen on.
const APP_PORT: u16 = 8080;

/// A node with an OTLP receiver on its host address, reachable from every pod.
struct Mesh {
    node: Node,
    receiver: OtlpReceiver,
}

impl Mesh {
    async fn new_or_skip() -> Option<Mesh> {
        let node = Node::new_or_skip()?;
        let receiver =
            OtlpReceiver::start_on(ReceiverProtocol::Http, (node.host_ip(), 0).into()).await;
        Some(Mesh { node, receiver })
    }

    fn pod(&self, label: &str) -> Pod {
        self.node.pod(label).expect("creating a pod")
    }

    /// Meshes `pod` like the injector: init with `init_args`, then the proxy with `env`.
    async fn mesh(&self, pod: &Pod, init_args: &[&str], env: &[(&str, &str)]) -> MeshedProxy {
        pod.mesh(&self.receiver.endpoint(), init_args, env)
            .await
            .unwrap_or_else(|e| panic!("meshing pod {}: {e}", pod.label()))
    }

    async fn wait_for_spans(&self, n: usize) -> Vec<ReceivedSpan> {
        self.receiver
            .wait_for_spans(n, PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("{e}; got: {:#?}", summary(&self.receiver.spans())))
    }
}

fn string_attr(span: &ReceivedSpan, key: &str) -> Option<String> {
    match span.attr(key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn span_attr(span: &Span, key: &str) -> Option<any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

/// `(service, direction, kind, name)` of each span, for failure messages.
fn summary(spans: &[ReceivedSpan]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {:?} {:?} trace={} id={} parent={}",
                s.resource_attr("service.name").unwrap_or_default(),
                string_attr(s, "meshtrace.direction").unwrap_or_default(),
                SpanKind::try_from(s.span.kind).unwrap_or(SpanKind::Unspecified),
                s.span.name,
                hex::encode(&s.span.trace_id),
                hex::encode(&s.span.span_id),
                hex::encode(&s.span.parent_span_id),
            )
        })
        .collect()
}

/// The one span that `service`'s proxy emitted in `direction` with `kind`.
fn span_of<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    direction: &str,
    kind: SpanKind,
) -> &'a Span {
    let matching: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| {
            s.resource_attr("service.name").as_deref() == Some(service)
                && string_attr(s, "meshtrace.direction").as_deref() == Some(direction)
                && s.span.kind == kind as i32
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one {service} {direction} {kind:?} span in {:#?}",
        summary(spans)
    );
    &matching[0].span
}

/// Asserts that `chain` (outermost first) is a parent → child chain of one trace, the first
/// one a root; returns the trace id.
fn assert_chain(chain: &[&Span]) -> Vec<u8> {
    let trace_id = chain[0].trace_id.clone();
    assert!(
        chain[0].parent_span_id.is_empty(),
        "the first span of the chain is a root"
    );
    for pair in chain.windows(2) {
        assert_eq!(pair[1].trace_id, trace_id, "one trace");
        assert_eq!(
            hex::encode(&pair[1].parent_span_id),
            hex::encode(&pair[0].span_id),
            "{:?} is a child of {:?}",
            pair[1].name,
            pair[0].name
        );
    }
    trace_id
}

/// `(trace id, parent id, sampled)` of a `traceparent` value.
fn parse_traceparent(value: &str) -> (String, String, bool) {
    let parts: Vec<&str> = value.trim().split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value:?}");
    assert_eq!(parts[0], "00", "traceparent version");
    let flags = u8::from_str_radix(parts[3], 16).expect("hex trace flags");
    (parts[1].into(), parts[2].into(), flags & 1 == 1)
}

fn header_in_head(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// One raw HTTP/1.1 exchange from inside `pod` to `addr`.
async fn raw_exchange(pod: &Pod, addr: SocketAddr, request: &[u8]) -> RawResponse {
    let stream = pod.connect(addr).await.expect("connecting from the pod");
    let mut client = RawClient::from_stream(stream);
    client.send(request).await;
    client.read_response().await
}

/// A GET from inside `pod` with `headers`.
async fn get(pod: &Pod, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    raw_exchange(pod, addr, request.as_bytes()).await
}

const APP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-App-Header: MiXeD Case\r\nCache-Control: no-store\r\nDate: Sat, 21 Nov 2026 12:00:00 GMT\r\nContent-Length: 19\r\n\r\nhello from the app\n";

/// Scenario 1: one hop between two meshed pods, compared byte for byte with the same request
/// before the pods were meshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hop_is_unchanged_and_traced_with_four_spans() {
    let Some(mesh) = Mesh::new_or_skip().await else {
        return;
    };
    let a = mesh.pod("a");
    let b = mesh.pod("b");
    let app = RawHttpUpstream::serve(b.listen(APP_PORT).unwrap(), APP_RESPONSE);
    let target = SocketAddr::from((b.ip(), APP_PORT));
    let request = format!(
        "POST /orders/42?expand=items HTTP/1.1\r\nHost: {target}\r\nUser-Agent: e2e-client/1.0\r\nX-Request-Tag: Keep-This\r\nContent-Type: application/json\r\nContent-Length: 11\r\nAccept: */*\r\n\r\n{{\"qty\": 3}}\n"
    );

    let unmeshed = raw_exchange(&a, target, request.as_bytes()).await;
    let unmeshed_request = app.next_request().await;
    assert_eq!(unmeshed.status(), 200, "{}", unmeshed.head_str());

    let _proxy_a = mesh.mesh(&a, &[], &[]).await;
    let _proxy_b = mesh.mesh(&b, &[], &[]).await;
    let meshed = raw_exchange(&a, target, request.as_bytes()).await;
    let meshed_request = app.next_request().await;

    // The application's response arrives unchanged: same status line, the app's headers in the
    // same order and case, same body. The client sent no sample header, so no `traceresponse`.
    assert_eq!(meshed.header("traceresponse"), None);
    assert_eq!(meshed.head_str(), unmeshed.head_str());
    assert_eq!(meshed.body, unmeshed.body);

    let spans = mesh.wait_for_spans(4).await;
    let a_server = span_of(&spans, "a", "outbound", SpanKind::Server);
    let a_client = span_of(&spans, "a", "outbound", SpanKind::Client);
    let b_server = span_of(&spans, "b", "inbound", SpanKind::Server);
    let b_client = span_of(&spans, "b", "inbound", SpanKind::Client);
    let trace_id = assert_chain(&[a_server, a_client, b_server, b_client]);
    // Under real redirection the spans name the real addresses: the original destination
    // (B's pod IP and the app's port) as the peer of both CLIENT spans, A's pod IP as the
    // caller of B's SERVER span.
    let b_ip = b.ip().to_string();
    let a_ip = a.ip().to_string();
    for client_span in [a_client, b_client] {
        assert_eq!(
            span_attr(client_span, "network.peer.address"),
            Some(any_value::Value::StringValue(b_ip.clone()))
        );
        assert_eq!(
            span_attr(client_span, "network.peer.port"),
            Some(any_value::Value::IntValue(APP_PORT.into()))
        );
    }
    assert_eq!(
        span_attr(b_server, "network.peer.address"),
        Some(any_value::Value::StringValue(a_ip))
    );
    for span in [a_server, a_client, b_server, b_client] {
        assert_eq!(
            span_attr(span, "http.response.status_code"),
            Some(any_value::Value::IntValue(200))
        );
    }
    assert_eq!(spans.len(), 4, "{:#?}", summary(&spans));

    // B's application sees the trace, its parent being B's inbound CLIENT span.
    let traceparent = header_in_head(&meshed_request.head_str(), "traceparent")
        .expect("the application receives a traceparent");
    let (app_trace, app_parent, sampled) = parse_traceparent(&traceparent);
    assert_eq!(app_trace, hex::encode(&trace_id));
    assert_eq!(app_parent, hex::encode(&b_client.span_id));
    assert!(sampled, "{traceparent}");
    // The request the application sees is the client's, byte for byte, plus the trace
    // context headers the proxies add and the request id B's inbound proxy adds (the client
    // sent none).
    let request_id = header_in_head(&meshed_request.head_str(), "x-request-id")
        .expect("the inbound proxy adds a request id");
    assert_eq!(request_id.len(), 36, "a UUID: {request_id}");
    let without_trace_headers: String = meshed_request
        .head_str()
        .split_inclusive("\r\n")
        .filter(|line| {
            let name = line
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            !(TRACE_HEADERS.contains(&name.as_str()) || name == "x-request-id")
        })
        .collect();
    assert_eq!(without_trace_headers, unmeshed_request.head_str());
    assert_eq!(meshed_request.body, unmeshed_request.body);
}

/// Headers an application forwards to keep a trace going (what tracing libraries propagate).
const TRACE_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// An application in `pod` on [`APP_PORT`] that answers every request by calling `next`
/// (plain HTTP from inside the pod, so through its proxy) with the trace headers copied.
fn forwarding_app(pod: Arc<Pod>, next: SocketAddr) {
    let listener = pod.listen(APP_PORT).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let pod = Arc::clone(&pod);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let pod = Arc::clone(&pod);
                    async move {
                        let reply = match forward_to(&pod, next, request.headers()).await {
                            Ok(reply) => reply,
                            Err(e) => {
                                let mut reply =
                                    Response::new(Full::new(Bytes::from(e.to_string())));
                                *reply.status_mut() = StatusCode::BAD_GATEWAY;
                                reply
                            }
                        };
                        Ok::<_, std::convert::Infallible>(reply)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn forward_to(
    pod: &Pod,
    next: SocketAddr,
    incoming: &HeaderMap,
) -> Result<Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = pod.connect(next).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request =
        Request::get(format!("http://{next}/from-b")).header("host", next.to_string());
    for name in TRACE_HEADERS {
        for value in incoming.get_all(*name) {
            request = request.header(*name, value);
        }
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::new()))?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    Ok(reply)
}

/// Three meshed pods A → B → C; B's application forwards the trace headers.
struct Chain {
    mesh: Mesh,
    a: Pod,
    c_app: HttpUpstream,
    b_ip: IpAddr,
    _proxies: Vec<MeshedProxy>,
    _b: Arc<Pod>,
    _c: Pod,
}

impl Chain {
    async fn start(env: &[(&str, &str)]) -> Option<Chain> {
        let mesh = Mesh::new_or_skip().await?;
        let a = mesh.pod("a");
        let b = Arc::new(mesh.pod("b"));
        let c = mesh.pod("c");
        let c_app = HttpUpstream::serve(c.listen(APP_PORT).unwrap());
        forwarding_app(Arc::clone(&b), (c.ip(), APP_PORT).into());
        let mut proxies = Vec::new();
        for pod in [&a, &*b, &c] {
            proxies.push(mesh.mesh(pod, &[], env).await);
        }
        Some(Chain {
            b_ip: b.ip().into(),
            mesh,
            a,
            c_app,
            _proxies: proxies,
            _b: b,
            _c: c,
        })
    }

    /// A's application calls B (which calls C); returns the traceparent C's application saw.
    async fn call(&self, headers: &[(&str, &str)]) -> String {
        let seen = self.c_app.requests().len();
        let response = get(&self.a, (self.b_ip, APP_PORT).into(), "/start", headers).await;
        assert_eq!(response.status(), 200, "{}", response.head_str());
        assert_eq!(response.body, b"ok", "C's answer comes back through B");
        let requests = self.c_app.wait_for_requests(seen + 1).await;
        let request = &requests[seen];
        assert_eq!(request.uri.path(), "/from-b");
        assert!(
            request.headers.get("l5d-sample").is_none(),
            "the sample header is consumed by the proxy that applies it"
        );
        request
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .expect("C's application receives a traceparent")
            .to_owned()
    }

    /// Asserts `spans` are the 8 proxy spans of one A → B → C request, correctly nested;
    /// returns the trace id (hex).
    fn assert_eight_spans(&self, spans: &[ReceivedSpan], c_traceparent: &str) -> String {
        assert_eq!(spans.len(), 8, "{:#?}", summary(spans));
        let chain = [
            span_of(spans, "a", "outbound", SpanKind::Server),
            span_of(spans, "a", "outbound", SpanKind::Client),
            span_of(spans, "b", "inbound", SpanKind::Server),
            span_of(spans, "b", "inbound", SpanKind::Client),
            span_of(spans, "b", "outbound", SpanKind::Server),
            span_of(spans, "b", "outbound", SpanKind::Client),
            span_of(spans, "c", "inbound", SpanKind::Server),
            span_of(spans, "c", "inbound", SpanKind::Client),
        ];
        let trace_id = hex::encode(assert_chain(&chain));
        let (trace, parent, sampled) = parse_traceparent(c_traceparent);
        assert_eq!(trace, trace_id);
        assert_eq!(parent, hex::encode(&chain[7].span_id));
        assert!(sampled, "{c_traceparent}");
        trace_id
    }
}

/// Scenarios 2 and 3 (default rate 1): a chain's request makes 8 spans in one trace; a request
/// with `l5d-sample: 0` goes through untraced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pod_chain_is_one_trace_and_l5d_sample_0_turns_tracing_off() {
    let Some(chain) = Chain::start(&[]).await else {
        return;
    };
    // Unsampled first: its spans, if any were wrongly made, would be exported before the
    // sampled request's (each proxy exports in order), so waiting for the latter suffices.
    let unsampled = chain.call(&[("l5d-sample", "0")]).await;
    let (unsampled_trace, _, sampled) = parse_traceparent(&unsampled);
    assert!(!sampled, "the decision travels with the trace: {unsampled}");

    let sampled = chain.call(&[]).await;
    let spans = chain.mesh.wait_for_spans(8).await;
    let trace_id = chain.assert_eight_spans(&spans, &sampled);
    assert_ne!(trace_id, unsampled_trace);
}

/// Scenario 3 (default rate 0): nothing is traced unless the request says `l5d-sample: 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pod_chain_at_rate_0_is_traced_only_with_l5d_sample_1() {
    let Some(chain) = Chain::start(&[("MESHTRACE_SAMPLE_RATE", "0")]).await else {
        return;
    };
    let unsampled = chain.call(&[]).await;
    assert!(!parse_traceparent(&unsampled).2, "{unsampled}");

    let forced = chain.call(&[("l5d-sample", "1")]).await;
    let spans = chain.mesh.wait_for_spans(8).await;
    chain.assert_eight_spans(&spans, &forced);
}

/// Scenario 4: opaque TCP (an echo with a Redis-style exchange and a half-close, and a
/// server-speaks-first protocol on an opaque port), HTTP/2 without TLS and a WebSocket between
/// meshed pods arrive unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_h2c_and_websocket_pass_through_unchanged() {
    let Some(mesh) = Mesh::new_or_skip().await else {
        return;
    };
    let a = mesh.pod("a");
    let b = mesh.pod("b");
    const ECHO_PORT: u16 = 7000;
    const REDIS_PORT: u16 = 6379; // opaque by default: the server speaks first
    const WS_PORT: u16 = 8081;
    let _echo = TcpEcho::serve(b.listen(ECHO_PORT).unwrap());
    let _banner = ServerFirst::serve(b.listen(REDIS_PORT).unwrap(), b"+OK server ready\r\n");
    let h2_app = HttpUpstream::serve(b.listen(APP_PORT).unwrap());
    let _ws = WsEcho::serve(b.listen(WS_PORT).unwrap());
    let _proxy_a = mesh.mesh(&a, &[], &[]).await;
    let _proxy_b = mesh.mesh(&b, &[], &[]).await;

    // Opaque echo: a Redis-like exchange, then a half-close that must reach the server while
    // the other direction keeps working.
    let mut echo = a.connect((b.ip(), ECHO_PORT).into()).await.unwrap();
    let command = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";
    echo.write_all(command).await.unwrap();
    let mut reply = vec![0u8; command.len()];
    tokio::time::timeout(PATIENCE, echo.read_exact(&mut reply))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(reply, command);
    echo.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, echo.read_to_end(&mut rest))
        .await
        .expect("EOF in time")
        .unwrap();
    assert_eq!(rest, format!("{} bytes then EOF", command.len()).as_bytes());

    // Server speaks first on an opaque port: the banner arrives without the client sending.
    let mut redis = a.connect((b.ip(), REDIS_PORT).into()).await.unwrap();
    let mut banner = [0u8; 18];
    tokio::time::timeout(PATIENCE, redis.read_exact(&mut banner))
        .await
        .expect("the banner arrives without the client speaking")
        .unwrap();
    assert_eq!(&banner, b"+OK server ready\r\n");
    redis.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 6];
    tokio::time::timeout(PATIENCE, redis.read_exact(&mut pong))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&pong, b"PING\r\n");

    // HTTP/2 with prior knowledge: a streamed download and an upload echoed back.
    let stream = a.connect((b.ip(), APP_PORT).into()).await.unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake through the mesh");
    tokio::spawn(connection);
    let base = format!("http://{}:{APP_PORT}", b.ip());
    const LEN: u64 = 300_000;
    let download = h2
        .send_request(
            Request::get(format!("{base}/bytes/{LEN}"))
                .body(generated_body(0))
                .unwrap(),
        )
        .await
        .expect("h2 response");
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.version(), Version::HTTP_2);
    let body = download.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len() as u64, LEN);
    assert!(matches_pattern(0, &body), "the body arrives intact");
    let upload = h2
        .send_request(
            Request::post(format!("{base}/count"))
                .body(generated_body(LEN))
                .unwrap(),
        )
        .await
        .expect("h2 response");
    assert_eq!(upload.status(), StatusCode::OK);
    let counted = upload.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&counted[..], format!("{LEN} true").as_bytes());
    let versions: HashSet<Version> = h2_app.requests().iter().map(|r| r.version).collect();
    assert_eq!(versions, HashSet::from([Version::HTTP_2]), "h2 end to end");

    // WebSocket: text and binary messages echoed, then a clean close.
    let stream = a.connect((b.ip(), WS_PORT).into()).await.unwrap();
    let url = format!("ws://{}:{WS_PORT}/chat", b.ip());
    let (mut ws, handshake) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket upgrade through the mesh");
    assert_eq!(handshake.status(), StatusCode::SWITCHING_PROTOCOLS);
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    for message in [
        Message::text("hello over the mesh"),
        Message::binary(binary.clone()),
    ] {
        ws.send(message.clone()).await.unwrap();
        let echoed = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("echo in time")
            .expect("an echo")
            .unwrap();
        assert_eq!(echoed, message);
    }
    ws.close(None).await.unwrap();
}

/// Scenario 5: a skipped port bypasses both proxies (no spans, the application sees the
/// client's own address), and the proxy's admin port is reachable, not redirected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_ports_bypass_the_proxy_and_admin_is_not_redirected() {
    let Some(mesh) = Mesh::new_or_skip().await else {
        return;
    };
    const SKIPPED: u16 = 9090;
    let a = mesh.pod("a");
    let b = mesh.pod("b");
    let skipped_app = b.listen(SKIPPED).unwrap();
    let meshed_app = b.listen(APP_PORT).unwrap();
    let _proxy_a = mesh
        .mesh(&a, &[&format!("--skip-outbound-ports={SKIPPED}")], &[])
        .await;
    let _proxy_b = mesh
        .mesh(&b, &[&format!("--skip-inbound-ports={SKIPPED}")], &[])
        .await;

    // The application's peer is A itself, and what A sent arrives without trace headers.
    let skipped = tokio::spawn(answer_one_request(skipped_app));
    let response = get(&a, (b.ip(), SKIPPED).into(), "/skipped", &[]).await;
    assert_eq!(response.status(), 200);
    let (peer, head) = tokio::time::timeout(PATIENCE, skipped)
        .await
        .expect("the skipped port's application is reached")
        .unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(a.ip()), "the client's own address");
    assert!(
        header_in_head(&head, "traceparent").is_none(),
        "no proxy touched it: {head}"
    );

    // The meshed port next: its 4 spans are the only ones (proxies export in order, so spans
    // of the skipped request would have come first).
    let meshed = tokio::spawn(answer_one_request(meshed_app));
    let response = get(&a, (b.ip(), APP_PORT).into(), "/meshed", &[]).await;
    assert_eq!(response.status(), 200);
    let (peer, head) = meshed.await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(b.ip()), "forwarded by B's proxy");
    assert!(header_in_head(&head, "traceparent").is_some());
    let spans = mesh.wait_for_spans(4).await;
    assert_eq!(spans.len(), 4, "{:#?}", summary(&spans));
    for span in &spans {
        assert_eq!(span.span.name, "GET /meshed", "{:#?}", summary(&spans));
    }

    // B's admin port from outside the pods (the node's prober) and from pod A's application
    // (through A's proxy, which connects as uid 2102): answered by B's admin server. Were it redirected to the inbound port, the proxy
    // would refuse a connection addressed to itself.
    let admin = SocketAddr::from((b.ip(), PROXY_ADMIN_PORT));
    let ready = raw_exchange_outside(admin, b"GET /ready HTTP/1.1\r\nhost: b\r\n\r\n").await;
    assert_eq!(ready.status(), 200, "{}", ready.head_str());
    let metrics = get(&a, admin, "/metrics", &[]).await;
    assert_eq!(metrics.status(), 200, "{}", metrics.head_str());
    assert!(!metrics.body.is_empty());
}

/// Accepts one connection, reads one request head and answers it; the client's address and
/// the head as received.
async fn answer_one_request(listener: tokio::net::TcpListener) -> (SocketAddr, String) {
    let (mut stream, peer) = listener.accept().await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    stream.write_all(APP_RESPONSE).await.unwrap();
    (peer, String::from_utf8_lossy(&head).into_owned())
}

async fn raw_exchange_outside(addr: SocketAddr, request: &[u8]) -> RawResponse {
    meshtrace_tests::client::exchange(addr, request).await
}

/// Scenario 6: the application may bind its port before or after the proxy starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_may_bind_before_or_after_the_proxy_starts() {
    let Some(mesh) = Mesh::new_or_skip().await else {
        return;
    };
    let client = mesh.pod("client");
    let early = mesh.pod("early");
    let late = mesh.pod("late");
    let _proxy_client = mesh.mesh(&client, &[], &[]).await;

    let early_app = HttpUpstream::serve(early.listen(APP_PORT).unwrap());
    let _proxy_early = mesh.mesh(&early, &[], &[]).await;
    let _proxy_late = mesh.mesh(&late, &[], &[]).await;

    let response = get(&client, (early.ip(), APP_PORT).into(), "/early", &[]).await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    assert_eq!(early_app.wait_for_requests(1).await[0].uri.path(), "/early");

    // Before the late application binds, its proxy answers for it with an error...
    let response = get(&client, (late.ip(), APP_PORT).into(), "/too-soon", &[]).await;
    assert!(
        response.status() >= 500,
        "nothing listens yet: {}",
        response.head_str()
    );
    // ... and once it has bound, the very next request reaches it.
    let late_app = HttpUpstream::serve(late.listen(APP_PORT).unwrap());
    let response = get(&client, (late.ip(), APP_PORT).into(), "/late", &[]).await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    let requests = late_app.wait_for_requests(1).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].uri.path(), "/late");
    assert!(requests[0].headers.contains_key("traceparent"));
}

/// `meshtrace-proxy init` that cannot write the tables (not root) fails loudly: non-zero exit,
/// and stderr names the iptables command that failed.
#[test]
fn init_without_privileges_fails_naming_the_iptables_command() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let pod = node.pod("unprivileged").unwrap();
    let binary = meshtrace_tests::netns::workspace_binary("meshtrace-proxy");
    for mode in ["auto", "legacy", "nft"] {
        let output = pod
            .command_as(
                meshtrace_tests::netns::PROXY_UID,
                meshtrace_tests::netns::PROXY_UID,
                &binary,
            )
            .args(["init", "--iptables-mode", mode])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{mode}: {stderr}");
        assert!(
            stderr.contains("`iptables"),
            "{mode}: stderr names the iptables command: {stderr}"
        );
        assert!(
            stderr.contains("Permission denied"),
            "{mode}: and says why: {stderr}"
        );
    }
    // Nothing was written: the pod's nat table has no meshtrace chain.
    let rules = pod.run("iptables-save", &["-t", "nat"]).unwrap_or_default();
    assert!(!rules.contains("MESHTRACE"), "{rules}");
}

/// Scenario 1 over IPv6 (when the kernel has it): ip6tables redirection in both pods and the
/// proxies' `IP6T_SO_ORIGINAL_DST` lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hop_over_ipv6_is_traced() {
    let Some(mesh) = Mesh::new_or_skip().await else {
        return;
    };
    let a = mesh.pod("a6");
    let b = mesh.pod("b6");
    let Some(b6) = b.ip6() else {
        meshtrace_tests::netns::print_skip("the kernel has IPv6 disabled");
        return;
    };
    let app = HttpUpstream::serve(
        b.listen_on((std::net::Ipv6Addr::UNSPECIFIED, APP_PORT).into())
            .unwrap(),
    );
    // Dual-stack listeners: the OUTPUT redirect of an IPv6 connection goes to ::1.
    let env = [
        ("MESHTRACE_INBOUND_ADDR", "[::]:4143"),
        ("MESHTRACE_OUTBOUND_ADDR", "[::1]:4140"),
    ];
    let _proxy_a = mesh.mesh(&a, &["--ipv6"], &env).await;
    let _proxy_b = mesh.mesh(&b, &["--ipv6"], &env).await;

    let response = get(&a, (b6, APP_PORT).into(), "/v6", &[]).await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    let requests = app.wait_for_requests(1).await;
    let spans = mesh.wait_for_spans(4).await;
    let chain = [
        span_of(&spans, "a6", "outbound", SpanKind::Server),
        span_of(&spans, "a6", "outbound", SpanKind::Client),
        span_of(&spans, "b6", "inbound", SpanKind::Server),
        span_of(&spans, "b6", "inbound", SpanKind::Client),
    ];
    let trace_id = assert_chain(&chain);
    let traceparent = requests[0]
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("the application receives a traceparent");
    let (trace, parent, _) = parse_traceparent(traceparent);
    assert_eq!(trace, hex::encode(trace_id));
    assert_eq!(parent, hex::encode(&chain[3].span_id));
}

/// A dual-stack pod pair: each proxy listens on both families (the settings the injector
/// passes when a pod has IPv6), so IPv4 and IPv6 requests are both intercepted, each with its
/// original destination read in its own family, and both traced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_trace_ipv4_and_ipv6_requests() {
    let Some(mesh) = Mesh::new_or_skip().await else {
        return;
    };
    let a = mesh.pod("a46");
    let b = mesh.pod("b46");
    let Some(b6) = b.ip6() else {
        meshtrace_tests::netns::print_skip("the kernel has IPv6 disabled");
        return;
    };
    // The application listens on both families ([::] accepts IPv4 as v4-mapped).
    let app = HttpUpstream::serve(
        b.listen_on((std::net::Ipv6Addr::UNSPECIFIED, APP_PORT).into())
            .unwrap(),
    );
    let env = [
        ("MESHTRACE_INBOUND_ADDR", "0.0.0.0:4143,[::]:4143"),
        ("MESHTRACE_OUTBOUND_ADDR", "127.0.0.1:4140,[::1]:4140"),
    ];
    let _proxy_a = mesh.mesh(&a, &["--ipv6"], &env).await;
    let _proxy_b = mesh.mesh(&b, &["--ipv6"], &env).await;

    let targets: [(IpAddr, &str); 2] = [(b.ip().into(), "/v4"), (b6.into(), "/v6")];
    for (i, (ip, path)) in targets.iter().enumerate() {
        let response = get(&a, (*ip, APP_PORT).into(), path, &[]).await;
        assert_eq!(response.status(), 200, "{path}: {}", response.head_str());
        let requests = app.wait_for_requests(i + 1).await;
        assert_eq!(requests[i].uri.path(), *path);
        assert!(
            requests[i].headers.contains_key("traceparent"),
            "{path} not traced"
        );
    }
    let spans = mesh.wait_for_spans(8).await;
    for (ip, path) in targets {
        let client_spans: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|span| {
                span.resource_attr("service.name").as_deref() == Some("b46")
                    && span.span.kind == SpanKind::Client as i32
            })
            .filter(|span| span.span.name == format!("GET {path}"))
            .collect();
        assert_eq!(client_spans.len(), 1, "{path}: {:#?}", summary(&spans));
        assert_eq!(
            span_attr(&client_spans[0].span, "network.peer.address"),
            Some(any_value::Value::StringValue(ip.to_string())),
            "{path}: B's inbound forwarded to the original destination of its own family"
        );
    }
    assert_eq!(spans.len(), 8, "{:#?}", summary(&spans));
}

/// A mesh being rolled out: a meshed client calling an unmeshed server, and an unmeshed
/// client calling a meshed server, each make the two spans of the one meshed side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshed_and_unmeshed_pods_talk_both_ways() {
    let Some(mesh) = Mesh::new_or_skip().await else {
        return;
    };
    let meshed = mesh.pod("meshed");
    let plain = mesh.pod("plain");
    let meshed_app = HttpUpstream::serve(meshed.listen(APP_PORT).unwrap());
    let plain_app = HttpUpstream::serve(plain.listen(APP_PORT).unwrap());
    let _proxy = mesh.mesh(&meshed, &[], &[]).await;

    // Outbound only: the unmeshed server sees a trace whose parent is the CLIENT span.
    let response = get(&meshed, (plain.ip(), APP_PORT).into(), "/out", &[]).await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    let out_request = plain_app.wait_for_requests(1).await.remove(0);
    let spans = mesh.wait_for_spans(2).await;
    let server = span_of(&spans, "meshed", "outbound", SpanKind::Server);
    let client = span_of(&spans, "meshed", "outbound", SpanKind::Client);
    let trace_id = assert_chain(&[server, client]);
    let traceparent = out_request
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("the unmeshed server receives a traceparent");
    let (trace, parent, sampled) = parse_traceparent(traceparent);
    assert_eq!(trace, hex::encode(&trace_id));
    assert_eq!(parent, hex::encode(&client.span_id));
    assert!(sampled);

    // Inbound only: the meshed server's proxy starts the trace.
    let response = get(&plain, (meshed.ip(), APP_PORT).into(), "/in", &[]).await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    let in_request = meshed_app.wait_for_requests(1).await.remove(0);
    let spans = mesh.wait_for_spans(4).await;
    assert_eq!(spans.len(), 4, "{:#?}", summary(&spans));
    let server = span_of(&spans, "meshed", "inbound", SpanKind::Server);
    let client = span_of(&spans, "meshed", "inbound", SpanKind::Client);
    let trace_id = assert_chain(&[server, client]);
    let traceparent = in_request
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("the meshed server's app receives a traceparent");
    let (trace, parent, _) = parse_traceparent(traceparent);
    assert_eq!(trace, hex::encode(&trace_id));
    assert_eq!(parent, hex::encode(&client.span_id));
    assert_eq!(
        span_attr(server, "network.peer.address"),
        Some(any_value::Value::StringValue(plain.ip().to_string()))
    );
}
