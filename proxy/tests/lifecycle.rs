//! Admin endpoints, readiness and graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshtrace_proxy::app::Proxy;
use meshtrace_proxy::shutdown::DrainOutcome;
use meshtrace_tests::client::{exchange, RawClient, RawResponse};
use meshtrace_tests::upstream::{HttpUpstream, PATIENCE};

async fn admin_get(admin: SocketAddr, path: &str) -> RawResponse {
    exchange(
        admin,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    )
    .await
}

/// Polls until `check` holds (the proxy offers no event to await from outside).
async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(PATIENCE, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition never became true");
}

#[tokio::test]
async fn ready_only_once_running_then_drains() {
    let upstream = HttpUpstream::start().await;
    let bound = Proxy::new(common::fixed_target(upstream.addr()))
        .bind()
        .await
        .unwrap();
    let admin = bound.admin_addr();
    let trigger = bound.shutdown_trigger();

    // Bound but not yet running: alive, not ready.
    assert_eq!(admin_get(admin, "/live").await.status(), 200);
    assert_eq!(admin_get(admin, "/ready").await.status(), 503);

    let run = tokio::spawn(bound.run(std::future::pending()));
    eventually(|| async { admin_get(admin, "/ready").await.status() == 200 }).await;

    trigger.trigger();
    let outcome = tokio::time::timeout(PATIENCE, run).await.unwrap().unwrap();
    assert_eq!(outcome, DrainOutcome::Complete);
}

#[tokio::test]
async fn metrics_count_requests_connections_and_bytes() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let response = exchange(proxy.inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(response.status(), 200);

    let metrics = admin_get(proxy.admin, "/metrics").await;
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(metrics.body).unwrap();
    for expected in [
        r#"meshtrace_proxy_requests_total{direction="inbound",status_class="2xx"} 1"#,
        r#"meshtrace_proxy_connections_total{direction="inbound",protocol="http1"} 1"#,
        r#"meshtrace_proxy_request_duration_seconds_count{direction="inbound"} 1"#,
        r#"meshtrace_proxy_open_connections{direction="outbound"} 0"#,
        r#"meshtrace_proxy_connections_total{direction="inbound",protocol="opaque"} 0"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    let received: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"meshtrace_proxy_bytes_total{direction="inbound",flow="received"} "#)
        })
        .and_then(|v| v.parse().ok())
        .expect("bytes received");
    assert_eq!(received, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".len() as u64);
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_endpoint_accepts_loopback_posts() {
    let proxy = common::start(common::config()).await;
    let admin = proxy.admin;
    let refused_method = admin_get(admin, "/shutdown").await;
    assert_eq!(refused_method.status(), 405);
    let response = exchange(
        admin,
        b"POST /shutdown HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(proxy.finished().await, DrainOutcome::Complete);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_http1_requests_finish() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let inbound = proxy.inbound;

    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = RawClient::connect(inbound).await;
        client.send(b"GET /gate HTTP/1.1\r\nHost: a\r\n\r\n").await;
        clients.push(client);
    }
    upstream.wait_for_requests(5).await;

    let trigger = proxy.trigger();
    let drained = tokio::spawn(proxy.finished());
    trigger.trigger();

    // New connections are no longer accepted...
    eventually(|| async {
        match tokio::net::TcpStream::connect(inbound).await {
            Err(_) => true,
            Ok(mut stream) => {
                use tokio::io::AsyncReadExt;
                let mut byte = [0u8; 1];
                // Accepted by the kernel backlog but never served: closed when the listener goes.
                matches!(stream.read(&mut byte).await, Ok(0) | Err(_))
            }
        }
    })
    .await;

    // ...while the requests in flight complete, and then the connections close.
    upstream.open_gate();
    for mut client in clients {
        let response = client.read_response().await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.body, b"gate opened");
        assert!(client.is_closed_by_peer().await);
    }
    let outcome = tokio::time::timeout(PATIENCE, drained)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, DrainOutcome::Complete);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_h2_streams_finish() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let stream = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let request = Request::get("http://app/gate")
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(request)
        })
        .collect();
    let calls = tokio::spawn(futures::future::join_all(calls));
    upstream.wait_for_requests(3).await;

    let trigger = proxy.trigger();
    let drained = tokio::spawn(proxy.finished());
    trigger.trigger();
    upstream.open_gate();

    for response in calls.await.unwrap() {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "gate opened");
    }
    // GOAWAY: the client connection ends cleanly once its streams are done.
    tokio::time::timeout(PATIENCE, connection)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let outcome = tokio::time::timeout(PATIENCE, drained)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, DrainOutcome::Complete);
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(meshtrace_proxy::config::Config {
        shutdown_grace: Duration::from_millis(200),
        ..common::fixed_target(upstream.addr())
    })
    .await;
    let mut client = RawClient::connect(proxy.inbound).await;
    client.send(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n").await;
    upstream.wait_for_requests(1).await;
    assert_eq!(proxy.shutdown().await, DrainOutcome::GraceExpired);
}
