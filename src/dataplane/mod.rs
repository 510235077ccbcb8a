//! The BPF data path as the daemon sees it, in three parts:
//! - [`object`]: the embedded object, loaded with its maps re-adopted from bpffs pins (generic
//!   over objects);
//! - [`attach`]: which programs sit on which hooks of which device (XDP, TC ingress, TC egress);
//! - the maps' contents: the flow tables ([`flowtable`], entries in [`entry`]), the `control`
//!   word (heartbeat, switch, hash seeds), per-device settings, counters ([`stats`]) and the
//!   teardown events ([`events`]).
//!
//! [`Dataplane`] puts them together for the offload program pair (`bpfqos_xdp` and its TC twin
//! `bpfqos_tc`). The layout of every shared structure is `bpf/include/bpfqos_abi.h`, seen from
//! Rust through [`abi`].

pub mod abi;
pub mod attach;
pub mod circuits;
pub mod entry;
pub mod events;
pub mod flowtable;
pub mod object;
pub mod rtt;
pub mod stats;
pub mod steering;

use std::cell::RefCell;
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::Context;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use log::debug;
use log::info;
use log::warn;

use attach::AttachPoint;
use attach::Attachments;
use attach::TcSlot;
use attach::XdpMode;
use entry::FlowKey;
use entry::FlowValue;
use events::TeardownEvents;
use flowtable::FlowTables;
use object::BpfObject;
use stats::DatapathStats;

/// A device by name and index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Name.
    pub name: String,
    /// Index.
    pub ifindex: u32,
}

/// A device the offload should run on: name, ifindex, and the DSA tag its frames carry
/// (`enum bpfqos_dsa_proto`, `None` for no tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadDevice {
    /// Device name.
    pub name: String,
    /// Its ifindex.
    pub ifindex: u32,
    /// The DSA tagger of a conduit, as the parser knows it.
    pub dsa_proto: Option<u8>,
}

/// See [`Dataplane::counter_snapshot`].
pub struct CounterSnapshot<'a> {
    dp: &'a Dataplane,
}

impl Drop for CounterSnapshot<'_> {
    fn drop(&mut self) {
        self.dp.tables.borrow_mut().end_snapshot();
    }
}

/// The loaded data path.
pub struct Dataplane {
    object: BpfObject,
    xdp: OwnedFd,
    tc: OwnedFd,
    shape_in: OwnedFd,
    shape_return: OwnedFd,
    up_classify: OwnedFd,
    rtt_out: OwnedFd,
    cpumap: OwnedFd,
    hooks: Attachments,
    enabled: bool,
    /// Passive RTT switched on (`control` flag, and the egress hooks).
    rtt: bool,
    /// Devices whose `ifaces` entry carries an RTT slot or side.
    rtt_coded: std::collections::BTreeSet<u32>,
    /// CPU steering as the maps hold it.
    steer: steering::SteerState,
    /// Interior mutability: the daemon hands `&Dataplane` around; one thread, never re-entered.
    tables: RefCell<FlowTables>,
    /// What the circuit prefix tries hold (prefix → circuit id), once read.
    circuit_prefixes: RefCell<Option<std::collections::HashMap<crate::config::IpPrefix, u32>>>,
}

impl Dataplane {
    /// Loads the embedded offload object (see [`BpfObject::load`]) and opens its flow tables:
    /// adopted with their seeds when the tables and `control` all came from pins (a restart),
    /// else with fresh seeds and an empty index.
    pub fn load(pin_dir: &Path) -> anyhow::Result<Self> {
        let entries = abi::flow_entries(conntrack_max());
        let object = BpfObject::load(
            "bpfqos",
            abi::OFFLOAD_OBJ,
            pin_dir,
            &[(abi::FLOWS4_MAP, entries), (abi::FLOWS6_MAP, entries)],
        )?;
        let xdp = object.prog_fd(abi::XDP_PROG)?;
        let tc = object.prog_fd(abi::TC_PROG)?;
        let shape_in = object.prog_fd(abi::SHAPE_IN_PROG)?;
        let shape_return = object.prog_fd(abi::SHAPE_RETURN_PROG)?;
        let up_classify = object.prog_fd(abi::UP_CLASSIFY_PROG)?;
        let rtt_out = object.prog_fd(abi::RTT_OUT_PROG)?;
        let cpumap = object.prog_fd(abi::CPUMAP_PROG)?;
        let tables = open_tables(&object)?;
        Ok(Self {
            object,
            xdp,
            tc,
            shape_in,
            shape_return,
            up_classify,
            rtt_out,
            cpumap,
            hooks: Attachments::default(),
            enabled: false,
            rtt: false,
            rtt_coded: Default::default(),
            steer: Default::default(),
            tables: RefCell::new(tables),
            circuit_prefixes: RefCell::default(),
        })
    }

    /// Devices the offload is attached to.
    pub fn offload_devices(&self) -> Vec<String> {
        self.hooks
            .iter()
            .filter(|(_, h)| h.has_offload())
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Brings the offload's attachments in line with `wanted`: detaches from devices no longer
    /// in it, tells the parser each device's DSA tagger, attaches where missing. Returns the
    /// devices that could not be attached, with why (their traffic stays on the kernel path).
    /// `twin`: the TC twin goes beside XDP too (shaped flows are forwarded by TC, through the
    /// shapers' qdiscs). With passive RTT on ([`Dataplane::set_rtt`]), the RTT egress hook goes
    /// on each of them too.
    pub fn sync_offload(&mut self, wanted: &[OffloadDevice], twin: bool) -> Vec<(String, String)> {
        for dev in self.offload_devices() {
            if !wanted.iter().any(|w| w.name == dev) {
                self.detach_offload(&dev);
            }
        }
        let mut failed = Vec::new();
        for w in wanted {
            if let Err(e) = self.set_dsa_tagger(w.ifindex, w.dsa_proto) {
                warn!("{}: {e:#}", w.name);
            }
            let attached = self
                .attach_offload(&w.name)
                .and_then(|()| self.set_twin(&w.name, twin))
                .and_then(|()| self.set_rtt_hook(&w.name, self.rtt));
            if let Err(e) = attached {
                let msg = format!("{}: {e:#}", w.name);
                warn!("{msg}; traffic there stays on the kernel path");
                failed.push((w.name.clone(), msg));
            }
        }
        failed
    }

    /// Puts the TC twin beside XDP on `device` (or takes it away). Where XDP is not attached,
    /// the twin is the offload itself and stays.
    fn set_twin(&mut self, device: &str, on: bool) -> anyhow::Result<()> {
        let Some(h) = self.hooks.get(device) else {
            return Ok(());
        };
        let has = h.tc.contains(&TcSlot::OFFLOAD);
        match (h.xdp.is_some(), on, has) {
            (true, true, false) => self
                .hooks
                .attach_tc(device, self.tc.as_fd(), TcSlot::OFFLOAD),
            (true, false, true) => {
                self.hooks
                    .detach_tc(device, self.tc.as_fd(), TcSlot::OFFLOAD);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Puts the RTT egress hook on `device` (or takes it away).
    fn set_rtt_hook(&mut self, device: &str, on: bool) -> anyhow::Result<()> {
        let has = self
            .hooks
            .get(device)
            .is_some_and(|h| h.tc.contains(&TcSlot::RTT));
        match (on, has) {
            (true, false) => self
                .hooks
                .attach_tc(device, self.rtt_out.as_fd(), TcSlot::RTT),
            (false, true) => {
                self.hooks
                    .detach_tc(device, self.rtt_out.as_fd(), TcSlot::RTT);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Attaches the offload to `device`: XDP native, else XDP generic, else TC ingress. Already
    /// attached: nothing to do.
    pub fn attach_offload(&mut self, device: &str) -> anyhow::Result<()> {
        if self.hooks.get(device).is_some_and(|h| h.has_offload()) {
            return Ok(());
        }
        let native_err = match self
            .hooks
            .attach_xdp(device, self.xdp.as_fd(), XdpMode::Native)
        {
            Ok(()) => {
                self.attached(device, None);
                return Ok(());
            }
            Err(e) => e,
        };
        debug!("{device}: native XDP refused: {native_err:#}");
        let generic_err = match self
            .hooks
            .attach_xdp(device, self.xdp.as_fd(), XdpMode::Generic)
        {
            Ok(()) => {
                let why = format!("native XDP unavailable: {native_err:#}");
                self.attached(device, Some(why));
                return Ok(());
            }
            Err(e) => e,
        };
        self.hooks
            .attach_tc(device, self.tc.as_fd(), TcSlot::OFFLOAD)
            .with_context(|| {
                format!(
                    "XDP native ({native_err:#}), XDP generic ({generic_err:#}) and TC all failed"
                )
            })?;
        let why = format!("XDP unavailable: native: {native_err:#}; generic: {generic_err:#}");
        self.attached(device, Some(why));
        Ok(())
    }

    fn attached(&mut self, device: &str, fallback_reason: Option<String>) {
        let mode = self.hooks.get(device).map(|h| (h.xdp, h.tc.clone()));
        info!(
            "{device}: attached ({mode:?}){}",
            fallback_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        self.hooks.set_fallback_reason(device, fallback_reason);
        if let Some(h) = self.hooks.get(device) {
            let (ifindex, xdp) = (h.ifindex, h.xdp.is_some());
            self.set_iface_xdp(ifindex, xdp);
        }
    }

    /// Tells the TC twin on `ifindex` whether XDP runs there too (then XDP alone looks at
    /// arrivals for RTT).
    fn set_iface_xdp(&self, ifindex: u32, xdp: bool) {
        let r = self.update_iface(ifindex, |v| {
            if xdp {
                v.flags |= abi::IFACE_F_XDP;
            } else {
                v.flags &= !abi::IFACE_F_XDP;
            }
        });
        if let Err(e) = r {
            warn!("{e:#}");
        }
    }

    /// Takes the offload (and the RTT hook) off `device` (if it still exists).
    pub fn detach_offload(&mut self, device: &str) {
        let ifindex = self.hooks.get(device).map(|h| h.ifindex);
        self.hooks.detach_xdp(device, self.xdp.as_fd());
        self.hooks
            .detach_tc(device, self.tc.as_fd(), TcSlot::OFFLOAD);
        self.hooks
            .detach_tc(device, self.rtt_out.as_fd(), TcSlot::RTT);
        if let Some(ifindex) = ifindex {
            self.set_iface_xdp(ifindex, false);
        }
    }

    /// Steers the ingress of `l3` (a shaped interface's L3 device) through its download shaper:
    /// packets go into `shaper` (the veth end whose root qdisc shapes) and come back from
    /// `far_end` into `l3`'s ingress. `add_eth`: `l3` has no L2 header (PPP).
    pub fn steer_download(
        &mut self,
        l3: &Device,
        shaper: &Device,
        far_end: &Device,
        add_eth: bool,
    ) -> anyhow::Result<()> {
        // The way back first: nothing may enter the shaper before it can leave it.
        self.update_shaping(far_end.ifindex, |s| {
            s.target = l3.ifindex;
            s.flags = abi::SHAPE_F_RETURN;
        })?;
        self.hooks
            .attach_tc(&far_end.name, self.shape_return.as_fd(), TcSlot::SHAPE)?;
        self.update_shaping(l3.ifindex, |s| {
            s.target = shaper.ifindex;
            s.flags &= !abi::SHAPE_F_ADD_ETH;
            s.flags |= abi::SHAPE_F_TO_SHAPER | if add_eth { abi::SHAPE_F_ADD_ETH } else { 0 };
        })?;
        self.hooks
            .attach_tc(&l3.name, self.shape_in.as_fd(), TcSlot::SHAPE)
    }

    /// Stops steering `l3` through a download shaper (and forgets `far_end`'s role).
    pub fn unsteer_download(&mut self, l3: &Device, far_end: Option<&Device>) {
        self.hooks
            .detach_tc(&l3.name, self.shape_in.as_fd(), TcSlot::SHAPE);
        let _ = self.update_shaping(l3.ifindex, |s| {
            s.target = 0;
            s.flags &=
                !(abi::SHAPE_F_TO_SHAPER | abi::SHAPE_F_ADD_ETH | abi::SHAPE_F_CIRCUITS_DOWN);
        });
        if let Some(far) = far_end {
            self.hooks
                .detach_tc(&far.name, self.shape_return.as_fd(), TcSlot::SHAPE);
            let _ = self.update_shaping(far.ifindex, |s| *s = abi::Shaping::default());
        }
    }

    /// Changes the `shaping` entry of `ifindex` (its roles: download steering, shaper far end,
    /// circuit classification) with `f`, keeping what `f` does not touch.
    fn update_shaping(
        &self,
        ifindex: u32,
        f: impl FnOnce(&mut abi::Shaping),
    ) -> anyhow::Result<()> {
        self.update_device_entry(abi::SHAPING_MAP, ifindex, f)
    }

    /// Changes entry `ifindex` of the per-device array `name` (`ifaces`, `shaping`) with `f`,
    /// keeping what `f` does not touch (a missing or unreadable entry starts from zero).
    fn update_device_entry<T: abi::Pod>(
        &self,
        name: &str,
        ifindex: u32,
        f: impl FnOnce(&mut T),
    ) -> anyhow::Result<()> {
        if ifindex >= abi::MAX_IFACES {
            anyhow::bail!(
                "ifindex {ifindex} beyond the {name} table ({})",
                abi::MAX_IFACES
            );
        }
        let map = self.object.map(name)?;
        let key = ifindex.to_ne_bytes();
        let mut v: T = map
            .lookup(&key, MapFlags::ANY)
            .ok()
            .flatten()
            .and_then(|b| abi::from_bytes(&b))
            .unwrap_or_default();
        f(&mut v);
        map.update(&key, abi::bytes_of(&v), MapFlags::ANY)
            .with_context(|| format!("writing the {name} entry of ifindex {ifindex}"))
    }

    /// The download steering's counters: (steered, returned, passed).
    pub fn shape_stats(&self) -> stats::ShapeStats {
        match self.object.map(abi::SHAPE_STATS_MAP) {
            Ok(map) => stats::ShapeStats::read(&map),
            Err(_) => stats::ShapeStats::default(),
        }
    }

    /// Switches offload on or off (the data path checks the flag on every packet).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        if let Err(e) = self.heartbeat() {
            warn!("updating the control map: {e:#}");
        }
    }

    /// Whether offload is switched on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Switches passive RTT on or off: the data path's flag now, the egress hooks at the next
    /// [`Dataplane::sync_offload`].
    pub fn set_rtt(&mut self, on: bool) {
        self.rtt = on;
        if let Err(e) = self.heartbeat() {
            warn!("updating the control map: {e:#}");
        }
    }

    /// Whether passive RTT is switched on.
    pub fn rtt_enabled(&self) -> bool {
        self.rtt
    }

    /// Gives devices their RTT interface slot and side: `(ifindex, slot, wan)` for every
    /// device that has them (lowest devices, L3 devices, shaper ends); every other device
    /// loses them.
    pub fn set_rtt_codes(&mut self, codes: &[(u32, u8, bool)]) {
        let old = std::mem::take(&mut self.rtt_coded);
        for ifindex in old {
            if !codes.iter().any(|c| c.0 == ifindex) {
                let _ = self.update_iface(ifindex, |v| {
                    v.rtt_slot = 0;
                    v.flags &= !abi::IFACE_F_WAN;
                });
            }
        }
        for &(ifindex, slot, wan) in codes {
            let r = self.update_iface(ifindex, |v| {
                v.rtt_slot = slot;
                if wan {
                    v.flags |= abi::IFACE_F_WAN;
                } else {
                    v.flags &= !abi::IFACE_F_WAN;
                }
            });
            match r {
                Ok(()) => {
                    self.rtt_coded.insert(ifindex);
                }
                Err(e) => warn!("{e:#}"),
            }
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
        let value = abi::control_value(ns, self.enabled, self.rtt, self.steer.n(), tables.seed());
        self.object
            .map(abi::CONTROL_MAP)?
            .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .context("writing the heartbeat")?;
        tables.reclaim()
    }

    /// Makes `ifindex` a redirect target of the XDP program (`tx_ports` devmap).
    pub fn add_tx_port(&self, ifindex: u32) -> anyhow::Result<()> {
        self.object
            .map(abi::TX_PORTS_MAP)?
            .update(
                &ifindex.to_ne_bytes(),
                &ifindex.to_ne_bytes(),
                MapFlags::ANY,
            )
            .with_context(|| format!("adding ifindex {ifindex} to tx_ports"))
    }

    /// Tells the parser which DSA tag a device's frames carry (`None`: no tag).
    pub fn set_dsa_tagger(&self, ifindex: u32, proto: Option<u8>) -> anyhow::Result<()> {
        self.update_iface(ifindex, |v| v.dsa_proto = proto.unwrap_or(0))
            .with_context(|| format!("setting the DSA tagger of ifindex {ifindex}"))
    }

    /// Changes the `ifaces` entry of `ifindex` with `f`, keeping what `f` does not touch.
    fn update_iface(&self, ifindex: u32, f: impl FnOnce(&mut abi::Iface)) -> anyhow::Result<()> {
        self.update_device_entry(abi::IFACES_MAP, ifindex, f)
    }

    /// Writes a flow entry (replacing one with the same key keeps its counters) for `owner`
    /// ([`Self::flow_owner`]). An error when there is no room for it: the flow stays on the
    /// kernel path.
    pub fn install(&self, value: &FlowValue, owner: u32) -> anyhow::Result<()> {
        self.tables
            .borrow_mut()
            .install_owned(value.bytes(), owner)?
            .map_err(anyhow::Error::from)
    }

    /// The owner a live flow entry was installed for.
    pub fn flow_owner(&self, key: &FlowKey) -> Option<u32> {
        self.tables.borrow().owner(key.bytes())
    }

    /// Unlinks a flow entry (absent: nothing to do).
    pub fn remove_flow(&self, key: &FlowKey) {
        self.tables.borrow_mut().remove(key.bytes());
    }

    /// Until the guard is dropped, flow counters come from one batched read of the tables
    /// ([`FlowTables::begin_snapshot`]): for the status document, which reads every flow.
    pub fn counter_snapshot(&self) -> CounterSnapshot<'_> {
        self.tables.borrow_mut().begin_snapshot();
        CounterSnapshot { dp: self }
    }

    /// What a flow entry counted.
    pub fn flow_counters(&self, key: &FlowKey) -> Option<abi::FlowCounters> {
        self.tables.borrow().counters(key.bytes())
    }

    /// Unlinks every flow entry not in `keep` (entries of an earlier daemon, or orphans).
    pub fn retain_flows(&self, keep: &[&FlowKey]) {
        let mut tables = self.tables.borrow_mut();
        // The flow manager only keeps keys it installed (a failed or removed flow leaves with
        // both of its entries), so the same count means nothing else is in the tables: the
        // usual case, and at 64k flows the walk below costs tens of milliseconds of event loop.
        // Entries nobody owns exist after a restart adopted the tables.
        if tables.len() == keep.len() {
            return;
        }
        let keep: std::collections::HashSet<&[u8]> = keep.iter().map(|k| k.bytes()).collect();
        for k in tables.keys() {
            if !keep.contains(k.as_slice()) {
                tables.remove(&k);
            }
        }
    }

    /// Flow entries installed (one per direction of a connection).
    pub fn flow_entries(&self) -> usize {
        self.tables.borrow().len()
    }

    /// Flow entries each family's table holds.
    pub fn flow_capacity(&self) -> u32 {
        self.tables.borrow().capacity()
    }

    /// The data path's own counters.
    pub fn stats(&self) -> DatapathStats {
        match self.object.map(abi::STATS_MAP) {
            Ok(map) => DatapathStats::read(&map),
            Err(_) => DatapathStats::default(),
        }
    }

    /// Whether the XDP program runs on `device` (native or generic).
    pub fn has_xdp(&self, device: &str) -> bool {
        self.hooks.get(device).is_some_and(|h| h.xdp.is_some())
    }

    /// Attach points of the offload, for `bpfqos status` (device counters are the flow
    /// manager's, which also remembers removed flows).
    pub fn attach_points(&self) -> Vec<AttachPoint> {
        self.hooks
            .iter()
            .filter_map(|(dev, h)| AttachPoint::of(dev, h))
            .collect()
    }

    /// The teardown requests of the data path (see [`events`]); call inside the event loop's
    /// runtime.
    pub fn teardown_events(&self) -> anyhow::Result<TeardownEvents> {
        TeardownEvents::open(&self.object.map(abi::EVENTS_MAP)?)
    }

    /// Takes the data path down: detaches everywhere and removes the pins, unless `keep`, in
    /// which case programs stay attached and maps pinned for the next daemon to adopt (the
    /// heartbeat hands traffic back to the kernel meanwhile).
    pub fn shutdown(mut self, keep: bool) {
        if keep {
            info!("leaving the data path attached and maps pinned (--keep)");
            return;
        }
        for dev in self.offload_devices() {
            self.detach_offload(&dev);
        }
        for (dev, hooks) in self.hooks.iter() {
            if hooks.tc.contains(&TcSlot::SHAPE) {
                log::debug!("{dev}: shaping steering left to the shaper's removal");
            }
        }
        self.object.unpin();
    }
}

/// `net.netfilter.nf_conntrack_max`, when conntrack is loaded.
fn conntrack_max() -> Option<u64> {
    const PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
    match std::fs::read_to_string(PATH) {
        Ok(s) => s.trim().parse().ok(),
        Err(e) => {
            log::warn!("{PATH}: {e}; flow tables get the largest size");
            None
        }
    }
}

/// The flow tables of `object`: adopted with their seeds when the tables and `control` all
/// came from pins (a restart), else fresh seeds and an empty index.
fn open_tables(object: &BpfObject) -> anyhow::Result<FlowTables> {
    let adopt = object.all_reused(&[
        abi::CONTROL_MAP,
        abi::FLOWS4_MAP,
        abi::FLOWS6_MAP,
        abi::BUCKETS4_MAP,
        abi::BUCKETS6_MAP,
    ]);
    let seed = if adopt {
        object
            .map(abi::CONTROL_MAP)?
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .and_then(|v| abi::from_bytes::<abi::Control>(&v))
            .map(|c| c.seed)
    } else {
        None
    };
    let handle = |name: &str| object.map_handle(name);
    let tables = FlowTables::open(&handle, seed, flowtable::random_seed()?)
        .context("opening the flow tables")?;
    if seed.is_some() {
        info!("flow tables adopted: {} live entries", tables.len());
    }
    info!("flow tables: {} entries per family", tables.capacity());
    Ok(tables)
}
