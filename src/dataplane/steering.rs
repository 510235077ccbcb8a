//! The data path's side of CPU steering (`bpf/include/steer.h`): the cpumap entries (a queue
//! and the counting program per CPU of the set), the set itself, the per-device switch, and
//! the per-CPU counters. What to steer is decided a layer up (the `steering` module).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::os::fd::AsRawFd;

use anyhow::Context;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use log::info;
use log::warn;

use super::abi;
use super::Dataplane;

/// One CPU's steering counters, summed over the CPUs that counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CpuCounters {
    /// CPU number.
    pub cpu: u32,
    /// Frames sent to this CPU through its queue.
    pub steered: u64,
    /// Frames whose hash chose this CPU while it received them (no queue needed).
    pub kept: u64,
    /// Frames that came out of this CPU's queue here (`steered` minus those in flight or
    /// dropped by a full queue).
    pub delivered: u64,
}

/// What the maps hold now (so that an unchanged plan rewrites nothing: a cpumap update
/// replaces the CPU's queue and its kernel thread).
#[derive(Debug, Default)]
pub(super) struct SteerState {
    cpus: Vec<u32>,
    queue: u32,
    devices: BTreeSet<u32>,
    /// The cpumap entries are ours (written by this process): a restart rewrites them once.
    written: bool,
}

impl SteerState {
    /// Entries of `steer_cpus` in use (0: the data path steers nothing).
    pub(super) fn n(&self) -> u32 {
        u32::try_from(self.cpus.len()).unwrap_or(0)
    }
}

impl Dataplane {
    /// Steers the frames XDP hands to the kernel on `devices` (ifindex, and whether a frame
    /// whose hash picks the receiving CPU may stay in place) over `cpus`, each with a queue of
    /// `queue` frames; empty `cpus` or `devices`: no steering anywhere.
    pub fn set_steering(&mut self, cpus: &[u32], queue: u32, devices: &[(u32, bool)]) {
        let cpus: Vec<u32> = if devices.is_empty() {
            Vec::new()
        } else {
            cpus.to_vec()
        };
        if let Err(e) = self.write_cpus(&cpus, queue) {
            warn!("CPU steering: {e:#}; steering stays off");
            let _ = self.write_cpus(&[], queue);
        }
        let want: BTreeMap<u32, bool> = if self.steer.n() >= 1 {
            devices.iter().copied().collect()
        } else {
            BTreeMap::new()
        };
        let both = abi::IFACE_F_STEER | abi::IFACE_F_STEER_HERE;
        let old = std::mem::take(&mut self.steer.devices);
        for &ifindex in old.iter().filter(|i| !want.contains_key(i)) {
            let _ = self.update_iface(ifindex, |v| v.flags &= !both);
        }
        for (&ifindex, &here) in &want {
            let flags = abi::IFACE_F_STEER | if here { abi::IFACE_F_STEER_HERE } else { 0 };
            match self.update_iface(ifindex, |v| v.flags = (v.flags & !both) | flags) {
                Ok(()) => {
                    self.steer.devices.insert(ifindex);
                }
                Err(e) => warn!("CPU steering on ifindex {ifindex}: {e:#}"),
            }
        }
    }

    /// The set and the cpumap entries. The count in `control` goes last on the way up (no
    /// frame is steered to a CPU without a queue) and first on the way down.
    fn write_cpus(&mut self, cpus: &[u32], queue: u32) -> anyhow::Result<()> {
        if self.steer.written && self.steer.cpus == cpus && self.steer.queue == queue {
            return Ok(());
        }
        let old = std::mem::take(&mut self.steer.cpus);
        // Down first: the data path stops steering before any queue changes.
        self.heartbeat().context("clearing the steering set")?;
        let cpu_map = self.object.map(abi::CPU_MAP)?;
        for c in old.iter().filter(|c| !cpus.contains(c)) {
            let _ = cpu_map.delete(&c.to_ne_bytes());
        }
        let set = self.object.map(abi::STEER_CPUS_MAP)?;
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&queue.to_ne_bytes());
        value[4..].copy_from_slice(&self.cpumap.as_raw_fd().to_ne_bytes());
        for (i, &c) in cpus.iter().enumerate() {
            if c >= abi::MAX_CPUS {
                anyhow::bail!("CPU {c} beyond the data path's {} CPUs", abi::MAX_CPUS);
            }
            cpu_map
                .update(&c.to_ne_bytes(), &value, MapFlags::ANY)
                .with_context(|| format!("creating CPU {c}'s queue ({queue} frames)"))?;
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            set.update(&i.to_ne_bytes(), &c.to_ne_bytes(), MapFlags::ANY)
                .with_context(|| format!("writing steer_cpus[{i}]"))?;
        }
        self.steer.cpus = cpus.to_vec();
        self.steer.queue = queue;
        self.steer.written = true;
        self.heartbeat().context("publishing the steering set")?;
        if cpus.is_empty() {
            if !old.is_empty() {
                info!("CPU steering off");
            }
        } else {
            info!("CPU steering over CPUs {cpus:?}, {queue} frames queued per CPU");
        }
        Ok(())
    }

    /// The PPPoE sessions the data path holds on their receiving CPU because their PPP stream
    /// is stateful (compression, VJ, multilink, encryption): (ifindex, session id).
    pub fn ppp_held_sessions(&self) -> Vec<(u32, u16)> {
        let Ok(map) = self.object.map(abi::PPP_HELD_MAP) else {
            return Vec::new();
        };
        (0..abi::PPP_HELD)
            .filter_map(|i| map.lookup(&i.to_ne_bytes(), MapFlags::ANY).ok().flatten())
            .filter_map(|v| v.get(..4).and_then(|b| b.try_into().ok()))
            .map(u32::from_ne_bytes)
            .filter(|&v| v != 0)
            .map(|v| (v >> 16, (v & 0xffff) as u16))
            .collect()
    }

    /// The steering counters of CPUs `0..cpus`, summed over the CPUs that counted them; CPUs
    /// with nothing counted are left out.
    pub fn steering_counters(&self, cpus: u32) -> BTreeMap<u32, CpuCounters> {
        let mut out = BTreeMap::new();
        let Ok(map) = self.object.map(abi::STEER_STATS_MAP) else {
            return out;
        };
        for cpu in 0..cpus.min(abi::MAX_CPUS) {
            let Ok(Some(values)) = map.lookup_percpu(&cpu.to_ne_bytes(), MapFlags::ANY) else {
                continue;
            };
            let mut c = CpuCounters {
                cpu,
                ..Default::default()
            };
            for v in values {
                if let Some(s) = abi::from_bytes::<abi::SteerStat>(&v) {
                    c.steered += s.steered;
                    c.kept += s.kept;
                    c.delivered += s.delivered;
                }
            }
            if c.steered + c.kept + c.delivered > 0 {
                out.insert(cpu, c);
            }
        }
        out
    }
}
