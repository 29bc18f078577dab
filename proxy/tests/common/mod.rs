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

/// Starts a proxy whose spans go to the exporter `config.export` describes; also returns the
/// exporter's handle (None when export is off) so tests can flush it.
pub async fn start_exporting(
    config: Config,
) -> (TestProxy, Option<meshtrace_proxy::export::ExporterHandle>) {
    let mut proxy = Proxy::new(config);
    let exporter = proxy.start_export().expect("exporter starts");
    let bound = proxy.bind().await.expect("proxy binds");
    let proxy = TestProxy {
        inbound: bound.inbound_addr(),
        outbound: bound.outbound_addr(),
        admin: bound.admin_addr(),
        trigger: bound.shutdown_trigger(),
        run: tokio::spawn(bound.run(std::future::pending())),
    };
    (proxy, exporter)
}

/// `config` exporting to `endpoint` over `protocol` (`grpc` | `http/protobuf`) as `service`,
/// with a short batching delay so spans arrive quickly.
pub fn exporting_to(mut config: Config, endpoint: &str, protocol: &str, service: &str) -> Config {
    config.export.otlp_endpoint = Some(endpoint.to_string());
    config.export.otlp_protocol = Some(protocol.to_string());
    config.export.bsp_schedule_delay = Some("20".to_string());
    config.export.service_name = Some(service.to_string());
    config
}

/// The body of the admin server's `/metrics`.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let response = meshtrace_tests::client::exchange(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    String::from_utf8_lossy(&response.body).into_owned()
}

/// The value of the sample `series` (exact name with labels) in Prometheus text, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
