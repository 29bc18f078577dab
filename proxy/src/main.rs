//! `meshtrace-proxy`: a thin shell over [`meshtrace_proxy::app`].

#![forbid(unsafe_code)]

use std::process::ExitCode;

use meshtrace_proxy::app::Proxy;
use meshtrace_proxy::await_ready;
use meshtrace_proxy::config::{Config, Invocation, LogFormat};
use meshtrace_proxy::init;

/// jemalloc with a background thread: pages freed after a burst go back to the OS within its
/// decay time (5 s, set at build time in `.cargo/config.toml`; `_RJEM_MALLOC_CONF=dirty_decay_ms:N`
/// changes it at run time), where glibc malloc keeps
/// them, and it executes fewer instructions per request (benches/README.md, "Memory at 1,000
/// connections: allocator").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match Invocation::from_command_line() {
        Invocation::Init(args) => match args.config().and_then(|config| init::run(&config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("meshtrace-proxy init: {error}");
                ExitCode::FAILURE
            }
        },
        Invocation::AwaitReady(args) => match await_ready::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("meshtrace-proxy await-ready: {error}");
                ExitCode::FAILURE
            }
        },
        Invocation::Run(config) => run(*config),
    }
}

fn run(config: Config) -> ExitCode {
    if let Err(error) = init_logging(&config) {
        eprintln!("meshtrace-proxy: invalid MESHTRACE_LOG: {error}");
        return ExitCode::FAILURE;
    }
    raise_fd_limit();
    // The multi-thread scheduler even for one worker: its LIFO slot runs the task a request just
    // woke (the other side of the exchange) next, while its data is still in cache. The
    // current-thread scheduler queues it behind every other ready connection, which cost 30%
    // more CPU per request at 1,000 connections (benches/README.md).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meshtrace-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let flush_timeout = config.export_flush_timeout;
    runtime.block_on(async {
        let signal = termination_signal();
        let mut proxy = Proxy::new(config);
        let exporter = match proxy.start_export() {
            Ok(exporter) => exporter,
            Err(error) => {
                tracing::error!(%error, "invalid span export configuration");
                return ExitCode::FAILURE;
            }
        };
        let bound = match proxy.bind().await {
            Ok(bound) => bound,
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        // Drained or not, a requested shutdown is a clean exit.
        bound.run(signal).await;
        if let Some(exporter) = exporter {
            if let Err(error) = exporter.shutdown(flush_timeout).await {
                tracing::warn!(%error, "span export flush incomplete");
            }
        }
        ExitCode::SUCCESS
    })
}

/// Raises the soft fd limit to the hard one (every connection costs a descriptor) and logs both.
fn raise_fd_limit() {
    let show = |limit: Option<u64>| limit.map_or("unlimited".to_string(), |n| n.to_string());
    let (limits, error) = meshtrace_proxy::fd_limit::raise_to_hard();
    let (before, soft, hard) = (
        show(limits.soft_before),
        show(limits.soft),
        show(limits.hard),
    );
    match error {
        None => {
            tracing::info!(soft_before = %before, soft = %soft, hard = %hard, "file descriptor limit")
        }
        Some(error) => {
            tracing::warn!(%error, soft = %soft, hard = %hard, "cannot raise the file descriptor limit")
        }
    }
}

/// `MESHTRACE_LOG` is a list of `target=level` directives (`Targets`, not `EnvFilter`: the
/// latter's span and field filters compile regular expressions at start-up, and their code and
/// tables cost the proxy ~0.3 MiB of resident memory for a feature a sidecar's log does not need).
fn init_logging(config: &Config) -> Result<(), tracing_subscriber::filter::ParseError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: tracing_subscriber::filter::Targets = config.log.parse()?;
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Plain => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    Ok(())
}

/// SIGTERM (kubelet) or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is first polled: called
/// before the listeners are bound, a SIGTERM that arrives as soon as `/ready` answers is
/// already ours (otherwise the default action would kill the process mid-request).
fn termination_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = signal(SignalKind::terminate())
        .and_then(|term| signal(SignalKind::interrupt()).map(|int| (term, int)));
    async move {
        let (mut term, mut int) = match signals {
            Ok(signals) => signals,
            Err(error) => {
                tracing::error!(%error, "cannot listen for termination signals; use POST /shutdown");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
