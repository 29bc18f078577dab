//! The demo's sample application: `frontend` → `backend-api-1` → `backend-api-2`, in the shape of
//! a classic microservice app. The services know nothing about tracing beyond what a mesh asks
//! of an application: forward the incoming trace headers on outgoing calls. `backend-api-2` is
//! sometimes slow and sometimes fails, so traces show variety.
//!
//! Routes (all `GET`; `/healthz` on every role):
//! - frontend `/` (`?item=N`, `?mode=ok|slow|fail`): calls backend-api-1 `/api/items/{id}` and
//!   `/api/recommendations` concurrently and aggregates them.
//! - backend-api-1 `/api/items/{id}` (calls backend-api-2 `/api/inventory/{id}`),
//!   `/api/recommendations`.
//! - backend-api-2 `/api/inventory/{id}`: slow 150–300 ms in `--slow-percent` of requests,
//!   503 in `--error-percent`.
//!
//! Every response carries `traceHeaders`, the trace headers that hop received, so a `curl`
//! shows propagation at work.

pub mod chaos;
pub mod propagation;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::proxy::matcher::Matcher;
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use self::chaos::{Chaos, Mode, NORMAL_DELAY_MS};
use self::propagation::{trace_headers_json, Forwarding};
use self::upstream::{UpstreamError, UpstreamResponse, Upstreams};
use crate::http_server::{self, respond, text, HttpResponse};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    #[value(name = "frontend")]
    Frontend,
    #[value(name = "backend-api-1")]
    BackendApi1,
    #[value(name = "backend-api-2")]
    BackendApi2,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Frontend => "frontend",
            Self::BackendApi1 => "backend-api-1",
            Self::BackendApi2 => "backend-api-2",
        }
    }

    fn needs_upstream(self) -> bool {
        !matches!(self, Self::BackendApi2)
    }
}

/// One sample service.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct SampleServiceConfig {
    /// Which service to be.
    #[arg(long, env = "MESHTRACE_SAMPLE_ROLE", value_enum)]
    pub role: Role,

    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "MESHTRACE_SAMPLE_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Base URL of the next service (frontend: backend-api-1; backend-api-1: backend-api-2),
    /// e.g. `http://127.0.0.1:8081`. Repeat (or comma-separate in the env variable) to spread
    /// calls round-robin. Calls go through the proxy in `http_proxy`/`HTTP_PROXY` when set
    /// (minus `no_proxy`), as in the demo's explicit-mode mesh.
    #[arg(
        long = "upstream",
        env = "MESHTRACE_SAMPLE_UPSTREAMS",
        value_delimiter = ','
    )]
    pub upstreams: Vec<String>,

    /// backend-api-2: percentage of requests answered slowly (150–300 ms).
    #[arg(
        long,
        env = "MESHTRACE_SAMPLE_SLOW_PERCENT",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(0..=100)
    )]
    pub slow_percent: u32,

    /// backend-api-2: percentage of requests failed with 503.
    #[arg(
        long,
        env = "MESHTRACE_SAMPLE_ERROR_PERCENT",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(0..=100)
    )]
    pub error_percent: u32,

    /// Seed of the slow/fail draws, for a reproducible sequence (random when absent). A request
    /// can also force its outcome with `?mode=ok|slow|fail`, passed on by every hop.
    #[arg(long, env = "MESHTRACE_SAMPLE_SEED")]
    pub seed: Option<u64>,

    /// Which incoming headers go onto the service's upstream calls: `trace-headers` (W3C and
    /// B3), `request-id` (only `x-request-id`) or `none`, to play an application that does
    /// not forward trace context.
    #[arg(
        long = "forward",
        env = "MESHTRACE_SAMPLE_FORWARD",
        value_enum,
        default_value_t = Forwarding::TraceHeaders
    )]
    pub forward: Forwarding,

    /// Deadline of each upstream call, in milliseconds.
    #[arg(
        long,
        env = "MESHTRACE_SAMPLE_UPSTREAM_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub upstream_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SampleServiceError {
    #[error("{0} needs at least one --upstream")]
    MissingUpstream(&'static str),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct State {
    role: Role,
    upstreams: Upstreams,
    chaos: Chaos,
}

/// A bound, not yet serving, sample service.
pub struct SampleService {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<State>,
}

impl SampleService {
    /// `proxy` decides which outgoing calls go through an HTTP proxy; the binary passes
    /// `Matcher::from_env()`.
    pub async fn bind(
        config: &SampleServiceConfig,
        proxy: Matcher,
    ) -> Result<Self, SampleServiceError> {
        if config.role.needs_upstream() && config.upstreams.is_empty() {
            return Err(SampleServiceError::MissingUpstream(config.role.name()));
        }
        let upstreams = Upstreams::new(
            &config.upstreams,
            proxy,
            Duration::from_millis(config.upstream_timeout_ms),
            config.forward,
        )?;
        let bind_error = |source| SampleServiceError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            local_addr,
            state: Arc::new(State {
                role: config.role,
                upstreams,
                chaos: Chaos::new(
                    config.slow_percent,
                    config.error_percent,
                    config.seed.unwrap_or_else(rand::random),
                ),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then drains open connections.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = self.state;
        let server = http_server::serve(
            self.listener,
            move |request| handle(state.clone(), request),
            stop_rx,
        );
        tokio::pin!(server);
        tokio::select! {
            () = &mut server => return,
            () = shutdown => {}
        }
        let _ = stop_tx.send(true);
        server.await;
    }
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> HttpResponse {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here");
    }
    let path = request.uri().path();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let mode = Mode::from_query(request.uri().query());
    let headers = request.headers();
    let response = match (state.role, path) {
        (Role::Frontend, "/") => frontend_home(&state, request.uri().query(), mode, headers).await,
        (Role::BackendApi1, "/api/recommendations") => recommendations(headers).await,
        (Role::BackendApi1, _) if path.starts_with("/api/items/") => {
            match parse_id(&path["/api/items/".len()..]) {
                Some(id) => item(&state, id, mode, headers).await,
                None => bad_id(state.role, headers),
            }
        }
        (Role::BackendApi2, _) if path.starts_with("/api/inventory/") => {
            match parse_id(&path["/api/inventory/".len()..]) {
                Some(id) => inventory(&state, id, mode, headers).await,
                None => bad_id(state.role, headers),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"service": state.role.name(), "error": format!("no route for {path}")}),
        ),
    };
    tracing::debug!(service = state.role.name(), path, status = %response.status(), "handled");
    response
}

fn parse_id(text: &str) -> Option<u32> {
    text.parse().ok()
}

fn bad_id(role: Role, headers: &HeaderMap) -> HttpResponse {
    reply(
        StatusCode::BAD_REQUEST,
        json!({
            "service": role.name(),
            "error": "the id must be a non-negative integer",
            "traceHeaders": trace_headers_json(headers),
        }),
    )
}

fn reply(status: StatusCode, body: Value) -> HttpResponse {
    respond(status, "application/json", body.to_string())
}

/// A little "work", so every hop has a visible bar in a waterfall.
async fn work() {
    let millis = rand::rng().random_range(NORMAL_DELAY_MS);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// An upstream failure as the caller reports it: 502, with the upstream's answer attached.
fn upstream_failure(
    role: Role,
    what: &str,
    result: &Result<UpstreamResponse, UpstreamError>,
    headers: &HeaderMap,
) -> HttpResponse {
    let upstream = match result {
        Ok(response) => json!({"status": response.status.as_u16(), "body": response.body}),
        Err(error) => json!({"error": error.to_string()}),
    };
    reply(
        StatusCode::BAD_GATEWAY,
        json!({
            "service": role.name(),
            "error": format!("{what} failed"),
            "upstream": upstream,
            "traceHeaders": trace_headers_json(headers),
        }),
    )
}

fn succeeded(result: &Result<UpstreamResponse, UpstreamError>) -> Option<&Value> {
    match result {
        Ok(response) if response.status.is_success() => Some(&response.body),
        _ => None,
    }
}

async fn frontend_home(
    state: &State,
    query: Option<&str>,
    mode: Mode,
    headers: &HeaderMap,
) -> HttpResponse {
    let id = query
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(key, _)| key == "item")
                .and_then(|(_, value)| value.parse::<u32>().ok())
        })
        .unwrap_or_else(|| rand::rng().random_range(1..=50));
    work().await;
    let item_path = format!("/api/items/{id}{}", mode.as_query());
    let (item, recommendations) = tokio::join!(
        state.upstreams.get(&item_path, headers),
        state.upstreams.get("/api/recommendations", headers),
    );
    let Some(item_body) = succeeded(&item) else {
        return upstream_failure(state.role, "fetching the item", &item, headers);
    };
    // Recommendations are optional: the page degrades instead of failing.
    let recommendations = succeeded(&recommendations).cloned().unwrap_or(Value::Null);
    reply(
        StatusCode::OK,
        json!({
            "service": state.role.name(),
            "item": item_body,
            "recommendations": recommendations,
            "traceHeaders": trace_headers_json(headers),
        }),
    )
}

async fn item(state: &State, id: u32, mode: Mode, headers: &HeaderMap) -> HttpResponse {
    work().await;
    let inventory = state
        .upstreams
        .get(&format!("/api/inventory/{id}{}", mode.as_query()), headers)
        .await;
    let Some(inventory_body) = succeeded(&inventory) else {
        return upstream_failure(state.role, "fetching the inventory", &inventory, headers);
    };
    reply(
        StatusCode::OK,
        json!({
            "service": state.role.name(),
            "id": id,
            "name": format!("item-{id}"),
            "priceCents": 199 + (id % 17) * 100,
            "inventory": inventory_body,
            "traceHeaders": trace_headers_json(headers),
        }),
    )
}

async fn recommendations(headers: &HeaderMap) -> HttpResponse {
    work().await;
    let ids: Vec<u32> = {
        let mut rng = rand::rng();
        (0..3).map(|_| rng.random_range(1..=50)).collect()
    };
    reply(
        StatusCode::OK,
        json!({
            "service": Role::BackendApi1.name(),
            "items": ids,
            "traceHeaders": trace_headers_json(headers),
        }),
    )
}

async fn inventory(state: &State, id: u32, mode: Mode, headers: &HeaderMap) -> HttpResponse {
    let outcome = state.chaos.decide(mode);
    tokio::time::sleep(outcome.delay).await;
    let delay_ms = u64::try_from(outcome.delay.as_millis()).unwrap_or(u64::MAX);
    if outcome.fail {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "service": state.role.name(),
                "error": "inventory backend unavailable",
                "delayMs": delay_ms,
                "traceHeaders": trace_headers_json(headers),
            }),
        );
    }
    reply(
        StatusCode::OK,
        json!({
            "service": state.role.name(),
            "id": id,
            "inStock": (id * 37) % 11,
            "delayMs": delay_ms,
            "traceHeaders": trace_headers_json(headers),
        }),
    )
}
