//! `meshtrace-cni install`: what the CNI DaemonSet (manifests/cni/) runs on every node.
//!
//! 1. copies this binary into the node's CNI bin directory as `meshtrace-cni`;
//! 2. writes a kubeconfig (JSON) from the DaemonSet's service account, so the plugin can read
//!    pods;
//! 3. appends the plugin to the node's primary network configuration (the first `.conflist`,
//!    `.conf` or `.json` file by name, the one the runtime uses), converting a single-plugin
//!    `.conf` into a `.conflist`.
//!
//! Every step compares before it writes and writes through a rename, so running it again
//! changes nothing, and a runtime never reads half a file. It then re-checks every `--interval`
//! (the network plugin may rewrite its configuration, the token rotates) until SIGTERM/SIGINT,
//! and uninstalls on the way out: the plugin entry first, so the runtime stops calling the
//! binary before it is removed. `--once` installs and exits; `meshtrace-cni uninstall` removes.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Map, Value};

use super::{PLUGIN_TYPE, POD_ANNOTATIONS_CAPABILITY};
pub use crate::config::cni::InstallArgs;

/// The kubeconfig's file name in the CNI configuration directory (no `.conf`/`.conflist`/`.json`
/// extension, so runtimes never load it as a network).
pub const KUBECONFIG_NAME: &str = "meshtrace-cni-kubeconfig";
/// Extensions runtimes (containerd, CRI-O, libcni) load as network configurations.
const CONF_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a CNI network configuration: {why}")]
    BadConf { path: PathBuf, why: String },
    #[error("no network configuration in {0} yet (is the cluster's network plugin installed?)")]
    NoConf(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, unless it already holds
/// them; returns whether it wrote.
fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(false);
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.meshtrace-tmp"));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(true)
}

fn remove_if_present(path: &Path) -> Result<bool, InstallError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path)(e)),
    }
}

/// The network configuration the runtime uses: `--conf-file`, else the first by name.
pub fn primary_conf(args: &InstallArgs) -> Result<PathBuf, InstallError> {
    if let Some(name) = &args.conf_file {
        return Ok(args.conf_dir.join(name));
    }
    let entries = std::fs::read_dir(&args.conf_dir).map_err(io(&args.conf_dir))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .filter(|n| {
            n.rsplit_once('.')
                .is_some_and(|(_, ext)| CONF_EXTENSIONS.contains(&ext))
        })
        .collect();
    names.sort();
    names
        .first()
        .map(|n| args.conf_dir.join(n))
        .ok_or_else(|| InstallError::NoConf(args.conf_dir.clone()))
}

fn read_json(path: &Path) -> Result<Map<String, Value>, InstallError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(InstallError::BadConf {
            path: path.to_owned(),
            why: "not a JSON object".into(),
        }),
        Err(e) => Err(InstallError::BadConf {
            path: path.to_owned(),
            why: e.to_string(),
        }),
    }
}

/// The plugin's entry in the chain.
fn plugin_entry(args: &InstallArgs, with_kubeconfig: bool) -> Value {
    // With the capability, containerd passes the pod's annotations in `runtimeConfig` and the
    // plugin needs no API call; other runtimes ignore it.
    let mut entry = json!({
        "type": PLUGIN_TYPE,
        "logLevel": args.log_level,
        "iptablesMode": args.iptables_mode,
        "capabilities": {POD_ANNOTATIONS_CAPABILITY: true},
    });
    if with_kubeconfig {
        entry["kubeconfig"] = json!(args.host_conf_dir.join(KUBECONFIG_NAME));
    }
    entry
}

/// `conf` as a configuration list with our entry (`Some`) or without it (`None`) at the end.
pub fn chained(mut conf: Map<String, Value>, entry: Option<&Value>) -> Map<String, Value> {
    if !conf.contains_key("plugins") {
        // A single-plugin .conf: the list carries its name and version.
        let mut list = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(v) = conf.get(key) {
                list.insert(key.into(), v.clone());
            }
        }
        conf.remove("name");
        list.insert("plugins".into(), Value::Array(vec![Value::Object(conf)]));
        conf = list;
    }
    if let Some(Value::Array(plugins)) = conf.get_mut("plugins") {
        plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
        plugins.extend(entry.cloned());
    }
    conf
}

/// Where a configuration list lives: a `.conf` becomes `<stem>.conflist`.
fn list_path(path: &Path) -> PathBuf {
    match path.extension().and_then(|e| e.to_str()) {
        Some("conf") => path.with_extension("conflist"),
        _ => path.to_owned(),
    }
}

fn write_json(path: &Path, value: &Map<String, Value>, mode: u32) -> Result<bool, InstallError> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    write_if_changed(path, text.as_bytes(), mode)
}

/// A kubeconfig (JSON) for the service account in `args.service_account_dir`, if it exists.
fn kubeconfig(args: &InstallArgs) -> Result<Option<Map<String, Value>>, InstallError> {
    let token_path = args.service_account_dir.join("token");
    let token = match std::fs::read_to_string(&token_path) {
        Ok(token) => token.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&token_path)(e)),
    };
    let ca_path = args.service_account_dir.join("ca.crt");
    let ca = std::fs::read(&ca_path).map_err(io(&ca_path))?;
    let server = args
        .server
        .clone()
        .unwrap_or_else(crate::config::cni::in_cluster_server);
    let mut cluster = json!({"server": server});
    if !ca.is_empty() {
        cluster["certificate-authority-data"] =
            base64::engine::general_purpose::STANDARD.encode(ca).into();
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "meshtrace-cni",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "meshtrace-cni", "user": {"token": token}}],
        "contexts": [{"name": "meshtrace-cni", "context": {"cluster": "local", "user": "meshtrace-cni"}}],
    });
    match config {
        Value::Object(map) => Ok(Some(map)),
        _ => Ok(None),
    }
}

/// Installs (or repairs) everything; returns the paths it wrote.
pub fn install(args: &InstallArgs) -> Result<Vec<PathBuf>, InstallError> {
    let mut written = Vec::new();
    let source = match &args.plugin_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?,
    };
    let binary = std::fs::read(&source).map_err(io(&source))?;
    let target = args.bin_dir.join(PLUGIN_TYPE);
    if write_if_changed(&target, &binary, 0o755)? {
        written.push(target);
    }
    let kubeconfig = kubeconfig(args)?;
    if let Some(config) = &kubeconfig {
        let path = args.conf_dir.join(KUBECONFIG_NAME);
        if write_json(&path, config, 0o600)? {
            written.push(path);
        }
    } else {
        tracing::warn!(dir = %args.service_account_dir.display(), "no service account token: the plugin gets no kubeconfig");
    }
    let conf_path = primary_conf(args)?;
    let conf = read_json(&conf_path)?;
    let entry = plugin_entry(args, kubeconfig.is_some());
    let list = chained(conf, Some(&entry));
    let list_path = list_path(&conf_path);
    if write_json(&list_path, &list, 0o644)? {
        written.push(list_path.clone());
    }
    if list_path != conf_path && remove_if_present(&conf_path)? {
        written.push(conf_path);
    }
    Ok(written)
}

/// Removes the plugin from the chain, then its kubeconfig and binary.
pub fn uninstall(args: &InstallArgs) -> Result<(), InstallError> {
    match primary_conf(args) {
        Ok(path) => {
            let conf = read_json(&path)?;
            if conf.contains_key("plugins") {
                write_json(&path, &chained(conf, None), 0o644)?;
            }
        }
        Err(InstallError::NoConf(_)) => {}
        Err(e) => return Err(e),
    }
    remove_if_present(&args.conf_dir.join(KUBECONFIG_NAME))?;
    remove_if_present(&args.bin_dir.join(PLUGIN_TYPE))?;
    Ok(())
}

/// `meshtrace-cni install`: install, keep it installed until SIGTERM/SIGINT, then uninstall.
pub fn run(args: &InstallArgs) -> Result<(), InstallError> {
    let report = |result: Result<Vec<PathBuf>, InstallError>| match result {
        Ok(written) if !written.is_empty() => {
            tracing::info!(?written, "meshtrace-cni installed");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::warn!(%error, "meshtrace-cni not installed yet; retrying");
            Err(error)
        }
    };
    if args.once {
        return report(install(args)).map(drop);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io(Path::new("tokio runtime")))?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(io(Path::new("SIGTERM")))?;
        let mut int = signal(SignalKind::interrupt()).map_err(io(Path::new("SIGINT")))?;
        let mut ticker = tokio::time::interval(args.interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => { let _ = report(install(args)); }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!("uninstalling meshtrace-cni");
        uninstall(args)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_plugin_conf_becomes_a_list_with_us_last() {
        let conf =
            json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge", "bridge": "cni0"});
        let Value::Object(conf) = conf else { panic!() };
        let entry = json!({"type": PLUGIN_TYPE});
        let list = chained(conf, Some(&entry));
        assert_eq!(
            Value::Object(list.clone()),
            json!({"cniVersion": "1.0.0", "name": "net", "plugins": [
                {"cniVersion": "1.0.0", "type": "bridge", "bridge": "cni0"}, {"type": PLUGIN_TYPE}]})
        );
        // Again: still one entry. Removed: the rest untouched.
        let again = chained(list.clone(), Some(&entry));
        assert_eq!(again, list);
        let removed = chained(list, None);
        assert_eq!(removed["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn list_paths() {
        assert_eq!(
            list_path(Path::new("/x/10-bridge.conf")),
            Path::new("/x/10-bridge.conflist")
        );
        assert_eq!(
            list_path(Path::new("/x/10-calico.conflist")),
            Path::new("/x/10-calico.conflist")
        );
    }
}
