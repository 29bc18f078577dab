//! The settings of span export: the `OTEL_*` variables, read exactly as the OpenTelemetry
//! exporter, batch span processor and resource specs describe them, plus meshtrace's own
//! `MESHTRACE_TRACING` and pod identity (`MESHTRACE_WORKLOAD`, `MESHTRACE_POD_*`).
//!
//! Each variable is named once, in [`var`]; its flag, its environment variable and the messages
//! about it all use that name. Following the spec, an unparseable number or an unknown enum value
//! is a warning and the default is used; a value that would silently send spans somewhere else
//! (bad URL, bad headers) is an error.

use std::path::PathBuf;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;

use crate::export::resource::{PodAttribute, ResourceConfig};
use crate::export::{
    BatchConfig, Compression, ConfigError, Disabled, Export, ExportConfig, Protocol, ProxyResource,
    RetryPolicy,
};

/// The name of every export variable, once.
pub mod var {
    pub const TRACING: &str = "MESHTRACE_TRACING";
    pub const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
    pub const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
    pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
    pub const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
    pub const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
    pub const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
    pub const COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
    pub const TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";
    pub const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
    pub const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
    pub const CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
    pub const TRACES_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE";
    pub const INSECURE: &str = "OTEL_EXPORTER_OTLP_INSECURE";
    pub const TRACES_INSECURE: &str = "OTEL_EXPORTER_OTLP_TRACES_INSECURE";
    pub const BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
    pub const BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
    pub const BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
    pub const BSP_EXPORT_TIMEOUT: &str = "OTEL_BSP_EXPORT_TIMEOUT";
    pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    pub const WORKLOAD: &str = "MESHTRACE_WORKLOAD";
    pub const POD_NAME: &str = "MESHTRACE_POD_NAME";
    pub const POD_NAMESPACE: &str = "MESHTRACE_POD_NAMESPACE";
    pub const NODE_NAME: &str = "MESHTRACE_NODE_NAME";
    pub const POD_UID: &str = "MESHTRACE_POD_UID";
    pub const POD_IP: &str = "MESHTRACE_POD_IP";
}

/// Span export settings. Each flag mirrors the standard OpenTelemetry variable named in its
/// help, with the spec's meaning and defaults; the per-signal `OTEL_EXPORTER_OTLP_TRACES_*` form
/// wins over the general `OTEL_EXPORTER_OTLP_*` one.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ExportArgs {
    /// Turn span export off (`off`); propagation keeps working.
    #[arg(long = "tracing", env = var::TRACING, value_name = "on|off")]
    pub tracing: Option<String>,
    /// `none` turns span export off; `otlp` (default) exports over OTLP.
    #[arg(long, env = var::TRACES_EXPORTER, value_name = "otlp|none")]
    pub traces_exporter: Option<String>,
    /// `true` turns span export off.
    #[arg(long, env = var::SDK_DISABLED, value_name = "BOOL")]
    pub sdk_disabled: Option<String>,

    /// Collector base URL; `/v1/traces` is appended for http/protobuf [default:
    /// http://localhost:4318 (http/protobuf), http://localhost:4317 (grpc)].
    #[arg(long, env = var::ENDPOINT, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Full collector URL for traces, used as-is; wins over --otlp-endpoint.
    #[arg(long, env = var::TRACES_ENDPOINT, value_name = "URL")]
    pub otlp_traces_endpoint: Option<String>,
    /// OTLP transport [default: http/protobuf].
    #[arg(long, env = var::PROTOCOL, value_name = "grpc|http/protobuf")]
    pub otlp_protocol: Option<String>,
    /// OTLP transport for traces; wins over --otlp-protocol.
    #[arg(long, env = var::TRACES_PROTOCOL, value_name = "grpc|http/protobuf")]
    pub otlp_traces_protocol: Option<String>,
    /// Extra request headers: `key1=value1,key2=value2`, values percent-encoded.
    #[arg(long, env = var::HEADERS, value_name = "HEADERS")]
    pub otlp_headers: Option<String>,
    /// Extra request headers for traces; replace --otlp-headers.
    #[arg(long, env = var::TRACES_HEADERS, value_name = "HEADERS")]
    pub otlp_traces_headers: Option<String>,
    /// Payload compression [default: none].
    #[arg(long, env = var::COMPRESSION, value_name = "gzip|none")]
    pub otlp_compression: Option<String>,
    /// Payload compression for traces; wins over --otlp-compression.
    #[arg(long, env = var::TRACES_COMPRESSION, value_name = "gzip|none")]
    pub otlp_traces_compression: Option<String>,
    /// Timeout of one export request, in milliseconds [default: 10000].
    #[arg(long, env = var::TIMEOUT, value_name = "MS")]
    pub otlp_timeout: Option<String>,
    /// Timeout of one trace export request, in milliseconds; wins over --otlp-timeout.
    #[arg(long, env = var::TRACES_TIMEOUT, value_name = "MS")]
    pub otlp_traces_timeout: Option<String>,
    /// PEM file of the CA that signs the collector's certificate (https endpoints) [default:
    /// the Mozilla (webpki) roots].
    #[arg(long, env = var::CERTIFICATE, value_name = "PATH")]
    pub otlp_certificate: Option<String>,
    /// CA file for traces; wins over --otlp-certificate.
    #[arg(long, env = var::TRACES_CERTIFICATE, value_name = "PATH")]
    pub otlp_traces_certificate: Option<String>,
    /// For a gRPC endpoint given without a scheme: `true` connects without TLS [default: false].
    #[arg(long, env = var::INSECURE, value_name = "BOOL")]
    pub otlp_insecure: Option<String>,
    /// --otlp-insecure for traces.
    #[arg(long, env = var::TRACES_INSECURE, value_name = "BOOL")]
    pub otlp_traces_insecure: Option<String>,

    /// Capacity of the span queue; spans beyond it are dropped and counted [default: 2048].
    #[arg(long, env = var::BSP_MAX_QUEUE_SIZE, value_name = "SPANS")]
    pub bsp_max_queue_size: Option<String>,
    /// Spans per export request [default: 512].
    #[arg(long, env = var::BSP_MAX_EXPORT_BATCH_SIZE, value_name = "SPANS")]
    pub bsp_max_export_batch_size: Option<String>,
    /// Longest wait before a partial batch is sent, in milliseconds [default: 5000].
    #[arg(long, env = var::BSP_SCHEDULE_DELAY, value_name = "MS")]
    pub bsp_schedule_delay: Option<String>,
    /// Time allowed to export one batch, retries included, in milliseconds [default: 30000].
    #[arg(long, env = var::BSP_EXPORT_TIMEOUT, value_name = "MS")]
    pub bsp_export_timeout: Option<String>,

    /// `service.name` of the spans (wins over everything else).
    #[arg(long, env = var::SERVICE_NAME, value_name = "NAME")]
    pub service_name: Option<String>,
    /// Extra resource attributes `key1=value1,key2=value2` (percent-encoded values); win over
    /// the workload and pod attributes below.
    #[arg(long, env = var::RESOURCE_ATTRIBUTES, value_name = "ATTRIBUTES")]
    pub resource_attributes: Option<String>,
    /// Workload name, the `service.name` when OTEL_SERVICE_NAME is unset [default:
    /// meshtrace-proxy].
    #[arg(long, env = var::WORKLOAD, value_name = "NAME")]
    pub workload: Option<String>,
    /// Resource attribute `k8s.pod.name` (set by the injector from the downward API).
    #[arg(long, env = var::POD_NAME, value_name = "NAME")]
    pub pod_name: Option<String>,
    /// Resource attribute `k8s.namespace.name`.
    #[arg(long, env = var::POD_NAMESPACE, value_name = "NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Resource attribute `k8s.node.name`.
    #[arg(long, env = var::NODE_NAME, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Resource attribute `k8s.pod.uid`.
    #[arg(long, env = var::POD_UID, value_name = "UID")]
    pub pod_uid: Option<String>,
    /// Resource attribute `k8s.pod.ip`.
    #[arg(long, env = var::POD_IP, value_name = "IP")]
    pub pod_ip: Option<String>,
}

/// One variable's value as given by flag or environment. The spec treats an empty value as
/// unset, so a `Setting` is never blank.
#[derive(Clone, Copy, Debug)]
struct Setting<'a> {
    var: &'static str,
    value: &'a str,
}

impl<'a> Setting<'a> {
    fn of(var: &'static str, value: &'a Option<String>) -> Option<Setting<'a>> {
        let value = value.as_deref().filter(|v| !v.trim().is_empty())?;
        Some(Setting { var, value })
    }

    /// The value trimmed and lowercased, for case-insensitive keywords.
    fn keyword(&self) -> String {
        self.value.trim().to_ascii_lowercase()
    }
}

/// The OTLP exporter spec's rule for every `OTEL_EXPORTER_OTLP_*` setting: the per-signal
/// `OTEL_EXPORTER_OTLP_TRACES_*` variable, when set, wins over the generic one.
fn signal_specific_wins<'a>(
    traces: (&'static str, &'a Option<String>),
    generic: (&'static str, &'a Option<String>),
) -> Option<Setting<'a>> {
    Setting::of(traces.0, traces.1).or_else(|| Setting::of(generic.0, generic.1))
}

/// Problems the spec says to warn about and ignore; logged at startup.
type Warnings = Vec<String>;

impl ExportArgs {
    /// The settings as `lookup` gives each variable by name (as the environment would), for
    /// tests, benchmarks and embedders that hold them in a map. The process environment is not
    /// read.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> ExportArgs {
        use clap::{Args, FromArgMatches};
        let command = ExportArgs::augment_args(clap::Command::new("export"));
        let mut argv = vec!["export".to_owned()];
        for arg in command.get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            if let Some(value) = env.to_str().and_then(&lookup) {
                argv.push(format!("--{long}={value}"));
            }
        }
        let command = command.mut_args(|arg| arg.env(None));
        command
            .try_get_matches_from(argv)
            .and_then(|matches| ExportArgs::from_arg_matches(&matches))
            .unwrap_or_default()
    }

    /// The exporter configuration, or why export is off (propagation keeps working then).
    pub fn config(&self) -> Result<Export, ConfigError> {
        let mut warnings = Warnings::new();
        if let Some(why) = self.disabled(&mut warnings)? {
            return Ok(Export::Off(why));
        }
        let protocol = self.protocol(&mut warnings);
        let insecure = self.insecure(&mut warnings);
        let endpoint = self.endpoint(protocol, insecure)?;
        let headers = self.headers()?;
        let compression = self.compression(&mut warnings);
        let timeout = signal_specific_wins(
            (var::TRACES_TIMEOUT, &self.otlp_traces_timeout),
            (var::TIMEOUT, &self.otlp_timeout),
        )
        .map_or(Duration::from_millis(10_000), |timeout| {
            millis(timeout, 10_000, &mut warnings)
        });
        let certificate = signal_specific_wins(
            (var::TRACES_CERTIFICATE, &self.otlp_traces_certificate),
            (var::CERTIFICATE, &self.otlp_certificate),
        )
        .map(|path| PathBuf::from(path.value.trim()));
        let batch = self.batch(&mut warnings);
        Ok(Export::On(Box::new(ExportConfig {
            protocol,
            endpoint,
            headers,
            compression,
            timeout,
            certificate,
            batch,
            retry: RetryPolicy::default(),
            warnings,
        })))
    }

    /// The proxy's OTLP resource (its warnings say what was ignored).
    pub fn resource(&self) -> ProxyResource {
        let mut warnings = Warnings::new();
        let attributes = match Setting::of(var::RESOURCE_ATTRIBUTES, &self.resource_attributes) {
            None => Vec::new(),
            Some(list) => parse_resource_attributes(list.value).unwrap_or_else(|reason| {
                warnings.push(format!("{} ignored: {reason}", list.var));
                Vec::new()
            }),
        };
        let trimmed = |value: &Option<String>| {
            Some(value.as_deref()?.trim().to_owned()).filter(|v| !v.is_empty())
        };
        let pod = [
            (PodAttribute::Name, &self.pod_name),
            (PodAttribute::Namespace, &self.pod_namespace),
            (PodAttribute::Node, &self.node_name),
            (PodAttribute::Uid, &self.pod_uid),
            (PodAttribute::Ip, &self.pod_ip),
        ];
        let config = ResourceConfig {
            workload: trimmed(&self.workload),
            pod: pod
                .into_iter()
                .filter_map(|(key, value)| Some((key, trimmed(value)?)))
                .collect(),
            attributes,
            service_name: trimmed(&self.service_name),
        };
        ProxyResource::new(&config, warnings)
    }

    /// `MESHTRACE_TRACING=off`, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`, checked
    /// before anything else: off wins even when the rest of the configuration is broken.
    fn disabled(&self, warnings: &mut Warnings) -> Result<Option<Disabled>, ConfigError> {
        if let Some(switch) = Setting::of(var::TRACING, &self.tracing) {
            match switch.keyword().as_str() {
                "on" | "true" | "1" => {}
                "off" | "false" | "0" => return Ok(Some(Disabled::MeshtraceTracingOff)),
                _ => {
                    return Err(ConfigError::InvalidSwitch {
                        var: switch.var,
                        value: switch.value.to_owned(),
                    })
                }
            }
        }
        if let Some(sdk) = Setting::of(var::SDK_DISABLED, &self.sdk_disabled) {
            match sdk.keyword().as_str() {
                "true" => return Ok(Some(Disabled::SdkDisabled)),
                "false" => {}
                _ => warnings.push(format!(
                    "{}: expected `true` or `false`, got {:?}; ignored",
                    sdk.var, sdk.value
                )),
            }
        }
        Ok(self.traces_exporter(warnings))
    }

    fn traces_exporter(&self, warnings: &mut Warnings) -> Option<Disabled> {
        let exporters = Setting::of(var::TRACES_EXPORTER, &self.traces_exporter)?;
        let names: Vec<String> = exporters
            .value
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        if names.iter().any(|n| n == "none") {
            return Some(Disabled::TracesExporterNone);
        }
        if !names.iter().any(|n| n == "otlp") {
            warnings.push(format!(
                "{}: {:?} is not supported (only `otlp` and `none`); using otlp",
                exporters.var, exporters.value
            ));
        }
        None
    }

    fn protocol(&self, warnings: &mut Warnings) -> Protocol {
        let Some(protocol) = signal_specific_wins(
            (var::TRACES_PROTOCOL, &self.otlp_traces_protocol),
            (var::PROTOCOL, &self.otlp_protocol),
        ) else {
            return Protocol::HttpProtobuf;
        };
        match protocol.value.trim() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => {
                warnings.push(format!(
                    "{}: unsupported protocol {other:?} (expected `grpc` or `http/protobuf`); using http/protobuf",
                    protocol.var
                ));
                Protocol::HttpProtobuf
            }
        }
    }

    fn insecure(&self, warnings: &mut Warnings) -> bool {
        let Some(insecure) = signal_specific_wins(
            (var::TRACES_INSECURE, &self.otlp_traces_insecure),
            (var::INSECURE, &self.otlp_insecure),
        ) else {
            return false;
        };
        match insecure.keyword().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                warnings.push(format!(
                    "{}: expected `true` or `false`, got {:?}; using false",
                    insecure.var, insecure.value
                ));
                false
            }
        }
    }

    /// The spec's endpoint rules: the per-signal URL is used as-is; the general one is a base
    /// to which `v1/traces` is appended for OTLP/HTTP; gRPC uses the origin.
    fn endpoint(&self, protocol: Protocol, insecure: bool) -> Result<Uri, ConfigError> {
        let default = protocol.default_endpoint();
        let (var, raw) = match signal_specific_wins(
            (var::TRACES_ENDPOINT, &self.otlp_traces_endpoint),
            (var::ENDPOINT, &self.otlp_endpoint),
        ) {
            Some(endpoint) => (endpoint.var, endpoint.value),
            None => ("default", default),
        };
        let append_signal_path = var != var::TRACES_ENDPOINT && protocol == Protocol::HttpProtobuf;
        let raw = raw.trim();
        let invalid = |reason: String| ConfigError::InvalidEndpoint {
            var,
            value: raw.to_owned(),
            reason,
        };
        let uri = endpoint_uri(protocol, raw, insecure).map_err(invalid)?;
        if !append_signal_path {
            return Ok(uri);
        }
        if uri.query().is_some() {
            return Err(invalid("a base endpoint cannot have a query".into()));
        }
        with_traces_path(uri).map_err(invalid)
    }

    fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
        let Some(headers) = signal_specific_wins(
            (var::TRACES_HEADERS, &self.otlp_traces_headers),
            (var::HEADERS, &self.otlp_headers),
        ) else {
            return Ok(Vec::new());
        };
        parse_headers(headers.value).map_err(|reason| ConfigError::InvalidHeaders {
            var: headers.var,
            reason,
        })
    }

    fn compression(&self, warnings: &mut Warnings) -> Compression {
        let Some(compression) = signal_specific_wins(
            (var::TRACES_COMPRESSION, &self.otlp_traces_compression),
            (var::COMPRESSION, &self.otlp_compression),
        ) else {
            return Compression::None;
        };
        match compression.keyword().as_str() {
            "gzip" => Compression::Gzip,
            "none" => Compression::None,
            other => {
                warnings.push(format!(
                    "{}: unsupported compression {other:?} (expected `gzip` or `none`); using none",
                    compression.var
                ));
                Compression::None
            }
        }
    }

    /// The batch span processor's `OTEL_BSP_*` settings.
    fn batch(&self, warnings: &mut Warnings) -> BatchConfig {
        let defaults = BatchConfig::default();
        let mut count = |var: &'static str, value: &Option<String>, default: usize| {
            Setting::of(var, value).map_or(default, |count| positive(count, default, warnings))
        };
        let max_queue_size = count(
            var::BSP_MAX_QUEUE_SIZE,
            &self.bsp_max_queue_size,
            defaults.max_queue_size,
        );
        let mut max_export_batch_size = count(
            var::BSP_MAX_EXPORT_BATCH_SIZE,
            &self.bsp_max_export_batch_size,
            defaults.max_export_batch_size,
        );
        if max_export_batch_size > max_queue_size {
            warnings.push(format!(
                "{} ({max_export_batch_size}) exceeds {} ({max_queue_size}); using {max_queue_size}",
                var::BSP_MAX_EXPORT_BATCH_SIZE,
                var::BSP_MAX_QUEUE_SIZE
            ));
            max_export_batch_size = max_queue_size;
        }
        let mut delay = |var: &'static str, value: &Option<String>, default: Duration| {
            Setting::of(var, value).map_or(default, |delay| {
                millis(delay, default.as_millis() as u64, warnings)
            })
        };
        BatchConfig {
            max_queue_size,
            max_export_batch_size,
            schedule_delay: delay(
                var::BSP_SCHEDULE_DELAY,
                &self.bsp_schedule_delay,
                defaults.schedule_delay,
            ),
            export_timeout: delay(
                var::BSP_EXPORT_TIMEOUT,
                &self.bsp_export_timeout,
                defaults.export_timeout,
            ),
        }
    }
}

/// A positive integer; the spec says to warn and use the default when unparseable.
fn positive(setting: Setting<'_>, default: usize, warnings: &mut Warnings) -> usize {
    match setting.value.trim().parse::<usize>() {
        Ok(n) if n > 0 => n,
        _ => {
            warnings.push(format!(
                "{}: expected a positive integer, got {:?}; using {default}",
                setting.var, setting.value
            ));
            default
        }
    }
}

/// A duration in milliseconds; the spec says to warn and use the default when unparseable.
fn millis(setting: Setting<'_>, default_ms: u64, warnings: &mut Warnings) -> Duration {
    match setting.value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Duration::from_millis(ms),
        _ => {
            warnings.push(format!(
                "{}: expected a positive number of milliseconds, got {:?}; using {default_ms}",
                setting.var, setting.value
            ));
            Duration::from_millis(default_ms)
        }
    }
}

/// An http(s) URL with a host. The spec's `insecure` option only matters for a scheme-less gRPC
/// endpoint; OTLP/HTTP requires the scheme.
fn endpoint_uri(protocol: Protocol, raw: &str, insecure: bool) -> Result<Uri, String> {
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else if protocol == Protocol::Grpc {
        let scheme = if insecure { "http" } else { "https" };
        format!("{scheme}://{raw}")
    } else {
        return Err("a URL with an http or https scheme is required".into());
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("the scheme must be http or https".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("a host is required".into());
    }
    Ok(uri)
}

/// A base endpoint with the signal path `v1/traces` appended.
fn with_traces_path(base: Uri) -> Result<Uri, String> {
    let path = format!("{}/v1/traces", base.path().trim_end_matches('/'));
    let mut parts = base.into_parts();
    parts.path_and_query = Some(
        path.parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?,
    );
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

/// The list format of `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES` (W3C
/// baggage-like): comma-separated `key=value` pairs, both sides percent-decoded and trimmed,
/// empty members skipped.
pub fn parse_key_value_list(value: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for member in value.split(',') {
        let member = member.trim();
        if member.is_empty() {
            continue;
        }
        let Some((key, val)) = member.split_once('=') else {
            return Err(format!("{member:?} is not key=value"));
        };
        let key = percent_decode(key.trim()).ok_or_else(|| format!("bad escape in {key:?}"))?;
        let val = percent_decode(val.trim()).ok_or_else(|| format!("bad escape in {val:?}"))?;
        pairs.push((key, val));
    }
    Ok(pairs)
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: a [`parse_key_value_list`] whose keys are header names.
pub fn parse_headers(value: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    parse_key_value_list(value)?
        .into_iter()
        .map(|(key, val)| {
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| format!("{key:?} is not a valid header name"))?;
            let value = HeaderValue::from_str(&val)
                .map_err(|_| format!("the value of {key:?} is not a valid header value"))?;
            Ok((name, value))
        })
        .collect()
}

/// `OTEL_RESOURCE_ATTRIBUTES`: a [`parse_key_value_list`] with non-empty keys. Per the spec, any
/// error discards the whole variable (reported by the caller).
pub fn parse_resource_attributes(value: &str) -> Result<Vec<(String, String)>, String> {
    let pairs = parse_key_value_list(value)?;
    if let Some((_, val)) = pairs.iter().find(|(key, _)| key.is_empty()) {
        return Err(format!("empty key in \"={val}\""));
    }
    Ok(pairs)
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Export, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ExportArgs::from_lookup(|name| map.get(name).cloned()).config()
    }

    fn enabled(vars: &[(&str, &str)]) -> ExportConfig {
        load(vars).expect("valid").on().expect("enabled")
    }

    fn off(vars: &[(&str, &str)]) -> Option<Disabled> {
        load(vars).expect("valid").off().cloned()
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = enabled(&[]);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://localhost:4318/v1/traces");
        assert!(c.headers.is_empty());
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.certificate, None);
        assert_eq!(c.batch, BatchConfig::default());
        assert_eq!(c.batch.max_queue_size, 2048);
        assert_eq!(c.batch.max_export_batch_size, 512);
        assert_eq!(c.batch.schedule_delay, Duration::from_millis(5000));
        assert_eq!(c.batch.export_timeout, Duration::from_millis(30000));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn grpc_default_endpoint() {
        let c = enabled(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint, "http://localhost:4317/");
    }

    #[test]
    fn base_endpoint_gets_signal_path_for_http() {
        let cases = [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            ("https://c.example/otlp", "https://c.example/otlp/v1/traces"),
            (
                "https://c.example/otlp/",
                "https://c.example/otlp/v1/traces",
            ),
        ];
        for (base, want) in cases {
            let c = enabled(&[("OTEL_EXPORTER_OTLP_ENDPOINT", base)]);
            assert_eq!(c.endpoint.to_string(), want, "base {base}");
        }
    }

    #[test]
    fn base_endpoint_is_origin_for_grpc() {
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ]);
        assert_eq!(c.endpoint, "http://collector:4317/");
    }

    #[test]
    fn traces_endpoint_is_used_as_is_and_wins() {
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
        ]);
        assert_eq!(c.endpoint, "http://traces:9999/custom");
        let c = enabled(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:9999")]);
        assert_eq!(c.endpoint.to_string(), "http://traces:9999/");
    }

    #[test]
    fn scheme_less_grpc_endpoint_uses_insecure_option() {
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ]);
        assert_eq!(c.endpoint.scheme_str(), Some("https"));
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ]);
        assert_eq!(c.endpoint.scheme_str(), Some("http"));
    }

    #[test]
    fn invalid_endpoints_are_errors() {
        for bad in ["collector:4318", "ftp://collector", "http://", "not a url"] {
            let err = load(&[("OTEL_EXPORTER_OTLP_ENDPOINT", bad)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::InvalidEndpoint {
                        var: "OTEL_EXPORTER_OTLP_ENDPOINT",
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
        }
        let err = load(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "udp://x:1")]).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::InvalidEndpoint {
                var: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                ..
            }
        ));
    }

    #[test]
    fn per_signal_protocol_wins() {
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ]);
        assert_eq!(c.protocol, Protocol::Grpc);
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn unknown_protocol_warns_and_uses_default() {
        let c = enabled(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
    }

    #[test]
    fn headers_are_parsed_and_percent_decoded() {
        let c = enabled(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            " api-key = secret%20value , ,tenant=a%2Cb%3Dc",
        )]);
        let got: Vec<(String, String)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("api-key".to_string(), "secret value".to_string()),
                ("tenant".to_string(), "a,b=c".to_string())
            ]
        );
    }

    #[test]
    fn per_signal_headers_win() {
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
        ]);
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.headers[0].0, "b");
    }

    #[test]
    fn invalid_headers_are_errors() {
        for bad in ["novalue", "a=%zz", "bad name=1", "a=%0A"] {
            let err = load(&[("OTEL_EXPORTER_OTLP_HEADERS", bad)]).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::InvalidHeaders {
                        var: "OTEL_EXPORTER_OTLP_HEADERS",
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn compression() {
        assert_eq!(
            enabled(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]).compression,
            Compression::Gzip
        );
        assert_eq!(
            enabled(&[
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none")
            ])
            .compression,
            Compression::None
        );
        let c = enabled(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]);
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn timeout_and_certificate() {
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        ]);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.certificate, Some(PathBuf::from("/etc/ca.pem")));
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "/etc/traces-ca.pem",
            ),
        ]);
        assert_eq!(c.timeout, Duration::from_millis(700));
        assert_eq!(c.certificate, Some(PathBuf::from("/etc/traces-ca.pem")));
    }

    #[test]
    fn invalid_numbers_warn_and_use_defaults() {
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "-1"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "1.5"),
        ]);
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.batch, BatchConfig::default());
        assert_eq!(c.warnings.len(), 5, "{:?}", c.warnings);
    }

    #[test]
    fn batch_settings() {
        let c = enabled(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "1000"),
        ]);
        assert_eq!(
            c.batch,
            BatchConfig {
                max_queue_size: 100,
                max_export_batch_size: 10,
                schedule_delay: Duration::from_millis(250),
                export_timeout: Duration::from_millis(1000),
            }
        );
    }

    #[test]
    fn batch_size_is_capped_by_queue_size() {
        let c = enabled(&[("OTEL_BSP_MAX_QUEUE_SIZE", "100")]);
        assert_eq!(c.batch.max_export_batch_size, 100);
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn export_can_be_turned_off() {
        assert_eq!(
            off(&[("OTEL_TRACES_EXPORTER", "none")]),
            Some(Disabled::TracesExporterNone)
        );
        assert_eq!(
            off(&[("MESHTRACE_TRACING", "off")]),
            Some(Disabled::MeshtraceTracingOff)
        );
        assert_eq!(
            off(&[("OTEL_SDK_DISABLED", "true")]),
            Some(Disabled::SdkDisabled)
        );
        assert_eq!(
            off(&[
                ("MESHTRACE_TRACING", "on"),
                ("OTEL_TRACES_EXPORTER", "otlp")
            ]),
            None
        );
        // Off wins even when the rest of the configuration is broken.
        assert!(off(&[
            ("MESHTRACE_TRACING", "off"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x")
        ])
        .is_some());
    }

    #[test]
    fn invalid_switches() {
        assert!(matches!(
            load(&[("MESHTRACE_TRACING", "maybe")]),
            Err(ConfigError::InvalidSwitch { .. })
        ));
        let c = enabled(&[("OTEL_TRACES_EXPORTER", "jaeger")]);
        assert_eq!(c.warnings.len(), 1);
        let c = enabled(&[("OTEL_SDK_DISABLED", "yes")]);
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn empty_values_are_unset() {
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", ""),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
        ]);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint, "http://localhost:4317/");
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2c").as_deref(), Some("a b,"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
    }

    #[test]
    fn per_signal_insecure_wins() {
        let grpc_without_scheme = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ];
        let with = |vars: &[(&'static str, &'static str)]| {
            let mut all = grpc_without_scheme.to_vec();
            all.extend_from_slice(vars);
            enabled(&all)
        };
        let c = with(&[
            ("OTEL_EXPORTER_OTLP_INSECURE", "false"),
            ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "true"),
        ]);
        assert_eq!(c.endpoint.scheme_str(), Some("http"));
        let c = with(&[
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "false"),
        ]);
        assert_eq!(c.endpoint.scheme_str(), Some("https"));
    }

    #[test]
    fn per_signal_rule_names_the_variable_that_won() {
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "later"),
        ]);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].starts_with("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT:"),
            "{:?}",
            c.warnings
        );
        // An empty per-signal value is unset: the generic one applies.
        let c = enabled(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", " "),
        ]);
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.headers[0].0, "a");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        export: ExportArgs,
    }

    #[test]
    fn flags_feed_the_same_rules_as_the_environment() {
        use clap::Parser;
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
        let config = cli.export.config().unwrap().on().unwrap();
        assert_eq!(config.protocol, Protocol::Grpc);
        assert_eq!(config.endpoint, "http://collector:4318/");
        assert_eq!(config.batch.max_queue_size, 64);
        let resource = cli.export.resource();
        assert_eq!(resource.get("service.name"), Some("web"));
        assert_eq!(resource.get("k8s.pod.name"), Some("web-1"));
        let off = Cli::try_parse_from(["proxy", "--tracing", "off"]).unwrap();
        assert_eq!(
            off.export.config().unwrap().off(),
            Some(&Disabled::MeshtraceTracingOff)
        );
    }

    #[test]
    fn every_flag_maps_to_its_variable() {
        use clap::{CommandFactory, Parser};
        let command = Cli::command();
        let unset = format!("{:?}", ExportArgs::default());
        let mut checked = 0;
        for arg in command.get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let env = env.to_string_lossy().into_owned();
            let by_flag = Cli::try_parse_from(["proxy", &format!("--{long}"), "value"])
                .unwrap()
                .export;
            let by_var = ExportArgs::from_lookup(|name| (name == env).then(|| "value".into()));
            assert_eq!(
                format!("{by_flag:?}"),
                format!("{by_var:?}"),
                "--{long} / {env}"
            );
            assert_ne!(format!("{by_flag:?}"), unset, "--{long} / {env}");
            checked += 1;
        }
        assert_eq!(checked, 29);
    }
}
