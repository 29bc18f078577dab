//! The `meshtrace-proxy` binary as a child process: configured through the environment,
//! streaming large bodies in bounded memory, draining on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use meshtrace_tests::client::RawClient;
use meshtrace_tests::upstream::{drain_body, generated_body, HttpUpstream, TestBody, PATIENCE};

const ONE_GIB: u64 = 1 << 30;
/// Far below the 2 GiB streamed through; a proxy that buffered a message would exceed it.
const RSS_LIMIT_KIB: u64 = 160 * 1024;

struct ChildProxy {
    child: Child,
    inbound: SocketAddr,
}

impl ChildProxy {
    fn start(inbound_target: SocketAddr) -> ChildProxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshtrace-proxy"))
            .env("MESHTRACE_INBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_INBOUND_TARGET", inbound_target.to_string())
            .env("MESHTRACE_LOG", "info")
            .env("MESHTRACE_LOG_FORMAT", "json")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn meshtrace-proxy");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        // The bound addresses are logged once, as JSON.
        let inbound = loop {
            let line = lines
                .next()
                .expect("proxy exited before binding")
                .expect("read stderr");
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if log["fields"]["message"] == "listeners bound" {
                break log["fields"]["inbound_addr"]
                    .as_str()
                    .expect("inbound_addr field")
                    .parse()
                    .expect("address");
            }
        };
        // Keep draining the pipe so the child never blocks on logging.
        std::thread::spawn(move || for _ in lines {});
        ChildProxy { child, inbound }
    }

    /// Peak resident memory of the proxy so far.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    async fn wait(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || self.child.wait().expect("wait"))
            .await
            .expect("join")
    }
}

impl Drop for ChildProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http1_client(addr: SocketAddr) -> http1::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_upload_and_download_stream_in_bounded_memory() {
    let upstream = HttpUpstream::start().await;
    let proxy = ChildProxy::start(upstream.addr());

    let upload = async {
        let mut client = http1_client(proxy.inbound).await;
        let request = Request::post("/count")
            .header("host", "app")
            .header("content-length", ONE_GIB)
            .body(generated_body(ONE_GIB))
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, format!("{ONE_GIB} true").as_bytes());
    };
    let download = async {
        let mut client = http1_client(proxy.inbound).await;
        let request = Request::get(format!("/bytes/{ONE_GIB}"))
            .header("host", "app")
            .body(generated_body(0))
            .unwrap();
        let response = client.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let (length, intact, _) = drain_body(response.into_body()).await.unwrap();
        assert_eq!((length, intact), (ONE_GIB, true));
    };
    tokio::time::timeout(Duration::from_secs(900), async {
        tokio::join!(upload, download)
    })
    .await
    .expect("transfers finished");

    let peak = proxy.peak_rss_kib();
    eprintln!("proxy peak RSS after streaming 2 GiB: {peak} KiB");
    assert!(
        peak < RSS_LIMIT_KIB,
        "proxy peak RSS {peak} KiB after streaming 2 GiB"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let upstream = HttpUpstream::start().await;
    let proxy = ChildProxy::start(upstream.addr());
    let mut client = RawClient::connect(proxy.inbound).await;
    client.send(b"GET /gate HTTP/1.1\r\nHost: a\r\n\r\n").await;
    upstream.wait_for_requests(1).await;

    proxy.terminate();
    upstream.open_gate();
    let response = client.read_response().await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.body, b"gate opened");

    let status = tokio::time::timeout(PATIENCE, proxy.wait())
        .await
        .expect("proxy exited");
    assert!(status.success(), "{status:?}");
}

/// `MESHTRACE_LOG` takes `target=level` directives: a target's level is applied (the proxy's
/// `info` lines appear under `warn,meshtrace_proxy::app=info`), and a filter that is not one is
/// refused at start-up with a clear message instead of being ignored.
#[test]
fn log_filter_directives_apply_and_bad_ones_are_refused() {
    let run = |filter: &str| {
        Command::new(env!("CARGO_BIN_EXE_meshtrace-proxy"))
            .env("MESHTRACE_INBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_OUTBOUND_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESHTRACE_INBOUND_TARGET", "127.0.0.1:9")
            .env("MESHTRACE_LOG", filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meshtrace-proxy")
    };

    let refused = run("meshtrace_proxy=loud")
        .wait_with_output()
        .expect("wait");
    assert!(!refused.status.success(), "an invalid level is refused");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("invalid MESHTRACE_LOG"),
        "the refusal names the variable: {stderr}"
    );

    let mut child = run("warn,meshtrace_proxy::app=info");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let bound = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("listeners bound"));
        let _ = tx.send(bound);
    });
    let bound = rx.recv_timeout(PATIENCE);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        bound,
        Ok(true),
        "the target's info line is logged under a warn default"
    );
}
