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

pub use backend::{choose_backend, Backend, IptablesMode, Probe};
pub use lists::{SubnetError, SubnetList};
pub use meshtrace_ports::{PortList, PortRange, PortRangeError};
pub use rules::{restore_input, Family, RuleConfig, INBOUND_CHAIN, OUTBOUND_CHAIN};

/// Flags of `meshtrace-proxy init`. Every flag can also be set through the `MESHTRACE_INIT_*`
/// environment variable named in its help.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct InitArgs {
    /// Port of the proxy's inbound listener: TCP connections entering the pod are redirected
    /// to it.
    #[arg(long, env = "MESHTRACE_INIT_INBOUND_PORT", default_value_t = 4143,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,

    /// Port of the proxy's outbound listener: TCP connections the application opens are
    /// redirected to it.
    #[arg(long, env = "MESHTRACE_INIT_OUTBOUND_PORT", default_value_t = 4140,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,

    /// Port of the proxy's admin server (probes, metrics): never redirected inbound.
    #[arg(long, env = "MESHTRACE_INIT_ADMIN_PORT", default_value_t = 4191,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub admin_port: u16,

    /// User id the proxy runs as: its own connections are never redirected.
    #[arg(long, env = "MESHTRACE_INIT_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,

    /// Group id the proxy runs as: when set, connections of this group are not redirected
    /// either.
    #[arg(long, env = "MESHTRACE_INIT_PROXY_GID")]
    pub proxy_gid: Option<u32>,

    /// Inbound destination ports that bypass the proxy, comma-separated ports and ranges
    /// (`8080,9000-9100`). The admin port is always skipped.
    #[arg(
        long,
        env = "MESHTRACE_INIT_SKIP_INBOUND_PORTS",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    pub skip_inbound_ports: PortList,

    /// Outbound destination ports that bypass the proxy, comma-separated ports and ranges
    /// (`5432,9000-9100`).
    #[arg(
        long,
        env = "MESHTRACE_INIT_SKIP_OUTBOUND_PORTS",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    pub skip_outbound_ports: PortList,

    /// Outbound destination subnets that bypass the proxy, comma-separated CIDRs
    /// (`169.254.169.254/32,fd00::/8`); IPv6 subnets apply only with --ipv6.
    #[arg(
        long,
        env = "MESHTRACE_INIT_SKIP_OUTBOUND_SUBNETS",
        default_value = "",
        hide_default_value = true,
        value_name = "CIDRS"
    )]
    pub skip_outbound_subnets: SubnetList,

    /// iptables backend: `auto` uses the one that already has rules, else nft if `iptables-nft`
    /// works, else legacy.
    #[arg(long, env = "MESHTRACE_INIT_IPTABLES_MODE", value_enum, default_value_t = IptablesMode::Auto)]
    pub iptables_mode: IptablesMode,

    /// Also program ip6tables with the same rules.
    #[arg(long, env = "MESHTRACE_INIT_IPV6", value_parser = clap::builder::BoolishValueParser::new())]
    pub ipv6: bool,

    /// Print the commands (and the rules they would load) instead of running them; reads the
    /// current tables to choose the backend but changes nothing.
    #[arg(long, env = "MESHTRACE_INIT_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new())]
    pub dry_run: bool,
}

impl Default for InitArgs {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        Self {
            inbound_port: 4143,
            outbound_port: 4140,
            admin_port: 4191,
            proxy_uid: 2102,
            proxy_gid: None,
            skip_inbound_ports: PortList::default(),
            skip_outbound_ports: PortList::default(),
            skip_outbound_subnets: SubnetList::default(),
            iptables_mode: IptablesMode::Auto,
            ipv6: false,
            dry_run: false,
        }
    }
}

impl InitArgs {
    /// Parses `init`'s flags (the first item is the command name), for callers that build the
    /// arguments themselves, such as tests.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Init {
            #[command(flatten)]
            args: InitArgs,
        }
        <Init as clap::Parser>::try_parse_from(args).map(|init| init.args)
    }

    fn rule_config(&self) -> Result<RuleConfig, InitError> {
        let ports = [
            ("--inbound-port", self.inbound_port),
            ("--outbound-port", self.outbound_port),
            ("--admin-port", self.admin_port),
        ];
        for (i, (flag_a, a)) in ports.iter().enumerate() {
            for (flag_b, b) in &ports[i + 1..] {
                if a == b {
                    return Err(InitError::InvalidConfig(format!(
                        "{flag_a} and {flag_b} are both {a}; the proxy needs three distinct ports"
                    )));
                }
            }
        }
        if self.skip_inbound_ports.contains(self.inbound_port) {
            return Err(InitError::InvalidConfig(format!(
                "--skip-inbound-ports includes the inbound port {}",
                self.inbound_port
            )));
        }
        Ok(RuleConfig {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_port: self.admin_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            skip_inbound_ports: self.skip_inbound_ports.clone(),
            skip_outbound_ports: self.skip_outbound_ports.clone(),
            skip_outbound_subnets: self.skip_outbound_subnets.clone(),
        })
    }
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
pub fn plan(args: &InitArgs) -> Result<Plan, InitError> {
    let config = args.rule_config()?;
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
                input: restore_input(&config, family, &current),
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
pub fn run(args: &InitArgs) -> Result<(), InitError> {
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
        inbound_port = args.inbound_port,
        outbound_port = args.outbound_port,
        admin_port = args.admin_port,
        proxy_uid = args.proxy_uid,
        "programmed the nat table"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_flags() {
        let parsed = InitArgs::try_parse_from(["init"]).unwrap();
        assert_eq!(parsed, InitArgs::default());
    }

    #[test]
    fn parses_every_flag() {
        let parsed = InitArgs::try_parse_from([
            "init",
            "--inbound-port=15006",
            "--outbound-port=15001",
            "--admin-port=15020",
            "--proxy-uid=1337",
            "--proxy-gid=1338",
            "--skip-inbound-ports=22,8000-8010",
            "--skip-outbound-ports=5432",
            "--skip-outbound-subnets=169.254.169.254/32,fd00::/8",
            "--iptables-mode=legacy",
            "--ipv6",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(
            parsed,
            InitArgs {
                inbound_port: 15006,
                outbound_port: 15001,
                admin_port: 15020,
                proxy_uid: 1337,
                proxy_gid: Some(1338),
                skip_inbound_ports: "22,8000-8010".parse().unwrap(),
                skip_outbound_ports: "5432".parse().unwrap(),
                skip_outbound_subnets: "169.254.169.254/32,fd00::/8".parse().unwrap(),
                iptables_mode: IptablesMode::Legacy,
                ipv6: true,
                dry_run: true,
            }
        );
    }

    #[test]
    fn rejects_bad_flags() {
        for bad in [
            ["init", "--skip-inbound-ports=80,x"],
            ["init", "--skip-outbound-ports=9-1"],
            ["init", "--skip-outbound-subnets=10.0.0.0/40"],
            ["init", "--inbound-port=0"],
            ["init", "--outbound-port=70000"],
            ["init", "--iptables-mode=bpf"],
        ] {
            let err = InitArgs::try_parse_from(bad).unwrap_err().to_string();
            assert!(
                err.contains(bad[1].split('=').next().unwrap()),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn rejects_clashing_ports() {
        let same = InitArgs {
            admin_port: 4143,
            ..InitArgs::default()
        };
        let err = same.rule_config().unwrap_err().to_string();
        assert!(err.contains("--inbound-port and --admin-port"), "{err}");

        let skipped = InitArgs {
            skip_inbound_ports: "4000-4200".parse().unwrap(),
            ..InitArgs::default()
        };
        assert!(matches!(
            skipped.rule_config(),
            Err(InitError::InvalidConfig(_))
        ));
    }

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
