//! The cluster as the webhook sees it: namespace annotations and the API server's version.
//!
//! Namespace metadata is kept by a watch-backed reflector so an admission costs no API call; a
//! namespace the cache has not seen yet (startup, a namespace created a moment ago) is read with
//! one direct GET. The version decides native sidecars; it is read on first use and re-read
//! every `--version-refresh-seconds`, so an upgraded control plane is noticed without a restart
//! (a failed re-read keeps the last known version).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::task::JoinHandle;

use crate::config::KubeVersion;
use crate::review::{Cluster, ClusterError, NamespaceMeta};

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

    /// The namespace's annotations and labels, from the cache or, on a miss, the API.
    pub async fn metadata(&self, name: &str) -> Result<NamespaceMeta, ClusterError> {
        let meta = match self.store.get(&ObjectRef::new(name)) {
            Some(cached) => cached.metadata.clone(),
            None => {
                tracing::debug!(
                    namespace = name,
                    "namespace not cached; reading it from the API"
                );
                match self.api.get_metadata_opt(name).await? {
                    Some(meta) => meta.metadata,
                    None => return Err(ClusterError::NamespaceNotFound(name.to_owned())),
                }
            }
        };
        Ok(NamespaceMeta {
            annotations: meta.annotations.unwrap_or_default(),
            labels: meta.labels.unwrap_or_default(),
        })
    }

    /// The namespace's annotations, from the cache or, on a miss, the API.
    pub async fn annotations(&self, name: &str) -> Result<BTreeMap<String, String>, ClusterError> {
        self.metadata(name).await.map(|meta| meta.annotations)
    }
}

/// Kubernetes >= 1.29 (native sidecars on by default) from `/version`'s major and minor strings
/// (minor may carry a suffix, e.g. GKE's `29+`).
pub fn supports_native_sidecars(major: &str, minor: &str) -> Result<bool, ClusterError> {
    KubeVersion::from_parts(major, minor)
        .map(KubeVersion::has_native_sidecars)
        .ok_or_else(|| ClusterError::Version(format!("{major}.{minor}")))
}

/// The real cluster: namespace cache plus the API server's version, re-read every `refresh`.
#[derive(Clone)]
pub struct KubeCluster {
    namespaces: NamespaceCache,
    client: Client,
    refresh: Duration,
    /// The last version read, and when.
    native_sidecars: Arc<Mutex<Option<(bool, Instant)>>>,
}

impl KubeCluster {
    pub fn spawn(client: Client) -> Self {
        Self::spawn_with_refresh(client, Duration::from_secs(600))
    }

    /// Like [`KubeCluster::spawn`], re-reading `/version` when the last read is older than
    /// `refresh`.
    pub fn spawn_with_refresh(client: Client, refresh: Duration) -> Self {
        KubeCluster {
            namespaces: NamespaceCache::spawn(client.clone()),
            client,
            refresh,
            native_sidecars: Arc::new(Mutex::new(None)),
        }
    }

    fn cached_version(&self) -> Option<(bool, Instant)> {
        *self
            .native_sidecars
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn read_version(&self) -> Result<bool, ClusterError> {
        let info = self.client.apiserver_version().await?;
        tracing::info!(version = %info.git_version, "read the API server version");
        supports_native_sidecars(&info.major, &info.minor)
    }

    pub fn namespaces(&self) -> &NamespaceCache {
        &self.namespaces
    }
}

impl Cluster for KubeCluster {
    async fn namespace(&self, namespace: &str) -> Result<NamespaceMeta, ClusterError> {
        self.namespaces.metadata(namespace).await
    }

    async fn supports_native_sidecars(&self) -> Result<bool, ClusterError> {
        let cached = self.cached_version();
        if let Some((native, read_at)) = cached {
            if read_at.elapsed() < self.refresh {
                return Ok(native);
            }
        }
        match self.read_version().await {
            Ok(native) => {
                *self
                    .native_sidecars
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                    Some((native, Instant::now()));
                Ok(native)
            }
            // A failed re-read keeps the last known answer; a failed first read is not cached,
            // so the next admission tries again.
            Err(err) => match cached {
                Some((native, _)) => {
                    tracing::warn!(error = %err, "cannot re-read the API server version; keeping the last one");
                    Ok(native)
                }
                None => Err(err),
            },
        }
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
