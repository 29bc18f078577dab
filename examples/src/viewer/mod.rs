//! `meshtrace-viewer`: a tiny local stand-in for Jaeger. It receives OTLP over gRPC and HTTP,
//! keeps recent traces in bounded memory and serves a web UI with a waterfall per trace, so the
//! demo (and anyone with an OTLP exporter) can see traces without a cluster or a download.

pub mod api;
pub mod convert;
pub mod ingest;
pub mod metrics;
pub mod otlp_grpc;
pub mod otlp_http;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::http_server;

use self::api::UiState;
use self::ingest::Ingest;
use self::metrics::ViewerMetrics;
use self::store::{StoreBounds, TraceStore};

/// Largest OTLP request accepted (after decompression), on both receivers.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Where the viewer listens and how much it keeps.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct ViewerConfig {
    /// Address of the OTLP/gRPC receiver (the collector's standard port is 4317). Port 0 picks a
    /// free port.
    #[arg(
        long,
        env = "MESHTRACE_VIEWER_OTLP_GRPC_ADDR",
        default_value = "127.0.0.1:4317"
    )]
    pub otlp_grpc_addr: SocketAddr,

    /// Address of the OTLP/HTTP receiver (`POST /v1/traces`, protobuf or JSON, gzip accepted;
    /// the collector's standard port is 4318).
    #[arg(
        long,
        env = "MESHTRACE_VIEWER_OTLP_HTTP_ADDR",
        default_value = "127.0.0.1:4318"
    )]
    pub otlp_http_addr: SocketAddr,

    /// Address of the web UI and its JSON API (`/api/traces`, `/api/services`); 16686 is the port
    /// Jaeger's UI uses.
    #[arg(
        long,
        env = "MESHTRACE_VIEWER_UI_ADDR",
        default_value = "127.0.0.1:16686"
    )]
    pub ui_addr: SocketAddr,

    /// Traces kept in memory; when full, the oldest trace is evicted.
    #[arg(long, env = "MESHTRACE_VIEWER_MAX_TRACES", default_value_t = 2000)]
    pub max_traces: usize,

    /// Spans kept per trace; further spans of that trace are dropped (and counted in
    /// `/metrics`).
    #[arg(
        long,
        env = "MESHTRACE_VIEWER_MAX_SPANS_PER_TRACE",
        default_value_t = 1000
    )]
    pub max_spans_per_trace: usize,
}

impl ViewerConfig {
    /// All three listeners on 127.0.0.1 port 0: what tests and embedding programs want.
    pub fn ephemeral() -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            otlp_grpc_addr: any_port,
            otlp_http_addr: any_port,
            ui_addr: any_port,
            max_traces: 2000,
            max_spans_per_trace: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    #[error("binding the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("OTLP/gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("a viewer server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The addresses actually bound (port 0 resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewerAddrs {
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub ui: SocketAddr,
}

/// A viewer whose listeners are bound but not yet serving: binding first lets callers learn
/// the real ports (and fail early on a busy port) before anything runs.
pub struct Viewer {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    ui_listener: TcpListener,
    addrs: ViewerAddrs,
    store: Arc<TraceStore>,
    metrics: ViewerMetrics,
    registry: Registry,
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ViewerError> {
    let bind_error = |source| ViewerError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

impl Viewer {
    pub async fn bind(config: &ViewerConfig) -> Result<Self, ViewerError> {
        let (grpc_listener, otlp_grpc) = bind("OTLP/gRPC", config.otlp_grpc_addr).await?;
        let (http_listener, otlp_http) = bind("OTLP/HTTP", config.otlp_http_addr).await?;
        let (ui_listener, ui) = bind("UI", config.ui_addr).await?;
        let mut registry = Registry::default();
        let metrics = ViewerMetrics::register(&mut registry);
        Ok(Self {
            grpc_listener,
            http_listener,
            ui_listener,
            addrs: ViewerAddrs {
                otlp_grpc,
                otlp_http,
                ui,
            },
            store: Arc::new(TraceStore::new(StoreBounds {
                max_traces: config.max_traces,
                max_spans_per_trace: config.max_spans_per_trace,
            })),
            metrics,
            registry,
        })
    }

    pub fn addrs(&self) -> ViewerAddrs {
        self.addrs
    }

    /// The store the receivers fill, for programs embedding the viewer.
    pub fn store(&self) -> Arc<TraceStore> {
        self.store.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and drains open connections.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ViewerError> {
        let ingest = Ingest::new(self.store.clone(), self.metrics);
        let (stop_tx, stop_rx) = watch::channel(false);

        let mut grpc_stop = stop_rx.clone();
        let mut grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(otlp_grpc::GrpcReceiver::into_service(ingest.clone()))
                .serve_with_incoming_shutdown(TcpIncoming::from(self.grpc_listener), async move {
                    let _ = grpc_stop.wait_for(|stop| *stop).await;
                }),
        );
        let otlp_http = tokio::spawn(http_server::serve(
            self.http_listener,
            move |request| otlp_http::handle(ingest.clone(), request),
            stop_rx.clone(),
        ));
        let ui_state = Arc::new(UiState {
            store: self.store,
            registry: self.registry,
        });
        let ui = tokio::spawn(http_server::serve(
            self.ui_listener,
            move |request| api::handle(ui_state.clone(), request),
            stop_rx,
        ));

        let early_grpc_exit = tokio::select! {
            () = shutdown => None,
            result = &mut grpc => Some(result),
        };
        let _ = stop_tx.send(true);
        let grpc_result = match early_grpc_exit {
            Some(result) => result,
            None => grpc.await,
        };
        otlp_http.await?;
        ui.await?;
        grpc_result??;
        Ok(())
    }
}
