//! The sample services on loopback without a mesh: the chain frontend → backend-api-1 →
//! backend-api-2 answers, trace headers reach the last hop (and `l5d-sample` does not), the slow
//! and failing paths are reachable deterministically, and with `http_proxy` set the binary sends
//! its calls to the proxy in absolute form.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshtrace_examples::services::propagation::Forwarding;
use meshtrace_examples::services::{Role, SampleService, SampleServiceConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TIMEOUT: Duration = Duration::from_secs(60);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn config(role: Role, upstream: Option<SocketAddr>) -> SampleServiceConfig {
    SampleServiceConfig {
        role,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstreams: upstream
            .map(|a| format!("http://{a}"))
            .into_iter()
            .collect(),
        slow_percent: 0,
        error_percent: 0,
        seed: Some(7),
        forward: Forwarding::TraceHeaders,
        upstream_timeout_ms: 30_000,
    }
}

/// Runs a service in-process until the returned sender is dropped.
async fn start(config: SampleServiceConfig, proxy: Matcher) -> (SocketAddr, oneshot::Sender<()>) {
    let service = SampleService::bind(&config, proxy).await.expect("bind");
    let addr = service.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(service.run(async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

struct Chain {
    frontend: SocketAddr,
    api2: SocketAddr,
    _stops: Vec<oneshot::Sender<()>>,
}

async fn start_chain(api2_config: SampleServiceConfig) -> Chain {
    let (api2, stop2) = start(api2_config, Matcher::builder().build()).await;
    let (api1, stop1) = start(
        config(Role::BackendApi1, Some(api2)),
        Matcher::builder().build(),
    )
    .await;
    let (frontend, stop0) = start(
        config(Role::Frontend, Some(api1)),
        Matcher::builder().build(),
    )
    .await;
    Chain {
        frontend,
        api2,
        _stops: vec![stop0, stop1, stop2],
    }
}

async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        TIMEOUT,
        client.request(request.body(Empty::new()).expect("request")),
    )
    .await
    .expect("request timed out")
    .expect("request failed");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{url} answered non-JSON ({e}): {body:?}"));
    (status, json)
}

const INCOMING_TRACE_HEADERS: [(&str, &str); 7] = [
    ("traceparent", TRACEPARENT),
    ("tracestate", "congo=t61rcWkgMzE"),
    ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
    ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("x-b3-spanid", "00f067aa0ba902b7"),
    ("x-b3-sampled", "1"),
    ("l5d-sample", "1"),
];

fn expected_forwarded() -> Value {
    let forwarded: serde_json::Map<String, Value> = INCOMING_TRACE_HEADERS
        .iter()
        .filter(|(name, _)| *name != "l5d-sample")
        .map(|(name, value)| (name.to_string(), Value::from(*value)))
        .collect();
    Value::Object(forwarded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_answers_and_forwards_trace_headers_to_every_hop() {
    let chain = start_chain(config(Role::BackendApi2, None)).await;
    let client = client();
    let (status, body) = get(
        &client,
        &format!("http://{}/?item=7", chain.frontend),
        &INCOMING_TRACE_HEADERS,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["service"], "frontend");
    assert_eq!(body["item"]["id"], 7);
    assert_eq!(body["item"]["service"], "backend-api-1");
    assert_eq!(body["item"]["inventory"]["id"], 7);
    assert_eq!(body["item"]["inventory"]["service"], "backend-api-2");
    assert_eq!(
        body["recommendations"]["items"].as_array().map(Vec::len),
        Some(3)
    );

    let expected = expected_forwarded();
    assert_eq!(body["traceHeaders"], expected, "what frontend received");
    assert_eq!(
        body["item"]["traceHeaders"], expected,
        "backend-api-1 /api/items"
    );
    assert_eq!(
        body["recommendations"]["traceHeaders"], expected,
        "backend-api-1 /api/recommendations"
    );
    assert_eq!(
        body["item"]["inventory"]["traceHeaders"], expected,
        "backend-api-2 /api/inventory"
    );

    // Without trace headers nothing is invented.
    let (status, body) = get(&client, &format!("http://{}/", chain.frontend), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["item"]["inventory"]["traceHeaders"], json!({}));

    let response = tokio::time::timeout(
        TIMEOUT,
        client.get(
            format!("http://{}/healthz", chain.frontend)
                .parse()
                .expect("url"),
        ),
    )
    .await
    .expect("healthz timed out")
    .expect("healthz");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_slow_paths_are_reachable_on_demand() {
    let chain = start_chain(config(Role::BackendApi2, None)).await;
    let client = client();

    let (status, body) = get(
        &client,
        &format!("http://{}/?item=3&mode=fail", chain.frontend),
        &[("traceparent", TRACEPARENT)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["service"], "frontend");
    // backend-api-1 failed because backend-api-2 did.
    assert_eq!(body["upstream"]["status"], 502);
    assert_eq!(body["upstream"]["body"]["service"], "backend-api-1");
    assert_eq!(body["upstream"]["body"]["upstream"]["status"], 503);
    assert_eq!(
        body["upstream"]["body"]["upstream"]["body"]["traceHeaders"]["traceparent"],
        TRACEPARENT
    );

    let (status, body) = get(
        &client,
        &format!("http://{}/api/inventory/1?mode=slow", chain.api2),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let delay = body["delayMs"].as_u64().expect("delayMs");
    assert!((150..=300).contains(&delay), "slow path delay {delay}");

    let (status, body) = get(
        &client,
        &format!("http://{}/?mode=slow", chain.frontend),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["item"]["inventory"]["delayMs"]
            .as_u64()
            .expect("delayMs")
            >= 150
    );

    let (status, _) = get(
        &client,
        &format!("http://{}/api/inventory/abc", chain.api2),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get(&client, &format!("http://{}/nope", chain.api2), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_odds_drive_backend_api_2() {
    let client = client();
    let mut always_failing = config(Role::BackendApi2, None);
    always_failing.error_percent = 100;
    let (failing, _stop_failing) = start(always_failing, Matcher::builder().build()).await;
    let mut always_slow = config(Role::BackendApi2, None);
    always_slow.slow_percent = 100;
    let (slow, _stop_slow) = start(always_slow, Matcher::builder().build()).await;
    for _ in 0..3 {
        let (status, _) = get(&client, &format!("http://{failing}/api/inventory/1"), &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, body) = get(&client, &format!("http://{slow}/api/inventory/1"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["delayMs"].as_u64().expect("delayMs") >= 150);
    }
    // A forced mode wins over the odds.
    let (status, _) = get(
        &client,
        &format!("http://{failing}/api/inventory/1?mode=ok"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn services_that_call_upstream_refuse_to_start_without_one() {
    let result =
        SampleService::bind(&config(Role::Frontend, None), Matcher::builder().build()).await;
    assert!(result.is_err());
}

/// A forward HTTP proxy that records the request target it was sent, then relays.
async fn start_recording_proxy() -> (SocketAddr, Arc<Mutex<Vec<(String, Option<String>)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    tokio::spawn(async move {
        let relay: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let relay = relay.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let relay = relay.clone();
                    let seen = seen.clone();
                    async move {
                        let traceparent = request
                            .headers()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        seen.lock()
                            .expect("lock")
                            .push((request.uri().to_string(), traceparent));
                        let response = match relay.request(request).await {
                            Ok(response) => {
                                let (parts, body) = response.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                Response::from_parts(parts, Full::new(body))
                            }
                            Err(error) => {
                                let mut response =
                                    Response::new(Full::new(Bytes::from(error.to_string())));
                                *response.status_mut() = StatusCode::BAD_GATEWAY;
                                response
                            }
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sends_outgoing_calls_through_http_proxy_in_absolute_form() {
    let (api2, _stop2) = start(config(Role::BackendApi2, None), Matcher::builder().build()).await;
    let (api1, _stop1) = start(
        config(Role::BackendApi1, Some(api2)),
        Matcher::builder().build(),
    )
    .await;
    let (proxy, seen) = start_recording_proxy().await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sample-service"))
        .args(["--role", "frontend", "--listen", "127.0.0.1:0"])
        .arg("--upstream")
        .arg(format!("http://{api1}"))
        .env("http_proxy", format!("http://{proxy}"))
        .env_remove("HTTP_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sample-service");

    // The service logs its bound address: wait for that line instead of guessing a port.
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let frontend: SocketAddr = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.split("listen=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return addr.parse().expect("listen address");
            }
        }
        panic!("sample-service exited before listening");
    })
    .await
    .expect("sample-service did not start in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let client = client();
    let (status, body) = get(
        &client,
        &format!("http://{frontend}/?item=5"),
        &[("traceparent", TRACEPARENT), ("l5d-sample", "1")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["item"]["inventory"]["traceHeaders"]["traceparent"],
        TRACEPARENT
    );

    let mut targets = seen.lock().expect("lock").clone();
    targets.sort();
    assert_eq!(
        targets,
        vec![
            (
                format!("http://{api1}/api/items/5"),
                Some(TRACEPARENT.to_owned())
            ),
            (
                format!("http://{api1}/api/recommendations"),
                Some(TRACEPARENT.to_owned())
            ),
        ]
    );

    child.start_kill().expect("kill sample-service");
    tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .expect("sample-service exited")
        .expect("wait");
}
