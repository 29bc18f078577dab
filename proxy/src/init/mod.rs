//! `meshtrace-proxy init`: the iptables step run once by the pod's init container, so that the
//! application's connections reach the proxy without configuring the application.
//!
//! It programs the pod's nat table (see [`rules`] for the exact rule set and why each rule is
//! there) through one `iptables-restore --noflush` call per address family, which applies all
//! rules atomically and, re-run, leaves exactly one set of rules.

mod backend;
mod lists;
mod rules;

use std::fmt;
use std::process::ExitStatus;

pub use crate::config::IptablesMode;
pub use backend::{choose_backend, Backend, Probe};
pub use lists::{SubnetError, SubnetList};
pub use meshtrace_ports::{PortList, PortRange, PortRangeError};
pub use rules::{restore_input, Family, RuleConfig, INBOUND_CHAIN, OUTBOUND_CHAIN};

/// What `init` programs, validated (built by [`crate::config::InitArgs::config`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConfig {
    pub rules: RuleConfig,
    pub iptables_mode: IptablesMode,
    /// Also program ip6tables.
    pub ipv6: bool,
    /// Print the plan instead of running it.
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("invalid init configuration: {0}")]
    InvalidConfig(String),
    #[error("could not run `{command}`: {source} (is iptables installed and on PATH?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("no usable iptables backend (--iptables-mode auto): legacy: {legacy}; nft: {nft}")]
    NoBackend { legacy: String, nft: String },
}

/// The commands `init` runs: one `*-restore --noflush` per address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub backend: Backend,
    pub steps: Vec<RestoreStep>,
    /// What a dry run had to assume because the current state could not be read.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreStep {
    pub family: Family,
    pub program: &'static str,
    pub args: Vec<&'static str>,
    /// The rules, fed on stdin.
    pub input: String,
}

/// `--noflush`: keep the rest of the table; `--wait`: legacy iptables serializes writers on a
/// host-wide lock file shared by every pod on the node.
const RESTORE_ARGS: [&str; 3] = ["--noflush", "--wait", "10"];

impl fmt::Display for Plan {
    /// As a shell script a person can read or run.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# meshtrace-proxy init: iptables backend {}",
            self.backend.name()
        )?;
        for note in &self.notes {
            writeln!(f, "# note: {note}")?;
        }
        for step in &self.steps {
            writeln!(
                f,
                "{} <<'EOF'\n{}EOF",
                backend::command_line(step.program, &step.args),
                step.input
            )?;
        }
        Ok(())
    }
}

/// Decides what to run without changing anything: chooses the backend and reads the current
/// nat tables (read-only `*-save` commands) to keep the result idempotent.
///
/// With `--dry-run`, iptables being unusable here (previewing on a workstation, say) is not an
/// error: the plan then assumes nft and empty tables, and says so in its notes.
pub fn plan(args: &InitConfig) -> Result<Plan, InitError> {
    let config = &args.rules;
    let mut notes = Vec::new();
    let backend = match args.iptables_mode {
        IptablesMode::Nft => Backend::Nft,
        IptablesMode::Legacy => Backend::Legacy,
        IptablesMode::Auto => dry_run_fallback(
            args.dry_run,
            &mut notes,
            backend::detect(),
            Backend::Nft,
            "the nft backend",
        )?,
    };
    let families: &[Family] = if args.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    if !args.ipv6
        && config
            .skip_outbound_subnets
            .subnets()
            .iter()
            .any(|net| matches!(net, ipnet::IpNet::V6(_)))
    {
        tracing::warn!("--skip-outbound-subnets has IPv6 subnets but --ipv6 is off; ignoring them");
    }
    let steps = families
        .iter()
        .map(|&family| {
            let current = dry_run_fallback(
                args.dry_run,
                &mut notes,
                backend::run(backend.save_program(family), &["-t", "nat"], None),
                String::new(),
                "an empty nat table",
            )?;
            Ok(RestoreStep {
                family,
                program: backend.restore_program(family),
                args: RESTORE_ARGS.to_vec(),
                input: restore_input(config, family, &current),
            })
        })
        .collect::<Result<_, InitError>>()?;
    Ok(Plan {
        backend,
        steps,
        notes,
    })
}

fn dry_run_fallback<T>(
    dry_run: bool,
    notes: &mut Vec<String>,
    result: Result<T, InitError>,
    fallback: T,
    assumed: &str,
) -> Result<T, InitError> {
    match result {
        Err(e) if dry_run => {
            notes.push(format!("{e}; assuming {assumed}").replace('\n', " "));
            Ok(fallback)
        }
        other => other,
    }
}

/// Programs the pod's nat table (or, with `--dry-run`, prints what it would run).
///
/// The caller (`main`'s `init` subcommand) should print the error (its `Display` names the
/// failing command and carries iptables' stderr) and exit non-zero, so the init container fails
/// and the pod does not start without interception.
pub fn run(args: &InitConfig) -> Result<(), InitError> {
    let plan = plan(args)?;
    if args.dry_run {
        print!("{plan}");
        return Ok(());
    }
    for step in &plan.steps {
        backend::run(step.program, &step.args, Some(&step.input)).inspect_err(|_| {
            tracing::error!(input = %step.input, "iptables-restore rejected the rules");
        })?;
    }
    tracing::info!(
        backend = plan.backend.name(),
        ipv6 = args.ipv6,
        inbound_port = args.rules.inbound_port,
        outbound_port = args.rules.outbound_port,
        admin_port = args.rules.admin_port,
        proxy_uid = args.rules.proxy_uid,
        "programmed the nat table"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_prints_as_a_shell_script() {
        let plan = Plan {
            backend: Backend::Legacy,
            steps: vec![RestoreStep {
                family: Family::V4,
                program: "iptables-legacy-restore",
                args: RESTORE_ARGS.to_vec(),
                input: "*nat\nCOMMIT\n".into(),
            }],
            notes: vec!["could not read the table; assuming an empty nat table".into()],
        };
        assert_eq!(
            plan.to_string(),
            "# meshtrace-proxy init: iptables backend legacy\n\
             # note: could not read the table; assuming an empty nat table\n\
             iptables-legacy-restore --noflush --wait 10 <<'EOF'\n*nat\nCOMMIT\nEOF\n"
        );
    }
}
