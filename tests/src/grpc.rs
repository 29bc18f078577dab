//! A tiny gRPC service (unary `Echo`, server-streaming `Count`, unary `Wait` that never
//! answers) without code generation: prost messages derived by hand, tonic's generic
//! server/client machinery, served by hyper.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};
use tonic::codec::Streaming;
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

pub const ECHO_PATH: &str = "/meshtrace.test.Test/Echo";
pub const COUNT_PATH: &str = "/meshtrace.test.Test/Count";
/// Never answers (ignoring any `grpc-timeout`): the client cancels or its deadline passes.
pub const WAIT_PATH: &str = "/meshtrace.test.Test/Wait";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    #[prost(uint32, tag = "1")]
    pub n: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CountReply {
    #[prost(uint32, tag = "1")]
    pub i: u32,
}

struct Echo;

impl UnaryService<EchoRequest> for Echo {
    type Response = EchoReply;
    type Future = Ready<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let mut response = Response::new(EchoReply {
            message: request.into_inner().message,
        });
        response
            .metadata_mut()
            .insert("x-served-by", "meshtrace-test".parse().expect("ascii"));
        ready(Ok(response))
    }
}

struct Count;

type CountStream = futures::stream::Iter<std::vec::IntoIter<Result<CountReply, Status>>>;

impl ServerStreamingService<CountRequest> for Count {
    type Response = CountReply;
    type ResponseStream = CountStream;
    type Future = Ready<Result<Response<CountStream>, Status>>;

    fn call(&mut self, request: Request<CountRequest>) -> Self::Future {
        let n = request.into_inner().n;
        let replies: Vec<_> = (0..n).map(|i| Ok(CountReply { i })).collect();
        ready(Ok(Response::new(futures::stream::iter(replies))))
    }
}

/// Tells the test that a `Wait` call arrived, then never answers it.
struct Wait(mpsc::UnboundedSender<()>);

impl UnaryService<EchoRequest> for Wait {
    type Response = EchoReply;
    type Future = std::future::Pending<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, _request: Request<EchoRequest>) -> Self::Future {
        let _ = self.0.send(());
        std::future::pending()
    }
}

/// Serves `Echo`, `Count` and `Wait` over h2 on 127.0.0.1 port 0.
pub struct GrpcServer {
    addr: SocketAddr,
    waiting: Mutex<mpsc::UnboundedReceiver<()>>,
}

impl GrpcServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (waits, waiting) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let waits = waits.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let waits = waits.clone();
                            async move {
                                let response = match request.uri().path() {
                                    ECHO_PATH => {
                                        Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default())
                                            .unary(Echo, request)
                                            .await
                                    }
                                    COUNT_PATH => {
                                        Grpc::new(ProstCodec::<CountReply, CountRequest>::default())
                                            .server_streaming(Count, request)
                                            .await
                                    }
                                    WAIT_PATH => {
                                        Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default())
                                            .unary(Wait(waits), request)
                                            .await
                                    }
                                    _ => Status::unimplemented("no such method").into_http(),
                                };
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .http2_only()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GrpcServer {
            addr,
            waiting: Mutex::new(waiting),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits (up to [`PATIENCE`](crate::upstream::PATIENCE)) until the next `Wait` call has
    /// reached the server.
    pub async fn wait_called(&self) {
        let mut waiting = self.waiting.lock().await;
        tokio::time::timeout(crate::upstream::PATIENCE, waiting.recv())
            .await
            .expect("no Wait call reached the server in time")
            .expect("server stopped");
    }
}

/// Connects a channel to `connect_to` whose requests name `authority` (for explicit-proxy mode
/// the two differ: connect to the proxy, name the server).
pub async fn channel(connect_to: SocketAddr, authority: SocketAddr) -> Channel {
    let origin: http::Uri = format!("http://{authority}").parse().expect("uri");
    tonic::transport::Endpoint::from_shared(format!("http://{connect_to}"))
        .expect("endpoint")
        .origin(origin)
        .connect()
        .await
        .expect("connect gRPC channel")
}

/// Calls `Echo`; returns the reply and the `x-served-by` response metadata.
pub async fn echo(channel: Channel, message: &str) -> Result<(String, Option<String>), Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response = client
        .unary(
            Request::new(EchoRequest {
                message: message.to_string(),
            }),
            PathAndQuery::from_static(ECHO_PATH),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await?;
    let served_by = response
        .metadata()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((response.into_inner().message, served_by))
}

/// Calls `Count(n)` and collects the stream; the trailers' `grpc-status` must have been OK.
pub async fn count(channel: Channel, n: u32) -> Result<Vec<u32>, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let response = client
        .server_streaming(
            Request::new(CountRequest { n }),
            PathAndQuery::from_static(COUNT_PATH),
            ProstCodec::<CountRequest, CountReply>::default(),
        )
        .await?;
    let mut stream: Streaming<CountReply> = response.into_inner();
    let mut seen = Vec::new();
    while let Some(reply) = stream.message().await? {
        seen.push(reply.i);
    }
    Ok(seen)
}

/// Calls `Wait`, which never answers, sending `grpc-timeout` when `timeout` is given. The call
/// only ends when the caller drops it (a cancellation, or the deadline as a client enforces it).
pub async fn wait(channel: Channel, timeout: Option<Duration>) -> Result<(), Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(EchoRequest {
        message: "wait".into(),
    });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    client
        .unary(
            request,
            PathAndQuery::from_static(WAIT_PATH),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await?;
    Ok(())
}
