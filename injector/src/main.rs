//! `meshtrace-injector` binary: parse the configuration, connect to the Kubernetes API, serve.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use meshtrace_injector::certs::{self, CertError};
use meshtrace_injector::config::{Cli, LogFormat};
use meshtrace_injector::metrics::Metrics;
use meshtrace_injector::namespaces::KubeCluster;
use meshtrace_injector::review::Webhook;
use meshtrace_injector::server::{self, CertFiles, ReloadingCert};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Time in-flight reviews get to finish after the listeners stop on SIGTERM.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot configure the Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("TLS certificate: {0}")]
    Cert(#[from] CertError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|err| {
        eprintln!("invalid --log {:?} ({err}); using \"info\"", cli.log);
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Keeps this replica's bootstrapped CA in the webhook's caBundle: at start, then periodically in
/// case other replicas pruned it.
async fn publish_ca_forever(
    client: kube::Client,
    webhook_config: String,
    ca: rustls::pki_types::CertificateDer<'static>,
    metrics: Arc<Metrics>,
) {
    let mut retry = Duration::from_secs(2);
    loop {
        let wait = match certs::publish_ca_bundle(client.clone(), &webhook_config, &ca).await {
            Ok(changed) => {
                if changed {
                    tracing::info!(webhook_config = %webhook_config, "added this replica's CA to the caBundle");
                }
                retry = Duration::from_secs(2);
                Duration::from_secs(60)
            }
            Err(err) => {
                metrics.error("ca_bundle");
                tracing::warn!(error = %err, webhook_config = %webhook_config, "cannot publish the caBundle; retrying");
                retry = (retry * 2).min(Duration::from_secs(60));
                retry
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run(cli: Cli) -> Result<(), StartError> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let client = kube::Client::try_default().await?;
    let refresh = Duration::from_secs(cli.cluster.version_refresh_seconds.max(1));
    let cluster = KubeCluster::spawn_with_refresh(client.clone(), refresh);

    let resolver = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            let files = CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            };
            let resolver = ReloadingCert::new(files.load().await?);
            let interval = Duration::from_secs(cli.tls_reload_seconds.max(1));
            tokio::spawn(files.watch(resolver.clone(), interval, metrics.clone()));
            resolver
        }
        _ => {
            let names = certs::service_dns_names(&cli.service_name, &cli.namespace);
            tracing::info!(
                ?names,
                "no --tls-cert/--tls-key: bootstrapping a CA and serving certificate"
            );
            let boot = certs::bootstrap(names)?;
            let resolver = ReloadingCert::new(certs::certified_key(
                boot.cert_pem.as_bytes(),
                boot.key_pem.as_bytes(),
            )?);
            tokio::spawn(publish_ca_forever(
                client.clone(),
                cli.webhook_config.clone(),
                boot.ca_der,
                metrics.clone(),
            ));
            resolver
        }
    };
    let tls = server::tls_config(resolver)?;

    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let webhook_listener = bind(cli.listen).await?;
    let metrics_listener = bind(cli.metrics_listen).await?;
    tracing::info!(webhook = %cli.listen, metrics = %cli.metrics_listen, mesh_namespace = %cli.namespace, cni = cli.cluster.cni, "serving");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let webhook = Arc::new(Webhook::with_cluster_settings(
        cluster,
        cli.proxy,
        cli.cluster,
        cli.namespace,
        metrics,
    ));
    let webhook_server = server::serve_webhook(
        webhook_listener,
        tls,
        webhook,
        cli.max_body_bytes,
        stopped(stop_rx.clone()),
    );
    let metrics_server =
        server::serve_metrics(metrics_listener, Arc::new(registry), stopped(stop_rx));
    let servers = tokio::spawn(async move {
        tokio::join!(webhook_server, metrics_server);
    });

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    let _ = servers.await;
    tokio::time::sleep(DRAIN_GRACE).await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "meshtrace-injector failed to start");
            ExitCode::FAILURE
        }
    }
}
