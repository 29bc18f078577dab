//! The injector's Kubernetes API use against a local server speaking the API's JSON: the
//! namespace cache (list + watch, GET on a miss), the cached server version, and the caBundle
//! publication with optimistic concurrency.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use base64::Engine;
use meshtrace_injector::certs;
use meshtrace_injector::namespaces::{KubeCluster, NamespaceCache};
use meshtrace_injector::review::{Cluster, ClusterError};
use serde_json::json;
use support::{FakeApiServer, State};

/// Generous: the machine is small and shared.
const PATIENCE: Duration = Duration::from_secs(30);

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn namespaces_state() -> State {
    State {
        listed: BTreeMap::from([
            (
                "shop".to_owned(),
                annotations(&[("meshtrace.io/inject", "enabled")]),
            ),
            ("default".to_owned(), BTreeMap::new()),
        ]),
        unlisted: BTreeMap::from([(
            "fresh".to_owned(),
            annotations(&[("meshtrace.io/sample-rate", "0.1")]),
        )]),
        resource_version: 100,
        minor_version: "30".to_owned(),
        ..State::default()
    }
}

fn gets_of(server: &FakeApiServer, name: &str) -> usize {
    let prefix = format!("GET /api/v1/namespaces/{name}?");
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with(&prefix))
        .count()
}

#[tokio::test]
async fn listed_namespaces_are_served_from_the_cache() {
    let server = FakeApiServer::start(namespaces_state()).await;
    let cache = NamespaceCache::spawn(server.client());
    assert!(within("initial list", cache.ready()).await);

    let shop = cache.annotations("shop").await.unwrap();
    assert_eq!(shop["meshtrace.io/inject"], "enabled");
    assert!(cache.annotations("default").await.unwrap().is_empty());
    assert_eq!(
        gets_of(&server, "shop") + gets_of(&server, "default"),
        0,
        "{:?}",
        server.requests()
    );
    // The list asked for metadata only.
    assert!(server
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /api/v1/namespaces?")));
}

#[tokio::test]
async fn a_namespace_missing_from_the_cache_is_read_directly() {
    let server = FakeApiServer::start(namespaces_state()).await;
    let cache = NamespaceCache::spawn(server.client());
    assert!(within("initial list", cache.ready()).await);

    let fresh = cache.annotations("fresh").await.unwrap();
    assert_eq!(fresh["meshtrace.io/sample-rate"], "0.1");
    assert_eq!(gets_of(&server, "fresh"), 1);

    match cache.annotations("ghost").await {
        Err(ClusterError::NamespaceNotFound(name)) => assert_eq!(name, "ghost"),
        other => panic!("expected NamespaceNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_events_update_the_cache() {
    let server = FakeApiServer::start(namespaces_state()).await;
    let cache = NamespaceCache::spawn(server.client());
    assert!(within("initial list", cache.ready()).await);
    // Wait until the watch is open before sending events (the list comes first).
    within("watch request", async {
        while !server.requests().iter().any(|r| r.contains("watch=")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    server.send_namespace_event(
        "MODIFIED",
        "shop",
        &annotations(&[("meshtrace.io/inject", "disabled")]),
    );
    server.send_namespace_event(
        "ADDED",
        "blog",
        &annotations(&[("meshtrace.io/inject", "enabled")]),
    );
    within("watch update", async {
        loop {
            let shop = cache.annotations("shop").await.unwrap();
            if shop.get("meshtrace.io/inject").map(String::as_str) == Some("disabled") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        cache.annotations("blog").await.unwrap()["meshtrace.io/inject"],
        "enabled"
    );
    assert_eq!(
        gets_of(&server, "blog") + gets_of(&server, "shop"),
        0,
        "{:?}",
        server.requests()
    );
}

#[tokio::test]
async fn namespace_labels_come_with_the_annotations() {
    let mut state = namespaces_state();
    for name in ["shop", "fresh"] {
        state.labels.insert(
            name.to_owned(),
            annotations(&[("pod-security.kubernetes.io/enforce", "baseline")]),
        );
    }
    let server = FakeApiServer::start(state).await;
    let cluster = KubeCluster::spawn(server.client());
    within("cache ready", cluster.namespaces().ready()).await;
    // From the cache (listed) and from a direct GET (not listed yet).
    for name in ["shop", "fresh"] {
        let meta = cluster.namespace(name).await.unwrap();
        assert_eq!(
            meta.labels["pod-security.kubernetes.io/enforce"], "baseline",
            "{name}"
        );
    }
    assert_eq!(
        cluster.namespace("shop").await.unwrap().annotations["meshtrace.io/inject"],
        "enabled"
    );
}

#[tokio::test]
async fn server_version_is_re_read_after_the_refresh_interval() {
    let state = State {
        minor_version: "28".to_owned(),
        ..namespaces_state()
    };
    let server = FakeApiServer::start(state).await;
    let cluster = KubeCluster::spawn_with_refresh(server.client(), Duration::ZERO);
    assert!(!cluster.supports_native_sidecars().await.unwrap());
    // The control plane is upgraded under a running injector.
    server.state.lock().unwrap().minor_version = "29".to_owned();
    assert!(cluster.supports_native_sidecars().await.unwrap());
}

#[tokio::test]
async fn server_version_is_read_once() {
    for (minor, native) in [("30", true), ("28", false), ("29+", true)] {
        let state = State {
            minor_version: minor.to_owned(),
            ..namespaces_state()
        };
        let server = FakeApiServer::start(state).await;
        let cluster = KubeCluster::spawn(server.client());
        assert_eq!(
            cluster.supports_native_sidecars().await.unwrap(),
            native,
            "1.{minor}"
        );
        assert_eq!(cluster.supports_native_sidecars().await.unwrap(), native);
        let version_reads = server
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /version"))
            .count();
        assert_eq!(version_reads, 1);
    }
}

fn webhook_config(ca_bundles: &[Option<&str>]) -> serde_json::Value {
    let webhooks: Vec<_> = ca_bundles
        .iter()
        .enumerate()
        .map(|(i, bundle)| {
            let mut client_config = json!({"service": {"namespace": "meshtrace-system", "name": "meshtrace-injector", "path": "/inject", "port": 443}});
            if let Some(bundle) = bundle {
                client_config["caBundle"] = base64::engine::general_purpose::STANDARD.encode(bundle).into();
            }
            json!({"name": format!("inject{i}.meshtrace.io"), "clientConfig": client_config,
                   "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore"})
        })
        .collect();
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "meshtrace-injector", "resourceVersion": "7"}, "webhooks": webhooks})
}

fn bundle_of(server: &FakeApiServer, webhook: usize) -> Vec<Vec<u8>> {
    let state = server.state.lock().unwrap();
    let b64 = state.webhook_configs["meshtrace-injector"]["webhooks"][webhook]["clientConfig"]
        ["caBundle"]
        .as_str()
        .unwrap()
        .to_owned();
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    rustls_pemfile::certs(&mut pem.as_slice())
        .map(|c| c.unwrap().as_ref().to_vec())
        .collect()
}

#[tokio::test]
async fn the_bootstrapped_ca_joins_every_webhooks_ca_bundle() {
    let other_replica = certs::bootstrap(vec!["x".into()]).unwrap();
    let ours = certs::bootstrap(vec!["x".into()]).unwrap();
    let state = State {
        webhook_configs: BTreeMap::from([(
            "meshtrace-injector".to_owned(),
            webhook_config(&[None, Some(&other_replica.ca_pem)]),
        )]),
        ..namespaces_state()
    };
    let server = FakeApiServer::start(state).await;

    let changed = certs::publish_ca_bundle(server.client(), "meshtrace-injector", &ours.ca_der)
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(bundle_of(&server, 0), vec![ours.ca_der.as_ref().to_vec()]);
    assert_eq!(
        bundle_of(&server, 1),
        vec![
            other_replica.ca_der.as_ref().to_vec(),
            ours.ca_der.as_ref().to_vec()
        ],
        "the other replica's CA is kept"
    );

    // Already there: nothing to patch.
    let patches_before = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("PATCH"))
        .count();
    let changed = certs::publish_ca_bundle(server.client(), "meshtrace-injector", &ours.ca_der)
        .await
        .unwrap();
    assert!(!changed);
    let patches_after = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("PATCH"))
        .count();
    assert_eq!(patches_before, patches_after);
}

#[tokio::test]
async fn a_concurrent_ca_bundle_change_is_not_overwritten() {
    let concurrent = certs::bootstrap(vec!["x".into()]).unwrap();
    let ours = certs::bootstrap(vec!["x".into()]).unwrap();
    let concurrent_pem = concurrent.ca_pem.clone();
    let state = State {
        webhook_configs: BTreeMap::from([(
            "meshtrace-injector".to_owned(),
            webhook_config(&[None]),
        )]),
        concurrent_edit: Some(Box::new(move |config: &mut serde_json::Value| {
            config["webhooks"][0]["clientConfig"]["caBundle"] =
                base64::engine::general_purpose::STANDARD
                    .encode(&concurrent_pem)
                    .into();
        })),
        ..namespaces_state()
    };
    let server = FakeApiServer::start(state).await;

    let changed = certs::publish_ca_bundle(server.client(), "meshtrace-injector", &ours.ca_der)
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(
        bundle_of(&server, 0),
        vec![
            concurrent.ca_der.as_ref().to_vec(),
            ours.ca_der.as_ref().to_vec()
        ]
    );
    let patches = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("PATCH"))
        .count();
    assert_eq!(
        patches, 2,
        "the first patch failed its resourceVersion test and was retried"
    );
}
