//! Comma-separated lists given to `init`: ports and ranges such as `8080,9000-9100` for
//! `--skip-inbound-ports`/`--skip-outbound-ports`, CIDRs for `--skip-outbound-subnets`.
//!
//! Parsed up front so a typo fails the init container with a precise message instead of
//! producing an iptables rule that silently matches nothing (or everything).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// One port or an inclusive range of ports (`9000-9100`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// A single port; `None` for port 0, which cannot be a destination.
    pub const fn single(port: u16) -> Option<Self> {
        if port == 0 {
            None
        } else {
            Some(Self {
                first: port,
                last: port,
            })
        }
    }

    pub const fn first(&self) -> u16 {
        self.first
    }

    pub const fn last(&self) -> u16 {
        self.last
    }

    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// The iptables spelling for `--dport`: `8080` or `9000:9100`.
    pub fn to_iptables(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}:{}", self.first, self.last)
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error("empty port")]
    Empty,
    #[error("{0:?} is not a port number between 1 and 65535")]
    NotAPort(String),
    #[error("port range {0:?} ends before it starts")]
    Reversed(String),
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(PortRangeError::Empty);
        }
        let parse_port = |p: &str| -> Result<u16, PortRangeError> {
            match p.trim().parse::<u16>() {
                Ok(port) if port != 0 => Ok(port),
                _ => Err(PortRangeError::NotAPort(p.trim().to_owned())),
            }
        };
        let (first, last) = match s.split_once('-') {
            Some((first, last)) => (parse_port(first)?, parse_port(last)?),
            None => {
                let port = parse_port(s)?;
                (port, port)
            }
        };
        if first > last {
            return Err(PortRangeError::Reversed(s.to_owned()));
        }
        Ok(Self { first, last })
    }
}

/// A comma-separated list of ports and ranges; empty input (for example an empty env variable)
/// is an empty list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(Vec<PortRange>);

impl PortList {
    pub fn new(ranges: Vec<PortRange>) -> Self {
        Self(ranges)
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }
}

impl FromStr for PortList {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        s.split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

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

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn parses_ports_and_ranges() {
        let list: PortList = "8080, 9000-9100 ,22".parse().unwrap();
        assert_eq!(
            list.ranges(),
            &[range(8080, 8080), range(9000, 9100), range(22, 22)]
        );
        assert!(list.contains(9050));
        assert!(!list.contains(9101));
        assert_eq!(list.to_string(), "8080,9000-9100,22");
        assert_eq!(range(9000, 9100).to_iptables(), "9000:9100");
        assert_eq!(range(1, 1).to_iptables(), "1");
        assert_eq!("65535".parse::<PortRange>().unwrap(), range(65535, 65535));
        assert_eq!("7-7".parse::<PortRange>().unwrap(), range(7, 7));
    }

    #[test]
    fn empty_list_is_empty() {
        assert!("".parse::<PortList>().unwrap().is_empty());
        assert!("  ".parse::<PortList>().unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_input() {
        let cases = [
            ("0", PortRangeError::NotAPort("0".into())),
            ("65536", PortRangeError::NotAPort("65536".into())),
            ("http", PortRangeError::NotAPort("http".into())),
            ("-5", PortRangeError::NotAPort("".into())),
            ("5-", PortRangeError::NotAPort("".into())),
            ("1-2-3", PortRangeError::NotAPort("2-3".into())),
            ("9100-9000", PortRangeError::Reversed("9100-9000".into())),
            ("80,,90", PortRangeError::Empty),
            ("80,", PortRangeError::Empty),
            ("-1", PortRangeError::NotAPort("".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<PortList>(), Err(expected), "input {input:?}");
        }
    }

    #[test]
    fn port_zero_is_not_a_single_port() {
        assert_eq!(PortRange::single(0), None);
        assert_eq!(PortRange::single(4191), Some(range(4191, 4191)));
    }

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
