//! OTLP/HTTP with binary protobuf bodies.
//!
//! hyper-util's pooled client with an `HttpConnector` resolves the collector's name for every
//! new connection, so a restarted collector is found again; TLS is rustls (hyper-rustls).

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::write::GzEncoder;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT as USER_AGENT_HEADER};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use super::config::{Compression, ExportConfig};
use super::retry::{classify_http, Attempt};
use super::transport::{root_store, untraced_headers, ExportError, USER_AGENT};

/// Responses are small; anything bigger is not an OTLP response.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// An encoded batch, re-sent as-is on retries (cloning `Bytes` is a reference count).
pub struct HttpPayload {
    pub body: Bytes,
    /// Whether `body` is gzip-compressed.
    pub gzip: bool,
}

pub struct HttpTransport {
    client: ExportClient,
    uri: Uri,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    gzip: bool,
}

/// The pooled client: with TLS for an `https` endpoint, without for `http` (no TLS
/// configuration, trust anchors or crypto provider is set up then: they would cost an exporter
/// that never uses them start-up time and resident memory).
enum ExportClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl ExportClient {
    fn new(config: &ExportConfig) -> Result<Self, ExportError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.timeout));
        http.set_nodelay(true);
        let builder = || {
            let mut builder = Client::builder(TokioExecutor::new());
            builder.pool_idle_timeout(Duration::from_secs(30));
            builder
        };
        if config.endpoint.scheme_str() != Some("https") {
            return Ok(ExportClient::Plain(builder().build(http)));
        }
        let tls = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(config.certificate.as_deref())?)
        .with_no_client_auth();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(ExportClient::Tls(builder().build(connector)))
    }

    fn request(&self, request: Request<Full<Bytes>>) -> ResponseFuture {
        match self {
            ExportClient::Plain(client) => client.request(request),
            ExportClient::Tls(client) => client.request(request),
        }
    }
}

impl HttpTransport {
    pub fn new(config: &ExportConfig) -> Result<Self, ExportError> {
        Ok(Self {
            client: ExportClient::new(config)?,
            uri: config.endpoint.clone(),
            headers: config.headers.clone(),
            gzip: config.compression == Compression::Gzip,
        })
    }

    /// Compresses an encoded batch once, if configured to.
    pub fn prepare(&self, encoded: Bytes) -> HttpPayload {
        if !self.gzip {
            return HttpPayload {
                body: encoded,
                gzip: false,
            };
        }
        let mut encoder = GzEncoder::new(
            Vec::with_capacity(encoded.len() / 4),
            flate2::Compression::fast(),
        );
        // Writing to a Vec cannot fail.
        match encoder.write_all(&encoded).and_then(|()| encoder.finish()) {
            Ok(compressed) => HttpPayload {
                body: compressed.into(),
                gzip: true,
            },
            Err(error) => {
                tracing::warn!(%error, "gzip failed; sending uncompressed");
                HttpPayload {
                    body: encoded,
                    gzip: false,
                }
            }
        }
    }

    fn request(&self, payload: &HttpPayload) -> Result<Request<Full<Bytes>>, http::Error> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .header(USER_AGENT_HEADER, USER_AGENT);
        if payload.gzip {
            builder = builder.header(CONTENT_ENCODING, "gzip");
        }
        let mut request = builder.body(Full::new(payload.body.clone()))?;
        request
            .headers_mut()
            .extend(untraced_headers(&self.headers));
        Ok(request)
    }

    pub async fn send(&self, payload: &HttpPayload, timeout: Duration) -> Attempt {
        let request = match self.request(payload) {
            Ok(request) => request,
            Err(error) => {
                return Attempt::Failed {
                    reason: format!("building the request: {error}"),
                }
            }
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes());
            Ok::<_, hyper_util::client::legacy::Error>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(timeout, exchange).await {
            Err(_elapsed) => {
                return Attempt::Retryable {
                    after: None,
                    reason: format!("no response within {timeout:?}"),
                }
            }
            // Connection failures (refused, reset, closed before a response) are retryable.
            Ok(Err(error)) => {
                return Attempt::Retryable {
                    after: None,
                    reason: format!("connection: {}", error_chain(&error)),
                }
            }
            Ok(Ok(exchange)) => exchange,
        };
        let body = match body {
            Ok(body) => body,
            Err(error) if parts.status.is_success() => {
                // The collector took the request; only its partial-success report is lost.
                tracing::debug!(%error, "reading the OTLP/HTTP response body");
                Bytes::new()
            }
            Err(_) => Bytes::new(),
        };
        if !parts.status.is_success() {
            return classify_http(
                parts.status,
                parts.headers.get(RETRY_AFTER),
                &body,
                SystemTime::now(),
            );
        }
        let partial = ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success);
        Attempt::Accepted {
            rejected: partial
                .as_ref()
                .map_or(0, |p| p.rejected_spans.max(0).unsigned_abs()),
            message: partial.map(|p| p.error_message).unwrap_or_default(),
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
