//! AdmissionReview fixtures (as a kube-apiserver sends them) through the webhook; every returned
//! patch is applied with the json-patch crate and the resulting pod checked field by field.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use clap::Parser;
use k8s_openapi::api::core::v1::{Container, Pod};
use meshtrace_injector::config::Cli;
use meshtrace_injector::metrics::Metrics;
use meshtrace_injector::review::{StaticCluster, Webhook};
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `shop` is annotated for injection, `payments` and `default` are not.
fn cluster(native_sidecars: bool) -> StaticCluster {
    StaticCluster {
        namespaces: BTreeMap::from([
            (
                "shop".to_owned(),
                annotations(&[("meshtrace.io/inject", "enabled")]),
            ),
            (
                "payments".to_owned(),
                annotations(&[("meshtrace.io/log-level", "warn")]),
            ),
            ("default".to_owned(), BTreeMap::new()),
            (
                "kube-system".to_owned(),
                annotations(&[("meshtrace.io/inject", "enabled")]),
            ),
        ]),
        native_sidecars,
        ..StaticCluster::default()
    }
}

fn webhook_with(cluster: StaticCluster, args: &[&str]) -> Webhook<StaticCluster> {
    let cli = Cli::parse_from(std::iter::once("meshtrace-injector").chain(args.iter().copied()));
    Webhook::with_cluster_settings(
        cluster,
        cli.proxy,
        cli.cluster,
        cli.namespace,
        Arc::new(Metrics::default()),
    )
}

fn webhook(native_sidecars: bool) -> Webhook<StaticCluster> {
    webhook_with(cluster(native_sidecars), &[])
}

/// The `response` of the review the webhook answers for `body`.
async fn respond(webhook: &Webhook<StaticCluster>, body: &[u8]) -> Value {
    let out = webhook
        .review(body)
        .await
        .expect("a valid AdmissionReview is answered");
    let review: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    review["response"].clone()
}

/// Applies the response's patch (if any) to the request's object.
fn apply(request: &Value, response: &Value) -> Value {
    let mut object = request["request"]["object"].clone();
    if let Some(patch) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut object, &patch).unwrap();
    }
    object
}

/// A JSON value with the review's object replaced, for re-submission.
fn resubmit(mut request: Value, object: Value) -> Vec<u8> {
    request["request"]["object"] = object;
    serde_json::to_vec(&request).unwrap()
}

fn container<'a>(containers: &'a [Container], name: &str) -> &'a Container {
    containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env(container: &Container) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = e.value.clone().unwrap_or_else(|| {
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .unwrap();
                format!("fieldRef:{}", field.field_path)
            });
            (e.name.clone(), value)
        })
        .collect()
}

/// Every field written must be a field Kubernetes knows: a typed round trip loses nothing.
fn assert_only_known_fields(object: &Value) {
    let typed: Pod = serde_json::from_value(object.clone()).unwrap();
    let mut round_trip = serde_json::to_value(&typed).unwrap();
    let mut original = object.clone();
    strip_nulls(&mut round_trip);
    strip_nulls(&mut original);
    assert_eq!(
        original["spec"], round_trip["spec"],
        "unknown or misspelled field in the spec"
    );
    assert_eq!(
        original["metadata"]["annotations"],
        round_trip["metadata"]["annotations"]
    );
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn pod(object: &Value) -> Pod {
    serde_json::from_value(object.clone()).unwrap()
}

#[tokio::test]
async fn replicaset_pod_in_annotated_namespace_gets_a_native_sidecar() {
    let request = fixture_json("01-create-pod-from-replicaset.json");
    let webhook = webhook(true);
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    assert_eq!(response["uid"], request["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert!(response.get("warnings").is_none(), "{response}");

    let patched = apply(&request, &response);
    assert_only_known_fields(&patched);
    let p = pod(&patched);
    let annotations = p.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["meshtrace.io/injected"], "true");
    assert_eq!(
        annotations["meshtrace.io/proxy-version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(!annotations.contains_key("kubectl.kubernetes.io/default-container"));

    let spec = p.spec.as_ref().unwrap();
    // App containers untouched, proxy not among them.
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["checkout", "metrics-exporter"]);
    assert_eq!(
        patched["spec"]["containers"],
        request["request"]["object"]["spec"]["containers"]
    );

    let init = spec.init_containers.as_ref().unwrap();
    let names: Vec<_> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["meshtrace-init", "meshtrace-proxy"]);

    let init_c = &init[0];
    assert_eq!(
        init_c.image.as_deref(),
        Some(concat!(
            "ghcr.io/meshtrace/proxy:",
            env!("CARGO_PKG_VERSION")
        ))
    );
    assert_eq!(
        init_c.args.clone().unwrap(),
        [
            "init",
            "--inbound-port",
            "4143",
            "--outbound-port",
            "4140",
            "--proxy-uid",
            "2102"
        ]
    );
    let sc = init_c.security_context.as_ref().unwrap();
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.add.clone().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.clone().unwrap(), ["ALL"]);
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(init_c.restart_policy, None);
    let mounts = init_c.volume_mounts.as_ref().unwrap();
    assert_eq!(
        (mounts[0].name.as_str(), mounts[0].mount_path.as_str()),
        ("meshtrace-xtables", "/run")
    );
    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(
        volumes.len(),
        2,
        "service-account volume kept, xtables added"
    );
    assert!(volumes[1].empty_dir.is_some());

    let proxy = &init[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert!(proxy.lifecycle.is_none());
    let startup = proxy
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.path.as_deref(), Some("/ready"));
    let live = proxy
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (
            live.path.as_deref(),
            serde_json::to_value(&live.port).unwrap()
        ),
        (Some("/live"), 4191.into())
    );
    let ready = proxy
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (
            ready.path.as_deref(),
            serde_json::to_value(&ready.port).unwrap()
        ),
        (Some("/ready"), 4191.into())
    );
    let ports: Vec<_> = proxy
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("meshtrace-proxy".to_owned(), 4143),
            ("meshtrace-admin".to_owned(), 4191)
        ]
    );
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(2102));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.clone().unwrap(),
        ["ALL"]
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let resources = serde_json::to_value(proxy.resources.as_ref().unwrap()).unwrap();
    assert_eq!(
        resources,
        serde_json::json!({"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}})
    );

    let env = env(proxy);
    let expected: BTreeMap<String, String> = [
        ("MESHTRACE_POD_NAME", "fieldRef:metadata.name"),
        ("MESHTRACE_POD_NAMESPACE", "fieldRef:metadata.namespace"),
        ("MESHTRACE_NODE_NAME", "fieldRef:spec.nodeName"),
        ("MESHTRACE_POD_UID", "fieldRef:metadata.uid"),
        ("MESHTRACE_POD_IP", "fieldRef:status.podIP"),
        ("MESHTRACE_WORKLOAD", "checkout"),
        ("OTEL_SERVICE_NAME", "checkout"),
        ("MESHTRACE_SAMPLE_RATE", "1"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector.observability.svc.cluster.local:4317",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        // No MESHTRACE_OPAQUE_PORTS: an empty value would replace the proxy's default list.
        ("MESHTRACE_INBOUND_PORTS", "8080,9090,9100"),
        ("MESHTRACE_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(env, expected);

    let metrics = webhook.metrics();
    assert_eq!(metrics.reviews.get(), 1);
    assert_eq!(metrics.injected.get(), 1);
}

#[tokio::test]
async fn injecting_an_injected_pod_changes_nothing() {
    for native in [true, false] {
        let request = fixture_json("01-create-pod-from-replicaset.json");
        let webhook = webhook(native);
        let first = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
        let injected = apply(&request, &first);
        assert_ne!(injected, request["request"]["object"]);

        let second = respond(&webhook, &resubmit(request.clone(), injected.clone())).await;
        assert_eq!(second["allowed"], true);
        assert!(
            second.get("patch").is_none(),
            "second injection patched: {second}"
        );
        assert_eq!(
            apply(&request, &second),
            request["request"]["object"],
            "native={native}"
        );
        let skipped = webhook
            .metrics()
            .skipped
            .get_or_create(&meshtrace_injector::metrics::ReasonLabel {
                reason: "already_injected",
            })
            .get();
        assert_eq!(skipped, 1);
    }
}

#[tokio::test]
async fn older_clusters_get_a_regular_first_container_with_a_poststart_hook() {
    let request = fixture_json("01-create-pod-from-replicaset.json");
    let response = respond(&webhook(false), &serde_json::to_vec(&request).unwrap()).await;
    let patched = apply(&request, &response);
    assert_only_known_fields(&patched);
    let p = pod(&patched);
    let spec = p.spec.as_ref().unwrap();
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["meshtrace-proxy", "checkout", "metrics-exporter"]);
    let init_names: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init_names, ["meshtrace-init"]);

    let proxy = &spec.containers[0];
    // Fields a 1.24 API server does not know must be absent.
    assert_eq!(proxy.restart_policy, None);
    assert!(proxy.startup_probe.is_none());
    let hook = proxy
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    // The proxy's own await-ready: the image needs no shell.
    let command = hook.exec.as_ref().unwrap().command.clone().unwrap();
    assert_eq!(
        command,
        [
            "/usr/local/bin/meshtrace-proxy",
            "await-ready",
            "--timeout",
            "2m"
        ]
    );
    let default =
        &p.metadata.annotations.as_ref().unwrap()["kubectl.kubernetes.io/default-container"];
    assert_eq!(default, "checkout");
}

#[tokio::test]
async fn pod_level_opt_in_with_config_annotations_and_existing_init_containers() {
    let request = fixture_json("07-create-pod-opt-in-statefulset.json");
    let response = respond(&webhook(true), &serde_json::to_vec(&request).unwrap()).await;
    assert_eq!(response["allowed"], true);
    let patched = apply(&request, &response);
    assert_only_known_fields(&patched);
    let p = pod(&patched);
    let annotations = p.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations["prometheus.io/scrape"], "true",
        "existing annotations kept"
    );
    assert_eq!(annotations["meshtrace.io/injected"], "true");

    let spec = p.spec.as_ref().unwrap();
    // `meshtrace.io/native-sidecar: "false"` beats the cluster's support.
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["meshtrace-proxy", "ledger", "metrics-exporter", "postgres"]
    );
    // Existing init containers run first, unproxied; the iptables step last.
    let init_names: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init_names, ["migrate", "meshtrace-init"]);

    let init = container(spec.init_containers.as_ref().unwrap(), "meshtrace-init");
    let args = init.args.clone().unwrap();
    let skip_out = args
        .iter()
        .position(|a| a == "--skip-outbound-ports")
        .unwrap();
    assert_eq!(args[skip_out + 1], "5432,9000-9100");
    assert!(!args.contains(&"--skip-inbound-ports".to_owned()));

    let proxy = container(&spec.containers, "meshtrace-proxy");
    let env = env(proxy);
    assert_eq!(
        env["MESHTRACE_WORKLOAD"], "ledger",
        "app.kubernetes.io/name beats app and owner"
    );
    assert_eq!(env["MESHTRACE_SAMPLE_RATE"], "0.25");
    assert_eq!(env["MESHTRACE_OPAQUE_PORTS"], "5432");
    assert_eq!(
        env["MESHTRACE_INBOUND_PORTS"], "5432,8080,9090,9100",
        "TCP ports of all app containers, once"
    );
    assert_eq!(
        env["MESHTRACE_LOG"], "warn",
        "from the namespace annotation"
    );
    let limits = proxy.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["memory"].0, "128Mi");
}

#[tokio::test]
async fn invalid_config_annotations_are_ignored_with_warnings() {
    let request = fixture_json("09-create-pod-invalid-config-annotations.json");
    let webhook = webhook(true);
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    assert_eq!(response["allowed"], true);
    let warnings: Vec<String> = serde_json::from_value(response["warnings"].clone()).unwrap();
    for key in [
        "meshtrace.io/sample-rate",
        "meshtrace.io/collector-protocol",
        "meshtrace.io/skip-inbound-ports",
        "meshtrace.io/proxy-cpu-request",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(key)),
            "no warning for {key}: {warnings:?}"
        );
    }
    assert_eq!(warnings.len(), 4, "{warnings:?}");

    let p = pod(&apply(&request, &response));
    let spec = p.spec.unwrap();
    let proxy = container(spec.init_containers.as_ref().unwrap(), "meshtrace-proxy");
    let env = env(proxy);
    assert_eq!(env["MESHTRACE_SAMPLE_RATE"], "1", "default kept");
    assert_eq!(env["OTEL_EXPORTER_OTLP_PROTOCOL"], "grpc");
    assert_eq!(
        env["MESHTRACE_LOG"], "debug",
        "the valid annotation applies"
    );
    assert_eq!(webhook.metrics().warnings.get(), 4);
}

/// (fixture, namespace override, expected skip reason, a warning expected)
const SKIPPED: &[(&str, Option<&str>, &str, bool)] = &[
    (
        "02-create-pod-hostnetwork.json",
        None,
        "host_network",
        false,
    ),
    (
        "03-create-pod-already-injected.json",
        None,
        "already_injected",
        false,
    ),
    ("04-create-pod-opt-out.json", None, "opted_out", false),
    ("06-update-pod-label.json", None, "not_create", false),
    (
        "08-create-pod-invalid-inject-annotation.json",
        None,
        "invalid_annotation",
        true,
    ),
    (
        "01-create-pod-from-replicaset.json",
        Some("default"),
        "not_enabled",
        false,
    ),
    (
        "01-create-pod-from-replicaset.json",
        Some("kube-system"),
        "excluded_namespace",
        false,
    ),
    (
        "01-create-pod-from-replicaset.json",
        Some("meshtrace-system"),
        "excluded_namespace",
        false,
    ),
];

#[tokio::test]
async fn skipped_pods_are_allowed_unchanged_and_counted_by_reason() {
    for &(name, namespace, reason, warns) in SKIPPED {
        let mut request = fixture_json(name);
        if let Some(ns) = namespace {
            request["request"]["namespace"] = ns.into();
            request["request"]["object"]["metadata"]["namespace"] = ns.into();
        }
        let webhook = webhook(true);
        let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
        assert_eq!(response["allowed"], true, "{name}");
        assert_eq!(response["uid"], request["request"]["uid"], "{name}");
        assert!(response.get("patch").is_none(), "{name} patched");
        assert_eq!(
            response.get("warnings").is_some(),
            warns,
            "{name}: {response}"
        );
        let label = meshtrace_injector::metrics::ReasonLabel { reason };
        assert_eq!(
            webhook.metrics().skipped.get_or_create(&label).get(),
            1,
            "{name} not counted as {reason}"
        );
        assert_eq!(webhook.metrics().injected.get(), 0, "{name}");
    }
}

#[tokio::test]
async fn dry_run_is_answered_like_a_real_create() {
    let dry = fixture_json("05-create-pod-dryrun.json");
    assert_eq!(dry["request"]["dryRun"], true);
    let mut real = dry.clone();
    real["request"]["dryRun"] = false.into();
    for (namespace_enabled, expect_patch) in [(true, true), (false, false)] {
        let mut cluster = cluster(true);
        if !namespace_enabled {
            cluster.namespaces.insert("shop".into(), BTreeMap::new());
        }
        let webhook = webhook_with(cluster, &[]);
        let dry_response = respond(&webhook, &serde_json::to_vec(&dry).unwrap()).await;
        let real_response = respond(&webhook, &serde_json::to_vec(&real).unwrap()).await;
        assert_eq!(dry_response, real_response);
        assert_eq!(dry_response.get("patch").is_some(), expect_patch);
    }
}

#[tokio::test]
async fn unknown_namespace_or_unexpected_object_fails_open_with_a_warning() {
    let mut request = fixture_json("01-create-pod-from-replicaset.json");
    request["request"]["namespace"] = "ghost".into();
    let webhook = webhook(true);
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert!(
        response["warnings"][0].as_str().unwrap().contains("ghost"),
        "{response}"
    );
    let label = meshtrace_injector::metrics::KindLabel {
        kind: "namespace_lookup",
    };
    assert_eq!(webhook.metrics().errors.get_or_create(&label).get(), 1);

    let response = respond(&webhook, &fixture("10-create-configmap.json")).await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("ConfigMap"),
        "{response}"
    );
    let label = meshtrace_injector::metrics::KindLabel {
        kind: "unexpected_object",
    };
    assert_eq!(webhook.metrics().errors.get_or_create(&label).get(), 1);
}

#[tokio::test]
async fn bodies_that_are_not_admission_reviews_are_refused() {
    let webhook = webhook(true);
    for body in [
        fixture("11-garbage-body.txt"),
        fixture("12-bare-pod-not-a-review.json"),
        b"{\"kind\":\"AdmissionReview\",\"apiVersion\":\"admission.k8s.io/v1\"}".to_vec(),
        Vec::new(),
    ] {
        let err = webhook.review(&body).await.expect_err("refused");
        assert!(!err.to_string().is_empty());
    }
    let label = meshtrace_injector::metrics::KindLabel {
        kind: "bad_request",
    };
    assert_eq!(webhook.metrics().errors.get_or_create(&label).get(), 4);
}

#[tokio::test]
async fn injector_defaults_come_from_flags() {
    let request = fixture_json("01-create-pod-from-replicaset.json");
    let webhook = webhook_with(
        cluster(true),
        &[
            "--proxy-image=registry.internal/mesh/proxy:7.0.1",
            "--sample-rate=0.5",
            "--collector-protocol=http/protobuf",
            "--collector-endpoint=http://collector.o11y:4318",
            "--native-sidecar=false",
            "--skip-inbound-ports=9100",
        ],
    );
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    let p = pod(&apply(&request, &response));
    assert_eq!(
        p.metadata.annotations.as_ref().unwrap()["meshtrace.io/proxy-version"],
        "7.0.1"
    );
    let spec = p.spec.unwrap();
    let proxy = container(&spec.containers, "meshtrace-proxy");
    assert_eq!(
        proxy.image.as_deref(),
        Some("registry.internal/mesh/proxy:7.0.1")
    );
    let env = env(proxy);
    assert_eq!(env["MESHTRACE_SAMPLE_RATE"], "0.5");
    assert_eq!(env["OTEL_EXPORTER_OTLP_PROTOCOL"], "http/protobuf");
    assert_eq!(
        env["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://collector.o11y:4318"
    );
    let init = container(spec.init_containers.as_ref().unwrap(), "meshtrace-init");
    assert!(init
        .args
        .as_ref()
        .unwrap()
        .windows(2)
        .any(|w| w == ["--skip-inbound-ports", "9100"]));
}

#[test]
#[should_panic(expected = "unknown or misspelled field")]
fn the_known_fields_check_catches_a_misspelled_field() {
    let mut object =
        fixture_json("01-create-pod-from-replicaset.json")["request"]["object"].clone();
    object["spec"]["containers"][0]["restartPolcy"] = "Always".into();
    assert_only_known_fields(&object);
}

/// The injected pods, written to `tests/golden/` where `scripts/validate-manifests.sh` validates
/// them against the Kubernetes schemas: regular-container pods against the oldest available
/// schema (1.25, strict: a field 1.24/1.25 does not know fails), native-sidecar pods against 1.29.
/// The test fails when a golden file is stale; `MESHTRACE_BLESS=1` rewrites them.
#[tokio::test]
async fn golden_injected_pods_are_up_to_date() {
    let cases: [(&str, bool, &[&str], &str); 6] = [
        (
            "01-create-pod-from-replicaset.json",
            true,
            &[],
            "pod-01-native-sidecar.json",
        ),
        (
            "01-create-pod-from-replicaset.json",
            false,
            &[],
            "pod-01-regular-container.json",
        ),
        (
            "07-create-pod-opt-in-statefulset.json",
            true,
            &[],
            "pod-07-regular-container.json",
        ),
        (
            "01-create-pod-from-replicaset.json",
            true,
            &["--cni"],
            "pod-01-cni-native-sidecar.json",
        ),
        (
            "07-create-pod-opt-in-statefulset.json",
            true,
            &["--cni"],
            "pod-07-cni-regular-container.json",
        ),
        (
            "01-create-pod-from-replicaset.json",
            true,
            &["--ip-families=dual"],
            "pod-01-dual-stack-native-sidecar.json",
        ),
    ];
    let bless = std::env::var_os("MESHTRACE_BLESS").is_some();
    let mut stale = Vec::new();
    for (input, native, args, golden) in cases {
        let request = fixture_json(input);
        let webhook = webhook_with(cluster(native), args);
        let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
        let mut pod = apply(&request, &response);
        // The pod as stored: named, without managedFields and nulls.
        let metadata = pod["metadata"].as_object_mut().unwrap();
        metadata.remove("managedFields");
        if let Some(prefix) = metadata.remove("generateName") {
            metadata.insert(
                "name".into(),
                format!("{}x7k2p", prefix.as_str().unwrap()).into(),
            );
        }
        strip_nulls(&mut pod);
        let rendered = serde_json::to_string_pretty(&pod).unwrap() + "\n";
        let path = format!("{}/tests/golden/{golden}", env!("CARGO_MANIFEST_DIR"));
        if bless {
            std::fs::create_dir_all(format!("{}/tests/golden", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
            std::fs::write(&path, &rendered).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(rendered.as_str()) {
            stale.push(golden);
        }
    }
    assert!(
        stale.is_empty(),
        "stale golden pods {stale:?}: rerun with MESHTRACE_BLESS=1"
    );
}

fn skipped_count(webhook: &Webhook<StaticCluster>, reason: &'static str) -> u64 {
    let label = meshtrace_injector::metrics::ReasonLabel { reason };
    webhook.metrics().skipped.get_or_create(&label).get()
}

fn warnings_of(response: &Value) -> Vec<String> {
    serde_json::from_value(response["warnings"].clone()).unwrap_or_default()
}

/// `shop` (injection enabled) with `pod-security.kubernetes.io/enforce=<level>`.
fn cluster_enforcing(level: &str, native_sidecars: bool) -> StaticCluster {
    let mut cluster = cluster(native_sidecars);
    cluster.labels.insert(
        "shop".into(),
        annotations(&[("pod-security.kubernetes.io/enforce", level)]),
    );
    cluster
}

#[tokio::test]
async fn pod_security_baseline_refuses_the_init_container_so_the_pod_is_left_alone() {
    let request = fixture_json("01-create-pod-from-replicaset.json");
    for level in ["baseline", "restricted", "no-such-level"] {
        let webhook = webhook_with(cluster_enforcing(level, true), &[]);
        let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
        assert_eq!(response["allowed"], true, "{level}");
        assert!(response.get("patch").is_none(), "{level}: patched");
        let warnings = warnings_of(&response);
        assert_eq!(warnings.len(), 1, "{level}: {warnings:?}");
        // Why (the level, the capability) and what to do (CNI mode).
        let expected_level = if level == "baseline" {
            "baseline"
        } else {
            "restricted"
        };
        assert!(
            warnings[0].contains(&format!("Pod Security \"{expected_level}\""))
                && warnings[0].contains("NET_ADMIN")
                && warnings[0].contains("--cni"),
            "{level}: {warnings:?}"
        );
        assert_eq!(skipped_count(&webhook, "pod_security"), 1, "{level}");
        assert_eq!(webhook.metrics().injected.get(), 0);
    }
    // privileged, or no label: injected as before.
    for cluster in [cluster_enforcing("privileged", true), cluster(true)] {
        let webhook = webhook_with(cluster, &[]);
        let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
        assert!(response.get("patch").is_some());
    }
    // The cluster-wide default of the PodSecurity admission configuration, for unlabelled
    // namespaces.
    let webhook = webhook_with(cluster(true), &["--pod-security-default=baseline"]);
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    assert!(response.get("patch").is_none());
    assert_eq!(skipped_count(&webhook, "pod_security"), 1);
}

#[tokio::test]
async fn cni_mode_injects_no_init_container_and_passes_baseline_and_restricted() {
    let mut request = fixture_json("01-create-pod-from-replicaset.json");
    // An application spec that is itself restricted-compliant.
    let compliant = serde_json::json!({
        "runAsNonRoot": true, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}});
    for c in request["request"]["object"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
    {
        c["securityContext"] = compliant.clone();
    }
    for (level, native) in [
        ("baseline", true),
        ("restricted", true),
        ("restricted", false),
    ] {
        let webhook = webhook_with(cluster_enforcing(level, native), &["--cni"]);
        let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
        assert!(
            response.get("warnings").is_none(),
            "{level}/{native}: {response}"
        );
        let patched = apply(&request, &response);
        assert_only_known_fields(&patched);
        let p = pod(&patched);
        let spec = p.spec.as_ref().unwrap();
        let all: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| c.name.as_str())
            .collect();
        assert!(all.contains(&"meshtrace-proxy"), "{all:?}");
        assert!(!all.contains(&"meshtrace-init"), "{all:?}");
        assert!(
            !spec
                .volumes
                .iter()
                .flatten()
                .any(|v| v.name == "meshtrace-xtables"),
            "no iptables lock volume without the init container"
        );
        let level = meshtrace_injector::config::PodSecurityLevel::from_label(level);
        let violations = meshtrace_injector::pod_security::violations(&p, level);
        assert!(violations.is_empty(), "{violations:?}");
    }
}

#[tokio::test]
async fn cni_mode_writes_the_effective_skip_ports_onto_the_pod() {
    let request = fixture_json("07-create-pod-opt-in-statefulset.json");
    let mut cluster = cluster(true);
    // The namespace's skip-inbound ports reach the pod; the pod's own outbound list stays.
    let payments = cluster.namespaces.get_mut("payments").unwrap();
    payments.insert("meshtrace.io/skip-inbound-ports".into(), "22".into());
    let webhook = webhook_with(cluster, &["--cni"]);
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    let p = pod(&apply(&request, &response));
    let annotations = p.metadata.annotations.unwrap();
    assert_eq!(annotations["meshtrace.io/skip-inbound-ports"], "22");
    assert_eq!(
        annotations["meshtrace.io/skip-outbound-ports"],
        "5432,9000-9100"
    );
    let init_names: Vec<String> = p
        .spec
        .unwrap()
        .init_containers
        .into_iter()
        .flatten()
        .map(|c| c.name)
        .collect();
    assert_eq!(init_names, ["migrate"], "existing init containers only");
}

/// What the proxy listens on and whether `init` programs ip6tables, for one admission.
async fn ip_settings(
    webhook: &Webhook<StaticCluster>,
    request: &Value,
) -> (Vec<String>, [Option<String>; 3], bool) {
    let response = respond(webhook, &serde_json::to_vec(request).unwrap()).await;
    let spec = pod(&apply(request, &response)).spec.unwrap();
    let init_containers = spec.init_containers.unwrap();
    let env = env(container(&init_containers, "meshtrace-proxy"));
    let addrs =
        ["INBOUND", "OUTBOUND", "ADMIN"].map(|d| env.get(&format!("MESHTRACE_{d}_ADDR")).cloned());
    let init = container(&init_containers, "meshtrace-init");
    let ipv6 = init.args.iter().flatten().any(|a| a == "--ipv6");
    (warnings_of(&response), addrs, ipv6)
}

#[tokio::test]
async fn ip_families_flag_then_namespace_then_pod_annotation() {
    let mut request = fixture_json("01-create-pod-from-replicaset.json");
    let dual = [
        Some("0.0.0.0:4143,[::]:4143".to_owned()),
        Some("127.0.0.1:4140,[::1]:4140".to_owned()),
        None,
    ];
    let ipv6_only = [
        Some("[::]:4143".to_owned()),
        Some("[::1]:4140".to_owned()),
        Some("[::]:4191".to_owned()),
    ];

    // Default: IPv4, the proxy's own addresses, no ip6tables.
    let (_, addrs, ipv6) = ip_settings(&webhook(true), &request).await;
    assert_eq!((addrs, ipv6), ([None, None, None], false));

    // The injector's flag.
    let flagged = webhook_with(cluster(true), &["--ip-families=dual"]);
    let (_, addrs, ipv6) = ip_settings(&flagged, &request).await;
    assert_eq!((addrs, ipv6), (dual.clone(), true));

    // The namespace's annotation beats the flag.
    let mut c = cluster(true);
    let shop = c.namespaces.get_mut("shop").unwrap();
    shop.insert("meshtrace.io/ip-families".into(), "ipv6".into());
    let webhook = webhook_with(c, &["--ip-families=dual"]);
    let (_, addrs, ipv6) = ip_settings(&webhook, &request).await;
    assert_eq!((addrs, ipv6), (ipv6_only, true));

    // The pod's beats the namespace's.
    let annotations = &mut request["request"]["object"]["metadata"]["annotations"];
    *annotations = serde_json::json!({"meshtrace.io/ip-families": "ipv4"});
    let (warnings, addrs, ipv6) = ip_settings(&webhook, &request).await;
    assert_eq!((addrs, ipv6), ([None, None, None], false));
    assert!(warnings.is_empty(), "{warnings:?}");

    // An invalid value is ignored with a warning; the next level (the flag here) applies.
    let annotations = &mut request["request"]["object"]["metadata"]["annotations"];
    *annotations = serde_json::json!({"meshtrace.io/ip-families": "IPv6"});
    let (warnings, addrs, ipv6) = ip_settings(&flagged, &request).await;
    assert_eq!((addrs, ipv6), (dual, true));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("meshtrace.io/ip-families"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn cni_mode_writes_the_ip_families_onto_the_pod() {
    let request = fixture_json("01-create-pod-from-replicaset.json");
    let webhook = webhook_with(cluster(true), &["--cni", "--ip-families=dual"]);
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    let p = pod(&apply(&request, &response));
    assert_eq!(
        p.metadata.annotations.unwrap()["meshtrace.io/ip-families"],
        "dual"
    );
    let spec = p.spec.unwrap();
    let init_containers = spec.init_containers.unwrap();
    assert!(init_containers.iter().all(|c| c.name != "meshtrace-init"));
    let env = env(container(&init_containers, "meshtrace-proxy"));
    assert_eq!(env["MESHTRACE_INBOUND_ADDR"], "0.0.0.0:4143,[::]:4143");
}

#[tokio::test]
async fn native_sidecar_annotation_is_ignored_with_a_warning_on_older_servers() {
    let mut request = fixture_json("01-create-pod-from-replicaset.json");
    request["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"meshtrace.io/native-sidecar": "true"});
    let cases: [(StaticCluster, &[&str], &str); 3] = [
        (cluster(false), &[], "older than Kubernetes 1.29"),
        (
            cluster(true),
            &["--kubernetes-version=1.28"],
            "Kubernetes 1.28",
        ),
        (
            cluster(false),
            &["--native-sidecar=true"],
            "older than Kubernetes 1.29",
        ),
    ];
    for (cluster, args, says) in cases {
        let webhook = webhook_with(cluster, args);
        let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
        let warnings = warnings_of(&response);
        assert!(
            warnings.len() == 1
                && warnings[0].contains("meshtrace.io/native-sidecar")
                && warnings[0].contains(says),
            "{args:?}: {warnings:?}"
        );
        let patched = apply(&request, &response);
        assert_only_known_fields(&patched);
        let spec = pod(&patched).spec.unwrap();
        assert_eq!(spec.containers[0].name, "meshtrace-proxy", "{args:?}");
        assert!(spec
            .init_containers
            .iter()
            .flatten()
            .all(|c| c.restart_policy.is_none()));
    }
    // 1.29+: honored, silently.
    let webhook = webhook_with(cluster(false), &["--kubernetes-version=v1.29.4"]);
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    assert!(response.get("warnings").is_none(), "{response}");
    let spec = pod(&apply(&request, &response)).spec.unwrap();
    assert_eq!(
        spec.init_containers.unwrap()[1].restart_policy.as_deref(),
        Some("Always")
    );
}

/// A bare Job-like pod in `shop` with `restartPolicy` and the pod's own annotations.
fn job_pod(restart_policy: &str, pod_annotations: Value) -> Value {
    let mut request = fixture_json("01-create-pod-from-replicaset.json");
    let object = &mut request["request"]["object"];
    object["spec"]["restartPolicy"] = restart_policy.into();
    object["metadata"]["annotations"] = pod_annotations;
    request
}

#[tokio::test]
async fn jobs_without_native_sidecars_are_only_meshed_when_the_pod_opts_in() {
    for policy in ["Never", "OnFailure"] {
        let request = job_pod(policy, serde_json::json!({}));
        let webhook = webhook(false);
        let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
        assert!(response.get("patch").is_none(), "{policy}");
        let warnings = warnings_of(&response);
        assert!(
            warnings.len() == 1
                && warnings[0].contains("meshtrace.io/inject=enabled")
                && warnings[0].contains("/shutdown"),
            "{warnings:?}"
        );
        assert_eq!(skipped_count(&webhook, "run_to_completion"), 1);

        // The pod's own opt-in: a regular proxy container.
        let request = job_pod(
            policy,
            serde_json::json!({"meshtrace.io/inject": "enabled"}),
        );
        let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
        let spec = pod(&apply(&request, &response)).spec.unwrap();
        assert_eq!(spec.containers[0].name, "meshtrace-proxy");

        // Native sidecars end with the job: meshed normally.
        let request = job_pod(policy, serde_json::json!({}));
        let native = webhook_with(cluster(true), &[]);
        let response = respond(&native, &serde_json::to_vec(&request).unwrap()).await;
        assert!(response.get("warnings").is_none());
        let spec = pod(&apply(&request, &response)).spec.unwrap();
        assert_eq!(
            spec.init_containers.unwrap()[1].restart_policy.as_deref(),
            Some("Always")
        );
    }
    // restartPolicy Always (Deployments): not a job.
    let request = job_pod("Always", serde_json::json!({}));
    let response = respond(&webhook(false), &serde_json::to_vec(&request).unwrap()).await;
    assert!(response.get("patch").is_some());
}

#[tokio::test]
async fn context_inference_annotations_reach_the_proxy_pod_first() {
    let mut request = fixture_json("01-create-pod-from-replicaset.json");
    request["request"]["object"]["metadata"]["annotations"] = serde_json::json!({
        "meshtrace.io/context-inference": "request-id",
    });
    let mut annotated = cluster(true);
    let shop = annotated.namespaces.get_mut("shop").unwrap();
    shop.insert("meshtrace.io/context-inference".into(), "off".into());
    shop.insert(
        "meshtrace.io/request-id-header".into(),
        "X-Correlation-ID".into(),
    );
    let webhook = webhook_with(annotated, &[]);
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    assert!(response.get("warnings").is_none(), "{response}");
    let spec = pod(&apply(&request, &response)).spec.unwrap();
    let vars = env(container(
        spec.init_containers.as_ref().unwrap(),
        "meshtrace-proxy",
    ));
    assert_eq!(vars["MESHTRACE_CONTEXT_INFERENCE"], "request-id");
    assert_eq!(vars["MESHTRACE_REQUEST_ID_HEADER"], "x-correlation-id");

    // Invalid values: a warning each, and the proxy keeps its own defaults (no env entry).
    request["request"]["object"]["metadata"]["annotations"] = serde_json::json!({
        "meshtrace.io/context-inference": "guess",
        "meshtrace.io/request-id-header": "x request id",
    });
    let webhook = webhook_with(cluster(true), &[]);
    let response = respond(&webhook, &serde_json::to_vec(&request).unwrap()).await;
    let warnings = warnings_of(&response);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    let spec = pod(&apply(&request, &response)).spec.unwrap();
    let vars = env(container(
        spec.init_containers.as_ref().unwrap(),
        "meshtrace-proxy",
    ));
    assert!(
        !vars.contains_key("MESHTRACE_CONTEXT_INFERENCE"),
        "{vars:?}"
    );
    assert!(
        !vars.contains_key("MESHTRACE_REQUEST_ID_HEADER"),
        "{vars:?}"
    );
}
