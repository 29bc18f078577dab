//! Real OTLP receivers for tests: an OTLP/gRPC receiver built on `opentelemetry-proto`'s tonic
//! `TraceServiceServer`, and an OTLP/HTTP (protobuf) receiver on hyper.
//!
//! Both listen on 127.0.0.1:0 (optionally with TLS), record every request (headers, whether the
//! payload really was gzip, the decoded spans), can be scripted to fail the next N requests
//! (UNAVAILABLE / 503, throttling with RetryInfo / Retry-After, 400, partial success), and can be
//! stopped and started again on the same port: while stopped the port stays bound but not
//! listening, so clients see "connection refused" exactly as with a crashed collector.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, InstrumentationScope};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::codec::CompressionEncoding;
use tower::ServiceExt;

/// Which OTLP transport a receiver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverProtocol {
    Grpc,
    Http,
}

/// A scripted answer to one export request.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// gRPC `UNAVAILABLE` (with a `RetryInfo` when `retry_after` is set) / HTTP 503 (with a
    /// `Retry-After` in whole seconds).
    Unavailable { retry_after: Option<Duration> },
    /// gRPC `RESOURCE_EXHAUSTED` (with `RetryInfo` when set) / HTTP 429 (with `Retry-After`).
    Throttled { retry_after: Option<Duration> },
    /// gRPC `INVALID_ARGUMENT` / HTTP 400: not retryable.
    BadRequest,
    /// Success with `partial_success.rejected_spans`.
    PartialSuccess { rejected: i64, message: String },
}

impl Reply {
    /// Whether the spans of a request answered this way count as received.
    fn accepts(reply: Option<&Reply>) -> bool {
        matches!(reply, None | Some(Reply::PartialSuccess { .. }))
    }
}

/// One export request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub headers: HeaderMap,
    pub path: String,
    /// The payload on the wire really was gzip (HTTP: a gzip body that decompressed; gRPC: the
    /// message frame's compressed flag with `grpc-encoding: gzip`).
    pub gzip: bool,
    /// `None` when the body could not be decoded (answered 400).
    pub request: Option<ExportTraceServiceRequest>,
    /// What the receiver answered (`None`: plain success).
    pub reply: Option<Reply>,
}

impl ReceivedRequest {
    pub fn span_count(&self) -> usize {
        self.request.as_ref().map_or(0, span_count)
    }
}

/// A received span with the resource and scope it arrived under.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub resource: Resource,
    pub scope: Option<InstrumentationScope>,
    pub span: Span,
}

impl ReceivedSpan {
    /// A resource attribute's string value.
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        self.resource
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
    }

    /// A span attribute's value.
    pub fn attr(&self, key: &str) -> Option<any_value::Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.clone())
    }
}

/// Waiting for something the receiver never got.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {wanted} {what}; got {got}")]
pub struct WaitTimeout {
    pub what: &'static str,
    pub wanted: usize,
    pub got: usize,
    pub timeout: Duration,
}

fn span_count(request: &ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

#[derive(Debug)]
struct State {
    requests: Mutex<Vec<ReceivedRequest>>,
    script: Mutex<VecDeque<Reply>>,
    /// Number of requests received.
    request_count: watch::Sender<usize>,
    /// Number of spans received in accepted requests.
    span_count: watch::Sender<usize>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    /// Records a request and returns the scripted reply for it.
    fn record(
        &self,
        headers: HeaderMap,
        path: String,
        gzip: bool,
        request: Option<ExportTraceServiceRequest>,
    ) -> Option<Reply> {
        let reply = if request.is_some() {
            lock(&self.script).pop_front()
        } else {
            Some(Reply::BadRequest)
        };
        let spans = if Reply::accepts(reply.as_ref()) {
            request.as_ref().map_or(0, span_count)
        } else {
            0
        };
        lock(&self.requests).push(ReceivedRequest {
            headers,
            path,
            gzip,
            request,
            reply: reply.clone(),
        });
        self.span_count.send_modify(|n| *n += spans);
        self.request_count.send_modify(|n| *n += 1);
        reply
    }
}

/// A test CA and a certificate for 127.0.0.1 / localhost signed by it.
pub struct TestPki {
    pub ca_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestPki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "meshtrace test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        let cert = params.signed_by(&key, &ca).expect("server cert");
        TestPki {
            ca_pem: ca.pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let mut config = rustls::ServerConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![self.cert_der.clone()], key)
        .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// A running (or stopped) OTLP receiver. Dropping it stops it.
#[derive(Debug)]
pub struct OtlpReceiver {
    protocol: ReceiverProtocol,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
    server: Mutex<Server>,
}

#[derive(Debug)]
enum Server {
    /// Port bound, not listening: connections are refused.
    Stopped(TcpSocket),
    Running(JoinHandle<()>),
    /// Transitioning (never observed outside a method).
    Empty,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Server::Running(task) = &*lock(&self.server) {
            task.abort();
        }
    }
}

fn reserve(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

impl OtlpReceiver {
    /// A receiver listening on 127.0.0.1 on a fresh port.
    pub async fn start(protocol: ReceiverProtocol) -> Self {
        let receiver = Self::reserve(protocol);
        receiver.resume().await;
        receiver
    }

    /// A receiver speaking TLS with a certificate from `pki`.
    pub async fn start_tls(protocol: ReceiverProtocol, pki: &TestPki) -> Self {
        let mut receiver = Self::reserve(protocol);
        receiver.tls = Some(pki.server_config());
        receiver.resume().await;
        receiver
    }

    /// A receiver whose port is reserved but that is not listening yet ("collector down"):
    /// call [`resume`](Self::resume) to start it.
    pub fn reserve(protocol: ReceiverProtocol) -> Self {
        Self::reserve_on(protocol, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// A receiver listening on `addr` (port 0: a fresh port), e.g. a network-namespace node's
    /// host address so that proxies inside pods can reach it.
    pub async fn start_on(protocol: ReceiverProtocol, addr: SocketAddr) -> Self {
        let receiver = Self::reserve_on(protocol, addr);
        receiver.resume().await;
        receiver
    }

    fn reserve_on(protocol: ReceiverProtocol, addr: SocketAddr) -> Self {
        let socket = reserve(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = socket.local_addr().expect("local addr");
        OtlpReceiver {
            protocol,
            addr,
            tls: None,
            state: Arc::new(State {
                requests: Mutex::default(),
                script: Mutex::default(),
                request_count: watch::Sender::new(0),
                span_count: watch::Sender::new(0),
            }),
            server: Mutex::new(Server::Stopped(socket)),
        }
    }

    /// Starts listening (again) on the same port.
    pub async fn resume(&self) {
        let mut server = lock(&self.server);
        let socket = match std::mem::replace(&mut *server, Server::Empty) {
            Server::Stopped(socket) => socket,
            running => {
                *server = running;
                return;
            }
        };
        let listener = socket.listen(1024).expect("listen");
        *server = Server::Running(tokio::spawn(serve(
            listener,
            self.protocol,
            self.tls.clone(),
            self.state.clone(),
        )));
    }

    /// Stops listening and closes every connection, like a crashed collector; the port stays
    /// reserved so [`resume`](Self::resume) can come back on it.
    pub async fn stop(&self) {
        let task = match std::mem::replace(&mut *lock(&self.server), Server::Empty) {
            Server::Running(task) => task,
            other => {
                *lock(&self.server) = other;
                return;
            }
        };
        task.abort();
        let _ = task.await;
        let socket = reserve(self.addr).expect("re-bind the receiver's port");
        *lock(&self.server) = Server::Stopped(socket);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn protocol(&self) -> ReceiverProtocol {
        self.protocol
    }

    /// The base URL to configure as `OTEL_EXPORTER_OTLP_ENDPOINT` (for HTTP the exporter
    /// appends `/v1/traces`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Answers the next `times` requests with `reply` (after anything already scripted).
    pub fn script(&self, reply: Reply, times: usize) {
        let mut script = lock(&self.state.script);
        script.extend(std::iter::repeat_n(reply, times));
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Spans of accepted requests (success or partial success), in order of arrival.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.state.requests)
            .iter()
            .filter(|r| Reply::accepts(r.reply.as_ref()))
            .filter_map(|r| r.request.as_ref())
            .flat_map(|request| &request.resource_spans)
            .flat_map(|rs| {
                let resource = rs.resource.clone().unwrap_or_default();
                rs.scope_spans.iter().flat_map(move |ss| {
                    let resource = resource.clone();
                    ss.spans.iter().map(move |span| ReceivedSpan {
                        resource: resource.clone(),
                        scope: ss.scope.clone(),
                        span: span.clone(),
                    })
                })
            })
            .collect()
    }

    /// Waits until at least `n` spans were accepted; returns all accepted spans.
    pub async fn wait_for_spans(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, WaitTimeout> {
        wait(&self.state.span_count, n, timeout, "spans").await?;
        Ok(self.spans())
    }

    /// Waits until at least `n` requests arrived (whatever the answer); returns them all.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedRequest>, WaitTimeout> {
        wait(&self.state.request_count, n, timeout, "requests").await?;
        Ok(self.requests())
    }
}

async fn wait(
    counter: &watch::Sender<usize>,
    wanted: usize,
    timeout: Duration,
    what: &'static str,
) -> Result<(), WaitTimeout> {
    let mut rx = counter.subscribe();
    let reached = tokio::time::timeout(timeout, rx.wait_for(|n| *n >= wanted))
        .await
        .is_ok_and(|r| r.is_ok());
    match reached {
        true => Ok(()),
        false => Err(WaitTimeout {
            what,
            wanted,
            got: *counter.borrow(),
            timeout,
        }),
    }
}

/// Accepts connections until aborted; aborting drops (closes) every connection.
async fn serve(
    listener: TcpListener,
    protocol: ReceiverProtocol,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
) {
    let mut connections = JoinSet::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(TokioIo::new(stream), protocol, state).await,
                    Err(error) => tracing::debug!(%error, "receiver TLS handshake failed"),
                },
                None => serve_connection(TokioIo::new(stream), protocol, state).await,
            }
        });
    }
}

async fn serve_connection<I>(io: I, protocol: ReceiverProtocol, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let result = match protocol {
        ReceiverProtocol::Http => {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle_http(req, &state).await) }
            });
            builder.serve_connection(io, service).await
        }
        ReceiverProtocol::Grpc => {
            let grpc = TraceServiceServer::new(GrpcRecorder {
                state: state.clone(),
            })
            .accept_compressed(CompressionEncoding::Gzip);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let grpc = grpc.clone();
                async move { Ok::<_, Infallible>(handle_grpc(req, grpc).await) }
            });
            builder.serve_connection(io, service).await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "receiver connection ended");
    }
}

/// The compressed flag of the first gRPC message frame, seen on the wire.
#[derive(Clone, Debug, Default)]
struct FirstFrameFlag(Arc<AtomicU8>);

const FLAG_UNSEEN: u8 = 0xff;

async fn handle_grpc(
    req: Request<Incoming>,
    grpc: TraceServiceServer<GrpcRecorder>,
) -> Response<tonic::body::Body> {
    let flag = FirstFrameFlag(Arc::new(AtomicU8::new(FLAG_UNSEEN)));
    let seen = flag.clone();
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(flag);
    let body = body.map_frame(move |frame| {
        if let Some(first) = frame.data_ref().and_then(|d| d.first()) {
            let _ =
                seen.0
                    .compare_exchange(FLAG_UNSEEN, *first, Ordering::AcqRel, Ordering::Relaxed);
        }
        frame
    });
    let req = Request::from_parts(parts, tonic::body::Body::new(body));
    match grpc.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

#[derive(Clone, Debug)]
struct GrpcRecorder {
    state: Arc<State>,
}

#[tonic::async_trait]
impl TraceService for GrpcRecorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let compressed_frame = request
            .extensions()
            .get::<FirstFrameFlag>()
            .is_some_and(|f| f.0.load(Ordering::Acquire) == 1);
        let headers = request.metadata().clone().into_headers();
        let gzip = compressed_frame
            && headers
                .get("grpc-encoding")
                .is_some_and(|v| v.as_bytes() == b"gzip");
        let message = request.into_inner();
        let reply = self.state.record(
            headers,
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export".to_owned(),
            gzip,
            Some(message),
        );
        match reply {
            None => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
            Some(Reply::PartialSuccess { rejected, message }) => {
                Ok(tonic::Response::new(ExportTraceServiceResponse {
                    partial_success: Some(ExportTracePartialSuccess {
                        rejected_spans: rejected,
                        error_message: message,
                    }),
                }))
            }
            Some(Reply::Unavailable { retry_after }) => Err(status_with_retry_info(
                tonic::Code::Unavailable,
                "scripted: unavailable",
                retry_after,
            )),
            Some(Reply::Throttled { retry_after }) => Err(status_with_retry_info(
                tonic::Code::ResourceExhausted,
                "scripted: throttled",
                retry_after,
            )),
            Some(Reply::BadRequest) => {
                Err(tonic::Status::invalid_argument("scripted: bad request"))
            }
        }
    }
}

/// `google.rpc.Status` and friends, to put a `RetryInfo` in gRPC status details.
mod rpc {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<Any>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RetryInfo {
        #[prost(message, optional, tag = "1")]
        pub retry_delay: Option<Duration>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

fn status_with_retry_info(
    code: tonic::Code,
    message: &str,
    retry_after: Option<Duration>,
) -> tonic::Status {
    let Some(delay) = retry_after else {
        return tonic::Status::new(code, message);
    };
    let retry_info = rpc::RetryInfo {
        retry_delay: Some(rpc::Duration {
            seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
        }),
    };
    let details = rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: vec![rpc::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
            value: retry_info.encode_to_vec(),
        }],
    };
    tonic::Status::with_details(code, message, details.encode_to_vec().into())
}

fn protobuf_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

fn rpc_status_body(code: tonic::Code, message: &str) -> Vec<u8> {
    rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: Vec::new(),
    }
    .encode_to_vec()
}

async fn handle_http(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path != "/v1/traces" {
        return protobuf_response(StatusCode::NOT_FOUND, Vec::new());
    }
    if req.method() != http::Method::POST {
        return protobuf_response(StatusCode::METHOD_NOT_ALLOWED, Vec::new());
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return protobuf_response(StatusCode::BAD_REQUEST, Vec::new());
    };
    let content_type_ok = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    let says_gzip = parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let (gzip, decoded) = if says_gzip {
        let mut plain = Vec::new();
        match flate2::read::GzDecoder::new(body.as_ref()).read_to_end(&mut plain) {
            Ok(_) if body.starts_with(&[0x1f, 0x8b]) => (true, Some(Bytes::from(plain))),
            _ => (false, None),
        }
    } else {
        (false, Some(body))
    };
    let request = decoded
        .filter(|_| content_type_ok)
        .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
    let reply = state.record(parts.headers, path, gzip, request);
    let retry_after = |response: &mut Response<Full<Bytes>>, delay: Option<Duration>| {
        if let Some(delay) = delay {
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            if let Ok(value) = http::HeaderValue::from_str(&seconds.to_string()) {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, value);
            }
        }
    };
    match reply {
        None => protobuf_response(
            StatusCode::OK,
            ExportTraceServiceResponse::default().encode_to_vec(),
        ),
        Some(Reply::PartialSuccess { rejected, message }) => protobuf_response(
            StatusCode::OK,
            ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: message,
                }),
            }
            .encode_to_vec(),
        ),
        Some(Reply::Unavailable { retry_after: delay }) => {
            let mut response = protobuf_response(
                StatusCode::SERVICE_UNAVAILABLE,
                rpc_status_body(tonic::Code::Unavailable, "scripted: unavailable"),
            );
            retry_after(&mut response, delay);
            response
        }
        Some(Reply::Throttled { retry_after: delay }) => {
            let mut response = protobuf_response(
                StatusCode::TOO_MANY_REQUESTS,
                rpc_status_body(tonic::Code::ResourceExhausted, "scripted: throttled"),
            );
            retry_after(&mut response, delay);
            response
        }
        Some(Reply::BadRequest) => protobuf_response(
            StatusCode::BAD_REQUEST,
            rpc_status_body(tonic::Code::InvalidArgument, "scripted: bad request"),
        ),
    }
}
