//! The two layers in a real HTTP path: a hyper client → a hyper server running
//! `ServerSpanLayer → error mapping → ClientSpanLayer → hyper client` → a real upstream hyper
//! server that reports the headers it saw. Spans are drained from a real `SpanSink` queue.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc as fmpsc;
use http::header::HeaderMap;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceBuilder;

use crate::meta::{ConnMeta, Direction, ErrorType, UpstreamPeer};
use crate::span::{AttrValue, SpanKind, SpanQueue, SpanRecord, SpanSink, SpanStatus};

use super::propagation::to_hex;
use super::{PropagationFormat, TraceArgs, TracedBody, Tracer, PROXY_ERROR};

const WAIT: Duration = Duration::from_secs(30);

type UpstreamBody = BoxBody<Bytes, Infallible>;
type StreamSender = fmpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// What the upstream received.
#[derive(Debug)]
struct Seen {
    headers: HeaderMap,
    body_len: usize,
}

struct Upstream {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// The open end of each `/stream` response, for the test to finish.
    streams: mpsc::UnboundedReceiver<StreamSender>,
}

async fn upstream_handle(
    req: Request<Incoming>,
    seen: mpsc::UnboundedSender<Seen>,
    streams: mpsc::UnboundedSender<StreamSender>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await.map_or(0, |b| b.to_bytes().len());
    let _ = seen.send(Seen {
        headers: parts.headers.clone(),
        body_len,
    });
    let path = parts.uri.path().to_owned();
    let full = |status: u16, text: &'static str| {
        let mut rsp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
        *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
        rsp
    };
    let rsp = if path == "/stream" {
        let (mut tx, rx) = fmpsc::channel(4);
        tx.try_send(Ok(Frame::data(Bytes::from_static(b"first;"))))
            .unwrap();
        let _ = streams.send(tx);
        Response::new(StreamBody::new(rx).boxed())
    } else if let Some(code) = path.strip_prefix("/status/") {
        full(code.parse().unwrap(), "status")
    } else if path == "/grpc.Svc/TrailersOnly" {
        let mut rsp = Response::new(Empty::new().boxed());
        rsp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        rsp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("5"));
        rsp
    } else if path.starts_with("/grpc.Svc/") {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("13"));
        let body = Full::new(Bytes::from_static(b"\0\0\0\0\0"))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        let mut rsp = Response::new(body);
        rsp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        rsp
    } else {
        full(200, "hello from upstream")
    };
    Ok(rsp)
}

async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (streams_tx, streams) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen_tx = seen_tx.clone();
            let streams_tx = streams_tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    upstream_handle(req, seen_tx.clone(), streams_tx.clone())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        streams,
    }
}

/// A forwarding failure with a low-cardinality name, as the data path's errors have.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ForwardError(&'static str);

impl ErrorType for ForwardError {
    fn error_type(&self) -> &'static str {
        self.0
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The data path's error → response mapping, as the lead's stack has it.
fn map_error(
    result: Result<Response<TracedBody<Incoming>>, ForwardError>,
) -> Result<Response<ProxyBody>, ForwardError> {
    // Never fails (the stack's error type only has to exist for poll_ready).
    Ok(match result {
        Ok(rsp) => rsp.map(BodyExt::boxed),
        Err(error) => {
            let mut rsp = Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed());
            *rsp.status_mut() = StatusCode::BAD_GATEWAY;
            rsp.headers_mut()
                .insert(PROXY_ERROR, HeaderValue::from_static(error.error_type()));
            rsp
        }
    })
}

struct Proxy {
    addr: SocketAddr,
    queue: SpanQueue,
    tracer: Tracer,
}

async fn start_proxy_with(
    args: TraceArgs,
    sink: SpanSink,
    queue: SpanQueue,
    upstream: SocketAddr,
    h2_upstream: bool,
) -> Proxy {
    let tracer = Tracer::new(&args, sink);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(h2_upstream);
    let client: Client<HttpConnector, TracedBody<Incoming>> = builder.build_http();
    let forward = tower::service_fn(move |mut req: Request<TracedBody<Incoming>>| {
        let client = client.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned());
            *req.uri_mut() = format!("http://{upstream}{path}").parse().unwrap();
            if h2_upstream {
                *req.version_mut() = Version::HTTP_2;
            }
            let mut rsp = client.request(req).await.map_err(|e| {
                ForwardError(if e.is_connect() {
                    "connect_error"
                } else {
                    "upstream_error"
                })
            })?;
            rsp.extensions_mut().insert(UpstreamPeer(upstream));
            Ok::<_, ForwardError>(rsp)
        }
    });
    let server_tracer = tracer.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, client_addr)) = listener.accept().await else {
                return;
            };
            let conn = Arc::new(ConnMeta {
                direction: Direction::Outbound,
                client_addr,
                local_addr: addr,
                orig_dst: Some(upstream),
            });
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(conn.clone());
                    req
                })
                .layer(server_tracer.server_layer())
                .map_result(map_error)
                .layer(server_tracer.client_layer())
                .service(forward.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    Proxy {
        addr,
        queue,
        tracer,
    }
}

async fn start_proxy(args: TraceArgs, upstream: SocketAddr) -> Proxy {
    let (sink, queue) = SpanSink::bounded(1024);
    start_proxy_with(args, sink, queue, upstream, false).await
}

fn args(rate: f64) -> TraceArgs {
    TraceArgs {
        sample_rate: rate,
        ..TraceArgs::default()
    }
}

fn client(h2: bool) -> Client<HttpConnector, Full<Bytes>> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(h2);
    builder.build_http()
}

fn request(
    proxy: &Proxy,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.addr));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// Sends a request and reads the whole response.
async fn send(req: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let h2 = req.version() == Version::HTTP_2;
    let rsp = tokio::time::timeout(WAIT, client(h2).request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = rsp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (parts, body)
}

async fn next_seen(upstream: &mut Upstream) -> Seen {
    tokio::time::timeout(WAIT, upstream.seen.recv())
        .await
        .expect("upstream request in time")
        .expect("upstream running")
}

/// The next `n` spans, SERVER ones first.
async fn spans(queue: &mut SpanQueue, n: usize) -> Vec<SpanRecord> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let span = tokio::time::timeout(WAIT, queue.recv())
            .await
            .expect("span in time")
            .expect("sink open");
        out.push(span);
    }
    out.sort_by_key(|s| s.kind != SpanKind::Server);
    out
}

fn assert_no_spans(queue: &mut SpanQueue) {
    // Spans end no later than the response body's last frame, which the caller has read.
    assert!(queue.rx.try_recv().is_err(), "unexpected span");
}

fn attr<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a AttrValue> {
    span.attributes
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn int(span: &SpanRecord, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(AttrValue::Int(v)) => Some(*v),
        _ => None,
    }
}

/// A string attribute as exported, whatever its representation in the record.
fn text(span: &SpanRecord, key: &str) -> Option<String> {
    span.text_of(attr(span, key)?).map(|t| t.into_owned())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// `(trace-id, parent-id, flags)` of a traceparent-shaped header.
fn traceparent(headers: &HeaderMap, name: &str) -> (String, String, String) {
    let value = header(headers, name).unwrap_or_else(|| panic!("{name} missing: {headers:?}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn sampled_request_yields_server_and_client_spans_chained_to_the_upstream() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(0.0), upstream.addr).await;
    let mut req = request(
        &proxy,
        Method::POST,
        "/orders/42?secret=s3cr3t",
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("authorization", "Bearer s3cr3t"),
            ("user-agent", "test-agent/1"),
        ],
    );
    *req.body_mut() = Full::new(Bytes::from_static(b"hello world"));
    let (rsp, body) = send(req).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(body, "hello from upstream");
    assert!(
        rsp.headers.get("traceresponse").is_none(),
        "did not start the trace"
    );

    let seen = next_seen(&mut upstream).await;
    assert_eq!(seen.body_len, 11);
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(client.kind, SpanKind::Client);

    // One trace, chained: incoming parent → SERVER → CLIENT → upstream.
    for span in [&server, &client] {
        assert_eq!(to_hex(&span.trace_id), TRACE);
        assert_eq!(span.flags, 0x01, "random flag copied exactly (unset here)");
        assert_eq!(span.trace_state.as_deref(), Some("congo=t61rcWkgMzE"));
    }
    assert_eq!(
        server.parent_span_id.map(|id| to_hex(&id)).as_deref(),
        Some(PARENT)
    );
    assert_eq!(client.parent_span_id, Some(server.span_id));
    assert_ne!(client.span_id, server.span_id);
    let (trace, parent, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(trace, TRACE);
    assert_eq!(parent, to_hex(&client.span_id));
    assert_eq!(flags, "01");
    assert_eq!(
        header(&seen.headers, "tracestate"),
        Some("congo=t61rcWkgMzE")
    );
    // No B3 arrived: the configured default (b3multi) is written with the same ids.
    assert_eq!(header(&seen.headers, "x-b3-traceid"), Some(TRACE));
    assert_eq!(
        header(&seen.headers, "x-b3-spanid"),
        Some(to_hex(&client.span_id).as_str())
    );
    assert_eq!(
        header(&seen.headers, "x-b3-parentspanid"),
        Some(to_hex(&server.span_id).as_str())
    );
    assert_eq!(header(&seen.headers, "x-b3-sampled"), Some("1"));
    assert!(seen.headers.get("b3").is_none());

    // Names and attributes.
    assert_eq!(server.name, "POST /orders/{id}");
    assert_eq!(client.name, "POST /orders/{id}");
    assert!(server.start_unix_nanos <= client.start_unix_nanos);
    assert!(client.end_unix_nanos <= server.end_unix_nanos);
    assert!(server.start_unix_nanos < server.end_unix_nanos);
    for span in [&server, &client] {
        assert_eq!(
            text(span, "meshtrace.direction").as_deref(),
            Some("outbound")
        );
        assert_eq!(text(span, "http.request.method").as_deref(), Some("POST"));
        assert_eq!(int(span, "http.response.status_code"), Some(200));
        assert_eq!(int(span, "http.request.body.size"), Some(11));
        assert_eq!(int(span, "http.response.body.size"), Some(19));
        assert_eq!(
            text(span, "network.protocol.version").as_deref(),
            Some("1.1")
        );
        assert_eq!(
            text(span, "user_agent.original").as_deref(),
            Some("test-agent/1")
        );
        assert_eq!(span.status, SpanStatus::Unset);
        let dump = format!("{span:?}");
        assert!(
            !dump.contains("s3cr3t") && !dump.contains("Bearer"),
            "{dump}"
        );
    }
    assert_eq!(text(&server, "url.path").as_deref(), Some("/orders/42"));
    assert_eq!(
        text(&server, "client.address").as_deref(),
        Some("127.0.0.1")
    );
    // The URL as addressed (Host header; here the test client addressed the proxy itself),
    // the peer as actually connected.
    assert_eq!(
        text(&client, "url.full").as_deref(),
        Some(format!("http://{}/orders/42", proxy.addr).as_str())
    );
    assert_eq!(
        text(&client, "network.peer.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        int(&client, "network.peer.port"),
        Some(i64::from(upstream.addr.port()))
    );
}

#[tokio::test]
async fn every_forwarded_request_gets_a_new_client_span_id() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(0.0), upstream.addr).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let mut parents = Vec::new();
    for _ in 0..3 {
        send(request(&proxy, Method::GET, "/", &[("traceparent", &tp)])).await;
        let seen = next_seen(&mut upstream).await;
        let spans = spans(&mut proxy.queue, 2).await;
        let (_, parent, _) = traceparent(&seen.headers, "traceparent");
        assert_eq!(parent, to_hex(&spans[1].span_id));
        parents.push(parent);
    }
    parents.sort();
    parents.dedup();
    assert_eq!(parents.len(), 3);
}

#[tokio::test]
async fn a_proxy_that_starts_the_trace_roots_it_and_answers_traceresponse() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(1.0), upstream.addr).await;
    let (rsp, _) = send(request(
        &proxy,
        Method::GET,
        "/",
        &[("tracestate", "orphan=1")],
    ))
    .await;
    let seen = next_seen(&mut upstream).await;
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    assert_eq!(server.parent_span_id, None, "root span");
    assert_eq!(server.flags, 0x03, "sampled + random (we generated the id)");
    assert_eq!(
        server.trace_state, None,
        "tracestate without a valid parent is dropped"
    );
    let (trace, span, flags) = traceparent(&rsp.headers, "traceresponse");
    assert_eq!(trace, to_hex(&server.trace_id));
    assert_eq!(span, to_hex(&server.span_id));
    assert_eq!(flags, "03");
    let (trace, parent, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(trace, to_hex(&server.trace_id));
    assert_eq!(parent, to_hex(&client.span_id));
    assert_eq!(flags, "03");
    assert!(seen.headers.get("tracestate").is_none());
}

#[tokio::test]
async fn traceresponse_can_be_turned_off() {
    let upstream = start_upstream().await;
    let mut args = args(1.0);
    args.trace_response = super::Toggle::Off;
    let mut proxy = start_proxy(args, upstream.addr).await;
    let (rsp, _) = send(request(&proxy, Method::GET, "/", &[("l5d-sample", "1")])).await;
    assert!(rsp.headers.get("traceresponse").is_none());
    spans(&mut proxy.queue, 2).await;
}

#[tokio::test]
async fn sample_header_forces_sampling_and_is_consumed() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(0.0), upstream.addr).await;
    let tp = format!("00-{TRACE}-{PARENT}-00");
    let (rsp, _) = send(request(
        &proxy,
        Method::GET,
        "/",
        &[("traceparent", &tp), ("L5d-Sample", "1")],
    ))
    .await;
    let seen = next_seen(&mut upstream).await;
    assert!(seen.headers.get("l5d-sample").is_none(), "consumed");
    let spans = spans(&mut proxy.queue, 2).await;
    assert_eq!(to_hex(&spans[0].trace_id), TRACE);
    let (_, _, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(flags, "01");
    // Applied the header: answer with the trace to look for.
    let (trace, span, flags) = traceparent(&rsp.headers, "traceresponse");
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(span, to_hex(&spans[0].span_id));
}

#[tokio::test]
async fn sample_header_zero_beats_a_sampled_parent() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(1.0), upstream.addr).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let (rsp, _) = send(request(
        &proxy,
        Method::GET,
        "/",
        &[("traceparent", &tp), ("l5d-sample", "0")],
    ))
    .await;
    let seen = next_seen(&mut upstream).await;
    assert_no_spans(&mut proxy.queue);
    let (trace, _, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_eq!(header(&seen.headers, "x-b3-sampled"), Some("0"));
    assert!(seen.headers.get("l5d-sample").is_none());
    let (_, _, flags) = traceparent(&rsp.headers, "traceresponse");
    assert_eq!(flags, "00");
}

#[tokio::test]
async fn unparseable_sample_header_is_ignored_counted_and_removed() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(0.0), upstream.addr).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let (rsp, _) = send(request(
        &proxy,
        Method::GET,
        "/",
        &[("traceparent", &tp), ("l5d-sample", "lots")],
    ))
    .await;
    let seen = next_seen(&mut upstream).await;
    assert!(seen.headers.get("l5d-sample").is_none());
    // The inherited decision (sampled) stands.
    spans(&mut proxy.queue, 2).await;
    assert!(
        rsp.headers.get("traceresponse").is_none(),
        "header not applied"
    );
    assert_eq!(proxy.tracer.metrics().sample_header_invalid.get(), 1);
}

#[tokio::test]
async fn unsampled_requests_record_nothing_but_propagate_a_fresh_context() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(0.0), upstream.addr).await;
    let (rsp, _) = send(request(&proxy, Method::GET, "/x", &[])).await;
    let seen = next_seen(&mut upstream).await;
    assert_no_spans(&mut proxy.queue);
    let (trace, parent, flags) = traceparent(&seen.headers, "traceparent");
    assert_ne!(trace, "0".repeat(32));
    assert_ne!(parent, "0".repeat(16));
    assert_eq!(flags, "02", "not sampled; random trace id");
    assert_eq!(header(&seen.headers, "x-b3-traceid"), Some(trace.as_str()));
    assert_eq!(header(&seen.headers, "x-b3-sampled"), Some("0"));
    // The proxy started the trace: traceresponse says where (and that it is unsampled).
    let (rtrace, _, rflags) = traceparent(&rsp.headers, "traceresponse");
    assert_eq!((rtrace, rflags.as_str()), (trace, "02"));
    assert_eq!(proxy.tracer.metrics().spans_recorded.get(), 0);
}

#[tokio::test]
async fn b3_single_in_b3_single_out_plus_traceparent() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(0.0), upstream.addr).await;
    let b3 = format!("{TRACE}-{PARENT}-1");
    send(request(&proxy, Method::GET, "/", &[("b3", &b3)])).await;
    let seen = next_seen(&mut upstream).await;
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    assert_eq!(to_hex(&server.trace_id), TRACE);
    assert_eq!(
        server.parent_span_id.map(|p| to_hex(&p)).as_deref(),
        Some(PARENT)
    );
    assert_eq!(server.flags, 0x01, "no random flag for B3 ids");
    let want = format!(
        "{TRACE}-{}-1-{}",
        to_hex(&client.span_id),
        to_hex(&server.span_id)
    );
    assert_eq!(header(&seen.headers, "b3"), Some(want.as_str()));
    let (trace, parent, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(parent, to_hex(&client.span_id));
    assert!(
        seen.headers.get("x-b3-traceid").is_none(),
        "only the forms that arrived"
    );
}

#[tokio::test]
async fn b3_multi_64_bit_ids_stay_64_bit_in_b3_and_pad_in_w3c() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(1.0), upstream.addr).await;
    let (rsp, _) = send(request(
        &proxy,
        Method::GET,
        "/",
        &[
            ("X-B3-TraceId", "463ac35c9f6413ad"),
            ("X-B3-SpanId", "a2fb4a1d1a96d312"),
            ("X-B3-Sampled", "0"),
        ],
    ))
    .await;
    let seen = next_seen(&mut upstream).await;
    assert_no_spans(&mut proxy.queue);
    assert!(rsp.headers.get("traceresponse").is_none());
    assert_eq!(
        header(&seen.headers, "x-b3-traceid"),
        Some("463ac35c9f6413ad")
    );
    assert_eq!(header(&seen.headers, "x-b3-sampled"), Some("0"));
    assert_eq!(
        header(&seen.headers, "x-b3-parentspanid").map(str::len),
        Some(16)
    );
    assert_ne!(
        header(&seen.headers, "x-b3-spanid"),
        Some("a2fb4a1d1a96d312")
    );
    let (trace, _, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(trace, "0000000000000000463ac35c9f6413ad");
    assert_eq!(flags, "00");
    assert!(seen.headers.get("b3").is_none());
}

#[tokio::test]
async fn b3_sampling_state_only_starts_a_trace_with_that_decision() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(1.0), upstream.addr).await;
    let (rsp, _) = send(request(&proxy, Method::GET, "/", &[("b3", "0")])).await;
    let seen = next_seen(&mut upstream).await;
    assert_no_spans(&mut proxy.queue);
    let (trace, span, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(flags, "02", "inherited 'no', fresh random trace id");
    let b3 = header(&seen.headers, "b3").unwrap();
    assert!(b3.starts_with(&format!("{trace}-{span}-0-")), "{b3}");
    assert!(
        rsp.headers.get("traceresponse").is_some(),
        "this proxy started the trace"
    );
}

#[tokio::test]
async fn b3_debug_forces_sampling() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(0.0), upstream.addr).await;
    send(request(
        &proxy,
        Method::GET,
        "/",
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-flags", "1"),
        ],
    ))
    .await;
    let seen = next_seen(&mut upstream).await;
    spans(&mut proxy.queue, 2).await;
    assert_eq!(header(&seen.headers, "x-b3-flags"), Some("1"));
    assert!(seen.headers.get("x-b3-sampled").is_none());
}

#[tokio::test]
async fn invalid_traceparent_restarts_the_trace_and_drops_tracestate() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(1.0), upstream.addr).await;
    let (rsp, _) = send(request(
        &proxy,
        Method::GET,
        "/",
        &[
            (
                "traceparent",
                &format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    ))
    .await;
    let seen = next_seen(&mut upstream).await;
    let spans = spans(&mut proxy.queue, 2).await;
    assert_eq!(spans[0].parent_span_id, None);
    assert_ne!(to_hex(&spans[0].trace_id), TRACE);
    let (trace, _, _) = traceparent(&seen.headers, "traceparent");
    assert_eq!(trace, to_hex(&spans[0].trace_id));
    assert!(seen.headers.get("tracestate").is_none());
    assert!(rsp.headers.get("traceresponse").is_some());
}

#[tokio::test]
async fn configured_b3_single_when_no_b3_arrived() {
    let mut upstream = start_upstream().await;
    let mut args = args(0.0);
    args.propagation = vec![PropagationFormat::TraceContext, PropagationFormat::B3];
    let proxy = start_proxy(args, upstream.addr).await;
    send(request(&proxy, Method::GET, "/", &[])).await;
    let seen = next_seen(&mut upstream).await;
    let (trace, span, _) = traceparent(&seen.headers, "traceparent");
    let b3 = header(&seen.headers, "b3").unwrap();
    assert!(b3.starts_with(&format!("{trace}-{span}-0-")), "{b3}");
    assert!(seen.headers.get("x-b3-traceid").is_none());
}

#[tokio::test]
async fn streamed_response_server_span_ends_after_the_last_body_byte() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(1.0), upstream.addr).await;
    let rsp = tokio::time::timeout(
        WAIT,
        client(false).request(request(&proxy, Method::GET, "/stream", &[])),
    )
    .await
    .unwrap()
    .unwrap();
    let mut body = rsp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    // Response head and first bytes are through, the body is still open: no span has ended.
    assert_no_spans(&mut proxy.queue);

    let mut stream = tokio::time::timeout(WAIT, upstream.streams.recv())
        .await
        .unwrap()
        .unwrap();
    let before_last = super::clock::now_unix_nanos();
    stream
        .try_send(Ok(Frame::data(Bytes::from_static(b"last"))))
        .unwrap();
    drop(stream);
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "last");
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    assert!(server.end_unix_nanos >= before_last);
    assert!(client.end_unix_nanos >= before_last);
    assert!(server.end_unix_nanos >= client.end_unix_nanos);
    assert_eq!(int(&server, "http.response.body.size"), Some(10));
    assert_eq!(int(&client, "http.response.body.size"), Some(10));
    assert_eq!(server.status, SpanStatus::Unset);
}

#[tokio::test]
async fn client_gone_mid_stream_ends_both_spans_as_cancelled() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(args(1.0), upstream.addr).await;
    let rsp = tokio::time::timeout(
        WAIT,
        client(false).request(request(&proxy, Method::GET, "/stream", &[])),
    )
    .await
    .unwrap()
    .unwrap();
    let mut body = rsp.into_body();
    tokio::time::timeout(WAIT, body.frame()).await.unwrap();
    let stream = tokio::time::timeout(WAIT, upstream.streams.recv())
        .await
        .unwrap()
        .unwrap();
    drop(body); // closes the client's connection
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    drop(stream);
    for span in [&server, &client] {
        assert!(matches!(span.status, SpanStatus::Error(_)), "{span:?}");
        assert_eq!(text(span, "error.type").as_deref(), Some("cancelled"));
        assert_eq!(int(span, "http.response.body.size"), Some(6));
    }
}

#[tokio::test]
async fn failed_upstream_still_yields_both_spans_with_error_status() {
    // Bound but not listening: the port stays reserved and every connect is refused.
    let reserved =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let closed = reserved.local_addr().unwrap().as_socket().unwrap();
    let mut proxy = start_proxy(args(1.0), closed).await;
    let (rsp, _) = send(request(&proxy, Method::GET, "/users/7", &[])).await;
    assert_eq!(rsp.status, StatusCode::BAD_GATEWAY);
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    assert_eq!(client.parent_span_id, Some(server.span_id));
    assert!(matches!(client.status, SpanStatus::Error(_)));
    assert_eq!(
        text(&client, "error.type").as_deref(),
        Some("connect_error")
    );
    assert_eq!(int(&client, "http.response.status_code"), None);
    assert!(matches!(server.status, SpanStatus::Error(_)));
    assert_eq!(
        text(&server, "error.type").as_deref(),
        Some("connect_error")
    );
    assert_eq!(int(&server, "http.response.status_code"), Some(502));
}

#[tokio::test]
async fn status_codes_set_span_status_per_kind() {
    let upstream = start_upstream().await;
    let mut proxy = start_proxy(args(1.0), upstream.addr).await;
    send(request(&proxy, Method::GET, "/status/404", &[])).await;
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    assert_eq!(
        server.status,
        SpanStatus::Unset,
        "4xx is not a server error"
    );
    assert!(matches!(client.status, SpanStatus::Error(_)));
    assert_eq!(text(&client, "error.type").as_deref(), Some("404"));
    assert_eq!(text(&server, "error.type").as_deref(), None);

    send(request(&proxy, Method::GET, "/status/503", &[])).await;
    for span in spans(&mut proxy.queue, 2).await {
        assert!(matches!(span.status, SpanStatus::Error(_)), "{span:?}");
        assert_eq!(text(&span, "error.type").as_deref(), Some("503"));
        assert_eq!(int(&span, "http.response.status_code"), Some(503));
    }
}

#[tokio::test]
async fn grpc_status_from_trailers_over_http2() {
    let mut upstream = start_upstream().await;
    let (sink, queue) = SpanSink::bounded(64);
    let mut proxy = start_proxy_with(args(1.0), sink, queue, upstream.addr, true).await;
    let mut req = request(
        &proxy,
        Method::POST,
        "/grpc.Svc/Fail",
        &[("content-type", "application/grpc"), ("te", "trailers")],
    );
    *req.version_mut() = Version::HTTP_2;
    let rsp = tokio::time::timeout(WAIT, client(true).request(req))
        .await
        .unwrap()
        .unwrap();
    let collected = tokio::time::timeout(WAIT, rsp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .unwrap(),
        "13"
    );
    let seen = next_seen(&mut upstream).await;
    assert!(seen.headers.contains_key("traceparent"));
    for span in spans(&mut proxy.queue, 2).await {
        assert_eq!(text(&span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(text(&span, "rpc.service").as_deref(), Some("grpc.Svc"));
        assert_eq!(text(&span, "rpc.method").as_deref(), Some("Fail"));
        assert_eq!(int(&span, "rpc.grpc.status_code"), Some(13));
        assert_eq!(
            text(&span, "network.protocol.version").as_deref(),
            Some("2")
        );
        assert!(matches!(span.status, SpanStatus::Error(_)), "{span:?}");
    }
}

#[tokio::test]
async fn grpc_trailers_only_status() {
    let upstream = start_upstream().await;
    let mut proxy = start_proxy(args(1.0), upstream.addr).await;
    send(request(
        &proxy,
        Method::POST,
        "/grpc.Svc/TrailersOnly",
        &[("content-type", "application/grpc")],
    ))
    .await;
    for span in spans(&mut proxy.queue, 2).await {
        assert_eq!(int(&span, "rpc.grpc.status_code"), Some(5));
        assert!(matches!(span.status, SpanStatus::Error(_)));
    }
}

#[tokio::test]
async fn disabled_export_still_propagates_the_decision() {
    let mut upstream = start_upstream().await;
    let (_unused, queue) = SpanSink::bounded(1);
    let proxy =
        start_proxy_with(args(1.0), SpanSink::disabled(), queue, upstream.addr, false).await;
    let (rsp, _) = send(request(&proxy, Method::GET, "/", &[])).await;
    assert_eq!(rsp.status, 200);
    let seen = next_seen(&mut upstream).await;
    let (_, _, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(flags, "03");
    assert_eq!(proxy.tracer.metrics().spans_recorded.get(), 0);
    assert_eq!(proxy.tracer.metrics().spans_dropped.get(), 0);
}

#[tokio::test]
async fn full_queue_drops_spans_without_failing_requests() {
    let upstream = start_upstream().await;
    let (sink, queue) = SpanSink::bounded(1);
    let proxy = start_proxy_with(args(1.0), sink, queue, upstream.addr, false).await;
    for _ in 0..3 {
        let (rsp, body) = send(request(&proxy, Method::GET, "/", &[])).await;
        assert_eq!(
            (rsp.status, body),
            (StatusCode::OK, Bytes::from("hello from upstream"))
        );
    }
    assert_eq!(proxy.tracer.metrics().spans_recorded.get(), 1);
    // Each drop is counted once, by the exporter's `reason="queue_full"` series.
    assert_eq!(proxy.tracer.metrics().spans_dropped.get(), 0);
    assert_eq!(
        proxy
            .queue
            .dropped_queue_full
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}

mod unit {
    //! The layers without sockets: what they do to requests and bodies directly.

    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn client_layer_without_context_forwards_as_is() {
        let (sink, queue) = SpanSink::bounded(8);
        let tracer = Tracer::new(&args(1.0), sink);
        let svc = tracer.client_layer().layer(tower::service_fn(
            |req: Request<Empty<Bytes>>| async move {
                let mut rsp = Response::new(Empty::<Bytes>::new());
                *rsp.headers_mut() = req.headers().clone();
                Ok::<_, Infallible>(rsp)
            },
        ));
        let req = Request::builder()
            .header("traceparent", "junk")
            .header("b3", "1")
            .body(Empty::new())
            .unwrap();
        let rsp = svc.oneshot(req).await.unwrap();
        assert_eq!(rsp.headers()["traceparent"], "junk");
        assert_eq!(rsp.headers()["b3"], "1");
        assert!(queue.rx.try_recv().is_err());
    }

    /// A body that yields one data frame and then trailers.
    struct WithTrailers {
        step: u8,
    }

    impl http_body::Body for WithTrailers {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.step += 1;
            Poll::Ready(match self.step {
                1 => Some(Ok(Frame::data(Bytes::from_static(b"abc")))),
                2 => {
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", HeaderValue::from_static("0"));
                    Some(Ok(Frame::trailers(t)))
                }
                _ => None,
            })
        }

        fn is_end_stream(&self) -> bool {
            self.step >= 2
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(3)
        }
    }

    #[tokio::test]
    async fn bodies_pass_trailers_and_hints_through_and_record_grpc_ok() {
        let (sink, queue) = SpanSink::bounded(8);
        let tracer = Tracer::new(&args(1.0), sink);
        let inner = tracer.client_layer().layer(tower::service_fn(
            |_req: Request<TracedBody<Empty<Bytes>>>| async move {
                Ok::<_, Infallible>(Response::new(WithTrailers { step: 0 }))
            },
        ));
        let mut svc = tracer.server_layer().layer(inner);
        let req = Request::builder()
            .method("POST")
            .uri("/grpc.Svc/Ok")
            .header("content-type", "application/grpc")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let rsp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert!(rsp.headers().contains_key("traceresponse"));
        let body = rsp.into_body();
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(3));
        assert!(!http_body::Body::is_end_stream(&body));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        for _ in 0..2 {
            let span = queue.recv().await.unwrap();
            assert_eq!(int(&span, "rpc.grpc.status_code"), Some(0));
            assert_eq!(int(&span, "http.response.body.size"), Some(3));
            assert_eq!(span.status, SpanStatus::Unset);
        }
    }

    #[test]
    fn traced_bodies_are_unpin_send_and_static() {
        fn check<T: Unpin + Send + 'static>() {}
        check::<TracedBody<Incoming>>();
        check::<TracedBody<TracedBody<Full<Bytes>>>>();
    }

    #[tokio::test]
    async fn dropped_response_future_ends_spans_as_cancelled() {
        let (sink, queue) = SpanSink::bounded(8);
        let tracer = Tracer::new(&args(1.0), sink);
        let inner = tracer.client_layer().layer(tower::service_fn(
            |_req: Request<TracedBody<Empty<Bytes>>>| async move {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            },
        ));
        let mut svc = tracer.server_layer().layer(inner);
        let req = Request::new(Empty::<Bytes>::new());
        let fut = svc.ready().await.unwrap().call(req);
        drop(fut);
        for _ in 0..2 {
            let span = queue.recv().await.unwrap();
            assert_eq!(text(&span, "error.type").as_deref(), Some("cancelled"));
            assert_eq!(int(&span, "http.response.status_code"), None);
        }
    }
}
