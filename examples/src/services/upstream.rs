//! Outgoing calls of the sample services, through an HTTP proxy when `http_proxy` says so.
//!
//! In the demo's explicit-mode mesh each service's `http_proxy` points at its own
//! `meshtrace-proxy` outbound listener: requests are then sent to the proxy in absolute form
//! (`GET http://host:port/path HTTP/1.1`), as curl or any HTTP library would. hyper-util's
//! legacy client does exactly that when the connection says it is proxied, so the connector
//! below only picks the address (proxy or destination, per `Matcher`, which also honours
//! `no_proxy`) and marks the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tower::Service;

use super::propagation::{copy_headers, Forwarding};

/// Largest upstream response body read.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream configured (pass --upstream)")]
    NotConfigured,
    #[error("invalid upstream URL {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("building the request failed: {0}")]
    Request(#[from] http::Error),
    #[error("calling {uri} failed: {source}")]
    Send {
        uri: String,
        #[source]
        source: Box<hyper_util::client::legacy::Error>,
    },
    #[error("calling {0} timed out")]
    Timeout(String),
    #[error("reading the response of {uri} failed: {message}")]
    Body { uri: String, message: String },
}

/// A connection to either the destination or the proxy, telling hyper-util which it is.
pub struct ProxiedIo {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for ProxiedIo {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for ProxiedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ProxiedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Connects to the HTTP proxy `matcher` chooses for a destination, or directly.
#[derive(Clone)]
pub struct ProxyConnector {
    http: HttpConnector,
    matcher: Arc<Matcher>,
}

impl ProxyConnector {
    pub fn new(matcher: Matcher) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        Self {
            http,
            matcher: Arc::new(matcher),
        }
    }
}

impl Service<Uri> for ProxyConnector {
    type Response = ProxiedIo;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<ProxiedIo, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let proxy = self
            .matcher
            .intercept(&destination)
            .map(|intercept| intercept.uri().clone());
        let mut http = self.http.clone();
        Box::pin(async move {
            let proxied = proxy.is_some();
            let io = http.call(proxy.unwrap_or(destination)).await?;
            Ok(ProxiedIo { io, proxied })
        })
    }
}

/// An upstream's answer: status and body (JSON when it is JSON, else a string).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

/// The service's upstream(s), called round-robin.
pub struct Upstreams {
    client: Client<ProxyConnector, Empty<Bytes>>,
    bases: Vec<String>,
    next: AtomicUsize,
    timeout: Duration,
    forwarding: Forwarding,
}

impl Upstreams {
    pub fn new(
        urls: &[String],
        matcher: Matcher,
        timeout: Duration,
        forwarding: Forwarding,
    ) -> Result<Self, UpstreamError> {
        let bases = urls
            .iter()
            .map(|url| {
                url.parse::<Uri>()
                    .map(|_| url.trim_end_matches('/').to_owned())
                    .map_err(|source| UpstreamError::InvalidUrl {
                        url: url.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(ProxyConnector::new(matcher));
        Ok(Self {
            client,
            bases,
            next: AtomicUsize::new(0),
            timeout,
            forwarding,
        })
    }

    /// `GET {upstream}{path_and_query}`, carrying the incoming request's headers the service
    /// forwards.
    pub async fn get(
        &self,
        path_and_query: &str,
        incoming: &HeaderMap,
    ) -> Result<UpstreamResponse, UpstreamError> {
        if self.bases.is_empty() {
            return Err(UpstreamError::NotConfigured);
        }
        let base = &self.bases[self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len()];
        let url = format!("{base}{path_and_query}");
        let uri: Uri = url
            .parse()
            .map_err(|source| UpstreamError::InvalidUrl { url, source })?;
        let mut request = Request::get(uri.clone()).body(Empty::new())?;
        copy_headers(self.forwarding, incoming, request.headers_mut());

        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|source| UpstreamError::Send {
                        uri: uri.to_string(),
                        source: Box::new(source),
                    })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|error| UpstreamError::Body {
                    uri: uri.to_string(),
                    message: error.to_string(),
                })?
                .to_bytes();
            let body = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
            });
            Ok(UpstreamResponse { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(uri.to_string()))?
    }
}
