//! `meshtrace-cni`: the chained CNI plugin of CNI mode (run by the container runtime with
//! `CNI_*` variables and the configuration on stdin), and its installer (`meshtrace-cni
//! install`, run by the DaemonSet in manifests/cni/). See [`meshtrace_proxy::cni`].

#![forbid(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use meshtrace_proxy::cni::install;
use meshtrace_proxy::cni::{self, CniEnv, CniError, Output, LATEST_VERSION};
use meshtrace_proxy::config::cni::{installer_log_filter, CniInvocation};

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn print(value: &serde_json::Value) -> bool {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, value).is_ok() && stdout.write_all(b"\n").is_ok()
}

/// One CNI invocation: the result or the error JSON on stdout.
fn plugin(env: CniEnv) -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let error = CniError::new(cni::code::IO_FAILURE, "cannot read stdin", e.to_string());
        print(&error.to_json(LATEST_VERSION));
        return ExitCode::FAILURE;
    }
    let log_level = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|conf| conf.get("logLevel")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "warn".to_owned());
    init_logging(&log_level);
    match cni::handle(&env, &stdin) {
        Ok(Output::Json(result)) if print(&result) => ExitCode::SUCCESS,
        Ok(Output::Json(_)) => ExitCode::FAILURE,
        Ok(Output::Nothing) => ExitCode::SUCCESS,
        Err((version, error)) => {
            tracing::error!(command = %env.command, code = error.code, msg = %error.msg, details = %error.details, "meshtrace-cni failed");
            print(&error.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let result = match CniInvocation::from_command_line() {
        CniInvocation::Plugin(env) => return plugin(env),
        CniInvocation::Install(args) => {
            init_logging(&installer_log_filter());
            install::run(&args)
        }
        CniInvocation::Uninstall(args) => {
            init_logging(&installer_log_filter());
            install::uninstall(&args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshtrace-cni: {error}");
            ExitCode::FAILURE
        }
    }
}
