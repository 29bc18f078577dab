//! A local HTTP server speaking the slice of the Kubernetes API's JSON the injector uses (no API
//! server can run on our machines): `/version`, namespace list/watch/get (metadata-only), and
//! get/JSON-patch of MutatingWebhookConfigurations.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_stream_shim::BroadcastLines;

type Body = UnsyncBoxBody<Bytes, Infallible>;
/// An edit of a stored object, made by "someone else".
pub type Edit = Box<dyn FnOnce(&mut Value) + Send>;

#[derive(Default)]
pub struct State {
    /// Namespaces returned by list and get.
    pub listed: BTreeMap<String, BTreeMap<String, String>>,
    /// Namespaces only a direct GET finds (created after the list).
    pub unlisted: BTreeMap<String, BTreeMap<String, String>>,
    /// `METHOD path?query` of every request.
    pub log: Vec<String>,
    pub webhook_configs: BTreeMap<String, Value>,
    /// Bumps the config's resourceVersion and runs this edit right after the next GET of a
    /// webhook config: a concurrent writer.
    pub concurrent_edit: Option<Edit>,
    pub resource_version: u64,
    pub minor_version: String,
    /// Labels of namespaces (listed or not), by name.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
}

/// [`namespace_meta`] with the labels `state` has for the namespace.
fn namespace_meta_in(
    state: &State,
    name: &str,
    annotations: &BTreeMap<String, String>,
    rv: u64,
) -> Value {
    let mut meta = namespace_meta(name, annotations, rv);
    if let Some(labels) = state.labels.get(name) {
        meta["metadata"]["labels"] = json!(labels);
    }
    meta
}

pub struct FakeApiServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    watch_events: broadcast::Sender<String>,
    _task: tokio::task::JoinHandle<()>,
}

pub fn namespace_meta(name: &str, annotations: &BTreeMap<String, String>, rv: u64) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": rv.to_string(), "annotations": annotations},
    })
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound",
                "details": {"name": name, "kind": kind}, "code": 404}),
    )
}

impl FakeApiServer {
    pub async fn start(state: State) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let (watch_events, _) = broadcast::channel(64);
        let shared = (state.clone(), watch_events.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (state, events) = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, state.clone(), events.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        FakeApiServer {
            addr,
            state,
            watch_events,
            _task: task,
        }
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Sends a watch event (`ADDED`, `MODIFIED`, `DELETED`) for a namespace to open watches.
    pub fn send_namespace_event(
        &self,
        kind: &str,
        name: &str,
        annotations: &BTreeMap<String, String>,
    ) {
        let rv = {
            let mut state = self.state.lock().unwrap();
            state.resource_version += 1;
            if kind == "DELETED" {
                state.listed.remove(name);
            } else {
                state.listed.insert(name.to_owned(), annotations.clone());
            }
            state.resource_version
        };
        let event = json!({"type": kind, "object": namespace_meta(name, annotations, rv)});
        let _ = self.watch_events.send(format!("{event}\n"));
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<String>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    state
        .lock()
        .unwrap()
        .log
        .push(format!("{method} {path}?{query}"));
    let is_watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();

    let response = match (&method, segments.as_slice()) {
        (&Method::GET, ["version"]) => {
            let minor = state.lock().unwrap().minor_version.clone();
            json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.0"), "gitCommit": "0",
                        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22",
                        "compiler": "gc", "platform": "linux/amd64"}),
            )
        }
        (&Method::GET, ["api", "v1", "namespaces"]) if is_watch => {
            let lines = BroadcastLines::new(events.subscribe());
            let body = StreamBody::new(
                lines.map(|line| Ok::<_, Infallible>(Frame::data(Bytes::from(line)))),
            );
            let mut response = Response::new(BodyExt::boxed_unsync(body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "application/json".parse().unwrap(),
            );
            response
        }
        (&Method::GET, ["api", "v1", "namespaces"]) => {
            let state = state.lock().unwrap();
            let items: Vec<Value> = state
                .listed
                .iter()
                .map(|(name, annotations)| {
                    namespace_meta_in(&state, name, annotations, state.resource_version)
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                        "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items}),
            )
        }
        (&Method::GET, ["api", "v1", "namespaces", name]) => {
            let state = state.lock().unwrap();
            match state
                .listed
                .get(*name)
                .or_else(|| state.unlisted.get(*name))
            {
                Some(annotations) => json_response(
                    StatusCode::OK,
                    &namespace_meta_in(&state, name, annotations, state.resource_version),
                ),
                None => not_found("namespaces", name),
            }
        }
        (
            &Method::GET,
            ["apis", "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", name],
        ) => {
            let mut state = state.lock().unwrap();
            let Some(config) = state.webhook_configs.get(*name).cloned() else {
                return Ok(not_found("mutatingwebhookconfigurations", name));
            };
            if let Some(edit) = state.concurrent_edit.take() {
                let stored = state.webhook_configs.get_mut(*name).unwrap();
                edit(stored);
                let rv = stored["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    + 1;
                stored["metadata"]["resourceVersion"] = rv.to_string().into();
            }
            json_response(StatusCode::OK, &config)
        }
        (
            &Method::PATCH,
            ["apis", "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", name],
        ) => {
            let name = name.to_string();
            let content_type = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if content_type != "application/json-patch+json" {
                return Ok(json_response(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &json!({"kind": "Status", "code": 415}),
                ));
            }
            let mut state = state.lock().unwrap();
            let Some(stored) = state.webhook_configs.get_mut(&name) else {
                return Ok(not_found("mutatingwebhookconfigurations", &name));
            };
            let patch: json_patch::Patch = serde_json::from_slice(&body).unwrap();
            let mut updated = stored.clone();
            match json_patch::patch(&mut updated, &patch) {
                Ok(()) => {
                    let rv = updated["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        + 1;
                    updated["metadata"]["resourceVersion"] = rv.to_string().into();
                    *stored = updated.clone();
                    json_response(StatusCode::OK, &updated)
                }
                Err(err) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": format!("the server rejected our request due to an error in our request: {err}"),
                            "reason": "Invalid", "code": 422}),
                ),
            }
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "code": 404, "message": "no route"}),
        ),
    };
    Ok(response)
}

/// A tiny adapter from a broadcast receiver to a stream of lines (tokio-stream is not a
/// dependency of this crate).
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::Stream;
    use tokio::sync::broadcast;

    pub struct BroadcastLines {
        inner: Pin<Box<dyn Stream<Item = String> + Send>>,
    }

    impl BroadcastLines {
        pub fn new(rx: broadcast::Receiver<String>) -> Self {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(line) => return Some((line, rx)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            BroadcastLines {
                inner: Box::pin(stream),
            }
        }
    }

    impl Stream for BroadcastLines {
        type Item = String;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
            self.inner.as_mut().poll_next(cx)
        }
    }
}
