//! The two OTLP transports behind one interface, and what they share: TLS roots, request
//! headers, and the headers that keep a meshed collector from tracing our own exports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use rand::Rng;

use super::config::{ExportConfig, Protocol};
use super::grpc::GrpcTransport;
use super::http::{HttpPayload, HttpTransport};
use super::retry::Attempt;

/// A transport that could not be set up; reported at startup.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the collector CA certificate {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no PEM certificate found in {0}")]
    NoCertificate(PathBuf),
    #[error("collector CA certificate {path}: {source}")]
    InvalidCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("gRPC endpoint: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// `User-Agent` of export requests, as the OTLP spec asks exporters to identify themselves.
pub const USER_AGENT: &str = concat!(
    "meshtrace-proxy/",
    env!("CARGO_PKG_VERSION"),
    " (OTLP exporter; rust)"
);

/// A prepared request body: encoded once per batch, re-sent as-is on retries.
pub enum Payload {
    /// An encoded `ExportTraceServiceRequest`.
    Grpc(Bytes),
    Http(HttpPayload),
}

pub enum Transport {
    Grpc(GrpcTransport),
    Http(Box<HttpTransport>),
}

impl Transport {
    pub fn new(config: &ExportConfig) -> Result<Self, ExportError> {
        Ok(match config.protocol {
            Protocol::Grpc => Transport::Grpc(GrpcTransport::new(config)?),
            Protocol::HttpProtobuf => Transport::Http(Box::new(HttpTransport::new(config)?)),
        })
    }

    /// `request` is an encoded `ExportTraceServiceRequest`.
    pub fn prepare(&self, request: Bytes) -> Payload {
        match self {
            Transport::Grpc(_) => Payload::Grpc(request),
            Transport::Http(http) => Payload::Http(http.prepare(request)),
        }
    }

    /// One attempt, bounded by `timeout`.
    pub async fn send(&mut self, payload: &Payload, timeout: Duration) -> Attempt {
        match (self, payload) {
            (Transport::Grpc(grpc), Payload::Grpc(request)) => grpc.send(request, timeout).await,
            (Transport::Http(http), Payload::Http(body)) => http.send(body, timeout).await,
            _ => Attempt::Failed {
                reason: "payload prepared for another transport".into(),
            },
        }
    }
}

/// Headers on every export request: the configured ones, then an unsampled trace context so a
/// meshed collector's proxy does not trace (and re-export) our exports.
pub fn untraced_headers(configured: &[(HeaderName, HeaderValue)]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::with_capacity(configured.len() + 2);
    for (name, value) in configured {
        headers.append(name.clone(), value.clone());
    }
    let mut rng = rand::rng();
    let trace_id: [u8; 16] = rng.random();
    let span_id: [u8; 8] = rng.random();
    let traceparent = format!("00-{}-{}-00", hex::encode(trace_id), hex::encode(span_id));
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert(HeaderName::from_static("traceparent"), value);
    }
    headers.insert(HeaderName::from_static("b3"), HeaderValue::from_static("0"));
    headers
}

/// The CA certificates in a PEM file.
pub fn load_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ExportError> {
    let pem = std::fs::read(path).map_err(|source| ExportError::Certificate {
        path: path.to_owned(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ExportError::Certificate {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ExportError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Roots that verify the collector: the configured CA file, else the webpki (Mozilla) roots.
pub fn root_store(certificate: Option<&Path>) -> Result<rustls::RootCertStore, ExportError> {
    let mut roots = rustls::RootCertStore::empty();
    match certificate {
        Some(path) => {
            for cert in load_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|source| ExportError::InvalidCertificate {
                        path: path.to_owned(),
                        source,
                    })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}
