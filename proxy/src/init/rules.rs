//! The nat-table rules of `init`, as `iptables-restore` input: a pure function of the flags and
//! of the table's current contents, so the exact rule set is unit-tested without touching a
//! kernel.
//!
//! Idempotence comes from two properties of `iptables-restore --noflush`: declaring our own
//! chains (`:MESHTRACE_INBOUND - [0:0]`) creates or flushes them, so their contents are always
//! exactly the generated set; and the jump rules from PREROUTING/OUTPUT, which live in chains we
//! do not own and must not flush, are only emitted when the current table lacks them.
//!
//! Interception design (the same as linkerd2-proxy-init's):
//! - Inbound: every TCP connection entering the pod is redirected to the proxy's inbound port,
//!   except ports listed as skipped and the proxy's admin port (probes and metrics scrapers must
//!   reach the admin server itself, not the inbound proxy).
//! - Outbound: every TCP connection the pod opens is redirected to the outbound port, except
//!   - connections opened by the proxy's uid (and gid): the proxy's own upstream connections,
//!     both outbound to other pods and inbound towards the local application, must reach their
//!     original destination instead of looping back into the proxy;
//!   - connections leaving via `lo`: these never leave the pod (localhost, and also the pod
//!     talking to its own pod IP, which Linux routes over `lo` through the local routing
//!     table), so an application calling itself by pod IP is *not* meshed and produces no spans;
//!   - skipped destination ports and subnets.
//!
//! Only TCP is matched (`-p tcp` on the jump rules), so DNS over UDP is never intercepted.

use std::fmt::Write as _;

use ipnet::IpNet;

use super::lists::SubnetList;
use meshtrace_ports::{PortList, PortRange};

pub const INBOUND_CHAIN: &str = "MESHTRACE_INBOUND";
pub const OUTBOUND_CHAIN: &str = "MESHTRACE_OUTBOUND";

/// Address family: which of `iptables`/`ip6tables` a rule set is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn matches(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// Everything the rule set depends on (the validated flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleConfig {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub skip_inbound_ports: PortList,
    pub skip_outbound_ports: PortList,
    pub skip_outbound_subnets: SubnetList,
}

/// `iptables-restore --noflush` input that brings the nat table of `family` to our rule set,
/// given the table's current contents (`iptables-save -t nat` output; empty if none).
pub fn restore_input(config: &RuleConfig, family: Family, current_nat: &str) -> String {
    let mut out = String::with_capacity(2048);
    out.push_str("*nat\n");
    let _ = writeln!(out, ":{INBOUND_CHAIN} - [0:0]");
    let _ = writeln!(out, ":{OUTBOUND_CHAIN} - [0:0]");
    inbound_chain(&mut out, config);
    outbound_chain(&mut out, config, family);
    jumps_into_our_chains(&mut out, current_nat);
    out.push_str("COMMIT\n");
    out
}

/// Our inbound chain: the admin port and the skipped ports return, all other TCP goes to the
/// proxy's inbound port.
fn inbound_chain(out: &mut String, config: &RuleConfig) {
    let admin = PortRange::single(config.admin_port);
    let skipped = config
        .skip_inbound_ports
        .ranges()
        .iter()
        .filter(|r| Some(**r) != admin);
    for range in admin.iter().chain(skipped) {
        let why = if Some(*range) == admin {
            format!("skip admin port {range}")
        } else {
            format!("skip port {range}")
        };
        return_port(out, INBOUND_CHAIN, range, &format!("inbound: {why}"));
    }
    rule(
        out,
        INBOUND_CHAIN,
        "-p tcp",
        &format!("inbound: redirect to proxy port {}", config.inbound_port),
        &format!("REDIRECT --to-ports {}", config.inbound_port),
    );
}

/// Our outbound chain: the proxy's own connections, loopback, the skipped ports and the skipped
/// subnets of `family` return, all other TCP goes to the proxy's outbound port.
fn outbound_chain(out: &mut String, config: &RuleConfig, family: Family) {
    let uid = config.proxy_uid;
    let owner = format!("-m owner --uid-owner {uid}");
    rule(
        out,
        OUTBOUND_CHAIN,
        &owner,
        &format!("outbound: proxy uid {uid}"),
        "RETURN",
    );
    if let Some(gid) = config.proxy_gid {
        let owner = format!("-m owner --gid-owner {gid}");
        rule(
            out,
            OUTBOUND_CHAIN,
            &owner,
            &format!("outbound: proxy gid {gid}"),
            "RETURN",
        );
    }
    rule(
        out,
        OUTBOUND_CHAIN,
        "-o lo",
        "outbound: loopback stays in the pod",
        "RETURN",
    );
    for range in config.skip_outbound_ports.ranges() {
        return_port(
            out,
            OUTBOUND_CHAIN,
            range,
            &format!("outbound: skip port {range}"),
        );
    }
    let subnets = config.skip_outbound_subnets.subnets().iter();
    for net in subnets.filter(|net| family.matches(net)) {
        rule(
            out,
            OUTBOUND_CHAIN,
            &format!("-d {net}"),
            &format!("outbound: skip subnet {net}"),
            "RETURN",
        );
    }
    rule(
        out,
        OUTBOUND_CHAIN,
        "-p tcp",
        &format!("outbound: redirect to proxy port {}", config.outbound_port),
        &format!("REDIRECT --to-ports {}", config.outbound_port),
    );
}

/// The jumps from PREROUTING and OUTPUT into our chains, unless the table already has them (so
/// that a re-run leaves one of each).
fn jumps_into_our_chains(out: &mut String, current_nat: &str) {
    let jumps = [
        ("PREROUTING", INBOUND_CHAIN, "inbound: intercept TCP"),
        ("OUTPUT", OUTBOUND_CHAIN, "outbound: intercept TCP"),
    ];
    for (from, to, comment) in jumps {
        if !has_jump(current_nat, from, to) {
            rule(out, from, "-p tcp", comment, to);
        }
    }
}

/// A rule in `chain` that lets TCP to the ports of `range` pass.
fn return_port(out: &mut String, chain: &str, range: &PortRange, comment: &str) {
    let matches = format!("-p tcp --dport {}", dport(range));
    rule(out, chain, &matches, comment, "RETURN");
}

/// The iptables spelling of a port range for `--dport`: `8080` or `9000:9100`.
fn dport(range: &PortRange) -> String {
    if range.first() == range.last() {
        range.first().to_string()
    } else {
        format!("{}:{}", range.first(), range.last())
    }
}

fn rule(out: &mut String, chain: &str, matches: &str, comment: &str, target: &str) {
    let _ = writeln!(
        out,
        "-A {chain} {matches} -m comment --comment \"meshtrace/{comment}\" -j {target}"
    );
}

/// Whether `iptables-save` output already has a rule in `from` jumping to `to` (in the nat
/// table).
pub fn has_jump(save_output: &str, from: &str, to: &str) -> bool {
    let mut in_nat = false;
    for line in save_output.lines() {
        let line = line.trim();
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        let mut tokens = line.split_whitespace();
        if tokens.next() != Some("-A") || tokens.next() != Some(from) {
            continue;
        }
        let tokens: Vec<&str> = tokens.collect();
        if tokens.windows(2).any(|w| w[0] == "-j" && w[1] == to) {
            return true;
        }
    }
    false
}

/// Number of rules in `iptables-save` output: how much a backend is already in use.
pub fn count_rules(save_output: &str) -> usize {
    save_output
        .lines()
        .filter(|line| line.starts_with("-A "))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of `init`'s defaults.
    fn config() -> RuleConfig {
        crate::config::InitArgs::default().config().unwrap().rules
    }

    #[test]
    fn default_rule_set() {
        let expected = "\
*nat
:MESHTRACE_INBOUND - [0:0]
:MESHTRACE_OUTBOUND - [0:0]
-A MESHTRACE_INBOUND -p tcp --dport 4191 -m comment --comment \"meshtrace/inbound: skip admin port 4191\" -j RETURN
-A MESHTRACE_INBOUND -p tcp -m comment --comment \"meshtrace/inbound: redirect to proxy port 4143\" -j REDIRECT --to-ports 4143
-A MESHTRACE_OUTBOUND -m owner --uid-owner 2102 -m comment --comment \"meshtrace/outbound: proxy uid 2102\" -j RETURN
-A MESHTRACE_OUTBOUND -o lo -m comment --comment \"meshtrace/outbound: loopback stays in the pod\" -j RETURN
-A MESHTRACE_OUTBOUND -p tcp -m comment --comment \"meshtrace/outbound: redirect to proxy port 4140\" -j REDIRECT --to-ports 4140
-A PREROUTING -p tcp -m comment --comment \"meshtrace/inbound: intercept TCP\" -j MESHTRACE_INBOUND
-A OUTPUT -p tcp -m comment --comment \"meshtrace/outbound: intercept TCP\" -j MESHTRACE_OUTBOUND
COMMIT
";
        assert_eq!(restore_input(&config(), Family::V4, ""), expected);
    }

    #[test]
    fn skips_gid_ports_and_subnets_per_family() {
        let config = RuleConfig {
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 9901,
            proxy_uid: 1337,
            proxy_gid: Some(1338),
            skip_inbound_ports: "22,9901,8000-8010".parse().unwrap(),
            skip_outbound_ports: "5432".parse().unwrap(),
            skip_outbound_subnets: "169.254.0.0/16,fd00::/8".parse().unwrap(),
        };
        let v4 = restore_input(&config, Family::V4, "");
        let rules: Vec<&str> = v4.lines().filter(|l| l.starts_with("-A")).collect();
        let expected = [
            "-A MESHTRACE_INBOUND -p tcp --dport 9901 -m comment --comment \"meshtrace/inbound: skip admin port 9901\" -j RETURN",
            "-A MESHTRACE_INBOUND -p tcp --dport 22 -m comment --comment \"meshtrace/inbound: skip port 22\" -j RETURN",
            "-A MESHTRACE_INBOUND -p tcp --dport 8000:8010 -m comment --comment \"meshtrace/inbound: skip port 8000-8010\" -j RETURN",
            "-A MESHTRACE_INBOUND -p tcp -m comment --comment \"meshtrace/inbound: redirect to proxy port 15006\" -j REDIRECT --to-ports 15006",
            "-A MESHTRACE_OUTBOUND -m owner --uid-owner 1337 -m comment --comment \"meshtrace/outbound: proxy uid 1337\" -j RETURN",
            "-A MESHTRACE_OUTBOUND -m owner --gid-owner 1338 -m comment --comment \"meshtrace/outbound: proxy gid 1338\" -j RETURN",
            "-A MESHTRACE_OUTBOUND -o lo -m comment --comment \"meshtrace/outbound: loopback stays in the pod\" -j RETURN",
            "-A MESHTRACE_OUTBOUND -p tcp --dport 5432 -m comment --comment \"meshtrace/outbound: skip port 5432\" -j RETURN",
            "-A MESHTRACE_OUTBOUND -d 169.254.0.0/16 -m comment --comment \"meshtrace/outbound: skip subnet 169.254.0.0/16\" -j RETURN",
            "-A MESHTRACE_OUTBOUND -p tcp -m comment --comment \"meshtrace/outbound: redirect to proxy port 15001\" -j REDIRECT --to-ports 15001",
            "-A PREROUTING -p tcp -m comment --comment \"meshtrace/inbound: intercept TCP\" -j MESHTRACE_INBOUND",
            "-A OUTPUT -p tcp -m comment --comment \"meshtrace/outbound: intercept TCP\" -j MESHTRACE_OUTBOUND",
        ];
        assert_eq!(rules, expected);

        let v6 = restore_input(&config, Family::V6, "");
        assert!(v6.contains("-d fd00::/8 "), "{v6}");
        assert!(!v6.contains("169.254"), "{v6}");
        assert!(!v4.contains("fd00"), "{v4}");
    }

    /// The second run against the table the first run produced only re-declares (flushes and
    /// refills) our chains; it adds no second jump rule.
    #[test]
    fn jumps_are_emitted_only_when_missing() {
        let after_first_run = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:MESHTRACE_INBOUND - [0:0]
:MESHTRACE_OUTBOUND - [0:0]
-A PREROUTING -p tcp -m comment --comment \"meshtrace/inbound: intercept TCP\" -j MESHTRACE_INBOUND
-A OUTPUT -p tcp -m comment --comment \"meshtrace/outbound: intercept TCP\" -j MESHTRACE_OUTBOUND
-A MESHTRACE_INBOUND -p tcp -m tcp --dport 4191 -j RETURN
COMMIT
";
        let second = restore_input(&config(), Family::V4, after_first_run);
        assert!(!second.contains("-A PREROUTING"), "{second}");
        assert!(!second.contains("-A OUTPUT"), "{second}");
        assert!(second.contains(":MESHTRACE_INBOUND - [0:0]"));
        assert!(second.contains("-j REDIRECT --to-ports 4143"));

        // Only the inbound jump present: the outbound one is still added.
        let partial = "*nat\n-A PREROUTING -p tcp -j MESHTRACE_INBOUND\nCOMMIT\n";
        let third = restore_input(&config(), Family::V4, partial);
        assert!(!third.contains("-A PREROUTING"), "{third}");
        assert!(third.contains("-A OUTPUT -p tcp"), "{third}");
    }

    #[test]
    fn jump_detection_is_per_table_and_chain() {
        let mangle_only = "*mangle\n-A PREROUTING -j MESHTRACE_INBOUND\nCOMMIT\n";
        assert!(!has_jump(mangle_only, "PREROUTING", INBOUND_CHAIN));
        let other_chain = "*nat\n-A OUTPUT -j MESHTRACE_INBOUND\nCOMMIT\n";
        assert!(!has_jump(other_chain, "PREROUTING", INBOUND_CHAIN));
        assert!(has_jump(other_chain, "OUTPUT", INBOUND_CHAIN));
        let prefix_name = "*nat\n-A OUTPUT -j MESHTRACE_OUTBOUND_OLD\nCOMMIT\n";
        assert!(!has_jump(prefix_name, "OUTPUT", OUTBOUND_CHAIN));
    }

    #[test]
    fn counts_rules_across_tables() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n*nat\n-A OUTPUT -j X\n-A X -j RETURN\nCOMMIT\n";
        assert_eq!(count_rules(save), 3);
        assert_eq!(count_rules(""), 0);
    }

    #[test]
    fn port_ranges_in_iptables_spelling() {
        let range = |s: &str| s.parse::<PortRange>().unwrap();
        assert_eq!(dport(&range("9000-9100")), "9000:9100");
        assert_eq!(dport(&range("1")), "1");
        assert_eq!(dport(&range("7-7")), "7");
    }
}
