//! The settings of `meshtrace-cni`: the `CNI_*` environment of a plugin invocation, and the
//! flags of `meshtrace-cni install` (`MESHTRACE_CNI_*` variables).

use std::path::PathBuf;
use std::time::Duration;

use super::parse_duration;
use crate::cni::CniEnv;

impl CniEnv {
    /// From the process environment; empty variables count as unset.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        CniEnv {
            command: var("CNI_COMMAND").unwrap_or_default(),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS").map(PathBuf::from),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }
}

/// `KUBERNETES_SERVICE_HOST`/`_PORT` as an https URL: the API server as seen from a pod.
pub fn in_cluster_server() -> String {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    format!("https://{host}:{port}")
}

#[derive(Clone, Debug, clap::Args)]
pub struct InstallArgs {
    /// The node's CNI bin directory, as mounted in this container.
    #[arg(
        long,
        env = "MESHTRACE_CNI_BIN_DIR",
        default_value = "/host/opt/cni/bin"
    )]
    pub bin_dir: PathBuf,

    /// The node's CNI configuration directory, as mounted in this container.
    #[arg(
        long,
        env = "MESHTRACE_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    pub conf_dir: PathBuf,

    /// The same directory as the node sees it (the plugin runs on the node).
    #[arg(
        long,
        env = "MESHTRACE_CNI_HOST_CONF_DIR",
        default_value = "/etc/cni/net.d"
    )]
    pub host_conf_dir: PathBuf,

    /// The network configuration file to chain into (a name in --conf-dir); default: the first
    /// by name, as the runtime picks it.
    #[arg(long, env = "MESHTRACE_CNI_CONF_FILE")]
    pub conf_file: Option<String>,

    /// The plugin binary to install (default: this executable).
    #[arg(long, env = "MESHTRACE_CNI_PLUGIN_BINARY")]
    pub plugin_binary: Option<PathBuf>,

    /// Service account directory (token, ca.crt) the kubeconfig is written from.
    #[arg(
        long,
        env = "MESHTRACE_CNI_SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount"
    )]
    pub service_account_dir: PathBuf,

    /// API server URL for the kubeconfig (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT).
    #[arg(long, env = "MESHTRACE_CNI_KUBERNETES_SERVER")]
    pub server: Option<String>,

    /// The plugin's log filter (stderr, collected by the runtime).
    #[arg(long, env = "MESHTRACE_CNI_LOG_LEVEL", default_value = "warn")]
    pub log_level: String,

    /// iptables backend the plugin uses: auto, nft or legacy.
    #[arg(long, env = "MESHTRACE_CNI_IPTABLES_MODE", default_value = "auto")]
    pub iptables_mode: String,

    /// How often the installation is re-checked.
    #[arg(long, env = "MESHTRACE_CNI_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Install once and exit (no watching, no uninstall).
    #[arg(long)]
    pub once: bool,
}

/// meshtrace CNI plugin: without a subcommand it speaks the CNI protocol (CNI_COMMAND, stdin,
/// stdout) for the container runtime.
#[derive(clap::Parser)]
#[command(name = "meshtrace-cni", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Install the plugin on this node and keep it installed until SIGTERM, then uninstall.
    Install(InstallArgs),
    /// Remove the plugin from this node's CNI configuration and bin directory.
    Uninstall(InstallArgs),
}

/// What `meshtrace-cni`'s command line asks for.
pub enum CniInvocation {
    /// No arguments: a CNI invocation by the container runtime.
    Plugin(CniEnv),
    Install(InstallArgs),
    Uninstall(InstallArgs),
}

impl CniInvocation {
    /// Parses the process's arguments and environment; prints help, version or a usage error
    /// and exits where clap does.
    pub fn from_command_line() -> CniInvocation {
        match <Cli as clap::Parser>::parse().command {
            None => CniInvocation::Plugin(CniEnv::from_process()),
            Some(Command::Install(args)) => CniInvocation::Install(args),
            Some(Command::Uninstall(args)) => CniInvocation::Uninstall(args),
        }
    }
}

/// The installer's own log filter (`MESHTRACE_LOG`, default `info`).
pub fn installer_log_filter() -> String {
    std::env::var("MESHTRACE_LOG").unwrap_or_else(|_| "info".into())
}
