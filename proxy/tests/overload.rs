//! Admission control under overload: the connection cap sheds idle connections (silent opaque
//! tunnels first, then the oldest without a request in flight) to admit new clients; at the
//! process's fd limit (the real binary under `prlimit`) the proxy sheds the same way, keeps
//! serving, and backs off its accept loop with one warning per interval.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshtrace_proxy::config::Config;
use meshtrace_tests::client::RawClient;
use meshtrace_tests::upstream::HttpUpstream;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n";

/// Whether the proxy closed `stream` (EOF or reset) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn at_the_cap_silent_tunnels_then_the_oldest_idle_connections_are_shed() {
    let upstream = HttpUpstream::start().await;
    let proxy = common::start(Config {
        max_connections: 4,
        detect_timeout: Duration::from_millis(300),
        ..common::fixed_target(upstream.addr())
    })
    .await;

    // 1: a request in flight (the upstream never answers): never shed.
    let mut busy = TcpStream::connect(proxy.inbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut busy, b"GET /hang HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    // 2: idle between requests, the oldest idle connection.
    let mut idle = RawClient::connect(proxy.inbound).await;
    idle.send(GET).await;
    assert_eq!(idle.read_response().await.status(), 200);
    // 3: silent until the detect timeout, then an opaque tunnel: shed first.
    let mut silent = TcpStream::connect(proxy.inbound).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // 4: still sending its head; the cap is reached.
    let mut head = TcpStream::connect(proxy.inbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut head, b"GET / HTTP/1.1\r\nHo")
        .await
        .unwrap();

    // A new client is admitted: the silent tunnel makes room, though not the oldest. It stays
    // connected, so the cap is reached again.
    let mut fresh = RawClient::connect(proxy.inbound).await;
    fresh.send(GET).await;
    assert_eq!(fresh.read_response().await.status(), 200);
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "silent tunnel shed"
    );
    // The next one: the oldest connection without a request in flight makes room (not the
    // newer idle one).
    let response = meshtrace_tests::client::exchange(proxy.inbound, GET).await;
    assert_eq!(response.status(), 200);
    let mut idle = idle.into_stream();
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)).await,
        "oldest idle shed"
    );
    assert!(
        !closed_within(&mut busy, Duration::from_millis(300)).await,
        "busy kept"
    );
    assert!(
        !closed_within(&mut head, Duration::from_millis(300)).await,
        "newer head kept"
    );

    let text = common::metrics_text(proxy.admin).await;
    let shed =
        "meshtrace_proxy_connections_shed_total{direction=\"inbound\",reason=\"max_connections\"}";
    assert_eq!(common::metric_value(&text, shed), Some(2.0), "{text}");
    drop((busy, head, fresh));
    proxy.shutdown().await;
}

/// The proxy binary under `prlimit --nofile=64:256`, with the connection cap out of the way.
struct LimitedProxy {
    child: std::process::Child,
    inbound: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl LimitedProxy {
    fn start(target: SocketAddr) -> LimitedProxy {
        let mut child = Command::new("prlimit")
            .arg("--nofile=64:256")
            .arg(env!("CARGO_BIN_EXE_meshtrace-proxy"))
            .env("MESHTRACE_INBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_INBOUND_TARGET", target.to_string())
            .env("MESHTRACE_MAX_CONNECTIONS", "100000")
            .env("MESHTRACE_LOG", "info")
            .env("MESHTRACE_LOG_FORMAT", "json")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn prlimit meshtrace-proxy");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (inbound, admin) = loop {
            let line = lines.next().expect("proxy exited early").expect("stderr");
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            logs.lock().unwrap().push(log.clone());
            if log["fields"]["message"] == "listeners bound" {
                let addr = |name: &str| log["fields"][name].as_str().unwrap().parse().unwrap();
                break (addr("inbound_addr"), addr("admin_addr"));
            }
        };
        let kept = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(log) = serde_json::from_str(&line) {
                    kept.lock().unwrap().push(log);
                }
            }
        });
        LimitedProxy {
            child,
            inbound,
            admin,
            logs,
        }
    }

    fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|log| log["fields"]["message"] == message)
            .cloned()
            .collect()
    }
}

impl Drop for LimitedProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn at_the_fd_limit_idle_connections_are_shed_and_accepting_backs_off() {
    let upstream = HttpUpstream::start().await;
    let proxy = LimitedProxy::start(upstream.addr());
    let limit = proxy.logged("file descriptor limit");
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert_eq!(limit[0]["fields"]["soft_before"], "64");
    assert_eq!(
        limit[0]["fields"]["soft"], "256",
        "raised to the hard limit"
    );

    // Far more connections than descriptors, each still sending its head.
    let mut slow = Vec::new();
    for _ in 0..400 {
        let mut stream = TcpStream::connect(proxy.inbound).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Well-behaved clients are still served.
    for _ in 0..5 {
        let response = meshtrace_tests::client::exchange(proxy.inbound, GET).await;
        assert_eq!(response.status(), 200);
    }
    let text = common::metrics_text(proxy.admin).await;
    let shed = "meshtrace_proxy_connections_shed_total{direction=\"inbound\",reason=\"fd_limit\"}";
    let shed = common::metric_value(&text, shed).unwrap_or(0.0);
    assert!(shed >= 150.0, "{text}");
    // The oldest waiting heads went first.
    assert!(closed_within(&mut slow[0], Duration::from_secs(10)).await);
    assert!(!closed_within(&mut slow[399], Duration::from_millis(200)).await);

    // Hundreds of failed accepts, one warning (per 10 s) instead of a flood.
    let warnings = proxy.logged(
        "accept failed; backing off (one warning per 10s, failures counted since the last)",
    );
    assert!(!warnings.is_empty() && warnings.len() <= 2, "{warnings:?}");
}
