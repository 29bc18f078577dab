//! How spans end: streamed bodies, cancellation, failures, status codes, gRPC status, and
//! export that is off or full.

use super::*;

/// Sends `GET /stream` through a proxy that samples everything: the response body, the
/// upstream (holding the open end of the stream) and the proxy.
async fn start_stream() -> (Upstream, Proxy, Incoming) {
    let (upstream, proxy) = start_mesh(args(1.0)).await;
    let rsp = tokio::time::timeout(
        WAIT,
        client(false).request(request(&proxy, Method::GET, "/stream", &[])),
    )
    .await
    .unwrap()
    .unwrap();
    (upstream, proxy, rsp.into_body())
}

#[tokio::test]
async fn streamed_response_server_span_ends_after_the_last_body_byte() {
    let (mut upstream, mut proxy, mut body) = start_stream().await;
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
    let before_last = crate::trace::clock::now_unix_nanos();
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
    let (mut upstream, mut proxy, mut body) = start_stream().await;
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
