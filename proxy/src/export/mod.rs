//! OTLP export: a batching task that drains the span queue and sends to a collector.
//!
//! The data path only ever sees a [`SpanSink`]; everything here runs in one background task, so
//! a slow or absent collector costs dropped spans (counted), never latency.
//!
//! Typical use (the proxy's `main` does this through `app::Proxy::start_export`):
//! ```no_run
//! # async fn example(args: meshtrace_proxy::config::ExportArgs) -> Result<(), Box<dyn std::error::Error>> {
//! use meshtrace_proxy::export;
//! let mut registry = prometheus_client::registry::Registry::default();
//! let (sink, exporter) = export::start(args.config()?, &args.resource(), &mut registry)?;
//! // ... serve traffic, handing finished spans to `sink.try_send(..)` ...
//! # drop(sink);
//! if let Some(exporter) = exporter {
//!     let _ = exporter.shutdown(std::time::Duration::from_secs(5)).await;
//! }
//! # Ok(())
//! # }
//! ```

pub mod batch;
pub mod config;
pub mod encode;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod resource;
pub mod retry;
pub mod transport;
pub mod wire;

pub use batch::{Exporter, ExporterHandle, ShutdownTimedOut};
pub use config::{
    BatchConfig, Compression, ConfigError, Disabled, Export, ExportConfig, Protocol, RetryPolicy,
};
pub use metrics::{DropReason, ExportMetrics, RequestResult};
pub use resource::ProxyResource;
pub use transport::ExportError;

use crate::span::SpanSink;

/// A startup failure of span export.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// Logs the configuration's warnings, registers the metrics and starts the exporter. Returns the
/// sink for the trace layers (disabled when export is off) and the handle `main` shuts down after
/// traffic drains. Must run inside a Tokio runtime.
pub fn start(
    export: Export,
    resource: &ProxyResource,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<(SpanSink, Option<ExporterHandle>), ExportError> {
    let config = match export {
        Export::On(config) => *config,
        Export::Off(why) => {
            tracing::info!(?why, "span export is off");
            return Ok((SpanSink::disabled(), None));
        }
    };
    for warning in config.warnings.iter().chain(&resource.warnings) {
        tracing::warn!("{warning}");
    }
    let metrics = ExportMetrics::register(registry);
    let (sink, queue) = SpanSink::bounded(config.batch.max_queue_size);
    let handle = Exporter::spawn(config, resource, queue, metrics)?;
    Ok((sink, Some(handle)))
}
