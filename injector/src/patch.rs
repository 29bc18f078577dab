//! What is injected: one RFC 6902 JSON Patch, a pure function of the pod and the resolved
//! [`ProxySettings`], so it is tested without any server or cluster.
//!
//! Only fields every supported Kubernetes version (1.24+) knows are written, except
//! `restartPolicy: Always` on an init container, which is only used in native-sidecar mode
//! (1.29+).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use crate::config::{keys, IpFamilies, ProxySettings};

pub const PROXY_CONTAINER: &str = "meshtrace-proxy";
pub const INIT_CONTAINER: &str = "meshtrace-init";
/// emptyDir mounted on the init container's `/run`: iptables needs a writable lock file there
/// while the root filesystem stays read-only.
pub const XTABLES_VOLUME: &str = "meshtrace-xtables";
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;
pub const PROXY_UID: i64 = 2102;
/// `kubectl logs`/`exec` default: the app, not the proxy that became the first container.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Where the proxy image keeps the binary (Dockerfile).
pub const PROXY_BINARY: &str = "/usr/local/bin/meshtrace-proxy";

/// Blocks the app containers until the proxy is ready when the proxy is a regular container: the
/// kubelet starts the next container only after this postStart hook returns. The proxy's own
/// `await-ready` polls `/ready` on the admin port, so the image needs no shell; it gives up
/// (and the kubelet restarts the proxy) after two minutes.
const AWAIT_READY_TIMEOUT: &str = "2m";

/// How the pod's traffic reaches the proxy, and in which form the proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Form {
    /// Native sidecar (init container with `restartPolicy: Always`, 1.29+) rather than a regular
    /// first container.
    pub native_sidecar: bool,
    /// The meshtrace CNI plugin programs the pod's iptables rules: no `meshtrace-init`.
    pub cni: bool,
}

fn pointer(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: pointer(tokens),
        value,
    })
}

/// The workload a pod belongs to: the Deployment (ReplicaSet owner minus its pod-template-hash),
/// else the `app.kubernetes.io/name` label, else the `app` label, else the controlling owner's
/// name, else the pod's own name.
pub fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let labels = meta.labels.as_ref();
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());

    if let Some(owner) = owner.filter(|o| o.kind == "ReplicaSet") {
        let hash = label("pod-template-hash");
        let deployment =
            hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}")).map(str::to_owned));
        if let Some(deployment) = deployment.filter(|d| !d.is_empty()) {
            return deployment;
        }
    }
    label("app.kubernetes.io/name")
        .or_else(|| label("app"))
        .or_else(|| owner.map(|o| o.name.clone()))
        .or_else(|| meta.name.clone().filter(|n| !n.is_empty()))
        .or_else(|| {
            meta.generate_name
                .as_deref()
                .map(|g| g.trim_end_matches('-').to_owned())
                .filter(|g| !g.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// TCP ports declared by the app containers, sorted and deduplicated: what the proxy serves
/// inbound.
pub fn app_inbound_ports(pod: &Pod) -> Vec<u16> {
    let mut ports: Vec<u16> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|&p| p != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn field_env(name: &str, field_path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}})
}

fn value_env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

/// The proxy's listen addresses for the pod's IP families, or `None` for IPv4 only (the proxy's
/// defaults): `MESHTRACE_INBOUND_ADDR`, `MESHTRACE_OUTBOUND_ADDR` and `MESHTRACE_ADMIN_ADDR`.
/// Each IPv6 listener is IPv6-only, so a dual-stack pod gets one socket per family. The admin
/// server takes one address: IPv6 for an IPv6-only pod (the kubelet probes the pod's IPv6
/// address), else the default `0.0.0.0`.
pub fn listen_addrs(families: IpFamilies) -> Option<[String; 3]> {
    let v4_in = format!("0.0.0.0:{INBOUND_PORT}");
    let v4_out = format!("127.0.0.1:{OUTBOUND_PORT}");
    let v6_in = format!("[::]:{INBOUND_PORT}");
    let v6_out = format!("[::1]:{OUTBOUND_PORT}");
    match families {
        IpFamilies::Ipv4 => None,
        IpFamilies::Ipv6 => Some([v6_in, v6_out, format!("[::]:{ADMIN_PORT}")]),
        IpFamilies::Dual => Some([
            format!("{v4_in},{v6_in}"),
            format!("{v4_out},{v6_out}"),
            String::new(),
        ]),
    }
}

fn proxy_env(pod: &Pod, settings: &ProxySettings) -> Vec<Value> {
    let workload = workload_name(pod);
    let inbound_ports = app_inbound_ports(pod)
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    [
        field_env("MESHTRACE_POD_NAME", "metadata.name"),
        field_env("MESHTRACE_POD_NAMESPACE", "metadata.namespace"),
        field_env("MESHTRACE_NODE_NAME", "spec.nodeName"),
        field_env("MESHTRACE_POD_UID", "metadata.uid"),
        field_env("MESHTRACE_POD_IP", "status.podIP"),
        value_env("MESHTRACE_WORKLOAD", workload.clone()),
        value_env("OTEL_SERVICE_NAME", workload),
        value_env("MESHTRACE_SAMPLE_RATE", settings.sample_rate.to_string()),
        value_env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            settings.collector_endpoint.to_string(),
        ),
        value_env(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            settings.collector_protocol.to_string(),
        ),
        value_env("MESHTRACE_OPAQUE_PORTS", settings.opaque_ports.to_string()),
        value_env("MESHTRACE_INBOUND_PORTS", inbound_ports),
        value_env("MESHTRACE_LOG", settings.log_level.to_string()),
        value_env(
            "MESHTRACE_CONTEXT_INFERENCE",
            settings
                .context_inference
                .map(|c| c.to_string())
                .unwrap_or_default(),
        ),
        value_env(
            "MESHTRACE_REQUEST_ID_HEADER",
            settings
                .request_id_header
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        ),
    ]
    .into_iter()
    .chain(
        listen_addrs(settings.ip_families)
            .into_iter()
            .flat_map(|[inbound, outbound, admin]| {
                [
                    value_env("MESHTRACE_INBOUND_ADDR", inbound),
                    value_env("MESHTRACE_OUTBOUND_ADDR", outbound),
                    value_env("MESHTRACE_ADMIN_ADDR", admin),
                ]
            }),
    )
    // An empty value is not "unset" to the proxy (an empty MESHTRACE_OPAQUE_PORTS would replace
    // its default list with nothing): leave settings without a value out.
    .filter(|env| env.get("value").is_none_or(|v| v != ""))
    .collect()
}

fn proxy_resources(settings: &ProxySettings) -> Value {
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = &settings.cpu_limit {
        limits.insert("cpu".into(), cpu.as_str().into());
    }
    if let Some(memory) = &settings.memory_limit {
        limits.insert("memory".into(), memory.as_str().into());
    }
    let mut resources = json!({
        "requests": {"cpu": settings.cpu_request.as_str(), "memory": settings.memory_request.as_str()}
    });
    if !limits.is_empty() {
        resources["limits"] = Value::Object(limits);
    }
    resources
}

fn admin_probe(path: &str, period_seconds: u32, failure_threshold: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": ADMIN_PORT, "scheme": "HTTP"},
        "periodSeconds": period_seconds,
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": failure_threshold,
    })
}

fn proxy_container(pod: &Pod, settings: &ProxySettings, native_sidecar: bool) -> Value {
    let mut container = json!({
        "name": PROXY_CONTAINER,
        "image": settings.image.as_str(),
        "imagePullPolicy": "IfNotPresent",
        "ports": [
            {"name": "meshtrace-proxy", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "meshtrace-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": proxy_env(pod, settings),
        "resources": proxy_resources(settings),
        "livenessProbe": admin_probe("/live", 10, 3),
        "readinessProbe": admin_probe("/ready", 5, 3),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if native_sidecar {
        container["restartPolicy"] = json!("Always");
        container["startupProbe"] = admin_probe("/ready", 1, 120);
    } else {
        container["lifecycle"] = json!({
            "postStart": {"exec": {"command": [
                PROXY_BINARY, "await-ready", "--timeout", AWAIT_READY_TIMEOUT
            ]}}
        });
    }
    container
}

fn init_container(settings: &ProxySettings) -> Value {
    let mut args = vec![
        "init".to_owned(),
        "--inbound-port".to_owned(),
        INBOUND_PORT.to_string(),
        "--outbound-port".to_owned(),
        OUTBOUND_PORT.to_string(),
        "--proxy-uid".to_owned(),
        PROXY_UID.to_string(),
    ];
    if !settings.skip_inbound_ports.is_empty() {
        args.push("--skip-inbound-ports".to_owned());
        args.push(settings.skip_inbound_ports.to_string());
    }
    if !settings.skip_outbound_ports.is_empty() {
        args.push("--skip-outbound-ports".to_owned());
        args.push(settings.skip_outbound_ports.to_string());
    }
    if settings.ip_families.has_ipv6() {
        args.push("--ipv6".to_owned());
    }
    json!({
        "name": INIT_CONTAINER,
        "image": settings.image.as_str(),
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// The patch meshing `pod` in `form`.
///
/// Native sidecar: `meshtrace-init`, then the proxy, run before any existing init container (so
/// their traffic is proxied too). Regular container: `meshtrace-init` runs after the existing
/// init containers (nothing would serve their redirected traffic) and the proxy becomes the first
/// container. CNI mode: no `meshtrace-init` (the plugin programs the rules before any container
/// starts), and the effective skip ports are written onto the pod, where the plugin reads them.
pub fn build(pod: &Pod, settings: &ProxySettings, form: Form) -> Patch {
    let mut ops = Vec::new();
    let spec = pod.spec.as_ref();
    annotations(pod, settings, form, &mut ops);

    if !form.cni {
        let xtables = json!({"name": XTABLES_VOLUME, "emptyDir": {}});
        match spec.and_then(|s| s.volumes.as_ref()) {
            None => ops.push(add(&["spec", "volumes"], json!([xtables]))),
            Some(_) => ops.push(add(&["spec", "volumes", "-"], xtables)),
        }
    }

    let init = (!form.cni).then(|| init_container(settings));
    let proxy = proxy_container(pod, settings, form.native_sidecar);
    let has_init_containers = spec.and_then(|s| s.init_containers.as_ref()).is_some();
    if form.native_sidecar {
        let first: Vec<Value> = init.into_iter().chain([proxy]).collect();
        if has_init_containers {
            for container in first.into_iter().rev() {
                ops.push(add(&["spec", "initContainers", "0"], container));
            }
        } else {
            ops.push(add(&["spec", "initContainers"], json!(first)));
        }
    } else {
        match (init, has_init_containers) {
            (Some(init), true) => ops.push(add(&["spec", "initContainers", "-"], init)),
            (Some(init), false) => ops.push(add(&["spec", "initContainers"], json!([init]))),
            (None, _) => {}
        }
        ops.push(add(&["spec", "containers", "0"], proxy));
    }
    Patch(ops)
}

/// `meshtrace.io/injected`, the proxy version, `kubectl`'s default container (regular-container
/// form), and in CNI mode the effective skip ports.
fn annotations(pod: &Pod, settings: &ProxySettings, form: Form, ops: &mut Vec<PatchOperation>) {
    let mut added = BTreeMap::from([
        (keys::INJECTED.to_owned(), "true".to_owned()),
        (keys::PROXY_VERSION.to_owned(), settings.version.clone()),
    ]);
    let existing = pod.metadata.annotations.as_ref();
    if !form.native_sidecar {
        let app = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone());
        let already_set = existing.is_some_and(|a| a.contains_key(DEFAULT_CONTAINER_ANNOTATION));
        if let Some(app) = app.filter(|_| !already_set) {
            added.insert(DEFAULT_CONTAINER_ANNOTATION.to_owned(), app);
        }
    }
    if form.cni {
        // The plugin sees only the pod: give it the values resolved over the namespace and the
        // injector's defaults (replacing the pod's own value, which is the same when valid).
        for (key, ports) in [
            (keys::SKIP_INBOUND_PORTS, &settings.skip_inbound_ports),
            (keys::SKIP_OUTBOUND_PORTS, &settings.skip_outbound_ports),
        ] {
            if !ports.is_empty() || existing.is_some_and(|a| a.contains_key(key)) {
                added.insert(key.to_owned(), ports.to_string());
            }
        }
        // The plugin programs ip6tables too for `ipv6`/`dual`.
        let families = settings.ip_families;
        if families != IpFamilies::Ipv4
            || existing.is_some_and(|a| a.contains_key(keys::IP_FAMILIES))
        {
            added.insert(keys::IP_FAMILIES.to_owned(), families.to_string());
        }
    }
    match existing {
        None => ops.push(add(&["metadata", "annotations"], json!(added))),
        Some(_) => {
            for (key, value) in added {
                ops.push(add(&["metadata", "annotations", &key], json!(value)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn owner(kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn workload_is_the_deployment_behind_the_replicaset() {
        let mut p =
            pod(json!({"metadata": {"labels": {"pod-template-hash": "66cd9b5cbc", "app": "x"}}}));
        p.metadata.owner_references = Some(vec![owner("ReplicaSet", "checkout-66cd9b5cbc")]);
        assert_eq!(workload_name(&p), "checkout");
    }

    #[test]
    fn workload_falls_back_through_labels_then_owner_then_name() {
        let mut p = pod(
            json!({"metadata": {"labels": {"app": "web", "app.kubernetes.io/name": "storefront"}}}),
        );
        p.metadata.owner_references = Some(vec![owner("StatefulSet", "db")]);
        assert_eq!(workload_name(&p), "storefront");
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("app.kubernetes.io/name");
        assert_eq!(workload_name(&p), "web");
        p.metadata.labels = None;
        assert_eq!(workload_name(&p), "db");
        // A bare ReplicaSet (no pod-template-hash) is its own workload.
        p.metadata.owner_references = Some(vec![owner("ReplicaSet", "legacy-rs")]);
        assert_eq!(workload_name(&p), "legacy-rs");
        p.metadata.owner_references = None;
        p.metadata.generate_name = Some("batch-".into());
        assert_eq!(workload_name(&p), "batch");
        p.metadata.name = Some("solo".into());
        assert_eq!(workload_name(&p), "solo");
    }

    #[test]
    fn inbound_ports_are_tcp_app_ports_sorted_once() {
        let p = pod(json!({"spec": {"containers": [
            {"name": "a", "ports": [{"containerPort": 9090}, {"containerPort": 8080, "protocol": "TCP"}]},
            {"name": "b", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]},
            {"name": "c"},
        ]}}));
        assert_eq!(app_inbound_ports(&p), vec![8080, 9090]);
    }

    #[test]
    fn annotation_keys_are_escaped_in_pointers() {
        let p = pod(
            json!({"metadata": {"annotations": {"a": "b"}}, "spec": {"containers": [{"name": "app"}]}}),
        );
        let settings = crate::config::tests_support::settings();
        let form = Form {
            native_sidecar: true,
            cni: false,
        };
        let patch = build(&p, &settings, form);
        let paths: Vec<String> = patch.0.iter().map(|op| op.path().to_string()).collect();
        assert!(
            paths.contains(&"/metadata/annotations/meshtrace.io~1injected".to_owned()),
            "{paths:?}"
        );
    }

    /// The patched pod, as JSON.
    fn patched(p: &Pod, settings: &ProxySettings, form: Form) -> Value {
        let mut value = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut value, &build(p, settings, form)).unwrap();
        value
    }

    fn env_of(container: &Value, name: &str) -> Option<String> {
        container["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap_or_default().to_owned())
    }

    #[test]
    fn ip_families_set_listen_addresses_and_init_ipv6() {
        let p = pod(json!({"spec": {"containers": [{"name": "app"}]}}));
        let form = Form {
            native_sidecar: true,
            cni: false,
        };
        let mut settings = crate::config::tests_support::settings();
        let cases = [
            (IpFamilies::Ipv4, None, None, None, false),
            (
                IpFamilies::Dual,
                Some("0.0.0.0:4143,[::]:4143"),
                Some("127.0.0.1:4140,[::1]:4140"),
                None,
                true,
            ),
            (
                IpFamilies::Ipv6,
                Some("[::]:4143"),
                Some("[::1]:4140"),
                Some("[::]:4191"),
                true,
            ),
        ];
        for (families, inbound, outbound, admin, ipv6) in cases {
            settings.ip_families = families;
            let pod = patched(&p, &settings, form);
            let init = &pod["spec"]["initContainers"][0];
            let proxy = &pod["spec"]["initContainers"][1];
            assert_eq!(init["name"], INIT_CONTAINER);
            assert_eq!(proxy["name"], PROXY_CONTAINER);
            let env = |name| env_of(proxy, name);
            assert_eq!(
                env("MESHTRACE_INBOUND_ADDR").as_deref(),
                inbound,
                "{families}"
            );
            assert_eq!(
                env("MESHTRACE_OUTBOUND_ADDR").as_deref(),
                outbound,
                "{families}"
            );
            assert_eq!(env("MESHTRACE_ADMIN_ADDR").as_deref(), admin, "{families}");
            let args = init["args"].as_array().unwrap();
            assert_eq!(
                args.contains(&json!("--ipv6")),
                ipv6,
                "{families}: {args:?}"
            );
        }
    }

    #[test]
    fn cni_mode_writes_ip_families_for_the_plugin() {
        let p = pod(json!({"spec": {"containers": [{"name": "app"}]}}));
        let form = Form {
            native_sidecar: false,
            cni: true,
        };
        let mut settings = crate::config::tests_support::settings();
        let annotation = |pod: &Value| pod["metadata"]["annotations"][keys::IP_FAMILIES].clone();
        assert_eq!(annotation(&patched(&p, &settings, form)), Value::Null);
        settings.ip_families = IpFamilies::Dual;
        let pod = patched(&p, &settings, form);
        assert_eq!(annotation(&pod), "dual");
        assert!(pod["spec"].get("initContainers").is_none());
        // A pod's own (invalid or overridden) value is replaced by the resolved one.
        settings.ip_families = IpFamilies::Ipv4;
        let own = pod_with_annotation(keys::IP_FAMILIES, "both");
        assert_eq!(annotation(&patched(&own, &settings, form)), "ipv4");
    }

    fn pod_with_annotation(key: &str, value: &str) -> Pod {
        pod(
            json!({"metadata": {"annotations": {key: value}}, "spec": {"containers": [{"name": "app"}]}}),
        )
    }
}
