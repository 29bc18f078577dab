//! CNI mode end to end: `meshtrace-cni install` chains the plugin into a node's network
//! configuration, and the installed binary is then run the way a container runtime runs a
//! chained plugin (CNI spec 1.0/1.1: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, the plugin's configuration from the list with `prevResult` on
//! stdin) against pods that are network namespaces of this test. It reads each pod's
//! annotations from a local stand-in for the Kubernetes API through the kubeconfig the
//! installer wrote; meshed pods then carry traffic through their proxies with no
//! `meshtrace-proxy init` at all.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshtrace_tests::client::RawClient;
use meshtrace_tests::netns::{workspace_binary, Node, Pod};
use meshtrace_tests::otlp::{OtlpReceiver, ReceiverProtocol};
use meshtrace_tests::upstream::HttpUpstream;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(60);
const APP_PORT: u16 = 8080;
const TOKEN: &str = "test-service-account-token";
/// The namespace of every pod here.
const NAMESPACE: &str = "shop";

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("meshtrace-cni-{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Kubernetes API's `GET /api/v1/namespaces/{ns}/pods/{name}`, for pods with the given
/// annotations, requiring the service account's bearer token.
struct FakeApi {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

/// A CA (PEM) and a TLS configuration serving a certificate it issued for 127.0.0.1, as a
/// cluster's API server has.
fn api_server_tls() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (ca.pem(), Arc::new(config))
}

impl FakeApi {
    /// Serves `pods` (name → annotations) over HTTPS with `tls`, or plain HTTP.
    async fn start(
        pods: BTreeMap<String, Value>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let pods = Arc::new(pods);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (pods, log) = (Arc::clone(&pods), Arc::clone(&log));
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (pods, log) = (Arc::clone(&pods), Arc::clone(&log));
                    async move { Ok::<_, Infallible>(answer(&req, &pods, &log)) }
                });
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        FakeApi { addr, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn answer(
    req: &Request<Incoming>,
    pods: &BTreeMap<String, Value>,
    log: &Mutex<Vec<String>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    log.lock().unwrap().push(format!("{} {path}", req.method()));
    let respond = |status: StatusCode, body: Value| {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response
    };
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v == format!("Bearer {TOKEN}").as_str());
    if !authorized {
        return respond(
            StatusCode::UNAUTHORIZED,
            json!({"kind": "Status", "code": 401}),
        );
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name] if *ns == NAMESPACE => {
            match pods.get(*name) {
                Some(annotations) => respond(
                    StatusCode::OK,
                    json!({"kind": "Pod", "apiVersion": "v1",
                           "metadata": {"name": name, "namespace": ns, "annotations": annotations},
                           "spec": {"containers": [{"name": "app", "image": "app"}]}}),
                ),
                None => respond(
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
                ),
            }
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "code": 404}),
        ),
    }
}

/// A node's CNI directories, with the cluster's network plugin already configured.
struct NodeDirs {
    _root: TempDir,
    bin: PathBuf,
    conf: PathBuf,
    service_account: PathBuf,
}

impl NodeDirs {
    fn new(label: &str, conf_name: &str, conf: &Value) -> NodeDirs {
        Self::with_ca(label, conf_name, conf, "")
    }

    /// With `ca_pem` as the service account's `ca.crt`.
    fn with_ca(label: &str, conf_name: &str, conf: &Value, ca_pem: &str) -> NodeDirs {
        let root = TempDir::new(label);
        let dirs = NodeDirs {
            bin: root.path().join("opt-cni-bin"),
            conf: root.path().join("etc-cni-net.d"),
            service_account: root.path().join("serviceaccount"),
            _root: root,
        };
        for dir in [&dirs.bin, &dirs.conf, &dirs.service_account] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(dirs.conf.join(conf_name), conf.to_string()).unwrap();
        std::fs::write(dirs.service_account.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dirs.service_account.join("ca.crt"), ca_pem).unwrap();
        dirs
    }

    /// `meshtrace-cni <subcommand>` for these directories (the node's paths are the same as the
    /// installer's here).
    fn installer(&self, subcommand: &str, api: Option<&str>) -> Command {
        let mut cmd = Command::new(workspace_binary("meshtrace-cni"));
        cmd.arg(subcommand)
            .arg("--bin-dir")
            .arg(&self.bin)
            .arg("--conf-dir")
            .arg(&self.conf)
            .arg("--host-conf-dir")
            .arg(&self.conf)
            .arg("--service-account-dir")
            .arg(&self.service_account)
            .arg("--log-level=info")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        if let Some(api) = api {
            cmd.arg(format!("--server={api}"));
        }
        cmd
    }

    fn install_once(&self, api: Option<&str>) {
        let out = self
            .installer("install", api)
            .arg("--once")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn read(&self, name: &str) -> Value {
        let path = self.conf.join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }
}

fn bridge_conflist() -> Value {
    json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "198.18.0.0/15"}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
    ]})
}

/// What the runtime gives the last plugin of `list`: its entry with the list's name and version
/// and the previous plugin's result.
fn chained_stdin(list: &Value, prev_result: &Value) -> Value {
    let mut conf = list["plugins"].as_array().unwrap().last().unwrap().clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["prevResult"] = prev_result.clone();
    conf
}

fn prev_result(pod: &Pod) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:c6:12:00:02", "sandbox": netns_path(pod)}],
        "ips": [{"address": format!("{}/24", pod.ip()), "interface": 0}],
        "dns": {},
    })
}

fn netns_path(pod: &Pod) -> String {
    format!("/var/run/netns/{}", pod.ns_name())
}

/// What one plugin run printed and how it ended.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `plugin` as a runtime does: `CNI_*` variables, the configuration on stdin.
fn run_plugin(plugin: &Path, command: &str, pod: Option<&Pod>, name: &str, stdin: &Value) -> Run {
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", plugin.parent().unwrap());
    if let Some(pod) = pod {
        cmd.env("CNI_CONTAINERID", format!("sandbox-{name}"))
            .env("CNI_NETNS", netns_path(pod))
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=sandbox-{name}"
                ),
            );
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The pod's nat table, from both iptables backends.
fn nat_table(pod: &Pod) -> String {
    ["iptables-nft-save", "iptables-legacy-save"]
        .iter()
        .filter_map(|save| pod.run(save, &["-t", "nat"]).ok())
        .collect()
}

fn pod_annotations(pairs: &[(&str, &str)]) -> Value {
    json!(pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_plugin_meshes_annotated_pods_and_their_traffic_is_traced() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let receiver = OtlpReceiver::start_on(ReceiverProtocol::Http, (node.host_ip(), 0).into()).await;
    let client = node.pod("client").unwrap();
    let server = node.pod("server").unwrap();
    let plain = node.pod("plain").unwrap();
    let (ca_pem, tls) = api_server_tls();
    let api = FakeApi::start(
        BTreeMap::from([
            (
                "client".to_owned(),
                pod_annotations(&[("meshtrace.io/injected", "true")]),
            ),
            (
                "server".to_owned(),
                pod_annotations(&[
                    ("meshtrace.io/injected", "true"),
                    ("meshtrace.io/skip-inbound-ports", "9090"),
                ]),
            ),
            ("plain".to_owned(), pod_annotations(&[("team", "x")])),
        ]),
        Some(tls),
    )
    .await;

    // The kubeconfig the installer writes: the API server's URL and CA, the account's token.
    let dirs = NodeDirs::with_ca("e2e", "10-bridge.conflist", &bridge_conflist(), &ca_pem);
    dirs.install_once(Some(&format!("https://{}", api.addr)));
    let list = dirs.read("10-bridge.conflist");
    let plugin = dirs.bin.join("meshtrace-cni");

    // ADD, as the runtime runs the last plugin of the list: prevResult comes back unchanged.
    for (pod, name) in [(&client, "client"), (&server, "server"), (&plain, "plain")] {
        let prev = prev_result(pod);
        let run = run_plugin(
            &plugin,
            "ADD",
            Some(pod),
            name,
            &chained_stdin(&list, &prev),
        );
        assert!(run.success, "ADD {name}: {} {}", run.stdout, run.stderr);
        assert_eq!(run.json(), prev, "ADD {name} passes prevResult through");
    }
    assert_eq!(
        api.requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/namespaces/shop/pods/"))
            .count(),
        3,
        "{:?}",
        api.requests()
    );
    // The same rules as `meshtrace-proxy init`, with the pod's skip ports; none in the plain pod.
    let server_nat = nat_table(&server);
    assert!(
        server_nat.contains("-j MESHTRACE_INBOUND") && server_nat.contains("--dport 9090"),
        "{server_nat}"
    );
    assert!(
        !nat_table(&plain).contains("MESHTRACE"),
        "{}",
        nat_table(&plain)
    );

    // A second ADD (a runtime retry) leaves one set of rules.
    let prev = prev_result(&server);
    let again = run_plugin(
        &plugin,
        "ADD",
        Some(&server),
        "server",
        &chained_stdin(&list, &prev),
    );
    assert!(again.success, "{}", again.stderr);
    let jumps = nat_table(&server)
        .lines()
        .filter(|l| l.starts_with("-A PREROUTING") && l.contains("MESHTRACE_INBOUND"))
        .count();
    assert_eq!(jumps, 1);

    // Traffic between the two meshed pods goes through both proxies, with no init step.
    let endpoint = receiver.endpoint();
    let _client_proxy = client.start_proxy(&endpoint, &[]).await.unwrap();
    let _server_proxy = server.start_proxy(&endpoint, &[]).await.unwrap();
    let _app = HttpUpstream::serve(server.listen(APP_PORT).unwrap());
    let target = SocketAddr::from((server.ip(), APP_PORT));
    let stream = client.connect(target).await.unwrap();
    let mut http = RawClient::from_stream(stream);
    http.send(format!("GET /cni HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
        .await;
    let response = http.read_response().await;
    assert_eq!(response.status(), 200, "{}", response.head_str());
    let spans = receiver
        .wait_for_spans(4, PATIENCE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen: Vec<(String, String)> = spans
        .iter()
        .map(|s| {
            let direction = match s.attr("meshtrace.direction") {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(d)) => d,
                other => format!("{other:?}"),
            };
            (
                s.resource_attr("service.name").unwrap_or_default(),
                direction,
            )
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            ("client".to_owned(), "outbound".to_owned()),
            ("server".to_owned(), "inbound".to_owned())
        ]
    );

    // CHECK: in place, then missing once the interception is flushed.
    let check = run_plugin(
        &plugin,
        "CHECK",
        Some(&client),
        "client",
        &chained_stdin(&list, &prev_result(&client)),
    );
    assert!(
        check.success && check.stdout.trim().is_empty(),
        "{} {}",
        check.stdout,
        check.stderr
    );
    for iptables in ["iptables-nft", "iptables-legacy"] {
        let _ = client.run(iptables, &["-t", "nat", "-F", "OUTPUT"]);
    }
    let check = run_plugin(
        &plugin,
        "CHECK",
        Some(&client),
        "client",
        &chained_stdin(&list, &prev_result(&client)),
    );
    assert!(!check.success);
    let error = check.json();
    assert_eq!(error["code"], 101, "{error}");
    assert_eq!(error["cniVersion"], "1.0.0");
    assert!(
        error["msg"].as_str().unwrap().contains("redirect"),
        "{error}"
    );

    // DEL: nothing to undo, nothing printed.
    let del = run_plugin(
        &plugin,
        "DEL",
        Some(&server),
        "server",
        &chained_stdin(&list, &prev_result(&server)),
    );
    assert!(
        del.success && del.stdout.trim().is_empty(),
        "{} {}",
        del.stdout,
        del.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_are_cni_error_json() {
    let Some(node) = Node::new_or_skip() else {
        return;
    };
    let pod = node.pod("lonely").unwrap();
    let plugin = workspace_binary("meshtrace-cni");

    let version = run_plugin(
        &plugin,
        "VERSION",
        None,
        "",
        &json!({"cniVersion": "1.1.0"}),
    );
    assert!(version.success);
    let supported = version.json()["supportedVersions"].clone();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(
            supported.as_array().unwrap().contains(&json!(v)),
            "{supported}"
        );
    }

    // The API is unreachable: try again later, nothing programmed.
    let dirs = NodeDirs::new("errors", "10-bridge.conflist", &bridge_conflist());
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    dirs.install_once(Some(&format!("http://{closed}")));
    let list = dirs.read("10-bridge.conflist");
    let run = run_plugin(
        &plugin,
        "ADD",
        Some(&pod),
        "lonely",
        &chained_stdin(&list, &prev_result(&pod)),
    );
    assert!(!run.success);
    assert_eq!(run.json()["code"], 11, "{}", run.stdout);
    assert!(!nat_table(&pod).contains("MESHTRACE"));

    // An API server whose certificate the kubeconfig's CA did not issue is not trusted.
    let (_, tls) = api_server_tls();
    let (other_ca, _) = api_server_tls();
    let impostor = FakeApi::start(
        BTreeMap::from([(
            "lonely".to_owned(),
            pod_annotations(&[("meshtrace.io/injected", "true")]),
        )]),
        Some(tls),
    )
    .await;
    let untrusting = NodeDirs::with_ca(
        "untrusting",
        "10-bridge.conflist",
        &bridge_conflist(),
        &other_ca,
    );
    untrusting.install_once(Some(&format!("https://{}", impostor.addr)));
    let untrusting_list = untrusting.read("10-bridge.conflist");
    let run = run_plugin(
        &plugin,
        "ADD",
        Some(&pod),
        "lonely",
        &chained_stdin(&untrusting_list, &prev_result(&pod)),
    );
    assert!(!run.success);
    assert_eq!(run.json()["code"], 11, "{}", run.stdout);
    assert!(
        impostor.requests().is_empty(),
        "no request sent over an untrusted connection"
    );
    assert!(!nat_table(&pod).contains("MESHTRACE"));

    // Not chained (no prevResult): invalid configuration, said so.
    let mut alone = chained_stdin(&list, &Value::Null);
    alone.as_object_mut().unwrap().remove("prevResult");
    let run = run_plugin(&plugin, "ADD", Some(&pod), "lonely", &alone);
    assert!(!run.success);
    let error = run.json();
    assert_eq!(error["code"], 7);
    assert!(
        error["msg"].as_str().unwrap().contains("chained"),
        "{error}"
    );

    // A version it does not speak; a missing CNI_NETNS.
    let run = run_plugin(
        &plugin,
        "ADD",
        Some(&pod),
        "lonely",
        &json!({"cniVersion": "2.0.0", "name": "n", "type": "meshtrace-cni"}),
    );
    assert_eq!(run.json()["code"], 1);
    let run = run_plugin(
        &plugin,
        "ADD",
        None,
        "",
        &chained_stdin(&list, &prev_result(&pod)),
    );
    assert_eq!(run.json()["code"], 4, "{}", run.stdout);
}

#[test]
fn install_is_idempotent_converts_a_conf_and_uninstalls_on_sigterm() {
    let single =
        json!({"cniVersion": "0.4.0", "name": "bridge-net", "type": "bridge", "bridge": "cni0"});
    let dirs = NodeDirs::new("install", "10-bridge.conf", &single);
    // Another network's file that sorts later is not the primary one.
    std::fs::write(
        dirs.conf.join("99-other.conflist"),
        bridge_conflist().to_string(),
    )
    .unwrap();

    dirs.install_once(None);
    assert!(!dirs.conf.join("10-bridge.conf").exists(), "converted");
    let list = dirs.read("10-bridge.conflist");
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(list["name"], "bridge-net");
    assert_eq!(list["cniVersion"], "0.4.0");
    assert_eq!(plugins.len(), 2);
    assert_eq!(plugins[0]["type"], "bridge");
    assert_eq!(plugins[1]["type"], "meshtrace-cni");
    let kubeconfig = dirs.conf.join("meshtrace-cni-kubeconfig");
    assert_eq!(plugins[1]["kubeconfig"], json!(kubeconfig));
    assert_eq!(
        plugins[1]["capabilities"]["io.kubernetes.cri.pod-annotations"],
        true
    );
    assert_eq!(
        dirs.read("99-other.conflist"),
        bridge_conflist(),
        "untouched"
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&kubeconfig), 0o600, "the token stays private");
    let binary = dirs.bin.join("meshtrace-cni");
    assert_eq!(mode(&binary), 0o755);
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        std::fs::read(workspace_binary("meshtrace-cni")).unwrap()
    );
    let config = dirs.read("meshtrace-cni-kubeconfig");
    assert_eq!(config["users"][0]["user"]["token"], TOKEN);

    // Again: nothing changes (not even a rewrite).
    let before: Vec<_> = [&kubeconfig, &dirs.conf.join("10-bridge.conflist"), &binary]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    dirs.install_once(None);
    let after: Vec<_> = [&kubeconfig, &dirs.conf.join("10-bridge.conflist"), &binary]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(dirs.read("10-bridge.conflist"), list);

    // The DaemonSet's way: keep it installed (repairing a rewritten conflist) until SIGTERM,
    // then remove the entry, the kubeconfig and the binary.
    let daemon = dirs
        .installer("install", None)
        .arg("--interval=50ms")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(
        dirs.conf.join("10-bridge.conflist"),
        bridge_conflist().to_string(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while dirs.read("10-bridge.conflist")["plugins"]
        .as_array()
        .unwrap()
        .len()
        != 3
    {
        assert!(std::time::Instant::now() < deadline, "not repaired");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(daemon.id()).unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = daemon.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dirs.read("10-bridge.conflist"), bridge_conflist());
    assert!(!kubeconfig.exists());
    assert!(!binary.exists());
}
