//! The HTTPS webhook server (POST /inject, GET /healthz), its certificate reloading, and the
//! plain-HTTP metrics server.
//!
//! The certificate is behind a resolver consulted on every handshake, so a reload (cert-manager or
//! a Secret update rewriting the files) takes effect for new connections without a restart. Files
//! are polled rather than watched with inotify: Kubernetes updates Secret volumes by swapping
//! symlinks, which content polling sees reliably.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::certs::{self, CertError};
use crate::metrics::Metrics;
use crate::review::{Cluster, Webhook};

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves whatever certificate was set last.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(ReloadingCert {
            current: RwLock::new(key),
        })
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut current) => *current = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// TLS 1.3 and 1.2 only, ALPN h2 and http/1.1 (the API server speaks either).
pub fn tls_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate/key file pair.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    async fn read(&self) -> Result<(Vec<u8>, Vec<u8>), CertError> {
        let read = |path: PathBuf| async move {
            tokio::fs::read(&path)
                .await
                .map_err(|source| CertError::Read {
                    path: path.display().to_string(),
                    source,
                })
        };
        Ok((
            read(self.cert.clone()).await?,
            read(self.key.clone()).await?,
        ))
    }

    /// Reads and parses the pair.
    pub async fn load(&self) -> Result<Arc<CertifiedKey>, CertError> {
        let (cert, key) = self.read().await?;
        certs::certified_key(&cert, &key)
    }

    /// Polls the files every `interval` and installs a changed, valid pair into `resolver`. A
    /// half-written or invalid pair keeps the previous certificate (logged and counted).
    pub async fn watch(
        self,
        resolver: Arc<ReloadingCert>,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) {
        // Nothing is assumed about what `resolver` holds: the first (immediate) tick installs the
        // files as they are then, so a change between the initial load and this task's start is
        // not missed.
        let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let current = match self.read().await {
                Ok(current) => current,
                Err(err) => {
                    metrics.error("tls_reload");
                    tracing::warn!(error = %err, "cannot read the TLS files; keeping the current certificate");
                    continue;
                }
            };
            if last.as_ref() == Some(&current) {
                continue;
            }
            match certs::certified_key(&current.0, &current.1) {
                Ok(key) => {
                    resolver.set(key);
                    tracing::info!(cert = %self.cert.display(), "reloaded the TLS certificate");
                }
                Err(err) => {
                    metrics.error("tls_reload");
                    tracing::warn!(error = %err, "new TLS files are invalid; keeping the current certificate");
                }
            }
            last = Some(current);
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn route<C: Cluster>(
    request: Request<Incoming>,
    webhook: Arc<Webhook<C>>,
    max_body_bytes: usize,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/inject") => {
            let body = match Limited::new(request.into_body(), max_body_bytes)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
                    webhook.metrics().error("bad_request");
                    let msg = format!("AdmissionReview larger than {max_body_bytes} bytes\n");
                    return Ok(text(StatusCode::PAYLOAD_TOO_LARGE, msg));
                }
                Err(err) => {
                    webhook.metrics().error("bad_request");
                    return Ok(text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the body: {err}\n"),
                    ));
                }
            };
            match webhook.review(&body).await {
                Ok(json) => {
                    let mut response = Response::new(Full::new(Bytes::from(json)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(err) => text(StatusCode::BAD_REQUEST, format!("{err}\n")),
            }
        }
        (_, "/inject") | (_, "/healthz") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

/// Serves the webhook over TLS on `listener` until `shutdown` resolves (in-flight connections
/// finish on their own).
pub async fn serve_webhook<C: Cluster>(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    webhook: Arc<Webhook<C>>,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service =
                service_fn(move |request| route(request, webhook.clone(), max_body_bytes));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %err, "webhook connection ended with an error");
            }
        });
    }
}

/// Serves `GET /metrics` (OpenMetrics text) over plain HTTP until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let registry = registry.clone();
                async move {
                    if request.method() != Method::GET || request.uri().path() != "/metrics" {
                        return Ok::<_, Infallible>(text(StatusCode::NOT_FOUND, "not found\n"));
                    }
                    let mut body = String::new();
                    if let Err(err) =
                        prometheus_client::encoding::text::encode(&mut body, &registry)
                    {
                        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")));
                    }
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    Ok(response)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "metrics connection ended with an error");
            }
        });
    }
}
