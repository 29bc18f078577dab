//! The OTLP resource: who emitted the spans (service and Kubernetes pod).
//!
//! Built once at startup from the environment the injector gives the proxy container (downward
//! API `MESHTRACE_POD_*`) and the standard `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, so
//! tracing UIs can group spans by workload and pod without any per-span cost.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// A pod attribute the injector passes through the downward API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodAttribute {
    Name,
    Namespace,
    Node,
    Uid,
    Ip,
}

impl PodAttribute {
    /// The semantic-convention resource attribute.
    pub const fn key(self) -> &'static str {
        match self {
            PodAttribute::Name => "k8s.pod.name",
            PodAttribute::Namespace => "k8s.namespace.name",
            PodAttribute::Node => "k8s.node.name",
            PodAttribute::Uid => "k8s.pod.uid",
            PodAttribute::Ip => "k8s.pod.ip",
        }
    }
}

/// What the resource is made of, as configured (values trimmed, none empty).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceConfig {
    /// The workload name (`MESHTRACE_WORKLOAD`).
    pub workload: Option<String>,
    pub pod: Vec<(PodAttribute, String)>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded.
    pub attributes: Vec<(String, String)>,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
}

/// The proxy's resource attributes, in a stable order, keys unique.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyResource {
    pub attributes: Vec<(String, String)>,
    /// Problems the spec says to report and ignore (a malformed `OTEL_RESOURCE_ATTRIBUTES`).
    pub warnings: Vec<String>,
}

impl ProxyResource {
    /// Precedence, lowest first: `telemetry.sdk.*`; `service.name` from the workload (else
    /// `meshtrace-proxy`); the pod attributes; the configured attributes (win over all of
    /// those); and the service name, which the resource spec says wins over a `service.name`
    /// among the attributes.
    pub fn new(config: &ResourceConfig, warnings: Vec<String>) -> ProxyResource {
        let mut resource = ProxyResource {
            attributes: Vec::new(),
            warnings,
        };
        resource.set("telemetry.sdk.name", "meshtrace");
        resource.set("telemetry.sdk.language", "rust");
        resource.set("telemetry.sdk.version", env!("CARGO_PKG_VERSION"));
        let workload = config.workload.as_deref();
        resource.set("service.name", workload.unwrap_or("meshtrace-proxy"));
        for (attribute, value) in &config.pod {
            resource.set(attribute.key(), value);
        }
        for (key, value) in &config.attributes {
            resource.set(key, value);
        }
        if let Some(name) = &config.service_name {
            resource.set("service.name", name);
        }
        resource
    }

    /// Sets `key`, replacing an earlier value in place.
    fn set(&mut self, key: &str, value: &str) {
        match self.attributes.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.attributes.push((key.to_owned(), value.to_owned())),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The OTLP message.
    pub fn to_proto(&self) -> Resource {
        Resource {
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(v.clone())),
                    }),
                    key_strindex: 0,
                })
                .collect(),
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExportArgs;
    use std::collections::HashMap;

    /// Through the configuration, as the proxy builds it.
    fn resource(vars: &[(&str, &str)]) -> ProxyResource {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        ExportArgs::from_lookup(|name| map.get(name).map(|v| v.to_string())).resource()
    }

    #[test]
    fn defaults() {
        let r = resource(&[]);
        assert_eq!(r.get("service.name"), Some("meshtrace-proxy"));
        assert_eq!(r.get("telemetry.sdk.name"), Some("meshtrace"));
        assert_eq!(r.get("k8s.pod.name"), None);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn service_name_precedence() {
        assert_eq!(
            resource(&[("MESHTRACE_WORKLOAD", "checkout")]).get("service.name"),
            Some("checkout")
        );
        assert_eq!(
            resource(&[
                ("MESHTRACE_WORKLOAD", "checkout"),
                ("OTEL_SERVICE_NAME", "shop")
            ])
            .get("service.name"),
            Some("shop")
        );
        assert_eq!(
            resource(&[
                ("MESHTRACE_WORKLOAD", "checkout"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")
            ])
            .get("service.name"),
            Some("from-attrs")
        );
        // The resource spec: OTEL_SERVICE_NAME wins over service.name in the attributes.
        assert_eq!(
            resource(&[
                ("OTEL_SERVICE_NAME", "shop"),
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")
            ])
            .get("service.name"),
            Some("shop")
        );
        assert_eq!(
            resource(&[("OTEL_SERVICE_NAME", "  ")]).get("service.name"),
            Some("meshtrace-proxy")
        );
    }

    #[test]
    fn pod_attributes_when_set() {
        let r = resource(&[
            ("MESHTRACE_POD_NAME", "web-1"),
            ("MESHTRACE_POD_NAMESPACE", "shop"),
            ("MESHTRACE_NODE_NAME", "node-a"),
            ("MESHTRACE_POD_UID", "1234-abcd"),
            ("MESHTRACE_POD_IP", "10.0.0.7"),
        ]);
        assert_eq!(r.get("k8s.pod.name"), Some("web-1"));
        assert_eq!(r.get("k8s.namespace.name"), Some("shop"));
        assert_eq!(r.get("k8s.node.name"), Some("node-a"));
        assert_eq!(r.get("k8s.pod.uid"), Some("1234-abcd"));
        assert_eq!(r.get("k8s.pod.ip"), Some("10.0.0.7"));
        let r = resource(&[("MESHTRACE_POD_NAME", "web-1")]);
        assert_eq!(r.get("k8s.namespace.name"), None);
    }

    #[test]
    fn resource_attributes_merged_last_and_decoded() {
        let r = resource(&[
            ("MESHTRACE_POD_NAME", "web-1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=override, deployment.environment.name=prod%20eu,team=a%2Cb%3Dc",
            ),
        ]);
        assert_eq!(r.get("k8s.pod.name"), Some("override"));
        assert_eq!(r.get("deployment.environment.name"), Some("prod eu"));
        assert_eq!(r.get("team"), Some("a,b=c"));
        let keys: Vec<&str> = r.attributes.iter().map(|(k, _)| k.as_str()).collect();
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "keys are unique: {keys:?}");
    }

    #[test]
    fn malformed_resource_attributes_are_discarded_whole() {
        for bad in ["a=1,novalue", "a=%zz", "=1"] {
            let r = resource(&[("OTEL_RESOURCE_ATTRIBUTES", bad)]);
            assert_eq!(r.get("a"), None, "{bad}");
            assert_eq!(r.warnings.len(), 1, "{bad}");
        }
    }

    #[test]
    fn proto_has_string_values() {
        let proto = resource(&[("MESHTRACE_POD_IP", "10.0.0.7")]).to_proto();
        let ip = proto
            .attributes
            .iter()
            .find(|kv| kv.key == "k8s.pod.ip")
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value);
        assert_eq!(ip, Some(any_value::Value::StringValue("10.0.0.7".into())));
    }
}
