//! OTLP/gRPC: the `TraceService/Export` unary call over tonic, with a request body the exporter
//! has already encoded ([`super::wire`]) and the generated type for the response.
//!
//! The channel connects lazily and reconnects through tonic's connector, which resolves the
//! collector's name again on every new connection, so a collector that restarts (new pod IP)
//! is found again.

use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::GrpcMethod;
use tonic_prost::ProstDecoder;

use super::config::{Compression, ExportConfig};
use super::retry::{classify_grpc, Attempt};
use super::transport::{load_certificates, untraced_headers, ExportError, USER_AGENT};

const SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends an encoded `ExportTraceServiceRequest` as is; decodes the response with prost.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreEncodedCodec;

/// Writes pre-encoded message bytes into the gRPC frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreEncodedEncoder;

impl Encoder for PreEncodedEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Codec for PreEncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncodedEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder(ProstDecoder::default())
    }
}

/// The generated response type, decoded by prost.
pub struct ResponseDecoder(ProstDecoder<ExportTraceServiceResponse>);

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        self.0.decode(src)
    }
}

pub struct GrpcTransport {
    client: Grpc<Channel>,
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
        let mut client =
            Grpc::new(endpoint.connect_lazy()).accept_compressed(CompressionEncoding::Gzip);
        if config.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self {
            client,
            headers: config.headers.clone(),
        })
    }

    /// One `Export` call; `request` is an encoded `ExportTraceServiceRequest`.
    pub async fn send(&mut self, request: &Bytes, timeout: Duration) -> Attempt {
        let metadata = MetadataMap::from_headers(untraced_headers(&self.headers));
        let mut extensions = tonic::Extensions::default();
        extensions.insert(GrpcMethod::new(SERVICE, "Export"));
        // The batch is kept for a possible retry: cloning `Bytes` is a reference count.
        let mut request = tonic::Request::from_parts(metadata, extensions, request.clone());
        request.set_timeout(timeout);
        let client = &mut self.client;
        let call = async move {
            client.ready().await.map_err(|error| {
                tonic::Status::unknown(format!("Service was not ready: {error}"))
            })?;
            client
                .unary(
                    request,
                    PathAndQuery::from_static(EXPORT_PATH),
                    PreEncodedCodec,
                )
                .await
        };
        match tokio::time::timeout(timeout, call).await {
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
