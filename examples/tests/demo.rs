//! The demo runner as a user runs it (the `meshtrace-demo` binary, as `cargo demo` starts it).
//!
//! - `a_dying_proxy_stops_the_demo_without_orphans`: a fake `meshtrace-proxy` that exits at once
//!   must make the demo fail with a clear message and leave no process behind.
//! - `demo_produces_complete_traces_through_the_mesh` is the end-to-end check against
//!   the real `meshtrace-proxy` (10 proxy spans per frontend → api-1 → api-2 chain, parentage,
//!   the slow hop, failures as errors), through the viewer's JSON API.
//!
//! The real proxy binary is the one `cargo test --workspace` builds next to `meshtrace-demo`
//! (`target/<profile>/meshtrace-proxy`), or `MESHTRACE_PROXY_BIN`; when neither exists (e.g.
//! `cargo test -p meshtrace-examples` on a fresh tree) it is built with cargo in the same profile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const TIMEOUT: Duration = Duration::from_secs(180);

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_meshtrace-demo"))
        .parent()
        .expect("bin dir")
        .to_owned()
}

/// Processes whose command line mentions `needle` (our unique temp dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(cmdline)
        })
        .collect()
}

fn demo_command(bin_dir: &Path, log_dir: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshtrace-demo"));
    command
        .args(["--no-build", "--base-port", "0", "--ui-port", "0"])
        .args(["--otlp-grpc-port", "0", "--otlp-http-port", "0"])
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--log-dir")
        .arg(log_dir)
        .args(extra)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn a_dying_proxy_stops_the_demo_without_orphans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).expect("bin dir");
    for name in ["sample-service", "meshtrace-viewer"] {
        std::os::unix::fs::symlink(bin_dir().join(name), bins.join(name)).expect("symlink");
    }
    let fake_proxy = bins.join("meshtrace-proxy");
    std::fs::write(
        &fake_proxy,
        "#!/bin/sh\necho 'fake proxy giving up' >&2\nexit 7\n",
    )
    .expect("fake proxy");
    let mut permissions = std::fs::metadata(&fake_proxy).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&fake_proxy, permissions).expect("chmod");
    let logs = dir.path().join("logs");

    let output = tokio::time::timeout(
        TIMEOUT,
        demo_command(&bins, &logs, &["--duration", "600"]).output(),
    )
    .await
    .expect("demo stopped in time")
    .expect("demo ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "demo should fail:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("backend-api-2-proxy exited before it was ready"),
        "{stdout}\n{stderr}"
    );
    // What started before the proxy was reported ready, and has been stopped since.
    assert!(stdout.contains("meshtrace-viewer"), "{stdout}");
    assert!(stdout.contains("backend-api-2 "), "{stdout}");
    let proxy_log =
        std::fs::read_to_string(logs.join("backend-api-2-proxy.log")).expect("proxy log");
    assert!(proxy_log.contains("fake proxy giving up"));
    let leftovers = processes_mentioning(&dir.path().to_string_lossy());
    assert!(leftovers.is_empty(), "orphans: {leftovers:?}");
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn get_json(client: &HttpClient, url: &str) -> Option<Value> {
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(url.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Spans of one frontend request: (service, kind) → count.
fn shape(spans: &[Value]) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for span in spans {
        let key = (
            span["service"].as_str().unwrap_or_default().to_owned(),
            span["kind"].as_str().unwrap_or_default().to_owned(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// backend-api-2's slow answers take 150–300 ms; its normal ones a few milliseconds.
const SLOW_MS: f64 = 150.0;

/// backend-api-2's inbound SERVER span: its own view of its answer (Null if missing).
fn api2_server(trace: &Value) -> &Value {
    trace["spans"]
        .as_array()
        .and_then(|spans| {
            spans
                .iter()
                .find(|s| s["service"] == "backend-api-2" && s["kind"] == "server")
        })
        .unwrap_or(&Value::Null)
}

/// The real proxy: `MESHTRACE_PROXY_BIN`, or the workspace build's, built if missing.
fn real_proxy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MESHTRACE_PROXY_BIN") {
        return PathBuf::from(path);
    }
    let path = bin_dir().join("meshtrace-proxy");
    if path.exists() {
        return path;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .args(["build", "-p", "meshtrace-proxy", "--bin", "meshtrace-proxy"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // cargo gives tests this package's CARGO_PKG_*/CARGO_MANIFEST_* variables; build scripts
    // that fingerprint them (ring) would rebuild here and again in the next `cargo test`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let from_cargo = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
            || key == "CARGO_PRIMARY_PACKAGE"
            || key == "CARGO_RUSTC_CURRENT_DIR"
            || key == "CARGO_TARGET_TMPDIR";
        if from_cargo {
            command.env_remove(key);
        }
    }
    if bin_dir().ends_with("release") {
        command.arg("--release");
    }
    let status = command.status().expect("run cargo build");
    assert!(status.success(), "building meshtrace-proxy failed");
    assert!(path.exists(), "{} missing after the build", path.display());
    path
}

/// The tail of every process log of the run, for failure messages.
fn log_tails(log_dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return out;
    };
    for entry in entries.filter_map(Result::ok) {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        out.push_str(&format!(
            "\n--- {} ---\n{tail}\n",
            entry.file_name().to_string_lossy()
        ));
    }
    out
}

fn key(span: &Value) -> (String, String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&span["service"]),
        text(&span["kind"]),
        text(&span["attributes"]["meshtrace.direction"]),
    )
}

/// The spans from the root down to `leaf`, following parent ids (panics on an orphan).
fn ancestry<'a>(
    by_id: &HashMap<&str, &'a Value>,
    leaf: &'a Value,
    trace: &Value,
) -> Vec<&'a Value> {
    let mut chain = vec![leaf];
    let mut cursor = leaf;
    while let Some(parent) = cursor["parentSpanId"].as_str() {
        cursor = by_id
            .get(parent)
            .copied()
            .unwrap_or_else(|| panic!("span {parent} missing from {trace}"));
        chain.push(cursor);
        assert!(chain.len() <= 64, "parent cycle in {trace}");
    }
    chain.reverse();
    chain
}

/// The hops a request crosses from the mesh's entry to `leaf_service`: at each service its
/// proxy's inbound side (SERVER, then CLIENT to the app) and, except at the last, its outbound
/// side (SERVER from the app, then CLIENT to the next service's proxy).
fn expected_chain(services: &[&str]) -> Vec<(String, String, String)> {
    let mut expected = Vec::new();
    for (index, service) in services.iter().enumerate() {
        let mut sides = vec!["inbound"];
        if index + 1 < services.len() {
            sides.push("outbound");
        }
        for side in sides {
            for kind in ["server", "client"] {
                expected.push((service.to_string(), kind.to_owned(), side.to_owned()));
            }
        }
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_produces_complete_traces_through_the_mesh() {
    // Binaries linked from a unique directory, so leftover processes can be found by path.
    let dir = tempfile::tempdir().expect("tempdir");
    let bins = dir.path().join("bin");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&bins).expect("bin dir");
    for name in ["sample-service", "meshtrace-viewer"] {
        std::os::unix::fs::symlink(bin_dir().join(name), bins.join(name)).expect("symlink");
    }
    std::os::unix::fs::symlink(real_proxy_binary(), bins.join("meshtrace-proxy")).expect("symlink");
    // A bounded run: the demo stops by itself even if this test stops driving it.
    let mut demo = demo_command(
        &bins,
        &logs,
        &[
            "--duration",
            "60s",
            "--rate",
            "10",
            "--seed",
            "11",
            "--sample-rate",
            "1",
        ],
    )
    .spawn()
    .expect("spawn demo");
    let stderr = demo.stderr.take().expect("stderr");
    let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr_sink = stderr_text.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut text) = stderr_sink.lock() {
                text.push_str(&line);
                text.push('\n');
            }
        }
    });
    let failure_context = |what: &str| {
        let stderr = stderr_text.lock().map(|t| t.clone()).unwrap_or_default();
        format!("{what}\ndemo stderr:\n{stderr}{}", log_tails(&logs))
    };

    let stdout = demo.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let viewer = tokio::time::timeout(TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("==> trace viewer: ") {
                return Some(url.trim_end_matches('/').to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        panic!(
            "{}",
            failure_context("the demo never printed the viewer URL")
        )
    });
    let (printed_tx, mut printed_rx) = tokio::sync::watch::channel(String::new());
    tokio::spawn(async move {
        let mut seen = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push_str(&line);
            seen.push('\n');
            let _ = printed_tx.send(seen.clone());
        }
    });

    // Poll the viewer until enough complete traces, including a slow and a failed one, are in.
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + TIMEOUT;
    let mut complete: Vec<Value> = Vec::new();
    let mut enough = false;
    while !enough && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(Some(status)) = demo.try_wait() {
            panic!(
                "{}",
                failure_context(&format!("the demo ended early: {status}"))
            );
        }
        let Some(list) = get_json(
            &client,
            &format!("{viewer}/api/traces?service=backend-api-2&limit=200"),
        )
        .await
        else {
            continue;
        };
        complete.clear();
        for summary in list["traces"].as_array().cloned().unwrap_or_default() {
            if summary["spanCount"] == 14 && summary["rootComplete"] == true {
                let id = summary["traceId"].as_str().unwrap_or_default();
                if let Some(detail) = get_json(&client, &format!("{viewer}/api/traces/{id}")).await
                {
                    complete.push(detail);
                }
            }
        }
        let slow = complete
            .iter()
            .any(|t| api2_server(t)["durationMs"].as_f64().unwrap_or(0.0) >= SLOW_MS);
        let failed = complete.iter().any(|t| {
            api2_server(t)["attributes"]["http.response.status_code"].as_u64() == Some(503)
        });
        enough = complete.len() >= 5 && slow && failed;
    }
    assert!(
        enough,
        "{}",
        failure_context(&format!(
            "only {} complete traces (or none slow/failed) in {TIMEOUT:?}",
            complete.len()
        ))
    );

    let items_chain = expected_chain(&["frontend", "backend-api-1", "backend-api-2"]);
    let recommendations_chain = expected_chain(&["frontend", "backend-api-1"]);
    let mut saw_slow_hop = false;
    let mut saw_failure = false;
    for trace in &complete {
        let spans = trace["spans"].as_array().expect("spans");
        let counts = shape(spans);
        let count = |service: &str, kind: &str| {
            counts
                .get(&(service.to_owned(), kind.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        // frontend → api-1 (items) → api-2: 10 proxy spans; frontend → api-1
        // (recommendations): 4 more, the first two (the frontend's inbound side) shared.
        assert_eq!(count("frontend", "server"), 3, "{trace}");
        assert_eq!(count("frontend", "client"), 3, "{trace}");
        assert_eq!(count("backend-api-1", "server"), 3, "{trace}");
        assert_eq!(count("backend-api-1", "client"), 3, "{trace}");
        assert_eq!(count("backend-api-2", "server"), 1, "{trace}");
        assert_eq!(count("backend-api-2", "client"), 1, "{trace}");

        let by_id: HashMap<&str, &Value> = spans
            .iter()
            .map(|s| (s["spanId"].as_str().unwrap_or_default(), s))
            .collect();
        let roots: Vec<&Value> = spans
            .iter()
            .filter(|s| s["parentSpanId"].is_null())
            .collect();
        assert_eq!(roots.len(), 1, "{trace}");

        // Parentage: the deepest span of each route hangs off the root through exactly the
        // hops of its route, in order; every child starts within its parent.
        let api2_client = spans
            .iter()
            .find(|s| s["service"] == "backend-api-2" && s["kind"] == "client")
            .expect("api-2 client span");
        let items = ancestry(&by_id, api2_client, trace);
        assert_eq!(
            items.iter().map(|s| key(s)).collect::<Vec<_>>(),
            items_chain,
            "{trace}"
        );
        let recommendations_leaf = spans
            .iter()
            .find(|s| {
                s["service"] == "backend-api-1"
                    && s["kind"] == "client"
                    && s["name"] == "GET /api/recommendations"
            })
            .expect("recommendations client span");
        let recommendations = ancestry(&by_id, recommendations_leaf, trace);
        assert_eq!(
            recommendations.iter().map(|s| key(s)).collect::<Vec<_>>(),
            recommendations_chain,
            "{trace}"
        );
        assert_eq!(items[..2], recommendations[..2], "{trace}");
        for span in spans {
            if let Some(parent) = span["parentSpanId"].as_str() {
                let parent = by_id[parent];
                let start = span["startOffsetMs"].as_f64().unwrap_or(0.0);
                let parent_start = parent["startOffsetMs"].as_f64().unwrap_or(0.0);
                assert!(
                    start + 0.5 >= parent_start,
                    "child starts before parent in {trace}"
                );
            }
        }

        // The slow hop: backend-api-2's inbound SERVER, and every ancestor lasts at least as long.
        let api2_server = items[8];
        assert_eq!(api2_server, self::api2_server(trace));
        let api2_ms = api2_server["durationMs"].as_f64().unwrap_or(0.0);
        if api2_ms >= SLOW_MS {
            saw_slow_hop = true;
            for ancestor in &items[..8] {
                assert!(
                    ancestor["durationMs"].as_f64().unwrap_or(0.0) >= api2_ms - 0.5,
                    "{trace}"
                );
            }
        }
        // A failed inventory call (503) is an error on every hop of the items route, and the
        // failed page answers 502; the recommendations-only spans stay ok.
        if api2_server["attributes"]["http.response.status_code"].as_u64() == Some(503) {
            saw_failure = true;
            for span in &items {
                assert_eq!(span["status"]["code"], "error", "{trace}");
            }
            assert_eq!(items[0]["attributes"]["http.response.status_code"], 502);
            for span in &recommendations[2..] {
                assert_ne!(span["status"]["code"], "error", "{trace}");
            }
            assert_eq!(trace["errorCount"], 10, "{trace}");
        } else {
            assert_eq!(trace["errorCount"], 0, "{trace}");
        }
    }
    assert!(
        saw_slow_hop,
        "no slow backend-api-2 hop in {} traces",
        complete.len()
    );
    assert!(
        saw_failure,
        "no failed backend-api-2 call in {} traces",
        complete.len()
    );

    // The runner printed the terminal waterfall of a whole trace, with each hop's timing.
    let printed = tokio::time::timeout(
        TIMEOUT,
        printed_rx.wait_for(|text| text.contains("backend-api-2  inbound   CLIENT")),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|text| text.clone())
    .unwrap_or_else(|| panic!("{}", failure_context("no waterfall printed")));
    assert!(
        printed.contains("backend-api-2  inbound   CLIENT"),
        "{printed}"
    );

    // Ctrl-C-like stop: SIGINT to the runner, which then stops everything.
    let pid = demo.id().expect("demo pid") as i32;
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let status = tokio::time::timeout(TIMEOUT, demo.wait())
        .await
        .expect("demo stopped")
        .expect("wait");
    assert!(status.success(), "{}", failure_context(&status.to_string()));
    let leftovers = processes_mentioning(&dir.path().to_string_lossy());
    assert!(leftovers.is_empty(), "orphans: {leftovers:?}");
}
