//! `meshtrace-proxy await-ready` (the postStart hook of regular-container pods) against the real
//! proxy binary: it returns 0 once the proxy is ready, also when started before the proxy, and
//! fails after its timeout when no proxy becomes ready.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_meshtrace-proxy");

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn await_ready(admin: SocketAddr, timeout: &str) -> Child {
    Command::new(BINARY)
        .args(["await-ready", "--timeout", timeout])
        .env_clear()
        // The same variable `run` reads: the injector sets neither, so both use the default.
        .env("MESHTRACE_ADMIN_ADDR", admin.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn await-ready")
}

fn proxy(admin: SocketAddr) -> Killed {
    let child = Command::new(BINARY)
        .env_clear()
        .env("MESHTRACE_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESHTRACE_OUTBOUND_ADDR", "127.0.0.1:0")
        .env("MESHTRACE_ADMIN_ADDR", admin.to_string())
        .env("MESHTRACE_INBOUND_TARGET", "127.0.0.1:9")
        .env("MESHTRACE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn meshtrace-proxy");
    Killed(child)
}

fn finish(child: Child) -> Output {
    child.wait_with_output().expect("await-ready output")
}

#[test]
fn returns_once_a_proxy_started_after_it_is_ready() {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    // Started first, as the kubelet may run the hook before the proxy has bound its ports.
    let waiter = await_ready(admin, "120s");
    std::thread::sleep(Duration::from_millis(300));
    let _proxy = proxy(admin);
    let output = finish(waiter);
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn an_unspecified_admin_address_is_reached_on_loopback() {
    let port = free_port();
    let _proxy = proxy(([0, 0, 0, 0], port).into());
    let output = finish(await_ready(([0, 0, 0, 0], port).into(), "120s"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn fails_after_the_timeout_when_no_proxy_becomes_ready() {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let output = finish(await_ready(admin, "1s"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not ready") && stderr.contains(&admin.to_string()),
        "{stderr}"
    );
}
