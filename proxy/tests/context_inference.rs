//! Connected traces when the application does not forward trace headers: one pod's proxy (both
//! directions in one process, as in a meshed pod), an application behind its inbound listener
//! that calls a backend through its outbound listener, and a real OTLP receiver.
//!
//! ```text
//! client ─► inbound ─► app ─(its own request, headers as the test says)─► outbound ─► backend
//! ```
//!
//! The application puts the span id it received (the inbound CLIENT span, from the `traceparent`
//! the proxy wrote) into the path of its call, `/call/{span id}`, so the test knows each outbound
//! request's true parent and can check the proxy never picks another request's.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::TestProxy;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshtrace_proxy::export::ExporterHandle;
use meshtrace_tests::client::exchange;
use meshtrace_tests::otlp::{OtlpReceiver, ReceivedSpan, ReceiverProtocol};
use meshtrace_tests::upstream::HttpUpstream;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;

/// Generous: the machine is small and shared.
const WAIT: Duration = Duration::from_secs(30);
const POD: &str = "checkout";

/// What the application copies from the request it serves onto its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forwards {
    Nothing,
    RequestId,
    TraceContext,
}

/// The application: `/work/{nothing|request-id|trace-context}` calls the backend through the
/// pod's outbound proxy and answers; `/ws` accepts a WebSocket-style upgrade and holds it.
/// Every `/work` request waits at `before_call` (all in flight together), then at
/// `after_call` (all calls made before any answers), when the test asks for concurrency.
#[derive(Clone)]
struct App {
    outbound: SocketAddr,
    backend: SocketAddr,
    before_call: Arc<Barrier>,
    after_call: Arc<Barrier>,
}

impl App {
    /// Serves on `listener`; `together` requests at a time wait for each other.
    fn serve(listener: TcpListener, outbound: SocketAddr, backend: SocketAddr, together: usize) {
        let app = App {
            outbound,
            backend,
            before_call: Arc::new(Barrier::new(together)),
            after_call: Arc::new(Barrier::new(together)),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let app = app.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
    }

    async fn handle(&self, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        if path == "/ws" {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                // Hold the tunnel open until the client goes away.
                if let Ok(upgraded) = upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
        let forwards = match path.as_str() {
            "/work/nothing" => Forwards::Nothing,
            "/work/request-id" => Forwards::RequestId,
            "/work/trace-context" => Forwards::TraceContext,
            _ => return text(StatusCode::NOT_FOUND, "no such route"),
        };
        let headers = request.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let Some(received) = header("traceparent") else {
            return text(StatusCode::BAD_REQUEST, "the proxy wrote no traceparent");
        };
        let origin = received.split('-').nth(2).unwrap_or_default().to_owned();
        let mut extra = String::new();
        match forwards {
            Forwards::Nothing => {}
            Forwards::RequestId => {
                if let Some(id) = header("x-request-id") {
                    extra.push_str(&format!("x-request-id: {id}\r\n"));
                }
            }
            Forwards::TraceContext => extra.push_str(&format!("traceparent: {received}\r\n")),
        }
        self.before_call.wait().await;
        let backend = self.backend;
        let call = format!(
            "GET http://{backend}/call/{origin} HTTP/1.1\r\nHost: {backend}\r\n{extra}Connection: close\r\n\r\n"
        );
        let response = exchange(self.outbound, call.as_bytes()).await;
        self.after_call.wait().await;
        text(
            StatusCode::from_u16(response.status()).unwrap_or(StatusCode::BAD_GATEWAY),
            "done",
        )
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// One meshed pod: its proxy (inbound → app, outbound explicit), the app, a backend and the
/// receiver the proxy exports to.
struct Pod {
    receiver: OtlpReceiver,
    proxy: TestProxy,
    exporter: Option<ExporterHandle>,
    backend: HttpUpstream,
}

impl Pod {
    async fn start(together: usize) -> Pod {
        Pod::exporting(together, ReceiverProtocol::Grpc).await
    }

    /// Exporting over `protocol` (span links travel both ways).
    async fn exporting(together: usize, protocol: ReceiverProtocol) -> Pod {
        let receiver = OtlpReceiver::start(protocol).await;
        let protocol = match protocol {
            ReceiverProtocol::Grpc => "grpc",
            ReceiverProtocol::Http => "http/protobuf",
        };
        let backend = HttpUpstream::start().await;
        let app_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let app_addr = app_listener.local_addr().expect("app addr");
        let mut config = common::exporting_to(
            common::fixed_target(app_addr),
            &receiver.endpoint(),
            protocol,
            POD,
        );
        config.trace.sample_rate = 1.0;
        let (proxy, exporter) = common::start_exporting(config).await;
        App::serve(app_listener, proxy.outbound, backend.addr(), together);
        Pod {
            receiver,
            proxy,
            exporter,
            backend,
        }
    }

    /// A user request to the app, through the pod's inbound proxy.
    async fn user_request(&self, path: &str, headers: &str) -> u16 {
        let inbound = self.proxy.inbound;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {POD}\r\n{headers}Connection: close\r\n\r\n");
        exchange(inbound, request.as_bytes()).await.status()
    }

    /// Work the app does on its own (no request of its being served): a call to the backend.
    async fn background_call(&self) -> u16 {
        let backend = self.backend.addr();
        let call = format!(
            "GET http://{backend}/call/background HTTP/1.1\r\nHost: {backend}\r\nConnection: close\r\n\r\n"
        );
        exchange(self.proxy.outbound, call.as_bytes())
            .await
            .status()
    }

    /// Waits for `calls` outbound calls' spans (4 per served request, 2 per background call).
    async fn spans(&self, n: usize) -> Spans {
        let spans = self.receiver.wait_for_spans(n, WAIT).await.expect("spans");
        assert_eq!(spans.len(), n, "{spans:#?}");
        Spans(spans)
    }

    async fn metrics(&self) -> String {
        common::metrics_text(self.proxy.admin).await
    }

    async fn shutdown(self) {
        self.proxy.shutdown().await;
        if let Some(exporter) = self.exporter {
            exporter.shutdown(WAIT).await.expect("exporter flushes");
        }
    }
}

struct Spans(Vec<ReceivedSpan>);

impl Spans {
    fn of(&self, direction: &str, kind: SpanKind) -> Vec<&ReceivedSpan> {
        self.0
            .iter()
            .filter(|s| {
                s.span.kind == kind as i32
                    && string_attr(s, "meshtrace.direction").as_deref() == Some(direction)
            })
            .collect()
    }

    fn by_id(&self, id: &str) -> Option<&ReceivedSpan> {
        self.0.iter().find(|s| hex(&s.span.span_id) == id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// The inbound CLIENT span an outbound SERVER span truly belongs to (from the call's path).
fn true_parent<'a>(spans: &'a Spans, outbound_server: &ReceivedSpan) -> &'a ReceivedSpan {
    let path = string_attr(outbound_server, "url.path").expect("url.path");
    let origin = path.strip_prefix("/call/").expect("a call of the app");
    let parent = spans
        .by_id(origin)
        .expect("the inbound CLIENT span was exported");
    assert_eq!(parent.span.kind, SpanKind::Client as i32);
    assert_eq!(
        string_attr(parent, "meshtrace.direction").as_deref(),
        Some("inbound")
    );
    parent
}

fn source_count(metrics: &str, source: &str) -> f64 {
    common::metric_value(
        metrics,
        &format!("meshtrace_trace_context_source_total{{source=\"{source}\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_of_an_app_that_forwards_nothing_are_each_one_trace() {
    let pod = Pod::start(1).await;
    const REQUESTS: usize = 5;
    for _ in 0..REQUESTS {
        assert_eq!(pod.user_request("/work/nothing", "").await, 200);
    }
    let spans = pod.spans(4 * REQUESTS).await;
    let outbound = spans.of("outbound", SpanKind::Server);
    assert_eq!(outbound.len(), REQUESTS);
    let mut traces = std::collections::HashSet::new();
    for span in outbound {
        let parent = true_parent(&spans, span);
        assert_eq!(
            string_attr(span, "meshtrace.context.source").as_deref(),
            Some("sole_in_flight"),
            "{span:#?}"
        );
        assert_eq!(span.span.trace_id, parent.span.trace_id, "one trace");
        assert_eq!(
            span.span.parent_span_id, parent.span.span_id,
            "exact parent"
        );
        assert!(span.span.links.is_empty());
        traces.insert(span.span.trace_id.clone());
    }
    assert_eq!(traces.len(), REQUESTS, "one trace per user request");
    // The backend received the inferred trace's context (so the rest of the trace joins up).
    for request in pod.backend.requests() {
        let traceparent = request.headers["traceparent"].to_str().unwrap().to_owned();
        let trace_id = traceparent.split('-').nth(1).unwrap().to_owned();
        assert!(traces.iter().any(|t| hex(t) == trace_id), "{traceparent}");
    }
    let metrics = pod.metrics().await;
    assert_eq!(source_count(&metrics, "sole_in_flight"), REQUESTS as f64);
    pod.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_forwarding_only_the_request_id_are_exact() {
    const REQUESTS: usize = 50;
    let pod = Arc::new(Pod::start(REQUESTS).await);
    let sent: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let pod = pod.clone();
            tokio::spawn(async move { pod.user_request("/work/request-id", "").await })
        })
        .collect();
    for request in sent {
        assert_eq!(request.await.unwrap(), 200);
    }
    let spans = pod.spans(4 * REQUESTS).await;
    let outbound = spans.of("outbound", SpanKind::Server);
    assert_eq!(outbound.len(), REQUESTS);
    for span in outbound {
        let parent = true_parent(&spans, span);
        assert_eq!(
            string_attr(span, "meshtrace.context.source").as_deref(),
            Some("request_id"),
            "{span:#?}"
        );
        assert_eq!(span.span.trace_id, parent.span.trace_id, "not mixed up");
        assert_eq!(span.span.parent_span_id, parent.span.span_id);
    }
    // Every inbound request got its own id, forwarded to the app.
    let ids: std::collections::HashSet<_> = pod
        .backend
        .requests()
        .iter()
        .filter_map(|r| r.headers.get("x-request-id").cloned())
        .collect();
    assert_eq!(ids.len(), REQUESTS);
    let metrics = pod.metrics().await;
    assert_eq!(source_count(&metrics, "request_id"), REQUESTS as f64);
    Arc::into_inner(pod).expect("sole owner").shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_an_app_that_forwards_nothing_get_links_never_a_wrong_parent() {
    for protocol in [ReceiverProtocol::Grpc, ReceiverProtocol::Http] {
        concurrent_requests_get_links(protocol).await;
    }
}

async fn concurrent_requests_get_links(protocol: ReceiverProtocol) {
    const REQUESTS: usize = 4;
    let pod = Arc::new(Pod::exporting(REQUESTS, protocol).await);
    let sent: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let pod = pod.clone();
            tokio::spawn(async move { pod.user_request("/work/nothing", "").await })
        })
        .collect();
    for request in sent {
        assert_eq!(request.await.unwrap(), 200);
    }
    let spans = pod.spans(4 * REQUESTS).await;
    let inbound_traces: Vec<Vec<u8>> = spans
        .of("inbound", SpanKind::Server)
        .iter()
        .map(|s| s.span.trace_id.clone())
        .collect();
    let outbound = spans.of("outbound", SpanKind::Server);
    assert_eq!(outbound.len(), REQUESTS);
    for span in outbound {
        let parent = true_parent(&spans, span);
        assert_eq!(
            string_attr(span, "meshtrace.context.source").as_deref(),
            Some("ambiguous"),
            "{span:#?}"
        );
        assert_eq!(
            int_attr(span, "meshtrace.context.candidates"),
            Some(REQUESTS as i64)
        );
        assert!(span.span.parent_span_id.is_empty(), "no parent is guessed");
        assert!(
            !inbound_traces.contains(&span.span.trace_id),
            "a trace of its own"
        );
        assert_eq!(span.span.links.len(), REQUESTS, "{span:#?}");
        assert!(
            span.span
                .links
                .iter()
                .any(|link| link.span_id == parent.span.span_id
                    && link.trace_id == parent.span.trace_id),
            "the true parent is among the links: {span:#?}"
        );
        for link in &span.span.links {
            let linked = spans
                .by_id(&hex(&link.span_id))
                .expect("links a recorded span");
            assert_eq!(linked.span.trace_id, link.trace_id);
            assert_eq!(link.flags & 1, 1, "the candidates were sampled");
        }
    }
    let metrics = pod.metrics().await;
    assert_eq!(source_count(&metrics, "ambiguous"), REQUESTS as f64);
    Arc::into_inner(pod).expect("sole owner").shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_is_a_new_trace_and_an_open_websocket_is_no_candidate() {
    let pod = Pod::start(1).await;
    // A WebSocket held open through the inbound proxy.
    let mut ws = TcpStream::connect(pod.proxy.inbound)
        .await
        .expect("connect");
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: checkout\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("send upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(WAIT, ws.read(&mut byte))
            .await
            .expect("101 in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "closed before the 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    assert_eq!(pod.background_call().await, 200);
    // The call's two spans, and the upgrade's inbound ones if they have ended by then.
    let deadline = tokio::time::Instant::now() + WAIT;
    let spans = loop {
        let spans = Spans(pod.receiver.spans());
        if spans.of("outbound", SpanKind::Client).len() == 1 {
            break spans;
        }
        assert!(tokio::time::Instant::now() < deadline, "no outbound spans");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let outbound = spans.of("outbound", SpanKind::Server);
    assert_eq!(outbound.len(), 1, "{:#?}", spans.0);
    let span = outbound[0];
    assert_eq!(
        string_attr(span, "meshtrace.context.source").as_deref(),
        Some("background")
    );
    assert!(span.span.parent_span_id.is_empty());
    assert!(span.span.links.is_empty());
    assert_eq!(int_attr(span, "meshtrace.context.candidates"), None);
    let metrics = pod.metrics().await;
    assert_eq!(source_count(&metrics, "background"), 1.0);
    drop(ws);
    pod.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_the_app_sent_is_never_overridden() {
    let pod = Pod::start(1).await;
    assert_eq!(pod.user_request("/work/trace-context", "").await, 200);
    let spans = pod.spans(4).await;
    let outbound = spans.of("outbound", SpanKind::Server);
    let span = outbound[0];
    let parent = true_parent(&spans, span);
    assert_eq!(
        string_attr(span, "meshtrace.context.source").as_deref(),
        Some("propagated")
    );
    assert_eq!(span.span.trace_id, parent.span.trace_id);
    assert_eq!(span.span.parent_span_id, parent.span.span_id);
    // The request id the client sent is kept as it is.
    assert_eq!(
        pod.user_request("/work/request-id", "x-request-id: client-chosen-7\r\n")
            .await,
        200
    );
    let requests = pod.backend.wait_for_requests(2).await;
    assert_eq!(requests[1].headers["x-request-id"], "client-chosen-7");
    let metrics = pod.metrics().await;
    assert_eq!(source_count(&metrics, "propagated"), 1.0);
    assert_eq!(source_count(&metrics, "request_id"), 1.0);
    pod.shutdown().await;
}
