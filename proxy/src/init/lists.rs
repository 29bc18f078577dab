//! Comma-separated lists given to `init`: CIDRs for `--skip-outbound-subnets`; the port lists of
//! `--skip-inbound-ports`/`--skip-outbound-ports` are [`meshtrace_ports::PortList`], the syntax
//! `run` and the injector share.
//!
//! Parsed up front so a typo fails the init container with a precise message instead of
//! producing an iptables rule that silently matches nothing (or everything).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// A comma-separated list of CIDRs (`10.0.0.0/8,fd00::/8`); empty input is an empty list. A bare
/// address means that single host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubnetList(Vec<IpNet>);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a subnet (expected CIDR notation such as 10.0.0.0/8 or fd00::/8)")]
pub struct SubnetError {
    input: String,
}

impl SubnetList {
    pub fn new(subnets: Vec<IpNet>) -> Self {
        Self(subnets)
    }

    pub fn subnets(&self) -> &[IpNet] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for SubnetList {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        s.split(',')
            .map(|item| {
                let item = item.trim();
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| SubnetError {
                        input: item.to_owned(),
                    })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for SubnetList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subnets() {
        let list: SubnetList = "10.1.2.3/8, fd00::/8,192.0.2.7".parse().unwrap();
        let shown: Vec<String> = list.subnets().iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]);
        assert!("".parse::<SubnetList>().unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_subnets() {
        for input in [
            "10.0.0.0/33",
            "nope",
            "10.0.0.0/8,",
            "fd00::/129",
            "1.2.3/8",
        ] {
            assert!(input.parse::<SubnetList>().is_err(), "input {input:?}");
        }
        let err = "10.0.0.0/8,bogus".parse::<SubnetList>().unwrap_err();
        assert!(err.to_string().contains("\"bogus\""), "{err}");
    }
}
