//! OTLP/gRPC with the generated `opentelemetry-proto` tonic client.
//!
//! The channel connects lazily and reconnects through tonic's connector, which resolves the
//! collector's name again on every new connection, so a collector that restarts (new pod IP)
//! is found again.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::config::{Compression, ExportConfig};
use super::retry::{classify_grpc, Attempt};
use super::transport::{load_certificates, untraced_headers, ExportError, USER_AGENT};

pub struct GrpcTransport {
    client: TraceServiceClient<Channel>,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl GrpcTransport {
    pub fn new(config: &ExportConfig) -> Result<Self, ExportError> {
        let mut endpoint = Endpoint::from_shared(config.endpoint.to_string())?
            .user_agent(USER_AGENT)?
            .connect_timeout(config.timeout)
            .tcp_nodelay(true);
        if config.endpoint.scheme_str() == Some("https") {
            let tls = match &config.certificate {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| ExportError::Certificate {
                        path: path.clone(),
                        source,
                    })?;
                    // Fail at startup, not at the first export, on a file without certificates.
                    load_certificates(path)?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new()
                    .trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            };
            endpoint = endpoint.tls_config(tls)?;
        }
        let mut client = TraceServiceClient::new(endpoint.connect_lazy())
            .accept_compressed(CompressionEncoding::Gzip);
        if config.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self {
            client,
            headers: config.headers.clone(),
        })
    }

    pub async fn send(
        &mut self,
        request: &ExportTraceServiceRequest,
        timeout: Duration,
    ) -> Attempt {
        let metadata = MetadataMap::from_headers(untraced_headers(&self.headers));
        let mut request = tonic::Request::from_parts(
            metadata,
            tonic::Extensions::default(),
            // The batch is kept for a possible retry; the generated client wants it by value.
            request.clone(),
        );
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, self.client.export(request)).await {
            Err(_elapsed) => Attempt::Retryable {
                after: None,
                reason: format!("no response within {timeout:?}"),
            },
            Ok(Err(status)) => classify_grpc(&status),
            Ok(Ok(response)) => {
                let partial = response.into_inner().partial_success;
                Attempt::Accepted {
                    rejected: partial
                        .as_ref()
                        .map_or(0, |p| p.rejected_spans.max(0).unsigned_abs()),
                    message: partial.map(|p| p.error_message).unwrap_or_default(),
                }
            }
        }
    }
}
