//! `meshtrace-cni`: a chained CNI plugin (CNI spec 1.1, also serving 0.3.x–1.0 configurations)
//! that programs a meshed pod's nat table from the node, so the pod needs no `meshtrace-init`
//! container and no NET_ADMIN capability (CNI mode, like linkerd-cni and istio-cni).
//!
//! The container runtime runs it after the cluster's own plugins, in the node's namespaces:
//! - `ADD`: reads the pod's annotations (`K8S_POD_NAMESPACE`/`K8S_POD_NAME` from `CNI_ARGS`,
//!   then the Kubernetes API through the plugin configuration's kubeconfig, or the runtime's
//!   `io.kubernetes.cri.pod-annotations` capability when it passes them). For a pod the injector
//!   meshed (`meshtrace.io/injected: "true"`), it enters `CNI_NETNS` and applies exactly the
//!   rules `meshtrace-proxy init` applies, with the pod's skip ports. Every other pod is left
//!   alone. Either way `prevResult` is passed through on stdout.
//! - `DEL`: nothing to undo (the rules live and die with the pod's network namespace).
//! - `CHECK`: for a meshed pod, the interception is still in place.
//! - `VERSION`, `GC` (nothing to collect) and `STATUS` (the kubeconfig is readable).
//!
//! Errors are the spec's error JSON on stdout with a non-zero exit; logs go to stderr.

pub mod install;
mod kube;
mod netns;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{InitArgs, IptablesMode};
use crate::init::PortList;

/// The plugin's `type` (its file name in the CNI bin directory).
pub const PLUGIN_TYPE: &str = "meshtrace-cni";
/// The CNI versions this plugin reads and writes.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest of them, used where no configuration says otherwise.
pub const LATEST_VERSION: &str = "1.1.0";

/// Set by the injector on every pod it meshes.
pub const INJECTED_ANNOTATION: &str = "meshtrace.io/injected";
pub const SKIP_INBOUND_ANNOTATION: &str = "meshtrace.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_ANNOTATION: &str = "meshtrace.io/skip-outbound-ports";
/// Written by the injector: `ipv6` or `dual` also programs ip6tables (as `ipv6` in the
/// configuration does for every pod).
pub const IP_FAMILIES_ANNOTATION: &str = "meshtrace.io/ip-families";
/// containerd's capability passing the pod's annotations in `runtimeConfig`.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// The spec's well-known error codes (and this plugin's own, from 100).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Programming the pod's rules failed.
    pub const INTERCEPTION_FAILED: u32 = 100;
    /// CHECK: a meshed pod's interception is missing.
    pub const INTERCEPTION_MISSING: u32 = 101;
}

/// An error as the CNI spec prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error JSON, for a configuration of `version`.
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl CniEnv {
    /// `CNI_ARGS` (`K1=V1;K2=V2`) as a map.
    pub fn args_map(&self) -> BTreeMap<&str, &str> {
        self.args
            .as_deref()
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .collect()
    }
}

/// The plugin's network configuration, as the runtime passes it on stdin.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Kubeconfig (JSON, as the installer writes it) for reading pods.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// iptables backend: `auto` (default), `nft` or `legacy`.
    #[serde(default)]
    pub iptables_mode: Option<String>,
    /// Also program ip6tables.
    #[serde(default)]
    pub ipv6: bool,
    /// Log filter for stderr (`warn` by default).
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub runtime_config: Option<Value>,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

/// What an invocation prints on success.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Json(Value),
    Nothing,
}

/// Runs one invocation; `Err` carries the CNI version to report the error in.
pub fn handle(env: &CniEnv, stdin: &[u8]) -> Result<Output, (String, CniError)> {
    if env.command == "VERSION" {
        return Ok(Output::Json(json!({
            "cniVersion": LATEST_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = parse_conf(stdin).map_err(|e| (LATEST_VERSION.to_owned(), e))?;
    let version = conf.cni_version.clone();
    let result = match env.command.as_str() {
        "ADD" => add(env, &conf),
        "DEL" => Ok(Output::Nothing),
        "CHECK" => check(env, &conf),
        "GC" => Ok(Output::Nothing),
        "STATUS" => status(&conf),
        "" => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_COMMAND is not set",
            "meshtrace-cni is run by the container runtime as a chained CNI plugin; `meshtrace-cni install` installs it",
        )),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, VERSION, GC or STATUS",
        )),
    };
    result.map_err(|e| (version, e))
}

fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {:?} is not supported", conf.cni_version),
            format!("supported: {SUPPORTED_VERSIONS:?}"),
        ));
    }
    Ok(conf)
}

/// The pod's namespace and name from `CNI_ARGS`, when the runtime is Kubernetes'.
fn pod_ref(env: &CniEnv) -> Option<(String, String)> {
    let args = env.args_map();
    match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            Some((ns.to_string(), name.to_string()))
        }
        _ => None,
    }
}

/// The pod's annotations: from the runtime when it passes them, else from the API.
fn pod_annotations(
    conf: &NetConf,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, CniError> {
    let passed = conf
        .runtime_config
        .as_ref()
        .and_then(|rc| rc.get(POD_ANNOTATIONS_CAPABILITY))
        .and_then(|a| serde_json::from_value::<BTreeMap<String, String>>(a.clone()).ok());
    if let Some(annotations) = passed {
        return Ok(annotations);
    }
    let Some(kubeconfig) = &conf.kubeconfig else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "no kubeconfig to read the pod's annotations with",
            "set \"kubeconfig\" in meshtrace-cni's configuration (`meshtrace-cni install` does)",
        ));
    };
    kube::pod_annotations(kubeconfig, namespace, name)
}

/// The `init` flags for a meshed pod, or `None` for a pod the mesh leaves alone.
pub fn init_args_for(
    conf: &NetConf,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<InitArgs>, CniError> {
    if annotations.get(INJECTED_ANNOTATION).map(String::as_str) != Some("true") {
        return Ok(None);
    }
    let ports = |key: &str| -> Result<PortList, CniError> {
        let raw = annotations.get(key).map(String::as_str).unwrap_or_default();
        raw.parse().map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid pod annotation {key}={raw:?}"),
                format!("{e}"),
            )
        })
    };
    let iptables_mode = match conf.iptables_mode.as_deref() {
        None | Some("auto") => IptablesMode::Auto,
        Some("nft") => IptablesMode::Nft,
        Some("legacy") => IptablesMode::Legacy,
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("iptablesMode {other:?} is not auto, nft or legacy"),
                "",
            ))
        }
    };
    let pod_ipv6 = match annotations.get(IP_FAMILIES_ANNOTATION).map(String::as_str) {
        None | Some("ipv4") => false,
        Some("ipv6" | "dual") => true,
        Some(other) => {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("invalid pod annotation {IP_FAMILIES_ANNOTATION}={other:?}"),
                "expected ipv4, ipv6 or dual",
            ))
        }
    };
    Ok(Some(InitArgs {
        skip_inbound_ports: ports(SKIP_INBOUND_ANNOTATION)?,
        skip_outbound_ports: ports(SKIP_OUTBOUND_ANNOTATION)?,
        iptables_mode,
        ipv6: conf.ipv6 || pod_ipv6,
        ..InitArgs::default()
    }))
}

/// The meshed pod's `init` flags and network namespace, or `None` for other pods.
fn meshed_pod(env: &CniEnv, conf: &NetConf) -> Result<Option<(InitArgs, PathBuf)>, CniError> {
    let Some((namespace, name)) = pod_ref(env) else {
        tracing::debug!("not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS)");
        return Ok(None);
    };
    let annotations = pod_annotations(conf, &namespace, &name)?;
    let Some(args) = init_args_for(conf, &annotations)? else {
        tracing::debug!(%namespace, %name, "pod not meshed");
        return Ok(None);
    };
    let netns = env.netns.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_NETNS is not set",
            "ADD and CHECK need the pod's network namespace",
        )
    })?;
    tracing::info!(%namespace, %name, netns = %netns.display(), "meshed pod");
    Ok(Some((args, netns)))
}

fn require_env(env: &CniEnv) -> Result<(), CniError> {
    for (var, set) in [
        ("CNI_CONTAINERID", env.container_id.is_some()),
        ("CNI_IFNAME", env.ifname.is_some()),
        ("CNI_NETNS", env.netns.is_some()),
    ] {
        if !set {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("{var} is not set"),
                format!("{} needs it", env.command),
            ));
        }
    }
    Ok(())
}

/// `prevResult` (in the configuration's version), which a chained plugin passes on.
fn prev_result(conf: &NetConf) -> Result<Value, CniError> {
    match &conf.prev_result {
        Some(Value::Object(result)) => {
            let mut result = result.clone();
            result.insert("cniVersion".into(), conf.cni_version.clone().into());
            Ok(Value::Object(result))
        }
        _ => Err(CniError::new(
            code::INVALID_CONFIG,
            "no prevResult: meshtrace-cni must be chained after the network plugin",
            "add it at the end of the \"plugins\" of the node's .conflist (`meshtrace-cni install` does)",
        )),
    }
}

fn add(env: &CniEnv, conf: &NetConf) -> Result<Output, CniError> {
    require_env(env)?;
    let result = prev_result(conf)?;
    if let Some((args, netns)) = meshed_pod(env, conf)? {
        netns::program(&netns, &args)?;
    }
    Ok(Output::Json(result))
}

fn check(env: &CniEnv, conf: &NetConf) -> Result<Output, CniError> {
    if matches!(conf.cni_version.as_str(), "0.3.0" | "0.3.1") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for CNI {}", conf.cni_version),
            "CHECK exists from CNI 0.4.0",
        ));
    }
    require_env(env)?;
    prev_result(conf)?;
    if let Some((args, netns)) = meshed_pod(env, conf)? {
        netns::verify(&netns, &args)?;
    }
    Ok(Output::Nothing)
}

fn status(conf: &NetConf) -> Result<Output, CniError> {
    if let Some(path) = &conf.kubeconfig {
        kube::Kubeconfig::load(path).map_err(|e| {
            CniError::new(
                code::NOT_AVAILABLE,
                "meshtrace-cni cannot read its kubeconfig",
                e.msg,
            )
        })?;
    }
    Ok(Output::Nothing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: Value) -> NetConf {
        let mut value =
            json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": PLUGIN_TYPE});
        if let (Value::Object(base), Value::Object(extra)) = (&mut value, extra) {
            base.extend(extra);
        }
        serde_json::from_value(value).unwrap()
    }

    fn env(command: &str) -> CniEnv {
        CniEnv {
            command: command.into(),
            container_id: Some("c1".into()),
            netns: Some("/var/run/netns/x".into()),
            ifname: Some("eth0".into()),
            args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1".into()),
        }
    }

    #[test]
    fn version_lists_what_it_supports() {
        let out = handle(&env("VERSION"), b"{\"cniVersion\":\"1.0.0\"}").unwrap();
        let Output::Json(v) = out else { panic!() };
        assert_eq!(v["cniVersion"], LATEST_VERSION);
        assert!(v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.0.0")));
    }

    #[test]
    fn unsupported_versions_and_garbage_are_cni_errors() {
        let (_, e) = handle(&env("ADD"), b"{\"cniVersion\":\"9.0.0\"}").unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let (version, e) = handle(&env("ADD"), b"not json").unwrap_err();
        assert_eq!(
            (version.as_str(), e.code),
            (LATEST_VERSION, code::DECODING_FAILURE)
        );
        let (version, e) = handle(&env("FROB"), b"{\"cniVersion\":\"0.4.0\"}").unwrap_err();
        assert_eq!(
            (version.as_str(), e.code),
            ("0.4.0", code::INVALID_ENVIRONMENT)
        );
        let (_, e) = handle(&env("CHECK"), b"{\"cniVersion\":\"0.3.1\"}").unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn gc_has_nothing_to_collect_and_status_needs_the_kubeconfig() {
        let gc = handle(&env("GC"), br#"{"cniVersion":"1.1.0","name":"n","type":"meshtrace-cni","cni.dev/valid-attachments":[]}"#);
        assert_eq!(gc.unwrap(), Output::Nothing);
        let status = handle(
            &env("STATUS"),
            br#"{"cniVersion":"1.1.0","name":"n","type":"meshtrace-cni"}"#,
        );
        assert_eq!(status.unwrap(), Output::Nothing);
        let missing = br#"{"cniVersion":"1.1.0","name":"n","type":"meshtrace-cni","kubeconfig":"/nonexistent/meshtrace-cni-kubeconfig"}"#;
        let (version, e) = handle(&env("STATUS"), missing).unwrap_err();
        assert_eq!((version.as_str(), e.code), ("1.1.0", code::NOT_AVAILABLE));
    }

    #[test]
    fn cni_args_name_the_pod() {
        assert_eq!(
            pod_ref(&env("ADD")),
            Some(("shop".to_owned(), "web-1".to_owned()))
        );
        let mut other = env("ADD");
        other.args = Some("IgnoreUnknown=1".into());
        assert_eq!(pod_ref(&other), None);
    }

    #[test]
    fn only_injected_pods_are_meshed_with_their_skip_ports() {
        let c = conf(json!({}));
        let plain = BTreeMap::from([("a".to_owned(), "b".to_owned())]);
        assert!(init_args_for(&c, &plain).unwrap().is_none());
        let meshed = BTreeMap::from([
            (INJECTED_ANNOTATION.to_owned(), "true".to_owned()),
            (
                SKIP_INBOUND_ANNOTATION.to_owned(),
                "22,9000-9100".to_owned(),
            ),
        ]);
        let args = init_args_for(&c, &meshed).unwrap().unwrap();
        assert_eq!(args.skip_inbound_ports, "22,9000-9100".parse().unwrap());
        assert!(args.skip_outbound_ports.is_empty());
        assert_eq!(args.inbound_port, InitArgs::default().inbound_port);

        let broken = BTreeMap::from([
            (INJECTED_ANNOTATION.to_owned(), "true".to_owned()),
            (SKIP_OUTBOUND_ANNOTATION.to_owned(), "http".to_owned()),
        ]);
        assert_eq!(
            init_args_for(&c, &broken).unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn ip_families_annotation_adds_ip6tables() {
        let meshed = |families: Option<&str>| {
            let mut a = BTreeMap::from([(INJECTED_ANNOTATION.to_owned(), "true".to_owned())]);
            if let Some(f) = families {
                a.insert(IP_FAMILIES_ANNOTATION.to_owned(), f.to_owned());
            }
            a
        };
        let ipv6 =
            |c: &NetConf, families| init_args_for(c, &meshed(families)).map(|a| a.unwrap().ipv6);
        let c = conf(json!({}));
        assert!(!ipv6(&c, None).unwrap());
        assert!(!ipv6(&c, Some("ipv4")).unwrap());
        assert!(ipv6(&c, Some("dual")).unwrap());
        assert!(ipv6(&c, Some("ipv6")).unwrap());
        assert_eq!(
            ipv6(&c, Some("both")).unwrap_err().code,
            code::INVALID_CONFIG
        );
        // The configuration's `ipv6` still covers every pod.
        assert!(ipv6(&conf(json!({"ipv6": true})), Some("ipv4")).unwrap());
    }

    #[test]
    fn annotations_passed_by_the_runtime_need_no_api() {
        let c = conf(
            json!({"runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {"meshtrace.io/injected": "true"}}}),
        );
        let annotations = pod_annotations(&c, "shop", "web-1").unwrap();
        assert_eq!(annotations[INJECTED_ANNOTATION], "true");
        let (_, e) = (
            String::new(),
            pod_annotations(&conf(json!({})), "shop", "web-1").unwrap_err(),
        );
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    #[test]
    fn add_without_prev_result_explains_chaining() {
        let c = conf(json!({"runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {}}}));
        let e = add(&env("ADD"), &c).unwrap_err();
        assert!(e.msg.contains("chained"), "{e:?}");
        // A pod that is not meshed: prevResult passes through, in the configuration's version.
        let c = conf(json!({"runtimeConfig": {POD_ANNOTATIONS_CAPABILITY: {}},
                            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}]}}));
        let Output::Json(out) = add(&env("ADD"), &c).unwrap() else {
            panic!()
        };
        assert_eq!(out["ips"][0]["address"], "10.0.0.5/24");
        assert_eq!(out["cniVersion"], "1.0.0");
    }
}
