//! The proxy under hostile clients: resident memory and descriptors of one proxy (release
//! binary, fixed-target inbound, defaults otherwise) while clients hold connections open
//! without finishing requests. Not a test: it reports numbers (benches/README.md).
//!
//! Scenarios, each against a fresh proxy:
//! - `trickle`: 3,000 connections that started a request and send one header byte every 5 s;
//! - `big-heads`: 1,000 connections that each send 320 KB of header lines and never finish;
//! - `silent`: 3,000 connections that send nothing (past the detect timeout, 2 s here, they
//!   become opaque tunnels to the upstream);
//! - `slow-clients`: under `prlimit --nofile=1024`, 1,500 trickling clients while 500 normal
//!   requests (fresh connections, 10 at a time) run; reports how many succeeded.
//!
//! `cargo build --release -p meshtrace-proxy && cargo bench -p meshtrace-benches --bench
//! overload` (`MESHTRACE_PROXY_BIN` for another binary; `-- --only NAME` for one scenario).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;

use meshtrace_benches::proxy_binary;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshtrace_tests::upstream::HttpUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEAD_START: &[u8] = b"GET / HTTP/1.1\r\nHost: app\r\nX-Trickle: ";

struct Proxy {
    child: Child,
    inbound: SocketAddr,
}

impl Proxy {
    fn start(bin: &Path, upstream: SocketAddr, nofile: Option<u32>) -> Proxy {
        let mut command = match nofile {
            Some(n) => {
                let mut command = Command::new("prlimit");
                command.arg(format!("--nofile={n}:{n}")).arg(bin);
                command
            }
            None => Command::new(bin),
        };
        let mut child = command
            .env("MESHTRACE_INBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_INBOUND_TARGET", upstream.to_string())
            .env("MESHTRACE_DETECT_TIMEOUT", "2s")
            .env("MESHTRACE_LOG", "warn,meshtrace_proxy::app=info")
            .env("MESHTRACE_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the proxy");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let inbound = loop {
            let line = lines.next().expect("proxy exited").expect("stderr");
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if log["fields"]["message"] == "listeners bound" {
                break log["fields"]["inbound_addr"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
            }
        };
        // Keep draining the pipe so the proxy never blocks on logging.
        std::thread::spawn(move || for _ in lines {});
        Proxy { child, inbound }
    }

    /// (VmRSS, VmHWM) in KiB and open descriptors.
    fn usage(&self) -> (u64, u64, usize) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0);
        (field("VmRSS:"), field("VmHWM:"), fds)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `n` connections, each sending `first` (paced so the accept queue never overflows).
async fn open(proxy: SocketAddr, n: usize, first: &'static [u8]) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let Ok(mut stream) = TcpStream::connect(proxy).await else {
            continue;
        };
        if !first.is_empty() {
            let _ = stream.write_all(first).await;
        }
        streams.push(stream);
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    streams
}

/// Sends one byte on each open stream every 5 s, for `rounds` rounds; returns those still open.
async fn trickle(mut streams: Vec<TcpStream>, rounds: usize) -> Vec<TcpStream> {
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut open = Vec::with_capacity(streams.len());
        for mut stream in streams {
            if stream.write_all(b"x").await.is_ok() {
                open.push(stream);
            }
        }
        streams = open;
    }
    streams
}

/// One GET on a fresh connection; true on a 200.
async fn normal_request(proxy: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(proxy).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(response.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

struct Row {
    scenario: &'static str,
    clients: usize,
    open_after: usize,
    rss_kib: u64,
    hwm_kib: u64,
    fds: usize,
    note: String,
}

async fn trickling_heads(bin: &Path, upstream: SocketAddr) -> Row {
    let proxy = Proxy::start(bin, upstream, None);
    let streams = open(proxy.inbound, 3000, HEAD_START).await;
    let streams = trickle(streams, 3).await;
    let (rss, hwm, fds) = proxy.usage();
    Row {
        scenario: "trickle: 3,000 heads, 1 byte / 5 s, after 15 s",
        clients: 3000,
        open_after: streams.len(),
        rss_kib: rss,
        hwm_kib: hwm,
        fds,
        note: String::new(),
    }
}

async fn big_heads(bin: &Path, upstream: SocketAddr) -> Row {
    static PAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let pad = PAD.get_or_init(|| {
        let mut head = HEAD_START.to_vec();
        head.extend_from_slice(b"1\r\n");
        let mut i = 0;
        while head.len() < 320_000 {
            head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(100)).as_bytes());
            i += 1;
        }
        head
    });
    let proxy = Proxy::start(bin, upstream, None);
    let mut streams = open(proxy.inbound, 1000, b"").await;
    let mut sent = 0;
    for stream in &mut streams {
        if tokio::time::timeout(Duration::from_secs(2), stream.write_all(pad))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            sent += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm, fds) = proxy.usage();
    Row {
        scenario: "big heads: 1,000 × 320 KB, never finished",
        clients: 1000,
        open_after: streams.len(),
        rss_kib: rss,
        hwm_kib: hwm,
        fds,
        note: format!("{sent} heads written in full"),
    }
}

async fn silent(bin: &Path, upstream: SocketAddr) -> Row {
    let proxy = Proxy::start(bin, upstream, None);
    let streams = open(proxy.inbound, 3000, b"").await;
    // Past the 2 s detect timeout: opaque tunnels, each with an upstream connection.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (rss, hwm, fds) = proxy.usage();
    Row {
        scenario: "silent: 3,000 connections, past the detect timeout",
        clients: 3000,
        open_after: streams.len(),
        rss_kib: rss,
        hwm_kib: hwm,
        fds,
        note: String::new(),
    }
}

async fn slow_clients(bin: &Path, upstream: SocketAddr) -> Row {
    let proxy = Proxy::start(bin, upstream, Some(1024));
    let inbound = proxy.inbound;
    let slow = tokio::spawn(async move {
        let streams = open(inbound, 1500, HEAD_START).await;
        trickle(streams, 2).await.len()
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut ok = 0;
    for _ in 0..50 {
        let batch: Vec<_> = (0..10)
            .map(|_| tokio::spawn(normal_request(inbound)))
            .collect();
        for request in batch {
            ok += usize::from(request.await.unwrap_or(false));
        }
    }
    let elapsed = started.elapsed();
    let (rss, hwm, fds) = proxy.usage();
    let still_open = slow.await.unwrap_or(0);
    Row {
        scenario: "slow clients: 1,500 trickling at nofile=1024 + 500 normal requests",
        clients: 1500,
        open_after: still_open,
        rss_kib: rss,
        hwm_kib: hwm,
        fds,
        note: format!(
            "{ok}/500 normal requests got 200 in {:.1} s",
            elapsed.as_secs_f64()
        ),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let bin = proxy_binary();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let upstream = HttpUpstream::start().await;
        let mut rows = Vec::new();
        let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
        if wanted("trickle") {
            rows.push(trickling_heads(&bin, upstream.addr()).await);
        }
        if wanted("big-heads") {
            rows.push(big_heads(&bin, upstream.addr()).await);
        }
        if wanted("silent") {
            rows.push(silent(&bin, upstream.addr()).await);
        }
        if wanted("slow-clients") {
            rows.push(slow_clients(&bin, upstream.addr()).await);
        }
        println!("| scenario | clients | client conns still open | RSS | peak RSS (VmHWM) | proxy fds | notes |");
        println!("|---|---|---|---|---|---|---|");
        for row in rows {
            println!(
                "| {} | {} | {} | {:.1} MiB | {:.1} MiB | {} | {} |",
                row.scenario,
                row.clients,
                row.open_after,
                row.rss_kib as f64 / 1024.0,
                row.hwm_kib as f64 / 1024.0,
                row.fds,
                row.note
            );
        }
    });
}
