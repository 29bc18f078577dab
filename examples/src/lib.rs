//! Sample services, the local mesh demo and `meshtrace-viewer`, the built-in trace UI.

pub mod demo;
pub mod http_server;
pub mod services;
pub mod viewer;

/// Resolves on Ctrl-C or SIGTERM (what the demo runner and container runtimes send).
///
/// The SIGTERM handler is installed when this is called, not when the future is first polled,
/// so a SIGTERM sent as soon as the process looks ready is handled rather than fatal.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        match terminate {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
