//! The mesh load benchmark: what a proxy hop costs, measured side by side with a direct
//! connection and with nginx, in one run, so the ratios compare like with like.
//!
//! `cargo bench --bench mesh [-- --quick] [-- --out PATH]` (or `benches/run.sh`, which builds
//! the release proxy first); `-- --memory-only` runs only the 1,000-connection memory phase, and
//! `-- --proxy-env KEY=VALUE` (repeatable; or `MESHTRACE_BENCH_PROXY_ENV="K=V K=V"`) adds to every
//! proxy's environment, e.g. `MESHTRACE_HTTP1_CODEC=meshtrace` to compare code paths. The upstream server and the OTLP sink run in this process, pinned
//! with the load generators to CPU 0; proxies and nginx run as child processes pinned to CPU 1,
//! so their CPU time and peak RSS are read from `/proc` alone.
//!
//! Load generators (maintained tools, not ours): `wrk` (HTTP/1.1 throughput), `h2load` (h2c
//! throughput; open-loop latency with `--rps` and a per-request log), `oha` when installed
//! (open-loop latency with coordinated-omission correction, preferred over h2load).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};

use meshtrace_benches::proxy_binary;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};

/// CPU the load generators, upstream and sink use; proxies and nginx get the other one.
const LOAD_CPU: usize = 0;
const PROXY_CPU: usize = 1;

struct Settings {
    quick: bool,
    /// Only the 1,000-connection memory phase (`--memory-only`).
    memory_only: bool,
    /// When the memory phase samples RSS after the load, in seconds after it ends.
    after_load_secs: Vec<u64>,
    throughput_secs: u64,
    latency_secs: u64,
    concurrency: u32,
    rate: u32,
    out: PathBuf,
}

impl Settings {
    fn from_args() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let memory_only = args.iter().any(|a| a == "--memory-only");
        let out = args
            .iter()
            .position(|a| a == "--out")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(match (memory_only, quick) {
                    (true, _) => "results/mesh-memory.json",
                    (false, true) => "results/mesh-quick.json",
                    (false, false) => "results/mesh.json",
                })
            });
        let after_load_secs = args
            .iter()
            .position(|a| a == "--after-load")
            .and_then(|i| args.get(i + 1))
            .map(|list| {
                list.split(',')
                    .filter_map(|secs| secs.trim().parse().ok())
                    .collect::<Vec<u64>>()
            })
            .filter(|secs| !secs.is_empty())
            .unwrap_or_else(|| AFTER_LOAD_SECS.to_vec());
        Settings {
            quick,
            memory_only,
            after_load_secs,
            throughput_secs: if quick { 3 } else { 8 },
            latency_secs: if quick { 3 } else { 8 },
            concurrency: 50,
            rate: 2000,
            out,
        }
    }
}

/// The proxy the benchmark starts: its binary and what it adds to each proxy's environment.
struct ProxyCommand {
    bin: PathBuf,
    /// `--proxy-env KEY=VALUE` (repeatable) and `MESHTRACE_BENCH_PROXY_ENV="KEY=VALUE ..."`.
    env: Vec<(String, String)>,
}

impl ProxyCommand {
    fn from_args() -> Result<ProxyCommand, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let from_flags = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(flag, _)| *flag == "--proxy-env")
            .map(|(_, pair)| pair.clone());
        let from_env = std::env::var("MESHTRACE_BENCH_PROXY_ENV").unwrap_or_default();
        let pairs: Vec<String> = from_env
            .split_whitespace()
            .map(str::to_string)
            .chain(from_flags)
            .collect();
        let env = pairs
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
                _ => Err(format!("proxy env {pair:?}: expected KEY=VALUE")),
            })
            .collect::<Result<_, _>>()?;
        Ok(ProxyCommand {
            bin: proxy_binary(),
            env,
        })
    }

    /// `KEY=VALUE KEY=VALUE`, for the report.
    fn env_text(&self) -> String {
        self.env
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: there, stay a no-op
    // rather than run minutes of load.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("mesh: run with `cargo bench --bench mesh` (or benches/run.sh); nothing to test");
        return;
    }
    let settings = Settings::from_args();
    raise_fd_limit();
    pin_to_cpu(LOAD_CPU);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let upstream = runtime.block_on(serve(upstream_service));
    let sink = runtime.block_on(serve(otlp_sink_service));
    if std::env::args().any(|a| a == "--serve") {
        // For profiling by hand: keep the upstream and the sink up, run a proxy under `perf`.
        let apps = runtime.block_on(serve_apps(upstream));
        println!("upstream {upstream}\n{apps}OTLP sink {sink}");
        runtime.block_on(std::future::pending::<()>());
    }
    let tools = Tools::find();
    eprintln!("upstream {upstream}, OTLP sink {sink}; tools: {tools:?}");
    let proxy = match ProxyCommand::from_args() {
        Ok(proxy) => proxy,
        Err(error) => {
            eprintln!("mesh: {error}");
            std::process::exit(2);
        }
    };
    eprintln!(
        "proxy binary: {}; extra proxy env: [{}]",
        proxy.bin.display(),
        proxy.env_text()
    );

    let results = if settings.memory_only {
        Vec::new()
    } else {
        run_paths(&settings, &tools, &proxy, upstream, sink)
    };
    let memory = memory_phase(&settings, &tools, &proxy, upstream, sink);

    let mut table = if settings.memory_only {
        String::new()
    } else {
        markdown(&results)
    };
    table.push_str(&memory_markdown(&memory, &settings.after_load_secs));
    println!("\n{table}");
    let proxy_peak = memory
        .iter()
        .find(|m| m.path != PathKind::Nginx)
        .and_then(|m| m.peak_kib);
    let report = json!({
        "machine": machine(),
        "quick": settings.quick,
        "memory_only": settings.memory_only,
        "proxy_env": proxy.env_text(),
        "concurrency": settings.concurrency,
        "rate_rps": settings.rate,
        "throughput_secs": settings.throughput_secs,
        "latency_secs": settings.latency_secs,
        "latency_tool": tools.latency_tool_name(),
        "results": results.iter().map(PathResult::to_json).collect::<Vec<_>>(),
        "rss_kib_1000_connections": proxy_peak,
        "memory_1000_connections": memory.iter().map(MemoryResult::to_json).collect::<Vec<_>>(),
        "table": table,
    });
    if let Some(dir) = settings.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &settings.out,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    ) {
        Ok(()) => eprintln!("wrote {}", settings.out.display()),
        Err(error) => eprintln!("cannot write {}: {error}", settings.out.display()),
    }
}

/// Throughput, latency, CPU and RSS of every path, HTTP/1.1 then h2c.
fn run_paths(
    settings: &Settings,
    tools: &Tools,
    proxy: &ProxyCommand,
    upstream: SocketAddr,
    sink: SocketAddr,
) -> Vec<PathResult> {
    let mut results = Vec::new();
    for protocol in [Protocol::Http1, Protocol::H2c] {
        for path in [
            PathKind::Direct,
            PathKind::ProxyTracingOff,
            PathKind::ProxySampled,
            PathKind::ProxySampledGrpc,
            PathKind::TwoProxies,
            PathKind::Nginx,
        ] {
            if path == PathKind::Nginx && tools.nginx.is_none() {
                eprintln!("nginx not installed (apt-get install nginx-light): skipping its path");
                continue;
            }
            let started = Instant::now();
            match run_path(settings, tools, proxy, upstream, sink, path, protocol) {
                Ok(result) => {
                    eprintln!(
                        "{} {}: {:.0} req/s, p50 {:?} us ({:.1}s)",
                        path.name(),
                        protocol.name(),
                        result.throughput_rps,
                        result.latency.get("p50"),
                        started.elapsed().as_secs_f64()
                    );
                    results.push(result);
                }
                Err(error) => eprintln!("{} {}: FAILED: {error}", path.name(), protocol.name()),
            }
        }
    }
    results
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2c,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::H2c => "h2c",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Direct,
    ProxyTracingOff,
    ProxySampled,
    ProxySampledGrpc,
    TwoProxies,
    Nginx,
}

impl PathKind {
    /// Whether the path's proxies export spans.
    fn exports(self) -> bool {
        matches!(
            self,
            PathKind::ProxySampled | PathKind::ProxySampledGrpc | PathKind::TwoProxies
        )
    }

    fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::ProxyTracingOff => "proxy, tracing off",
            PathKind::ProxySampled => "proxy, 100% sampled + export",
            PathKind::ProxySampledGrpc => "proxy, 100% sampled + OTLP/gRPC export",
            PathKind::TwoProxies => "two proxies (out → in), 100% sampled",
            PathKind::Nginx => "nginx reverse proxy",
        }
    }
}

/// Where the load generator connects, and which authority its requests name (they differ
/// only for the outbound proxy in explicit mode, which forwards to the named authority).
struct Target {
    connect: SocketAddr,
    authority: SocketAddr,
}

struct PathResult {
    path: PathKind,
    protocol: Protocol,
    throughput_rps: f64,
    throughput_errors: u64,
    latency: BTreeMap<&'static str, f64>,
    latency_requests: u64,
    latency_errors: u64,
    peak_rss_kib: Option<u64>,
    cpu_us_per_request: Option<f64>,
    spans_exported: Option<f64>,
    spans_dropped: Option<f64>,
}

impl PathResult {
    fn to_json(&self) -> Value {
        json!({
            "path": self.path.name(),
            "protocol": self.protocol.name(),
            "throughput_rps": self.throughput_rps,
            "throughput_errors": self.throughput_errors,
            "latency_us": self.latency,
            "latency_requests": self.latency_requests,
            "latency_errors": self.latency_errors,
            "proxy_peak_rss_kib": self.peak_rss_kib,
            "proxy_cpu_us_per_request": self.cpu_us_per_request,
            "spans_exported": self.spans_exported,
            "spans_dropped": self.spans_dropped,
        })
    }
}

/// Processes of one path (proxies or nginx), killed on drop.
struct Fleet {
    children: Vec<Child>,
    admins: Vec<SocketAddr>,
    /// nginx: the master's children are the workers.
    include_children: bool,
}

impl Fleet {
    fn none() -> Fleet {
        Fleet {
            children: Vec::new(),
            admins: Vec::new(),
            include_children: false,
        }
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for child in &self.children {
            pids.push(child.id());
            if self.include_children {
                pids.extend(child_pids(child.id()));
            }
        }
        pids
    }

    /// utime + stime of every process, in microseconds.
    fn cpu_us(&self) -> Option<f64> {
        if self.children.is_empty() {
            return None;
        }
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut total = 0.0;
        for pid in self.pids() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            total += (utime + stime) / ticks * 1e6;
        }
        Some(total)
    }

    /// The largest VmHWM among the processes.
    fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib_max("VmHWM:")
    }

    /// The largest VmRSS among the processes (for nginx, its worker).
    fn rss_kib(&self) -> Option<u64> {
        self.status_kib_max("VmRSS:")
    }

    /// The largest value of a `/proc/<pid>/status` field in kB (`VmHWM:`, `VmRSS:`).
    fn status_kib_max(&self, field: &str) -> Option<u64> {
        self.pids()
            .into_iter()
            .filter_map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .max()
    }

    /// Open descriptors summed over the processes.
    fn open_fds(&self) -> Option<u64> {
        let counts: Vec<u64> = self
            .pids()
            .into_iter()
            .filter_map(|pid| {
                let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
                Some(dir.count() as u64)
            })
            .collect();
        (!counts.is_empty()).then(|| counts.iter().sum())
    }

    /// Sums a counter family (`spans_exported`, `spans_dropped`) over every proxy's `/metrics`.
    fn metric_sum(&self, family: &str) -> Option<f64> {
        if self.admins.is_empty() {
            return None;
        }
        let mut total = 0.0;
        for admin in &self.admins {
            let text = http_get(*admin, "/metrics").ok()?;
            total += text
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains(family))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        Some(total)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // nginx workers outlive a SIGKILLed master: kill the workers by pid first.
        let workers: Vec<u32> = if self.include_children {
            self.children
                .iter()
                .flat_map(|c| child_pids(c.id()))
                .collect()
        } else {
            Vec::new()
        };
        for worker in workers {
            if let Ok(pid) = libc::pid_t::try_from(worker) {
                // SAFETY: plain syscall on a pid this benchmark's nginx master forked.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn child_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn run_path(
    settings: &Settings,
    tools: &Tools,
    proxy: &ProxyCommand,
    upstream: SocketAddr,
    sink: SocketAddr,
    path: PathKind,
    protocol: Protocol,
) -> Result<PathResult, String> {
    let (fleet, target) = start_path(tools, proxy, upstream, sink, path, protocol)?;
    // Warm up connections and pools.
    tools.throughput(&target, protocol, settings.concurrency, 1)?;
    let cpu_before = fleet.cpu_us();
    let (throughput_rps, requests, throughput_errors) = tools.throughput(
        &target,
        protocol,
        settings.concurrency,
        settings.throughput_secs,
    )?;
    let cpu_after = fleet.cpu_us();
    let cpu_us_per_request = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if requests > 0 => Some((after - before) / requests as f64),
        _ => None,
    };
    let (latency, latency_requests, latency_errors) =
        tools.latency(&target, protocol, settings.rate, settings.latency_secs)?;
    // Let the exporters send their last batches before counting.
    if path.exports() {
        std::thread::sleep(Duration::from_millis(1500));
    }
    Ok(PathResult {
        path,
        protocol,
        throughput_rps,
        throughput_errors,
        latency,
        latency_requests,
        latency_errors,
        peak_rss_kib: fleet.peak_rss_kib(),
        cpu_us_per_request,
        spans_exported: fleet.metric_sum("spans_exported"),
        spans_dropped: fleet.metric_sum("spans_dropped"),
    })
}

fn start_path(
    tools: &Tools,
    proxy: &ProxyCommand,
    upstream: SocketAddr,
    sink: SocketAddr,
    path: PathKind,
    protocol: Protocol,
) -> Result<(Fleet, Target), String> {
    let mut fleet = Fleet::none();
    let target = match path {
        PathKind::Direct => Target {
            connect: upstream,
            authority: upstream,
        },
        PathKind::ProxyTracingOff | PathKind::ProxySampled | PathKind::ProxySampledGrpc => {
            let export = match path {
                PathKind::ProxySampled => Export::Http,
                PathKind::ProxySampledGrpc => Export::Grpc,
                _ => Export::Off,
            };
            let (child, ports) = spawn_proxy(proxy, upstream, sink, export)?;
            fleet.children.push(child);
            fleet.admins.push(ports.admin);
            Target {
                connect: ports.inbound,
                authority: ports.inbound,
            }
        }
        PathKind::TwoProxies => {
            let (server_side, server_ports) = spawn_proxy(proxy, upstream, sink, Export::Http)?;
            fleet.children.push(server_side);
            fleet.admins.push(server_ports.admin);
            let (client_side, client_ports) = spawn_proxy(proxy, upstream, sink, Export::Http)?;
            fleet.children.push(client_side);
            fleet.admins.push(client_ports.admin);
            // The app talks to its outbound proxy, naming the peer's inbound listener.
            Target {
                connect: client_ports.outbound,
                authority: server_ports.inbound,
            }
        }
        PathKind::Nginx => {
            let nginx = tools.nginx.as_ref().ok_or("nginx not installed")?;
            let (child, addr) = spawn_nginx(nginx, upstream, protocol)?;
            fleet.children.push(child);
            fleet.include_children = true;
            Target {
                connect: addr,
                authority: addr,
            }
        }
    };
    wait_for_listener(target.connect)?;
    Ok((fleet, target))
}

/// What a proxy of the benchmark does with its spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Export {
    /// `MESHTRACE_TRACING=off` (propagation only).
    Off,
    /// 100% sampled, OTLP/HTTP protobuf to the sink.
    Http,
    /// 100% sampled, OTLP/gRPC to the sink.
    Grpc,
}

struct ProxyPorts {
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
}

fn spawn_proxy(
    proxy: &ProxyCommand,
    upstream: SocketAddr,
    sink: SocketAddr,
    export: Export,
) -> Result<(Child, ProxyPorts), String> {
    let ports = ProxyPorts {
        inbound: free_port()?,
        outbound: free_port()?,
        admin: free_port()?,
    };
    let mut command = Command::new("taskset");
    command
        .arg("-c")
        .arg(PROXY_CPU.to_string())
        .arg(&proxy.bin)
        .env_clear()
        .env("MESHTRACE_INBOUND_ADDR", ports.inbound.to_string())
        .env("MESHTRACE_OUTBOUND_ADDR", ports.outbound.to_string())
        .env("MESHTRACE_ADMIN_ADDR", ports.admin.to_string())
        .env("MESHTRACE_INBOUND_TARGET", upstream.to_string())
        .env("MESHTRACE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // Context inference's settings pass through from the benchmark's environment, for on/off
    // comparisons; the proxy's defaults (`infer`, `x-request-id`) otherwise.
    for name in ["MESHTRACE_CONTEXT_INFERENCE", "MESHTRACE_REQUEST_ID_HEADER"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    match export {
        Export::Off => {
            command.env("MESHTRACE_TRACING", "off");
        }
        Export::Http | Export::Grpc => {
            let protocol = if export == Export::Grpc {
                "grpc"
            } else {
                "http/protobuf"
            };
            command
                .env("MESHTRACE_SAMPLE_RATE", "1")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{sink}"))
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol);
        }
    }
    command.envs(proxy.env.iter().map(|(key, value)| (key, value)));
    let child = command
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", proxy.bin.display()))?;
    wait_for_listener(ports.admin)?;
    wait_for_listener(ports.inbound)?;
    wait_for_listener(ports.outbound)?;
    Ok((child, ports))
}

fn spawn_nginx(
    nginx: &Path,
    upstream: SocketAddr,
    protocol: Protocol,
) -> Result<(Child, SocketAddr), String> {
    let listen = free_port()?;
    let dir = std::env::temp_dir().join(format!("meshtrace-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
    let http2 = if protocol == Protocol::H2c {
        " http2"
    } else {
        ""
    };
    let config = format!(
        "worker_processes 1;\nerror_log {dir}/logs/error.log warn;\npid {dir}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           keepalive_requests 1000000;\n\
           upstream app {{ server {upstream}; keepalive 128; }}\n\
           server {{\n    listen {listen}{http2};\n    location / {{\n      proxy_pass http://app;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
        dir = dir.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, config).map_err(|e| e.to_string())?;
    let child = Command::new("taskset")
        .arg("-c")
        .arg(PROXY_CPU.to_string())
        .arg(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf_path)
        .arg("-g")
        .arg("daemon off; master_process on;")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn nginx: {e}"))?;
    Ok((child, listen))
}

/// Concurrent HTTP/1.1 connections of the memory phase.
const MANY_CONNECTIONS: u32 = 1000;
/// When RSS is sampled again after the load generator exits and its connections close
/// (`--after-load 1,5,15,60` changes it).
const AFTER_LOAD_SECS: [u64; 3] = [1, 5, 15];

/// Memory of one path (a proxy or nginx) around `wrk -c1000`, from `/proc/<pid>/status`.
struct MemoryResult {
    path: PathKind,
    /// VmRSS after start-up and a warm-up request.
    idle_kib: Option<u64>,
    /// VmHWM after the load.
    peak_kib: Option<u64>,
    /// (seconds after the load ended, VmRSS, open descriptors).
    after: Vec<(u64, Option<u64>, Option<u64>)>,
    throughput_rps: f64,
    errors: u64,
}

impl MemoryResult {
    fn to_json(&self) -> Value {
        json!({
            "path": self.path.name(),
            "connections": MANY_CONNECTIONS,
            "idle_rss_kib": self.idle_kib,
            "peak_rss_kib": self.peak_kib,
            "after_load": self.after.iter().map(|(secs, rss, fds)| json!({
                "secs": secs,
                "rss_kib": rss,
                "open_fds": fds,
            })).collect::<Vec<_>>(),
            "throughput_rps": self.throughput_rps,
            "errors": self.errors,
        })
    }
}

/// The 1,000-connection phase, for one proxy (100% sampled, exporting) and for nginx.
fn memory_phase(
    settings: &Settings,
    tools: &Tools,
    proxy: &ProxyCommand,
    upstream: SocketAddr,
    sink: SocketAddr,
) -> Vec<MemoryResult> {
    let mut out = Vec::new();
    for path in [PathKind::ProxySampled, PathKind::Nginx] {
        if path == PathKind::Nginx && tools.nginx.is_none() {
            eprintln!("nginx not installed (apt-get install nginx-light): no nginx memory row");
            continue;
        }
        match memory_with_many_connections(settings, tools, proxy, upstream, sink, path) {
            Ok(result) => out.push(result),
            Err(error) => eprintln!("{} with 1,000 connections: FAILED: {error}", path.name()),
        }
    }
    out
}

/// RSS of one path idle, its peak under `wrk -c1000`, and RSS at +1/+5/+15 s after wrk exits
/// (its connections closed).
fn memory_with_many_connections(
    settings: &Settings,
    tools: &Tools,
    proxy: &ProxyCommand,
    upstream: SocketAddr,
    sink: SocketAddr,
    path: PathKind,
) -> Result<MemoryResult, String> {
    let (fleet, target) = start_path(tools, proxy, upstream, sink, path, Protocol::Http1)?;
    // One request through the path (its upstream connection, and a span for the exporter),
    // then time for the export and start-up to settle.
    let warm_up = http_get(target.connect, "/")?;
    if !warm_up.starts_with("HTTP/1.1 200") {
        return Err(format!("warm-up request: {:?}", warm_up.lines().next()));
    }
    std::thread::sleep(Duration::from_secs(2));
    let idle_kib = fleet.rss_kib();
    let secs = if settings.quick { 2 } else { 4 };
    let (throughput_rps, _, errors) =
        tools.throughput(&target, Protocol::Http1, MANY_CONNECTIONS, secs)?;
    let ended = Instant::now();
    let mut after = Vec::new();
    for &secs in &settings.after_load_secs {
        let at = ended + Duration::from_secs(secs);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        after.push((secs, fleet.rss_kib(), fleet.open_fds()));
    }
    // Read last: closing the connections can still raise RSS after the load.
    let peak_kib = fleet.peak_rss_kib();
    let kib = |v: Option<u64>| v.map_or("?".to_string(), |k| k.to_string());
    eprintln!(
        "{} with 1,000 connections: idle {} KiB, peak {} KiB, after {:?} ({throughput_rps:.0} req/s, {errors} errors)",
        path.name(),
        kib(idle_kib),
        kib(peak_kib),
        after,
    );
    Ok(MemoryResult {
        path,
        idle_kib,
        peak_kib,
        after,
        throughput_rps,
        errors,
    })
}

fn memory_markdown(memory: &[MemoryResult], after_load_secs: &[u64]) -> String {
    let mib = |v: Option<u64>| v.map_or("–".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
    let mut out = format!(
        "\n\n{MANY_CONNECTIONS} concurrent HTTP/1.1 connections (`wrk -c{MANY_CONNECTIONS}`); RSS in MiB \
         (proxy: 100% sampled, exporting; nginx: its worker); +N s = after wrk exits and its \
         connections close\n\n| path | idle RSS | peak RSS (VmHWM) |"
    );
    for secs in after_load_secs {
        out.push_str(&format!(" +{secs} s RSS |"));
    }
    let last = after_load_secs.last().copied().unwrap_or(0);
    out.push_str(&format!(
        " fds at +{last} s | req/s | errors |\n|---|---:|---:|"
    ));
    out.push_str(&"---:|".repeat(after_load_secs.len() + 3));
    out.push('\n');
    for m in memory {
        out.push_str(&format!(
            "| {} | {} | {} |",
            m.path.name(),
            mib(m.idle_kib),
            mib(m.peak_kib)
        ));
        for (_, rss, _) in &m.after {
            out.push_str(&format!(" {} |", mib(*rss)));
        }
        let fds = m.after.last().and_then(|(_, _, fds)| *fds);
        out.push_str(&format!(
            " {} | {:.0} | {} |\n",
            fds.map_or("–".to_string(), |n| n.to_string()),
            m.throughput_rps,
            m.errors
        ));
    }
    out
}

#[derive(Debug)]
struct Tools {
    wrk: Option<PathBuf>,
    h2load: Option<PathBuf>,
    oha: Option<PathBuf>,
    nginx: Option<PathBuf>,
}

impl Tools {
    fn find() -> Tools {
        let oha = which("oha").or_else(|| {
            let home = std::env::var_os("HOME")?;
            let path = PathBuf::from(home).join(".cargo/bin/oha");
            path.exists().then_some(path)
        });
        Tools {
            wrk: which("wrk"),
            h2load: which("h2load"),
            oha,
            nginx: which("nginx").or_else(|| {
                let path = PathBuf::from("/usr/sbin/nginx");
                path.exists().then_some(path)
            }),
        }
    }

    fn latency_tool_name(&self) -> &'static str {
        if self.oha.is_some() {
            "oha -q RATE --latency-correction (open loop, coordinated omission corrected)"
        } else {
            "h2load --rps (open loop per connection: 50 connections at RATE/50 each, per-request log)"
        }
    }

    /// Closed-loop maximum throughput at fixed concurrency: (requests/s, requests, errors).
    fn throughput(
        &self,
        target: &Target,
        protocol: Protocol,
        concurrency: u32,
        secs: u64,
    ) -> Result<(f64, u64, u64), String> {
        match protocol {
            Protocol::Http1 => {
                let wrk = self
                    .wrk
                    .as_ref()
                    .ok_or("wrk not installed (apt-get install wrk)")?;
                let output = run(Command::new(wrk)
                    .arg("-t1")
                    .arg(format!("-c{concurrency}"))
                    .arg(format!("-d{secs}s"))
                    .arg("-H")
                    .arg(format!("Host: {}", target.authority))
                    .arg(format!("http://{}/", target.connect)))?;
                let rps = find_number(&output, "Requests/sec:").ok_or("wrk: no Requests/sec")?;
                let requests = output
                    .lines()
                    .find(|l| l.contains("requests in"))
                    .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
                let errors = find_number(&output, "Non-2xx or 3xx responses:").unwrap_or(0.0)
                    as u64
                    + output
                        .lines()
                        .find(|l| l.contains("Socket errors"))
                        .map(|l| {
                            l.split(|c: char| !c.is_ascii_digit())
                                .filter_map(|n| n.parse::<u64>().ok())
                                .sum()
                        })
                        .unwrap_or(0);
                Ok((rps, requests, errors))
            }
            Protocol::H2c => {
                let h2load = self
                    .h2load
                    .as_ref()
                    .ok_or("h2load not installed (apt-get install nghttp2-client)")?;
                // 10 connections × 5 concurrent streams = 50 requests in flight.
                let connections = (concurrency / 5).max(1);
                let output = run(Command::new(h2load)
                    .arg("-t1")
                    .arg(format!("-c{connections}"))
                    .arg("-m5")
                    .arg(format!("-D{secs}"))
                    .arg(format!("--connect-to={}", target.connect))
                    .arg(format!("http://{}/", target.authority)))?;
                let (rps, requests, errors) = parse_h2load_summary(&output)?;
                Ok((rps, requests, errors))
            }
        }
    }

    /// Open-loop latency at a fixed rate: (percentiles in µs, requests, errors).
    fn latency(
        &self,
        target: &Target,
        protocol: Protocol,
        rate: u32,
        secs: u64,
    ) -> Result<(BTreeMap<&'static str, f64>, u64, u64), String> {
        if let Some(oha) = &self.oha {
            return oha_latency(oha, target, protocol, rate, secs);
        }
        let h2load = self
            .h2load
            .as_ref()
            .ok_or("h2load not installed (apt-get install nghttp2-client)")?;
        let connections = 50u32;
        let log = std::env::temp_dir().join(format!("meshtrace-bench-{}.log", std::process::id()));
        let mut command = Command::new(h2load);
        command
            .arg("-t1")
            .arg(format!("-c{connections}"))
            .arg("-m1")
            .arg(format!("--rps={}", (rate / connections).max(1)))
            .arg(format!("-D{secs}"))
            .arg(format!("--log-file={}", log.display()))
            .arg(format!("--connect-to={}", target.connect))
            .arg(format!("http://{}/", target.authority));
        if protocol == Protocol::Http1 {
            command.arg("--h1");
        }
        let output = run(&mut command)?;
        let (_, _, errors) = parse_h2load_summary(&output)?;
        let text = std::fs::read_to_string(&log).map_err(|e| format!("h2load log: {e}"))?;
        let _ = std::fs::remove_file(&log);
        let mut micros: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let mut cols = l.split('\t');
                let _start = cols.next()?;
                let status: u32 = cols.next()?.parse().ok()?;
                let us: f64 = cols.next()?.trim().parse().ok()?;
                (status == 200).then_some(us)
            })
            .collect();
        micros.sort_by(|a, b| a.total_cmp(b));
        Ok((percentiles(&micros), micros.len() as u64, errors))
    }
}

fn oha_latency(
    oha: &Path,
    target: &Target,
    protocol: Protocol,
    rate: u32,
    secs: u64,
) -> Result<(BTreeMap<&'static str, f64>, u64, u64), String> {
    let mut command = Command::new(oha);
    command
        .arg("--no-tui")
        .arg("--output-format")
        .arg("json")
        .arg("-z")
        .arg(format!("{secs}s"))
        .arg("-q")
        .arg(rate.to_string())
        .arg("--latency-correction")
        .arg("-c")
        .arg("50")
        .arg("--connect-to")
        .arg(format!(
            "{}:{}:{}:{}",
            target.authority.ip(),
            target.authority.port(),
            target.connect.ip(),
            target.connect.port()
        ))
        .arg(format!("http://{}/", target.authority));
    if protocol == Protocol::H2c {
        command.arg("--http2");
    }
    let output = run(&mut command)?;
    let report: Value = serde_json::from_str(&output).map_err(|e| format!("oha json: {e}"))?;
    let seconds_to_us = |v: &Value| v.as_f64().map(|s| s * 1e6);
    let pct = &report["latencyPercentiles"];
    let mut latency = BTreeMap::new();
    for (key, name) in [("p50", "p50"), ("p90", "p90"), ("p99", "p99")] {
        if let Some(v) = seconds_to_us(&pct[key]) {
            latency.insert(name, v);
        }
    }
    if let Some(v) = seconds_to_us(&report["summary"]["slowest"]) {
        latency.insert("max", v);
    }
    let ok = report["statusCodeDistribution"]["200"]
        .as_u64()
        .unwrap_or(0);
    // Requests still in flight when `-z` runs out are cancelled by oha itself and reported as
    // "aborted due to deadline": not failures of the path under test.
    let errors: u64 = report["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(kind, _)| !kind.contains("aborted due to deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    Ok((latency, ok, errors))
}

fn percentiles(sorted: &[f64]) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    if sorted.is_empty() {
        return out;
    }
    let at =
        |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
    out.insert("p50", at(0.50));
    out.insert("p90", at(0.90));
    out.insert("p99", at(0.99));
    out.insert("max", sorted[sorted.len() - 1]);
    out
}

/// `finished in 3.00s, 41234.00 req/s, ...` and `requests: N total, N started, N done,
/// N succeeded, N failed, N errored, N timeout`.
fn parse_h2load_summary(output: &str) -> Result<(f64, u64, u64), String> {
    let rps = output
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.trim_end_matches(" req/s").parse::<f64>().ok())
        .ok_or_else(|| format!("h2load: no summary in {output:?}"))?;
    let counts: Vec<u64> = output
        .lines()
        .find(|l| l.starts_with("requests:"))
        .map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let succeeded = counts.get(3).copied().unwrap_or(0);
    let errors = counts.get(4).copied().unwrap_or(0) + counts.get(5).copied().unwrap_or(0);
    Ok((rps, succeeded, errors))
}

fn find_number(output: &str, label: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

fn free_port() -> Result<SocketAddr, String> {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())
}

fn wait_for_listener(addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if StdStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on {addr} after 20s"))
}

/// A plain HTTP/1.1 GET over a fresh connection, for the admin `/metrics`.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::Read;
    let mut stream =
        StdStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(body)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it for the calling thread,
    // and threads spawned afterwards (runtime workers, children) inherit the mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("cannot pin to CPU {cpu}; running unpinned");
        }
    }
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cpu": cpu,
        // Online CPUs of the machine (this process itself is pinned to one).
        "cpus": unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
        "kernel": kernel.trim(),
        "loadavg_at_end": load.trim(),
    })
}

async fn serve<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A backlog of 4,096 (tokio's `bind` uses 1,024): when a proxy opens 1,000 upstream
    // connections at once, a full accept queue would drop SYNs, and the retransmission after 1 s
    // would meet the proxy's 1 s connect timeout (a 504 counted against the proxy).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let listener = socket.listen(4096).expect("listen");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(handler))
                    .await;
            });
        }
    });
    addr
}

/// The same small static response for every path.
async fn upstream_service(
    _request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"hello from upstream\n",
    ))))
}

/// The application of a meshed pod, for `--serve --app-via ADDR` (`ADDR`: the outbound listener
/// of the proxy in front of it): for each request it serves, it calls the upstream once through
/// that proxy, so each request crosses the proxy twice, inbound and outbound, which is what
/// context inference (the `correlate` step) works on. One app forwards no header of the request
/// it serves, the other only `x-request-id`; neither forwards trace context.
struct App {
    /// `http://{upstream}/`: the authority the proxy's explicit outbound mode forwards to.
    upstream: http::Uri,
    http1: AppClient,
    /// The app calls out with HTTP/2 when it was called with HTTP/2.
    h2c: AppClient,
}

type AppClient = hyper_util::client::legacy::Client<Via, http_body_util::Empty<Bytes>>;

static APP: std::sync::OnceLock<App> = std::sync::OnceLock::new();

/// Starts the two apps when `--app-via ADDR` is given; returns their `app ...` lines for the
/// `--serve` banner (empty without it).
async fn serve_apps(upstream: SocketAddr) -> String {
    let args: Vec<String> = std::env::args().collect();
    let Some(via) = args
        .iter()
        .position(|a| a == "--app-via")
        .and_then(|i| args.get(i + 1))
    else {
        return String::new();
    };
    let via: SocketAddr = via
        .parse()
        .expect("--app-via: an address such as 127.0.0.1:4140");
    let builder = || hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    let app = App {
        upstream: format!("http://{upstream}/").parse().expect("upstream URI"),
        http1: builder().build(Via(via)),
        h2c: builder().http2_only(true).build(Via(via)),
    };
    if APP.set(app).is_err() {
        panic!("apps started twice");
    }
    let nothing = serve(app_forwarding_nothing).await;
    let request_id = serve(app_forwarding_request_id).await;
    format!("app forwarding nothing {nothing}\napp forwarding x-request-id {request_id}\n")
}

async fn app_forwarding_nothing(
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    app_call(request, false).await
}

async fn app_forwarding_request_id(
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    app_call(request, true).await
}

/// Serves a request by calling the upstream through the proxy's outbound listener and answering
/// with what it answered (502 if the call failed).
async fn app_call(
    request: Request<Incoming>,
    forward_request_id: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(app) = APP.get() else {
        return Ok(app_error("app not configured"));
    };
    let (client, version) = if request.version() == http::Version::HTTP_2 {
        (&app.h2c, http::Version::HTTP_2)
    } else {
        (&app.http1, http::Version::HTTP_11)
    };
    let mut call = Request::new(http_body_util::Empty::new());
    *call.uri_mut() = app.upstream.clone();
    *call.version_mut() = version;
    if forward_request_id {
        if let Some(id) = request.headers().get("x-request-id") {
            call.headers_mut().insert("x-request-id", id.clone());
        }
    }
    let response = match client.request(call).await {
        Ok(response) => response,
        Err(error) => return Ok(app_error(&error.to_string())),
    };
    let (parts, body) = response.into_parts();
    match body.collect().await {
        Ok(body) => Ok(Response::from_parts(parts, Full::new(body.to_bytes()))),
        Err(error) => Ok(app_error(&error.to_string())),
    }
}

fn app_error(message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("app: {message}\n"))));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// The app's connector: every connection goes to the proxy's outbound listener, whatever the
/// request's authority (which names the upstream, for the proxy's explicit mode).
#[derive(Clone)]
struct Via(SocketAddr);

impl tower::Service<http::Uri> for Via {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let via = self.0;
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(via).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// What the sink answers with: a body, and for gRPC its trailers.
type SinkBody =
    WithTrailers<Full<Bytes>, std::future::Ready<Option<Result<HeaderMap, Infallible>>>>;

/// Accepts OTLP exports, OTLP/HTTP protobuf or OTLP/gRPC, and answers that all were accepted
/// (an empty response message) without decoding them: the sink shares the load generator's CPU.
async fn otlp_sink_service(request: Request<Incoming>) -> Result<Response<SinkBody>, Infallible> {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    let _ = request.into_body().collect().await;
    let (content_type, body, trailers) = if grpc {
        // One uncompressed gRPC message of length 0: an empty ExportTraceServiceResponse.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        (
            "application/grpc",
            Bytes::from_static(&[0, 0, 0, 0, 0]),
            Some(Ok(trailers)),
        )
    } else {
        ("application/x-protobuf", Bytes::new(), None)
    };
    let mut response = Response::new(Full::new(body).with_trailers(std::future::ready(trailers)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    Ok(response)
}

fn markdown(results: &[PathResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| protocol | path | throughput req/s | × direct | p50 µs | p90 µs | p99 µs | max µs | added p50 µs | added p99 µs | proxy peak RSS MiB | proxy CPU µs/req | spans exported | spans dropped | errors |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let fmt = |v: Option<f64>, digits: usize| match v {
        Some(v) => format!("{v:.digits$}"),
        None => "–".to_string(),
    };
    for r in results {
        let direct = results
            .iter()
            .find(|d| d.protocol == r.protocol && d.path == PathKind::Direct);
        let ratio = direct.map(|d| r.throughput_rps / d.throughput_rps);
        let added = |q: &str| Some(r.latency.get(q)? - direct?.latency.get(q)?);
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.protocol.name(),
            r.path.name(),
            r.throughput_rps,
            fmt(ratio, 2),
            fmt(r.latency.get("p50").copied(), 0),
            fmt(r.latency.get("p90").copied(), 0),
            fmt(r.latency.get("p99").copied(), 0),
            fmt(r.latency.get("max").copied(), 0),
            fmt(added("p50"), 0),
            fmt(added("p99"), 0),
            fmt(r.peak_rss_kib.map(|k| k as f64 / 1024.0), 1),
            fmt(r.cpu_us_per_request, 1),
            fmt(r.spans_exported, 0),
            fmt(r.spans_dropped, 0),
            r.throughput_errors + r.latency_errors,
        ));
    }
    for protocol in [Protocol::Http1, Protocol::H2c] {
        let rps = |path: PathKind| {
            results
                .iter()
                .find(|r| r.protocol == protocol && r.path == path)
                .map(|r| r.throughput_rps)
        };
        let cpu = |path: PathKind| {
            results
                .iter()
                .find(|r| r.protocol == protocol && r.path == path)
                .and_then(|r| r.cpu_us_per_request)
        };
        if let (Some(sampled), Some(off)) =
            (rps(PathKind::ProxySampled), rps(PathKind::ProxyTracingOff))
        {
            out.push_str(&format!(
                "\n{}: sampled ÷ tracing-off throughput = {:.2}",
                protocol.name(),
                sampled / off
            ));
            // The same ratio from CPU time, which VM speed drifts blur less.
            if let (Some(sampled), Some(off)) =
                (cpu(PathKind::ProxySampled), cpu(PathKind::ProxyTracingOff))
            {
                out.push_str(&format!(" (from CPU per request: {:.2})", off / sampled));
            }
        }
        if let (Some(sampled), Some(nginx)) = (rps(PathKind::ProxySampled), rps(PathKind::Nginx)) {
            out.push_str(&format!(
                "; sampled proxy ÷ nginx throughput = {:.2}",
                sampled / nginx
            ));
        }
    }
    out
}
