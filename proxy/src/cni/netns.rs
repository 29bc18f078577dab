//! Running `init`'s iptables step inside a pod's network namespace, from the node.
//!
//! A dedicated thread enters the namespace (`setns` changes only the calling thread) and runs
//! the iptables commands from there: a child process starts in its parent thread's network
//! namespace, so `iptables-restore` programs the pod's nat table while the plugin's other
//! threads (and its Kubernetes API connection) stay in the node's.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use super::{code, CniError};
use crate::config::InitArgs;
use crate::init::{self, Backend, Family, INBOUND_CHAIN, OUTBOUND_CHAIN};

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, CniError> + Send + 'static,
) -> Result<T, CniError> {
    let handle = File::open(path).map_err(|e| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("cannot open CNI_NETNS {}", path.display()),
            e.to_string(),
        )
    })?;
    let shown = path.display().to_string();
    let thread = std::thread::Builder::new()
        .name("meshtrace-cni-netns".into())
        .spawn(move || {
            move_into_link_name_space(handle.as_fd(), Some(LinkNameSpaceType::Network)).map_err(
                |e| {
                    CniError::new(
                        code::IO_FAILURE,
                        format!("cannot enter the network namespace {shown}"),
                        e.to_string(),
                    )
                },
            )?;
            f()
        })
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot start a thread", e.to_string()))?;
    thread.join().unwrap_or_else(|_| {
        Err(CniError::new(
            code::IO_FAILURE,
            "the network-namespace thread panicked",
            "",
        ))
    })
}

/// Applies `init`'s rules in the pod's namespace (idempotent, like `init`).
pub fn program(netns: &Path, args: &InitArgs) -> Result<(), CniError> {
    let config = args.config().map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid interception settings",
            e.to_string(),
        )
    })?;
    in_netns(netns, move || {
        init::run(&config).map_err(|e| {
            CniError::new(
                code::INTERCEPTION_FAILED,
                "cannot program the pod's iptables rules",
                e.to_string(),
            )
        })
    })
}

/// Whether `save` (`iptables-save -t nat` output) intercepts as `args` asks: both jumps into
/// our chains, and each chain redirecting to its proxy port.
pub fn intercepts(save: &str, args: &InitArgs) -> bool {
    let has = |chain: &str, needle: &str| {
        save.lines()
            .any(|line| line.starts_with(&format!("-A {chain} ")) && line.contains(needle))
    };
    has("PREROUTING", &format!("-j {INBOUND_CHAIN}"))
        && has("OUTPUT", &format!("-j {OUTBOUND_CHAIN}"))
        && has(INBOUND_CHAIN, &format!("--to-ports {}", args.inbound_port))
        && has(
            OUTBOUND_CHAIN,
            &format!("--to-ports {}", args.outbound_port),
        )
}

/// CHECK: the pod's nat table (in either iptables backend) still intercepts.
pub fn verify(netns: &Path, args: &InitArgs) -> Result<(), CniError> {
    let args = args.clone();
    in_netns(netns, move || {
        let families: &[Family] = if args.ipv6 {
            &[Family::V4, Family::V6]
        } else {
            &[Family::V4]
        };
        for &family in families {
            let mut seen = Vec::new();
            let found = [Backend::Nft, Backend::Legacy].iter().any(|backend| {
                let program = backend.save_program(family);
                match Command::new(program).args(["-t", "nat"]).output() {
                    Ok(out) if out.status.success() => {
                        intercepts(&String::from_utf8_lossy(&out.stdout), &args)
                    }
                    Ok(out) => {
                        seen.push(format!("{program}: {}", out.status));
                        false
                    }
                    Err(e) => {
                        seen.push(format!("{program}: {e}"));
                        false
                    }
                }
            });
            if !found {
                return Err(CniError::new(
                    code::INTERCEPTION_MISSING,
                    format!("the pod's {family:?} nat table does not redirect to the proxy"),
                    seen.join("; "),
                ));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interception_needs_both_jumps_and_both_redirects() {
        let args = InitArgs::default();
        let save = "*nat\n\
            :MESHTRACE_INBOUND - [0:0]\n\
            -A PREROUTING -p tcp -m comment --comment \"meshtrace/inbound: intercept TCP\" -j MESHTRACE_INBOUND\n\
            -A OUTPUT -p tcp -m comment --comment \"meshtrace/outbound: intercept TCP\" -j MESHTRACE_OUTBOUND\n\
            -A MESHTRACE_INBOUND -p tcp -m comment --comment \"x\" -j REDIRECT --to-ports 4143\n\
            -A MESHTRACE_OUTBOUND -p tcp -m comment --comment \"y\" -j REDIRECT --to-ports 4140\n\
            COMMIT\n";
        assert!(intercepts(save, &args));
        let without_output_jump: String = save
            .lines()
            .filter(|l| !l.starts_with("-A OUTPUT"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!intercepts(&without_output_jump, &args));
        let other_port = InitArgs {
            inbound_port: 15006,
            ..InitArgs::default()
        };
        assert!(!intercepts(save, &other_port));
    }
}
