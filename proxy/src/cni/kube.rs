//! The one Kubernetes API call of the plugin: `GET /api/v1/namespaces/{ns}/pods/{name}`, for
//! the pod's annotations, with the credentials of a kubeconfig.
//!
//! The kubeconfig is read as JSON (a JSON document is valid YAML, so kubectl reads it too); the
//! installer writes it in that form from the DaemonSet's service account. Supported: the
//! current context's cluster `server` (https, or http for local testing) with
//! `certificate-authority-data` or `certificate-authority`, and the user's `token` or
//! `tokenFile`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::{code, CniError};

/// A pod object is small; anything bigger is not one.
const MAX_BODY_BYTES: usize = 4 << 20;
/// The whole lookup, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
struct RawKubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<RawContext>>,
    #[serde(default)]
    clusters: Vec<Named<RawCluster>>,
    #[serde(default)]
    users: Vec<Named<RawUser>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Debug, Deserialize)]
struct RawContext {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Deserialize)]
struct RawCluster {
    server: String,
    #[serde(rename = "certificate-authority-data", default)]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority", default)]
    ca_file: Option<PathBuf>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure: bool,
}

#[derive(Debug, Default, Deserialize)]
struct RawUser {
    #[serde(default)]
    token: Option<String>,
    #[serde(rename = "tokenFile", default)]
    token_file: Option<PathBuf>,
}

/// What the plugin needs from a kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubeconfig {
    pub server: Uri,
    /// PEM certificates to trust (none: plain http).
    pub ca_pem: Option<Vec<u8>>,
    pub token: Option<String>,
}

fn config_error(path: &Path, what: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid kubeconfig {}", path.display()),
        what.to_string(),
    )
}

fn find<'a, T>(items: &'a [Named<T>], name: &str) -> Option<&'a T> {
    items.iter().find(|n| n.name == name).map(|n| &n.value)
}

impl Kubeconfig {
    pub fn load(path: &Path) -> Result<Kubeconfig, CniError> {
        let bytes = std::fs::read(path).map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("cannot read kubeconfig {}", path.display()),
                e.to_string(),
            )
        })?;
        let raw: RawKubeconfig = serde_json::from_slice(&bytes)
            .map_err(|e| config_error(path, format!("not a JSON kubeconfig: {e}")))?;
        let context = find(&raw.contexts, &raw.current_context)
            .or_else(|| raw.contexts.first().map(|c| &c.value))
            .ok_or_else(|| config_error(path, "no context"))?;
        let cluster = find(&raw.clusters, &context.cluster)
            .ok_or_else(|| config_error(path, format!("no cluster {:?}", context.cluster)))?;
        if cluster.insecure {
            return Err(config_error(
                path,
                "insecure-skip-tls-verify is not supported",
            ));
        }
        let server: Uri = cluster
            .server
            .parse()
            .map_err(|e| config_error(path, format!("server {:?}: {e}", cluster.server)))?;
        let ca_pem = match (&cluster.ca_data, &cluster.ca_file) {
            (Some(data), _) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| config_error(path, format!("certificate-authority-data: {e}")))?,
            ),
            (None, Some(file)) => Some(std::fs::read(file).map_err(|e| {
                config_error(
                    path,
                    format!("certificate-authority {}: {e}", file.display()),
                )
            })?),
            (None, None) => None,
        };
        let user = find(&raw.users, &context.user);
        let token = match user {
            Some(RawUser { token: Some(t), .. }) => Some(t.trim().to_owned()),
            Some(RawUser {
                token_file: Some(f),
                ..
            }) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| config_error(path, format!("tokenFile {}: {e}", f.display())))?
                    .trim()
                    .to_owned(),
            ),
            _ => None,
        };
        Ok(Kubeconfig {
            server,
            ca_pem,
            token,
        })
    }

    fn tls(&self) -> Result<rustls::ClientConfig, CniError> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = self.ca_pem.as_deref().unwrap_or_default();
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert =
                cert.map_err(|e| CniError::new(code::INVALID_CONFIG, "bad CA", e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| CniError::new(code::INVALID_CONFIG, "bad CA", e.to_string()))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "TLS", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(config)
    }
}

#[derive(Debug, Deserialize)]
struct PodMeta {
    metadata: PodMetadata,
}

#[derive(Debug, Deserialize)]
struct PodMetadata {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The annotations of pod `namespace/name`.
pub fn pod_annotations(
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, CniError> {
    let config = Kubeconfig::load(kubeconfig)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot start a runtime", e.to_string()))?;
    let lookup = get_pod(&config, namespace, name);
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, lookup)
            .await
            .unwrap_or_else(|_| {
                Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("the Kubernetes API did not answer within {TIMEOUT:?}"),
                    config.server.to_string(),
                ))
            })
    })
}

async fn get_pod(
    config: &Kubeconfig,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, CniError> {
    let api_error =
        |msg: String, details: String| CniError::new(code::TRY_AGAIN_LATER, msg, details);
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.tls()?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let base = config.server.to_string();
    let uri = format!(
        "{}/api/v1/namespaces/{namespace}/pods/{name}",
        base.trim_end_matches('/')
    );
    let mut request = Request::get(&uri).header("accept", "application/json");
    if let Some(token) = &config.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "bad API request", e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| api_error(format!("GET {uri} failed"), format!("{e:?}")))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| api_error(format!("reading GET {uri}"), e.to_string()))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(api_error(
            format!("GET {uri}: {status}"),
            String::from_utf8_lossy(&body).chars().take(512).collect(),
        ));
    }
    let pod: PodMeta = serde_json::from_slice(&body).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("GET {uri}: not a pod"),
            e.to_string(),
        )
    })?;
    Ok(pod.metadata.annotations.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_current_context() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "from-file\n").unwrap();
        let path = dir.path().join("kubeconfig");
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "b",
            "clusters": [
                {"name": "one", "cluster": {"server": "https://10.96.0.1:443", "certificate-authority-data": "LS0t"}},
                {"name": "two", "cluster": {"server": "http://127.0.0.1:8001"}}],
            "contexts": [{"name": "a", "context": {"cluster": "one", "user": "u"}},
                         {"name": "b", "context": {"cluster": "two", "user": "v"}}],
            "users": [{"name": "u", "user": {"token": "inline"}},
                      {"name": "v", "user": {"tokenFile": token}}],
        });
        std::fs::write(&path, config.to_string()).unwrap();
        let loaded = Kubeconfig::load(&path).unwrap();
        assert_eq!(loaded.server, "http://127.0.0.1:8001/");
        assert_eq!(loaded.token.as_deref(), Some("from-file"));
        assert!(loaded.ca_pem.is_none());

        std::fs::write(&path, "apiVersion: v1\nkind: Config\n").unwrap();
        let err = Kubeconfig::load(&path).unwrap_err();
        assert!(err.details.contains("JSON"), "{err:?}");
        let err = Kubeconfig::load(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.code, code::IO_FAILURE);
    }
}
