//! Span export through the real `meshtrace-proxy` binary, configured only by environment
//! variables as the injector configures it: resource, collector headers, metrics, the flush on
//! SIGTERM, queue overflow, and export turned off.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::metric_value;
use meshtrace_tests::client::exchange;
use meshtrace_tests::otlp::{OtlpReceiver, ReceiverProtocol};
use meshtrace_tests::upstream::HttpUpstream;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// Generous: the machine is small and shared.
const WAIT: Duration = Duration::from_secs(60);

const EXPORTED: &str = "meshtrace_export_spans_exported_total";
const QUEUE_FULL: &str = "meshtrace_export_spans_dropped_total{reason=\"queue_full\"}";
const EXPORT_FAILED: &str = "meshtrace_export_spans_dropped_total{reason=\"export_failed\"}";
const RECORDED: &str = "meshtrace_trace_spans_recorded_total";

/// The binary as a child process, inbound listener forwarding to a fixed target.
struct ChildProxy {
    child: Child,
    inbound: SocketAddr,
    admin: SocketAddr,
}

fn protocol_name(protocol: ReceiverProtocol) -> &'static str {
    match protocol {
        ReceiverProtocol::Grpc => "grpc",
        ReceiverProtocol::Http => "http/protobuf",
    }
}

impl ChildProxy {
    /// Starts the binary with `vars` on top of loopback listeners, a short drain and every
    /// request sampled.
    fn start(target: SocketAddr, vars: &[(&str, String)]) -> ChildProxy {
        let mut command = Command::new(env!("CARGO_BIN_EXE_meshtrace-proxy"));
        command
            .env_clear()
            .env("MESHTRACE_INBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_INBOUND_TARGET", target.to_string())
            .env("MESHTRACE_SHUTDOWN_GRACE", "5s")
            .env("MESHTRACE_SAMPLE_RATE", "1")
            .env("MESHTRACE_LOG", "info")
            .env("MESHTRACE_LOG_FORMAT", "json");
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn meshtrace-proxy");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let field = |log: &serde_json::Value, name: &str| -> SocketAddr {
            log["fields"][name]
                .as_str()
                .unwrap_or_else(|| panic!("{name} field"))
                .parse()
                .expect("address")
        };
        let (inbound, admin) = loop {
            let line = lines
                .next()
                .expect("proxy exited before binding")
                .expect("read stderr");
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if log["fields"]["message"] == "listeners bound" {
                break (field(&log, "inbound_addr"), field(&log, "admin_addr"));
            }
        };
        // Keep draining the pipe so the child never blocks on logging.
        std::thread::spawn(move || for _ in lines {});
        ChildProxy {
            child,
            inbound,
            admin,
        }
    }

    /// The collector settings for `receiver`.
    fn export_to(receiver: &OtlpReceiver) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                protocol_name(receiver.protocol()).to_string(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "20".to_string()),
        ]
    }

    async fn get(&self, path: &str) -> meshtrace_tests::client::RawResponse {
        let request = format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        exchange(self.inbound, request.as_bytes()).await
    }

    async fn metrics(&self) -> String {
        common::metrics_text(self.admin).await
    }

    /// Polls `/metrics` (metrics have no change signal) until `done` holds for the text.
    async fn metrics_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.metrics().await;
            if done(&text) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the exit.
    async fn terminate(mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let wait = tokio::task::spawn_blocking(move || self.child.wait().expect("wait"));
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("proxy exited in time")
            .expect("wait task")
    }
}

fn value(text: &str, series: &str) -> u64 {
    metric_value(text, series).unwrap_or_else(|| panic!("{series} missing in\n{text}")) as u64
}

#[tokio::test]
async fn env_configured_binary_exports_resource_headers_and_metrics() {
    for protocol in [ReceiverProtocol::Grpc, ReceiverProtocol::Http] {
        let server = HttpUpstream::start().await;
        let receiver = OtlpReceiver::start(protocol).await;
        let mut vars = ChildProxy::export_to(&receiver);
        vars.extend([
            ("OTEL_SERVICE_NAME", "checkout".to_string()),
            ("MESHTRACE_WORKLOAD", "ignored-workload".to_string()),
            ("MESHTRACE_POD_NAME", "checkout-7d9f-abcde".to_string()),
            ("MESHTRACE_POD_NAMESPACE", "shop".to_string()),
            ("MESHTRACE_NODE_NAME", "node-1".to_string()),
            ("MESHTRACE_POD_UID", "0b5e-uid".to_string()),
            ("MESHTRACE_POD_IP", "10.0.0.7".to_string()),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test,k8s.node.name=node-override".to_string(),
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=s3cr%3Dt,x-tenant=team-a".to_string(),
            ),
        ]);
        let proxy = ChildProxy::start(server.addr(), &vars);
        let response = proxy.get("/carts/991").await;
        assert_eq!(response.status(), 200, "{protocol:?}");

        let spans = receiver.wait_for_spans(2, WAIT).await.expect("spans");
        assert_eq!(spans.len(), 2, "{protocol:?}");
        let kinds: Vec<i32> = spans.iter().map(|s| s.span.kind).collect();
        assert!(kinds.contains(&(SpanKind::Server as i32)), "{kinds:?}");
        assert!(kinds.contains(&(SpanKind::Client as i32)), "{kinds:?}");
        for s in &spans {
            let want = HashMap::from([
                ("service.name", "checkout"),
                ("k8s.pod.name", "checkout-7d9f-abcde"),
                ("k8s.namespace.name", "shop"),
                ("k8s.node.name", "node-override"),
                ("k8s.pod.uid", "0b5e-uid"),
                ("k8s.pod.ip", "10.0.0.7"),
                ("deployment.environment.name", "test"),
            ]);
            for (key, value) in want {
                assert_eq!(
                    s.resource_attr(key).as_deref(),
                    Some(value),
                    "{protocol:?} {key}"
                );
            }
            assert_eq!(s.span.name, "GET /carts/{id}");
        }
        let requests = receiver.requests();
        for request in &requests {
            let header = |name: &str| request.headers.get(name).map(|v| v.as_bytes().to_vec());
            assert_eq!(
                header("x-api-key"),
                Some(b"s3cr=t".to_vec()),
                "{protocol:?}"
            );
            assert_eq!(header("x-tenant"), Some(b"team-a".to_vec()), "{protocol:?}");
        }

        // The receiver records a request before answering: wait for the answer to count.
        let text = proxy
            .metrics_until("2 spans exported", |text| {
                metric_value(text, EXPORTED) == Some(2.0)
            })
            .await;
        assert_eq!(value(&text, QUEUE_FULL), 0);
        assert_eq!(value(&text, EXPORT_FAILED), 0);
        assert_eq!(value(&text, RECORDED), 2);
        assert!(
            text.contains("meshtrace_export_queue_depth"),
            "queue depth family missing:\n{text}"
        );
        assert!(
            metric_value(&text, "meshtrace_export_requests_total{result=\"success\"}")
                .is_some_and(|n| n >= 1.0),
            "{text}"
        );
        let status = proxy.terminate().await;
        assert!(status.success(), "{protocol:?}: {status:?}");
    }
}

#[tokio::test]
async fn sigterm_flushes_spans_still_queued() {
    let server = HttpUpstream::start().await;
    let receiver = OtlpReceiver::start(ReceiverProtocol::Http).await;
    let mut vars = ChildProxy::export_to(&receiver);
    // Ten minutes: without the flush nothing would be sent before the test gives up.
    vars.push(("OTEL_BSP_SCHEDULE_DELAY", "600000".to_string()));
    vars.push(("MESHTRACE_EXPORT_FLUSH_TIMEOUT", "30s".to_string()));
    let proxy = ChildProxy::start(server.addr(), &vars);
    for n in 0..3 {
        let response = proxy.get(&format!("/orders/{n}")).await;
        assert_eq!(response.status(), 200);
    }
    proxy
        .metrics_until("6 spans queued", |text| {
            metric_value(text, RECORDED) == Some(6.0)
        })
        .await;
    assert!(receiver.requests().is_empty(), "sent before the delay");
    let status = proxy.terminate().await;
    assert!(status.success(), "{status:?}");
    // The process has exited: whatever it flushed has arrived.
    assert_eq!(receiver.spans().len(), 6);
}

#[tokio::test]
async fn queue_overflow_never_fails_requests_and_counts_every_lost_span() {
    const REQUESTS: u64 = 40;
    let server = HttpUpstream::start().await;
    // The collector is down while the traffic runs.
    let receiver = OtlpReceiver::reserve(ReceiverProtocol::Grpc);
    let mut vars = ChildProxy::export_to(&receiver);
    vars.extend([
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4".to_string()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4".to_string()),
        // Keep retrying the held batch until the collector is back.
        ("OTEL_BSP_EXPORT_TIMEOUT", "120000".to_string()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000".to_string()),
    ]);
    let proxy = ChildProxy::start(server.addr(), &vars);
    for n in 0..REQUESTS {
        let response = proxy.get(&format!("/items/{n}")).await;
        assert_eq!(response.status(), 200, "request {n}");
    }
    let sent = 2 * REQUESTS;
    // Every span either entered the queue or was dropped for a full queue.
    let text = proxy
        .metrics_until("every span accounted for", |text| {
            metric_value(text, RECORDED).unwrap_or(0.0)
                + metric_value(text, QUEUE_FULL).unwrap_or(0.0)
                == sent as f64
        })
        .await;
    let dropped = value(&text, QUEUE_FULL);
    assert!(
        dropped > 0,
        "a 4-span queue cannot hold {sent} spans:\n{text}"
    );

    receiver.resume().await;
    let text = proxy
        .metrics_until("the queued spans exported", |text| {
            metric_value(text, EXPORTED) == metric_value(text, RECORDED)
        })
        .await;
    assert_eq!(value(&text, QUEUE_FULL), dropped);
    assert_eq!(value(&text, EXPORT_FAILED), 0);
    let arrived = receiver.spans().len() as u64;
    assert_eq!(arrived, value(&text, EXPORTED));
    assert_eq!(
        dropped,
        sent - arrived,
        "drops are exactly what did not arrive"
    );
    let status = proxy.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn export_off_still_propagates() {
    for off in [
        ("MESHTRACE_TRACING", "off"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let server = HttpUpstream::start().await;
        let receiver = OtlpReceiver::start(ReceiverProtocol::Http).await;
        let mut vars = ChildProxy::export_to(&receiver);
        vars.push((off.0, off.1.to_string()));
        let proxy = ChildProxy::start(server.addr(), &vars);
        let response = proxy.get("/users/1").await;
        assert_eq!(response.status(), 200, "{off:?}");
        let seen = server.wait_for_requests(1).await;
        let traceparent = seen[0]
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{off:?}: no traceparent"));
        let flags = traceparent.rsplit('-').next().unwrap_or_default();
        let flags = u8::from_str_radix(flags, 16).expect("hex flags");
        assert_eq!(flags & 1, 1, "{off:?}: sampled, {traceparent}");
        assert!(seen[0].headers.get("x-b3-traceid").is_some(), "{off:?}");
        let text = proxy.metrics().await;
        assert_eq!(metric_value(&text, EXPORTED), None, "{off:?}: {text}");
        let status = proxy.terminate().await;
        assert!(status.success(), "{off:?}: {status:?}");
        // The process has exited: nothing can arrive any more.
        assert!(receiver.requests().is_empty(), "{off:?}");
    }
}
