//! Circuits as the shapers and the data path need them: a stable id per circuit (its HTB
//! class is `0xb9f:0x100+id` on every shaper, for as long as the circuit exists under that
//! name), longest-prefix lookup of a host's circuit, and the WAN-side tuple of a connection
//! whose LAN end belongs to a circuit (what the data path classifies NATed packets by).
//!
//! Pure: no netlink, no maps; unit-tested here.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;

use crate::config;
use crate::config::IpPrefix;
use crate::conntrack::Conn;
use crate::conntrack::Tuple;
use crate::dataplane::abi;
use crate::dataplane::circuits::WanTuple;

/// Circuit ids by name: an id stays with its circuit across reloads (its classes and map
/// entries keep meaning the same hosts), freed ids are reused lowest first.
#[derive(Debug, Default, Clone)]
pub struct CircuitIds {
    by_name: BTreeMap<String, u16>,
}

impl CircuitIds {
    /// Gives every circuit of `circuits` an id (keeping the ids of those that had one) and
    /// forgets the others. Circuits beyond `MAX_CIRCUITS` get none: they are reported by
    /// name.
    pub fn assign(&mut self, circuits: &[config::Circuit]) -> Vec<String> {
        let names: std::collections::HashSet<&str> =
            circuits.iter().map(|c| c.name.as_str()).collect();
        self.by_name.retain(|n, _| names.contains(n.as_str()));
        let mut used: Vec<bool> = vec![false; abi::MAX_CIRCUITS as usize + 1];
        for id in self.by_name.values() {
            used[usize::from(*id)] = true;
        }
        let mut next = 1usize;
        let mut left_out = Vec::new();
        for c in circuits {
            if self.by_name.contains_key(&c.name) {
                continue;
            }
            while next < used.len() && used[next] {
                next += 1;
            }
            if next >= used.len() {
                left_out.push(c.name.clone());
                continue;
            }
            used[next] = true;
            self.by_name.insert(c.name.clone(), next as u16);
        }
        left_out
    }

    /// The id of circuit `name`.
    pub fn get(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// The circuit of id `id`.
    pub fn name(&self, id: u16) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(n, _)| n.as_str())
    }
}

/// Longest-prefix lookup of a host's circuit id (the data path's LPM tries, in Rust).
#[derive(Debug, Default, Clone)]
pub struct Lookup {
    /// Prefix lengths present, longest first, per family (v4, v6).
    lens: (Vec<u8>, Vec<u8>),
    by_prefix: HashMap<IpPrefix, u16>,
}

impl Lookup {
    /// The lookup over `prefixes` (prefix, circuit id).
    pub fn new(prefixes: &[(IpPrefix, u16)]) -> Self {
        let mut l = Lookup::default();
        for (p, id) in prefixes {
            l.by_prefix.insert(*p, *id);
            let lens = if p.addr.is_ipv4() {
                &mut l.lens.0
            } else {
                &mut l.lens.1
            };
            if !lens.contains(&p.len) {
                lens.push(p.len);
            }
        }
        l.lens.0.sort_unstable_by(|a, b| b.cmp(a));
        l.lens.1.sort_unstable_by(|a, b| b.cmp(a));
        l
    }

    /// Every (prefix, circuit id) it holds.
    pub fn prefixes(&self) -> Vec<(IpPrefix, u16)> {
        self.by_prefix.iter().map(|(p, id)| (*p, *id)).collect()
    }

    /// Whether there is no prefix at all.
    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// The circuit of host `addr`.
    pub fn circuit_of(&self, addr: IpAddr) -> Option<u16> {
        let lens = if addr.is_ipv4() {
            &self.lens.0
        } else {
            &self.lens.1
        };
        lens.iter()
            .find_map(|len| self.by_prefix.get(&IpPrefix::network(addr, *len)))
            .copied()
    }

    /// A connection whose LAN end is a circuit's host and whose addresses NAT changed: its
    /// tuple on the WAN side and the circuit. `None` for connections the data path
    /// classifies by address alone (no NAT) or that belong to no circuit.
    ///
    /// Source NAT (a host's connection out): the original source is the host, the reply
    /// tuple is what the WAN side sees (its destination is the router's address).
    /// Destination NAT (a port forward to the host): the reply source is the host, the
    /// original tuple is the WAN side (its destination is the router's address).
    pub fn nat_entry(&self, conn: &Conn) -> Option<(WanTuple, u16)> {
        let wan = |t: &Tuple| WanTuple {
            proto: t.proto,
            local: t.dst,
            local_port: t.dport,
            remote: t.src,
            remote_port: t.sport,
        };
        let o = &conn.orig;
        let r = &conn.reply;
        if !matches!(
            o.proto,
            crate::conntrack::codec::IPPROTO_TCP | crate::conntrack::codec::IPPROTO_UDP
        ) {
            return None;
        }
        if let Some(id) = self.circuit_of(o.src) {
            // Without source NAT the reply goes to the host itself: its address decides.
            return (r.dst != o.src || r.dport != o.sport).then(|| (wan(r), id));
        }
        if let Some(id) = self.circuit_of(r.src) {
            return (o.dst != r.src || o.dport != r.sport).then(|| (wan(o), id));
        }
        None
    }
}

/// Every (prefix, circuit id) of `circuits` that has an id.
pub fn prefixes(circuits: &[config::Circuit], ids: &CircuitIds) -> Vec<(IpPrefix, u16)> {
    circuits
        .iter()
        .filter_map(|c| ids.get(&c.name).map(|id| (c, id)))
        .flat_map(|(c, id)| c.ips.iter().map(move |p| (*p, id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn circuit(name: &str, ips: &[&str]) -> config::Circuit {
        config::Circuit {
            name: name.into(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            upload_kbit: 1000,
            download_kbit: 2000,
        }
    }

    #[test]
    fn ids_stay_with_their_circuit_and_freed_ones_are_reused() {
        let mut ids = CircuitIds::default();
        let a = circuit("a", &["198.18.1.10"]);
        let b = circuit("b", &["198.18.1.11"]);
        let c = circuit("c", &["198.18.1.12"]);
        assert!(ids.assign(&[a.clone(), b.clone(), c.clone()]).is_empty());
        assert_eq!(
            (ids.get("a"), ids.get("b"), ids.get("c")),
            (Some(1), Some(2), Some(3))
        );
        // b goes, d comes, a moves to the end of the file: nobody else's id changes.
        let d = circuit("d", &["198.18.1.13"]);
        ids.assign(&[c.clone(), d.clone(), a.clone()]);
        assert_eq!(
            (ids.get("a"), ids.get("c"), ids.get("d")),
            (Some(1), Some(3), Some(2))
        );
        assert_eq!(ids.get("b"), None);
        assert_eq!(ids.name(2), Some("d"));
    }

    #[test]
    fn longest_prefix_wins_and_families_stay_apart() {
        let l = Lookup::new(&[
            ("198.18.0.0/16".parse().unwrap(), 1),
            ("198.18.1.0/24".parse().unwrap(), 2),
            ("fd00:1::/64".parse().unwrap(), 3),
        ]);
        assert_eq!(l.circuit_of("198.18.1.7".parse().unwrap()), Some(2));
        assert_eq!(l.circuit_of("198.18.2.7".parse().unwrap()), Some(1));
        assert_eq!(l.circuit_of("198.19.0.1".parse().unwrap()), None);
        assert_eq!(l.circuit_of("fd00:1::9".parse().unwrap()), Some(3));
        assert_eq!(l.circuit_of("fd00:2::9".parse().unwrap()), None);
    }

    fn tuple(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 6,
            sport,
            dport,
        }
    }

    fn conn(orig: Tuple, reply: Tuple) -> Conn {
        Conn::new(1, orig, reply)
    }

    #[test]
    fn nat_entries_name_the_wan_side_of_snat_and_dnat() {
        let l = Lookup::new(&[("198.18.1.11/32".parse().unwrap(), 4)]);
        // The host's connection out, masqueraded behind 198.18.100.10:40000.
        let snat = conn(
            tuple("198.18.1.11", 5555, "198.19.0.1", 443),
            tuple("198.19.0.1", 443, "198.18.100.10", 40000),
        );
        let (w, id) = l.nat_entry(&snat).unwrap();
        assert_eq!(id, 4);
        assert_eq!(
            (w.local, w.local_port, w.remote, w.remote_port),
            (
                IpAddr::V4(Ipv4Addr::new(198, 18, 100, 10)),
                40000,
                IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
                443
            )
        );
        // A port forward from the WAN to the host.
        let dnat = conn(
            tuple("198.19.0.1", 6000, "198.18.100.10", 8080),
            tuple("198.18.1.11", 80, "198.19.0.1", 6000),
        );
        let (w, id) = l.nat_entry(&dnat).unwrap();
        assert_eq!((id, w.local_port, w.remote_port), (4, 8080, 6000));
        // No NAT: the address decides, no entry needed.
        let plain = conn(
            tuple("198.18.1.11", 5555, "198.19.0.1", 443),
            tuple("198.19.0.1", 443, "198.18.1.11", 5555),
        );
        assert_eq!(l.nat_entry(&plain), None);
        // Somebody else's connection.
        let other = conn(
            tuple("198.18.1.12", 5555, "198.19.0.1", 443),
            tuple("198.19.0.1", 443, "198.18.100.10", 40001),
        );
        assert_eq!(l.nat_entry(&other), None);
    }
}
