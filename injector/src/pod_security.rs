//! The Pod Security Standards (<https://kubernetes.io/docs/concepts/security/pod-security-standards/>),
//! `latest` version, as pure checks of a pod: which rules of a level the pod breaks.
//!
//! The webhook evaluates the pod before and after its patch: a patch that adds a violation
//! would make Pod Security Admission refuse a pod it would otherwise admit (the ReplicaSet
//! then creates no pod at all), so such a pod is admitted unchanged instead. Each rule below
//! quotes the field paths of the standard; the messages name the container and the field, like
//! the API server's own.
//!
//! What the webhook cannot see is not checked: PodSecurity exemptions (usernames, runtime
//! classes, namespaces) and `enforce-version` pins to older versions of the standard.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EphemeralContainer, Pod, PodSecurityContext, PodSpec, SeccompProfile,
    SecurityContext,
};

use crate::config::PodSecurityLevel;

/// Capabilities Baseline allows in `capabilities.add`.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls Baseline allows (the "safe" set of the standard's latest version).
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types Baseline allows (besides unset).
const SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Volume types Restricted allows.
const RESTRICTED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// One container of any kind, with what the checks need.
struct AnyContainer<'a> {
    kind: &'static str,
    name: &'a str,
    security: Option<&'a SecurityContext>,
    host_ports: Vec<i32>,
}

fn regular<'a>(kind: &'static str, c: &'a Container) -> AnyContainer<'a> {
    AnyContainer {
        kind,
        name: &c.name,
        security: c.security_context.as_ref(),
        host_ports: host_ports(c.ports.as_deref()),
    }
}

fn ephemeral(c: &EphemeralContainer) -> AnyContainer<'_> {
    AnyContainer {
        kind: "ephemeralContainers",
        name: &c.name,
        security: c.security_context.as_ref(),
        host_ports: host_ports(c.ports.as_deref()),
    }
}

/// The host ports a container's port list asks for.
fn host_ports(ports: Option<&[ContainerPort]>) -> Vec<i32> {
    ports
        .into_iter()
        .flatten()
        .filter_map(|p| p.host_port)
        .collect()
}

/// Init, regular and ephemeral containers: the standard applies to all of them.
fn containers(spec: &PodSpec) -> Vec<AnyContainer<'_>> {
    let init = spec.init_containers.iter().flatten();
    let ephemerals = spec.ephemeral_containers.iter().flatten();
    init.map(|c| regular("initContainers", c))
        .chain(spec.containers.iter().map(|c| regular("containers", c)))
        .chain(ephemerals.map(ephemeral))
        .collect()
}

/// Every rule of `level` that `pod` breaks, as readable messages (empty: allowed).
pub fn violations(pod: &Pod, level: PodSecurityLevel) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if level >= PodSecurityLevel::Baseline {
        baseline(pod, spec, &mut out);
    }
    if level >= PodSecurityLevel::Restricted {
        restricted(spec, &mut out);
    }
    out
}

fn baseline(pod: &Pod, spec: &PodSpec, out: &mut Vec<String>) {
    for (field, set) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if set == Some(true) {
            out.push(format!("host namespaces: {field}=true"));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            out.push(format!("hostPath volume {:?}", volume.name));
        }
    }
    let pod_sc = spec.security_context.as_ref();
    baseline_pod_level(pod, pod_sc, out);
    for c in containers(spec) {
        let who = format!("{} {:?}", c.kind, c.name);
        if c.host_ports.iter().any(|&p| p != 0) {
            out.push(format!("{who}: hostPort {:?}", c.host_ports));
        }
        let Some(sc) = c.security else { continue };
        if sc.privileged == Some(true) {
            out.push(format!("{who}: privileged=true"));
        }
        if sc
            .windows_options
            .as_ref()
            .and_then(|w| w.host_process)
            .unwrap_or(false)
        {
            out.push(format!("{who}: windowsOptions.hostProcess=true"));
        }
        let added: Vec<&str> = sc
            .capabilities
            .as_ref()
            .and_then(|caps| caps.add.as_ref())
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|cap| !BASELINE_CAPABILITIES.contains(cap))
            .collect();
        if !added.is_empty() {
            out.push(format!(
                "{who}: non-default capabilities.add {added:?} (baseline allows only {BASELINE_CAPABILITIES:?})"
            ));
        }
        if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            out.push(format!("{who}: procMount {:?}", sc.proc_mount));
        }
        if let Some(why) = unconfined_seccomp(sc.seccomp_profile.as_ref()) {
            out.push(format!("{who}: {why}"));
        }
        if let Some(why) = selinux_violation(sc.se_linux_options.as_ref()) {
            out.push(format!("{who}: {why}"));
        }
        if let Some(profile) = &sc.app_armor_profile {
            if !matches!(profile.type_.as_str(), "RuntimeDefault" | "Localhost") {
                out.push(format!("{who}: appArmorProfile.type {:?}", profile.type_));
            }
        }
    }
}

fn baseline_pod_level(pod: &Pod, pod_sc: Option<&PodSecurityContext>, out: &mut Vec<String>) {
    if let Some(sc) = pod_sc {
        if sc
            .windows_options
            .as_ref()
            .and_then(|w| w.host_process)
            .unwrap_or(false)
        {
            out.push("pod: windowsOptions.hostProcess=true".into());
        }
        if let Some(why) = unconfined_seccomp(sc.seccomp_profile.as_ref()) {
            out.push(format!("pod: {why}"));
        }
        if let Some(why) = selinux_violation(sc.se_linux_options.as_ref()) {
            out.push(format!("pod: {why}"));
        }
        let unsafe_sysctls: Vec<&str> = sc
            .sysctls
            .iter()
            .flatten()
            .map(|s| s.name.as_str())
            .filter(|name| !SAFE_SYSCTLS.contains(name))
            .collect();
        if !unsafe_sysctls.is_empty() {
            out.push(format!("pod: unsafe sysctls {unsafe_sysctls:?}"));
        }
        if let Some(profile) = &sc.app_armor_profile {
            if !matches!(profile.type_.as_str(), "RuntimeDefault" | "Localhost") {
                out.push(format!("pod: appArmorProfile.type {:?}", profile.type_));
            }
        }
    }
    for (key, value) in pod.metadata.annotations.iter().flatten() {
        let apparmor_ok = value == "runtime/default" || value.starts_with("localhost/");
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/") && !apparmor_ok {
            out.push(format!("annotation {key}={value:?}"));
        }
    }
}

fn unconfined_seccomp(profile: Option<&SeccompProfile>) -> Option<String> {
    profile
        .filter(|p| p.type_ == "Unconfined")
        .map(|_| "seccompProfile.type \"Unconfined\"".to_owned())
}

fn selinux_violation(
    options: Option<&k8s_openapi::api::core::v1::SELinuxOptions>,
) -> Option<String> {
    let options = options?;
    let bad_type = options
        .type_
        .as_deref()
        .is_some_and(|t| !t.is_empty() && !SELINUX_TYPES.contains(&t));
    let custom_user_or_role = options.user.as_deref().is_some_and(|u| !u.is_empty())
        || options.role.as_deref().is_some_and(|r| !r.is_empty());
    (bad_type || custom_user_or_role).then(|| format!("seLinuxOptions {options:?}"))
}

fn restricted(spec: &PodSpec, out: &mut Vec<String>) {
    for volume in spec.volumes.iter().flatten() {
        let value = serde_json::to_value(volume).unwrap_or_default();
        let kinds: Vec<&String> = value
            .as_object()
            .into_iter()
            .flat_map(|map| map.keys())
            .filter(|key| *key != "name")
            .collect();
        if let Some(kind) = kinds
            .iter()
            .find(|kind| !RESTRICTED_VOLUMES.contains(&kind.as_str()))
        {
            out.push(format!(
                "volume {:?} of type {kind} (restricted allows {RESTRICTED_VOLUMES:?})",
                volume.name
            ));
        }
    }
    let pod_sc = spec.security_context.as_ref();
    if pod_sc.and_then(|sc| sc.run_as_user) == Some(0) {
        out.push("pod: runAsUser=0".into());
    }
    let pod_non_root = pod_sc.and_then(|sc| sc.run_as_non_root);
    let pod_seccomp = pod_sc.and_then(|sc| sc.seccomp_profile.as_ref());
    for c in containers(spec) {
        let who = format!("{} {:?}", c.kind, c.name);
        let sc = c.security;
        if sc.and_then(|sc| sc.allow_privilege_escalation) != Some(false) {
            out.push(format!("{who}: allowPrivilegeEscalation != false"));
        }
        let non_root = sc.and_then(|sc| sc.run_as_non_root).or(pod_non_root);
        if non_root != Some(true) {
            out.push(format!("{who}: runAsNonRoot != true"));
        }
        if sc.and_then(|sc| sc.run_as_user) == Some(0) {
            out.push(format!("{who}: runAsUser=0"));
        }
        let seccomp = sc
            .and_then(|sc| sc.seccomp_profile.as_ref())
            .or(pod_seccomp);
        if !seccomp.is_some_and(|p| matches!(p.type_.as_str(), "RuntimeDefault" | "Localhost")) {
            out.push(format!(
                "{who}: seccompProfile.type must be RuntimeDefault or Localhost"
            ));
        }
        let caps = sc.and_then(|sc| sc.capabilities.as_ref());
        let drops_all = caps
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|cap| cap == "ALL"));
        if !drops_all {
            out.push(format!("{who}: capabilities.drop must include \"ALL\""));
        }
        let added: Vec<&String> = caps
            .and_then(|c| c.add.as_ref())
            .into_iter()
            .flatten()
            .filter(|cap| *cap != "NET_BIND_SERVICE")
            .collect();
        if !added.is_empty() {
            out.push(format!(
                "{who}: capabilities.add {added:?} (restricted allows only NET_BIND_SERVICE)"
            ));
        }
    }
}

/// The violations of `after` that `before` does not have: what a patch adds.
pub fn added_violations(before: &Pod, after: &Pod, level: PodSecurityLevel) -> Vec<String> {
    let existing = violations(before, level);
    violations(after, level)
        .into_iter()
        .filter(|v| !existing.contains(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    /// A container that passes `restricted`.
    fn compliant(name: &str) -> Value {
        json!({"name": name, "image": "app", "securityContext": {
            "runAsNonRoot": true, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}})
    }

    #[test]
    fn a_compliant_pod_passes_every_level() {
        let p = pod(json!({"containers": [compliant("app")],
                           "volumes": [{"name": "tmp", "emptyDir": {}}]}));
        for level in [
            PodSecurityLevel::Privileged,
            PodSecurityLevel::Baseline,
            PodSecurityLevel::Restricted,
        ] {
            assert!(violations(&p, level).is_empty(), "{level:?}");
        }
    }

    #[test]
    fn baseline_refuses_net_admin_but_allows_net_bind_service() {
        let mut c = compliant("init");
        c["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN", "NET_RAW"]);
        let p = pod(json!({"containers": [compliant("app")], "initContainers": [c]}));
        let v = violations(&p, PodSecurityLevel::Baseline);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("NET_ADMIN") && v[0].contains("\"init\""),
            "{v:?}"
        );
        assert!(violations(&p, PodSecurityLevel::Privileged).is_empty());

        let mut c = compliant("app");
        c["securityContext"]["capabilities"]["add"] = json!(["NET_BIND_SERVICE", "CHOWN"]);
        let p = pod(json!({"containers": [c]}));
        assert!(violations(&p, PodSecurityLevel::Baseline).is_empty());
        // Restricted allows only NET_BIND_SERVICE.
        let v = violations(&p, PodSecurityLevel::Restricted);
        assert!(v.len() == 1 && v[0].contains("CHOWN"), "{v:?}");
    }

    #[test]
    fn baseline_host_and_privilege_rules() {
        let mut c = compliant("app");
        c["securityContext"]["privileged"] = json!(true);
        c["securityContext"]["procMount"] = json!("Unmasked");
        c["ports"] = json!([{"containerPort": 80, "hostPort": 80}]);
        let p = pod(json!({
            "hostPID": true, "containers": [c],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"},
                                            {"name": "net.ipv4.tcp_syncookies", "value": "1"}],
                                "seccompProfile": {"type": "Unconfined"}}}));
        let v = violations(&p, PodSecurityLevel::Baseline).join("\n");
        for expected in [
            "hostPID",
            "hostPath",
            "privileged",
            "procMount",
            "hostPort",
            "kernel.msgmax",
            "Unconfined",
        ] {
            assert!(v.contains(expected), "{expected} missing in {v}");
        }
        assert!(!v.contains("tcp_syncookies"), "{v}");
    }

    #[test]
    fn restricted_requires_non_root_no_escalation_seccomp_and_drop_all() {
        let p = pod(json!({"containers": [{"name": "app", "image": "app"}]}));
        let v = violations(&p, PodSecurityLevel::Restricted).join("\n");
        for expected in [
            "allowPrivilegeEscalation",
            "runAsNonRoot",
            "seccompProfile",
            "capabilities.drop",
        ] {
            assert!(v.contains(expected), "{expected} missing in {v}");
        }
        assert!(violations(&p, PodSecurityLevel::Baseline).is_empty());

        // Pod-level runAsNonRoot and seccomp count for containers that do not override them.
        let mut c = compliant("app");
        c["securityContext"] =
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        let p = pod(json!({"containers": [c], "securityContext": {
            "runAsNonRoot": true, "seccompProfile": {"type": "Localhost", "localhostProfile": "x"}}}));
        assert!(violations(&p, PodSecurityLevel::Restricted).is_empty());

        // runAsUser 0 and an explicit runAsNonRoot=false override the pod level.
        let mut c = compliant("init");
        c["securityContext"]["runAsUser"] = json!(0);
        c["securityContext"]["runAsNonRoot"] = json!(false);
        let p = pod(
            json!({"containers": [compliant("app")], "initContainers": [c], "securityContext": {"runAsNonRoot": true}}),
        );
        let v = violations(&p, PodSecurityLevel::Restricted).join("\n");
        assert!(
            v.contains("runAsUser=0") && v.contains("runAsNonRoot"),
            "{v}"
        );
    }

    #[test]
    fn restricted_volume_types() {
        let p = pod(json!({"containers": [compliant("app")], "volumes": [
            {"name": "a", "configMap": {"name": "c"}},
            {"name": "b", "nfs": {"server": "s", "path": "/"}},
        ]}));
        let v = violations(&p, PodSecurityLevel::Restricted);
        assert!(v.len() == 1 && v[0].contains("nfs"), "{v:?}");
        assert!(violations(&p, PodSecurityLevel::Baseline).is_empty());
    }

    #[test]
    fn added_violations_ignore_what_the_pod_already_broke() {
        let before = pod(json!({"containers": [{"name": "app", "image": "app"}]}));
        let mut after = before.clone();
        let proxy: k8s_openapi::api::core::v1::Container =
            serde_json::from_value(compliant("meshtrace-proxy")).unwrap();
        after.spec.as_mut().unwrap().containers.insert(0, proxy);
        assert!(added_violations(&before, &after, PodSecurityLevel::Restricted).is_empty());
        assert!(!violations(&after, PodSecurityLevel::Restricted).is_empty());
    }

    #[test]
    fn unparsable_labels_enforce_restricted() {
        assert_eq!(
            PodSecurityLevel::from_label("baseline"),
            PodSecurityLevel::Baseline
        );
        assert_eq!(
            PodSecurityLevel::from_label("Baseline"),
            PodSecurityLevel::Restricted
        );
    }
}
