//! OTLP export: a batching task that drains the span queue and sends to a collector.

/// Export settings. The OpenTelemetry `OTEL_*` variables are read as the exporter spec says.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ExportArgs {}
