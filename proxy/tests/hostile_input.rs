//! Regression tests for hostile input the proxy already withstands: ambiguous HTTP/1 framing
//! never smuggles a second request to the application (RFC 9112 §6.3), and an h2 rapid-reset
//! flood (CVE-2023-44487) ends that connection while the proxy keeps serving others.

mod common;

use std::time::Duration;

use meshtrace_tests::client::{exchange, RawClient};
use meshtrace_tests::upstream::{HttpUpstream, PATIENCE};
use tokio::io::AsyncReadExt;

/// A second request hidden in the body of the first, as a proxy reading the framing one way
/// and an application reading it the other would split them.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// Everything the proxy sends on `client` until it closes the connection.
async fn read_until_closed(client: RawClient) -> String {
    let mut stream = client.into_stream();
    let mut all = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut all)).await;
    assert!(read.is_ok(), "the proxy kept an ambiguous connection open");
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn ambiguous_framing_never_smuggles_a_second_request() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let chunked_then_smuggled = format!("0\r\n\r\n{SMUGGLED}");
    let length = chunked_then_smuggled.len();
    let cases = [
        // CL+TE and TE+CL: chunked wins (and the connection closes) or the request is refused.
        format!("POST /cl-te HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_then_smuggled}"),
        format!("POST /te-cl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{chunked_then_smuggled}"),
        // Two different Content-Lengths: refused.
        format!("POST /two-cl HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: {length}\r\n\r\n{chunked_then_smuggled}"),
        // Obfuscated Transfer-Encoding: chunked not last, an unknown coding, space before the colon.
        format!("POST /te-not-last HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: {length}\r\n\r\n{chunked_then_smuggled}"),
        format!("POST /te-unknown HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        format!("POST /te-space HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"),
    ];
    for (i, attack) in cases.iter().enumerate() {
        let mut client = RawClient::connect(proxy.inbound).await;
        client.send(attack.as_bytes()).await;
        let answered = read_until_closed(client).await;
        assert!(
            answered.matches("HTTP/1.1 ").count() <= 1,
            "case {i}: more than one response: {answered}"
        );
        // A request sent afterwards arrives: everything the attack forwarded arrived before.
        let control = format!("GET /control-{i} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            exchange(proxy.inbound, control.as_bytes()).await.status(),
            200
        );
        let seen = upstream.requests();
        assert!(
            seen.iter().any(|r| r.uri.path() == format!("/control-{i}")),
            "case {i}: control request missing"
        );
        let paths: Vec<String> = seen.iter().map(|r| r.uri.path().to_string()).collect();
        assert!(
            !paths.iter().any(|p| p == "/smuggled"),
            "case {i}: a smuggled request reached the application: {paths:?}"
        );
        for request in &seen {
            let both = request.headers.contains_key("content-length")
                && request.headers.contains_key("transfer-encoding");
            assert!(
                !both,
                "case {i}: forwarded with both CL and TE: {request:?}"
            );
        }
    }
    proxy.shutdown().await;
}

/// Rapid reset: a client opens streams and cancels each at once, thousands of times. The proxy
/// ends that connection (GOAWAY or close) rather than working for it forever, and other
/// clients are still served.
#[tokio::test]
async fn an_h2_rapid_reset_flood_ends_that_connection_and_the_proxy_keeps_serving() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let stream = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);

    let flood = async {
        for _ in 0..100_000 {
            let request = http::Request::get("http://app.test/hang").body(()).unwrap();
            let sent = match client.ready().await {
                Ok(ready) => {
                    client = ready;
                    client.send_request(request, true)
                }
                Err(_) => return,
            };
            match sent {
                Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(_) => return,
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, flood)
        .await
        .expect("flood did not end");
    let ended = tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the flooding connection was kept open");
    let _ = ended;

    let response = exchange(proxy.inbound, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(1)).await;
    proxy.shutdown().await;
}
