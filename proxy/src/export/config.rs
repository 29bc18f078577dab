//! The exporter's typed configuration. [`crate::config::export`] reads it from the `OTEL_*`
//! variables (or their flags); the exporter only ever sees these types.

use std::path::PathBuf;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`).
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies (`http/protobuf`).
    HttpProtobuf,
}

impl Protocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// The spec's default collector endpoint for this transport.
    pub const fn default_endpoint(self) -> &'static str {
        match self {
            Protocol::Grpc => "http://localhost:4317",
            Protocol::HttpProtobuf => "http://localhost:4318",
        }
    }
}

/// Payload compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// Batch span processor settings (`OTEL_BSP_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Capacity of the queue between the data path and the exporter.
    pub max_queue_size: usize,
    /// Spans per export request (never more than `max_queue_size`).
    pub max_export_batch_size: usize,
    /// Longest time a span waits in a partial batch.
    pub schedule_delay: Duration,
    /// Bound on one batch's export, retries included.
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            schedule_delay: Duration::from_millis(5000),
            export_timeout: Duration::from_millis(30000),
        }
    }
}

/// Exponential backoff between retries of a retryable failure. Not an `OTEL_*` setting; the
/// defaults are those of the OpenTelemetry SDKs.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            multiplier: 1.5,
        }
    }
}

/// Everything the exporter task needs.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub protocol: Protocol,
    /// Where requests go: for `http/protobuf` the full URL of the traces resource, for `grpc`
    /// the collector's origin.
    pub endpoint: Uri,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`), already percent-decoded.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub compression: Compression,
    /// Bound on one export request (one attempt).
    pub timeout: Duration,
    /// PEM file with the CA certificate(s) that verify the collector; webpki roots otherwise.
    pub certificate: Option<PathBuf>,
    pub batch: BatchConfig,
    pub retry: RetryPolicy,
    /// Problems found while parsing that the spec says to warn about and ignore; the caller logs
    /// them at startup.
    pub warnings: Vec<String>,
}

/// A configuration that cannot be used safely.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}: invalid endpoint {value:?}: {reason}")]
    InvalidEndpoint {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{var}: invalid headers: {reason}")]
    InvalidHeaders { var: &'static str, reason: String },
    #[error("{var}: expected `on` or `off`, got {value:?}")]
    InvalidSwitch { var: &'static str, value: String },
}

/// Why export is off, if it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disabled {
    /// `MESHTRACE_TRACING=off`.
    MeshtraceTracingOff,
    /// `OTEL_TRACES_EXPORTER=none`.
    TracesExporterNone,
    /// `OTEL_SDK_DISABLED=true`.
    SdkDisabled,
}

/// What the configuration asks of span export.
#[derive(Clone, Debug)]
pub enum Export {
    /// Export over OTLP as configured.
    On(Box<ExportConfig>),
    /// Export is off (propagation keeps working).
    Off(Disabled),
}

impl Export {
    /// The configuration, if export is on.
    pub fn on(self) -> Option<ExportConfig> {
        match self {
            Export::On(config) => Some(*config),
            Export::Off(_) => None,
        }
    }

    /// Why export is off, if it is.
    pub fn off(&self) -> Option<&Disabled> {
        match self {
            Export::On(_) => None,
            Export::Off(why) => Some(why),
        }
    }
}
