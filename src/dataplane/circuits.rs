//! The data path's side of per-circuit shaping (`bpfqos_abi.h`, "Circuits"): the circuits'
//! prefixes in the LPM tries, the NATed connections of circuits' hosts in `circuit_nat`, and
//! which devices classify (flags in `shaping`, the upload classifier on TC egress).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsFd;

use anyhow::Context;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;

use super::abi;
use super::attach::TcSlot;
use super::Dataplane;
use super::Device;
use crate::config::IpPrefix;

/// A connection as seen on the WAN side of the router: the router's end (`local`, after source
/// NAT) and the far end. Upload packets carry it as (source, destination), download packets
/// reversed; the data path looks both up under this one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WanTuple {
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    /// The router's WAN-side address.
    pub local: IpAddr,
    /// Its port.
    pub local_port: u16,
    /// The far end's address (same family as `local`).
    pub remote: IpAddr,
    /// Its port.
    pub remote_port: u16,
}

/// The `circuit_nat` key of a tuple (`None` for mixed families).
pub fn nat_key(t: &WanTuple) -> Option<abi::NatKey> {
    let mut k = abi::NatKey {
        proto: t.proto,
        local_port: abi::be16(t.local_port),
        remote_port: abi::be16(t.remote_port),
        ..Default::default()
    };
    match (t.local, t.remote) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            k.local[0] = abi::ip4(l);
            k.remote[0] = abi::ip4(r);
        }
        (IpAddr::V6(l), IpAddr::V6(r)) => {
            k.ipv6 = 1;
            k.local = abi::ip6(l);
            k.remote = abi::ip6(r);
        }
        _ => return None,
    }
    Some(k)
}

/// The LPM key of a prefix, with the map it belongs in.
fn lpm_key(p: &IpPrefix) -> (&'static str, Vec<u8>) {
    match p.addr {
        IpAddr::V4(a) => {
            let k = abi::Lpm4Key {
                prefixlen: u32::from(p.len),
                addr: abi::ip4(a),
            };
            (abi::CIRCUITS4_MAP, abi::bytes_of(&k).to_vec())
        }
        IpAddr::V6(a) => {
            let k = abi::Lpm6Key {
                prefixlen: u32::from(p.len),
                addr: abi::ip6(a),
            };
            (abi::CIRCUITS6_MAP, abi::bytes_of(&k).to_vec())
        }
    }
}

impl Dataplane {
    /// Makes the prefix tries hold exactly `want` (prefix, circuit id): entries no longer
    /// wanted go, new or changed ones are written, the rest is not touched (a packet of an
    /// unchanged circuit never misses its class during a reload).
    pub fn sync_circuit_prefixes(&self, want: &[(IpPrefix, u32)]) -> anyhow::Result<()> {
        let mut cache = self.circuit_prefixes.borrow_mut();
        // What the tries hold: read once (they may come from a pin of an earlier daemon),
        // then known from what was written since.
        if cache.is_none() {
            *cache = Some(self.read_circuit_prefixes()?);
        }
        let Some(have) = cache.as_mut() else {
            return Ok(());
        };
        let wanted: HashMap<IpPrefix, u32> = want.iter().copied().collect();
        let stale: Vec<IpPrefix> = have
            .keys()
            .filter(|p| !wanted.contains_key(*p))
            .copied()
            .collect();
        for p in stale {
            let (map_name, key) = lpm_key(&p);
            // Gone already (someone else's hand): fine, the goal is its absence.
            let _ = self.object.map(map_name)?.delete(&key);
            have.remove(&p);
        }
        for (p, id) in wanted {
            if have.get(&p) == Some(&id) {
                continue;
            }
            let (map_name, key) = lpm_key(&p);
            if let Err(e) =
                self.object
                    .map(map_name)?
                    .update(&key, &id.to_ne_bytes(), MapFlags::ANY)
            {
                // Unknown state now: read it again next time.
                *cache = None;
                return Err(e).with_context(|| {
                    format!(
                        "{map_name}: adding {p} (at most {} prefixes per family)",
                        abi::MAX_CIRCUIT_PREFIXES
                    )
                });
            }
            have.insert(p, id);
        }
        Ok(())
    }

    /// Every prefix in the circuit tries, with its circuit id.
    fn read_circuit_prefixes(&self) -> anyhow::Result<HashMap<IpPrefix, u32>> {
        let mut out = HashMap::new();
        for map_name in [abi::CIRCUITS4_MAP, abi::CIRCUITS6_MAP] {
            let map = self.object.map(map_name)?;
            for k in map.keys() {
                let Some(v) = map.lookup(&k, MapFlags::ANY).ok().flatten() else {
                    continue;
                };
                let Ok(id) = <[u8; 4]>::try_from(v.as_slice()).map(u32::from_ne_bytes) else {
                    continue;
                };
                let prefix = if let Some(k4) = abi::from_bytes::<abi::Lpm4Key>(&k) {
                    IpPrefix::network(
                        IpAddr::V4(std::net::Ipv4Addr::from(k4.addr.to_ne_bytes())),
                        k4.prefixlen as u8,
                    )
                } else if let Some(k6) = abi::from_bytes::<abi::Lpm6Key>(&k) {
                    let mut b = [0u8; 16];
                    for (i, w) in k6.addr.iter().enumerate() {
                        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                    }
                    IpPrefix::network(IpAddr::V6(std::net::Ipv6Addr::from(b)), k6.prefixlen as u8)
                } else {
                    continue;
                };
                out.insert(prefix, id);
            }
        }
        Ok(out)
    }

    /// Records that connection `t` belongs to circuit `id`.
    pub fn set_circuit_nat(&self, t: &WanTuple, id: u32) -> anyhow::Result<()> {
        let Some(k) = nat_key(t) else {
            return Ok(());
        };
        self.object
            .map(abi::CIRCUIT_NAT_MAP)?
            .update(abi::bytes_of(&k), &id.to_ne_bytes(), MapFlags::ANY)
            .context("circuit_nat full")
    }

    /// Forgets connection `t` (absent: nothing to do).
    pub fn remove_circuit_nat(&self, t: &WanTuple) {
        if let (Some(k), Ok(map)) = (nat_key(t), self.object.map(abi::CIRCUIT_NAT_MAP)) {
            let _ = map.delete(abi::bytes_of(&k));
        }
    }

    /// Empties `circuit_nat`; returns how many entries it held.
    pub fn clear_circuit_nat(&self) -> usize {
        let Ok(map) = self.object.map(abi::CIRCUIT_NAT_MAP) else {
            return 0;
        };
        let keys: Vec<Vec<u8>> = map.keys().collect();
        for k in &keys {
            let _ = map.delete(k);
        }
        keys.len()
    }

    /// Entries of `circuit_nat` (connections of circuits' hosts behind NAT).
    pub fn circuit_nat_len(&self) -> usize {
        self.object
            .map(abi::CIRCUIT_NAT_MAP)
            .map(|m| m.keys().count())
            .unwrap_or(0)
    }

    /// Classifies (or stops classifying) what leaves by `l3` into circuits: the classifier on
    /// its TC egress, its flags in `shaping`. `no_l2`: its packets start at IP (PPP).
    pub fn classify_upload(&mut self, l3: &Device, no_l2: bool, on: bool) -> anyhow::Result<()> {
        if on {
            self.update_shaping(l3.ifindex, |s| {
                s.flags |= abi::SHAPE_F_CIRCUITS_UP;
                if no_l2 {
                    s.flags |= abi::SHAPE_F_UP_NO_L2;
                } else {
                    s.flags &= !abi::SHAPE_F_UP_NO_L2;
                }
            })?;
            self.hooks
                .attach_tc(&l3.name, self.up_classify.as_fd(), TcSlot::CLASSIFY)
        } else {
            self.hooks
                .detach_tc(&l3.name, self.up_classify.as_fd(), TcSlot::CLASSIFY);
            self.update_shaping(l3.ifindex, |s| {
                s.flags &= !(abi::SHAPE_F_CIRCUITS_UP | abi::SHAPE_F_UP_NO_L2);
            })
        }
    }

    /// Classifies (or stops classifying) downloads into circuits, for `l3`'s kernel path and
    /// for offloaded frames sent into `shaper` (the download shaper's first end).
    pub fn classify_download(&self, l3: u32, shaper: u32, on: bool) -> anyhow::Result<()> {
        for ifindex in [l3, shaper] {
            self.update_shaping(ifindex, |s| {
                if on {
                    s.flags |= abi::SHAPE_F_CIRCUITS_DOWN;
                } else {
                    s.flags &= !abi::SHAPE_F_CIRCUITS_DOWN;
                }
            })?;
        }
        Ok(())
    }
}
