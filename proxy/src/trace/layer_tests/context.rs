//! The trace context through the layers: which trace a hop joins, what it propagates, and
//! how it samples.

use super::*;

#[tokio::test]
async fn sampled_request_yields_server_and_client_spans_chained_to_the_upstream() {
    let (mut upstream, mut proxy) = start_mesh(args(0.0)).await;
    let mut req = request(
        &proxy,
        Method::POST,
        "/orders/42?secret=s3cr3t",
        &[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("authorization", "Bearer s3cr3t"),
            ("user-agent", "test-agent/1"),
        ],
    );
    *req.body_mut() = Full::new(Bytes::from_static(b"hello world"));
    let (rsp, body) = send(req).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(body, "hello from upstream");
    assert!(
        rsp.headers.get("traceresponse").is_none(),
        "did not start the trace"
    );

    let seen = next_seen(&mut upstream).await;
    assert_eq!(seen.body_len, 11);
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(client.kind, SpanKind::Client);

    assert_chained(&server, &client, &seen);
    assert_request_attributes(&server, &client, &proxy, &upstream);
}

/// One trace, chained: incoming parent → SERVER → CLIENT → upstream.
fn assert_chained(server: &SpanRecord, client: &SpanRecord, seen: &Received) {
    for span in [server, client] {
        assert_eq!(to_hex(&span.trace_id), TRACE);
        assert_eq!(span.flags, 0x01, "random flag copied exactly (unset here)");
        assert_eq!(span.trace_state.as_deref(), Some("congo=t61rcWkgMzE"));
    }
    assert_eq!(
        server.parent_span_id.map(|id| to_hex(&id)).as_deref(),
        Some(PARENT)
    );
    assert_eq!(client.parent_span_id, Some(server.span_id));
    assert_ne!(client.span_id, server.span_id);
    let (trace, parent, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(trace, TRACE);
    assert_eq!(parent, to_hex(&client.span_id));
    assert_eq!(flags, "01");
    assert_eq!(
        header(&seen.headers, "tracestate"),
        Some("congo=t61rcWkgMzE")
    );
    // No B3 arrived: the configured default (b3multi) is written with the same ids.
    assert_eq!(header(&seen.headers, "x-b3-traceid"), Some(TRACE));
    assert_eq!(
        header(&seen.headers, "x-b3-spanid"),
        Some(to_hex(&client.span_id).as_str())
    );
    assert_eq!(
        header(&seen.headers, "x-b3-parentspanid"),
        Some(to_hex(&server.span_id).as_str())
    );
    assert_eq!(header(&seen.headers, "x-b3-sampled"), Some("1"));
    assert!(seen.headers.get("b3").is_none());
}

/// Names and attributes of the spans of the request of
/// [`sampled_request_yields_server_and_client_spans_chained_to_the_upstream`].
fn assert_request_attributes(
    server: &SpanRecord,
    client: &SpanRecord,
    proxy: &Proxy,
    upstream: &Upstream,
) {
    assert_eq!(server.name, "POST /orders/{id}");
    assert_eq!(client.name, "POST /orders/{id}");
    assert!(server.start_unix_nanos <= client.start_unix_nanos);
    assert!(client.end_unix_nanos <= server.end_unix_nanos);
    assert!(server.start_unix_nanos < server.end_unix_nanos);
    for span in [server, client] {
        assert_eq!(
            text(span, "meshtrace.direction").as_deref(),
            Some("outbound")
        );
        assert_eq!(text(span, "http.request.method").as_deref(), Some("POST"));
        assert_eq!(int(span, "http.response.status_code"), Some(200));
        assert_eq!(int(span, "http.request.body.size"), Some(11));
        assert_eq!(int(span, "http.response.body.size"), Some(19));
        assert_eq!(
            text(span, "network.protocol.version").as_deref(),
            Some("1.1")
        );
        assert_eq!(
            text(span, "user_agent.original").as_deref(),
            Some("test-agent/1")
        );
        assert_eq!(span.status, SpanStatus::Unset);
        let dump = format!("{span:?}");
        assert!(
            !dump.contains("s3cr3t") && !dump.contains("Bearer"),
            "{dump}"
        );
    }
    assert_eq!(text(server, "url.path").as_deref(), Some("/orders/42"));
    assert_eq!(text(server, "client.address").as_deref(), Some("127.0.0.1"));
    // The URL as addressed (Host header; here the test client addressed the proxy itself),
    // the peer as actually connected.
    assert_eq!(
        text(client, "url.full").as_deref(),
        Some(format!("http://{}/orders/42", proxy.addr).as_str())
    );
    assert_eq!(
        text(client, "network.peer.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        int(client, "network.peer.port"),
        Some(i64::from(upstream.addr.port()))
    );
}

#[tokio::test]
async fn every_forwarded_request_gets_a_new_client_span_id() {
    let (mut upstream, mut proxy) = start_mesh(args(0.0)).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let mut parents = Vec::new();
    for _ in 0..3 {
        let (_, seen) = get(&proxy, &mut upstream, "/", &[("traceparent", &tp)]).await;
        let spans = spans(&mut proxy.queue, 2).await;
        let (_, parent, _) = traceparent(&seen.headers, "traceparent");
        assert_eq!(parent, to_hex(&spans[1].span_id));
        parents.push(parent);
    }
    parents.sort();
    parents.dedup();
    assert_eq!(parents.len(), 3);
}

#[tokio::test]
async fn a_proxy_that_starts_the_trace_roots_it_and_leaves_the_response_alone() {
    let (mut upstream, mut proxy) = start_mesh(args(1.0)).await;
    let (rsp, seen) = get(&proxy, &mut upstream, "/", &[("tracestate", "orphan=1")]).await;
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    assert_eq!(server.parent_span_id, None, "root span");
    assert_eq!(server.flags, 0x03, "sampled + random (we generated the id)");
    assert_eq!(
        server.trace_state, None,
        "tracestate without a valid parent is dropped"
    );
    // The client asked for nothing: its response is not changed (MESHTRACE_TRACE_RESPONSE=on).
    assert!(rsp.headers.get("traceresponse").is_none());
    let (trace, parent, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(trace, to_hex(&server.trace_id));
    assert_eq!(parent, to_hex(&client.span_id));
    assert_eq!(flags, "03");
    assert!(seen.headers.get("tracestate").is_none());
}

fn trace_response(setting: TraceResponse) -> TraceArgs {
    let mut args = args(1.0);
    args.trace_response = setting;
    args
}

#[tokio::test]
async fn trace_response_always_answers_when_this_proxy_started_the_trace() {
    let mut upstream = start_upstream().await;
    let mut proxy = start_proxy(trace_response(TraceResponse::Always), upstream.addr).await;
    let (rsp, _) = get(&proxy, &mut upstream, "/", &[]).await;
    let [server, _]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    let (trace, span, flags) = traceparent(&rsp.headers, "traceresponse");
    assert_eq!(trace, to_hex(&server.trace_id));
    assert_eq!(span, to_hex(&server.span_id));
    assert_eq!(flags, "03");
    // A joined trace without a sample header: the caller already knows its trace.
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let (rsp, _) = get(&proxy, &mut upstream, "/", &[("traceparent", &tp)]).await;
    assert!(rsp.headers.get("traceresponse").is_none());
    spans(&mut proxy.queue, 2).await;
}

#[tokio::test]
async fn trace_response_on_and_always_answer_a_sample_header_off_never() {
    for (setting, answers) in [
        (TraceResponse::On, true),
        (TraceResponse::Always, true),
        (TraceResponse::Off, false),
    ] {
        let mut upstream = start_upstream().await;
        let mut proxy = start_proxy(trace_response(setting), upstream.addr).await;
        for headers in [
            &[("l5d-sample", "1")][..],
            &[
                ("l5d-sample", "1"),
                ("traceparent", &format!("00-{TRACE}-{PARENT}-00")),
            ][..],
        ] {
            let (rsp, _) = get(&proxy, &mut upstream, "/", headers).await;
            assert_eq!(
                rsp.headers.get("traceresponse").is_some(),
                answers,
                "{setting:?} {headers:?}"
            );
            spans(&mut proxy.queue, 2).await;
        }
        // No sample header, trace started here: only `always` answers.
        let (rsp, _) = get(&proxy, &mut upstream, "/", &[]).await;
        assert_eq!(
            rsp.headers.get("traceresponse").is_some(),
            setting == TraceResponse::Always,
            "{setting:?}"
        );
        spans(&mut proxy.queue, 2).await;
    }
}

#[tokio::test]
async fn sample_header_forces_sampling_and_is_consumed() {
    let (mut upstream, mut proxy) = start_mesh(args(0.0)).await;
    let tp = format!("00-{TRACE}-{PARENT}-00");
    let (rsp, seen) = get(
        &proxy,
        &mut upstream,
        "/",
        &[("traceparent", &tp), ("L5d-Sample", "1")],
    )
    .await;
    assert!(seen.headers.get("l5d-sample").is_none(), "consumed");
    let spans = spans(&mut proxy.queue, 2).await;
    assert_eq!(to_hex(&spans[0].trace_id), TRACE);
    let (_, _, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(flags, "01");
    // Applied the header: answer with the trace to look for.
    let (trace, span, flags) = traceparent(&rsp.headers, "traceresponse");
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(span, to_hex(&spans[0].span_id));
}

#[tokio::test]
async fn sample_header_zero_beats_a_sampled_parent() {
    let (mut upstream, mut proxy) = start_mesh(args(1.0)).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let (rsp, seen) = get(
        &proxy,
        &mut upstream,
        "/",
        &[("traceparent", &tp), ("l5d-sample", "0")],
    )
    .await;
    assert_no_spans(&mut proxy.queue);
    let (trace, _, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_eq!(header(&seen.headers, "x-b3-sampled"), Some("0"));
    assert!(seen.headers.get("l5d-sample").is_none());
    let (_, _, flags) = traceparent(&rsp.headers, "traceresponse");
    assert_eq!(flags, "00");
}

#[tokio::test]
async fn unparseable_sample_header_is_ignored_counted_and_removed() {
    let (mut upstream, mut proxy) = start_mesh(args(0.0)).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let (rsp, seen) = get(
        &proxy,
        &mut upstream,
        "/",
        &[("traceparent", &tp), ("l5d-sample", "lots")],
    )
    .await;
    assert!(seen.headers.get("l5d-sample").is_none());
    // The inherited decision (sampled) stands.
    spans(&mut proxy.queue, 2).await;
    assert!(
        rsp.headers.get("traceresponse").is_none(),
        "header not applied"
    );
    assert_eq!(proxy.tracer.metrics().sample_header_invalid.get(), 1);
}

#[tokio::test]
async fn unsampled_requests_record_nothing_but_propagate_a_fresh_context() {
    let (mut upstream, mut proxy) = start_mesh(args(0.0)).await;
    let (rsp, seen) = get(&proxy, &mut upstream, "/x", &[]).await;
    assert_no_spans(&mut proxy.queue);
    let (trace, parent, flags) = traceparent(&seen.headers, "traceparent");
    assert_ne!(trace, "0".repeat(32));
    assert_ne!(parent, "0".repeat(16));
    assert_eq!(flags, "02", "not sampled; random trace id");
    assert_eq!(header(&seen.headers, "x-b3-traceid"), Some(trace.as_str()));
    assert_eq!(header(&seen.headers, "x-b3-sampled"), Some("0"));
    // No sample header: the response is not changed.
    assert!(rsp.headers.get("traceresponse").is_none());
    assert_eq!(proxy.tracer.metrics().spans_recorded.get(), 0);
}

#[tokio::test]
async fn b3_single_in_b3_single_out_plus_traceparent() {
    let (mut upstream, mut proxy) = start_mesh(args(0.0)).await;
    let b3 = format!("{TRACE}-{PARENT}-1");
    let (_, seen) = get(&proxy, &mut upstream, "/", &[("b3", &b3)]).await;
    let [server, client]: [SpanRecord; 2] = spans(&mut proxy.queue, 2).await.try_into().unwrap();
    assert_eq!(to_hex(&server.trace_id), TRACE);
    assert_eq!(
        server.parent_span_id.map(|p| to_hex(&p)).as_deref(),
        Some(PARENT)
    );
    assert_eq!(server.flags, 0x01, "no random flag for B3 ids");
    let want = format!(
        "{TRACE}-{}-1-{}",
        to_hex(&client.span_id),
        to_hex(&server.span_id)
    );
    assert_eq!(header(&seen.headers, "b3"), Some(want.as_str()));
    let (trace, parent, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(parent, to_hex(&client.span_id));
    assert!(
        seen.headers.get("x-b3-traceid").is_none(),
        "only the forms that arrived"
    );
}

#[tokio::test]
async fn b3_multi_64_bit_ids_stay_64_bit_in_b3_and_pad_in_w3c() {
    let (mut upstream, mut proxy) = start_mesh(args(1.0)).await;
    let (rsp, seen) = get(
        &proxy,
        &mut upstream,
        "/",
        &[
            ("X-B3-TraceId", "463ac35c9f6413ad"),
            ("X-B3-SpanId", "a2fb4a1d1a96d312"),
            ("X-B3-Sampled", "0"),
        ],
    )
    .await;
    assert_no_spans(&mut proxy.queue);
    assert!(rsp.headers.get("traceresponse").is_none());
    assert_eq!(
        header(&seen.headers, "x-b3-traceid"),
        Some("463ac35c9f6413ad")
    );
    assert_eq!(header(&seen.headers, "x-b3-sampled"), Some("0"));
    assert_eq!(
        header(&seen.headers, "x-b3-parentspanid").map(str::len),
        Some(16)
    );
    assert_ne!(
        header(&seen.headers, "x-b3-spanid"),
        Some("a2fb4a1d1a96d312")
    );
    let (trace, _, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(trace, "0000000000000000463ac35c9f6413ad");
    assert_eq!(flags, "00");
    assert!(seen.headers.get("b3").is_none());
}

#[tokio::test]
async fn b3_sampling_state_only_starts_a_trace_with_that_decision() {
    let (mut upstream, mut proxy) = start_mesh(args(1.0)).await;
    let (rsp, seen) = get(&proxy, &mut upstream, "/", &[("b3", "0")]).await;
    assert_no_spans(&mut proxy.queue);
    let (trace, span, flags) = traceparent(&seen.headers, "traceparent");
    assert_eq!(flags, "02", "inherited 'no', fresh random trace id");
    let b3 = header(&seen.headers, "b3").unwrap();
    assert!(b3.starts_with(&format!("{trace}-{span}-0-")), "{b3}");
    assert!(
        rsp.headers.get("traceresponse").is_none(),
        "started here, but the client asked for nothing"
    );
}

#[tokio::test]
async fn b3_debug_forces_sampling() {
    let (mut upstream, mut proxy) = start_mesh(args(0.0)).await;
    let (_, seen) = get(
        &proxy,
        &mut upstream,
        "/",
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-flags", "1"),
        ],
    )
    .await;
    spans(&mut proxy.queue, 2).await;
    assert_eq!(header(&seen.headers, "x-b3-flags"), Some("1"));
    assert!(seen.headers.get("x-b3-sampled").is_none());
}

#[tokio::test]
async fn invalid_traceparent_restarts_the_trace_and_drops_tracestate() {
    let (mut upstream, mut proxy) = start_mesh(args(1.0)).await;
    let (rsp, seen) = get(
        &proxy,
        &mut upstream,
        "/",
        &[
            (
                "traceparent",
                &format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    let spans = spans(&mut proxy.queue, 2).await;
    assert_eq!(spans[0].parent_span_id, None);
    assert_ne!(to_hex(&spans[0].trace_id), TRACE);
    let (trace, _, _) = traceparent(&seen.headers, "traceparent");
    assert_eq!(trace, to_hex(&spans[0].trace_id));
    assert!(seen.headers.get("tracestate").is_none());
    assert!(rsp.headers.get("traceresponse").is_none());
}

#[tokio::test]
async fn configured_b3_single_when_no_b3_arrived() {
    let mut upstream = start_upstream().await;
    let mut args = args(0.0);
    args.propagation = vec![PropagationFormat::TraceContext, PropagationFormat::B3];
    let proxy = start_proxy(args, upstream.addr).await;
    let (_, seen) = get(&proxy, &mut upstream, "/", &[]).await;
    let (trace, span, _) = traceparent(&seen.headers, "traceparent");
    let b3 = header(&seen.headers, "b3").unwrap();
    assert!(b3.starts_with(&format!("{trace}-{span}-0-")), "{b3}");
    assert!(seen.headers.get("x-b3-traceid").is_none());
}
