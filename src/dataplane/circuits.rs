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
        for map_name in [abi::CIRCUITS4_MAP, abi::CIRCUITS6_MAP] {
            let map = self.object.map(map_name)?;
            let wanted: HashMap<Vec<u8>, u32> = want
                .iter()
                .map(|(p, id)| (lpm_key(p), *id))
                .filter(|((m, _), _)| *m == map_name)
                .map(|((_, k), id)| (k, id))
                .collect();
            let stale: Vec<Vec<u8>> = map.keys().filter(|k| !wanted.contains_key(k)).collect();
            for k in stale {
                map.delete(&k)
                    .with_context(|| format!("{map_name}: removing a prefix"))?;
            }
            for (k, id) in &wanted {
                let current = map
                    .lookup(k, MapFlags::ANY)
                    .ok()
                    .flatten()
                    .and_then(|v| v.try_into().ok().map(u32::from_ne_bytes));
                if current != Some(*id) {
                    map.update(k, &id.to_ne_bytes(), MapFlags::ANY)
                        .with_context(|| {
                            format!(
                                "{map_name}: adding a prefix (at most {} per family)",
                                abi::MAX_CIRCUIT_PREFIXES
                            )
                        })?;
                }
            }
        }
        Ok(())
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
