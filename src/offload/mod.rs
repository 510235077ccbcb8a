//! The flow table manager: turns conntrack entries into data-path entries and keeps them true.
//!
//! - Admission: a connection that conntrack reports ESTABLISHED (TCP) or ASSURED (UDP), routed
//!   between two offload-enabled attach points, is resolved in both directions (route, neighbour,
//!   bridge port, VLAN/PPPoE/DSA down to the lowest device) and installed as two entries.
//! - Removal: conntrack DESTROY, a state change out of the offloadable states, FIN/RST marks
//!   from the data path, or the conntrack entry vanishing (found when refreshing).
//! - Invalidation: route changes re-resolve every flow, neighbour/FDB/link changes the flows that
//!   use them; a firewall reload drops everything so the new rules see the traffic.
//! - Liveness: while offloaded packets flow, conntrack never sees them, so their entries' timeouts
//!   are refreshed from here.
//!
//! Whatever cannot be resolved exactly stays in the kernel path, which is always correct.

pub mod encode;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use std::time::Instant;

use log::debug;
use log::info;
use log::warn;
use rtnetlink::Handle;
use serde::Serialize;

use crate::conntrack;
use crate::conntrack::Conn;
use crate::conntrack::Tuple;
use crate::dataplane::Dataplane;
use crate::topology::NextHop;
use crate::topology::RouteQuery;
use crate::topology::Topology;
use crate::topology::TopologyEvent;
use crate::topology::Unresolved;
use encode::FlowKey;

/// Longest interval between refreshes of live flows' conntrack timeouts; shorter when the
/// configured timeouts are short (a third of the shortest, at least a second).
pub const REFRESH_EVERY_MAX: Duration = Duration::from_secs(10);

/// After a firewall ruleset change, how long connections stay on the kernel path before those
/// the new rules still forward are offloaded again.
pub const READMIT_AFTER: Duration = Duration::from_secs(2);

/// Longest a connection's next-hop resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections remembered per unresolved neighbour.
const MAX_WAITING_PER_NEIGHBOUR: usize = 256;

/// Conntrack's [original, reply] packet counts per connection (None without accounting).
type PacketCounts = HashMap<ConnKey, Option<[u64; 2]>>;

/// Identity of a connection: its original tuple and zone.
pub type ConnKey = (Tuple, u16);

/// One offloaded connection: both directions installed.
struct Offloaded {
    conn: Conn,
    /// [original direction, reply direction].
    keys: [FlowKey; 2],
    /// Next hop towards the originator and towards the responder.
    hops: [NextHop; 2],
    /// Packets counted by the data path at the last refresh (both directions).
    packets_at_refresh: u64,
}

impl Offloaded {
    /// (ingress, egress) lowest devices of direction `dir` (0: original, 1: reply).
    fn dir_devices(&self, dir: usize) -> (u32, u32) {
        let (a, b) = (self.hops[0].egress_ifindex, self.hops[1].egress_ifindex);
        if dir == 0 {
            (a, b)
        } else {
            (b, a)
        }
    }

    fn uses_device(&self, ifindex: u32) -> bool {
        self.hops
            .iter()
            .any(|h| h.devices.contains(&ifindex) || h.egress_ifindex == ifindex)
    }

    fn uses_neighbour(&self, ifindex: u32, ip: IpAddr) -> bool {
        self.hops.iter().any(|h| h.neighbour == Some((ifindex, ip)))
    }

    fn uses_mac(&self, mac: &[u8; 6]) -> bool {
        self.hops.iter().any(|h| &h.dst_mac == mac)
    }
}

/// Why a connection was not offloaded (counted for `bpfqos status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// One end is the router itself.
    Local,
    /// No usable route or neighbour yet, or an unsupported path.
    Unresolved(String),
    /// An end is behind a device the data path is not attached to (not configured, tunnel...).
    NotAttached(String),
    /// The data path cannot express the path (unknown DSA tagger, >2 VLANs, NAT64...).
    Inexpressible,
    /// The flow table is full.
    MapFull,
    /// The data path is not loaded or offload is off.
    Disabled,
}

impl Reject {
    fn label(&self) -> &'static str {
        match self {
            Reject::Local => "local",
            Reject::Unresolved(_) => "unresolved",
            Reject::NotAttached(_) => "not_attached",
            Reject::Inexpressible => "inexpressible",
            Reject::MapFull => "map_full",
            Reject::Disabled => "disabled",
        }
    }
}

/// Counters of the manager's decisions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ManagerStats {
    /// Connections installed (both directions) since start.
    pub admitted: u64,
    /// Connections removed since start.
    pub removed: u64,
    /// Admission refusals by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Re-resolutions after topology changes.
    pub reresolved: u64,
    /// Times everything was dropped (firewall reload, conntrack resync).
    pub flushes: u64,
    /// Duration of the last admission, microseconds (event to both entries written).
    pub last_admit_us: u64,
}

/// One offloaded connection in `bpfqos status`.
#[derive(Debug, Clone, Serialize)]
pub struct FlowStatus {
    /// `tcp`/`udp`.
    pub proto: &'static str,
    /// Original direction, as the client sent it.
    pub orig: String,
    /// Reply direction, as the server sent it.
    pub reply: String,
    /// Packets forwarded by the data path, original direction.
    pub packets_orig: u64,
    /// Packets forwarded by the data path, reply direction.
    pub packets_reply: u64,
    /// Bytes forwarded by the data path, both directions.
    pub bytes: u64,
    /// Lowest ingress device of the original direction.
    pub ingress_ifindex: u32,
    /// Lowest egress device of the original direction.
    pub egress_ifindex: u32,
}

/// Offloaded packets and bytes, in total and per lowest device.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Packets forwarded by the data path.
    pub packets: u64,
    /// Bytes (IP packet bytes) forwarded by the data path.
    pub bytes: u64,
    /// Per ifindex: (received packets, received bytes, sent packets, sent bytes).
    pub devices: BTreeMap<u32, [u64; 4]>,
}

impl Counters {
    fn add(&mut self, (ingress, egress): (u32, u32), packets: u64, bytes: u64) {
        self.packets += packets;
        self.bytes += bytes;
        let i = self.devices.entry(ingress).or_default();
        i[0] += packets;
        i[1] += bytes;
        let e = self.devices.entry(egress).or_default();
        e[2] += packets;
        e[3] += bytes;
    }
}

/// The flow table manager.
#[derive(Default)]
pub struct FlowManager {
    flows: HashMap<ConnKey, Offloaded>,
    stats: ManagerStats,
    /// What removed connections had counted.
    retired: Counters,
    /// Pending re-admission after a ruleset change: when it was flushed, and conntrack's packet
    /// counts per connection at that moment.
    readmit: Option<(Instant, PacketCounts)>,
    /// Connections refused because a neighbour had no MAC yet, by that neighbour: retried when
    /// it resolves (no conntrack event would bring them back).
    waiting_for_neighbour: HashMap<(u32, IpAddr), Vec<Conn>>,
    last_refresh: Option<Instant>,
}

fn key_of(c: &Conn) -> ConnKey {
    (c.orig, c.zone)
}

impl FlowManager {
    /// Number of offloaded connections.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Decision counters.
    pub fn stats(&self) -> &ManagerStats {
        &self.stats
    }

    fn reject(&mut self, r: Reject) -> Reject {
        *self
            .stats
            .rejected
            .entry(r.label().to_string())
            .or_default() += 1;
        r
    }

    /// Handles a conntrack message: admit, update or remove.
    pub async fn on_conntrack(&mut self, msg: conntrack::Message, ctx: &Ctx<'_>) {
        match msg {
            conntrack::Message::New(c) | conntrack::Message::Update(c) => {
                if !c.offloadable_state() {
                    self.forget_waiting(&key_of(&c));
                    if self.flows.contains_key(&key_of(&c)) {
                        debug!("{}: left offloadable state, back to the kernel", c.orig);
                        self.remove(&key_of(&c), ctx.dp);
                    }
                    return;
                }
                if self.flows.contains_key(&key_of(&c)) {
                    return;
                }
                let start = Instant::now();
                match self.admit(c.clone(), ctx).await {
                    Ok(()) => {
                        self.stats.last_admit_us = start.elapsed().as_micros() as u64;
                        debug!("{}: offloaded in {} us", c.orig, self.stats.last_admit_us);
                    }
                    Err(r) => debug!("{}: stays in the kernel: {r:?}", c.orig),
                }
            }
            conntrack::Message::Destroy(c) => {
                self.remove(&key_of(&c), ctx.dp);
                self.forget_waiting(&key_of(&c));
            }
            conntrack::Message::RulesetChanged => {
                info!(
                    "firewall ruleset changed: all flows back to the kernel; re-admitting in {} s \
                     those the new rules still forward",
                    READMIT_AFTER.as_secs()
                );
                self.flush(ctx.dp);
                // What conntrack had counted per connection at the flush: a connection whose
                // count grows afterwards is being forwarded by the kernel under the new rules.
                let counts = ctx
                    .ct
                    .and_then(|ct| ct.dump().ok())
                    .map(|conns| conns.iter().map(|c| (key_of(c), c.packets)).collect())
                    .unwrap_or_default();
                self.readmit = Some((Instant::now(), counts));
            }
            _ => {}
        }
    }

    /// Resolves and installs both directions of `c`.
    async fn admit(&mut self, c: Conn, ctx: &Ctx<'_>) -> Result<(), Reject> {
        let Some(dp) = ctx.dp.filter(|dp| dp.enabled()) else {
            return Err(self.reject(Reject::Disabled));
        };
        match resolve_pair(&c, ctx).await {
            Ok(hops) => {
                let [to_orig, to_reply] = &hops;
                for h in &hops {
                    if !ctx.attached.contains(&h.egress_ifindex) {
                        return Err(self
                            .reject(Reject::NotAttached(format!("ifindex {}", h.egress_ifindex))));
                    }
                }
                // Original direction: arrives from the originator's side as `orig`, leaves
                // towards the responder as the reverse of `reply` (that is the NAT).
                let mtu = |h: &NextHop| {
                    let dev = ctx.topo.link(h.egress_ifindex).map_or(h.mtu, |l| l.mtu);
                    encode::wire_mtu(h, dev)
                };
                let fwd = encode::entry(
                    &c.orig,
                    &c.reply.reversed(),
                    to_orig,
                    to_reply,
                    mtu(to_reply),
                );
                let rev = encode::entry(
                    &c.reply,
                    &c.orig.reversed(),
                    to_reply,
                    to_orig,
                    mtu(to_orig),
                );
                let (Some((k0, v0)), Some((k1, v1))) = (fwd, rev) else {
                    return Err(self.reject(Reject::Inexpressible));
                };
                // Like the kernel's flowtable: conntrack must not judge the packets that take the
                // kernel path again later by a window it stopped tracking.
                if c.orig.proto == conntrack::codec::IPPROTO_TCP {
                    let ok = ctx
                        .ct
                        .map(|ct| ct.set_liberal(&[key_of(&c)]))
                        .is_some_and(|r| r.is_ok_and(|alive| alive.first() == Some(&true)));
                    if !ok {
                        return Err(self.reject(Reject::Unresolved(
                            "could not make conntrack's TCP tracking liberal".into(),
                        )));
                    }
                }
                for h in &hops {
                    if let Err(e) = dp.add_tx_port(h.egress_ifindex) {
                        warn!("tx_ports: {e:#}");
                    }
                }
                if let Err(e) = dp.install(&v0).and_then(|()| dp.install(&v1)) {
                    dp.remove_flow(&k0);
                    dp.remove_flow(&k1);
                    debug!("installing {}: {e:#}", c.orig);
                    return Err(self.reject(Reject::MapFull));
                }
                self.stats.admitted += 1;
                self.flows.insert(
                    key_of(&c),
                    Offloaded {
                        conn: c,
                        keys: [k0, k1],
                        hops,
                        packets_at_refresh: 0,
                    },
                );
                Ok(())
            }
            Err(Unresolved::Local) => Err(self.reject(Reject::Local)),
            Err(Unresolved::Neighbour { ifindex, ip }) => {
                let waiting = self.waiting_for_neighbour.entry((ifindex, ip)).or_default();
                // Bounded: a neighbour that never answers must not grow memory without end.
                if waiting.len() < MAX_WAITING_PER_NEIGHBOUR
                    && !waiting.iter().any(|w| key_of(w) == key_of(&c))
                {
                    waiting.push(c);
                }
                Err(self.reject(Reject::Unresolved(format!(
                    "neighbour {ip} on ifindex {ifindex} not resolved"
                ))))
            }
            Err(e) => Err(self.reject(Reject::Unresolved(e.to_string()))),
        }
    }

    fn forget_waiting(&mut self, key: &ConnKey) {
        if self.waiting_for_neighbour.is_empty() {
            return;
        }
        self.waiting_for_neighbour.retain(|_, w| {
            w.retain(|x| key_of(x) != *key);
            !w.is_empty()
        });
    }

    fn remove(&mut self, key: &ConnKey, dp: Option<&Dataplane>) {
        if let Some(f) = self.flows.remove(key) {
            self.retire(&f, dp);
            self.stats.removed += 1;
        }
    }

    /// Takes a connection's entries out of the data path, keeping what they counted.
    fn retire(&mut self, f: &Offloaded, dp: Option<&Dataplane>) {
        let Some(dp) = dp else { return };
        for (dir, k) in f.keys.iter().enumerate() {
            if let Some((p, b, _)) = dp.flow_counters(k) {
                self.retired.add(f.dir_devices(dir), p, b);
            }
            dp.remove_flow(k);
        }
    }

    /// Packets and bytes forwarded by the data path since start, in total and per lowest
    /// device (live entries plus retired ones).
    pub fn counters(&self, dp: Option<&Dataplane>) -> Counters {
        let mut c = self.retired.clone();
        if let Some(dp) = dp {
            for f in self.flows.values() {
                for (dir, k) in f.keys.iter().enumerate() {
                    if let Some((p, b, _)) = dp.flow_counters(k) {
                        c.add(f.dir_devices(dir), p, b);
                    }
                }
            }
        }
        c
    }

    /// Drops every offloaded flow (they continue on the kernel path).
    pub fn flush(&mut self, dp: Option<&Dataplane>) {
        let keys: Vec<ConnKey> = self.flows.keys().copied().collect();
        for k in &keys {
            self.remove(k, dp);
        }
        self.stats.flushes += 1;
    }

    /// Reacts to a topology change: re-resolves the flows it may affect. A flow that no longer
    /// resolves leaves the data path; one whose next hop changed is rewritten in place.
    pub async fn on_topology(&mut self, ev: &TopologyEvent, ctx: &Ctx<'_>) {
        if let TopologyEvent::Neigh {
            ifindex,
            ip,
            mac: Some(_),
        } = ev
        {
            if let Some(waiting) = self.waiting_for_neighbour.remove(&(*ifindex, *ip)) {
                debug!(
                    "neighbour {ip} resolved: retrying {} connections",
                    waiting.len()
                );
                for c in waiting {
                    if !self.flows.contains_key(&key_of(&c)) {
                        let _ = self.admit(c, ctx).await;
                    }
                }
            }
        }
        let affected: Vec<ConnKey> = self
            .flows
            .iter()
            .filter(|(_, f)| match ev {
                TopologyEvent::Route | TopologyEvent::Resync | TopologyEvent::Addr { .. } => true,
                TopologyEvent::Link(i) => f.uses_device(*i),
                TopologyEvent::Neigh { ifindex, ip, .. } => f.uses_neighbour(*ifindex, *ip),
                TopologyEvent::Fdb { mac, bridge, .. } => f.uses_mac(mac) || f.uses_device(*bridge),
            })
            .map(|(k, _)| *k)
            .collect();
        if affected.is_empty() {
            return;
        }
        debug!("{ev:?}: re-resolving {} flows", affected.len());
        for key in affected {
            let Some(old) = self.flows.remove(&key) else {
                continue;
            };
            self.stats.reresolved += 1;
            let conn = old.conn.clone();
            match resolve_pair(&conn, ctx).await {
                Ok(hops) if hops == old.hops => {
                    self.flows.insert(key, old);
                }
                Ok(_) | Err(_) => {
                    // Take the old entries out first so nothing stale forwards, then try again.
                    self.retire(&old, ctx.dp);
                    self.stats.removed += 1;
                    if let Err(r) = self.admit(conn, ctx).await {
                        debug!("{}: after {ev:?}: stays in the kernel: {r:?}", key.0);
                    }
                }
            }
        }
    }

    /// Periodic work: remove flows the data path marked for teardown, refresh conntrack timeouts
    /// of flows with traffic, and check that idle ones still exist.
    pub fn tick(&mut self, ct: &conntrack::Client, dp: Option<&Dataplane>, timeouts: &Timeouts) {
        let Some(dp) = dp else { return };
        let due = self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= timeouts.refresh_every());
        let mut teardown = Vec::new();
        let mut active = Vec::new();
        let mut idle = Vec::new();
        for (key, f) in self.flows.iter_mut() {
            let (mut packets, mut marked) = (0, false);
            for k in &f.keys {
                if let Some((p, _, flags)) = dp.flow_counters(k) {
                    packets += p;
                    marked |= flags & crate::dataplane::abi::FLOW_F_TEARDOWN != 0;
                }
            }
            if marked {
                teardown.push(*key);
            } else if due && packets != f.packets_at_refresh {
                f.packets_at_refresh = packets;
                active.push(*key);
            } else if due {
                idle.push(*key);
            }
        }
        for key in &teardown {
            debug!(
                "{}: FIN/RST seen by the data path, back to the kernel",
                key.0
            );
            self.remove(key, Some(dp));
        }
        if !due {
            return;
        }
        self.last_refresh = Some(Instant::now());
        let check = |keys: Vec<ConnKey>, timeout: &dyn Fn(u8) -> Option<u32>| -> Vec<ConnKey> {
            // Refresh active flows with their protocol's established timeout; query idle ones
            // (timeout None) only for existence.
            let mut gone = Vec::new();
            for proto in [conntrack::codec::IPPROTO_TCP, conntrack::codec::IPPROTO_UDP] {
                let batch: Vec<ConnKey> = keys
                    .iter()
                    .filter(|k| k.0.proto == proto)
                    .copied()
                    .collect();
                if batch.is_empty() {
                    continue;
                }
                let result = match timeout(proto) {
                    Some(t) => ct.refresh(&batch, t),
                    None => ct.exists(&batch),
                };
                match result {
                    Ok(alive) => {
                        gone.extend(batch.iter().zip(alive).filter(|(_, a)| !a).map(|(k, _)| *k))
                    }
                    Err(e) => warn!("conntrack refresh: {e:#}"),
                }
            }
            gone
        };
        let mut gone = check(active, &|p| Some(timeouts.established(p)));
        gone.extend(check(idle, &|_| None));
        for key in &gone {
            debug!("{}: conntrack entry gone", key.0);
            self.remove(key, Some(dp));
        }
    }

    /// After a ruleset change and [`READMIT_AFTER`]: offloads again the connections the kernel
    /// kept forwarding under the new rules (conntrack counted packets both ways since). Without
    /// nf_conntrack_acct there are no counts, and every live connection is re-admitted: rules
    /// that should stop an established connection must then also delete its conntrack entry, as
    /// with the kernel's own flowtable.
    pub async fn readmit_due(&mut self, ctx: &Ctx<'_>) {
        let Some((since, before)) = self.readmit.take() else {
            return;
        };
        if since.elapsed() < READMIT_AFTER {
            self.readmit = Some((since, before));
            return;
        }
        let Some(conns) = ctx.ct.and_then(|ct| ct.dump().ok()) else {
            return;
        };
        for c in conns {
            if !c.offloadable_state() || self.flows.contains_key(&key_of(&c)) {
                continue;
            }
            // Conntrack counts at prerouting, before any filter verdict: only growth in both
            // directions shows that packets got through and answers came back.
            let forwarded = match (before.get(&key_of(&c)).copied().flatten(), c.packets) {
                (Some(then), Some(now)) => now[0] > then[0] && now[1] > then[1],
                // No accounting, or a connection born after the flush: nothing says otherwise.
                _ => true,
            };
            if forwarded {
                let _ = self.admit(c, ctx).await;
            }
        }
    }

    /// Re-synchronises with the kernel: every offloadable conntrack entry is (re)admitted, every
    /// flow whose entry is gone removed, and map entries nobody owns deleted (left by an earlier
    /// daemon or by lost events).
    pub async fn resync(&mut self, conns: Vec<Conn>, ctx: &Ctx<'_>) {
        let live: HashSet<ConnKey> = conns
            .iter()
            .filter(|c| c.offloadable_state())
            .map(key_of)
            .collect();
        let stale: Vec<ConnKey> = self
            .flows
            .keys()
            .filter(|k| !live.contains(k))
            .copied()
            .collect();
        for k in &stale {
            self.remove(k, ctx.dp);
        }
        for c in conns {
            if c.offloadable_state() && !self.flows.contains_key(&key_of(&c)) {
                let _ = self.admit(c, ctx).await;
            }
        }
        if let Some(dp) = ctx.dp {
            let owned: Vec<&FlowKey> = self.flows.values().flat_map(|f| f.keys.iter()).collect();
            dp.retain_flows(&owned);
        }
    }

    /// Per-flow status.
    pub fn flow_status(&self, dp: Option<&Dataplane>) -> Vec<FlowStatus> {
        let mut out: Vec<FlowStatus> = self
            .flows
            .values()
            .map(|f| {
                let c = |i: usize| {
                    dp.and_then(|dp| dp.flow_counters(&f.keys[i]))
                        .unwrap_or_default()
                };
                let (p0, b0, _) = c(0);
                let (p1, b1, _) = c(1);
                FlowStatus {
                    proto: if f.conn.orig.proto == conntrack::codec::IPPROTO_TCP {
                        "tcp"
                    } else {
                        "udp"
                    },
                    orig: f.conn.orig.to_string(),
                    reply: f.conn.reply.to_string(),
                    packets_orig: p0,
                    packets_reply: p1,
                    bytes: b0 + b1,
                    ingress_ifindex: f.hops[0].egress_ifindex,
                    egress_ifindex: f.hops[1].egress_ifindex,
                }
            })
            .collect();
        out.sort_by(|a, b| a.orig.cmp(&b.orig));
        out
    }
}

/// What admission and invalidation need from the daemon.
pub struct Ctx<'a> {
    /// The network model.
    pub topo: &'a Topology,
    /// rtnetlink requests (route and neighbour lookups).
    pub handle: &'a Handle,
    /// The data path, when loaded.
    pub dp: Option<&'a Dataplane>,
    /// Lowest devices the data path is attached to (offload-enabled interfaces).
    pub attached: &'a HashSet<u32>,
    /// Conntrack requests (TCP window tracking made liberal at admission).
    pub ct: Option<&'a conntrack::Client>,
}

/// Resolves the next hop towards each end of `c`: [towards the originator, towards the
/// responder]. Each lookup is a forwarded-packet route query (policy routing with the real
/// input device and mark), so what is installed is what the kernel itself would do.
async fn resolve_pair(c: &Conn, ctx: &Ctx<'_>) -> Result<[NextHop; 2], Unresolved> {
    // The event loop must never hang on netlink: a lookup that does not answer in time leaves
    // the connection in the kernel.
    tokio::time::timeout(RESOLVE_TIMEOUT, resolve_pair_inner(c, ctx))
        .await
        .unwrap_or_else(|_| {
            Err(Unresolved::Netlink(
                "route/neighbour lookup timed out".into(),
            ))
        })
}

async fn resolve_pair_inner(c: &Conn, ctx: &Ctx<'_>) -> Result<[NextHop; 2], Unresolved> {
    let mark = (c.mark != 0).then_some(c.mark);
    let plain = |dst| RouteQuery {
        dst,
        src: None,
        iif: None,
        mark,
    };
    // First find the L3 device each end is behind (the router's own route), which is the input
    // device of the packets coming from that end...
    let orig_side = ctx.topo.resolve(ctx.handle, plain(c.orig.src)).await?;
    // ...then resolve each direction as a forwarded packet from that device.
    let q = |dst, src, iif| RouteQuery {
        dst,
        src: Some(src),
        iif: Some(iif),
        mark,
    };
    // Routing sees a packet after destination NAT (prerouting) and before source NAT
    // (postrouting): the original direction as (orig.src -> reply.src), the reply direction as
    // (reply.src -> orig.src).
    let to_reply = ctx
        .topo
        .resolve(ctx.handle, q(c.reply.src, c.orig.src, orig_side.l3_ifindex))
        .await?;
    let to_orig = ctx
        .topo
        .resolve(ctx.handle, q(c.orig.src, c.reply.src, to_reply.l3_ifindex))
        .await?;
    Ok([to_orig, to_reply])
}

/// Conntrack's established timeouts, read from procfs, so a refreshed flow lives exactly as long
/// as it would in the kernel path.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `nf_conntrack_tcp_timeout_established`.
    pub tcp: u32,
    /// `nf_conntrack_udp_timeout_stream`.
    pub udp: u32,
}

impl Timeouts {
    /// Reads them (defaults when procfs does not have them).
    pub fn read() -> Self {
        let get = |name: &str, default: u32| {
            std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(default)
        };
        Self {
            tcp: get("nf_conntrack_tcp_timeout_established", 432_000),
            udp: get("nf_conntrack_udp_timeout_stream", 180),
        }
    }

    /// How often to refresh so that no entry can expire between two refreshes.
    pub fn refresh_every(&self) -> Duration {
        let third = Duration::from_secs(u64::from(self.tcp.min(self.udp) / 3));
        third.clamp(Duration::from_secs(1), REFRESH_EVERY_MAX)
    }

    fn established(&self, proto: u8) -> u32 {
        if proto == conntrack::codec::IPPROTO_TCP {
            self.tcp
        } else {
            self.udp
        }
    }
}
