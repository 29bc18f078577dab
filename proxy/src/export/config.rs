//! The exporter's configuration, read exactly as the OpenTelemetry exporter and batch span
//! processor specs describe the `OTEL_*` variables.
//!
//! Pure: every input comes through a `lookup` function so each rule (per-signal variables win,
//! defaults, invalid values) is unit-testable without touching the process environment.
//! Following the spec, an unparseable number or an unknown enum value is a warning and the default
//! is used; a value that would silently send spans somewhere else (bad URL, bad headers) is an error.

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

    const fn default_endpoint(self) -> &'static str {
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

impl ExportConfig {
    /// Reads the configuration through `lookup` (the environment, or the parsed CLI flags).
    /// `Ok(Err(_))` means export is turned off (propagation keeps working).
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Result<ExportConfig, Disabled>, ConfigError> {
        // The spec treats an empty value as unset.
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut warnings = Vec::new();

        if let Some(value) = get("MESHTRACE_TRACING") {
            match value.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => {}
                "off" | "false" | "0" => return Ok(Err(Disabled::MeshtraceTracingOff)),
                _ => {
                    return Err(ConfigError::InvalidSwitch {
                        var: "MESHTRACE_TRACING",
                        value,
                    })
                }
            }
        }
        if let Some(value) = get("OTEL_SDK_DISABLED") {
            match value.trim().to_ascii_lowercase().as_str() {
                "true" => return Ok(Err(Disabled::SdkDisabled)),
                "false" => {}
                _ => warnings.push(format!(
                    "OTEL_SDK_DISABLED: expected `true` or `false`, got {value:?}; ignored"
                )),
            }
        }
        if let Some(value) = get("OTEL_TRACES_EXPORTER") {
            let names: Vec<String> = value
                .split(',')
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect();
            if names.iter().any(|n| n == "none") {
                return Ok(Err(Disabled::TracesExporterNone));
            }
            if !names.iter().any(|n| n == "otlp") {
                warnings.push(format!(
                    "OTEL_TRACES_EXPORTER: {value:?} is not supported (only `otlp` and `none`); using otlp"
                ));
            }
        }

        // Per-signal variables win over the general ones.
        let pick = |signal: &'static str, general: &'static str| {
            get(signal)
                .map(|v| (signal, v))
                .or_else(|| get(general).map(|v| (general, v)))
        };

        let protocol = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            None => Protocol::HttpProtobuf,
            Some((var, value)) => match value.trim() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                other => {
                    warnings.push(format!(
                        "{var}: unsupported protocol {other:?} (expected `grpc` or `http/protobuf`); using http/protobuf"
                    ));
                    Protocol::HttpProtobuf
                }
            },
        };

        let insecure = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
            "OTEL_EXPORTER_OTLP_INSECURE",
        ) {
            None => false,
            Some((var, value)) => match value.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    warnings.push(format!(
                        "{var}: expected `true` or `false`, got {value:?}; using false"
                    ));
                    false
                }
            },
        };

        let endpoint = resolve_endpoint(
            protocol,
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            insecure,
        )?;

        let headers = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            None => Vec::new(),
            Some((var, value)) => parse_headers(&value)
                .map_err(|reason| ConfigError::InvalidHeaders { var, reason })?,
        };

        let compression = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) {
            None => Compression::None,
            Some((var, value)) => match value.trim().to_ascii_lowercase().as_str() {
                "gzip" => Compression::Gzip,
                "none" => Compression::None,
                other => {
                    warnings.push(format!(
                        "{var}: unsupported compression {other:?} (expected `gzip` or `none`); using none"
                    ));
                    Compression::None
                }
            },
        };

        let timeout = match pick(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            None => Duration::from_millis(10_000),
            Some((var, value)) => millis(var, &value, 10_000, &mut warnings),
        };

        let certificate = pick(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )
        .map(|(_, v)| PathBuf::from(v.trim()));

        let defaults = BatchConfig::default();
        let count = |var: &'static str, default: usize, warnings: &mut Vec<String>| match get(var) {
            None => default,
            Some(value) => match value.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    warnings.push(format!(
                        "{var}: expected a positive integer, got {value:?}; using {default}"
                    ));
                    default
                }
            },
        };
        let max_queue_size = count(
            "OTEL_BSP_MAX_QUEUE_SIZE",
            defaults.max_queue_size,
            &mut warnings,
        );
        let mut max_export_batch_size = count(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            defaults.max_export_batch_size,
            &mut warnings,
        );
        if max_export_batch_size > max_queue_size {
            warnings.push(format!(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE ({max_export_batch_size}) exceeds OTEL_BSP_MAX_QUEUE_SIZE ({max_queue_size}); using {max_queue_size}"
            ));
            max_export_batch_size = max_queue_size;
        }
        let schedule_delay = match get("OTEL_BSP_SCHEDULE_DELAY") {
            None => defaults.schedule_delay,
            Some(value) => millis("OTEL_BSP_SCHEDULE_DELAY", &value, 5000, &mut warnings),
        };
        let export_timeout = match get("OTEL_BSP_EXPORT_TIMEOUT") {
            None => defaults.export_timeout,
            Some(value) => millis("OTEL_BSP_EXPORT_TIMEOUT", &value, 30000, &mut warnings),
        };

        Ok(Ok(ExportConfig {
            protocol,
            endpoint,
            headers,
            compression,
            timeout,
            certificate,
            batch: BatchConfig {
                max_queue_size,
                max_export_batch_size,
                schedule_delay,
                export_timeout,
            },
            retry: RetryPolicy::default(),
            warnings,
        }))
    }
}

/// A duration in milliseconds; the spec says to warn and use the default when unparseable.
fn millis(var: &str, value: &str, default_ms: u64, warnings: &mut Vec<String>) -> Duration {
    match value.trim().parse::<u64>() {
        Ok(ms) if ms > 0 => Duration::from_millis(ms),
        _ => {
            warnings.push(format!(
                "{var}: expected a positive number of milliseconds, got {value:?}; using {default_ms}"
            ));
            Duration::from_millis(default_ms)
        }
    }
}

/// The spec's endpoint rules: the per-signal URL is used as-is; the general one is a base to
/// which `v1/traces` is appended for OTLP/HTTP; gRPC uses the origin.
fn resolve_endpoint(
    protocol: Protocol,
    traces_endpoint: Option<String>,
    base_endpoint: Option<String>,
    insecure: bool,
) -> Result<Uri, ConfigError> {
    let (var, raw, append_signal_path) = match (traces_endpoint, base_endpoint) {
        (Some(v), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v, false),
        (None, Some(v)) => (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            v,
            protocol == Protocol::HttpProtobuf,
        ),
        (None, None) => (
            "default",
            protocol.default_endpoint().to_owned(),
            protocol == Protocol::HttpProtobuf,
        ),
    };
    let raw = raw.trim().to_owned();
    let invalid = |reason: String| ConfigError::InvalidEndpoint {
        var,
        value: raw.clone(),
        reason,
    };
    let has_scheme = raw.contains("://");
    let with_scheme = if has_scheme {
        raw.clone()
    } else if protocol == Protocol::Grpc {
        // The spec's `insecure` option only matters for a scheme-less gRPC endpoint.
        let scheme = if insecure { "http" } else { "https" };
        format!("{scheme}://{raw}")
    } else {
        return Err(invalid(
            "a URL with an http or https scheme is required".into(),
        ));
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(invalid("the scheme must be http or https".into())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("a host is required".into()));
    }
    if uri.query().is_some() && append_signal_path {
        return Err(invalid("a base endpoint cannot have a query".into()));
    }
    if !append_signal_path {
        return Ok(uri);
    }
    let base_path = uri.path().trim_end_matches('/');
    let path = format!("{base_path}/v1/traces");
    let mut parts = uri.into_parts();
    parts.path_and_query = Some(
        path.parse()
            .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?,
    );
    Uri::from_parts(parts).map_err(|e| invalid(e.to_string()))
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

    fn load(vars: &[(&str, &str)]) -> Result<Result<ExportConfig, Disabled>, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ExportConfig::from_env(|name| map.get(name).cloned())
    }

    fn enabled(vars: &[(&str, &str)]) -> ExportConfig {
        load(vars).expect("valid").expect("enabled")
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
            load(&[("OTEL_TRACES_EXPORTER", "none")])
                .unwrap()
                .unwrap_err(),
            Disabled::TracesExporterNone
        );
        assert_eq!(
            load(&[("MESHTRACE_TRACING", "off")]).unwrap().unwrap_err(),
            Disabled::MeshtraceTracingOff
        );
        assert_eq!(
            load(&[("OTEL_SDK_DISABLED", "true")]).unwrap().unwrap_err(),
            Disabled::SdkDisabled
        );
        assert!(load(&[
            ("MESHTRACE_TRACING", "on"),
            ("OTEL_TRACES_EXPORTER", "otlp")
        ])
        .unwrap()
        .is_ok());
        // Off wins even when the rest of the configuration is broken.
        assert!(load(&[
            ("MESHTRACE_TRACING", "off"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x")
        ])
        .unwrap()
        .is_err());
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
}
