//! OTLP/HTTP receiver: `POST /v1/traces`, protobuf or JSON, optionally gzip-compressed, as
//! exporters send it with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` or `http/json`.

use std::io::Read;

use bytes::Bytes;
use flate2::read::GzDecoder;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::ingest::Ingest;
use super::metrics::Protocol;
use super::MAX_REQUEST_BYTES;
use crate::http_server::{respond, text, HttpResponse};

pub const TRACES_PATH: &str = "/v1/traces";

#[derive(Debug, thiserror::Error)]
pub enum OtlpHttpError {
    #[error("only {TRACES_PATH} is served here")]
    NotFound,
    #[error("{TRACES_PATH} accepts POST only")]
    MethodNotAllowed,
    #[error("unsupported content type {0:?}: send application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    #[error("unsupported content encoding {0:?}: send gzip or no encoding")]
    UnsupportedEncoding(String),
    #[error("request body larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("invalid gzip body: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("invalid protobuf ExportTraceServiceRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("invalid JSON ExportTraceServiceRequest: {0}")]
    Json(#[from] serde_json::Error),
}

impl OtlpHttpError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedContentType(_) | Self::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(_) | Self::Gzip(_) | Self::Protobuf(_) | Self::Json(_) => {
                StatusCode::BAD_REQUEST
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

pub async fn handle(ingest: Ingest, request: Request<Incoming>) -> HttpResponse {
    match export(&ingest, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "OTLP/HTTP request refused");
            let mut response = text(error.status(), error.to_string());
            if matches!(error, OtlpHttpError::MethodNotAllowed) {
                response
                    .headers_mut()
                    .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
            }
            response
        }
    }
}

async fn export(
    ingest: &Ingest,
    request: Request<Incoming>,
) -> Result<HttpResponse, OtlpHttpError> {
    if request.uri().path() != TRACES_PATH {
        return Err(OtlpHttpError::NotFound);
    }
    if request.method() != Method::POST {
        return Err(OtlpHttpError::MethodNotAllowed);
    }
    let encoding = body_encoding(request.headers())?;
    let gzipped = is_gzipped(request.headers())?;
    let body = Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                OtlpHttpError::TooLarge
            } else {
                OtlpHttpError::Body(error.to_string())
            }
        })?
        .to_bytes();
    let body = if gzipped { gunzip(&body)? } else { body };
    let (export_request, protocol) = match encoding {
        Encoding::Protobuf => (
            ExportTraceServiceRequest::decode(body)?,
            Protocol::HttpProtobuf,
        ),
        Encoding::Json => (
            serde_json::from_slice::<ExportTraceServiceRequest>(&body)?,
            Protocol::HttpJson,
        ),
    };
    let export_response = ingest.export(export_request, protocol);
    Ok(match encoding {
        Encoding::Protobuf => respond(
            StatusCode::OK,
            "application/x-protobuf",
            export_response.encode_to_vec(),
        ),
        Encoding::Json => respond(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec(&export_response)?,
        ),
    })
}

fn body_encoding(headers: &HeaderMap) -> Result<Encoding, OtlpHttpError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(OtlpHttpError::UnsupportedContentType(
            content_type.to_owned(),
        )),
    }
}

fn is_gzipped(headers: &HeaderMap) -> Result<bool, OtlpHttpError> {
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(false),
        Some(value) => match value.to_str().map(str::trim) {
            Ok(v) if v.eq_ignore_ascii_case("gzip") => Ok(true),
            Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("identity") => Ok(false),
            _ => Err(OtlpHttpError::UnsupportedEncoding(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )),
        },
    }
}

/// Decompresses with the same size bound as the wire body, so a gzip bomb cannot exhaust memory.
fn gunzip(body: &[u8]) -> Result<Bytes, OtlpHttpError> {
    let mut decompressed = Vec::new();
    GzDecoder::new(body)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut decompressed)
        .map_err(OtlpHttpError::Gzip)?;
    if decompressed.len() > MAX_REQUEST_BYTES {
        return Err(OtlpHttpError::TooLarge);
    }
    Ok(decompressed.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn content_types_map_to_encodings() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(body_encoding(&headers).unwrap(), Encoding::Json);
        headers.insert(
            header::CONTENT_TYPE,
            "Application/X-Protobuf".parse().unwrap(),
        );
        assert_eq!(body_encoding(&headers).unwrap(), Encoding::Protobuf);
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(matches!(
            body_encoding(&headers),
            Err(OtlpHttpError::UnsupportedContentType(_))
        ));
    }

    #[test]
    fn content_encodings() {
        let mut headers = HeaderMap::new();
        assert!(!is_gzipped(&headers).unwrap());
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(is_gzipped(&headers).unwrap());
        headers.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        assert!(is_gzipped(&headers).is_err());
    }

    #[test]
    fn gunzip_round_trips_and_refuses_bombs() {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"hello").unwrap();
        assert_eq!(&gunzip(&encoder.finish().unwrap()).unwrap()[..], b"hello");

        let mut bomb = GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![0u8; MAX_REQUEST_BYTES + 10]).unwrap();
        assert!(matches!(
            gunzip(&bomb.finish().unwrap()),
            Err(OtlpHttpError::TooLarge)
        ));
        assert!(matches!(gunzip(b"not gzip"), Err(OtlpHttpError::Gzip(_))));
    }
}
