//! The webhook over real TLS: a tokio-rustls client trusting the bootstrapped (or a test) CA, over
//! HTTP/1.1 and HTTP/2, certificate reload from files, the metrics port, and the whole chain
//! against the local Kubernetes API server.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshtrace_injector::certs::{self, Bootstrapped};
use meshtrace_injector::config::Cli;
use meshtrace_injector::metrics::Metrics;
use meshtrace_injector::namespaces::KubeCluster;
use meshtrace_injector::review::{Cluster, StaticCluster, Webhook};
use meshtrace_injector::server::{self, CertFiles, ReloadingCert};
use prometheus_client::registry::Registry;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const PATIENCE: Duration = Duration::from_secs(30);
const SERVER_NAME: &str = "meshtrace-injector.meshtrace-system.svc";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn shop_cluster() -> StaticCluster {
    StaticCluster {
        namespaces: BTreeMap::from([(
            "shop".to_owned(),
            BTreeMap::from([("meshtrace.io/inject".to_owned(), "enabled".to_owned())]),
        )]),
        native_sidecars: true,
        ..StaticCluster::default()
    }
}

struct Running {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts the webhook (and its metrics port) with `resolver` on ephemeral loopback ports.
async fn start<C: Cluster>(
    cluster: C,
    resolver: Arc<ReloadingCert>,
    max_body_bytes: usize,
) -> Running {
    let cli = Cli::parse_from(["meshtrace-injector"]);
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let webhook = Arc::new(Webhook::new(cluster, cli.proxy, cli.namespace, metrics));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, metrics_addr) = (
        listener.local_addr().unwrap(),
        metrics_listener.local_addr().unwrap(),
    );
    let tls = server::tls_config(resolver).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stopped.await;
        };
        let (tx, rx) = tokio::sync::watch::channel(());
        let rx2 = rx.clone();
        let wait = |mut rx: tokio::sync::watch::Receiver<()>| async move {
            let _ = rx.changed().await;
        };
        tokio::join!(
            server::serve_webhook(listener, tls, webhook, max_body_bytes, wait(rx)),
            server::serve_metrics(metrics_listener, Arc::new(registry), wait(rx2)),
            async move {
                stopped.await;
                let _ = tx.send(());
            }
        );
    });
    Running {
        addr,
        metrics_addr,
        _stop: stop,
    }
}

fn bootstrapped() -> (Bootstrapped, Arc<ReloadingCert>) {
    let boot = certs::bootstrap(certs::service_dns_names(
        "meshtrace-injector",
        "meshtrace-system",
    ))
    .unwrap();
    let key = certs::certified_key(boot.cert_pem.as_bytes(), boot.key_pem.as_bytes()).unwrap();
    (boot, ReloadingCert::new(key))
}

async fn tls_connect(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[u8],
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(SERVER_NAME).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

async fn http1(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let tls = tls_connect(addr, roots, rustls::ALL_VERSIONS, b"http/1.1")
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, SERVER_NAME)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// `GET /metrics` on the plain metrics port.
async fn scrape(metrics_addr: SocketAddr) -> String {
    within("metrics", async {
        let tcp = TcpStream::connect(metrics_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::get("/metrics")
            .header(http::header::HOST, "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    })
    .await
}

fn patched_response(body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(body).unwrap();
    review["response"].clone()
}

fn decoded_patch(response: &Value) -> Vec<Value> {
    let b64 = response["patch"].as_str().expect("a patch");
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn bootstrapped_https_webhook_answers_reviews_over_http1() {
    let (boot, resolver) = bootstrapped();
    let running = start(shop_cluster(), resolver, 1024 * 1024).await;
    let roots = [boot.ca_der.clone()];

    let (status, body) = within(
        "healthz",
        http1(running.addr, &roots, "GET", "/healthz", vec![]),
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));

    let review = fixture("01-create-pod-from-replicaset.json");
    let (status, body) = within(
        "inject",
        http1(running.addr, &roots, "POST", "/inject", review),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let response = patched_response(&body);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["uid"], "7324b543-3ae6-4dda-966a-ad91c9240c47");
    assert!(decoded_patch(&response).len() >= 3);

    let garbage = fixture("11-garbage-body.txt");
    let (status, body) = within(
        "garbage",
        http1(running.addr, &roots, "POST", "/inject", garbage),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not an admission.k8s.io/v1 AdmissionReview"));

    let (status, _) = within(
        "get inject",
        http1(running.addr, &roots, "GET", "/inject", vec![]),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = within(
        "unknown path",
        http1(running.addr, &roots, "GET", "/mutate", vec![]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Counted on the plain metrics port.
    let metrics = scrape(running.metrics_addr).await;
    assert!(
        metrics.contains("meshtrace_injector_pods_seen_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshtrace_injector_pods_injected_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshtrace_injector_errors_total{kind=\"bad_request\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn http2_and_tls12_clients_are_served() {
    let (boot, resolver) = bootstrapped();
    let running = start(shop_cluster(), resolver, 1024 * 1024).await;
    let roots = [boot.ca_der.clone()];

    let tls = within(
        "h2 handshake",
        tls_connect(running.addr, &roots, rustls::ALL_VERSIONS, b"h2"),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = Request::post(format!("https://{SERVER_NAME}/inject"))
        .body(Full::new(Bytes::from(fixture("05-create-pod-dryrun.json"))))
        .unwrap();
    let response = within("h2 inject", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!decoded_patch(&patched_response(&body)).is_empty());

    let tls12 = within(
        "tls1.2 handshake",
        tls_connect(
            running.addr,
            &roots,
            &[&rustls::version::TLS12],
            b"http/1.1",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // A client that does not trust the CA is refused.
    let stranger = certs::bootstrap(vec!["x".into()]).unwrap();
    let refused = within(
        "untrusted handshake",
        tls_connect(
            running.addr,
            &[stranger.ca_der],
            rustls::ALL_VERSIONS,
            b"http/1.1",
        ),
    )
    .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn oversized_reviews_are_refused() {
    let (boot, resolver) = bootstrapped();
    let running = start(shop_cluster(), resolver, 4096).await;
    let (status, body) = within(
        "oversized",
        http1(
            running.addr,
            std::slice::from_ref(&boot.ca_der),
            "POST",
            "/inject",
            fixture("01-create-pod-from-replicaset.json"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("4096"));
}

fn write_pair(dir: &Path, boot: &Bootstrapped) {
    // Write then rename, as Kubernetes' atomic Secret updates do.
    for (name, content) in [("tls.crt", &boot.cert_pem), ("tls.key", &boot.key_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

async fn served_leaf(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
) -> CertificateDer<'static> {
    let tls = tls_connect(addr, roots, rustls::ALL_VERSIONS, b"http/1.1")
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn rewritten_cert_files_are_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let names = certs::service_dns_names("meshtrace-injector", "meshtrace-system");
    let first = certs::bootstrap(names.clone()).unwrap();
    let second = certs::bootstrap(names).unwrap();
    write_pair(dir.path(), &first);

    let files = CertFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    let resolver = ReloadingCert::new(files.load().await.unwrap());
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(files.watch(resolver.clone(), Duration::from_millis(50), metrics.clone()));
    let running = start(shop_cluster(), resolver, 1024 * 1024).await;
    let roots = [first.ca_der.clone(), second.ca_der.clone()];
    let leaf = |boot: &Bootstrapped| {
        certs::certified_key(boot.cert_pem.as_bytes(), boot.key_pem.as_bytes())
            .unwrap()
            .cert[0]
            .clone()
    };

    assert_eq!(
        within("first cert", served_leaf(running.addr, &roots)).await,
        leaf(&first)
    );

    write_pair(dir.path(), &second);
    within("reload", async {
        while served_leaf(running.addr, &roots).await != leaf(&second) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Broken files keep the last good certificate, and are counted.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    let label = meshtrace_injector::metrics::KindLabel { kind: "tls_reload" };
    within("reload error counted", async {
        while metrics.errors.get_or_create(&label).get() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(served_leaf(running.addr, &roots).await, leaf(&second));
}

#[tokio::test]
async fn whole_chain_against_the_local_kubernetes_api() {
    let api = support::FakeApiServer::start(support::State {
        listed: BTreeMap::from([(
            "shop".to_owned(),
            BTreeMap::from([("meshtrace.io/inject".to_owned(), "enabled".to_owned())]),
        )]),
        resource_version: 1,
        minor_version: "27".to_owned(),
        ..support::State::default()
    })
    .await;
    let (boot, resolver) = bootstrapped();
    let running = start(KubeCluster::spawn(api.client()), resolver, 1024 * 1024).await;
    let review = fixture("01-create-pod-from-replicaset.json");
    let (status, body) = within(
        "inject",
        http1(
            running.addr,
            std::slice::from_ref(&boot.ca_der),
            "POST",
            "/inject",
            review,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let patch = decoded_patch(&patched_response(&body));
    // Kubernetes 1.27: the proxy is a regular first container.
    let proxy_op = patch
        .iter()
        .find(|op| op["path"] == "/spec/containers/0")
        .expect("proxy added as the first container");
    assert_eq!(proxy_op["value"]["name"], "meshtrace-proxy");
    assert!(proxy_op["value"].get("restartPolicy").is_none());
    assert!(api.requests().iter().any(|r| r.starts_with("GET /version")));
}

/// Pod Security labels and an old server's version, both read from the local API: a pod the
/// baseline level would refuse is left alone, a Job is not meshed, a native-sidecar annotation is
/// ignored; each with a warning, and the skips counted on the metrics port.
#[tokio::test]
async fn pod_security_and_an_old_server_through_the_local_kubernetes_api() {
    let enabled = BTreeMap::from([("meshtrace.io/inject".to_owned(), "enabled".to_owned())]);
    let api = support::FakeApiServer::start(support::State {
        listed: BTreeMap::from([
            ("shop".to_owned(), enabled.clone()),
            ("jobs".to_owned(), enabled),
        ]),
        labels: BTreeMap::from([(
            "shop".to_owned(),
            BTreeMap::from([(
                "pod-security.kubernetes.io/enforce".to_owned(),
                "baseline".to_owned(),
            )]),
        )]),
        resource_version: 1,
        minor_version: "28".to_owned(),
        ..support::State::default()
    })
    .await;
    let (boot, resolver) = bootstrapped();
    let running = start(KubeCluster::spawn(api.client()), resolver, 1024 * 1024).await;
    let roots = [boot.ca_der.clone()];
    let base: Value =
        serde_json::from_slice(&fixture("01-create-pod-from-replicaset.json")).unwrap();
    let in_namespace = |namespace: &str, edit: &dyn Fn(&mut Value)| {
        let mut review = base.clone();
        review["request"]["namespace"] = namespace.into();
        review["request"]["object"]["metadata"]["namespace"] = namespace.into();
        edit(&mut review["request"]["object"]);
        serde_json::to_vec(&review).unwrap()
    };
    let cases: [(Vec<u8>, bool, &str); 3] = [
        (
            in_namespace("shop", &|_| {}),
            false,
            "Pod Security \"baseline\"",
        ),
        (
            in_namespace("jobs", &|pod| pod["spec"]["restartPolicy"] = "Never".into()),
            false,
            "runs to completion",
        ),
        (
            in_namespace("jobs", &|pod| {
                pod["metadata"]["annotations"] =
                    serde_json::json!({"meshtrace.io/native-sidecar": "true"})
            }),
            true,
            "ignored annotation meshtrace.io/native-sidecar",
        ),
    ];
    for (review, patched, warning) in cases {
        let (status, body) = within(
            "review",
            http1(running.addr, &roots, "POST", "/inject", review),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let response = patched_response(&body);
        assert_eq!(response["allowed"], true);
        assert_eq!(response.get("patch").is_some(), patched, "{response}");
        let warnings: Vec<String> =
            serde_json::from_value(response["warnings"].clone()).unwrap_or_default();
        let warnings = warnings.join("\n");
        assert!(warnings.contains(warning), "{warning}: {warnings}");
        if patched {
            let patch = decoded_patch(&response);
            assert!(
                patch.iter().any(|op| op["path"] == "/spec/containers/0"),
                "a regular container on 1.28"
            );
        }
    }
    let metrics = scrape(running.metrics_addr).await;
    for reason in ["pod_security", "run_to_completion"] {
        let line = format!("meshtrace_injector_pods_skipped_total{{reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}
