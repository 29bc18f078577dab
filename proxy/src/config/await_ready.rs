//! The flags of `meshtrace-proxy await-ready` (the postStart hook of regular-container pods).

use std::net::SocketAddr;
use std::time::Duration;

use super::parse_duration;

/// Flags of `meshtrace-proxy await-ready`.
#[derive(Clone, Debug, clap::Args)]
pub struct AwaitReadyArgs {
    /// The proxy's admin address, as given to `run` (an unspecified address such as 0.0.0.0
    /// is reached on loopback).
    #[arg(long, env = "MESHTRACE_ADMIN_ADDR", default_value = "0.0.0.0:4191")]
    pub admin_addr: SocketAddr,

    /// How long to wait for readiness (`90s`, `2m`).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub timeout: Duration,
}
