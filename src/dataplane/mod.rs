//! The BPF data path as the daemon sees it: load the embedded object (reusing pinned maps so a
//! restart keeps its flow table), attach it to devices (XDP native, then generic, then TC
//! ingress), feed the heartbeat, read counters, and take everything down again.
//!
//! XDP is attached through netlink (not a bpf_link), so a program stays attached if the daemon is
//! killed; the heartbeat in the `control` map is what makes the data path hand everything back to
//! the kernel when the daemon is gone, and what lets a restarted daemon take over without a gap.

pub mod abi;
pub mod flowtable;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::path::PathBuf;

use anyhow::anyhow;
use anyhow::Context;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::MapHandle;
use libbpf_rs::Object;
use libbpf_rs::ObjectBuilder;
use libbpf_rs::TcHookBuilder;
use libbpf_rs::Xdp;
use libbpf_rs::XdpFlags;
use libbpf_rs::TC_INGRESS;
use log::debug;
use log::info;
use log::warn;

use crate::offload::encode::FlowKey;
use crate::offload::encode::FlowValue;
use crate::status::AttachMode;
use crate::status::AttachPoint;
use crate::status::Hook;
use crate::status::OffloadStatus;
use flowtable::FlowTables;

use abi::OFFLOAD_OBJ;
use abi::TC_PROG;
use abi::XDP_PROG;

/// Our TC filter's handle and priority on clsact ingress, so we only ever touch our own filter.
const TC_HANDLE: u32 = 0xb9f0;
const TC_PRIORITY: u32 = 0xb9f;

/// Names of the data path's per-CPU counters in `bpfqos status`.
const STAT_NAMES: [(abi::Stat, &str); 12] = [
    (abi::Stat::BPFQOS_STAT_PASS_DISABLED, "pass_disabled"),
    (abi::Stat::BPFQOS_STAT_PASS_PARSE, "pass_not_parsed"),
    (abi::Stat::BPFQOS_STAT_PASS_NO_FLOW, "pass_no_flow"),
    (abi::Stat::BPFQOS_STAT_PASS_NOT_READY, "pass_not_ready"),
    (abi::Stat::BPFQOS_STAT_PASS_TTL, "pass_ttl"),
    (abi::Stat::BPFQOS_STAT_PASS_MTU, "pass_mtu"),
    (abi::Stat::BPFQOS_STAT_PASS_TCP_END, "pass_fin_rst"),
    (abi::Stat::BPFQOS_STAT_PASS_CSUM, "pass_udp6_zero_csum"),
    (abi::Stat::BPFQOS_STAT_PASS_NO_TXPORT, "pass_no_tx_port"),
    (abi::Stat::BPFQOS_STAT_PASS_L2, "pass_l2_resize"),
    (abi::Stat::BPFQOS_STAT_REDIRECT, "redirect"),
    (abi::Stat::BPFQOS_STAT_TX, "tx"),
];

#[derive(Debug, Clone)]
struct Attachment {
    ifindex: i32,
    mode: AttachMode,
    fallback_reason: Option<String>,
}

/// The loaded data path.
pub struct Dataplane {
    obj: Object,
    xdp: OwnedFd,
    tc: OwnedFd,
    pin_dir: Option<PathBuf>,
    attached: BTreeMap<String, Attachment>,
    enabled: bool,
    /// Interior mutability: the daemon hands `&Dataplane` around; one thread, never re-entered.
    tables: RefCell<FlowTables>,
}

/// A map of the loaded object, by name.
fn find_map<'a>(obj: &'a Object, name: &str) -> anyhow::Result<libbpf_rs::Map<'a>> {
    obj.maps()
        .find(|m| m.name() == name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

fn map_is_internal(name: &str) -> bool {
    // .rodata, .bss, .data, .kconfig: libbpf-internal, re-created on every load.
    name.contains('.')
}

impl Dataplane {
    /// Opens and loads the embedded object. Maps pinned under `pin_dir` by an earlier run are
    /// reused when their definitions still match (so flows survive a restart); stale or
    /// incompatible pins are replaced. Without bpffs the data path still works, unpinned.
    pub fn load(pin_dir: &Path) -> anyhow::Result<Self> {
        let mut open = ObjectBuilder::default()
            .name("bpfqos")
            .context("naming the BPF object")?
            .open_memory(OFFLOAD_OBJ)
            .context("opening the embedded BPF object")?;
        let pin_dir = match std::fs::create_dir_all(pin_dir) {
            Ok(()) => Some(pin_dir.to_path_buf()),
            Err(e) => {
                warn!(
                    "cannot create pin directory {} ({e}); maps will not survive a restart",
                    pin_dir.display()
                );
                None
            }
        };
        let mut reused = Vec::new();
        if let Some(dir) = &pin_dir {
            for mut map in open.maps_mut() {
                let name = map.name().to_string_lossy().into_owned();
                if map_is_internal(&name) {
                    continue;
                }
                let path = dir.join(&name);
                if !path.exists() {
                    continue;
                }
                match MapHandle::from_pinned_path(&path) {
                    Ok(old)
                        if old.map_type() == map.map_type()
                            && old.key_size() == map.key_size()
                            && old.value_size() == map.value_size()
                            && old.max_entries() == map.max_entries()
                            && old
                                .info()
                                .is_ok_and(|i| i.info.map_flags == map.map_flags()) =>
                    {
                        map.reuse_fd(old.as_fd())
                            .with_context(|| format!("reusing pinned map {}", path.display()))?;
                        reused.push(name);
                    }
                    _ => {
                        warn!(
                            "{}: pinned map does not match this version, replacing it",
                            path.display()
                        );
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        let mut obj = open.load().context("loading BPF programs (verifier)")?;
        if let Some(dir) = &pin_dir {
            for mut map in obj.maps_mut() {
                let name = map.name().to_string_lossy().into_owned();
                if map_is_internal(&name) || reused.contains(&name) {
                    continue;
                }
                if let Err(e) = map.pin(dir.join(&name)) {
                    warn!(
                        "pinning map {name} in {}: {e}; is bpffs mounted?",
                        dir.display()
                    );
                }
            }
        }
        if !reused.is_empty() {
            info!("re-adopted pinned maps: {}", reused.join(", "));
        }
        // Owned duplicates of the program fds, so attach calls need no borrow of the object.
        let handle = |name: &str| -> anyhow::Result<OwnedFd> {
            let prog = obj
                .progs()
                .find(|p| p.name() == name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
            prog.as_fd()
                .try_clone_to_owned()
                .with_context(|| format!("duplicating {name}'s fd"))
        };
        let xdp = handle(XDP_PROG)?;
        let tc = handle(TC_PROG)?;
        let tables = Self::open_tables(&obj, &reused)?;
        Ok(Self {
            obj,
            xdp,
            tc,
            pin_dir,
            attached: BTreeMap::new(),
            enabled: false,
            tables: RefCell::new(tables),
        })
    }

    /// The flow tables: adopted with their seeds when the tables and `control` all came from
    /// pins (a restart), else fresh seeds and an empty index.
    fn open_tables(obj: &Object, reused: &[String]) -> anyhow::Result<FlowTables> {
        let handle = |name: &str| -> anyhow::Result<MapHandle> {
            MapHandle::try_from(&find_map(obj, name)?)
                .with_context(|| format!("duplicating map {name}"))
        };
        let adopt = [
            abi::CONTROL_MAP,
            abi::FLOWS4_MAP,
            abi::FLOWS6_MAP,
            abi::BUCKETS4_MAP,
            abi::BUCKETS6_MAP,
        ]
        .iter()
        .all(|m| reused.iter().any(|r| r == m));
        let seed = if adopt {
            find_map(obj, abi::CONTROL_MAP)?
                .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .and_then(|v| abi::from_bytes::<abi::Control>(&v))
                .map(|c| c.seed)
        } else {
            None
        };
        let tables = FlowTables::open(&handle, seed, flowtable::random_seed()?)
            .context("opening the flow tables")?;
        if seed.is_some() {
            info!("flow tables adopted: {} live entries", tables.len());
        }
        Ok(tables)
    }

    fn map(&self, name: &str) -> anyhow::Result<libbpf_rs::Map<'_>> {
        find_map(&self.obj, name)
    }

    /// Devices the data path is attached to.
    pub fn attached_devices(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
    }

    /// Attaches to `device`: XDP native, else XDP generic, else TC ingress. Already attached:
    /// nothing to do.
    pub fn attach(&mut self, device: &str) -> anyhow::Result<()> {
        if self.attached.contains_key(device) {
            return Ok(());
        }
        let ifindex = nix::net::if_::if_nametoindex(device)
            .map_err(|e| anyhow!("no such device ({e})"))? as i32;
        let xdp = Xdp::new(self.xdp.as_fd());
        let native_err = match xdp.attach(ifindex, XdpFlags::DRV_MODE) {
            Ok(()) => {
                return self.record(device, ifindex, AttachMode::Native, None);
            }
            Err(e) => e,
        };
        debug!("{device}: native XDP refused: {native_err}");
        let generic_err = match xdp.attach(ifindex, XdpFlags::SKB_MODE) {
            Ok(()) => {
                let why = format!("native XDP unavailable: {native_err}");
                return self.record(device, ifindex, AttachMode::Generic, Some(why));
            }
            Err(e) => e,
        };
        let mut hook = TcHookBuilder::new(self.tc.as_fd())
            .ifindex(ifindex)
            .replace(true)
            .handle(TC_HANDLE)
            .priority(TC_PRIORITY)
            .hook(TC_INGRESS);
        // EEXIST from create() just means clsact is already there (shared with other users).
        let _ = hook.create();
        hook.attach().with_context(|| {
            format!("XDP native ({native_err}), XDP generic ({generic_err}) and TC all failed")
        })?;
        let why = format!("XDP unavailable: native: {native_err}; generic: {generic_err}");
        self.record(device, ifindex, AttachMode::Tc, Some(why))
    }

    fn record(
        &mut self,
        device: &str,
        ifindex: i32,
        mode: AttachMode,
        fallback_reason: Option<String>,
    ) -> anyhow::Result<()> {
        info!(
            "{device}: attached ({mode:?}){}",
            fallback_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        self.attached.insert(
            device.to_string(),
            Attachment {
                ifindex,
                mode,
                fallback_reason,
            },
        );
        Ok(())
    }

    /// Detaches from `device` (if it still exists).
    pub fn detach(&mut self, device: &str) {
        let Some(a) = self.attached.remove(device) else {
            return;
        };
        if let Err(e) = self.detach_one(&a) {
            debug!("{device}: detach: {e:#}");
        } else {
            info!("{device}: detached");
        }
    }

    fn detach_one(&self, a: &Attachment) -> anyhow::Result<()> {
        match a.mode {
            AttachMode::Native | AttachMode::Generic => {
                let flags = if a.mode == AttachMode::Native {
                    XdpFlags::DRV_MODE
                } else {
                    XdpFlags::SKB_MODE
                };
                Xdp::new(self.xdp.as_fd()).detach(a.ifindex, flags)?;
            }
            AttachMode::Tc => {
                TcHookBuilder::new(self.tc.as_fd())
                    .ifindex(a.ifindex)
                    .handle(TC_HANDLE)
                    .priority(TC_PRIORITY)
                    .hook(TC_INGRESS)
                    .detach()?;
            }
        }
        Ok(())
    }

    /// Switches offload on or off (the data path checks the flag on every packet).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        if let Err(e) = self.heartbeat() {
            warn!("updating the control map: {e:#}");
        }
    }

    /// Writes the heartbeat (the data path stops offloading when it goes stale), frees the
    /// flow entries unlinked before the last one (a grace period has passed since: no packet
    /// still uses them), and asks for a grace period for those unlinked since, without
    /// waiting for it ([`flowtable::FlowTables::reclaim`]).
    pub fn heartbeat(&self) -> anyhow::Result<()> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .context("reading CLOCK_MONOTONIC")?;
        let ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
        let mut tables = self.tables.borrow_mut();
        let value = abi::control_value(ns, self.enabled, tables.seed());
        self.map(abi::CONTROL_MAP)?
            .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .context("writing the heartbeat")?;
        tables.reclaim()
    }

    /// Whether offload is switched on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Makes `ifindex` a redirect target of the XDP program (`tx_ports` devmap).
    pub fn add_tx_port(&self, ifindex: u32) -> anyhow::Result<()> {
        self.map(abi::TX_PORTS_MAP)?
            .update(
                &ifindex.to_ne_bytes(),
                &ifindex.to_ne_bytes(),
                MapFlags::ANY,
            )
            .with_context(|| format!("adding ifindex {ifindex} to tx_ports"))
    }

    /// Tells the parser which DSA tag a device's frames carry (`None`: no tag).
    pub fn set_dsa_tagger(&self, ifindex: u32, proto: Option<u8>) -> anyhow::Result<()> {
        if ifindex >= abi::MAX_IFACES {
            anyhow::bail!(
                "ifindex {ifindex} beyond the ifaces table ({})",
                abi::MAX_IFACES
            );
        }
        let v = abi::Iface {
            dsa_proto: proto.unwrap_or(0),
            ..Default::default()
        };
        self.map(abi::IFACES_MAP)?
            .update(&ifindex.to_ne_bytes(), abi::bytes_of(&v), MapFlags::ANY)
            .with_context(|| format!("setting the DSA tagger of ifindex {ifindex}"))
    }

    /// Writes a flow entry (replacing one with the same key keeps its counters). An error
    /// when there is no room for it: the flow stays on the kernel path.
    pub fn install(&self, value: &FlowValue) -> anyhow::Result<()> {
        self.tables
            .borrow_mut()
            .install(value.bytes())?
            .map_err(anyhow::Error::from)
    }

    /// Unlinks a flow entry (absent: nothing to do).
    pub fn remove_flow(&self, key: &FlowKey) {
        self.tables.borrow_mut().remove(key.bytes());
    }

    /// Packets, bytes and flags of a flow entry.
    pub fn flow_counters(&self, key: &FlowKey) -> Option<(u64, u64, u32)> {
        self.tables.borrow().counters(key.bytes())
    }

    /// Unlinks every flow entry not in `keep` (entries of an earlier daemon, or orphans).
    pub fn retain_flows(&self, keep: &[&FlowKey]) {
        let keep: std::collections::HashSet<&[u8]> = keep.iter().map(|k| k.bytes()).collect();
        let mut tables = self.tables.borrow_mut();
        for k in tables.keys() {
            if !keep.contains(k.as_slice()) {
                tables.remove(&k);
            }
        }
    }

    /// Per-CPU statistics of the data path, summed over CPUs, by name.
    pub fn stats(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        let Ok(map) = self.map(abi::STATS_MAP) else {
            return out;
        };
        for (stat, name) in STAT_NAMES {
            let sum = map
                .lookup_percpu(&stat.0.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .map(|cpus| {
                    cpus.iter()
                        .filter_map(|b| b.get(..8).and_then(|b| b.try_into().ok()))
                        .map(u64::from_ne_bytes)
                        .sum()
                })
                .unwrap_or(0);
            out.insert(name, sum);
        }
        // The data path counts outcomes only: every packet ends in exactly one of them.
        let seen = out.values().sum();
        out.insert("seen", seen);
        out
    }

    /// Offload switch and installed entries for `bpfqos status` (the counters are the flow
    /// manager's, which also remembers removed flows).
    pub fn offload_status(&self) -> OffloadStatus {
        let mut st = OffloadStatus {
            enabled: self.enabled,
            ..Default::default()
        };
        st.flows = self.tables.borrow().len() as u64;
        st
    }

    /// Attach points for `bpfqos status`.
    pub fn attach_points(&self) -> Vec<AttachPoint> {
        self.attached
            .iter()
            .map(|(dev, a)| AttachPoint {
                device: dev.clone(),
                ifindex: a.ifindex as u32,
                hook: if a.mode == AttachMode::Tc {
                    Hook::Tc
                } else {
                    Hook::Xdp
                },
                mode: a.mode,
                fallback_reason: a.fallback_reason.clone(),
                rx_packets: 0,
                rx_bytes: 0,
                tx_packets: 0,
                tx_bytes: 0,
            })
            .collect()
    }

    /// Takes the data path down: detaches everywhere and removes the pins, unless `keep`, in
    /// which case programs stay attached and maps pinned for the next daemon to adopt (the
    /// heartbeat hands traffic back to the kernel meanwhile).
    pub fn shutdown(mut self, keep: bool) {
        if keep {
            info!("leaving the data path attached and maps pinned (--keep)");
            return;
        }
        for dev in self.attached_devices() {
            self.detach(&dev);
        }
        if let Some(dir) = &self.pin_dir {
            for mut map in self.obj.maps_mut() {
                let name = map.name().to_string_lossy().into_owned();
                if !map_is_internal(&name) {
                    let _ = map.unpin(dir.join(&name));
                }
            }
            // Only removes the directory when nothing else lives in it.
            let _ = std::fs::remove_dir(dir);
        }
    }
}
