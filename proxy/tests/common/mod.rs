//! In-process proxies for integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use meshtrace_proxy::app::Proxy;
use meshtrace_proxy::config::Config;
use meshtrace_proxy::shutdown::{DrainOutcome, Trigger};
use meshtrace_tests::upstream::PATIENCE;
use tokio::task::JoinHandle;

/// A proxy running on the test's runtime, on ephemeral loopback ports.
pub struct TestProxy {
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    trigger: Trigger,
    run: JoinHandle<DrainOutcome>,
}

/// Listeners on 127.0.0.1:0, everything else default.
pub fn config() -> Config {
    init_logs();
    Config::loopback_ephemeral()
}

/// Fixed-target mode: the inbound listener forwards everything to `target`.
pub fn fixed_target(target: SocketAddr) -> Config {
    Config {
        inbound_target: Some(target.to_string()),
        ..config()
    }
}

pub async fn start(config: Config) -> TestProxy {
    let bound = Proxy::new(config).bind().await.expect("proxy binds");
    TestProxy {
        inbound: bound.inbound_addr(),
        outbound: bound.outbound_addr(),
        admin: bound.admin_addr(),
        trigger: bound.shutdown_trigger(),
        run: tokio::spawn(bound.run(std::future::pending())),
    }
}

impl TestProxy {
    /// Triggers a graceful shutdown and waits for the drain.
    pub async fn shutdown(self) -> DrainOutcome {
        self.trigger.trigger();
        self.finished().await
    }

    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// Waits for `run` to return.
    pub async fn finished(self) -> DrainOutcome {
        tokio::time::timeout(PATIENCE + Duration::from_secs(30), self.run)
            .await
            .expect("proxy did not drain in time")
            .expect("proxy task panicked")
    }
}

/// Logs to the test harness's captured output (`MESHTRACE_TEST_LOG=debug` for more).
pub fn init_logs() {
    let filter = std::env::var("MESHTRACE_TEST_LOG").unwrap_or_else(|_| "warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
