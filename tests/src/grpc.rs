//! A tiny gRPC service (unary `Echo`, server-streaming `Count`) without code generation: prost
//! messages derived by hand, tonic's generic server/client machinery, served by hyper.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::codec::Streaming;
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

pub const ECHO_PATH: &str = "/meshtrace.test.Test/Echo";
pub const COUNT_PATH: &str = "/meshtrace.test.Test/Count";

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

/// Serves `Echo` and `Count` over h2 on 127.0.0.1 port 0.
pub struct GrpcServer {
    addr: SocketAddr,
}

impl GrpcServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |request: http::Request<hyper::body::Incoming>| async move {
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
                                _ => Status::unimplemented("no such method").into_http(),
                            };
                            Ok::<_, Infallible>(response)
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .http2_only()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GrpcServer { addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
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
