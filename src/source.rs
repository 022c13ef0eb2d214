//! Where a peer comes from, for the per-source limits of listeners and
//! reliable-UDP endpoints (the table is `docs/security.md`).

use std::net::IpAddr;

/// A source: an IPv4 prefix (an address by default), an IPv6 prefix (a
/// /64 by default: what one subscriber is usually given), or, for Unix
/// sockets, the peer's uid. An IPv4-mapped IPv6 address (a dual-stack
/// socket's IPv4 peer) is IPv4: otherwise every IPv4 peer would share
/// `::ffff:0:0/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    /// The address masked to the IPv4 prefix.
    V4(u32),
    /// The address masked to the IPv6 prefix.
    V6(u128),
    Uid(u32),
}

impl Source {
    /// The source of an IP peer, keeping the leading `v4_prefix` bits of
    /// an IPv4 address (at most 32) and `v6_prefix` of an IPv6 one (at
    /// most 128).
    pub(crate) fn of_ip(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> Source {
        let v4 = |a: std::net::Ipv4Addr| {
            let bits = u32::from(v4_prefix.min(32));
            Source::V4(u32::from(a) & u32::MAX.checked_shl(32 - bits).unwrap_or(0))
        };
        match ip {
            IpAddr::V4(a) => v4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => v4(a),
                None => {
                    let bits = u32::from(v6_prefix.min(128));
                    Source::V6(u128::from(a) & u128::MAX.checked_shl(128 - bits).unwrap_or(0))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn prefixes_mask_and_mapped_addresses_are_ipv4() {
        let v6 = |s: &str, p| Source::of_ip(s.parse::<Ipv6Addr>().unwrap().into(), 32, p);
        assert_eq!(v6("2001:db8:0:1::1", 64), v6("2001:db8:0:1:ffff::2", 64));
        assert_ne!(v6("2001:db8:0:1::1", 64), v6("2001:db8:0:2::1", 64));
        assert_ne!(v6("2001:db8:0:1::1", 128), v6("2001:db8:0:1::2", 128));
        assert_eq!(v6("2001:db8::1", 0), v6("fe80::1", 0));
        let v4 = |a: [u8; 4], p| Source::of_ip(Ipv4Addr::from(a).into(), p, 64);
        assert_eq!(v4([10, 0, 0, 1], 32), Source::V4(0x0a00_0001));
        assert_eq!(v4([10, 0, 0, 1], 24), v4([10, 0, 0, 200], 24));
        assert_ne!(v4([10, 0, 0, 1], 24), v4([10, 0, 1, 1], 24));
        assert_eq!(v4([10, 0, 0, 1], 0), v4([192, 0, 2, 1], 0));
        assert_eq!(v6("::ffff:10.0.0.1", 64), v4([10, 0, 0, 1], 32));
        assert_ne!(v6("::ffff:10.0.0.1", 64), v6("::ffff:10.0.0.2", 64));
    }
}
