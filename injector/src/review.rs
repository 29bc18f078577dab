//! Decide: inject or skip, and why; then answer the AdmissionReview.
//!
//! The webhook must never be the reason a pod cannot be created: anything unexpected (an object
//! that is not a pod, an API failure, a bug) is answered `allowed: true` with no patch and a
//! warning, and counted. Only a body that is not an AdmissionReview at all gets an HTTP error,
//! because there is no request uid to answer to.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use tracing::Instrument;

use crate::config::{
    keys, ClusterSettings, NativeSidecarMode, PodSecurityLevel, ProxyDefaults, ProxySettings,
};
use crate::metrics::Metrics;
use crate::patch::{self, Form};
use crate::pod_security;

/// Why a pod was allowed unchanged; the label of `meshtrace_injector_pods_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// UPDATE, DELETE, CONNECT: only new pods are meshed.
    NotCreate,
    /// `kube-system` or the mesh's own namespace.
    ExcludedNamespace,
    /// iptables in the pod's network namespace would capture the node's traffic.
    HostNetwork,
    /// The proxy (or its init container) is already there: injecting again changes nothing.
    AlreadyInjected,
    /// `meshtrace.io/inject` has a value other than `enabled`/`disabled`.
    InvalidAnnotation,
    /// The pod says `meshtrace.io/inject: disabled`.
    OptedOut,
    /// Neither the pod nor its namespace asks for injection.
    NotEnabled,
    /// The patch would break the namespace's enforced Pod Security level.
    PodSecurity,
    /// A Job-like pod (`restartPolicy` Never/OnFailure) on a server without native sidecars: a
    /// regular proxy container would keep it from ever completing.
    RunToCompletion,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotCreate => "not_create",
            SkipReason::ExcludedNamespace => "excluded_namespace",
            SkipReason::HostNetwork => "host_network",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::InvalidAnnotation => "invalid_annotation",
            SkipReason::OptedOut => "opted_out",
            SkipReason::NotEnabled => "not_enabled",
            SkipReason::PodSecurity => "pod_security",
            SkipReason::RunToCompletion => "run_to_completion",
        }
    }
}

/// Failures of the cluster lookups the decision needs.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("namespace {0:?} not found")]
    NamespaceNotFound(String),
    #[error("Kubernetes API request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("unrecognized API server version {0:?}")]
    Version(String),
}

/// What the webhook reads of a namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceMeta {
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// What the webhook needs to know about the cluster. The real one is
/// [`crate::namespaces::KubeCluster`]; tests and offline use [`StaticCluster`].
pub trait Cluster: Send + Sync + 'static {
    /// The namespace's annotations and labels.
    fn namespace(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<NamespaceMeta, ClusterError>> + Send;

    /// Whether the API server supports native sidecars (Kubernetes >= 1.29).
    fn supports_native_sidecars(&self) -> impl Future<Output = Result<bool, ClusterError>> + Send;
}

/// A fixed cluster: known namespaces (annotations, and labels for some) and a fixed
/// native-sidecar support.
#[derive(Debug, Clone, Default)]
pub struct StaticCluster {
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    pub native_sidecars: bool,
}

impl Cluster for StaticCluster {
    async fn namespace(&self, namespace: &str) -> Result<NamespaceMeta, ClusterError> {
        let annotations = self
            .namespaces
            .get(namespace)
            .cloned()
            .ok_or_else(|| ClusterError::NamespaceNotFound(namespace.to_owned()))?;
        let labels = self.labels.get(namespace).cloned().unwrap_or_default();
        Ok(NamespaceMeta {
            annotations,
            labels,
        })
    }

    async fn supports_native_sidecars(&self) -> Result<bool, ClusterError> {
        Ok(self.native_sidecars)
    }
}

/// The value of `meshtrace.io/inject`: `Some(true)` enabled, `Some(false)` disabled, `None`
/// absent, `Err(value)` anything else.
pub fn inject_annotation(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<bool>, String> {
    match annotations
        .and_then(|a| a.get(keys::INJECT))
        .map(String::as_str)
    {
        None => Ok(None),
        Some("enabled") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        Some(other) => Err(other.to_owned()),
    }
}

/// True when the pod already carries the proxy or its init container.
pub fn already_injected(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let ours = |name: &str| name == patch::PROXY_CONTAINER || name == patch::INIT_CONTAINER;
    spec.containers.iter().any(|c| ours(&c.name))
        || spec.init_containers.iter().flatten().any(|c| ours(&c.name))
}

/// The decision that needs nothing but the pod: `Ok(Some(true))` pod opted in, `Ok(None)` the
/// namespace decides, `Err` skip (with a warning for an invalid annotation).
pub fn decide_from_pod(
    namespace: &str,
    mesh_namespace: &str,
    pod: &Pod,
) -> Result<Option<bool>, (SkipReason, Option<String>)> {
    if namespace == "kube-system" || namespace == mesh_namespace {
        return Err((SkipReason::ExcludedNamespace, None));
    }
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Err((SkipReason::HostNetwork, None));
    }
    if already_injected(pod) {
        return Err((SkipReason::AlreadyInjected, None));
    }
    match inject_annotation(pod.metadata.annotations.as_ref()) {
        Err(value) => Err((
            SkipReason::InvalidAnnotation,
            Some(format!(
                "meshtrace: proxy not injected: pod annotation {}={value:?} is not \"enabled\" or \"disabled\"",
                keys::INJECT
            )),
        )),
        Ok(Some(false)) => Err((SkipReason::OptedOut, None)),
        Ok(opt_in) => Ok(opt_in),
    }
}

/// The rest of the decision for a pod that did not decide itself.
pub fn decide_from_namespace(
    namespace_annotations: &BTreeMap<String, String>,
) -> Result<(), (SkipReason, Option<String>)> {
    match inject_annotation(Some(namespace_annotations)) {
        Ok(Some(true)) => Ok(()),
        Ok(_) => Err((SkipReason::NotEnabled, None)),
        Err(value) => Err((
            SkipReason::InvalidAnnotation,
            Some(format!(
                "meshtrace: proxy not injected: namespace annotation {}={value:?} is not \"enabled\" or \"disabled\"",
                keys::INJECT
            )),
        )),
    }
}

/// A body the webhook cannot answer with an AdmissionResponse (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    NotAReview(#[from] serde_json::Error),
    #[error("AdmissionReview has apiVersion {0:?}; only admission.k8s.io/v1 is supported")]
    UnsupportedVersion(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// The webhook proper: the decision and the patch around a [`Cluster`].
pub struct Webhook<C> {
    cluster: C,
    defaults: ProxyDefaults,
    settings: ClusterSettings,
    mesh_namespace: String,
    metrics: Arc<Metrics>,
}

/// Whether a pod runs to completion (a Job's pod): its containers are not restarted after a
/// successful exit.
pub fn runs_to_completion(pod: &Pod) -> bool {
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
    matches!(policy, Some("Never") | Some("OnFailure"))
}

/// Why a run-to-completion pod is not meshed, and how to mesh it anyway.
fn run_to_completion_warning(pod: &Pod) -> String {
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
    format!(
        "meshtrace: proxy not injected: this pod runs to completion (restartPolicy {}) and the \
         proxy would be a regular container (no native sidecars before Kubernetes 1.29, or {}=false), \
         which would keep it running forever; to mesh it, annotate the pod itself {}=enabled and \
         have the job end the proxy with POST http://127.0.0.1:{}/shutdown when it is done",
        policy.unwrap_or_default(),
        keys::NATIVE_SIDECAR,
        keys::INJECT,
        patch::ADMIN_PORT,
    )
}

impl<C: Cluster> Webhook<C> {
    pub fn new(
        cluster: C,
        defaults: ProxyDefaults,
        mesh_namespace: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let settings = ClusterSettings::default();
        Self::with_cluster_settings(cluster, defaults, settings, mesh_namespace, metrics)
    }

    pub fn with_cluster_settings(
        cluster: C,
        defaults: ProxyDefaults,
        settings: ClusterSettings,
        mesh_namespace: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cluster,
            defaults,
            settings,
            mesh_namespace,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Answers one AdmissionReview body with the serialized response review.
    pub async fn review(&self, body: &[u8]) -> Result<Vec<u8>, BadReview> {
        self.metrics.reviews.inc();
        let request = match parse_review(body) {
            Ok(request) => request,
            Err(err) => {
                self.metrics.error("bad_request");
                tracing::warn!(error = %err, "rejected a body that is not an AdmissionReview");
                return Err(err);
            }
        };
        let response = self.admit(&request).await;
        if let Some(warnings) = &response.warnings {
            self.metrics.warnings.inc_by(warnings.len() as u64);
        }
        // Serializing plain data cannot fail; answer allowed-unchanged if it ever does.
        Ok(encode_response(response).unwrap_or_else(|err| {
            self.metrics.error("internal");
            tracing::error!(error = %err, "could not serialize an admission response");
            encode_response(AdmissionResponse::from(&request)).unwrap_or_default()
        }))
    }

    async fn admit(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let namespace = request.namespace.as_deref().unwrap_or("default");
        let span =
            tracing::info_span!("admit", uid = %request.uid, %namespace, dry_run = request.dry_run);
        self.admit_in_span(request, namespace)
            .instrument(span)
            .await
    }

    async fn admit_in_span(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        namespace: &str,
    ) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);

        if request.operation != Operation::Create {
            return self.skip(response, SkipReason::NotCreate, None);
        }
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        let pod = match request
            .object
            .as_ref()
            .filter(|_| is_pod)
            .map(pod_from_object)
        {
            Some(Ok(pod)) => pod,
            Some(Err(err)) => {
                return self.fail_open(
                    response,
                    "unexpected_object",
                    format!("unreadable pod: {err}"),
                )
            }
            None => {
                let what = format!(
                    "unexpected {}/{} object",
                    request.kind.version, request.kind.kind
                );
                return self.fail_open(response, "unexpected_object", what);
            }
        };

        let pod_opt_in = match decide_from_pod(namespace, &self.mesh_namespace, &pod) {
            Ok(opt_in) => opt_in,
            Err((reason, warning)) => return self.skip(response, reason, warning),
        };
        let namespace_meta = match self.cluster.namespace(namespace).await {
            Ok(meta) => meta,
            Err(err) => {
                let msg = format!("cannot read namespace {namespace:?}: {err}");
                return self.fail_open(response, "namespace_lookup", msg);
            }
        };
        if pod_opt_in.is_none() {
            if let Err((reason, warning)) = decide_from_namespace(&namespace_meta.annotations) {
                return self.skip(response, reason, warning);
            }
        }

        self.inject(response, &pod, pod_opt_in, &namespace_meta)
            .await
    }

    /// The pod is to be meshed: resolve its settings, pick the proxy's form, and patch it,
    /// unless it runs to completion without native sidecars or the patch would break the
    /// namespace's Pod Security level.
    async fn inject(
        &self,
        response: AdmissionResponse,
        pod: &Pod,
        pod_opt_in: Option<bool>,
        namespace_meta: &NamespaceMeta,
    ) -> AdmissionResponse {
        let empty = BTreeMap::new();
        let pod_annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
        let (settings, mut warnings) =
            ProxySettings::resolve(pod_annotations, &namespace_meta.annotations, &self.defaults);
        let native_sidecar = self.native_sidecar(&settings, &mut warnings).await;
        if !native_sidecar && runs_to_completion(pod) && pod_opt_in != Some(true) {
            let warning = run_to_completion_warning(pod);
            return self.skip(response, SkipReason::RunToCompletion, Some(warning));
        }

        let form = Form {
            native_sidecar,
            cni: self.settings.cni,
        };
        let patch = patch::build(pod, &settings, form);
        if let Some(warning) = self.pod_security_refusal(pod, &patch, namespace_meta) {
            return self.skip(response, SkipReason::PodSecurity, Some(warning));
        }
        let mut response = match response.clone().with_patch(patch) {
            Ok(patched) => patched,
            Err(err) => {
                return self.fail_open(
                    response,
                    "internal",
                    format!("cannot serialize patch: {err}"),
                )
            }
        };
        for warning in &warnings {
            tracing::info!(%warning, "ignored an annotation");
        }
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        self.metrics.injected.inc();
        tracing::info!(
            workload = %patch::workload_name(pod),
            native_sidecar,
            cni = self.settings.cni,
            version = %settings.version,
            "injecting the proxy"
        );
        response
    }

    /// Whether the API server supports native sidecars: the configured version, else
    /// `/version` (cached). Unknown counts as no: a regular container works everywhere.
    async fn server_has_native_sidecars(&self) -> Option<bool> {
        if let Some(version) = self.settings.kubernetes_version {
            return Some(version.has_native_sidecars());
        }
        match self.cluster.supports_native_sidecars().await {
            Ok(native) => Some(native),
            Err(err) => {
                self.metrics.error("version_lookup");
                tracing::warn!(error = %err, "API server version unknown; injecting the proxy as a regular container");
                None
            }
        }
    }

    /// The proxy's form: the annotation, else the injector's mode; a native sidecar asked for
    /// by annotation on a server without them would make the pod invalid, so it is ignored
    /// with a warning there.
    async fn native_sidecar(&self, settings: &ProxySettings, warnings: &mut Vec<String>) -> bool {
        match (settings.native_sidecar, self.defaults.native_sidecar) {
            (Some(false), _) => false,
            (Some(true), _) => match self.server_has_native_sidecars().await {
                Some(true) => true,
                known => {
                    let server = match (known, self.settings.kubernetes_version) {
                        (_, Some(version)) => format!("Kubernetes {version}"),
                        (Some(false), None) => "older than Kubernetes 1.29".to_owned(),
                        _ => "of an unknown version".to_owned(),
                    };
                    warnings.push(format!(
                        "meshtrace: ignored annotation {}=\"true\": the API server is {server}, \
                         without native sidecar containers; the proxy is a regular container",
                        keys::NATIVE_SIDECAR
                    ));
                    false
                }
            },
            (None, NativeSidecarMode::True) => true,
            (None, NativeSidecarMode::False) => false,
            (None, NativeSidecarMode::Auto) => {
                self.server_has_native_sidecars().await.unwrap_or(false)
            }
        }
    }

    /// A warning when the patched pod would break the namespace's enforced Pod Security level
    /// in a way the pod alone does not.
    fn pod_security_refusal(
        &self,
        pod: &Pod,
        patch: &json_patch::Patch,
        namespace: &NamespaceMeta,
    ) -> Option<String> {
        let level = namespace
            .labels
            .get(keys::POD_SECURITY_ENFORCE)
            .map(|value| PodSecurityLevel::from_label(value))
            .unwrap_or(self.settings.pod_security_default);
        if level == PodSecurityLevel::Privileged {
            return None;
        }
        let patched = serde_json::to_value(pod).ok().and_then(|mut value| {
            json_patch::patch(&mut value, patch).ok()?;
            serde_json::from_value::<Pod>(value).ok()
        });
        let added = match patched {
            Some(patched) => pod_security::added_violations(pod, &patched, level),
            None => vec!["the patched pod could not be evaluated".to_owned()],
        };
        if added.is_empty() {
            return None;
        }
        let fix = if self.settings.cni {
            "make the pod's own spec compliant, or relax the namespace's level"
        } else {
            "install the meshtrace CNI plugin (manifests/cni/) and run the injector with --cni, \
             which needs no privileged init container, or label the namespace \
             pod-security.kubernetes.io/enforce=privileged"
        };
        Some(format!(
            "meshtrace: proxy not injected: the namespace enforces Pod Security \"{}\" and the \
             injected pod would break it ({}); to mesh this pod, {fix}",
            level.as_str(),
            added.join("; ")
        ))
    }

    fn skip(
        &self,
        mut response: AdmissionResponse,
        reason: SkipReason,
        warning: Option<String>,
    ) -> AdmissionResponse {
        self.metrics.skipped(reason.as_str());
        tracing::debug!(reason = reason.as_str(), "not injecting");
        if let Some(warning) = warning {
            tracing::info!(%warning, reason = reason.as_str(), "not injecting");
            response.warnings = Some(vec![warning]);
        }
        response
    }

    fn fail_open(
        &self,
        mut response: AdmissionResponse,
        kind: &'static str,
        msg: String,
    ) -> AdmissionResponse {
        self.metrics.error(kind);
        tracing::warn!(error = %msg, kind, "allowing the pod without the proxy");
        response.warnings = Some(vec![format!("meshtrace: proxy not injected: {msg}")]);
        response
    }
}

fn parse_review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, BadReview> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(BadReview::UnsupportedVersion(format!(
            "{}/{}",
            review.types.api_version, review.types.kind
        )));
    }
    review.try_into().map_err(|_| BadReview::NoRequest)
}

/// The response review as JSON, with the patch in the documented base64 form (kube-core
/// serializes `Vec<u8>` as an array of numbers).
fn encode_response(response: AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    let patch = response
        .patch
        .as_deref()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    let mut review = serde_json::to_value(response.into_review())?;
    if let (Some(patch), Some(slot)) = (patch, review.pointer_mut("/response/patch")) {
        *slot = serde_json::Value::String(patch);
    }
    serde_json::to_vec(&review)
}

fn pod_from_object(object: &DynamicObject) -> Result<Pod, serde_json::Error> {
    serde_json::to_value(object).and_then(serde_json::from_value)
}
