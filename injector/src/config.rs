//! Injector configuration and the value types shared by flags and pod/namespace annotations.
//!
//! Every proxy knob has one parser (`FromStr`) used both for the injector's own flags/env (the
//! defaults) and for `meshtrace.io/*` annotations, so a value is valid in one place iff it is
//! valid in the other. Resolution is pod annotation, then namespace annotation, then default; an
//! invalid annotation is skipped with a warning, never a rejected pod.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, ValueEnum};

/// Annotation keys understood by the injector.
pub mod keys {
    /// `enabled` or `disabled`, on a namespace or a pod.
    pub const INJECT: &str = "meshtrace.io/inject";
    /// Set by the injector on every pod it meshes.
    pub const INJECTED: &str = "meshtrace.io/injected";
    /// Set by the injector: the proxy version (image tag) injected.
    pub const PROXY_VERSION: &str = "meshtrace.io/proxy-version";
    pub const SAMPLE_RATE: &str = "meshtrace.io/sample-rate";
    pub const COLLECTOR_ENDPOINT: &str = "meshtrace.io/collector-endpoint";
    pub const COLLECTOR_PROTOCOL: &str = "meshtrace.io/collector-protocol";
    pub const SKIP_INBOUND_PORTS: &str = "meshtrace.io/skip-inbound-ports";
    pub const SKIP_OUTBOUND_PORTS: &str = "meshtrace.io/skip-outbound-ports";
    pub const OPAQUE_PORTS: &str = "meshtrace.io/opaque-ports";
    pub const PROXY_IMAGE: &str = "meshtrace.io/proxy-image";
    pub const PROXY_CPU_REQUEST: &str = "meshtrace.io/proxy-cpu-request";
    pub const PROXY_CPU_LIMIT: &str = "meshtrace.io/proxy-cpu-limit";
    pub const PROXY_MEMORY_REQUEST: &str = "meshtrace.io/proxy-memory-request";
    pub const PROXY_MEMORY_LIMIT: &str = "meshtrace.io/proxy-memory-limit";
    pub const NATIVE_SIDECAR: &str = "meshtrace.io/native-sidecar";
    /// `ipv4`, `ipv6` or `dual`: the IP families the pod's traffic uses.
    pub const IP_FAMILIES: &str = "meshtrace.io/ip-families";
    pub const LOG_LEVEL: &str = "meshtrace.io/log-level";
    /// `off`, `request-id` or `infer`: how the proxy finds a parent for outbound requests that
    /// carry no trace context (MESHTRACE_CONTEXT_INFERENCE).
    pub const CONTEXT_INFERENCE: &str = "meshtrace.io/context-inference";
    /// Request-id header name, or `none` (MESHTRACE_REQUEST_ID_HEADER).
    pub const REQUEST_ID_HEADER: &str = "meshtrace.io/request-id-header";
    /// The namespace label Pod Security Admission enforces.
    pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
}

/// Why a configuration value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

fn invalid(msg: impl Into<String>) -> InvalidValue {
    InvalidValue(msg.into())
}

/// Fraction of new traces the proxy samples, in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRate(f64);

impl SampleRate {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for SampleRate {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rate: f64 = s
            .trim()
            .parse()
            .map_err(|_| invalid(format!("sample rate {s:?} is not a number")))?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(invalid(format!("sample rate {s:?} is not within [0, 1]")));
        }
        Ok(SampleRate(rate))
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// OTLP collector URL (`http://` or `https://`, with a host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorEndpoint(String);

impl FromStr for CollectorEndpoint {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: http::Uri = s
            .parse()
            .map_err(|_| invalid(format!("collector endpoint {s:?} is not a URL")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(invalid(format!(
                    "collector endpoint {s:?} must start with http:// or https://"
                )))
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid(format!("collector endpoint {s:?} has no host")));
        }
        Ok(CollectorEndpoint(s.to_owned()))
    }
}

impl fmt::Display for CollectorEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// OTLP transport, spelled as `OTEL_EXPORTER_OTLP_PROTOCOL` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorProtocol {
    Grpc,
    HttpProtobuf,
}

impl FromStr for CollectorProtocol {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(invalid(format!(
                "collector protocol {other:?} is not \"grpc\" or \"http/protobuf\""
            ))),
        }
    }
}

impl fmt::Display for CollectorProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        })
    }
}

/// The IP families of a pod's traffic. A pod has no IPs at admission, so this is what the
/// operator knows of the cluster (flag) or of a namespace or pod (annotation): it decides the
/// proxy's listen addresses and whether `init` (or the CNI plugin) also programs ip6tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamilies {
    Ipv4,
    Ipv6,
    Dual,
}

impl IpFamilies {
    /// Whether the pod has IPv4 traffic.
    pub fn has_ipv4(self) -> bool {
        matches!(self, Self::Ipv4 | Self::Dual)
    }

    /// Whether the pod has IPv6 traffic (`init --ipv6`, ip6tables rules).
    pub fn has_ipv6(self) -> bool {
        matches!(self, Self::Ipv6 | Self::Dual)
    }
}

impl FromStr for IpFamilies {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "ipv4" => Ok(Self::Ipv4),
            "ipv6" => Ok(Self::Ipv6),
            "dual" => Ok(Self::Dual),
            other => Err(invalid(format!(
                "IP families {other:?} is not \"ipv4\", \"ipv6\" or \"dual\""
            ))),
        }
    }
}

impl fmt::Display for IpFamilies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::Dual => "dual",
        })
    }
}

/// Comma-separated ports or inclusive ranges (`25,8080,9000-9100`): the one syntax that
/// `meshtrace-proxy run` and `init` take too, so an annotation the injector accepts never fails the
/// pod. Normalized (no spaces) when displayed.
pub use meshtrace_ports::PortList;

/// A container image reference (checked only for obviously broken values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyImage(String);

impl ProxyImage {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag of `repo/name:tag[@digest]`, if any.
    pub fn tag(&self) -> Option<&str> {
        let without_digest = self.0.split('@').next().unwrap_or(&self.0);
        let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
        last_segment.split_once(':').map(|(_, tag)| tag)
    }
}

impl FromStr for ProxyImage {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= 512
            && s.bytes().all(|b| b.is_ascii_graphic())
            && !s.starts_with(['/', ':', '@'])
            && !s.ends_with(['/', ':', '@']);
        if valid {
            Ok(ProxyImage(s.to_owned()))
        } else {
            Err(invalid(format!(
                "proxy image {s:?} is not an image reference"
            )))
        }
    }
}

impl fmt::Display for ProxyImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kubernetes resource quantity (`100m`, `64Mi`, `1.5`, `2e3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(String);

impl Quantity {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Quantity {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The apiserver's grammar: <signedNumber><suffix>, suffix binary (Ki..Ei), decimal
        // (m, k, M..E, empty) or an exponent (e3, E-2). Negative requests make no sense here.
        let number_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(number_end);
        let number_ok = !number.is_empty()
            && number.chars().filter(|&c| c == '.').count() <= 1
            && number.chars().any(|c| c.is_ascii_digit());
        let suffix_ok = matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        ) || ((suffix.starts_with('e') || suffix.starts_with('E'))
            && suffix[1..]
                .strip_prefix(['+', '-'])
                .unwrap_or(&suffix[1..])
                .parse::<u8>()
                .is_ok());
        if number_ok && suffix_ok {
            Ok(Quantity(s.to_owned()))
        } else {
            Err(invalid(format!("{s:?} is not a Kubernetes quantity")))
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The proxy's log filter: a level or `target=level` directives, as `MESHTRACE_LOG` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel(String);

impl FromStr for LogLevel {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        let directive_ok = |d: &str| match d.split_once('=') {
            Some((target, level)) => {
                !target.is_empty()
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'-')
                    && LEVELS.contains(&level)
            }
            None => LEVELS.contains(&d),
        };
        if !s.is_empty() && s.split(',').all(directive_ok) {
            Ok(LogLevel(s.to_owned()))
        } else {
            Err(invalid(format!(
                "log level {s:?} is not one of trace|debug|info|warn|error|off or target=level directives"
            )))
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `true`/`false` only, as the annotation documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrictBool(pub bool);

impl FromStr for StrictBool {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "true" => Ok(StrictBool(true)),
            "false" => Ok(StrictBool(false)),
            other => Err(invalid(format!("{other:?} is not \"true\" or \"false\""))),
        }
    }
}

/// `MESHTRACE_CONTEXT_INFERENCE` of the proxy: how an outbound request without trace context
/// finds its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextInference {
    Off,
    RequestId,
    Infer,
}

impl FromStr for ContextInference {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "request-id" => Ok(Self::RequestId),
            "infer" => Ok(Self::Infer),
            other => Err(invalid(format!(
                "context inference {other:?} is not \"off\", \"request-id\" or \"infer\""
            ))),
        }
    }
}

impl fmt::Display for ContextInference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::RequestId => "request-id",
            Self::Infer => "infer",
        })
    }
}

/// `MESHTRACE_REQUEST_ID_HEADER` of the proxy: an HTTP field name (RFC 9110 token), or `none`.
/// Kept as written, lowercased (field names are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdHeader(String);

impl FromStr for RequestIdHeader {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(RequestIdHeader(s.to_owned()));
        }
        match http::HeaderName::from_bytes(s.as_bytes()) {
            Ok(name) if !s.is_empty() => Ok(RequestIdHeader(name.as_str().to_owned())),
            _ => Err(invalid(format!(
                "request id header {s:?} is not an HTTP field name (or \"none\")"
            ))),
        }
    }
}

impl fmt::Display for RequestIdHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Pod Security Standards level, as the `pod-security.kubernetes.io/enforce` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum PodSecurityLevel {
    Privileged,
    Baseline,
    Restricted,
}

impl PodSecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }

    /// The level a namespace label value enforces. Pod Security Admission evaluates a value it
    /// cannot parse as `restricted`, so this does too.
    pub fn from_label(value: &str) -> Self {
        match value {
            "privileged" => Self::Privileged,
            "baseline" => Self::Baseline,
            _ => Self::Restricted,
        }
    }
}

/// A Kubernetes `major.minor` version, as `/version` reports it or the operator configures it
/// (`1.28`, `v1.28.3`, GKE's minor `28+`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    /// From `/version`'s `major` and `minor` strings (the minor may carry a suffix).
    pub fn from_parts(major: &str, minor: &str) -> Option<Self> {
        let number = |s: &str| -> Option<u32> {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        Some(KubeVersion {
            major: number(major)?,
            minor: number(minor)?,
        })
    }

    /// Sidecar containers (init containers with `restartPolicy: Always`) are on by default
    /// from 1.29.
    pub fn has_native_sidecars(self) -> bool {
        self >= KubeVersion {
            major: 1,
            minor: 29,
        }
    }
}

impl FromStr for KubeVersion {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim().trim_start_matches('v');
        let mut parts = trimmed.split('.');
        let parsed = match (parts.next(), parts.next()) {
            (Some(major), Some(minor)) => KubeVersion::from_parts(major, minor),
            _ => None,
        };
        parsed.ok_or_else(|| invalid(format!("{s:?} is not a Kubernetes version like 1.28")))
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How the proxy container is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecarMode {
    /// Native sidecar when the API server is Kubernetes >= 1.29, else a regular container.
    Auto,
    /// Always a native sidecar (init container with `restartPolicy: Always`).
    True,
    /// Always a regular first container with a postStart hook.
    False,
}

/// Injector-wide proxy defaults; any of them can be overridden per namespace or pod.
#[derive(Debug, Clone, Args)]
pub struct ProxyDefaults {
    /// Proxy image (also used for the `meshtrace-init` container). Annotation: meshtrace.io/proxy-image.
    #[arg(long, env = "MESHTRACE_PROXY_IMAGE", default_value = concat!("ghcr.io/meshtrace/proxy:", env!("CARGO_PKG_VERSION")))]
    pub proxy_image: ProxyImage,

    /// Version recorded in meshtrace.io/proxy-version when the image has no tag.
    #[arg(long, env = "MESHTRACE_PROXY_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    pub proxy_version: String,

    /// Fraction of new traces sampled, 0 to 1. Annotation: meshtrace.io/sample-rate.
    #[arg(long, env = "MESHTRACE_SAMPLE_RATE", default_value = "1.0")]
    pub sample_rate: SampleRate,

    /// OTLP collector URL given to proxies. Annotation: meshtrace.io/collector-endpoint.
    #[arg(
        long,
        env = "MESHTRACE_COLLECTOR_ENDPOINT",
        default_value = "http://otel-collector.observability.svc.cluster.local:4317"
    )]
    pub collector_endpoint: CollectorEndpoint,

    /// OTLP protocol: grpc or http/protobuf. Annotation: meshtrace.io/collector-protocol.
    #[arg(long, env = "MESHTRACE_COLLECTOR_PROTOCOL", default_value = "grpc")]
    pub collector_protocol: CollectorProtocol,

    /// Inbound ports not redirected to the proxy (`25,9000-9100`). Annotation:
    /// meshtrace.io/skip-inbound-ports.
    #[arg(long, env = "MESHTRACE_SKIP_INBOUND_PORTS", default_value = "")]
    pub skip_inbound_ports: PortList,

    /// Outbound ports not redirected to the proxy. Annotation: meshtrace.io/skip-outbound-ports.
    #[arg(long, env = "MESHTRACE_SKIP_OUTBOUND_PORTS", default_value = "")]
    pub skip_outbound_ports: PortList,

    /// Ports proxied as opaque TCP (no HTTP detection, no spans). Annotation: meshtrace.io/opaque-ports.
    #[arg(long, env = "MESHTRACE_OPAQUE_PORTS", default_value = "")]
    pub opaque_ports: PortList,

    /// Proxy CPU request. Annotation: meshtrace.io/proxy-cpu-request.
    #[arg(long, env = "MESHTRACE_PROXY_CPU_REQUEST", default_value = "100m")]
    pub proxy_cpu_request: Quantity,

    /// Proxy CPU limit (none by default). Annotation: meshtrace.io/proxy-cpu-limit.
    #[arg(long, env = "MESHTRACE_PROXY_CPU_LIMIT")]
    pub proxy_cpu_limit: Option<Quantity>,

    /// Proxy memory request. Annotation: meshtrace.io/proxy-memory-request.
    #[arg(long, env = "MESHTRACE_PROXY_MEMORY_REQUEST", default_value = "32Mi")]
    pub proxy_memory_request: Quantity,

    /// Proxy memory limit. Annotation: meshtrace.io/proxy-memory-limit.
    #[arg(long, env = "MESHTRACE_PROXY_MEMORY_LIMIT", default_value = "256Mi")]
    pub proxy_memory_limit: Option<Quantity>,

    /// Native sidecar: auto (Kubernetes >= 1.29), true or false. Annotation:
    /// meshtrace.io/native-sidecar ("true"/"false").
    #[arg(
        long,
        env = "MESHTRACE_NATIVE_SIDECAR",
        value_enum,
        default_value = "auto"
    )]
    pub native_sidecar: NativeSidecarMode,

    /// Proxy log filter (MESHTRACE_LOG of the proxy). Annotation: meshtrace.io/log-level.
    #[arg(long, env = "MESHTRACE_PROXY_LOG_LEVEL", default_value = "info")]
    pub proxy_log_level: LogLevel,

    /// IP families of the pods' traffic: ipv4, ipv6 or dual (the proxy listens on each family
    /// and `init`/the CNI plugin also programs ip6tables for ipv6 and dual). Annotation:
    /// meshtrace.io/ip-families.
    #[arg(long, env = "MESHTRACE_IP_FAMILIES", default_value = "ipv4")]
    pub ip_families: IpFamilies,
}

/// The proxy settings for one pod, after annotations were applied over the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    pub image: ProxyImage,
    pub version: String,
    pub sample_rate: SampleRate,
    pub collector_endpoint: CollectorEndpoint,
    pub collector_protocol: CollectorProtocol,
    pub skip_inbound_ports: PortList,
    pub skip_outbound_ports: PortList,
    pub opaque_ports: PortList,
    pub cpu_request: Quantity,
    pub cpu_limit: Option<Quantity>,
    pub memory_request: Quantity,
    pub memory_limit: Option<Quantity>,
    /// `Some` when an annotation forces the mode; `None` defers to the injector's mode.
    pub native_sidecar: Option<bool>,
    pub log_level: LogLevel,
    /// Only from annotations: unset leaves the proxy's own default.
    pub context_inference: Option<ContextInference>,
    /// Only from annotations: unset leaves the proxy's own default.
    pub request_id_header: Option<RequestIdHeader>,
    pub ip_families: IpFamilies,
}

/// Where a value came from, for warnings.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Pod,
    Namespace,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Pod => "pod",
            Origin::Namespace => "namespace",
        })
    }
}

/// Pod annotation, then namespace annotation, then default; invalid values are skipped and
/// reported in `warnings`.
fn pick<T: FromStr<Err: fmt::Display>>(
    key: &str,
    pod: &BTreeMap<String, String>,
    namespace: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Option<T> {
    for (origin, annotations) in [(Origin::Pod, pod), (Origin::Namespace, namespace)] {
        if let Some(raw) = annotations.get(key) {
            match raw.parse() {
                Ok(value) => return Some(value),
                Err(err) => warnings.push(format!(
                    "meshtrace: ignored {origin} annotation {key}: {err}"
                )),
            }
        }
    }
    None
}

impl ProxySettings {
    /// Resolves every knob; the returned warnings name each ignored annotation.
    pub fn resolve(
        pod: &BTreeMap<String, String>,
        namespace: &BTreeMap<String, String>,
        defaults: &ProxyDefaults,
    ) -> (ProxySettings, Vec<String>) {
        let mut w = Vec::new();
        let image: ProxyImage = pick(keys::PROXY_IMAGE, pod, namespace, &mut w)
            .unwrap_or_else(|| defaults.proxy_image.clone());
        let version = image
            .tag()
            .map(str::to_owned)
            .unwrap_or_else(|| defaults.proxy_version.clone());
        let settings = ProxySettings {
            version,
            image,
            sample_rate: pick(keys::SAMPLE_RATE, pod, namespace, &mut w)
                .unwrap_or(defaults.sample_rate),
            collector_endpoint: pick(keys::COLLECTOR_ENDPOINT, pod, namespace, &mut w)
                .unwrap_or_else(|| defaults.collector_endpoint.clone()),
            collector_protocol: pick(keys::COLLECTOR_PROTOCOL, pod, namespace, &mut w)
                .unwrap_or(defaults.collector_protocol),
            skip_inbound_ports: pick(keys::SKIP_INBOUND_PORTS, pod, namespace, &mut w)
                .unwrap_or_else(|| defaults.skip_inbound_ports.clone()),
            skip_outbound_ports: pick(keys::SKIP_OUTBOUND_PORTS, pod, namespace, &mut w)
                .unwrap_or_else(|| defaults.skip_outbound_ports.clone()),
            opaque_ports: pick(keys::OPAQUE_PORTS, pod, namespace, &mut w)
                .unwrap_or_else(|| defaults.opaque_ports.clone()),
            cpu_request: pick(keys::PROXY_CPU_REQUEST, pod, namespace, &mut w)
                .unwrap_or_else(|| defaults.proxy_cpu_request.clone()),
            cpu_limit: pick(keys::PROXY_CPU_LIMIT, pod, namespace, &mut w)
                .or_else(|| defaults.proxy_cpu_limit.clone()),
            memory_request: pick(keys::PROXY_MEMORY_REQUEST, pod, namespace, &mut w)
                .unwrap_or_else(|| defaults.proxy_memory_request.clone()),
            memory_limit: pick(keys::PROXY_MEMORY_LIMIT, pod, namespace, &mut w)
                .or_else(|| defaults.proxy_memory_limit.clone()),
            native_sidecar: pick::<StrictBool>(keys::NATIVE_SIDECAR, pod, namespace, &mut w)
                .map(|b| b.0),
            log_level: pick(keys::LOG_LEVEL, pod, namespace, &mut w)
                .unwrap_or_else(|| defaults.proxy_log_level.clone()),
            context_inference: pick(keys::CONTEXT_INFERENCE, pod, namespace, &mut w),
            request_id_header: pick(keys::REQUEST_ID_HEADER, pod, namespace, &mut w),
            ip_families: pick(keys::IP_FAMILIES, pod, namespace, &mut w)
                .unwrap_or(defaults.ip_families),
        };
        (settings, w)
    }
}

/// Log output format of the injector itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `meshtrace-injector`: mutating admission webhook adding the meshtrace proxy to pods of
/// namespaces (or pods) annotated `meshtrace.io/inject: enabled`.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// HTTPS address of the webhook (POST /inject, GET /healthz).
    #[arg(long, env = "MESHTRACE_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Plain-HTTP address serving Prometheus GET /metrics.
    #[arg(long, env = "MESHTRACE_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// PEM certificate chain to serve; reloaded when the file changes. Without --tls-cert and
    /// --tls-key the injector bootstraps its own CA and patches its webhook's caBundle.
    #[arg(long, env = "MESHTRACE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching --tls-cert.
    #[arg(long, env = "MESHTRACE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Seconds between checks of the certificate files for changes.
    #[arg(long, env = "MESHTRACE_TLS_RELOAD_SECONDS", default_value_t = 10)]
    pub tls_reload_seconds: u64,

    /// Name of the injector's Service (the bootstrapped certificate is issued for
    /// <service>.<namespace>.svc).
    #[arg(
        long,
        env = "MESHTRACE_SERVICE_NAME",
        default_value = "meshtrace-injector"
    )]
    pub service_name: String,

    /// The mesh's own namespace (never injected); normally the injector pod's namespace.
    #[arg(long, env = "MESHTRACE_NAMESPACE", default_value = "meshtrace-system")]
    pub namespace: String,

    /// Name of the MutatingWebhookConfiguration whose caBundle a bootstrapping injector patches.
    #[arg(
        long,
        env = "MESHTRACE_WEBHOOK_CONFIG",
        default_value = "meshtrace-injector"
    )]
    pub webhook_config: String,

    /// Largest accepted AdmissionReview body, in bytes (larger: HTTP 413).
    #[arg(long, env = "MESHTRACE_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Log filter of the injector itself (tracing EnvFilter syntax).
    #[arg(long, env = "MESHTRACE_LOG", default_value = "info")]
    pub log: String,

    /// Log format of the injector itself.
    #[arg(long, env = "MESHTRACE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub proxy: ProxyDefaults,

    #[command(flatten)]
    pub cluster: ClusterSettings,
}

/// What the injector assumes about the cluster it serves.
#[derive(Debug, Clone, Args)]
pub struct ClusterSettings {
    /// CNI mode: the meshtrace-cni plugin (manifests/cni/) programs each meshed pod's iptables
    /// rules, so no `meshtrace-init` container (and no NET_ADMIN) is injected.
    #[arg(long, env = "MESHTRACE_CNI", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub cni: bool,

    /// Kubernetes version of the API server (`1.28`) instead of reading `/version`.
    #[arg(long, env = "MESHTRACE_KUBERNETES_VERSION")]
    pub kubernetes_version: Option<KubeVersion>,

    /// Seconds between re-reads of the API server's `/version` (an upgraded control plane
    /// gains native sidecars without restarting the injector).
    #[arg(long, env = "MESHTRACE_VERSION_REFRESH_SECONDS", default_value_t = 600)]
    pub version_refresh_seconds: u64,

    /// Pod Security level enforced in namespaces without a `pod-security.kubernetes.io/enforce`
    /// label (the `defaults.enforce` of the API server's PodSecurity AdmissionConfiguration).
    #[arg(
        long,
        env = "MESHTRACE_POD_SECURITY_DEFAULT",
        value_enum,
        default_value = "privileged"
    )]
    pub pod_security_default: PodSecurityLevel,
}

impl Default for ClusterSettings {
    /// The flags' defaults.
    fn default() -> Self {
        ClusterSettings {
            cni: false,
            kubernetes_version: None,
            version_refresh_seconds: 600,
            pod_security_default: PodSecurityLevel::Privileged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ProxyDefaults {
        Cli::parse_from(["meshtrace-injector"]).proxy
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ip_families_pod_wins_over_namespace_and_invalid_falls_back() {
        let d = defaults();
        let resolve = |pod: &[(&str, &str)], ns: &[(&str, &str)]| {
            ProxySettings::resolve(&map(pod), &map(ns), &d)
        };
        assert_eq!(resolve(&[], &[]).0.ip_families, IpFamilies::Ipv4);
        let ns = [(keys::IP_FAMILIES, "dual")];
        assert_eq!(resolve(&[], &ns).0.ip_families, IpFamilies::Dual);
        let pod = [(keys::IP_FAMILIES, "ipv6")];
        assert_eq!(resolve(&pod, &ns).0.ip_families, IpFamilies::Ipv6);
        let (settings, warnings) = resolve(&[(keys::IP_FAMILIES, "IPv6 please")], &[]);
        assert_eq!(settings.ip_families, IpFamilies::Ipv4);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(keys::IP_FAMILIES), "{warnings:?}");
    }

    #[test]
    fn port_lists_parse_and_normalize() {
        let ports: PortList = " 25, 8080 ,9000-9100,".parse().unwrap();
        let ranges: Vec<(u16, u16)> = ports
            .ranges()
            .iter()
            .map(|r| (r.first(), r.last()))
            .collect();
        assert_eq!(ranges, [(25, 25), (8080, 8080), (9000, 9100)]);
        assert_eq!(ports.to_string(), "25,8080,9000-9100");
        assert!("".parse::<PortList>().unwrap().is_empty());
        for bad in ["0", "65536", "http", "9100-9000", "1-", "-5", "80,abc"] {
            assert!(bad.parse::<PortList>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn quantities_follow_the_apiserver_grammar() {
        for ok in ["100m", "1", "0.5", "64Mi", "1Gi", "2e3", "1E-2", "10k"] {
            assert!(ok.parse::<Quantity>().is_ok(), "{ok} refused");
        }
        for bad in ["", "lots", "1.2.3", "10MB", "-1", "Mi", "1e"] {
            assert!(bad.parse::<Quantity>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn scalar_values_validate() {
        assert_eq!("0.25".parse::<SampleRate>().unwrap().get(), 0.25);
        assert!("1.5".parse::<SampleRate>().is_err());
        assert!("NaN".parse::<SampleRate>().is_err());
        assert!("https://c.example:4318"
            .parse::<CollectorEndpoint>()
            .is_ok());
        assert!("c.example:4317".parse::<CollectorEndpoint>().is_err());
        assert!("ftp://c.example".parse::<CollectorEndpoint>().is_err());
        assert_eq!(
            "http/protobuf".parse::<CollectorProtocol>().unwrap(),
            CollectorProtocol::HttpProtobuf
        );
        assert!("http".parse::<CollectorProtocol>().is_err());
        assert!("debug".parse::<LogLevel>().is_ok());
        assert!("info,meshtrace_proxy=trace".parse::<LogLevel>().is_ok());
        assert!("loud".parse::<LogLevel>().is_err());
        assert!("yes".parse::<StrictBool>().is_err());
        assert!("a b".parse::<ProxyImage>().is_err());
    }

    #[test]
    fn image_tag_is_found_past_a_registry_port_and_before_a_digest() {
        let image: ProxyImage = "registry:5000/mesh/proxy:1.2.3@sha256:abc".parse().unwrap();
        assert_eq!(image.tag(), Some("1.2.3"));
        let image: ProxyImage = "registry:5000/mesh/proxy".parse().unwrap();
        assert_eq!(image.tag(), None);
    }

    #[test]
    fn pod_beats_namespace_beats_default_and_invalid_values_warn() {
        let pod = map(&[(keys::SAMPLE_RATE, "0.5"), (keys::LOG_LEVEL, "shouting")]);
        let ns = map(&[
            (keys::SAMPLE_RATE, "0.1"),
            (keys::LOG_LEVEL, "debug"),
            (keys::OPAQUE_PORTS, "5432"),
            (keys::PROXY_CPU_LIMIT, "lots"),
        ]);
        let (s, warnings) = ProxySettings::resolve(&pod, &ns, &defaults());
        assert_eq!(s.sample_rate.get(), 0.5);
        assert_eq!(s.log_level.to_string(), "debug");
        assert_eq!(s.opaque_ports.to_string(), "5432");
        assert_eq!(s.cpu_limit, None);
        assert_eq!(s.memory_request.as_str(), "32Mi");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("pod annotation meshtrace.io/log-level")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("namespace annotation meshtrace.io/proxy-cpu-limit")),
            "{warnings:?}"
        );
    }

    #[test]
    fn proxy_version_follows_the_effective_image() {
        let pod = map(&[(keys::PROXY_IMAGE, "example.com/proxy:9.9.9")]);
        let (s, _) = ProxySettings::resolve(&pod, &BTreeMap::new(), &defaults());
        assert_eq!(s.version, "9.9.9");
        let (s, _) = ProxySettings::resolve(&BTreeMap::new(), &BTreeMap::new(), &defaults());
        assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// The settings of a pod with no annotations under the built-in defaults.
    pub fn settings() -> ProxySettings {
        let defaults = Cli::parse_from(["meshtrace-injector"]).proxy;
        ProxySettings::resolve(&BTreeMap::new(), &BTreeMap::new(), &defaults).0
    }
}
