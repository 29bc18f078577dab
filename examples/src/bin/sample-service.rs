//! `sample-service`: one of the demo's three sample services (see `--help`).

use clap::Parser;
use hyper_util::client::proxy::matcher::Matcher;
use meshtrace_examples::services::{SampleService, SampleServiceConfig};
use meshtrace_examples::shutdown_signal;
use tracing_subscriber::EnvFilter;

/// A sample service of the meshtrace demo: frontend → backend-api-1 → backend-api-2. It only
/// forwards trace headers (traceparent, tracestate, b3, x-b3-*); the mesh does the tracing.
///
/// Outgoing calls use the HTTP proxy in http_proxy/HTTP_PROXY (minus no_proxy) when set.
/// Logs are controlled with RUST_LOG (default: info).
#[derive(Parser, Debug)]
#[command(name = "sample-service", version)]
struct Cli {
    #[command(flatten)]
    service: SampleServiceConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let role = cli.service.role.name();
    let stop = shutdown_signal();
    let service = match SampleService::bind(&cli.service, Matcher::from_env()).await {
        Ok(service) => service,
        Err(error) => {
            tracing::error!(%error, role, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(role, listen = %service.local_addr(), upstreams = ?cli.service.upstreams, "sample service listening");
    service.run(stop).await;
    tracing::info!(role, "stopped");
    std::process::ExitCode::SUCCESS
}
