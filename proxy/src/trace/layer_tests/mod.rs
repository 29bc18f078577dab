//! The two layers in a real HTTP path (the harness; the tests by concern in [`context`],
//! [`spans`] and [`unit`]): a hyper client → a hyper server running
//! `ServerSpanLayer → error mapping → ClientSpanLayer → hyper client` → a real upstream hyper
//! server that reports the headers it saw. Spans are drained from a real `SpanSink` queue.

mod context;
mod spans;
mod unit;

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

use crate::meta::{ConnMeta, Direction, ErrorType, UpstreamPeer, PROXY_ERROR_HEADER};
use crate::span::{AttrValue, SpanKind, SpanQueue, SpanRecord, SpanSink, SpanStatus};

use super::propagation::test_support::to_hex;
use super::{PropagationFormat, TraceArgs, TraceResponse, TracedBody, Tracer};

const WAIT: Duration = Duration::from_secs(30);

type UpstreamBody = BoxBody<Bytes, Infallible>;
type StreamSender = fmpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// What the upstream received.
#[derive(Debug)]
struct Received {
    headers: HeaderMap,
    body_len: usize,
}

struct Upstream {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Received>,
    /// The open end of each `/stream` response, for the test to finish.
    streams: mpsc::UnboundedReceiver<StreamSender>,
}

async fn upstream_handle(
    req: Request<Incoming>,
    seen: mpsc::UnboundedSender<Received>,
    streams: mpsc::UnboundedSender<StreamSender>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await.map_or(0, |b| b.to_bytes().len());
    let _ = seen.send(Received {
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
            rsp.headers_mut().insert(
                PROXY_ERROR_HEADER,
                HeaderValue::from_static(error.error_type()),
            );
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

async fn next_seen(upstream: &mut Upstream) -> Received {
    tokio::time::timeout(WAIT, upstream.seen.recv())
        .await
        .expect("upstream request in time")
        .expect("upstream running")
}

/// An upstream, and a proxy with `args` in front of it.
async fn start_mesh(args: TraceArgs) -> (Upstream, Proxy) {
    let upstream = start_upstream().await;
    let proxy = start_proxy(args, upstream.addr).await;
    (upstream, proxy)
}

/// Sends `GET {path}` with `headers` through `proxy`: the response head, and the request as
/// the upstream received it.
async fn get(
    proxy: &Proxy,
    upstream: &mut Upstream,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Received) {
    let (rsp, _) = send(request(proxy, Method::GET, path, headers)).await;
    (rsp, next_seen(upstream).await)
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
