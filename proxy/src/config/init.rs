//! The flags of `meshtrace-proxy init` (`MESHTRACE_INIT_*` variables), validated into the
//! [`InitConfig`] the iptables step runs from.

use meshtrace_ports::PortList;

use crate::init::{InitConfig, InitError, RuleConfig, SubnetList};

/// `--iptables-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum IptablesMode {
    /// Use the backend that already has rules; else nft if it works; else legacy.
    #[default]
    Auto,
    /// `iptables-nft` (nf_tables kernel API).
    Nft,
    /// `iptables-legacy` (xtables kernel API).
    Legacy,
}

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

    /// The validated configuration: three distinct proxy ports, the inbound port not skipped.
    pub fn config(&self) -> Result<InitConfig, InitError> {
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
        let rules = RuleConfig {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_port: self.admin_port,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            skip_inbound_ports: self.skip_inbound_ports.clone(),
            skip_outbound_ports: self.skip_outbound_ports.clone(),
            skip_outbound_subnets: self.skip_outbound_subnets.clone(),
        };
        Ok(InitConfig {
            rules,
            iptables_mode: self.iptables_mode,
            ipv6: self.ipv6,
            dry_run: self.dry_run,
        })
    }
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
        let err = same.config().unwrap_err().to_string();
        assert!(err.contains("--inbound-port and --admin-port"), "{err}");

        let skipped = InitArgs {
            skip_inbound_ports: "4000-4200".parse().unwrap(),
            ..InitArgs::default()
        };
        assert!(matches!(skipped.config(), Err(InitError::InvalidConfig(_))));
    }
}
