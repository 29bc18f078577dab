//! The UI server: the embedded web page and the JSON API it reads.
//!
//! JSON API (all `GET`):
//! - `/api/services` → `{"services": ["frontend", ...]}`
//! - `/api/traces?service=&limit=` → `{"traces": [TraceSummary, ...]}`, newest first
//! - `/api/traces/{trace id hex}` → `TraceDetail` (summary fields plus `spans`), 404 if unknown
//!
//! Also `/metrics` (Prometheus text) for the viewer's own counters.

use std::borrow::Cow;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::store::{TraceId, TraceQuery, TraceStore};
use crate::http_server::{respond, text, HttpResponse};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Traces listed when the query has no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 20;
/// Upper bound on `limit`, so one request cannot serialise the whole store.
pub const MAX_LIST_LIMIT: usize = 1000;

pub struct UiState {
    pub store: Arc<TraceStore>,
    pub registry: Registry,
}

pub async fn handle(state: Arc<UiState>, request: Request<Incoming>) -> HttpResponse {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or_default();
    match path {
        "/" | "/index.html" => page(INDEX_HTML, "text/html; charset=utf-8"),
        _ if path.starts_with("/trace/") => page(INDEX_HTML, "text/html; charset=utf-8"),
        "/static/app.js" => page(APP_JS, "text/javascript; charset=utf-8"),
        "/static/style.css" => page(STYLE_CSS, "text/css; charset=utf-8"),
        "/api/services" => json(
            StatusCode::OK,
            &ServicesResponse {
                services: state.store.services(),
            },
        ),
        "/api/traces" => match parse_list_query(query) {
            Ok(query) => json(
                StatusCode::OK,
                &TracesResponse {
                    traces: state.store.list(&query),
                },
            ),
            Err(message) => json(StatusCode::BAD_REQUEST, &ErrorResponse { error: message }),
        },
        _ if path.starts_with("/api/traces/") => {
            let id = &path["/api/traces/".len()..];
            match TraceId::from_hex(id) {
                None => json(
                    StatusCode::BAD_REQUEST,
                    &ErrorResponse {
                        error: format!("{id:?} is not a 32-hex-digit trace id"),
                    },
                ),
                Some(trace_id) => match state.store.get(trace_id) {
                    Some(detail) => json(StatusCode::OK, &detail),
                    None => json(
                        StatusCode::NOT_FOUND,
                        &ErrorResponse {
                            error: format!("trace {trace_id} is not (or no longer) stored"),
                        },
                    ),
                },
            }
        }
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

#[derive(Serialize)]
struct ServicesResponse {
    services: Vec<String>,
}

#[derive(Serialize)]
struct TracesResponse {
    traces: Vec<super::store::TraceSummary>,
}

#[derive(Serialize)]
struct ErrorResponse {
    error: String,
}

fn parse_list_query(query: &str) -> Result<TraceQuery, String> {
    let mut parsed = TraceQuery {
        service: None,
        limit: DEFAULT_LIST_LIMIT,
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key {
            Cow::Borrowed("service") if !value.is_empty() => {
                parsed.service = Some(value.into_owned())
            }
            Cow::Borrowed("limit") if !value.is_empty() => {
                let limit: usize = value
                    .parse()
                    .map_err(|_| format!("limit {value:?} is not a positive integer"))?;
                parsed.limit = limit.clamp(1, MAX_LIST_LIMIT);
            }
            _ => {}
        }
    }
    Ok(parsed)
}

fn page(body: &'static str, content_type: &'static str) -> HttpResponse {
    respond(StatusCode::OK, content_type, body)
}

fn json(status: StatusCode, value: &impl Serialize) -> HttpResponse {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = respond(status, "application/json", body);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON failed: {error}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_defaults_decodes_and_clamps() {
        assert_eq!(
            parse_list_query("").unwrap(),
            TraceQuery {
                service: None,
                limit: DEFAULT_LIST_LIMIT
            }
        );
        let parsed = parse_list_query("service=backend%20api&limit=5000&x=1").unwrap();
        assert_eq!(parsed.service.as_deref(), Some("backend api"));
        assert_eq!(parsed.limit, MAX_LIST_LIMIT);
        assert_eq!(parse_list_query("limit=0").unwrap().limit, 1);
        assert_eq!(parse_list_query("service=").unwrap().service, None);
        assert!(parse_list_query("limit=ten").is_err());
    }
}
