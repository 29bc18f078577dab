//! `cargo demo`: the sample app (frontend → backend-api-1 → backend-api-2), each service behind
//! its own real `meshtrace-proxy` in explicit mode, the viewer, and a traffic generator, all on
//! loopback as separate processes. It prints a terminal waterfall of a finished trace and the
//! viewer URL, and stops everything on Ctrl-C (or after `--duration`).

pub mod plan;
pub mod supervisor;
pub mod traffic;
pub mod waterfall;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use self::plan::{Collector, PlanInput, PortPlan, ServicePorts};
use self::supervisor::{SuperviseError, Supervisor};
use self::traffic::TrafficStats;
use self::waterfall::TraceJson;

/// How long a process may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(90);

#[derive(clap::Args, Clone, Debug)]
pub struct DemoConfig {
    /// Requests per second sent into the mesh (through the frontend's proxy).
    #[arg(long, env = "MESHTRACE_DEMO_RATE", default_value_t = 3.0)]
    pub rate: f64,

    /// Head-sampling rate of the proxies (MESHTRACE_SAMPLE_RATE) for requests without
    /// `l5d-sample`, between 0 and 1.
    #[arg(long, env = "MESHTRACE_DEMO_SAMPLE_RATE", default_value_t = 0.5)]
    pub sample_rate: f64,

    /// Percentage of requests sent with `l5d-sample: 1` (always traced).
    #[arg(long, env = "MESHTRACE_DEMO_L5D_SAMPLE_PERCENT", default_value_t = 30)]
    pub l5d_sample_percent: u32,

    /// Send spans to this OTLP/gRPC endpoint (e.g. Jaeger's http://127.0.0.1:4317) instead of
    /// starting the built-in viewer. No terminal waterfall is printed then.
    #[arg(long, env = "MESHTRACE_DEMO_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Stop after this long instead of waiting for Ctrl-C: `90` or `90s` (seconds), `500ms`,
    /// `2m`.
    #[arg(long, env = "MESHTRACE_DEMO_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Port of the built-in viewer's web UI (0 = any free port).
    #[arg(long, env = "MESHTRACE_DEMO_UI_PORT", default_value_t = 16686)]
    pub ui_port: u16,

    /// Port of the built-in viewer's OTLP/gRPC receiver (0 = any free port).
    #[arg(long, env = "MESHTRACE_DEMO_OTLP_GRPC_PORT", default_value_t = 4317)]
    pub otlp_grpc_port: u16,

    /// Port of the built-in viewer's OTLP/HTTP receiver (0 = any free port).
    #[arg(long, env = "MESHTRACE_DEMO_OTLP_HTTP_PORT", default_value_t = 4318)]
    pub otlp_http_port: u16,

    /// Fixed ports for the services and their proxies: frontend, backend-api-1 and
    /// backend-api-2 (i = 0, 1, 2) use base+10i (app), +1 (proxy inbound), +2 (proxy outbound)
    /// and +3 (proxy admin). 0 = any free ports.
    #[arg(long, env = "MESHTRACE_DEMO_BASE_PORT", default_value_t = 0)]
    pub base_port: u16,

    /// Directory holding meshtrace-proxy, sample-service and meshtrace-viewer (default: the
    /// directory of this program).
    #[arg(long, env = "MESHTRACE_DEMO_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Do not run `cargo build` for the binaries first.
    #[arg(long, env = "MESHTRACE_DEMO_NO_BUILD")]
    pub no_build: bool,

    /// Where each process's output goes (`<name>.log`; default: `<bin dir>/demo-logs`).
    #[arg(long, env = "MESHTRACE_DEMO_LOG_DIR")]
    pub log_dir: Option<PathBuf>,

    /// Seed of backend-api-2's slow/fail draws, for a reproducible run.
    #[arg(long, env = "MESHTRACE_DEMO_SEED")]
    pub seed: Option<u64>,
}

/// `--duration`: a number with an optional `ms`, `s` or `m` unit (seconds without one).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 15s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        other => return Err(format!("unknown unit `{other}` (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|error| format!("`{text}`: {error}"))
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot find this program's directory: {0}")]
    BinDir(std::io::Error),
    #[error("`cargo build` failed ({0}); see its output above")]
    Build(String),
    #[error("no free port: {0}")]
    Ports(std::io::Error),
    #[error("port {port} is not free ({source}); choose another with {flag} (0 = any free port)")]
    PortBusy {
        port: u16,
        flag: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("creating {path:?}: {source}")]
    LogDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    #[error("{name} exited before it was ready ({status}); see {log:?}")]
    DiedStarting {
        name: String,
        status: String,
        log: PathBuf,
    },
    #[error("{name} was not ready after {READY_DEADLINE:?} ({url}); see {log:?}")]
    NotReady {
        name: String,
        url: String,
        log: PathBuf,
    },
    #[error("{name} exited unexpectedly ({status}); see {log:?}")]
    ChildDied {
        name: String,
        status: String,
        log: PathBuf,
    },
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn get_body(client: &HttpClient, url: &str) -> Option<(http::StatusCode, Bytes)> {
    let uri = url.parse().ok()?;
    let exchange = async {
        let response = client.get(uri).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Builds the binaries the demo starts, with cargo's own progress output.
fn build(release: bool) -> Result<(), DemoError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    println!("==> building meshtrace-proxy, sample-service and meshtrace-viewer");
    let mut command = std::process::Command::new(cargo);
    // `cargo run` gives this program the package's CARGO_PKG_*/CARGO_MANIFEST_* variables; some
    // build scripts (ring) fingerprint those, so passing them on would make this build and the
    // next `cargo run` invalidate each other.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let from_cargo_run = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| key.starts_with(prefix))
            || key == "CARGO_PRIMARY_PACKAGE"
            || key == "CARGO_RUSTC_CURRENT_DIR";
        if from_cargo_run {
            command.env_remove(key.as_ref());
        }
    }
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .args(["-p", "meshtrace-proxy", "--bin", "meshtrace-proxy"])
        .args([
            "-p",
            "meshtrace-examples",
            "--bin",
            "sample-service",
            "--bin",
            "meshtrace-viewer",
        ]);
    if release {
        command.arg("--release");
    }
    let status = command
        .status()
        .map_err(|error| DemoError::Build(error.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(DemoError::Build(status.to_string()))
    }
}

/// Resolves 0 ports to free ones (all bound at once, so no two are the same), and checks that
/// fixed ones are free, so a busy default port (a Jaeger already on 16686, say) is reported by
/// name rather than as a child that died.
fn allocate_ports(config: &DemoConfig) -> Result<PortPlan, DemoError> {
    let mut held = Vec::new();
    let mut free_port = || -> Result<u16, DemoError> {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(DemoError::Ports)?;
        let port = listener.local_addr().map_err(DemoError::Ports)?.port();
        held.push(listener);
        Ok(port)
    };
    let viewer = config.otlp_endpoint.is_none();
    let mut pick = |fixed: u16, flag: &'static str, used: bool| -> Result<u16, DemoError> {
        if fixed == 0 {
            return free_port();
        }
        if used {
            std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], fixed))).map_err(
                |source| DemoError::PortBusy {
                    port: fixed,
                    flag,
                    source,
                },
            )?;
        }
        Ok(fixed)
    };
    let viewer_grpc = pick(config.otlp_grpc_port, "--otlp-grpc-port", viewer)?;
    let viewer_http = pick(config.otlp_http_port, "--otlp-http-port", viewer)?;
    let viewer_ui = pick(config.ui_port, "--ui-port", viewer)?;
    let mut services = [ServicePorts {
        app: 0,
        inbound: 0,
        outbound: 0,
        admin: 0,
    }; 3];
    for (index, ports) in services.iter_mut().enumerate() {
        let fixed = |offset: u16| {
            if config.base_port == 0 {
                0
            } else {
                config.base_port.saturating_add(10 * index as u16 + offset)
            }
        };
        *ports = ServicePorts {
            app: pick(fixed(0), "--base-port", true)?,
            inbound: pick(fixed(1), "--base-port", true)?,
            outbound: pick(fixed(2), "--base-port", true)?,
            admin: pick(fixed(3), "--base-port", true)?,
        };
    }
    drop(held);
    Ok(PortPlan {
        viewer_grpc,
        viewer_http,
        viewer_ui,
        services,
    })
}

async fn wait_ready(
    supervisor: &mut Supervisor,
    client: &HttpClient,
    name: &str,
    url: &str,
    log: &Path,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if let Some(status) = supervisor.exited(name) {
            return Err(DemoError::DiedStarting {
                name: name.to_owned(),
                status: status.to_string(),
                log: log.to_owned(),
            });
        }
        if let Some((status, _)) = get_body(client, url).await {
            if status.is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(DemoError::NotReady {
                name: name.to_owned(),
                url: url.to_owned(),
                log: log.to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A trace at least this long went through one of backend-api-2's slow answers (150–300 ms);
/// the normal path takes a few tens of milliseconds.
const SLOW_TRACE_MS: f64 = 150.0;

/// Polls the viewer until a complete trace of a frontend request is in, then prints it. Prints
/// one more when the first slow trace and the first trace with an error show up, so each kind
/// of hop timing is on screen once.
async fn print_waterfalls(client: HttpClient, viewer: String) {
    // In order: a finished fast trace, a slow one, a failed one.
    let mut printed = [false; 3];
    let headings = [
        "a finished trace",
        "a slow trace (backend-api-2 answered slowly)",
        "a failed trace (backend-api-2 answered 503)",
    ];
    let started = Instant::now();
    let mut hinted = false;
    while printed.contains(&false) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let url = format!("{viewer}/api/traces?service=frontend&limit=50");
        let Some((_, body)) = get_body(&client, &url).await else {
            continue;
        };
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or_default();
        let mut candidates = list["traces"].as_array().cloned().unwrap_or_default();
        // Oldest first: the most likely to be complete.
        candidates.reverse();
        for trace in candidates {
            // Finished: the root is in, and exporters had time to flush every hop.
            let settled = now_ms - trace["startTimeUnixMs"].as_f64().unwrap_or(now_ms) > 3000.0;
            let complete = trace["rootComplete"] == true && trace["rootService"] == "frontend";
            let class = if trace["errorCount"].as_u64().unwrap_or(0) > 0 {
                2
            } else if trace["durationMs"].as_f64().unwrap_or(0.0) >= SLOW_TRACE_MS {
                1
            } else {
                0
            };
            if !settled || !complete || printed[class] {
                continue;
            }
            let Some(id) = trace["traceId"].as_str() else {
                continue;
            };
            let Some((_, body)) = get_body(&client, &format!("{viewer}/api/traces/{id}")).await
            else {
                continue;
            };
            let Ok(detail) = serde_json::from_slice::<TraceJson>(&body) else {
                continue;
            };
            println!("\n==> {} (open {viewer}/trace/{id}):\n", headings[class]);
            println!("{}", waterfall::render(&detail));
            printed[class] = true;
        }
        if !hinted && !printed[0] && started.elapsed() > Duration::from_secs(30) {
            hinted = true;
            println!("==> no complete trace in the viewer after 30 s; check the proxies' logs");
        }
    }
}

/// Runs the demo until Ctrl-C or `--duration`; every child is stopped before returning.
pub async fn run(config: DemoConfig) -> Result<(), DemoError> {
    let exe_dir = std::env::current_exe()
        .map_err(DemoError::BinDir)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bin_dir = config.bin_dir.clone().unwrap_or_else(|| exe_dir.clone());
    if !config.no_build {
        build(exe_dir.ends_with("release"))?;
    }
    let log_dir = config
        .log_dir
        .clone()
        .unwrap_or_else(|| bin_dir.join("demo-logs"));
    std::fs::create_dir_all(&log_dir).map_err(|source| DemoError::LogDir {
        path: log_dir.clone(),
        source,
    })?;
    let ports = allocate_ports(&config)?;
    let collector = match &config.otlp_endpoint {
        Some(endpoint) => Collector::External(endpoint.clone()),
        None => Collector::BuiltInViewer,
    };
    let plan = plan::plan(&PlanInput {
        bin_dir: &bin_dir,
        ports: &ports,
        collector: &collector,
        sample_rate: config.sample_rate.clamp(0.0, 1.0),
        export_delay_ms: 200,
        seed: config.seed,
    });

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut supervisor = Supervisor::new(&log_dir);
    println!("==> starting the mesh (logs in {})", log_dir.display());
    let outcome = async {
        for spec in &plan.processes {
            let log = supervisor.spawn(spec)?;
            wait_ready(&mut supervisor, &client, &spec.name, &spec.ready.url, &log).await?;
            println!("    {:<22} ready  ({})", spec.name, spec.ready.url);
        }
        println!(
            "==> sending {} requests/s to {} ({}% with l5d-sample: 1, proxies sample {} of the rest)",
            config.rate, plan.entry_url, config.l5d_sample_percent, config.sample_rate
        );
        match (&plan.viewer_url, &config.otlp_endpoint) {
            (Some(viewer), _) => println!("==> trace viewer: {viewer}/"),
            (None, Some(endpoint)) => println!("==> spans go to {endpoint}"),
            (None, None) => {}
        }
        match config.duration {
            Some(duration) => println!("==> running for {duration:?} (Ctrl-C stops earlier)"),
            None => println!("==> running until Ctrl-C"),
        }

        let stats = Arc::new(TrafficStats::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let traffic = tokio::spawn(traffic::drive(
            plan.entry_url.clone(),
            config.rate,
            config.l5d_sample_percent,
            stats.clone(),
            stop_rx,
        ));
        let waterfalls = plan
            .viewer_url
            .clone()
            .map(|viewer| tokio::spawn(print_waterfalls(client.clone(), viewer)));
        let until = async {
            match config.duration {
                Some(duration) => tokio::time::sleep(duration).await,
                None => std::future::pending().await,
            }
        };
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(terminated);
        let mut progress = tokio::time::interval(Duration::from_secs(10));
        progress.tick().await;
        tokio::pin!(until);
        let result = loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    println!("\n==> Ctrl-C: stopping");
                    break Ok(());
                }
                () = &mut terminated => {
                    println!("==> SIGTERM: stopping");
                    break Ok(());
                }
                () = &mut until => break Ok(()),
                (name, status, log) = supervisor.first_exit() => {
                    break Err(DemoError::ChildDied {
                        name,
                        status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                        log,
                    });
                }
                _ = progress.tick() => println!("    {}", stats.summary()),
            }
        };
        let _ = stop_tx.send(true);
        let _ = traffic.await;
        if let Some(task) = waterfalls {
            task.abort();
        }
        println!("==> {}", stats.summary());
        result
    }
    .await;
    println!("==> stopping all processes");
    supervisor.shutdown().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_an_optional_unit() {
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
