//! The exporter against real OTLP receivers (gRPC and HTTP), fed through a real `SpanSink`.

use std::collections::HashMap;
use std::time::Duration;

use meshtrace_proxy::config::ExportArgs;
use meshtrace_proxy::export::{
    DropReason, ExportConfig, ExportMetrics, Exporter, ExporterHandle, ProxyResource,
    RequestResult, RetryPolicy,
};
use meshtrace_proxy::span::{AttrValue, SendError, SpanKind, SpanRecord, SpanSink, SpanStatus};
use meshtrace_tests::otlp::{OtlpReceiver, ReceiverProtocol, Reply, TestPki};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span, status};

const PROTOCOLS: [ReceiverProtocol; 2] = [ReceiverProtocol::Grpc, ReceiverProtocol::Http];
/// Generous: the machine is small and shared.
const WAIT: Duration = Duration::from_secs(30);

fn protocol_name(protocol: ReceiverProtocol) -> &'static str {
    match protocol {
        ReceiverProtocol::Grpc => "grpc",
        ReceiverProtocol::Http => "http/protobuf",
    }
}

/// The configuration the proxy would read from these variables, pointed at `receiver`, with a
/// short schedule delay and fast retries so tests do not wait on production defaults.
fn config_for(receiver: &OtlpReceiver, vars: &[(&str, &str)]) -> ExportConfig {
    let endpoint = receiver.endpoint();
    let protocol = protocol_name(receiver.protocol());
    let mut env: HashMap<String, String> = HashMap::from([
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), protocol.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "20".into()),
    ]);
    for (k, v) in vars {
        env.insert(k.to_string(), v.to_string());
    }
    let mut config = ExportArgs::from_lookup(|name| env.get(name).cloned())
        .config()
        .expect("valid configuration")
        .on()
        .expect("export enabled");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    config.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        multiplier: 2.0,
    };
    config
}

struct Running {
    sink: SpanSink,
    handle: ExporterHandle,
    metrics: ExportMetrics,
}

fn start_exporter(config: ExportConfig, resource: &ProxyResource) -> Running {
    let metrics = ExportMetrics::default();
    let (sink, queue) = SpanSink::bounded(config.batch.max_queue_size);
    let handle = Exporter::spawn(config, resource, queue, metrics.clone()).expect("exporter");
    Running {
        sink,
        handle,
        metrics,
    }
}

fn test_resource() -> ProxyResource {
    let env: HashMap<&str, &str> = HashMap::from([
        ("MESHTRACE_WORKLOAD", "checkout"),
        ("MESHTRACE_POD_NAME", "checkout-7d9f-abcde"),
        ("MESHTRACE_POD_NAMESPACE", "shop"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test",
        ),
    ]);
    ExportArgs::from_lookup(|name| env.get(name).map(|v| v.to_string())).resource()
}

/// The two spans one proxy records for request `n`: SERVER (child of a remote caller) and
/// CLIENT (child of the SERVER span).
fn hop(n: u32) -> [SpanRecord; 2] {
    let mut trace_id = [0u8; 16];
    trace_id[..4].copy_from_slice(&n.to_be_bytes());
    trace_id[15] = 0x7f;
    let [a, b, c, d] = n.to_be_bytes();
    let server_id = [0x51, a, b, c, d, 1, 2, 3];
    let client_id = [0xc1, a, b, c, d, 4, 5, 6];
    let start = 1_700_000_000_000_000_000 + u64::from(n) * 1_000;
    let server = SpanRecord {
        trace_id,
        span_id: server_id,
        parent_span_id: Some([0xaa; 8]),
        trace_state: Some("vendor=opaque".into()),
        flags: 0x01,
        kind: SpanKind::Server,
        name: "GET /users/{id}".into(),
        start_unix_nanos: start,
        end_unix_nanos: start + 900,
        status: SpanStatus::Unset,
        attributes: vec![
            ("http.request.method", AttrValue::Static("GET")),
            ("url.path", AttrValue::String(format!("/users/{n}"))),
            ("http.response.status_code", AttrValue::Int(200)),
            ("meshtrace.direction", AttrValue::Static("inbound")),
        ],
        links: Vec::new(),
    };
    let client = SpanRecord {
        span_id: client_id,
        parent_span_id: Some(server_id),
        kind: SpanKind::Client,
        start_unix_nanos: start + 100,
        end_unix_nanos: start + 800,
        status: SpanStatus::Error(Some("upstream reset".into())),
        attributes: vec![
            ("http.request.method", AttrValue::Static("GET")),
            (
                "url.full",
                AttrValue::String(format!("http://users:8080/users/{n}")),
            ),
            ("error.type", AttrValue::Static("connection_reset")),
        ],
        links: Vec::new(),
        ..server.clone()
    };
    [server, client]
}

/// Sends `hops` hops (2 spans each), asserting the queue takes them all.
fn send_hops(sink: &SpanSink, range: std::ops::Range<u32>) -> usize {
    let mut sent = 0;
    for n in range {
        for span in hop(n) {
            sink.try_send(span).expect("queue has room");
            sent += 1;
        }
    }
    sent
}

/// Polls a metric (metrics have no change signal) until `done`, with a generous deadline.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn receiver(protocol: ReceiverProtocol) -> OtlpReceiver {
    OtlpReceiver::start(protocol).await
}

fn reserved_receiver(protocol: ReceiverProtocol) -> OtlpReceiver {
    OtlpReceiver::reserve(protocol)
}

#[tokio::test]
async fn spans_arrive_with_resource_kinds_ids_parentage_attributes_and_timestamps() {
    for protocol in PROTOCOLS {
        let receiver = receiver(protocol).await;
        let exporter = start_exporter(config_for(&receiver, &[]), &test_resource());
        let sent = send_hops(&exporter.sink, 0..3);
        let spans = receiver.wait_for_spans(sent, WAIT).await.expect("spans");
        assert_eq!(spans.len(), sent, "{protocol:?}");

        let [want_server, want_client] = hop(1);
        let find = |id: [u8; 8]| {
            spans
                .iter()
                .find(|s| s.span.span_id == id)
                .unwrap_or_else(|| panic!("{protocol:?}: span {id:?} missing"))
        };
        let server = find(want_server.span_id);
        let client = find(want_client.span_id);

        for s in [server, client] {
            assert_eq!(s.resource_attr("service.name").as_deref(), Some("checkout"));
            assert_eq!(
                s.resource_attr("k8s.pod.name").as_deref(),
                Some("checkout-7d9f-abcde")
            );
            assert_eq!(
                s.resource_attr("k8s.namespace.name").as_deref(),
                Some("shop")
            );
            assert_eq!(
                s.resource_attr("deployment.environment.name").as_deref(),
                Some("test")
            );
            assert_eq!(
                s.scope.as_ref().map(|sc| sc.name.as_str()),
                Some("meshtrace-proxy")
            );
            assert_eq!(s.span.trace_id, want_server.trace_id.to_vec());
            assert_eq!(s.span.trace_state, "vendor=opaque");
            assert_eq!(s.span.name, "GET /users/{id}");
        }
        assert_eq!(server.span.kind, span::SpanKind::Server as i32);
        assert_eq!(client.span.kind, span::SpanKind::Client as i32);
        assert_eq!(server.span.parent_span_id, vec![0xaa; 8]);
        assert_eq!(client.span.parent_span_id, want_server.span_id.to_vec());
        // Sampled flag, plus "parent is remote" known for both and set for the SERVER span.
        assert_eq!(server.span.flags, 0x01 | 0x100 | 0x200);
        assert_eq!(client.span.flags, 0x01 | 0x100);
        assert_eq!(
            (
                server.span.start_time_unix_nano,
                server.span.end_time_unix_nano
            ),
            (want_server.start_unix_nanos, want_server.end_unix_nanos)
        );
        assert_eq!(
            (
                client.span.start_time_unix_nano,
                client.span.end_time_unix_nano
            ),
            (want_client.start_unix_nanos, want_client.end_unix_nanos)
        );
        assert_eq!(
            server.attr("url.path"),
            Some(Value::StringValue("/users/1".into()))
        );
        assert_eq!(
            server.attr("http.response.status_code"),
            Some(Value::IntValue(200))
        );
        assert_eq!(
            client.attr("url.full"),
            Some(Value::StringValue("http://users:8080/users/1".into()))
        );
        assert_eq!(server.span.status, None);
        let client_status = client.span.status.clone().expect("client status");
        assert_eq!(client_status.code, status::StatusCode::Error as i32);
        assert_eq!(client_status.message, "upstream reset");

        // The receiver records a request before answering it: wait for the answer to count.
        eventually("the export to be counted", || {
            exporter.metrics.spans_exported() == sent as u64
        })
        .await;
        assert!(exporter.metrics.requests(RequestResult::Success) >= 1);
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
    }
}

/// Exports `hops` hops with a schedule delay too long to matter: waits until `full` spans
/// (the full batches) have arrived, then shuts down, which flushes the rest. Returns the
/// receiver and the number of spans sent.
async fn export_in_batches(
    protocol: ReceiverProtocol,
    batch_size: &str,
    hops: u32,
    full: usize,
) -> (OtlpReceiver, usize) {
    let receiver = receiver(protocol).await;
    let config = config_for(
        &receiver,
        &[
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", batch_size),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "1000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    );
    let exporter = start_exporter(config, &test_resource());
    let sent = send_hops(&exporter.sink, 0..hops);
    // Full batches go out without waiting for the (long) delay...
    receiver
        .wait_for_spans(full, WAIT)
        .await
        .expect("the full batches");
    // ...and the rest is flushed at shutdown.
    exporter
        .handle
        .shutdown(WAIT)
        .await
        .expect("clean shutdown");
    (receiver, sent)
}

fn batch_sizes(receiver: &OtlpReceiver) -> Vec<usize> {
    receiver.requests().iter().map(|r| r.span_count()).collect()
}

#[tokio::test]
async fn batches_respect_the_batch_size() {
    for protocol in PROTOCOLS {
        let (receiver, sent) = export_in_batches(protocol, "4", 5, 8).await;
        assert_eq!(batch_sizes(&receiver), vec![4, 4, 2], "{protocol:?}");
        assert_eq!(receiver.spans().len(), sent);
    }
}

/// The exporter encodes spans a few dozen at a time as they arrive; the requests it sends
/// still hold whole batches, each span exactly once, in the order queued.
#[tokio::test]
async fn spans_encoded_in_chunks_leave_in_whole_batches() {
    for protocol in PROTOCOLS {
        let (receiver, sent) = export_in_batches(protocol, "100", 125, 200).await;
        assert_eq!(batch_sizes(&receiver), vec![100, 100, 50], "{protocol:?}");
        let expected: Vec<Vec<u8>> = (0..125)
            .flat_map(|n| hop(n).map(|span| span.span_id.to_vec()))
            .collect();
        let received: Vec<Vec<u8>> = receiver
            .spans()
            .into_iter()
            .map(|s| s.span.span_id)
            .collect();
        assert_eq!(received.len(), sent);
        assert_eq!(received, expected, "{protocol:?}");
    }
}

#[tokio::test]
async fn gzip_is_really_used_when_configured() {
    for protocol in PROTOCOLS {
        for (compression, want_gzip) in [("gzip", true), ("none", false)] {
            let receiver = receiver(protocol).await;
            let config = config_for(
                &receiver,
                &[("OTEL_EXPORTER_OTLP_COMPRESSION", compression)],
            );
            let exporter = start_exporter(config, &test_resource());
            let sent = send_hops(&exporter.sink, 0..20);
            receiver.wait_for_spans(sent, WAIT).await.expect("spans");
            let requests = receiver.requests();
            assert!(
                requests.iter().all(|r| r.gzip == want_gzip),
                "{protocol:?} {compression}: {:?}",
                requests.iter().map(|r| r.gzip).collect::<Vec<_>>()
            );
            exporter
                .handle
                .shutdown(WAIT)
                .await
                .expect("clean shutdown");
        }
    }
}

#[tokio::test]
async fn configured_headers_reach_the_receiver_and_exports_are_not_traced() {
    for protocol in PROTOCOLS {
        let receiver = receiver(protocol).await;
        let config = config_for(
            &receiver,
            &[(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=s3cr%3Dt,x-tenant = team%20a",
            )],
        );
        let exporter = start_exporter(config, &test_resource());
        send_hops(&exporter.sink, 0..1);
        let requests = receiver.wait_for_requests(1, WAIT).await.expect("request");
        let headers = &requests[0].headers;
        assert_eq!(
            headers.get("api-key").map(|v| v.as_bytes()),
            Some(&b"s3cr=t"[..])
        );
        assert_eq!(
            headers.get("x-tenant").map(|v| v.as_bytes()),
            Some(&b"team a"[..])
        );
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .expect("traceparent");
        let fields: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(fields.len(), 4, "{traceparent}");
        assert_eq!(
            (fields[0], fields[3]),
            ("00", "00"),
            "unsampled: {traceparent}"
        );
        assert_eq!(headers.get("b3").map(|v| v.as_bytes()), Some(&b"0"[..]));
        let user_agent = headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(user_agent.contains("meshtrace-proxy/"), "{user_agent}");
        if protocol == ReceiverProtocol::Http {
            assert_eq!(requests[0].path, "/v1/traces");
            assert_eq!(
                headers.get("content-type").map(|v| v.as_bytes()),
                Some(&b"application/x-protobuf"[..])
            );
        }
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
    }
}

#[tokio::test]
async fn receiver_down_at_start_then_up_gets_the_spans() {
    for protocol in PROTOCOLS {
        let receiver = reserved_receiver(protocol);
        let exporter = start_exporter(config_for(&receiver, &[]), &test_resource());
        let sent = send_hops(&exporter.sink, 0..4);
        // Connection refused at least once (nothing is listening yet)...
        eventually("a failed attempt", || {
            exporter.metrics.requests(RequestResult::RetryableError) >= 1
        })
        .await;
        assert!(receiver.requests().is_empty());
        // ...then the collector comes up and the same spans arrive.
        receiver.resume().await;
        let spans = receiver.wait_for_spans(sent, WAIT).await.expect("spans");
        assert_eq!(spans.len(), sent, "{protocol:?}");
        assert_eq!(exporter.metrics.spans_dropped(DropReason::ExportFailed), 0);
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
    }
}

#[tokio::test]
async fn restarted_receiver_is_found_again() {
    for protocol in PROTOCOLS {
        let receiver = receiver(protocol).await;
        // By name, so every new connection goes through name resolution.
        let by_name = format!("http://localhost:{}", receiver.addr().port());
        let config = config_for(&receiver, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &by_name)]);
        let exporter = start_exporter(config, &test_resource());
        let first = send_hops(&exporter.sink, 0..2);
        receiver
            .wait_for_spans(first, WAIT)
            .await
            .expect("before restart");
        receiver.stop().await;
        let failures = exporter.metrics.requests(RequestResult::RetryableError);
        let second = send_hops(&exporter.sink, 2..4);
        eventually("a failed attempt while down", || {
            exporter.metrics.requests(RequestResult::RetryableError) > failures
        })
        .await;
        receiver.resume().await;
        let spans = receiver
            .wait_for_spans(first + second, WAIT)
            .await
            .expect("after restart");
        assert_eq!(spans.len(), first + second, "{protocol:?}");
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
    }
}

#[tokio::test]
async fn unavailable_n_times_is_retried_then_delivered() {
    for protocol in PROTOCOLS {
        let receiver = receiver(protocol).await;
        receiver.script(Reply::Unavailable { retry_after: None }, 3);
        let exporter = start_exporter(config_for(&receiver, &[]), &test_resource());
        let sent = send_hops(&exporter.sink, 0..5);
        let spans = receiver.wait_for_spans(sent, WAIT).await.expect("spans");
        assert_eq!(spans.len(), sent);
        let replies: Vec<Option<Reply>> =
            receiver.requests().into_iter().map(|r| r.reply).collect();
        let unavailable = Some(Reply::Unavailable { retry_after: None });
        assert_eq!(
            replies,
            vec![unavailable.clone(), unavailable.clone(), unavailable, None],
            "{protocol:?}"
        );
        // The same batch each time.
        let counts: Vec<usize> = receiver.requests().iter().map(|r| r.span_count()).collect();
        assert_eq!(counts, vec![sent; 4]);
        eventually("the export to be counted", || {
            exporter.metrics.spans_exported() == sent as u64
        })
        .await;
        assert_eq!(exporter.metrics.requests(RequestResult::RetryableError), 3);
        assert_eq!(exporter.metrics.requests(RequestResult::Success), 1);
        assert_eq!(exporter.metrics.spans_exported(), sent as u64);
        assert_eq!(exporter.metrics.spans_dropped(DropReason::ExportFailed), 0);
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
    }
}

/// With a backoff far beyond the export timeout, only the server's own short hint can lead to
/// a retry; a hint beyond the export timeout means giving up at once.
#[tokio::test]
async fn server_retry_hints_are_honored() {
    for protocol in PROTOCOLS {
        for (hint, delivered) in [(Duration::ZERO, true), (Duration::from_secs(3600), false)] {
            for reply in [
                Reply::Unavailable {
                    retry_after: Some(hint),
                },
                Reply::Throttled {
                    retry_after: Some(hint),
                },
            ] {
                let receiver = receiver(protocol).await;
                receiver.script(reply.clone(), 1);
                let mut config = config_for(&receiver, &[("OTEL_BSP_EXPORT_TIMEOUT", "20000")]);
                config.retry.initial_backoff = Duration::from_secs(3600);
                config.retry.max_backoff = Duration::from_secs(3600);
                let exporter = start_exporter(config, &test_resource());
                let sent = send_hops(&exporter.sink, 0..2);
                let case = format!("{protocol:?} {reply:?}");
                if delivered {
                    receiver.wait_for_spans(sent, WAIT).await.expect(&case);
                    assert_eq!(receiver.requests().len(), 2, "{case}");
                } else {
                    eventually("the batch to be dropped", || {
                        exporter.metrics.spans_dropped(DropReason::ExportFailed) == sent as u64
                    })
                    .await;
                    assert_eq!(receiver.requests().len(), 1, "{case}");
                    assert!(receiver.spans().is_empty(), "{case}");
                }
                exporter
                    .handle
                    .shutdown(WAIT)
                    .await
                    .expect("clean shutdown");
            }
        }
    }
}

#[tokio::test]
async fn throttling_without_a_hint_is_retried_only_over_http() {
    // OTLP/gRPC: RESOURCE_EXHAUSTED is retryable only with RetryInfo. OTLP/HTTP: 429 always is.
    for (protocol, retried) in [
        (ReceiverProtocol::Grpc, false),
        (ReceiverProtocol::Http, true),
    ] {
        let receiver = receiver(protocol).await;
        receiver.script(Reply::Throttled { retry_after: None }, 1);
        let exporter = start_exporter(config_for(&receiver, &[]), &test_resource());
        let first = send_hops(&exporter.sink, 0..1);
        if retried {
            receiver.wait_for_spans(first, WAIT).await.expect("retried");
        } else {
            eventually("the batch to be dropped", || {
                exporter.metrics.spans_dropped(DropReason::ExportFailed) == first as u64
            })
            .await;
        }
        // A later batch is sent after whatever happened to the first one.
        let marker = send_hops(&exporter.sink, 100..101);
        receiver
            .wait_for_spans(if retried { first + marker } else { marker }, WAIT)
            .await
            .expect("marker batch");
        let requests = receiver.requests().len();
        assert_eq!(requests, if retried { 3 } else { 2 }, "{protocol:?}");
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
    }
}

#[tokio::test]
async fn bad_request_is_dropped_and_counted_not_retried() {
    for protocol in PROTOCOLS {
        let receiver = receiver(protocol).await;
        receiver.script(Reply::BadRequest, 1);
        let exporter = start_exporter(config_for(&receiver, &[]), &test_resource());
        let rejected = send_hops(&exporter.sink, 0..3);
        eventually("the batch to be dropped", || {
            exporter.metrics.spans_dropped(DropReason::ExportFailed) == rejected as u64
        })
        .await;
        // The task handles one batch at a time: a retry of the first would arrive before this.
        let marker = send_hops(&exporter.sink, 100..101);
        let spans = receiver.wait_for_spans(marker, WAIT).await.expect("marker");
        let replies: Vec<Option<Reply>> =
            receiver.requests().into_iter().map(|r| r.reply).collect();
        assert_eq!(replies, vec![Some(Reply::BadRequest), None], "{protocol:?}");
        assert_eq!(spans.len(), marker);
        eventually("the export to be counted", || {
            exporter.metrics.spans_exported() == marker as u64
        })
        .await;
        assert_eq!(exporter.metrics.requests(RequestResult::Error), 1);
        assert_eq!(exporter.metrics.requests(RequestResult::RetryableError), 0);
        assert_eq!(exporter.metrics.spans_exported(), marker as u64);
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
    }
}

#[tokio::test]
async fn partial_success_rejections_are_counted() {
    for protocol in PROTOCOLS {
        let receiver = receiver(protocol).await;
        receiver.script(
            Reply::PartialSuccess {
                rejected: 3,
                message: "3 spans too old".into(),
            },
            1,
        );
        let exporter = start_exporter(config_for(&receiver, &[]), &test_resource());
        let sent = send_hops(&exporter.sink, 0..4);
        receiver.wait_for_requests(1, WAIT).await.expect("request");
        eventually("the partial success to be counted", || {
            exporter.metrics.spans_dropped(DropReason::Rejected) == 3
                && exporter.metrics.spans_exported() == sent as u64 - 3
        })
        .await;
        assert_eq!(exporter.metrics.requests(RequestResult::PartialSuccess), 1);
        assert_eq!(
            receiver.requests().len(),
            1,
            "a partial success is not retried"
        );
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
    }
}

#[tokio::test]
async fn queue_overflow_never_blocks_and_drops_are_counted_exactly() {
    for protocol in PROTOCOLS {
        // The collector is down, so the exporter holds at most one batch and the queue fills.
        let receiver = reserved_receiver(protocol);
        let config = config_for(
            &receiver,
            &[
                ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16"),
            ],
        );
        let exporter = start_exporter(config, &test_resource());
        let (mut accepted, mut refused) = (0u64, 0u64);
        for n in 0..1000 {
            for span in hop(n) {
                match exporter.sink.try_send(span) {
                    Ok(()) => accepted += 1,
                    Err(SendError::QueueFull) => refused += 1,
                    Err(SendError::Closed) => panic!("exporter stopped"),
                }
            }
        }
        assert_eq!(accepted + refused, 2000);
        // Memory stays bounded: at most the queue plus one batch in the exporter.
        assert!(accepted <= 64 + 16, "{protocol:?}: accepted {accepted}");
        assert_eq!(
            exporter.metrics.spans_dropped(DropReason::QueueFull),
            refused
        );

        receiver.resume().await;
        receiver
            .wait_for_spans(accepted as usize, WAIT)
            .await
            .expect("accepted spans");
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
        assert_eq!(receiver.spans().len() as u64, accepted, "{protocol:?}");
        assert_eq!(exporter.metrics.spans_exported(), accepted);
        assert_eq!(
            exporter.metrics.spans_dropped(DropReason::QueueFull),
            refused
        );
        assert_eq!(exporter.metrics.spans_dropped(DropReason::ExportFailed), 0);
    }
}

#[tokio::test]
async fn shutdown_flushes_queued_spans() {
    for protocol in PROTOCOLS {
        let receiver = receiver(protocol).await;
        // Nothing would be sent for a minute on its own.
        let config = config_for(
            &receiver,
            &[
                ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "1000"),
            ],
        );
        let exporter = start_exporter(config, &test_resource());
        let sent = send_hops(&exporter.sink, 0..150);
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
        assert_eq!(receiver.spans().len(), sent, "{protocol:?}");
        assert_eq!(exporter.metrics.spans_exported(), sent as u64);
        // The queue is closed: late spans are refused, not lost silently.
        assert_eq!(
            exporter.sink.try_send(hop(999)[0].clone()),
            Err(SendError::Closed)
        );
        assert!(!exporter.sink.is_enabled());
    }
}

#[tokio::test]
async fn dropping_every_sink_sends_the_partial_batch_without_waiting_for_the_delay() {
    for protocol in PROTOCOLS {
        let receiver = receiver(protocol).await;
        let config = config_for(
            &receiver,
            &[
                ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100"),
            ],
        );
        let Running {
            sink,
            handle,
            metrics,
        } = start_exporter(config, &test_resource());
        let second = sink.clone();
        let sent = send_hops(&sink, 0..3);
        drop(sink);
        // One sink left: the batch waits for its (ten-minute) delay.
        assert_eq!(metrics.spans_exported(), 0);
        drop(second);
        receiver
            .wait_for_spans(sent, WAIT)
            .await
            .expect("partial batch sent once the last sink is gone");
        handle.shutdown(WAIT).await.expect("clean shutdown");
        assert_eq!(receiver.spans().len(), sent, "{protocol:?}");
        assert_eq!(metrics.spans_exported(), sent as u64);
    }
}

#[tokio::test]
async fn shutdown_with_the_collector_down_ends_and_counts_the_loss() {
    for protocol in PROTOCOLS {
        let receiver = reserved_receiver(protocol);
        let exporter = start_exporter(config_for(&receiver, &[]), &test_resource());
        let sent = send_hops(&exporter.sink, 0..10);
        eventually("a failed attempt", || {
            exporter.metrics.requests(RequestResult::RetryableError) >= 1
        })
        .await;
        let metrics = exporter.metrics.clone();
        let result = exporter.handle.shutdown(Duration::from_millis(300)).await;
        assert!(result.is_ok(), "{protocol:?}: {result:?}");
        assert_eq!(metrics.spans_dropped(DropReason::ExportFailed), sent as u64);
        assert_eq!(metrics.spans_exported(), 0);
    }
}

#[tokio::test]
async fn https_with_a_custom_ca() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).expect("write CA");
    let ca_path = ca_path.to_string_lossy().into_owned();
    for protocol in PROTOCOLS {
        let receiver = OtlpReceiver::start_tls(protocol, &pki).await;
        assert!(receiver.endpoint().starts_with("https://"));

        let config = config_for(&receiver, &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_path)]);
        let exporter = start_exporter(config, &test_resource());
        let sent = send_hops(&exporter.sink, 0..3);
        let spans = receiver
            .wait_for_spans(sent, WAIT)
            .await
            .expect("spans over TLS");
        assert_eq!(spans.len(), sent, "{protocol:?}");
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");

        // Without the CA (webpki roots only) the collector is not trusted: nothing is sent.
        let config = config_for(&receiver, &[("OTEL_BSP_EXPORT_TIMEOUT", "1000")]);
        let exporter = start_exporter(config, &test_resource());
        let sent = send_hops(&exporter.sink, 10..11);
        eventually("the untrusted export to be dropped", || {
            exporter.metrics.spans_dropped(DropReason::ExportFailed) == sent as u64
        })
        .await;
        assert_eq!(
            receiver.requests().len(),
            1,
            "{protocol:?}: only the trusted request"
        );
        exporter
            .handle
            .shutdown(WAIT)
            .await
            .expect("clean shutdown");
    }
}

#[tokio::test]
async fn an_unreadable_ca_file_fails_at_startup() {
    for protocol in PROTOCOLS {
        let pki = TestPki::new();
        let receiver = OtlpReceiver::start_tls(protocol, &pki).await;
        let config = config_for(
            &receiver,
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")],
        );
        let (_sink, queue) = SpanSink::bounded(8);
        let err = Exporter::spawn(config, &test_resource(), queue, ExportMetrics::default())
            .expect_err("missing CA file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}

fn start_export(
    args: &ExportArgs,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<(SpanSink, Option<ExporterHandle>), Box<dyn std::error::Error>> {
    let export = args.config()?;
    Ok(meshtrace_proxy::export::start(
        export,
        &args.resource(),
        registry,
    )?)
}

#[tokio::test]
async fn export_off_gives_a_disabled_sink() {
    let mut registry = prometheus_client::registry::Registry::default();
    for args in [
        ExportArgs {
            tracing: Some("off".into()),
            ..Default::default()
        },
        ExportArgs {
            traces_exporter: Some("none".into()),
            ..Default::default()
        },
    ] {
        let (sink, handle) = start_export(&args, &mut registry).expect("start");
        assert!(!sink.is_enabled());
        assert!(handle.is_none());
    }
}

#[tokio::test]
async fn start_registers_metrics_and_exports() {
    let receiver = OtlpReceiver::start(ReceiverProtocol::Http).await;
    let args = ExportArgs {
        otlp_endpoint: Some(receiver.endpoint()),
        otlp_protocol: Some(protocol_name(ReceiverProtocol::Http).into()),
        bsp_schedule_delay: Some("20".into()),
        workload: Some("web".into()),
        ..Default::default()
    };
    let mut registry = prometheus_client::registry::Registry::with_prefix("meshtrace");
    let (sink, handle) = start_export(&args, &mut registry).expect("start");
    assert!(sink.is_enabled());
    let sent = send_hops(&sink, 0..2);
    let spans = receiver.wait_for_spans(sent, WAIT).await.expect("spans");
    assert_eq!(
        spans[0].resource_attr("service.name").as_deref(),
        Some("web")
    );
    handle
        .expect("handle")
        .shutdown(WAIT)
        .await
        .expect("clean shutdown");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(&format!("meshtrace_export_spans_exported_total {sent}")),
        "{text}"
    );
}
