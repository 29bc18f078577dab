//! The one port-list syntax of meshtrace, shared by `meshtrace-proxy run`
//! (`MESHTRACE_OPAQUE_PORTS`), `meshtrace-proxy init` (`MESHTRACE_INIT_SKIP_*_PORTS`) and the
//! injector's `meshtrace.io/*-ports` annotations, so that a value is valid in one place iff it is
//! valid in the others.
//!
//! The rule: a comma-separated list whose items are a port (`8080`) or an inclusive range
//! (`9000-9100`, low ≤ high); ports are 1 to 65535; spaces around items and numbers are ignored,
//! and so are empty items, so `""` (an empty environment variable) is the empty list and a
//! trailing comma is harmless.

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

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

/// An item of a port list that is not a port or a range.
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

fn parse_port(text: &str) -> Result<u16, PortRangeError> {
    let text = text.trim();
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(PortRangeError::NotAPort(text.to_owned())),
    }
}

/// A comma-separated list of ports and ranges (see the crate documentation for the rule).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(Vec<PortRange>);

/// A port list that does not parse: names the list and the item at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid port list {list:?}: {item}")]
pub struct PortListError {
    list: String,
    item: PortRangeError,
}

impl PortListError {
    /// What is wrong with the offending item.
    pub fn item(&self) -> &PortRangeError {
        &self.item
    }
}

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
        self.0.iter().any(|range| range.contains(port))
    }
}

impl FromStr for PortList {
    type Err = PortListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|item| !item.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
            .map_err(|item| PortListError {
                list: s.to_owned(),
                item,
            })
    }
}

impl fmt::Display for PortList {
    /// Normalized: no spaces, no empty items.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    fn item_error(input: &str) -> PortRangeError {
        input.parse::<PortList>().unwrap_err().item().clone()
    }

    #[test]
    fn parses_ports_and_ranges() {
        let list: PortList = "8080, 9000-9100 ,22, 1 - 3".parse().unwrap();
        assert_eq!(
            list.ranges(),
            &[
                range(8080, 8080),
                range(9000, 9100),
                range(22, 22),
                range(1, 3)
            ]
        );
        assert!(list.contains(9000) && list.contains(9050) && list.contains(9100));
        assert!(!list.contains(9101) && !list.contains(8999) && !list.contains(80));
        assert_eq!(list.to_string(), "8080,9000-9100,22,1-3");
        assert_eq!("65535".parse::<PortRange>(), Ok(range(65535, 65535)));
        assert_eq!("7-7".parse::<PortRange>(), Ok(range(7, 7)));
    }

    #[test]
    fn empty_lists_and_empty_items() {
        for empty in ["", "  ", ",", " , ,"] {
            assert!(empty.parse::<PortList>().unwrap().is_empty(), "{empty:?}");
        }
        let list: PortList = " 25, 8080 ,,9000-9100,".parse().unwrap();
        assert_eq!(list.to_string(), "25,8080,9000-9100");
    }

    #[test]
    fn rejects_what_is_not_a_port_or_range() {
        let not_a_port = |s: &str| PortRangeError::NotAPort(s.into());
        let cases = [
            ("0", not_a_port("0")),
            ("65536", not_a_port("65536")),
            ("70000", not_a_port("70000")),
            ("http", not_a_port("http")),
            ("-5", not_a_port("")),
            ("5-", not_a_port("")),
            ("-1", not_a_port("")),
            ("1-2-3", not_a_port("2-3")),
            ("0-10", not_a_port("0")),
            ("80,abc", not_a_port("abc")),
            ("9100-9000", PortRangeError::Reversed("9100-9000".into())),
            ("90-80", PortRangeError::Reversed("90-80".into())),
        ];
        for (input, expected) in cases {
            assert_eq!(item_error(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn errors_name_the_list_and_the_item() {
        let error = "25, 9100-9000".parse::<PortList>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid port list \"25, 9100-9000\": port range \"9100-9000\" ends before it starts"
        );
        let error = "80,x".parse::<PortList>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid port list \"80,x\": \"x\" is not a port number between 1 and 65535"
        );
    }

    #[test]
    fn port_zero_is_not_a_single_port() {
        assert_eq!(PortRange::single(0), None);
        assert_eq!(PortRange::single(4191), Some(range(4191, 4191)));
    }
}
