//! Which IP addresses a webhook may reach (SPEC §5). By default the service never connects
//! to loopback, private, link-local, carrier-grade NAT, unique-local, unspecified,
//! multicast, broadcast, reserved or documentation addresses, nor to IPv6 forms that embed
//! such an IPv4 address (mapped, compatible, NAT64, 6to4). An operator's allow-list of CIDRs
//! is the only way in.
//!
//! Parsing of the many spellings of an address (decimal `2130706433`, octal, hex, short
//! forms) is left to the `url` crate, the same WHATWG parser the HTTP client uses, so the
//! address judged here is the address connected to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why `ip` is forbidden, or `None` when it is a public address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let reason = match o {
        [0, ..] => "unspecified or 'this network' address (0.0.0.0/8)",
        [10, ..] => "private address (10.0.0.0/8)",
        [100, b, ..] if (64..128).contains(&b) => "carrier-grade NAT address (100.64.0.0/10)",
        [127, ..] => "loopback address (127.0.0.0/8)",
        [169, 254, ..] => "link-local address (169.254.0.0/16)",
        [172, b, ..] if (16..32).contains(&b) => "private address (172.16.0.0/12)",
        [192, 0, 0, _] => "IETF protocol assignment (192.0.0.0/24)",
        [192, 0, 2, _] => "documentation address (192.0.2.0/24)",
        [192, 88, 99, _] => "6to4 relay anycast address (192.88.99.0/24)",
        [192, 168, ..] => "private address (192.168.0.0/16)",
        [198, 18 | 19, ..] => "benchmarking address (198.18.0.0/15)",
        [198, 51, 100, _] => "documentation address (198.51.100.0/24)",
        [203, 0, 113, _] => "documentation address (203.0.113.0/24)",
        [255, 255, 255, 255] => "broadcast address",
        [a, ..] if (224..240).contains(&a) => "multicast address (224.0.0.0/4)",
        [a, ..] if a >= 240 => "reserved address (240.0.0.0/4)",
        _ => return None,
    };
    Some(reason)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified address (::)");
    }
    if ip.is_loopback() {
        return Some("loopback address (::1)");
    }
    // Forms that carry an IPv4 address: judge the IPv4 address they lead to.
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4).or(None);
    }
    let reason = match s {
        [0x0064, 0xff9b, 0x0001, ..] => "local-use NAT64 address (64:ff9b:1::/48)",
        [0x0100, 0, 0, 0, ..] => "discard-only address (100::/64)",
        [0x2001, 0x0db8, ..] => "documentation address (2001:db8::/32)",
        [0x3fff, b, ..] if b < 0x1000 => "documentation address (3fff::/20)",
        [0x2001, b, ..] if b < 0x0200 => "IETF protocol assignment (2001::/23)",
        [a, ..] if a & 0xffc0 == 0xfe80 => "link-local address (fe80::/10)",
        [a, ..] if a & 0xffc0 == 0xfec0 => "site-local address (fec0::/10)",
        [a, ..] if a & 0xfe00 == 0xfc00 => "unique-local address (fc00::/7)",
        [a, ..] if a & 0xff00 == 0xff00 => "multicast address (ff00::/8)",
        [0, 0, 0, 0, 0, 0, _, _] => "reserved IPv4-compatible address (::/96)",
        [0, ..] => "reserved address (::/8)",
        _ => return None,
    };
    Some(reason)
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail()),
        // `::a.b.c.d`, but not `::` and `::1`, judged above.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail()),
        [0x0064, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail()),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => None,
    }
}

/// The operator's allow-list (`MOSEND_WEBHOOKS_ALLOWED_PRIVATE_CIDRS`): empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
}

impl AllowList {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    /// Parses `127.0.0.0/8,::1/128`; a bare address counts as a single-host network.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{item}` is not a CIDR such as 127.0.0.0/8"))?;
            nets.push(net);
        }
        Ok(Self { nets })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    fn covers(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.nets.iter().any(|n| n.contains(&ip) || v4.is_some_and(|v4| n.contains(&v4)))
    }

    /// `Err(reason)` when `ip` is forbidden and no allowed network covers it.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        match forbidden_reason(ip) {
            Some(reason) if !self.covers(ip) => Err(format!("{ip} is a {reason}")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        forbidden_reason(s.parse().unwrap()).is_some()
    }

    #[test]
    fn private_and_special_addresses_are_refused() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "64:ff9b:1::1",
        ] {
            assert!(refused(s), "{s} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for s in
            ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8"]
        {
            assert!(!refused(s), "{s} should be allowed");
        }
    }

    #[test]
    fn the_allow_list_lets_listed_networks_in_including_mapped_forms() {
        let allow = AllowList::parse("127.0.0.0/8, ::1/128").unwrap();
        assert!(allow.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(allow.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(allow.check("::1".parse().unwrap()).is_ok());
        assert!(allow.check("10.0.0.1".parse().unwrap()).is_err());
        assert!(AllowList::default().check("127.0.0.1".parse().unwrap()).is_err());
        assert!(AllowList::parse("not-a-cidr").is_err());
    }
}
