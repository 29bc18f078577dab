//! OTLP export: a batching task that drains the span queue and sends to a collector.
//!
//! The data path only ever sees a [`SpanSink`]; everything here runs in one background task, so
//! a slow or absent collector costs dropped spans (counted), never latency.
//!
//! Typical use (the proxy's `main` does this through `app::Proxy::start_export`):
//! ```no_run
//! # async fn example(args: meshtrace_proxy::export::ExportArgs) -> Result<(), Box<dyn std::error::Error>> {
//! use meshtrace_proxy::export;
//! let mut registry = prometheus_client::registry::Registry::default();
//! let (sink, exporter) = export::start(&args, &mut registry)?;
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
    BatchConfig, Compression, ConfigError, Disabled, ExportConfig, Protocol, RetryPolicy,
};
pub use metrics::{DropReason, ExportMetrics, RequestResult};
pub use resource::ProxyResource;
pub use transport::ExportError;

use crate::span::SpanSink;

/// Span export settings. Each flag mirrors the standard OpenTelemetry variable named in its
/// help, with the spec's meaning and defaults; the per-signal `OTEL_EXPORTER_OTLP_TRACES_*` form
/// wins over the general `OTEL_EXPORTER_OTLP_*` one.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ExportArgs {
    /// Turn span export off (`off`); propagation keeps working.
    #[arg(long = "tracing", env = "MESHTRACE_TRACING", value_name = "on|off")]
    pub tracing: Option<String>,
    /// `none` turns span export off; `otlp` (default) exports over OTLP.
    #[arg(long, env = "OTEL_TRACES_EXPORTER", value_name = "otlp|none")]
    pub traces_exporter: Option<String>,
    /// `true` turns span export off.
    #[arg(long, env = "OTEL_SDK_DISABLED", value_name = "BOOL")]
    pub sdk_disabled: Option<String>,

    /// Collector base URL; `/v1/traces` is appended for http/protobuf [default:
    /// http://localhost:4318 (http/protobuf), http://localhost:4317 (grpc)].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Full collector URL for traces, used as-is; wins over --otlp-endpoint.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,
    /// OTLP transport [default: http/protobuf].
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        value_name = "grpc|http/protobuf"
    )]
    pub otlp_protocol: Option<String>,
    /// OTLP transport for traces; wins over --otlp-protocol.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        value_name = "grpc|http/protobuf"
    )]
    pub otlp_traces_protocol: Option<String>,
    /// Extra request headers: `key1=value1,key2=value2`, values percent-encoded.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", value_name = "HEADERS")]
    pub otlp_headers: Option<String>,
    /// Extra request headers for traces; replace --otlp-headers.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        value_name = "HEADERS"
    )]
    pub otlp_traces_headers: Option<String>,
    /// Payload compression [default: none].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_COMPRESSION", value_name = "gzip|none")]
    pub otlp_compression: Option<String>,
    /// Payload compression for traces; wins over --otlp-compression.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        value_name = "gzip|none"
    )]
    pub otlp_traces_compression: Option<String>,
    /// Timeout of one export request, in milliseconds [default: 10000].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", value_name = "MS")]
    pub otlp_timeout: Option<String>,
    /// Timeout of one trace export request, in milliseconds; wins over --otlp-timeout.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", value_name = "MS")]
    pub otlp_traces_timeout: Option<String>,
    /// PEM file of the CA that signs the collector's certificate (https endpoints) [default:
    /// the Mozilla (webpki) roots].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE", value_name = "PATH")]
    pub otlp_certificate: Option<String>,
    /// CA file for traces; wins over --otlp-certificate.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        value_name = "PATH"
    )]
    pub otlp_traces_certificate: Option<String>,
    /// For a gRPC endpoint given without a scheme: `true` connects without TLS [default: false].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_INSECURE", value_name = "BOOL")]
    pub otlp_insecure: Option<String>,
    /// --otlp-insecure for traces.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_INSECURE", value_name = "BOOL")]
    pub otlp_traces_insecure: Option<String>,

    /// Capacity of the span queue; spans beyond it are dropped and counted [default: 2048].
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", value_name = "SPANS")]
    pub bsp_max_queue_size: Option<String>,
    /// Spans per export request [default: 512].
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", value_name = "SPANS")]
    pub bsp_max_export_batch_size: Option<String>,
    /// Longest wait before a partial batch is sent, in milliseconds [default: 5000].
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", value_name = "MS")]
    pub bsp_schedule_delay: Option<String>,
    /// Time allowed to export one batch, retries included, in milliseconds [default: 30000].
    #[arg(long, env = "OTEL_BSP_EXPORT_TIMEOUT", value_name = "MS")]
    pub bsp_export_timeout: Option<String>,

    /// `service.name` of the spans (wins over everything else).
    #[arg(long, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    pub service_name: Option<String>,
    /// Extra resource attributes `key1=value1,key2=value2` (percent-encoded values); win over
    /// the workload and pod attributes below.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES", value_name = "ATTRIBUTES")]
    pub resource_attributes: Option<String>,
    /// Workload name, the `service.name` when OTEL_SERVICE_NAME is unset [default:
    /// meshtrace-proxy].
    #[arg(long, env = "MESHTRACE_WORKLOAD", value_name = "NAME")]
    pub workload: Option<String>,
    /// Resource attribute `k8s.pod.name` (set by the injector from the downward API).
    #[arg(long, env = "MESHTRACE_POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,
    /// Resource attribute `k8s.namespace.name`.
    #[arg(long, env = "MESHTRACE_POD_NAMESPACE", value_name = "NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Resource attribute `k8s.node.name`.
    #[arg(long, env = "MESHTRACE_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Resource attribute `k8s.pod.uid`.
    #[arg(long, env = "MESHTRACE_POD_UID", value_name = "UID")]
    pub pod_uid: Option<String>,
    /// Resource attribute `k8s.pod.ip`.
    #[arg(long, env = "MESHTRACE_POD_IP", value_name = "IP")]
    pub pod_ip: Option<String>,
}

impl ExportArgs {
    /// The value of the variable `name` as given by flag or environment.
    pub fn lookup(&self, name: &str) -> Option<String> {
        let value = match name {
            "MESHTRACE_TRACING" => &self.tracing,
            "OTEL_TRACES_EXPORTER" => &self.traces_exporter,
            "OTEL_SDK_DISABLED" => &self.sdk_disabled,
            "OTEL_EXPORTER_OTLP_ENDPOINT" => &self.otlp_endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => &self.otlp_traces_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL" => &self.otlp_protocol,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => &self.otlp_traces_protocol,
            "OTEL_EXPORTER_OTLP_HEADERS" => &self.otlp_headers,
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => &self.otlp_traces_headers,
            "OTEL_EXPORTER_OTLP_COMPRESSION" => &self.otlp_compression,
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION" => &self.otlp_traces_compression,
            "OTEL_EXPORTER_OTLP_TIMEOUT" => &self.otlp_timeout,
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" => &self.otlp_traces_timeout,
            "OTEL_EXPORTER_OTLP_CERTIFICATE" => &self.otlp_certificate,
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE" => &self.otlp_traces_certificate,
            "OTEL_EXPORTER_OTLP_INSECURE" => &self.otlp_insecure,
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE" => &self.otlp_traces_insecure,
            "OTEL_BSP_MAX_QUEUE_SIZE" => &self.bsp_max_queue_size,
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" => &self.bsp_max_export_batch_size,
            "OTEL_BSP_SCHEDULE_DELAY" => &self.bsp_schedule_delay,
            "OTEL_BSP_EXPORT_TIMEOUT" => &self.bsp_export_timeout,
            "OTEL_SERVICE_NAME" => &self.service_name,
            "OTEL_RESOURCE_ATTRIBUTES" => &self.resource_attributes,
            "MESHTRACE_WORKLOAD" => &self.workload,
            "MESHTRACE_POD_NAME" => &self.pod_name,
            "MESHTRACE_POD_NAMESPACE" => &self.pod_namespace,
            "MESHTRACE_NODE_NAME" => &self.node_name,
            "MESHTRACE_POD_UID" => &self.pod_uid,
            "MESHTRACE_POD_IP" => &self.pod_ip,
            _ => return None,
        };
        value.clone()
    }

    /// The exporter configuration (`Ok(Err(_))`: export is off).
    pub fn config(&self) -> Result<Result<ExportConfig, Disabled>, ConfigError> {
        ExportConfig::from_env(|name| self.lookup(name))
    }

    /// The proxy's OTLP resource.
    pub fn resource(&self) -> ProxyResource {
        ProxyResource::from_env(|name| self.lookup(name))
    }
}

/// A startup failure of span export.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// Reads the configuration, logs its warnings, registers the metrics and starts the exporter.
/// Returns the sink for the trace layers (disabled when export is off) and the handle `main`
/// shuts down after traffic drains. Must run inside a Tokio runtime.
pub fn start(
    args: &ExportArgs,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<(SpanSink, Option<ExporterHandle>), StartError> {
    let config = match args.config()? {
        Ok(config) => config,
        Err(why) => {
            tracing::info!(?why, "span export is off");
            return Ok((SpanSink::disabled(), None));
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let resource = args.resource();
    for warning in &resource.warnings {
        tracing::warn!("{warning}");
    }
    let metrics = ExportMetrics::register(registry);
    let (sink, queue) = SpanSink::bounded(config.batch.max_queue_size);
    let handle = Exporter::spawn(config, &resource, queue, metrics)?;
    Ok((sink, Some(handle)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        export: ExportArgs,
    }

    #[test]
    fn flags_feed_the_same_rules_as_the_environment() {
        let cli = Cli::try_parse_from([
            "proxy",
            "--otlp-endpoint",
            "http://collector:4318",
            "--otlp-traces-protocol",
            "grpc",
            "--bsp-max-queue-size",
            "64",
            "--workload",
            "web",
            "--pod-name",
            "web-1",
        ])
        .unwrap();
        let config = cli.export.config().unwrap().unwrap();
        assert_eq!(config.protocol, Protocol::Grpc);
        assert_eq!(config.endpoint, "http://collector:4318/");
        assert_eq!(config.batch.max_queue_size, 64);
        let resource = cli.export.resource();
        assert_eq!(resource.get("service.name"), Some("web"));
        assert_eq!(resource.get("k8s.pod.name"), Some("web-1"));
        let off = Cli::try_parse_from(["proxy", "--tracing", "off"]).unwrap();
        assert_eq!(
            off.export.config().unwrap().unwrap_err(),
            Disabled::MeshtraceTracingOff
        );
    }

    #[test]
    fn every_flag_maps_to_its_variable() {
        use clap::CommandFactory;
        let command = Cli::command();
        let mut checked = 0;
        for arg in command.get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let env = env.to_string_lossy().into_owned();
            let cli = Cli::try_parse_from(["proxy", &format!("--{long}"), "value"]).unwrap();
            assert_eq!(
                cli.export.lookup(&env).as_deref(),
                Some("value"),
                "--{long} / {env}"
            );
            checked += 1;
        }
        assert_eq!(checked, 29);
    }
}
