//! End-to-end test of `meshtrace-viewer`: spans go in over real OTLP (gRPC with gzip, HTTP
//! protobuf with gzip, HTTP JSON), come out of the JSON API, and the trace page renders in a real
//! headless Chromium with one waterfall bar per span. A screenshot is kept under
//! `target/test-artifacts/`.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshtrace_examples::viewer::{Viewer, ViewerAddrs, ViewerConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);
const MS: u64 = 1_000_000;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

struct SpanSpec {
    id: u8,
    parent: Option<u8>,
    name: &'static str,
    kind: span::SpanKind,
    start_ms: u64,
    end_ms: u64,
    status_code: u16,
}

fn otlp_span(trace_id: [u8; 16], base_nanos: u64, spec: &SpanSpec) -> Span {
    let failed = spec.status_code >= 500;
    Span {
        trace_id: trace_id.to_vec(),
        span_id: vec![spec.id; 8],
        parent_span_id: spec.parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: spec.name.into(),
        kind: spec.kind as i32,
        start_time_unix_nano: base_nanos + spec.start_ms * MS,
        end_time_unix_nano: base_nanos + spec.end_ms * MS,
        attributes: vec![
            string("http.request.method", "GET"),
            kv(
                "http.response.status_code",
                any_value::Value::IntValue(spec.status_code.into()),
            ),
        ],
        status: failed.then(|| Status {
            message: format!("HTTP {}", spec.status_code),
            code: status::StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn span_id_hex(id: u8) -> String {
    hex::encode([id; 8])
}

/// The shape of one meshed request: frontend → backend-api-1 → backend-api-2 (which fails),
/// plus frontend's second call to backend-api-1.
fn mesh_trace() -> Vec<(&'static str, SpanSpec)> {
    use span::SpanKind::{Client as C, Server as S};
    let spec = |id, parent, name, kind, start_ms, end_ms, status_code| SpanSpec {
        id,
        parent,
        name,
        kind,
        start_ms,
        end_ms,
        status_code,
    };
    vec![
        ("frontend", spec(1, None, "GET /", S, 0, 40, 200)),
        (
            "frontend",
            spec(2, Some(1), "GET /api/items/7", C, 2, 30, 503),
        ),
        (
            "backend-api-1",
            spec(3, Some(2), "GET /api/items/7", S, 3, 29, 503),
        ),
        (
            "backend-api-1",
            spec(4, Some(3), "GET /api/inventory/7", C, 5, 27, 503),
        ),
        (
            "backend-api-2",
            spec(5, Some(4), "GET /api/inventory/7", S, 6, 26, 503),
        ),
        (
            "frontend",
            spec(6, Some(1), "GET /api/recommendations", C, 31, 38, 200),
        ),
        (
            "backend-api-1",
            spec(7, Some(6), "GET /api/recommendations", S, 32, 37, 200),
        ),
    ]
}

fn spans_of(
    service: &str,
    trace: &[(&'static str, SpanSpec)],
    trace_id: [u8; 16],
    base: u64,
) -> Vec<Span> {
    trace
        .iter()
        .filter(|(s, _)| *s == service)
        .map(|(_, spec)| otlp_span(trace_id, base, spec))
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

async fn post(
    client: &HttpClient,
    url: &str,
    content_type: &str,
    gzipped: bool,
    body: Vec<u8>,
) -> (http::StatusCode, Bytes) {
    let mut builder = http::Request::post(url).header(http::header::CONTENT_TYPE, content_type);
    if gzipped {
        builder = builder.header(http::header::CONTENT_ENCODING, "gzip");
    }
    let response = tokio::time::timeout(
        TIMEOUT,
        client.request(builder.body(Full::new(Bytes::from(body))).expect("request")),
    )
    .await
    .expect("POST timed out")
    .expect("POST failed");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    (status, body)
}

async fn get_json(client: &HttpClient, url: &str) -> (http::StatusCode, Value) {
    let response = tokio::time::timeout(TIMEOUT, client.get(url.parse().expect("url")))
        .await
        .expect("GET timed out")
        .expect("GET failed");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{url} did not return JSON ({e}): {body:?}"));
    (status, json)
}

struct RunningViewer {
    addrs: ViewerAddrs,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningViewer {
    async fn start() -> Self {
        let viewer = Viewer::bind(&ViewerConfig::ephemeral())
            .await
            .expect("bind viewer");
        let addrs = viewer.addrs();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            viewer
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("viewer run");
        });
        Self {
            addrs,
            stop: Some(stop),
            task,
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(TIMEOUT, &mut self.task)
            .await
            .expect("viewer shut down in time")
            .expect("viewer task");
    }
}

/// `target/` of this build: from CARGO_TARGET_DIR, else from the test binary's path
/// (`target/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn chromium_binary() -> Option<String> {
    let candidates = std::env::var("MESHTRACE_CHROMIUM")
        .ok()
        .into_iter()
        .chain(["chromium", "chromium-browser", "google-chrome"].map(String::from));
    candidates.into_iter().find(|candidate| {
        std::process::Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// Runs headless Chromium on `url` with the given extra arguments; returns its stdout.
async fn chromium(binary: &str, url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut command = tokio::process::Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("chromium timed out")
        .expect("chromium ran");
    assert!(
        output.status.success(),
        "chromium failed on {url}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_receives_otlp_serves_api_and_renders_waterfall_in_chromium() {
    let viewer = RunningViewer::start().await;
    let ViewerAddrs {
        otlp_grpc,
        otlp_http,
        ui,
    } = viewer.addrs;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    let mesh_id: [u8; 16] = [0x4b; 16];
    let cron_id: [u8; 16] = [0x1c; 16];
    let trace = mesh_trace();

    // frontend over gRPC with gzip, backend-api-1 over HTTP protobuf with gzip, backend-api-2
    // over HTTP JSON.
    let mut grpc = TraceServiceClient::connect(format!("http://{otlp_grpc}"))
        .await
        .expect("gRPC connect")
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let response = grpc
        .export(request(
            "frontend",
            spans_of("frontend", &trace, mesh_id, now),
        ))
        .await
        .expect("gRPC export")
        .into_inner();
    assert_eq!(response.partial_success, None);

    let protobuf = request(
        "backend-api-1",
        spans_of("backend-api-1", &trace, mesh_id, now),
    )
    .encode_to_vec();
    let (status, _) = post(
        &client,
        &format!("http://{otlp_http}/v1/traces"),
        "application/x-protobuf",
        true,
        gzip(&protobuf),
    )
    .await;
    assert_eq!(status, http::StatusCode::OK);

    let json = serde_json::to_vec(&request(
        "backend-api-2",
        spans_of("backend-api-2", &trace, mesh_id, now),
    ))
    .expect("JSON request");
    let (status, body) = post(
        &client,
        &format!("http://{otlp_http}/v1/traces"),
        "application/json",
        false,
        json,
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{body:?}");

    // A second, unrelated trace, older than the mesh trace, and one span with an invalid id
    // that must be reported as rejected.
    let mut cron = otlp_span(
        cron_id,
        now - 1000 * MS,
        &SpanSpec {
            id: 9,
            parent: None,
            name: "nightly-report",
            kind: span::SpanKind::Internal,
            start_ms: 0,
            end_ms: 5,
            status_code: 200,
        },
    );
    cron.attributes.push(string("job", "report"));
    let invalid = Span {
        trace_id: vec![1; 3],
        span_id: vec![1; 8],
        ..Default::default()
    };
    let response = grpc
        .export(request("cron", vec![cron, invalid]))
        .await
        .expect("gRPC export")
        .into_inner();
    assert_eq!(response.partial_success.map(|p| p.rejected_spans), Some(1));

    // Bad requests are refused with the right status.
    let (status, _) = post(
        &client,
        &format!("http://{otlp_http}/v1/traces"),
        "text/plain",
        false,
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(status, http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = post(
        &client,
        &format!("http://{otlp_http}/v1/traces"),
        "application/x-protobuf",
        false,
        b"\xff\xff\xff".to_vec(),
    )
    .await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);

    // ---- JSON API ----
    let mesh_hex = hex::encode(mesh_id);
    let cron_hex = hex::encode(cron_id);
    let (status, services) = get_json(&client, &format!("http://{ui}/api/services")).await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(
        services["services"],
        serde_json::json!(["backend-api-1", "backend-api-2", "cron", "frontend"])
    );

    let (_, list) = get_json(&client, &format!("http://{ui}/api/traces")).await;
    let traces = list["traces"].as_array().expect("traces array");
    assert_eq!(traces.len(), 2);
    // Newest first.
    assert_eq!(traces[0]["traceId"], mesh_hex);
    assert_eq!(traces[1]["traceId"], cron_hex);
    let summary = &traces[0];
    assert_eq!(summary["rootName"], "GET /");
    assert_eq!(summary["rootService"], "frontend");
    assert_eq!(summary["rootComplete"], true);
    assert_eq!(summary["spanCount"], 7);
    assert_eq!(summary["errorCount"], 4);
    assert_eq!(summary["durationMs"], 40.0);
    assert_eq!(
        summary["services"],
        serde_json::json!(["backend-api-1", "backend-api-2", "frontend"])
    );

    let (_, filtered) = get_json(
        &client,
        &format!("http://{ui}/api/traces?service=backend-api-2&limit=10"),
    )
    .await;
    let filtered = filtered["traces"].as_array().expect("traces array");
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0]["traceId"], mesh_hex);
    let (_, limited) = get_json(&client, &format!("http://{ui}/api/traces?limit=1")).await;
    assert_eq!(limited["traces"].as_array().map(Vec::len), Some(1));

    let (status, detail) = get_json(&client, &format!("http://{ui}/api/traces/{mesh_hex}")).await;
    assert_eq!(status, http::StatusCode::OK);
    let spans = detail["spans"].as_array().expect("spans array");
    assert_eq!(spans.len(), 7);
    for (service, spec) in &trace {
        let view = spans
            .iter()
            .find(|s| s["spanId"] == span_id_hex(spec.id))
            .unwrap_or_else(|| panic!("span {} missing", spec.id));
        assert_eq!(view["service"], *service);
        assert_eq!(view["name"], spec.name);
        assert_eq!(
            view["parentSpanId"],
            spec.parent
                .map_or(Value::Null, |p| Value::from(span_id_hex(p)))
        );
        assert_eq!(view["startOffsetMs"], spec.start_ms as f64);
        assert_eq!(view["durationMs"], (spec.end_ms - spec.start_ms) as f64);
        let expected_status = if spec.status_code >= 500 {
            "error"
        } else {
            "unset"
        };
        assert_eq!(view["status"]["code"], expected_status);
        assert_eq!(
            view["attributes"]["http.response.status_code"],
            spec.status_code
        );
        assert_eq!(view["resource"]["service.name"], *service);
    }
    let (status, _) = get_json(
        &client,
        &format!("http://{ui}/api/traces/{}", "0f".repeat(16)),
    )
    .await;
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    let (status, _) = get_json(&client, &format!("http://{ui}/api/traces/nope")).await;
    assert_eq!(status, http::StatusCode::BAD_REQUEST);

    // ---- real browser ----
    let Some(chromium_bin) = chromium_binary() else {
        eprintln!(
            "SKIPPED the browser part: no chromium found (install Debian's `chromium` package or \
             set MESHTRACE_CHROMIUM)"
        );
        viewer.shutdown().await;
        return;
    };

    let trace_url = format!("http://{ui}/trace/{mesh_hex}");
    let dom = chromium(&chromium_bin, &trace_url, &["--dump-dom".into()]).await;
    assert_eq!(
        count(&dom, "data-span-id=\""),
        7,
        "expected one waterfall bar per span in:\n{dom}"
    );
    assert_eq!(count(&dom, "class=\"span-bar\""), 3, "{dom}");
    assert_eq!(count(&dom, "class=\"span-bar error\""), 4, "{dom}");
    for (_, spec) in &trace {
        assert!(
            dom.contains(&format!("data-span-id=\"{}\"", span_id_hex(spec.id))),
            "bar for span {} missing",
            spec.id
        );
    }
    assert!(dom.contains("backend-api-2"));

    let list_dom = chromium(
        &chromium_bin,
        &format!("http://{ui}/"),
        &["--dump-dom".into()],
    )
    .await;
    assert!(
        list_dom.contains(&format!("data-trace-id=\"{mesh_hex}\"")),
        "{list_dom}"
    );
    assert!(
        list_dom.contains(&format!("data-trace-id=\"{cron_hex}\"")),
        "{list_dom}"
    );
    let filtered_dom = chromium(
        &chromium_bin,
        &format!("http://{ui}/?service=backend-api-2"),
        &["--dump-dom".into()],
    )
    .await;
    assert!(filtered_dom.contains(&format!("data-trace-id=\"{mesh_hex}\"")));
    assert!(!filtered_dom.contains(&format!("data-trace-id=\"{cron_hex}\"")));

    // Screenshots for people: the trace page with the failing hop's details open, and the list.
    let artifacts = target_dir().join("test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("create test-artifacts");
    for (name, url) in [
        (
            "viewer-trace.png",
            format!("{trace_url}#span={}", span_id_hex(5)),
        ),
        ("viewer-list.png", format!("http://{ui}/")),
    ] {
        let file = artifacts.join(name);
        let _ = std::fs::remove_file(&file);
        chromium(
            &chromium_bin,
            &url,
            &[
                format!("--screenshot={}", file.display()),
                "--window-size=1400,900".into(),
            ],
        )
        .await;
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("screenshot {file:?}: {e}"));
        assert!(png.starts_with(b"\x89PNG"), "{file:?} is not a PNG");
        eprintln!("screenshot kept at {}", file.display());
    }

    viewer.shutdown().await;
}
