//! Bounds on request and response heads (time and size), with real sockets through the real
//! proxy: a slow or oversized head is refused by the proxy itself (marked with
//! `meshtrace-proxy-error`) and reaches no application; keep-alive connections idle between
//! requests stay open unless an idle timeout is set.

mod common;

use std::time::Duration;

use meshtrace_proxy::config::Config;
use meshtrace_tests::client::{exchange, RawClient};
use meshtrace_tests::upstream::RawHttpUpstream;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Idle time between requests well beyond the head timeout set in these tests.
const IDLE: Duration = Duration::from_millis(900);

fn with_head_timeout(upstream: &RawHttpUpstream, timeout: Duration) -> Config {
    Config {
        http1_header_read_timeout: timeout,
        ..common::fixed_target(upstream.addr())
    }
}

/// A `GET` whose head is `extra` bytes of one header field long.
fn request_with_field_of(extra: usize) -> Vec<u8> {
    let mut request = b"GET /big HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    request.resize(request.len() + extra, b'v');
    request.extend_from_slice(b"\r\n\r\n");
    request
}

/// The head timeout counts from a request's first byte: a keep-alive connection idle between
/// requests for longer than the timeout still serves its next request.
#[tokio::test]
async fn idle_keep_alive_connections_outlive_the_head_timeout() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(with_head_timeout(&upstream, Duration::from_millis(200))).await;
    let mut client = RawClient::connect(proxy.inbound).await;
    for i in 0..3 {
        client
            .send(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await;
        assert_eq!(client.read_response().await.status(), 200, "request {i}");
        tokio::time::sleep(IDLE).await;
    }
    assert_eq!(upstream.connections(), 1);
    proxy.shutdown().await;
}

/// A head that does not end within the timeout, on a fresh connection or after an earlier
/// request, is answered 408 by the proxy and the connection closed; nothing is forwarded.
#[tokio::test]
async fn slow_heads_are_answered_408_and_closed() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(with_head_timeout(&upstream, Duration::from_millis(300))).await;

    let mut fresh = RawClient::connect(proxy.inbound).await;
    fresh
        .send(b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Trickle: ")
        .await;
    let mut later = RawClient::connect(proxy.inbound).await;
    later.send(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(later.read_response().await.status(), 200);
    assert_eq!(
        upstream.next_request().await.head_str().lines().next(),
        Some("GET /first HTTP/1.1")
    );
    tokio::time::sleep(IDLE).await;
    later.send(b"GET /second HTTP/1.1\r\nHo").await;
    // Bytes that keep trickling in do not extend the deadline.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        later.send(b"x").await;
    }

    for client in [&mut fresh, &mut later] {
        let response = client.read_response().await;
        assert_eq!(response.status(), 408, "{}", response.head_str());
        assert_eq!(
            response.header("meshtrace-proxy-error").as_deref(),
            Some("request_head_timeout")
        );
        assert!(
            client.is_closed_by_peer().await,
            "connection kept after 408"
        );
    }
    assert_eq!(
        upstream.connections(),
        1,
        "the slow heads reached the application"
    );
    proxy.shutdown().await;
}

/// `MESHTRACE_HTTP1_IDLE_TIMEOUT` closes connections idle between requests (without a
/// response: there is no request to answer).
#[tokio::test]
async fn the_idle_timeout_closes_idle_connections() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(Config {
        http1_idle_timeout: Duration::from_millis(200),
        ..common::fixed_target(upstream.addr())
    })
    .await;
    let mut client = RawClient::connect(proxy.inbound).await;
    client.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(client.read_response().await.status(), 200);
    tokio::time::sleep(IDLE).await;
    assert!(client.is_closed_by_peer().await, "idle connection kept");
    proxy.shutdown().await;
}

/// A head over `MESHTRACE_HTTP1_MAX_HEADER_BYTES` (default 64 KiB) is answered 431 by the
/// proxy and nothing of it is forwarded; one just under the limit is forwarded unchanged.
#[tokio::test]
async fn heads_over_the_limit_are_answered_431_and_not_forwarded() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;

    let under = request_with_field_of(60 * 1024);
    assert_eq!(exchange(proxy.inbound, &under).await.status(), 200);
    let received = upstream.next_request().await.head_str();
    let field = received.lines().find(|line| line.starts_with("X-Big: "));
    assert_eq!(field.map(str::len), Some("X-Big: ".len() + 60 * 1024));

    let response = exchange(proxy.inbound, &request_with_field_of(100 * 1024)).await;
    assert_eq!(response.status(), 431, "{}", response.head_str());
    assert_eq!(
        response.header("meshtrace-proxy-error").as_deref(),
        Some("request_head_too_large")
    );
    // The head arrives in several reads: also over the limit when split.
    let mut client = RawClient::connect(proxy.inbound).await;
    let big = request_with_field_of(70 * 1024);
    for chunk in big.chunks(8 * 1024) {
        client.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(client.read_response().await.status(), 431);
    assert!(client.is_closed_by_peer().await);
    assert_eq!(
        upstream.connections(),
        1,
        "an oversized head reached the application"
    );
    proxy.shutdown().await;
}

/// The field count is bounded well above legal use: 100 `tracestate` lines (legal, though
/// more members than propagation keeps) are forwarded, and so are 300 other fields, all of them.
#[tokio::test]
async fn heads_with_hundreds_of_fields_are_forwarded() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    for (name, count) in [("tracestate", 100), ("x-field", 300)] {
        let mut request = b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\n".to_vec();
        for i in 0..count {
            request.extend_from_slice(format!("{name}: k{i}=v{i}\r\n").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        let response = exchange(proxy.inbound, &request).await;
        assert_eq!(response.status(), 200, "{name}: {}", response.head_str());
        let received = upstream.next_request().await.head_str();
        if name == "x-field" {
            let forwarded = received
                .lines()
                .filter(|l| l.starts_with("x-field: "))
                .count();
            assert_eq!(forwarded, count);
        }
    }
    proxy.shutdown().await;
}

/// An upstream response head over the limit is the upstream's failure: 502 from the proxy.
#[tokio::test]
async fn upstream_response_heads_over_the_limit_are_a_502() {
    let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: ".to_vec();
    response.resize(response.len() + 100 * 1024, b'v');
    response.extend_from_slice(b"\r\n\r\nok");
    let upstream = RawHttpUpstream::start(Vec::leak(response)).await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let response = exchange(proxy.inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(response.status(), 502, "{}", response.head_str());
    assert!(response.header("meshtrace-proxy-error").is_some());
    proxy.shutdown().await;
}

/// h2 applies the same limit through `SETTINGS_MAX_HEADER_LIST_SIZE`, both ways: a 40 KiB
/// header list (over hyper's 16 KiB default) is forwarded and its response returned; a client
/// that honours the setting cannot send one over 64 KiB.
#[tokio::test]
async fn h2_header_lists_are_bounded_by_the_same_limit() {
    use http::{Request, Response, Version};
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    // An h2 application that accepts large header lists and echoes the field's length.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let len = request.headers().get("x-big").map_or(0, |v| v.len());
                let response = Response::builder()
                    .header("x-big", "w".repeat(len))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_header_list_size(1 << 20)
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let proxy = common::start(common::fixed_target(app)).await;
    let stream = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut client, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(1 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = |len: usize| {
        Request::get("http://app.test/")
            .version(Version::HTTP_2)
            .header("x-big", "v".repeat(len))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };

    let response = client.send_request(request(40 * 1024)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-big"].len(), 40 * 1024);
    response.into_body().collect().await.unwrap();

    let refused = client.send_request(request(100 * 1024)).await;
    assert!(refused.is_err() || refused.is_ok_and(|r| r.status() == 431));
    proxy.shutdown().await;
}

/// h2: a header block that never completes (HEADERS without END_HEADERS, no CONTINUATION)
/// ends the connection after the head timeout, while an idle h2 connection between requests
/// (a gRPC channel) stays open past it.
#[tokio::test]
async fn h2_header_blocks_that_never_complete_end_the_connection() {
    use http::{Request, Version};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = meshtrace_tests::upstream::HttpUpstream::start().await;
    let proxy = common::start(Config {
        http1_header_read_timeout: Duration::from_millis(300),
        ..common::fixed_target(upstream.addr())
    })
    .await;

    let stream = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut client, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for i in 0..2 {
        let request = Request::get(format!("http://app.test/{i}"))
            .version(Version::HTTP_2)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = client
            .send_request(request)
            .await
            .expect("idle h2 connection kept");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        tokio::time::sleep(IDLE).await;
    }

    let mut stalled = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    stalled
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stalled
        .write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0])
        .await
        .unwrap(); // SETTINGS
                   // HEADERS on stream 1, 3 bytes of header block, no END_HEADERS; no CONTINUATION follows.
    stalled
        .write_all(&[0, 0, 3, 0x1, 0x1, 0, 0, 0, 1, 0x82, 0x86, 0x84])
        .await
        .unwrap();
    let mut received = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut received)).await;
    assert!(
        closed.is_ok(),
        "a stalled header block kept the connection open"
    );
    assert_eq!(upstream.requests().len(), 2);
    proxy.shutdown().await;
}

/// `MESHTRACE_MAX_PENDING_HEAD_BYTES`: when unfinished heads together hold more than the
/// budget, the connection holding the largest one is answered 431 and closed first, even when
/// another connection's bytes went over; the smaller ones stay open and complete their requests.
#[tokio::test]
async fn the_largest_unfinished_heads_are_cut_past_the_budget() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(Config {
        max_pending_head_bytes: 64 * 1024,
        http1_max_header_bytes: 256 * 1024,
        ..common::fixed_target(upstream.addr())
    })
    .await;
    let part = |bytes: usize| {
        let mut head = b"GET /part HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        head.resize(bytes, b'v');
        head
    };
    // 40 + 10 + 10 KiB fit in the budget ...
    let mut largest = RawClient::connect(proxy.inbound).await;
    largest.send(&part(40 * 1024)).await;
    let mut small = RawClient::connect(proxy.inbound).await;
    small.send(&part(10 * 1024)).await;
    let mut other = RawClient::connect(proxy.inbound).await;
    other.send(&part(10 * 1024)).await;
    // ... 8 KiB more on a small one do not: the largest goes.
    small.send(&[b'v'; 8 * 1024]).await;

    let response = largest.read_response().await;
    assert_eq!(response.status(), 431, "{}", response.head_str());
    assert_eq!(
        response.header("meshtrace-proxy-error").as_deref(),
        Some("request_head_budget")
    );
    assert!(
        largest.is_closed_by_peer().await,
        "connection kept after 431"
    );

    for client in [&mut small, &mut other] {
        client.send(b"\r\n\r\n").await;
        let response = client.read_response().await;
        assert_eq!(response.status(), 200, "{}", response.head_str());
    }
    let request = b"GET /normal HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(exchange(proxy.inbound, request).await.status(), 200);
    let mut paths: Vec<String> = Vec::new();
    for _ in 0..3 {
        let head = upstream.next_request().await.head_str();
        paths.extend(head.lines().next().map(str::to_string));
    }
    paths.sort();
    assert_eq!(
        paths,
        [
            "GET /normal HTTP/1.1",
            "GET /part HTTP/1.1",
            "GET /part HTTP/1.1"
        ]
    );
    proxy.shutdown().await;
}
