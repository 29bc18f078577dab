//! The cluster as the webhook sees it: namespace annotations and the API server's version.
//!
//! Namespace metadata is kept by a watch-backed reflector so an admission costs no API call; a
//! namespace the cache has not seen yet (startup, a namespace created a moment ago) is read with
//! one direct GET. The version is read once and cached: it decides native sidecars and does not
//! change under a running injector in practice (an upgrade restarts the webhook's pods long
//! before it matters, and a regular container works everywhere anyway).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use crate::review::{Cluster, ClusterError};

/// Aborts the reflector task when the last cache handle goes away.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Namespace annotations: watch-backed cache, GET on a miss.
#[derive(Clone)]
pub struct NamespaceCache {
    store: Store<PartialObjectMeta<Namespace>>,
    api: Api<Namespace>,
    _reflector: Arc<AbortOnDrop>,
}

impl NamespaceCache {
    /// Starts watching namespace metadata (list + watch, restarted with backoff on errors).
    /// Needs a Tokio runtime.
    pub fn spawn(client: Client) -> Self {
        let (store, writer) = reflector::store();
        let stream = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff();
        let task = tokio::spawn(async move {
            reflector::reflector(writer, stream)
                .for_each(|event| async move {
                    if let Err(err) = event {
                        tracing::warn!(error = %err, "namespace watch failed; retrying");
                    }
                })
                .await;
        });
        NamespaceCache {
            store,
            api: Api::all(client),
            _reflector: Arc::new(AbortOnDrop(task)),
        }
    }

    /// Resolves once the first full list of namespaces is in the cache.
    pub async fn ready(&self) -> bool {
        self.store.wait_until_ready().await.is_ok()
    }

    /// The namespace's annotations, from the cache or, on a miss, the API.
    pub async fn annotations(&self, name: &str) -> Result<BTreeMap<String, String>, ClusterError> {
        if let Some(cached) = self.store.get(&ObjectRef::new(name)) {
            return Ok(cached.metadata.annotations.clone().unwrap_or_default());
        }
        tracing::debug!(
            namespace = name,
            "namespace not cached; reading it from the API"
        );
        match self.api.get_metadata_opt(name).await? {
            Some(meta) => Ok(meta.metadata.annotations.unwrap_or_default()),
            None => Err(ClusterError::NamespaceNotFound(name.to_owned())),
        }
    }
}

/// Kubernetes >= 1.29 (native sidecars on by default) from `/version`'s major and minor strings
/// (minor may carry a suffix, e.g. GKE's `29+`).
pub fn supports_native_sidecars(major: &str, minor: &str) -> Result<bool, ClusterError> {
    let number = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (number(major), number(minor)) {
        (Some(major), Some(minor)) => Ok(major > 1 || (major == 1 && minor >= 29)),
        _ => Err(ClusterError::Version(format!("{major}.{minor}"))),
    }
}

/// The real cluster: namespace cache plus the API server's version, read once.
#[derive(Clone)]
pub struct KubeCluster {
    namespaces: NamespaceCache,
    client: Client,
    native_sidecars: Arc<OnceCell<bool>>,
}

impl KubeCluster {
    pub fn spawn(client: Client) -> Self {
        KubeCluster {
            namespaces: NamespaceCache::spawn(client.clone()),
            client,
            native_sidecars: Arc::new(OnceCell::new()),
        }
    }

    pub fn namespaces(&self) -> &NamespaceCache {
        &self.namespaces
    }
}

impl Cluster for KubeCluster {
    async fn namespace_annotations(
        &self,
        namespace: &str,
    ) -> Result<BTreeMap<String, String>, ClusterError> {
        self.namespaces.annotations(namespace).await
    }

    async fn supports_native_sidecars(&self) -> Result<bool, ClusterError> {
        // A failed read is not cached: the next admission tries again.
        self.native_sidecars
            .get_or_try_init(|| async {
                let info = self.client.apiserver_version().await?;
                tracing::info!(version = %info.git_version, "read the API server version");
                supports_native_sidecars(&info.major, &info.minor)
            })
            .await
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_start_at_1_29() {
        assert!(!supports_native_sidecars("1", "24").unwrap());
        assert!(!supports_native_sidecars("1", "28").unwrap());
        assert!(supports_native_sidecars("1", "29").unwrap());
        assert!(supports_native_sidecars("1", "31+").unwrap());
        assert!(supports_native_sidecars("2", "0").unwrap());
        assert!(supports_native_sidecars("", "").is_err());
    }
}
