//! Injector metrics: what it saw, what it did and why, and what went wrong (an operator's first
//! question when pods come up without a proxy, since the webhook never blocks them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Counters shared by the webhook, the TLS reloader and the caBundle publisher.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Admission reviews received (well-formed or not).
    pub reviews: Counter,
    /// Pods patched with the proxy.
    pub injected: Counter,
    /// Pods allowed unchanged, by reason.
    pub skipped: Family<ReasonLabel, Counter>,
    /// Failures, by kind (bad_request, namespace_lookup, internal, version_lookup, tls_reload,
    /// ca_bundle).
    pub errors: Family<KindLabel, Counter>,
    /// Warnings returned to API clients (ignored annotations, fail-open answers).
    pub warnings: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("meshtrace_injector");
        registry.register(
            "pods_seen",
            "Admission reviews received",
            metrics.reviews.clone(),
        );
        registry.register(
            "pods_injected",
            "Pods patched with the proxy",
            metrics.injected.clone(),
        );
        registry.register(
            "pods_skipped",
            "Pods allowed without the proxy, by reason",
            metrics.skipped.clone(),
        );
        registry.register(
            "errors",
            "Errors by kind (never blocking a pod)",
            metrics.errors.clone(),
        );
        registry.register(
            "warnings",
            "Warnings returned in admission responses",
            metrics.warnings.clone(),
        );
        metrics
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn skipped(&self, reason: &'static str) {
        self.skipped.get_or_create(&ReasonLabel { reason }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exported_with_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.reviews.inc();
        metrics.skipped("host_network");
        metrics.error("namespace_lookup");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("meshtrace_injector_pods_seen_total 1"),
            "{text}"
        );
        assert!(
            text.contains("meshtrace_injector_pods_skipped_total{reason=\"host_network\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("meshtrace_injector_errors_total{kind=\"namespace_lookup\"} 1"),
            "{text}"
        );
    }
}
