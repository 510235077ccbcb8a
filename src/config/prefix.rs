//! IP prefixes (`192.168.1.0/24`, `fd00:1::50`) as circuits use them.

use std::fmt;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::Serialize;
use serde::Serializer;

/// An IPv4 or IPv6 prefix: an address and a prefix length. A bare address is a host prefix
/// (/32, /128). Bits past the prefix length must be zero: `192.168.1.5/24` is rejected, like
/// `ip route` does, because it is ambiguous (a host, or its subnet?).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub len: u8,
}

/// Why a string is not an [`IpPrefix`]; the messages name the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Not an IPv4 or IPv6 address.
    #[error("expected an IPv4/IPv6 address or prefix, got '{0}'")]
    Address(String),
    /// The part after `/` is not a number in range.
    #[error("invalid prefix length in '{input}' (0..={max} for {family})")]
    Length {
        /// The whole input.
        input: String,
        /// 32 or 128.
        max: u8,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
    /// Bits past the prefix length are set.
    #[error("'{input}' has host bits set (did you mean {network}?)")]
    HostBits {
        /// The whole input.
        input: String,
        /// The prefix with host bits cleared.
        network: IpPrefix,
    },
}

impl IpPrefix {
    /// The prefix of length `len` that holds `addr` (host bits cleared; `len` capped at the
    /// family's width).
    pub fn network(addr: IpAddr, len: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                IpPrefix {
                    addr: IpAddr::V4(Ipv4Addr::from(mask4(u32::from(a), len))),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                IpPrefix {
                    addr: IpAddr::V6(Ipv6Addr::from(mask6(u128::from(a), len))),
                    len,
                }
            }
        }
    }

    /// Whether `other` lies inside this prefix (same family, at least as long, same leading
    /// bits). A prefix contains itself.
    pub fn contains(&self, other: &IpPrefix) -> bool {
        other.len >= self.len
            && match (self.addr, other.addr) {
                (IpAddr::V4(a), IpAddr::V4(b)) => mask4(u32::from(b), self.len) == u32::from(a),
                (IpAddr::V6(a), IpAddr::V6(b)) => mask6(u128::from(b), self.len) == u128::from(a),
                _ => false,
            }
    }
}

fn mask4(a: u32, len: u8) -> u32 {
    a.checked_shr(32 - u32::from(len))
        .unwrap_or(0)
        .checked_shl(32 - u32::from(len))
        .unwrap_or(0)
}

fn mask6(a: u128, len: u8) -> u128 {
    a.checked_shr(128 - u32::from(len))
        .unwrap_or(0)
        .checked_shl(128 - u32::from(len))
        .unwrap_or(0)
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr_part, len_part) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_part
            .parse()
            .map_err(|_| PrefixError::Address(s.to_owned()))?;
        let (max, family) = match addr {
            IpAddr::V4(_) => (32, "IPv4"),
            IpAddr::V6(_) => (128, "IPv6"),
        };
        let len = match len_part {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max && l.bytes().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| PrefixError::Length {
                    input: s.to_owned(),
                    max,
                    family,
                })?,
        };
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask4(u32::from(a), len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask6(u128::from(a), len))),
        };
        let prefix = IpPrefix { addr: network, len };
        if network != addr {
            return Err(PrefixError::HostBits {
                input: s.to_owned(),
                network: prefix,
            });
        }
        Ok(prefix)
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        match s.parse() {
            Ok(p) => p,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_hosts_and_prefixes() {
        assert_eq!(p("192.168.1.50").to_string(), "192.168.1.50/32");
        assert_eq!(p("192.168.1.0/24").to_string(), "192.168.1.0/24");
        assert_eq!(p("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(p("fd00:1::50").to_string(), "fd00:1::50/128");
        assert_eq!(p("fd00:1::/64").to_string(), "fd00:1::/64");
        assert_eq!(p("::/0").len, 0);
    }

    #[test]
    fn rejects_bad_input() {
        let err = |s: &str| s.parse::<IpPrefix>().err().map(|e| e.to_string());
        assert_eq!(
            err("192.168.1.300"),
            Some("expected an IPv4/IPv6 address or prefix, got '192.168.1.300'".into())
        );
        assert_eq!(
            err("10.0.0.0/33"),
            Some("invalid prefix length in '10.0.0.0/33' (0..=32 for IPv4)".into())
        );
        assert_eq!(
            err("fd00::/129"),
            Some("invalid prefix length in 'fd00::/129' (0..=128 for IPv6)".into())
        );
        assert!(err("10.0.0.0/").is_some());
        assert!(err("10.0.0.0/+8").is_some());
        assert!(err("fe80::1%eth0").is_some());
        assert_eq!(
            err("192.168.1.5/24"),
            Some("'192.168.1.5/24' has host bits set (did you mean 192.168.1.0/24?)".into())
        );
        assert_eq!(
            err("fd00:1::1/64"),
            Some("'fd00:1::1/64' has host bits set (did you mean fd00:1::/64?)".into())
        );
    }

    #[test]
    fn containment() {
        assert!(p("10.0.0.0/8").contains(&p("10.1.2.3")));
        assert!(!p("10.1.2.3").contains(&p("10.0.0.0/8")));
        assert!(!p("10.0.0.0/8").contains(&p("11.0.0.0/8")));
        assert!(p("0.0.0.0/0").contains(&p("1.2.3.4")));
        assert!(!p("::/0").contains(&p("1.2.3.4")));
        assert!(p("fd00::/8").contains(&p("fd00:1::50")));
    }
}
