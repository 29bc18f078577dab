//! HTTP/2 (prior knowledge) and gRPC through the proxy.

mod common;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Version};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshtrace_tests::grpc::{self, GrpcServer};
use meshtrace_tests::upstream::{body_from_chunks, HttpUpstream, TestBody};

async fn h2_client(addr: std::net::SocketAddr) -> http2::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// One runtime thread: the proxy polls a connection's streams in the connection's task.
#[tokio::test]
async fn h2_streams_with_trailers_are_multiplexed_over_one_upstream_connection() {
    multiplexed_streams_with_trailers().await;
}

/// Several runtime threads: each stream is a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_are_multiplexed_on_a_multi_threaded_runtime() {
    multiplexed_streams_with_trailers().await;
}

async fn multiplexed_streams_with_trailers() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let client = h2_client(proxy.inbound).await;

    let calls = (0..8).map(|i| {
        let mut client = client.clone();
        async move {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sum", HeaderValue::from(i));
            let body = body_from_chunks(
                vec![
                    Bytes::from(format!("part one {i}, ")),
                    Bytes::from("part two"),
                ],
                Some(trailers),
            );
            let request = Request::post(format!("http://app.test/echo?i={i}"))
                .version(Version::HTTP_2)
                .header("x-Call", i)
                .body(body)
                .unwrap();
            let response = client.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.version(), Version::HTTP_2);
            let collected = response.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned().expect("trailers");
            assert_eq!(trailers["x-sum"], i.to_string());
            assert_eq!(
                collected.to_bytes(),
                Bytes::from(format!("part one {i}, part two"))
            );
        }
    });
    futures::future::join_all(calls).await;

    let requests = upstream.requests();
    assert_eq!(requests.len(), 8);
    for request in &requests {
        assert_eq!(request.version, Version::HTTP_2);
        assert_eq!(request.uri.authority().unwrap().as_str(), "app.test");
        assert!(request.headers.contains_key("x-call"));
    }
    assert_eq!(upstream.connections(), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn h2_response_trailers_arrive() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let mut client = h2_client(proxy.inbound).await;
    let request = Request::get("http://app.test/trailers")
        .body(body_from_chunks(Vec::new(), None))
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "1234");
    assert_eq!(collected.to_bytes(), "body before trailers");
    proxy.shutdown().await;
}

#[tokio::test]
async fn grpc_unary_and_server_streaming_in_fixed_target_mode() {
    let server = GrpcServer::start().await;
    let proxy = common::start(common::fixed_target(server.addr())).await;
    let channel = grpc::channel(proxy.inbound, server.addr()).await;

    let (reply, served_by) = grpc::echo(channel.clone(), "hello through the mesh")
        .await
        .unwrap();
    assert_eq!(reply, "hello through the mesh");
    assert_eq!(served_by.as_deref(), Some("meshtrace-test"));

    let counted = grpc::count(channel, 100).await.unwrap();
    assert_eq!(counted, (0..100).collect::<Vec<_>>());
    proxy.shutdown().await;
}

#[tokio::test]
async fn grpc_unary_and_server_streaming_in_explicit_mode() {
    let server = GrpcServer::start().await;
    let proxy = common::start(common::config()).await;
    // Connect to the proxy's outbound listener, name the server in `:authority`.
    let channel = grpc::channel(proxy.outbound, server.addr()).await;

    let (reply, _) = grpc::echo(channel.clone(), "explicit").await.unwrap();
    assert_eq!(reply, "explicit");
    let counted = grpc::count(channel.clone(), 3).await.unwrap();
    assert_eq!(counted, [0, 1, 2]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn grpc_to_a_dead_server_fails_with_a_proxy_error() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let proxy = common::start(common::fixed_target(dead)).await;
    let channel = grpc::channel(proxy.inbound, dead).await;
    let status = grpc::echo(channel, "anyone?").await.unwrap_err();
    // tonic maps HTTP 502 to `Unavailable`.
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    proxy.shutdown().await;
}
