//! `meshtrace-viewer`: receive OTLP traces and browse them at http://127.0.0.1:16686.

use clap::Parser;
use meshtrace_examples::shutdown_signal;
use meshtrace_examples::viewer::{Viewer, ViewerConfig};
use tracing_subscriber::EnvFilter;

/// A local trace viewer: receives OTLP/gRPC and OTLP/HTTP, keeps recent traces in bounded
/// memory and shows them as waterfalls in a web UI (no internet access needed).
///
/// Logs are controlled with RUST_LOG (default: info).
#[derive(Parser, Debug)]
#[command(name = "meshtrace-viewer", version)]
struct Cli {
    #[command(flatten)]
    viewer: ViewerConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let stop = shutdown_signal();
    let viewer = match Viewer::bind(&cli.viewer).await {
        Ok(viewer) => viewer,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let addrs = viewer.addrs();
    tracing::info!(
        otlp_grpc = %addrs.otlp_grpc,
        otlp_http = %addrs.otlp_http,
        ui = %format!("http://{}/", addrs.ui),
        "meshtrace-viewer listening"
    );
    match viewer.run(stop).await {
        Ok(()) => {
            tracing::info!("stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "viewer failed");
            std::process::ExitCode::FAILURE
        }
    }
}
