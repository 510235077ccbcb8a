//! Shaping: SQM-style upload and download limits per interface (CAKE, or HTB with fq_codel or
//! FIFO leaves), set up over rtnetlink with bpfqos' own tc codec.
//!
//! Where the shapers sit (docs/ARCHITECTURE.md, "Shaping"):
//! - **upload**: the root qdisc of the interface's L3 device (`pppoe-wan`, `eth0.7`, `wan`), as
//!   sqm-scripts does: every packet leaving by the link passes it, router-local ones included;
//! - **download**: a veth pair of bpfqos' own per interface (`bqd-NAME` → `bqr-NAME`). A TC
//!   program on the L3 device's ingress sends every arriving packet into `bqd-NAME`, whose
//!   root qdisc shapes; from `bqr-NAME` another puts it back into the L3 device's ingress,
//!   marked, and the stack goes on as if it had just arrived. Unlike an IFB, what comes out of
//!   the pair is ours to forward, which is what offloaded download traffic needs; what arrives
//!   for the router itself (its own downloads) is shaped too, what it sends to the LAN is not.
//!
//! Applying is incremental: the tree on a device is compared with what the kernel has (our
//! qdiscs and classes carry major number 0xb9f), and only what differs is changed, in place
//! (a rate change is a class or qdisc change, never a new qdisc: queues are kept). A change the
//! kernel refuses takes that interface's shaping out whole and says why; the others go on.

pub mod circuits;
pub mod client;
pub mod plan;
pub mod status;
pub mod tc;

use std::collections::BTreeMap;
use std::collections::HashMap;

use futures::TryStreamExt;
use log::info;
use log::warn;
use rtnetlink::Handle as RtHandle;
use rtnetlink::LinkUnspec;
use rtnetlink::LinkVeth;

use crate::config;
use crate::conntrack;
use crate::dataplane::Dataplane;
use crate::dataplane::Device;
use circuits::CircuitIds;
use circuits::Lookup;
use client::TcOp;
use client::TcSocket;
use plan::CircuitLimit;
use plan::Direction;
use plan::Params;
use plan::Tree;
use status::DirectionStatus;
use status::ShaperStatus;
use tc::Handle;
use tc::QdiscKind;

/// One interface the daemon wants shaped, with its L3 device as it is now.
pub struct Want<'a> {
    /// The interface's configuration.
    pub config: &'a config::Interface,
    /// Its L3 device, or why there is none.
    pub l3: Result<L3Device, String>,
}

/// The L3 device of a shaped interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L3Device {
    /// Name and index.
    pub dev: Device,
    /// Whether its packets carry an Ethernet header (PPP devices: no).
    pub has_l2: bool,
    /// Its MTU.
    pub mtu: u32,
}

/// What bpfqos put on one device for one direction.
#[derive(Debug, Clone)]
struct Applied {
    device: Device,
    params: Params,
    /// The circuits with a class of their own.
    circuits: Vec<CircuitLimit>,
    /// The tree as last applied, while it can be trusted to be what the kernel has (the next
    /// change is computed from it instead of a dump: with thousands of circuits, the dumps
    /// are most of a reload). `None`: compare with the kernel next time.
    tree: Option<Tree>,
}

/// One interface's shapers.
#[derive(Debug, Clone, Default)]
struct Shaper {
    upload: Option<Applied>,
    download: Option<Download>,
}

/// The download shaper: the tree on the pair's first end, the L3 device steered through it.
#[derive(Debug, Clone)]
struct Download {
    applied: Applied,
    l3: Device,
    far_end: Device,
    /// Whether `l3` carries an Ethernet header.
    has_l2: bool,
}

/// Whether the L3 device a shaper was made for carries an Ethernet header.
fn has_l2(p: &Params) -> bool {
    p.l2_len > 0
}

/// A shaped interface as flow admission needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapedDevice {
    /// Its upload is shaped on the L3 device's root qdisc.
    pub upload: bool,
    /// The device whose root qdisc shapes its download (the veth pair's first end).
    pub download_shaper: Option<u32>,
    /// The L3 device carries an Ethernet header (not PPP).
    pub has_l2: bool,
}

/// Every shaper bpfqos runs.
#[derive(Default)]
pub struct Shaping {
    tc: Option<TcSocket>,
    shapers: BTreeMap<String, Shaper>,
    errors: BTreeMap<String, String>,
    /// The configured circuits, their ids and the lookup of their hosts.
    circuits: Vec<config::Circuit>,
    ids: CircuitIds,
    /// Every (prefix, id), sorted: what the data path's tries were given.
    prefixes: Vec<(config::IpPrefix, u16)>,
    prefixes_synced: bool,
    lookup: Lookup,
    /// Why circuits are not (all) in use.
    circuit_error: Option<String>,
    /// Rates autorate set, used instead of the configured ones (interface, direction).
    overrides: HashMap<(String, Direction), u64>,
}

/// A shaper's counters ([`Shaping::shaper_counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShaperCounters {
    /// Bytes sent.
    pub bytes: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Packets ECN-marked (CAKE's, or the fq_codel leaves'; 0 where nothing marks).
    pub marks: u64,
    /// Bytes queued now.
    pub backlog_bytes: u64,
    /// How long packets wait in it now, µs: CAKE's average sojourn (its busiest tin), else
    /// the backlog at the rate.
    pub delay_us: u64,
}

/// The circuits limited in `direction`, as a shaper's classes.
fn limits(
    circuits: &[config::Circuit],
    ids: &CircuitIds,
    direction: Direction,
) -> Vec<CircuitLimit> {
    let mut out: Vec<CircuitLimit> = circuits
        .iter()
        .filter_map(|c| {
            let rate_kbit = match direction {
                Direction::Upload => c.upload_kbit,
                Direction::Download => c.download_kbit,
            };
            let id = ids.get(&c.name)?;
            (rate_kbit > 0).then_some(CircuitLimit { id, rate_kbit })
        })
        .collect();
    out.sort();
    out
}

/// Names of the download shaper's veth pair for interface `name`: (shaping end, far end).
/// Interface names are at most 15 bytes; a long section name is shortened with a hash so that
/// two interfaces never share a pair.
pub fn veth_names(name: &str) -> (String, String) {
    let short = if name.len() <= 11 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        name.to_string()
    } else {
        let h = name.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        let keep: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(6)
            .collect();
        format!("{keep}{:04x}", h & 0xffff)
    };
    (format!("bqd-{short}"), format!("bqr-{short}"))
}

/// Root qdisc kinds a device has when nobody configured it (kernel and OpenWrt defaults):
/// replacing them is expected. Anything else was put there by someone, probably sqm-scripts
/// or qosify, which must not run on the same interface.
fn is_default_root(kind: &str) -> bool {
    matches!(
        kind,
        "noqueue" | "pfifo_fast" | "fq_codel" | "mq" | "fq" | "pfifo" | "bfifo"
    )
}

impl Shaping {
    fn socket(&mut self) -> Result<&TcSocket, String> {
        if self.tc.is_none() {
            self.tc = Some(TcSocket::open().map_err(|e| format!("tc netlink socket: {e:#}"))?);
        }
        self.tc
            .as_ref()
            .ok_or_else(|| "tc netlink socket unavailable".to_string())
    }

    /// Makes the shapers of interface `name` use `kbit` for `direction` instead of the
    /// configured rate from the next apply on (`None`: the configured rate again).
    pub fn set_rate_override(&mut self, name: &str, direction: Direction, kbit: Option<u64>) {
        let key = (name.to_string(), direction);
        match kbit {
            Some(k) => self.overrides.insert(key, k),
            None => self.overrides.remove(&key),
        };
    }

    /// Changes the rate of `name`'s `direction` shaper now, in place (a CAKE qdisc or HTB
    /// link class change: the queues are kept), and keeps it for later applies. Errors when
    /// the interface has no such shaper or the kernel refused (the change is then not
    /// recorded as applied: the caller tries again).
    pub fn set_rate(&mut self, name: &str, direction: Direction, kbit: u64) -> Result<(), String> {
        self.overrides.insert((name.to_string(), direction), kbit);
        let mut shaper = self
            .shapers
            .remove(name)
            .ok_or_else(|| format!("interface '{name}' is not shaped"))?;
        let slot = match direction {
            Direction::Upload => shaper.upload.as_mut(),
            Direction::Download => shaper.download.as_mut().map(|d| &mut d.applied),
        };
        let result = match slot {
            None => Err(format!(
                "interface '{name}' has no {} shaper",
                status::DirectionStatus::direction_name(direction)
            )),
            Some(a) if a.params.rate_kbit == kbit && a.tree.is_some() => Ok(()),
            Some(a) => {
                let mut params = a.params.clone();
                params.rate_kbit = kbit;
                let (device, circuits) = (a.device.clone(), a.circuits.clone());
                let before = a.clone();
                match self.apply_tree(&device, params, circuits, Some(before)) {
                    Ok(new) => {
                        *a = new;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        self.shapers.insert(name.to_string(), shaper);
        result
    }

    /// The root qdisc counters of `name`'s `direction` shaper (`None`: no such shaper, or
    /// the dump failed).
    pub fn shaper_counters(&mut self, name: &str, direction: Direction) -> Option<ShaperCounters> {
        let s = self.shapers.get(name)?;
        let a = match direction {
            Direction::Upload => s.upload.as_ref()?,
            Direction::Download => &s.download.as_ref()?.applied,
        };
        let (ifindex, rate_kbit) = (a.device.ifindex, a.params.rate_kbit);
        let qdiscs = self.socket().ok()?.qdiscs(ifindex).ok()?;
        let root = qdiscs.iter().find(|d| d.item.parent == Handle::ROOT)?;
        let backlog_bytes = u64::from(root.stats.backlog);
        let delay_us = match root.stats.tins.iter().map(|t| t.avg_delay_us).max() {
            Some(d) => d,
            None => (backlog_bytes * 8000).checked_div(rate_kbit).unwrap_or(0),
        };
        let marks = root.stats.ecn_marks.unwrap_or_else(|| {
            qdiscs
                .iter()
                .filter(|d| d.item.parent != Handle::ROOT)
                .filter_map(|d| d.stats.ecn_marks)
                .sum()
        });
        Some(ShaperCounters {
            bytes: root.stats.bytes,
            drops: root.stats.drops,
            marks,
            backlog_bytes,
            delay_us,
        })
    }

    /// The shaped interfaces by L3 ifindex, for flow admission.
    pub fn shaped(&self) -> HashMap<u32, ShapedDevice> {
        let mut out: HashMap<u32, ShapedDevice> = HashMap::new();
        for s in self.shapers.values() {
            if let Some(u) = &s.upload {
                let e = out.entry(u.device.ifindex).or_insert(ShapedDevice {
                    upload: false,
                    download_shaper: None,
                    has_l2: has_l2(&u.params),
                });
                e.upload = true;
            }
            if let Some(d) = &s.download {
                let e = out.entry(d.l3.ifindex).or_insert(ShapedDevice {
                    upload: false,
                    download_shaper: None,
                    has_l2: d.has_l2,
                });
                e.download_shaper = Some(d.applied.device.ifindex);
            }
        }
        out
    }

    /// Why interface `name` is not (fully) shaped, if it is not.
    pub fn error(&self, name: &str) -> Option<&str> {
        self.errors.get(name).map(String::as_str)
    }

    /// Brings every shaper in line with `wants` (interfaces not in it lose theirs) and the
    /// circuits with `circuits`. Returns whether the circuits' hosts changed (the connections
    /// behind NAT must then be looked at again: [`Shaping::rebuild_nat`]).
    pub async fn apply(
        &mut self,
        wants: &[Want<'_>],
        circuits: &[config::Circuit],
        rt: &RtHandle,
        mut dp: Option<&mut Dataplane>,
    ) -> bool {
        self.errors.clear();
        let started = std::time::Instant::now();
        let hosts_changed = self.set_circuits(circuits, dp.as_deref());
        log::debug!(
            "circuits: {} configured, prefixes synchronised in {:?}",
            circuits.len(),
            started.elapsed()
        );
        let wanted: Vec<&str> = wants.iter().map(|w| w.config.name.as_str()).collect();
        let gone: Vec<String> = self
            .shapers
            .keys()
            .filter(|n| !wanted.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name, rt, dp.as_deref_mut()).await;
        }
        for w in wants {
            let name = w.config.name.clone();
            let started = std::time::Instant::now();
            let r = self.apply_one(w, rt, dp.as_deref_mut()).await;
            log::debug!(
                "interface '{name}': shapers applied in {:?}",
                started.elapsed()
            );
            if let Err(e) = r {
                warn!("interface '{name}': shaping not applied: {e}");
                self.remove(&name, rt, dp.as_deref_mut()).await;
                self.errors.insert(name, e);
            }
        }
        hosts_changed
    }

    /// Takes the configured circuits: ids, the data path's prefix tries, the host lookup.
    fn set_circuits(&mut self, circuits: &[config::Circuit], dp: Option<&Dataplane>) -> bool {
        self.circuits = circuits.to_vec();
        self.circuit_error = None;
        let left_out = self.ids.assign(circuits);
        if !left_out.is_empty() {
            let msg = format!(
                "more than {} circuits: {} not limited ({}{})",
                crate::dataplane::abi::MAX_CIRCUITS,
                left_out.len(),
                left_out
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if left_out.len() > 3 { ", ..." } else { "" }
            );
            warn!("{msg}");
            self.circuit_error = Some(msg);
        }
        let mut prefixes = circuits::prefixes(circuits, &self.ids);
        prefixes.sort_unstable();
        let changed = prefixes != self.prefixes;
        // Unchanged hosts (a rate change): the tries are left as they are. A failed sync is
        // tried again on the next apply.
        if let Some(dp) = dp.filter(|_| changed || !self.prefixes_synced) {
            let as_u32: Vec<(config::IpPrefix, u32)> = prefixes
                .iter()
                .map(|(p, id)| (*p, u32::from(*id)))
                .collect();
            self.prefixes_synced = match dp.sync_circuit_prefixes(&as_u32) {
                Ok(()) => true,
                Err(e) => {
                    let msg = format!("circuit prefixes: {e:#}; some hosts are not classified");
                    warn!("{msg}");
                    self.circuit_error = Some(msg);
                    false
                }
            };
        }
        if changed {
            self.lookup = Lookup::new(&prefixes);
            self.prefixes = prefixes;
        }
        changed
    }

    /// Whether any circuit has hosts (connections of theirs behind NAT are tracked).
    pub fn has_circuits(&self) -> bool {
        !self.lookup.is_empty()
    }

    /// Follows a conntrack event: a NATed connection of a circuit's host is recorded for the
    /// data path (both directions are classified by its WAN-side tuple), and forgotten when it
    /// is destroyed.
    pub fn on_conntrack(&self, m: &conntrack::Message, dp: Option<&Dataplane>) {
        let (Some(dp), false) = (dp, self.lookup.is_empty()) else {
            return;
        };
        match m {
            conntrack::Message::New(c) | conntrack::Message::Update(c) => {
                if let Some((t, id)) = self.lookup.nat_entry(c) {
                    if let Err(e) = dp.set_circuit_nat(&t, u32::from(id)) {
                        log::debug!("{}: {e:#}", c.orig);
                    }
                }
            }
            conntrack::Message::Destroy(c) => {
                if let Some((t, _)) = self.lookup.nat_entry(c) {
                    dp.remove_circuit_nat(&t);
                }
            }
            _ => {}
        }
    }

    /// Rebuilds the data path's record of circuits' NATed connections from a conntrack dump.
    pub fn rebuild_nat(&self, conns: &[conntrack::Conn], dp: Option<&Dataplane>) {
        let Some(dp) = dp else {
            return;
        };
        dp.clear_circuit_nat();
        let mut n = 0usize;
        for c in conns {
            if let Some((t, id)) = self.lookup.nat_entry(c) {
                match dp.set_circuit_nat(&t, u32::from(id)) {
                    Ok(()) => n += 1,
                    Err(e) => {
                        warn!("circuits: {e:#}; later connections go to the default class");
                        break;
                    }
                }
            }
        }
        if n > 0 {
            info!("circuits: {n} connections behind NAT classified");
        }
    }

    /// Makes the next apply compare every shaper with what the kernel has rather than with
    /// what was applied last (devices came or went: someone else may have touched them).
    pub fn verify_next(&mut self) {
        for s in self.shapers.values_mut() {
            if let Some(u) = s.upload.as_mut() {
                u.tree = None;
            }
            if let Some(d) = s.download.as_mut() {
                d.applied.tree = None;
            }
        }
    }

    /// Why circuits are not (all) in use.
    pub fn circuit_error(&self) -> Option<&str> {
        self.circuit_error.as_deref()
    }

    /// The id circuit `name` has in the data path.
    pub fn circuit_id(&self, name: &str) -> Option<u16> {
        self.ids.get(name)
    }

    /// The configured circuits (as last applied).
    pub fn circuits(&self) -> &[config::Circuit] {
        &self.circuits
    }

    async fn apply_one(
        &mut self,
        w: &Want<'_>,
        rt: &RtHandle,
        dp: Option<&mut Dataplane>,
    ) -> Result<(), String> {
        let i = w.config;
        let l3 = w.l3.as_ref().map_err(Clone::clone)?;
        let l2_len = if l3.has_l2 { 14 } else { 0 };
        let mut shaper = self.shapers.remove(&i.name).unwrap_or_default();
        // A new L3 device (PPPoE reconnect): what was on the old one went with it.
        if shaper.upload.as_ref().is_some_and(|a| a.device != l3.dev) {
            shaper.upload = None;
        }
        let up_limits = limits(&self.circuits, &self.ids, Direction::Upload);
        let down_limits = limits(&self.circuits, &self.ids, Direction::Download);
        let mut dp = dp;
        let result = async {
            let with_override = |p: Option<Params>| {
                p.map(|mut p| {
                    if let Some(&k) = self.overrides.get(&(i.name.clone(), p.direction)) {
                        p.rate_kbit = k;
                    }
                    p
                })
            };
            let up_params = with_override(Params::of(i, Direction::Upload, l2_len));
            let down_params = with_override(Params::of(i, Direction::Download, 14));
            shaper.upload = match up_params {
                Some(p) => {
                    let a = self.apply_tree(&l3.dev, p, up_limits, shaper.upload.take())?;
                    if let Some(dp) = dp.as_deref_mut() {
                        dp.classify_upload(&l3.dev, !l3.has_l2, !a.circuits.is_empty())
                            .map_err(|e| {
                                format!("{}: upload classification: {e:#}", l3.dev.name)
                            })?;
                    }
                    Some(a)
                }
                None => {
                    if let Some(old) = shaper.upload.take() {
                        self.remove_upload(&old, dp.as_deref_mut());
                    }
                    None
                }
            };
            shaper.download = match down_params {
                Some(p) => Some(
                    self.apply_download(
                        &i.name,
                        l3,
                        p,
                        down_limits,
                        shaper.download.take(),
                        rt,
                        dp.as_deref_mut(),
                    )
                    .await?,
                ),
                None => {
                    if let Some(old) = shaper.download.take() {
                        self.remove_download(&old, rt, dp.as_deref_mut()).await;
                    }
                    None
                }
            };
            Ok::<(), String>(())
        }
        .await;
        self.shapers.insert(i.name.clone(), shaper);
        result
    }

    /// Puts the tree of `params` on `device`, changing only what differs from what is there.
    fn apply_tree(
        &mut self,
        device: &Device,
        params: Params,
        circuits: Vec<CircuitLimit>,
        before: Option<Applied>,
    ) -> Result<Applied, String> {
        let want = plan::tree(device.ifindex, &params, &circuits);
        let tc = self.socket()?;
        // The quick way: from what this daemon applied last, when the tree keeps its shape.
        if let Some(old) = before
            .as_ref()
            .filter(|b| b.device == *device)
            .and_then(|b| b.tree.as_ref())
            .filter(|old| same_shape(old, &want))
        {
            let ops = diff(
                &want,
                &as_dumped(qdiscs_of(old)),
                &as_dumped(old.classes.clone()),
            );
            let applied =
                ops.is_empty() || tc.apply(&ops).is_ok_and(|r| r.iter().all(Result::is_ok));
            if applied {
                if !ops.is_empty() {
                    log::debug!(
                        "{}: {} tc change(s) from the last tree",
                        device.name,
                        ops.len()
                    );
                }
                return Ok(Applied {
                    device: device.clone(),
                    params,
                    circuits,
                    tree: Some(want),
                });
            }
            log::debug!(
                "{}: the kernel refused a change: comparing with its tree",
                device.name
            );
        }
        let current = tc
            .qdiscs(device.ifindex)
            .map_err(|e| format!("{}: {e:#}", device.name))?;
        let root = current.iter().find(|d| d.item.parent == Handle::ROOT);
        let ours = root.is_some_and(|r| {
            r.item.handle.major() == plan::MAJOR && r.item.kind.name() == want.root.kind.name()
        });
        // HTB's own options cannot change in place: a different default class is a new tree.
        let ours = ours
            && root.is_some_and(|r| match (&r.item.kind, &want.root.kind) {
                (QdiscKind::Htb(g), QdiscKind::Htb(w)) => g.default_class == w.default_class,
                _ => true,
            });
        // One of our trees of another shape (the qdisc kind changed): a qdisc cannot change
        // its kind under the same handle, so it goes first.
        let replaced_ours =
            !ours && root.is_some_and(|r| r.item.handle == Handle::new(plan::MAJOR, 0));
        let ops = if ours {
            let t = std::time::Instant::now();
            let classes = tc
                .classes(device.ifindex)
                .map_err(|e| format!("{}: {e:#}", device.name))?;
            let dumped = t.elapsed();
            let ops = diff(&want, &current, &classes);
            log::debug!(
                "{}: {} classes dumped in {dumped:?}, diffed in {:?}",
                device.name,
                classes.len(),
                t.elapsed() - dumped
            );
            ops
        } else if replaced_ours {
            std::iter::once(delete_root(device.ifindex))
                .chain(full(&want))
                .collect()
        } else {
            if let Some(r) = root {
                let kind = r.item.kind.name();
                if is_default_root(kind) {
                    info!("{}: replacing the default root qdisc {kind}", device.name);
                } else {
                    warn!(
                        "{}: replacing root qdisc {kind} {} put there by someone else \
                         (sqm-scripts or qosify on the same interface?)",
                        device.name, r.item.handle
                    );
                }
            }
            full(&want)
        };
        if ops.is_empty() {
            return Ok(Applied {
                device: device.clone(),
                params,
                circuits,
                tree: Some(want),
            });
        }
        if ops.len() <= 8 {
            log::debug!("{}: {} tc change(s): {ops:?}", device.name, ops.len());
        }
        let t = std::time::Instant::now();
        let results = tc
            .apply(&ops)
            .map_err(|e| format!("{}: {e:#}", device.name))?;
        log::debug!(
            "{}: {} tc change(s) applied in {:?}",
            device.name,
            ops.len(),
            t.elapsed()
        );
        if let Some((op, Err(e))) = ops.iter().zip(results).find(|(_, r)| r.is_err()) {
            // Whole or nothing: take our tree off; a change of a tree that was there gets one
            // more try as a whole new tree, else the device falls back to its default.
            let _ = tc.apply(&[delete_root(device.ifindex)]);
            let retried = ours
                && tc
                    .apply(&full(&want))
                    .is_ok_and(|r| r.iter().all(Result::is_ok));
            if !retried {
                let _ = tc.apply(&[delete_root(device.ifindex)]);
                return Err(refusal(device, op, &e));
            }
            warn!(
                "{}: in-place change refused ({e}); shaper rebuilt",
                device.name
            );
        }
        if before.is_none() {
            info!(
                "{}: {} shaper at {} kbit/s ({})",
                device.name,
                match params.direction {
                    Direction::Upload => "upload",
                    Direction::Download => "download",
                },
                params.rate_kbit,
                want.root.kind.name()
            );
        }
        Ok(Applied {
            device: device.clone(),
            params,
            circuits,
            tree: Some(want),
        })
    }

    /// Takes the upload shaper off its device, with its circuit classifier.
    fn remove_upload(&mut self, a: &Applied, dp: Option<&mut Dataplane>) {
        if let Some(dp) = dp {
            if let Err(e) = dp.classify_upload(&a.device, false, false) {
                warn!("{}: {e:#}", a.device.name);
            }
        }
        self.remove_tree(a);
    }

    fn remove_tree(&mut self, a: &Applied) {
        let Ok(tc) = self.socket() else {
            return;
        };
        // Only ours: a root someone put there since is left alone.
        let ours = tc.qdiscs(a.device.ifindex).is_ok_and(|q| {
            q.iter()
                .any(|d| d.item.parent == Handle::ROOT && d.item.handle.major() == plan::MAJOR)
        });
        if ours {
            if let Ok(results) = tc.apply(&[delete_root(a.device.ifindex)]) {
                for r in results.into_iter().filter_map(Result::err) {
                    warn!("{}: removing the shaper: {r}", a.device.name);
                }
            }
            info!("{}: shaper removed", a.device.name);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_download(
        &mut self,
        name: &str,
        l3: &L3Device,
        params: Params,
        circuits: Vec<CircuitLimit>,
        before: Option<Download>,
        rt: &RtHandle,
        dp: Option<&mut Dataplane>,
    ) -> Result<Download, String> {
        let Some(dp) = dp else {
            return Err("download shaping needs the BPF data path, which is not loaded".into());
        };
        let (first, far) = veth_names(name);
        let (first, far) = ensure_veth(rt, &first, &far, l3.mtu.max(1500)).await?;
        if let Some(old) = before.as_ref().filter(|b| b.l3 != l3.dev) {
            dp.unsteer_download(&old.l3, None);
        }
        let applied = self.apply_tree(&first, params, circuits, before.map(|b| b.applied))?;
        dp.steer_download(&l3.dev, &first, &far, !l3.has_l2)
            .map_err(|e| format!("{}: download steering: {e:#}", l3.dev.name))?;
        dp.classify_download(l3.dev.ifindex, first.ifindex, !applied.circuits.is_empty())
            .map_err(|e| format!("{}: download classification: {e:#}", l3.dev.name))?;
        Ok(Download {
            applied,
            l3: l3.dev.clone(),
            far_end: far,
            has_l2: l3.has_l2,
        })
    }

    async fn remove_download(&mut self, d: &Download, rt: &RtHandle, dp: Option<&mut Dataplane>) {
        if let Some(dp) = dp {
            dp.unsteer_download(&d.l3, Some(&d.far_end));
            let _ = dp.classify_download(d.l3.ifindex, d.applied.device.ifindex, false);
        }
        // Deleting one end of a veth pair deletes both, and the qdiscs with them.
        match rt.link().del(d.applied.device.ifindex).execute().await {
            Ok(()) => info!("{}: download shaper removed", d.applied.device.name),
            Err(e) => warn!("{}: deleting: {e}", d.applied.device.name),
        }
    }

    async fn remove(&mut self, name: &str, rt: &RtHandle, dp: Option<&mut Dataplane>) {
        let Some(s) = self.shapers.remove(name) else {
            return;
        };
        let mut dp = dp;
        if let Some(u) = &s.upload {
            self.remove_upload(u, dp.as_deref_mut());
        }
        if let Some(d) = &s.download {
            self.remove_download(d, rt, dp).await;
        }
    }

    /// Takes every shaper down (the daemon stops without `--keep`).
    pub async fn remove_all(&mut self, rt: &RtHandle, mut dp: Option<&mut Dataplane>) {
        let names: Vec<String> = self.shapers.keys().cloned().collect();
        for n in names {
            self.remove(&n, rt, dp.as_deref_mut()).await;
        }
    }

    /// The `shaper` section of interface `name` in the status document.
    pub fn status(&mut self, name: &str) -> Option<ShaperStatus> {
        let error = self.errors.get(name).cloned();
        let shaper = self.shapers.get(name).cloned();
        if shaper.is_none() && error.is_none() {
            return None;
        }
        let _ = self.socket();
        let tc = self.tc.as_ref();
        let ids = &self.ids;
        let dir = |a: &Applied| DirectionStatus::read(tc, &a.device, &a.params, &a.circuits, ids);
        Some(ShaperStatus {
            upload: shaper.as_ref().and_then(|s| s.upload.as_ref()).map(dir),
            download: shaper
                .as_ref()
                .and_then(|s| s.download.as_ref())
                .map(|d| dir(&d.applied)),
            error,
        })
    }
}

/// What the user reads when the kernel refuses `op`: for a qdisc kind the kernel lacks, the
/// option to change and the package to install; otherwise the kernel's own words.
fn refusal(device: &Device, op: &TcOp, e: &client::TcError) -> String {
    let kind = match op {
        TcOp::Qdisc { qdisc, .. } | TcOp::ChangeQdisc(qdisc) => Some(qdisc.kind.name()),
        _ => None,
    };
    match kind {
        Some(k @ ("cake" | "fq_codel")) if e.errno == -nix::libc::ENOENT => {
            let package = if k == "cake" {
                "kmod-sched-cake"
            } else {
                "kmod-sched-core (fq_codel)"
            };
            format!(
                "option qdisc '{k}': this kernel has no {k} qdisc ({}: {}); install {package} \
                 or choose another qdisc",
                device.name, e.reason
            )
        }
        _ => format!("{}: {e}", device.name),
    }
}

fn delete_root(ifindex: u32) -> TcOp {
    TcOp::DeleteQdisc {
        ifindex,
        handle: Handle::new(plan::MAJOR, 0),
        parent: Handle::ROOT,
    }
}

/// Whether a tree can become `b` by changes in place (same root kind and HTB options).
fn same_shape(a: &Tree, b: &Tree) -> bool {
    match (&a.root.kind, &b.root.kind) {
        (QdiscKind::Htb(x), QdiscKind::Htb(y)) => x == y && a.root.stab == b.root.stab,
        (x, y) => x.name() == y.name(),
    }
}

/// The qdiscs of a tree (root and leaves).
fn qdiscs_of(t: &Tree) -> Vec<tc::Qdisc> {
    std::iter::once(t.root.clone())
        .chain(t.leaves.iter().cloned())
        .collect()
}

/// Items as a dump would list them (no counters).
fn as_dumped<T>(items: Vec<T>) -> Vec<tc::Dumped<T>> {
    items
        .into_iter()
        .map(|item| tc::Dumped {
            item,
            stats: tc::Stats::default(),
        })
        .collect()
}

/// Everything of `t`, for a device that has none of it.
fn full(t: &Tree) -> Vec<TcOp> {
    let mut ops = vec![TcOp::Qdisc {
        qdisc: t.root.clone(),
        exclusive: false,
    }];
    ops.extend(t.classes.iter().cloned().map(TcOp::Class));
    ops.extend(t.leaves.iter().cloned().map(|q| TcOp::Qdisc {
        qdisc: q,
        exclusive: false,
    }));
    ops
}

/// Whether two HTB classes are the same for our purposes: bursts only round-trip through
/// 64 ns ticks, so they are equal within what a tick carries at the rate.
fn same_class(a: &tc::HtbClass, b: &tc::HtbClass) -> bool {
    let near =
        |x: u32, y: u32, rate: u64| u64::from(x.abs_diff(y)) <= rate * 64 / 1_000_000_000 + 1;
    tc::HtbClass {
        burst: 0,
        cburst: 0,
        ..a.clone()
    } == tc::HtbClass {
        burst: 0,
        cburst: 0,
        ..b.clone()
    } && near(a.burst, b.burst, a.rate_bytes)
        && near(a.cburst, b.cburst, a.ceil_bytes)
}

/// Whether a qdisc read back is the one asked for (CAKE reports its default RTT when none
/// was given, HTB the device's queue length as its direct queue when none was given).
fn same_qdisc(want: &tc::Qdisc, got: &tc::Qdisc) -> bool {
    match (&want.kind, &got.kind) {
        (QdiscKind::FqCodel(w), QdiscKind::FqCodel(g)) => w.same_as(g) && want.stab == got.stab,
        (QdiscKind::Htb(w), QdiscKind::Htb(g)) => {
            w.default_class == g.default_class
                && (w.direct_qlen == 0 || w.direct_qlen == g.direct_qlen)
                && want.stab == got.stab
        }
        (QdiscKind::Cake(w), QdiscKind::Cake(g)) => {
            // What was not sent is whatever the kernel had: not a difference.
            let g = tc::Cake {
                rtt_us: if w.rtt_us == 0 { 0 } else { g.rtt_us },
                target_us: if w.target_us == 0 { 0 } else { g.target_us },
                ..g.clone()
            };
            *w == g && want.stab == got.stab
        }
        _ => want == got,
    }
}

/// The changes that turn what a device has (`qdiscs`, `classes`, under our root) into `t`.
fn diff(
    t: &Tree,
    qdiscs: &[tc::Dumped<tc::Qdisc>],
    classes: &[tc::Dumped<tc::Class>],
) -> Vec<TcOp> {
    let mut ops = Vec::new();
    let root = qdiscs.iter().find(|d| d.item.parent == Handle::ROOT);
    if !root.is_some_and(|r| same_qdisc(&t.root, &r.item)) {
        ops.push(TcOp::ChangeQdisc(t.root.clone()));
    }
    let by_handle: HashMap<Handle, &tc::Dumped<tc::Class>> =
        classes.iter().map(|d| (d.item.handle, d)).collect();
    for c in &t.classes {
        let have = by_handle.get(&c.handle).copied();
        // The kernel reports a class directly under the qdisc with parent "root".
        let same_parent = |h: Handle| h == c.parent || (h == Handle::ROOT && c.parent.minor() == 0);
        if !have.is_some_and(|h| same_parent(h.item.parent) && same_class(&h.item.htb, &c.htb)) {
            if let Some(h) = have {
                log::debug!(
                    "class {} differs: have {:?}, want {:?}",
                    c.handle,
                    h.item,
                    c
                );
            }
            ops.push(TcOp::Class(c.clone()));
        }
    }
    // Classes of ours that the tree no longer has, deepest first (a class with children
    // cannot go); their leaf qdiscs go with them.
    let wanted: std::collections::HashSet<Handle> = t.classes.iter().map(|c| c.handle).collect();
    let parents: HashMap<Handle, Handle> = classes
        .iter()
        .map(|d| (d.item.handle, d.item.parent))
        .collect();
    let mut stale: Vec<(usize, &tc::Class)> = classes
        .iter()
        .map(|d| &d.item)
        .filter(|c| c.handle.major() == plan::MAJOR && !wanted.contains(&c.handle))
        .map(|c| (depth(c, &parents), c))
        .collect();
    stale.sort_by_key(|(d, _)| std::cmp::Reverse(*d));
    let stale: Vec<&tc::Class> = stale.into_iter().map(|(_, c)| c).collect();
    ops.extend(stale.into_iter().map(|c| TcOp::DeleteClass {
        ifindex: c.ifindex,
        handle: c.handle,
    }));
    let by_parent: HashMap<Handle, &tc::Dumped<tc::Qdisc>> =
        qdiscs.iter().map(|d| (d.item.parent, d)).collect();
    for l in &t.leaves {
        match by_parent.get(&l.parent).copied() {
            Some(h) if same_qdisc(l, &h.item) => {}
            Some(h) if h.item.handle == l.handle && h.item.kind.name() == l.kind.name() => {
                ops.push(TcOp::ChangeQdisc(l.clone()))
            }
            _ => ops.push(TcOp::Qdisc {
                qdisc: l.clone(),
                exclusive: false,
            }),
        }
    }
    ops
}

/// How deep `c` sits under the qdisc (`parents`: every class' parent by handle).
fn depth(c: &tc::Class, parents: &HashMap<Handle, Handle>) -> usize {
    let mut d = 0;
    let mut parent = c.parent;
    while let Some(p) = parents.get(&parent) {
        d += 1;
        parent = *p;
        if d > 16 {
            break;
        }
    }
    d
}

/// The download shaper's veth pair, created when missing and brought up: (first end, far end).
async fn ensure_veth(
    rt: &RtHandle,
    first: &str,
    far: &str,
    mtu: u32,
) -> Result<(Device, Device), String> {
    let lookup = |name: &str| {
        let name = name.to_string();
        async move {
            let mut links = rt.link().get().match_name(name.clone()).execute();
            match links.try_next().await {
                Ok(Some(l)) => Ok(Some(l.header.index)),
                Ok(None) => Ok(None),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::ENODEV => {
                    Ok(None)
                }
                Err(e) => Err(format!("{name}: {e}")),
            }
        }
    };
    if lookup(first).await?.is_none() || lookup(far).await?.is_none() {
        // A half pair cannot be: delete what is there, create both.
        if let Some(i) = lookup(first).await? {
            let _ = rt.link().del(i).execute().await;
        }
        rt.link()
            .add(LinkVeth::new(first, far).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| format!("creating the download shaper {first}/{far}: {e}"))?;
        info!("download shaper devices {first} -> {far} created");
    }
    for name in [first, far] {
        // No addresses, no IPv6 autoconfiguration: these carry only what bpfqos puts in.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        rt.link()
            .set(LinkUnspec::new_with_name(name).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(|e| format!("{name}: setting it up: {e}"))?;
    }
    let first_ix = lookup(first)
        .await?
        .ok_or_else(|| format!("{first} vanished"))?;
    let far_ix = lookup(far)
        .await?
        .ok_or_else(|| format!("{far} vanished"))?;
    Ok((
        Device {
            name: first.to_string(),
            ifindex: first_ix,
        },
        Device {
            name: far.to_string(),
            ifindex: far_ix,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_stay_apart() {
        assert_eq!(
            veth_names("wan"),
            ("bqd-wan".to_string(), "bqr-wan".to_string())
        );
        let (a, _) = veth_names("wan_backup_lte");
        let (b, _) = veth_names("wan_backup_lte2");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(a, b);
        let (c, _) = veth_names("wan.7");
        assert!(c.len() <= 15 && !c.contains('.'), "{c}");
    }

    fn dumped_q(q: tc::Qdisc) -> tc::Dumped<tc::Qdisc> {
        tc::Dumped {
            item: q,
            stats: tc::Stats::default(),
        }
    }

    fn dumped_c(c: tc::Class) -> tc::Dumped<tc::Class> {
        tc::Dumped {
            item: c,
            stats: tc::Stats::default(),
        }
    }

    fn params(rate_kbit: u64) -> Params {
        Params {
            direction: Direction::Upload,
            rate_kbit,
            qdisc: config::Qdisc::FqCodel,
            overhead: 34,
            mpu: 0,
            linklayer: config::LinkLayer::Ethernet,
            diffserv: config::Diffserv::Besteffort,
            l2_len: 0,
        }
    }

    #[test]
    fn a_rate_change_changes_the_classes_in_place_and_nothing_else() {
        let before = plan::tree(4, &params(40_000), &[]);
        let after = plan::tree(4, &params(30_000), &[]);
        let qdiscs: Vec<_> = std::iter::once(before.root.clone())
            .chain(before.leaves.iter().cloned())
            .map(dumped_q)
            .collect();
        let classes: Vec<_> = before.classes.iter().cloned().map(dumped_c).collect();
        assert!(diff(&before, &qdiscs, &classes).is_empty(), "idempotent");
        let ops = diff(&after, &qdiscs, &classes);
        // The two classes, changed in place; the root and the fq_codel leaf (whose options do
        // not depend on the rate above 8 Mbit/s) untouched.
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(ops
            .iter()
            .all(|o| matches!(o, TcOp::Class(c) if c.htb.ceil_bytes == 3_750_000)));
    }

    #[test]
    fn classes_the_tree_lost_are_deleted_children_first() {
        let t = plan::tree(4, &params(40_000), &[]);
        let mut classes: Vec<_> = t.classes.iter().cloned().map(dumped_c).collect();
        let mut extra = t.classes[1].clone();
        extra.handle = Handle::new(plan::MAJOR, 0x100);
        extra.parent = t.classes[1].handle;
        let mut extra2 = extra.clone();
        extra2.handle = Handle::new(plan::MAJOR, 0x101);
        extra2.parent = extra.handle;
        classes.push(dumped_c(extra));
        classes.push(dumped_c(extra2));
        let qdiscs: Vec<_> = std::iter::once(t.root.clone())
            .chain(t.leaves.iter().cloned())
            .map(dumped_q)
            .collect();
        let ops = diff(&t, &qdiscs, &classes);
        let deleted: Vec<Handle> = ops
            .iter()
            .filter_map(|o| match o {
                TcOp::DeleteClass { handle, .. } => Some(*handle),
                _ => None,
            })
            .collect();
        assert_eq!(
            deleted,
            vec![
                Handle::new(plan::MAJOR, 0x101),
                Handle::new(plan::MAJOR, 0x100)
            ]
        );
    }
}
