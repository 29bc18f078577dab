//! HTTP/1.1 through the proxy, compared byte for byte between client and upstream, in
//! fixed-target mode (inbound listener + MESHTRACE_INBOUND_TARGET) and explicit mode (the
//! outbound listener used as `http_proxy`).

mod common;

use std::time::Duration;

use meshtrace_proxy::config::Config;
use meshtrace_tests::client::{exchange, RawClient};
use meshtrace_tests::upstream::{HttpUpstream, RawHttpUpstream};

const OK: &[u8] = b"HTTP/1.1 200 Fine Thanks\r\nX-Mixed-Case: Yes\r\nset-cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 5\r\n\r\nhello";

/// What the upstream must receive for `sent`: identical bytes minus the hop-by-hop lines.
fn without_lines(sent: &str, hop_by_hop: &[&str]) -> String {
    sent.split_inclusive("\r\n")
        .filter(|line| !hop_by_hop.iter().any(|hop| line.starts_with(hop)))
        .collect()
}

/// The trace context headers the proxy writes on every forwarded request (the mesh's one
/// intended change). Returns the head without them, after checking that a well-formed
/// `traceparent` and the default B3 multi headers were written, each exactly once.
fn without_propagation(head: &str) -> String {
    let is_propagation = |line: &str| {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        matches!(name.as_str(), "traceparent" | "tracestate" | "b3") || name.starts_with("x-b3-")
    };
    let written: Vec<&str> = head
        .split_inclusive("\r\n")
        .filter(|line| is_propagation(line))
        .collect();
    let traceparents: Vec<&&str> = written
        .iter()
        .filter(|line| line.starts_with("traceparent: "))
        .collect();
    assert_eq!(traceparents.len(), 1, "one traceparent in {head}");
    let value = traceparents[0]["traceparent: ".len()..].trim_end();
    let fields: Vec<&str> = value.split('-').collect();
    assert_eq!(
        fields.iter().map(|f| f.len()).collect::<Vec<_>>(),
        [2, 32, 16, 2],
        "{value}"
    );
    for name in ["x-b3-traceid: ", "x-b3-spanid: ", "x-b3-sampled: "] {
        assert_eq!(
            written.iter().filter(|line| line.starts_with(name)).count(),
            1,
            "{name} in {head}"
        );
    }
    head.split_inclusive("\r\n")
        .filter(|line| !is_propagation(line))
        .collect()
}

#[tokio::test]
async fn get_is_forwarded_byte_for_byte_in_fixed_target_mode() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;

    let request = format!(
        "GET /path/a%20b?q=1&r=%2F HTTP/1.1\r\nHost: app.example:{}\r\nX-Request-ID: abc\r\nACCEPT: */*\r\nx-lower: v\r\nX-Multi: one\r\nX-Multi: two\r\nConnection: keep-alive, X-Hop-Only\r\nX-Hop-Only: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\n\r\n",
        upstream.addr().port()
    );
    let response = exchange(proxy.inbound, request.as_bytes()).await;
    let received = upstream.next_request().await;

    let expected = without_lines(
        &request,
        &[
            "Connection:",
            "X-Hop-Only:",
            "Keep-Alive:",
            "Proxy-Connection:",
            "TE:",
        ],
    );
    assert_eq!(without_propagation(&received.head_str()), expected);
    assert!(received.body.is_empty());

    // Status line with its reason phrase, header case and repeated headers come back unchanged.
    assert!(
        response.head_str().starts_with("HTTP/1.1 200 Fine Thanks\r\nX-Mixed-Case: Yes\r\nset-cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 5\r\n"),
        "{}",
        response.head_str()
    );
    assert_eq!(response.body, b"hello");
    proxy.shutdown().await;
}

#[tokio::test]
async fn post_is_forwarded_byte_for_byte_in_explicit_mode() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(common::config()).await;
    let authority = upstream.addr().to_string();

    let headers = format!(
        "Host: {authority}\r\nContent-Type: application/json\r\nX-Multi: 1\r\nX-Multi: 2\r\nContent-Length: 13\r\n\r\n"
    );
    let request =
        format!("POST http://{authority}/submit?x=y HTTP/1.1\r\n{headers}{{\"a\": [1, 2]}}");
    let response = exchange(proxy.outbound, request.as_bytes()).await;
    let received = upstream.next_request().await;

    // Absolute-form becomes origin-form toward the upstream; the headers are untouched.
    assert_eq!(
        without_propagation(&received.head_str()),
        format!("POST /submit?x=y HTTP/1.1\r\n{headers}")
    );
    assert_eq!(received.body, b"{\"a\": [1, 2]}");
    assert_eq!(response.status(), 200);
    assert_eq!(response.body, b"hello");
    proxy.shutdown().await;
}

#[tokio::test]
async fn explicit_mode_uses_the_host_header_for_origin_form_targets() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(common::config()).await;
    let request = format!(
        "GET /by-host HTTP/1.1\r\nhost: localhost:{}\r\n\r\n",
        upstream.addr().port()
    );
    let response = exchange(proxy.outbound, request.as_bytes()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        without_propagation(&upstream.next_request().await.head_str()),
        request
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn chunked_bodies_and_trailers_pass_through() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;

    let request = "POST /upload HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nTrailer: X-Checksum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: 42\r\n\r\n";
    let response = exchange(proxy.inbound, request.as_bytes()).await;
    assert_eq!(response.status(), 200);
    let received = upstream.next_request().await;
    let head = received.head_str();
    assert!(head.contains("\r\nTE: trailers\r\n"), "{head}");
    assert!(head.contains("\r\nTrailer: X-Checksum\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let body = String::from_utf8(received.body).unwrap();
    let data: String = dechunk(&body);
    assert_eq!(data, "hello, world");
    assert!(
        body.to_ascii_lowercase()
            .ends_with("0\r\nx-checksum: 42\r\n\r\n"),
        "{body:?}"
    );
    proxy.shutdown().await;
}

/// The data of a chunked body (sizes and trailers removed).
fn dechunk(body: &str) -> String {
    let mut data = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            return data;
        }
        data.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

#[tokio::test]
async fn response_trailers_reach_http1_clients_that_accept_them() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let response = exchange(
        proxy.inbound,
        b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = String::from_utf8(response.body).unwrap();
    assert_eq!(dechunk(&body), "body before trailers");
    assert!(body.ends_with("0\r\nx-checksum: 1234\r\n\r\n"), "{body:?}");
    proxy.shutdown().await;
}

/// An application that answers 2xx before asking for the body (this echo streams it back)
/// gets the body: the client, like curl, sends it once a 2xx arrives (the proxy may have
/// relayed its own `100 Continue` first, when it started reading the body before writing the
/// 2xx). Refusals and the application's own `100` are in `expect_continue.rs`.
#[tokio::test]
async fn expect_100_continue_with_an_early_2xx_delivers_the_body() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let mut client = RawClient::connect(proxy.inbound).await;
    client
        .send(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
        )
        .await;
    // A real client waits for a response before sending the body; the head of the 2xx is
    // enough (its body is the echo of what follows).
    let mut stream = client.into_stream();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("HTTP/1.1 200") {
        let mut buf = [0; 256];
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
            .await
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"hello world")
        .await
        .unwrap();
    while !seen.ends_with(b"hello world") {
        let mut buf = [0; 256];
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
            .await
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let mut client = RawClient::connect(proxy.inbound).await;
    for i in 0..5 {
        client
            .send(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await;
        assert_eq!(client.read_response().await.status(), 200);
        assert_eq!(upstream.next_request().await.connection, 0);
    }
    // A client connection keeps its upstream connection while it is open (as it would have
    // its own without the mesh): another client connection meanwhile gets a second one.
    let mut other = RawClient::connect(proxy.inbound).await;
    other.send(b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(other.read_response().await.status(), 200);
    assert_eq!(upstream.next_request().await.connection, 1);
    // Once client connections close, new ones reuse their upstream connections.
    drop(client);
    drop(other);
    wait_for_open_connections(proxy.admin, 0).await;
    for i in 0..3 {
        let response = exchange(
            proxy.inbound,
            format!("GET /again/{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert!(upstream.next_request().await.connection <= 1);
        wait_for_open_connections(proxy.admin, 0).await;
    }
    assert_eq!(upstream.connections(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_closed_upstream_connection_is_replaced_for_the_same_client_connection() {
    // The upstream closes after every response; the client keeps its connection to the proxy
    // (Connection is hop-by-hop), so each request needs a fresh upstream connection.
    const CLOSING: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
    let upstream = RawHttpUpstream::start(CLOSING).await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let mut client = RawClient::connect(proxy.inbound).await;
    for i in 0..3 {
        client
            .send(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await;
        let response = client.read_response().await;
        assert_eq!(response.status(), 200, "{}", response.head_str());
        assert_eq!(response.header("connection"), None);
        assert_eq!(upstream.next_request().await.connection, i);
    }
    assert_eq!(upstream.connections(), 3);
    proxy.shutdown().await;
}

/// Waits until the proxy has finished with all but `open` inbound client connections.
async fn wait_for_open_connections(admin: std::net::SocketAddr, open: u64) {
    let series = r#"meshtrace_proxy_open_connections{direction="inbound"}"#;
    let deadline = tokio::time::Instant::now() + meshtrace_tests::upstream::PATIENCE;
    loop {
        let text = common::metrics_text(admin).await;
        if common::metric_value(&text, series) == Some(open as f64) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still open: {:?}",
            common::metric_value(&text, series)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn refused_upstream_is_a_502_with_the_reason() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let proxy = common::start(common::fixed_target(dead)).await;
    let response = exchange(proxy.inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.header("meshtrace-proxy-error").as_deref(),
        Some("connection_refused")
    );

    // Same in explicit mode.
    let request = format!("GET http://{dead}/ HTTP/1.1\r\nHost: {dead}\r\n\r\n");
    let response = exchange(proxy.outbound, request.as_bytes()).await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.header("meshtrace-proxy-error").as_deref(),
        Some("connection_refused")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_timeout_is_a_504() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(Config {
        inbound_response_timeout: Duration::from_millis(300),
        ..common::fixed_target(upstream.addr())
    })
    .await;
    let response = exchange(proxy.inbound, b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(response.status(), 504);
    assert_eq!(
        response.header("meshtrace-proxy-error").as_deref(),
        Some("timeout")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn requests_for_the_proxy_itself_are_refused() {
    let proxy = common::start(common::config()).await;
    let request = format!(
        "GET http://{0}/ HTTP/1.1\r\nHost: {0}\r\n\r\n",
        proxy.outbound
    );
    let response = exchange(proxy.outbound, request.as_bytes()).await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.header("meshtrace-proxy-error").as_deref(),
        Some("loop_detected")
    );
    // HTTP/1.0 may omit Host (HTTP/1.1 may not: `missing_host`), and then names nothing.
    let response = exchange(proxy.outbound, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.header("meshtrace-proxy-error").as_deref(),
        Some("no_destination")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn inbound_target_pointing_at_the_proxy_is_refused() {
    // Bind to a known port first, then point the inbound target at it: the proxy's own
    // inbound listener.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let mut config = common::config();
    config.inbound_addr = format!("127.0.0.1:{port}").parse().unwrap();
    config.inbound_target = Some(format!("127.0.0.1:{port}"));
    let Ok(bound) = meshtrace_proxy::app::Proxy::new(config).bind().await else {
        return; // The port was taken in between; nothing to test.
    };
    let trigger = bound.shutdown_trigger();
    let inbound = bound.inbound_addr();
    let run = tokio::spawn(bound.run(std::future::pending()));
    let mut client = RawClient::connect(inbound).await;
    client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(client.is_closed_by_peer().await);
    trigger.trigger();
    run.await.unwrap();
}

#[tokio::test]
async fn concurrent_clients_all_get_their_own_answers() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let clients = (0..32).map(|i| {
        let inbound = proxy.inbound;
        tokio::spawn(async move {
            let body = format!("client number {i}");
            let request = format!(
                "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut client = RawClient::connect(inbound).await;
            for _ in 0..5 {
                client.send(request.as_bytes()).await;
                let response = client.read_response().await;
                assert_eq!(response.status(), 200);
                assert_eq!(response.body, body.as_bytes());
            }
        })
    });
    for client in futures::future::join_all(clients).await {
        client.unwrap();
    }
    assert_eq!(upstream.requests().len(), 32 * 5);
    proxy.shutdown().await;
}

#[tokio::test]
async fn connect_opens_a_tunnel_in_explicit_mode() {
    let echo = meshtrace_tests::tcp::TcpEcho::start().await;
    let proxy = common::start(common::config()).await;
    let mut client = RawClient::connect(proxy.outbound).await;
    client
        .send(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", echo.addr()).as_bytes())
        .await;
    let response = client.read_response_to(true).await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    let mut stream = client.into_stream();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"\x16\x03\x01 not http at all")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"\x16\x03\x01 not http at all19 bytes then EOF");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let response = exchange(
        proxy.outbound,
        format!("CONNECT {dead} HTTP/1.1\r\nHost: {dead}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(response.status(), 502);
    proxy.shutdown().await;
}

/// A client that goes away cancels its request upstream: the proxy closes the upstream
/// connection (an HTTP/1 connection with a request in flight cannot be reused) instead of
/// waiting for a response nobody will read.
#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = common::start(common::fixed_target(upstream.local_addr().unwrap())).await;

    let mut client = tokio::net::TcpStream::connect(proxy.inbound).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let (mut upstream_conn, _) = tokio::time::timeout(Duration::from_secs(10), upstream.accept())
        .await
        .expect("the proxy forwards the request")
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = upstream_conn.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "upstream connection closed before the request arrived"
        );
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"GET /slow HTTP/1.1\r\n"));

    // The upstream never answers; the client gives up.
    drop(client);

    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match upstream_conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the upstream connection stayed open after the client went away"
    );
    proxy.shutdown().await;
}

/// RFC 9112 §3.2 and RFC 9110 §4.2.4: requests whose Host is missing, repeated, or not the
/// absolute-form target's authority, and targets with userinfo, are answered 400 by the proxy
/// (with `meshtrace-proxy-error`) and sent nowhere, in both modes; they count as 4xx.
#[tokio::test]
async fn requests_with_an_ambiguous_host_are_refused_and_forwarded_nowhere() {
    let upstream = RawHttpUpstream::start(OK).await;
    let proxy = common::start(common::fixed_target(upstream.addr())).await;
    let authority = upstream.addr().to_string();
    let port = upstream.addr().port();
    let explicit = [
        (
            format!("GET /a HTTP/1.1\r\nHost: localhost:{port}\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
            "duplicate_host",
        ),
        (
            format!("GET http://{authority}/ HTTP/1.1\r\nHost: other.example\r\n\r\n"),
            "host_mismatch",
        ),
        (
            format!("GET http://{authority}/ HTTP/1.1\r\n\r\n"),
            "missing_host",
        ),
        (
            format!("GET http://user:pw@{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
            "userinfo",
        ),
    ];
    for (request, error) in &explicit {
        let response = exchange(proxy.outbound, request.as_bytes()).await;
        assert_eq!(response.status(), 400, "{request}");
        assert_eq!(
            response.header("meshtrace-proxy-error").as_deref(),
            Some(*error)
        );
    }
    let inbound = [
        ("GET / HTTP/1.1\r\nX: y\r\n\r\n", "missing_host"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "duplicate_host",
        ),
    ];
    for (request, error) in inbound {
        let response = exchange(proxy.inbound, request.as_bytes()).await;
        assert_eq!(response.status(), 400, "{request}");
        assert_eq!(
            response.header("meshtrace-proxy-error").as_deref(),
            Some(error)
        );
    }
    assert_eq!(upstream.connections(), 0, "nothing was forwarded");

    // A well-formed request still goes through afterwards.
    let response = exchange(proxy.inbound, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(response.status(), 200);
    let text = common::metrics_text(proxy.admin).await;
    for (direction, refused) in [("outbound", 4.0), ("inbound", 2.0)] {
        let series = format!(
            "meshtrace_proxy_requests_total{{direction=\"{direction}\",status_class=\"4xx\"}}"
        );
        assert_eq!(
            common::metric_value(&text, &series),
            Some(refused),
            "{text}"
        );
    }
    proxy.shutdown().await;
}

/// A client's invalid chunked body (size overflow, bare LF in a chunk extension, a 100 KB chunk
/// extension) is the client's fault: 400 with `meshtrace-proxy-error: invalid_request_body`
/// when the upstream has not answered yet, counted as a 4xx, and recorded with that
/// `error.type` on both spans, never as the upstream's failure.
#[tokio::test]
async fn an_invalid_chunked_request_body_is_the_clients_error() {
    use meshtrace_proxy::span::SpanSink;
    let upstream = RawHttpUpstream::start(OK).await;
    let (sink, queue) = SpanSink::bounded(64);
    let bound = meshtrace_proxy::app::Proxy::new(common::fixed_target(upstream.addr()))
        .with_span_sink(sink)
        .bind()
        .await
        .unwrap();
    let (inbound, admin, trigger) = (
        bound.inbound_addr(),
        bound.admin_addr(),
        bound.shutdown_trigger(),
    );
    let run = tokio::spawn(bound.run(std::future::pending()));

    let long_extension = format!("5;ext={}\r\nhello\r\n0\r\n\r\n", "x".repeat(100_000));
    let bodies = [
        "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n".to_string(),
        "5;a=b\nc\r\nhello\r\n0\r\n\r\n".to_string(),
        long_extension,
    ];
    for body in &bodies {
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: app\r\nl5d-sample: 1\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let mut client = RawClient::connect(inbound).await;
        client.send(request.as_bytes()).await;
        let response = client.read_response().await;
        assert_eq!(response.status(), 400, "{}", &body[..20]);
        assert_eq!(
            response.header("meshtrace-proxy-error").as_deref(),
            Some("invalid_request_body")
        );
    }

    let text = common::metrics_text(admin).await;
    let series = |class: &str| {
        format!("meshtrace_proxy_requests_total{{direction=\"inbound\",status_class=\"{class}\"}}")
    };
    assert_eq!(
        common::metric_value(&text, &series("4xx")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        common::metric_value(&text, &series("5xx")),
        Some(0.0),
        "{text}"
    );

    trigger.trigger();
    run.await.unwrap();
    let mut spans = Vec::new();
    while spans.len() < 6 {
        let span = tokio::time::timeout(Duration::from_secs(10), queue.recv())
            .await
            .expect("six spans")
            .expect("six spans");
        spans.push(span);
    }
    for span in &spans {
        let error_type = span
            .attributes
            .iter()
            .find(|(key, _)| *key == "error.type")
            .and_then(|(_, value)| span.text_of(value).map(|text| text.into_owned()));
        assert_eq!(
            error_type.as_deref(),
            Some("invalid_request_body"),
            "{:?} span",
            span.kind
        );
    }
}

/// Issue 17: repeated fields with other fields between them (`A`, `B`, `A`) and unusual case
/// leave in the order and bytes received, in the request and in the response (hyper regroups
/// them as `A, A, B`).
#[tokio::test]
async fn repeated_fields_keep_their_order_and_case_both_ways() {
    const INTERLEAVED: &[u8] = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Multi: m\r\nSet-Cookie: b=2\r\nx-MIXED:  spaced  \r\nContent-Length: 2\r\n\r\nok";
    let upstream = RawHttpUpstream::start(INTERLEAVED).await;
    let config = Config {
        http1_codec: meshtrace_proxy::config::Http1Codec::Meshtrace,
        ..common::fixed_target(upstream.addr())
    };
    let proxy = common::start(config).await;

    let request = format!(
        "GET /a HTTP/1.1\r\nHost: app:{}\r\nX-A: 1\r\nx-b: 2\r\nX-A: 3\r\nACCEPT:  */* \r\nX-Request-Id: r1\r\n\r\n",
        upstream.addr().port()
    );
    let response = exchange(proxy.inbound, request.as_bytes()).await;
    let received = upstream.next_request().await;

    assert_eq!(without_propagation(&received.head_str()), request);
    assert_eq!(
        response.head_str(),
        "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Multi: m\r\nSet-Cookie: b=2\r\nx-MIXED:  spaced  \r\nContent-Length: 2\r\n\r\n"
    );
    assert_eq!(response.body, b"ok");
    proxy.shutdown().await;
}

/// With context inference off, request ids serve nothing, so the inbound proxy adds none (the
/// default adds one to a request without it).
#[tokio::test]
async fn no_request_id_is_added_when_context_inference_is_off() {
    let upstream = RawHttpUpstream::start(OK).await;
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for (inference, added) in [
        (meshtrace_proxy::config::ContextInference::Off, false),
        (meshtrace_proxy::config::ContextInference::Infer, true),
    ] {
        let mut config = common::fixed_target(upstream.addr());
        config.trace.context_inference = inference;
        let proxy = common::start(config).await;
        assert_eq!(exchange(proxy.inbound, request).await.status(), 200);
        let head = upstream
            .next_request()
            .await
            .head_str()
            .to_ascii_lowercase();
        assert_eq!(
            head.contains("\r\nx-request-id: "),
            added,
            "{inference:?}: {head}"
        );
        proxy.shutdown().await;
    }
}
