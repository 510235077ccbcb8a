//! The flow table manager: turns conntrack entries into data-path entries and keeps them true.
//!
//! - Admission: a connection that conntrack reports ESTABLISHED (TCP) or ASSURED (UDP), routed
//!   between two offload-enabled attach points, is resolved in both directions (route, neighbour,
//!   bridge port, VLAN/PPPoE/DSA down to the lowest device) and installed as two entries.
//! - Removal: conntrack DESTROY, a state change out of the offloadable states, a FIN/RST event
//!   from the data path (or its flag, found when refreshing), or the conntrack entry vanishing.
//! - Invalidation: route changes re-resolve every flow, neighbour/FDB/link changes the flows that
//!   use them; a firewall reload drops everything so the new rules see the traffic.
//! - Liveness: while offloaded packets flow, conntrack never sees them, so their entries' timeouts
//!   are refreshed from here.
//!
//! Whatever cannot be resolved exactly stays in the kernel path, which is always correct.
//!
//! [`FlowManager`] is a state machine fed by events, with the world behind the traits of
//! [`ports`] and the time passed in ([`Ctx::now`]): the unit tests below drive it with fakes.

pub mod encode;
mod flows;
pub mod ports;
pub mod report;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;
use std::time::Instant;

use log::debug;
use log::info;
use log::warn;

use crate::conntrack;
use crate::conntrack::Conn;
use crate::conntrack::Tuple;
use crate::dataplane::entry::FlowKey;
use crate::qos::ShapedDevice;
use crate::topology::NextHop;
use crate::topology::TopologyEvent;
use crate::topology::Unresolved;
use encode::Shaping;
use flows::Flows;
use ports::ConntrackOps;
use ports::FlowTable;
use ports::Resolver;
use report::Counters;
use report::FlowStatus;
use report::ManagerStats;
use report::OffloadStatus;

/// Longest interval between refreshes of live flows' conntrack timeouts; shorter when the
/// configured timeouts are short (a third of the shortest, at least a second).
pub const REFRESH_EVERY_MAX: Duration = Duration::from_secs(10);

/// After a firewall ruleset change, how long connections stay on the kernel path before those
/// the new rules still forward are offloaded again.
pub const READMIT_AFTER: Duration = Duration::from_secs(2);

/// Longest a connection's next-hop resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection that found no room in the flow table (table full, crowded bucket) is not
/// retried on conntrack events. Its own admission attempt causes one (making TCP tracking liberal
/// is a ctnetlink update, announced as an UPDATE event): retried at once, it would fail again and
/// cause the next, a loop that took a whole core at 10k connections.
const UNPLACEABLE_RETRY: Duration = Duration::from_secs(10);

/// How long a connection the data path saw end is remembered ([`FlowManager::torn_down`]):
/// conntrack's TIME_WAIT.
const TORN_DOWN_FORGET: Duration = Duration::from_secs(120);

/// Connections remembered in [`FlowManager::torn_down`] (the oldest forgotten beyond).
const MAX_TORN_DOWN: usize = 8192;

/// Connections remembered in [`FlowManager::unplaceable`] (forgotten all at once beyond).
const MAX_UNPLACEABLE: usize = 4096;

/// Re-resolutions looked up at once (see [`FlowManager::reresolve`]).
const RERESOLVE_BATCH: usize = 128;

/// Connections listed in the status document's `flows` (the busiest, when there are more).
pub const MAX_LISTED_FLOWS: usize = 256;

/// A backlog of more connections than this is a burst worth giving memory back after.
const BIG_BURST: usize = 4096;

/// Connections remembered per unresolved neighbour.
const MAX_WAITING_PER_NEIGHBOUR: usize = 256;

/// Conntrack's [original, reply] packet counts per connection (None without accounting).
type PacketCounts = HashMap<ConnKey, Option<[u64; 2]>>;

/// Identity of a connection: its original tuple and zone.
pub type ConnKey = (Tuple, u16);

/// What an offloaded connection keeps of its conntrack entry: what admitting it again (after
/// a topology change) and the status use. 92 bytes where a [`Conn`] is 152, at 64k
/// connections 3.5 MiB less.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    id: u32,
    orig: Tuple,
    reply: Tuple,
    mark: u32,
    zone: u16,
}

impl Held {
    fn of(c: &Conn) -> Self {
        Self {
            id: c.id,
            orig: c.orig,
            reply: c.reply,
            mark: c.mark,
            zone: c.zone,
        }
    }

    fn key(&self) -> ConnKey {
        (self.orig, self.zone)
    }

    /// The connection as admission sees it (no state, timeout or counts: admission does not
    /// read them).
    fn conn(&self) -> Conn {
        let mut c = Conn::new(self.id, self.orig, self.reply);
        c.mark = self.mark;
        c.zone = self.zone;
        c
    }
}

/// One offloaded connection: both directions installed.
pub(super) struct Offloaded {
    conn: Held,
    /// [original direction, reply direction].
    keys: [FlowKey; 2],
    /// Next hop towards the originator and towards the responder, shared with every other
    /// connection that has the same ([`FlowManager::intern`]): a router's connections go to a
    /// handful of next hops, and each is a few hundred bytes.
    hops: [Rc<NextHop>; 2],
    /// Packets counted by the data path at the last refresh (both directions).
    packets_at_refresh: u64,
    /// Admission number ([`FlowManager::next_seq`]): tells a resync from a background dump
    /// which flows the dump could know about.
    seq: u64,
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

    fn affected_by(&self, ev: &TopologyEvent) -> bool {
        match ev {
            TopologyEvent::Route | TopologyEvent::Resync | TopologyEvent::Addr { .. } => true,
            TopologyEvent::Link(i) => self.uses_device(*i),
            TopologyEvent::Neigh { ifindex, ip, .. } => self.uses_neighbour(*ifindex, *ip),
            TopologyEvent::Fdb { mac, bridge, .. } => {
                self.uses_mac(mac) || self.uses_device(*bridge)
            }
        }
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
    /// A direction the data path cannot put through its shaper (an upload arriving with
    /// in-frame encapsulation, a direction between two shaped interfaces): the kernel path,
    /// which the shapers see.
    Shaped,
    /// The data path is not loaded or offload is off.
    Disabled,
    /// The data path saw this very conntrack entry end (FIN/RST); what still shows it
    /// offloadable is older than that.
    Ended,
}

impl Reject {
    fn label(&self) -> &'static str {
        match self {
            Reject::Local => "local",
            Reject::Unresolved(_) => "unresolved",
            Reject::NotAttached(_) => "not_attached",
            Reject::Inexpressible => "inexpressible",
            Reject::MapFull => "map_full",
            Reject::Shaped => "shaped",
            Reject::Disabled => "disabled",
            Reject::Ended => "ended",
        }
    }
}

/// What admission and invalidation work against, for one event.
pub struct Ctx<'a> {
    /// Next-hop resolution.
    pub resolver: &'a dyn Resolver,
    /// The data path, when loaded.
    pub dp: Option<&'a dyn FlowTable>,
    /// Lowest devices the data path is attached to (offload-enabled interfaces).
    pub attached: &'a HashSet<u32>,
    /// Shaped interfaces by L3 ifindex: their connections are forwarded through the shapers.
    pub shaped: &'a HashMap<u32, ShapedDevice>,
    /// Conntrack requests, when conntrack is available.
    pub ct: Option<&'a dyn ConntrackOps>,
    /// The time of the event.
    pub now: Instant,
}

/// The flow table manager.
#[derive(Default)]
pub struct FlowManager {
    /// The offloaded connections; a connection's slot is the owner of its flow entries
    /// (teardown events name keys: [`FlowTable::owner`] leads back to the connection).
    flows: Flows,
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
    /// The refresh round in progress: connections still to look at, and how many per tick.
    /// (By slot: 4 bytes a connection. A slot emptied and filled again meanwhile holds a
    /// newer connection, looked at early; one admitted into a slot already passed waits for
    /// the next round, as any connection admitted during a round does.)
    refresh_round: VecDeque<u32>,
    refresh_slice: usize,
    /// Work too big for one turn of the event loop, done a slice at a time ([`Self::work`]).
    backlog: Backlog,
    /// Connections that found no room in the flow table, and when (see
    /// [`UNPLACEABLE_RETRY`]).
    unplaceable: HashMap<ConnKey, Instant>,
    /// Connections the data path saw end (FIN/RST): their conntrack entry's id, and when. A
    /// dump or a late event that still shows that same entry offloadable does not bring it
    /// back (conntrack may keep an entry ESTABLISHED a while after an RST it doubts, and a dump
    /// may predate the end); a new entry on the same tuple (another id) is admitted as usual.
    torn_down: HashMap<ConnKey, (u32, Instant)>,
    /// Next hops in use, one copy of each ([`Self::intern`]); pruned once per refresh round.
    hop_pool: HashSet<Rc<NextHop>>,
    /// Number of the next admission (see [`Offloaded::seq`]).
    next_seq: u64,
    /// While a background dump runs ([`Self::dump_started`]): connections destroyed, out of the
    /// offloadable states or torn down by a FIN/RST since it started, which it may still list
    /// as they were. (An event older than the dump may veto it too: one sent before the dump
    /// got to that entry. The event of the transition that followed is then delivered, since
    /// the event queue was emptied before the dump, and admits it.) Found by the churn soak:
    /// a connection the dump listed before its FIN, admitted again after it, had its last
    /// packets forwarded around conntrack, which then lost track of the close.
    /// Kept until no dump runs and none is being applied (a set collected since an earlier
    /// dump started is a superset of what a later one must not bring back: safe).
    dump_gone: Option<HashSet<ConnKey>>,
    /// A background dump is running ([`Self::dump_started`] until [`Self::resync_since`] or
    /// [`Self::dump_failed`]).
    dump_running: bool,
    /// A dump being applied ([`Self::resync_since`]).
    applying: Option<Applying>,
}

/// Where a background conntrack dump started ([`FlowManager::dump_started`]): flows admitted
/// after it cannot be in it, so its resync must not take them for stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpMark {
    seq: u64,
    /// [`ManagerStats::flushes`] then: a flush since (a firewall reload, offload off) voids the
    /// dump's admissions, which are for the re-admission delay to decide.
    flushes: u64,
}

/// Dump entries (or flows) looked at per slice of a dump's application.
const DUMP_SLICE: usize = 4096;

/// A dump being applied ([`FlowManager::resync_since`]), a slice per turn of the event loop:
/// at 64k connections applying it at once held the loop 60 ms.
struct Applying {
    /// The dump, reversed: admissions take it from the end, in the order it came.
    conns: Vec<Conn>,
    mark: DumpMark,
    /// The connections it shows offloadable.
    live: HashSet<ConnKey>,
    step: ApplyStep,
    /// Where the step goes on (a dump entry, a slot).
    next: usize,
    /// Entries in the dump.
    total: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ApplyStep {
    Live,
    Stale,
    Admit,
}

impl Applying {
    fn new(mut conns: Vec<Conn>, mark: DumpMark) -> Self {
        conns.reverse();
        Self {
            total: conns.len(),
            live: HashSet::with_capacity(conns.len()),
            conns,
            mark,
            step: ApplyStep::Live,
            next: 0,
        }
    }
}

/// Admissions found by a resync and re-resolutions after a topology change, waiting for
/// [`FlowManager::work`]. At 64k connections either is seconds of route lookups and ctnetlink
/// requests; done in one go it would hold every other event (a FIN, a status request, the
/// heartbeat) for that long.
#[derive(Default)]
struct Backlog {
    /// Connections to admit, in the order found; `admit_conns` holds the ones still wanted (a
    /// DESTROY meanwhile takes a connection out of it, so the order may name keys it no longer
    /// has).
    admit: VecDeque<ConnKey>,
    admit_conns: HashMap<ConnKey, Conn>,
    /// Offloaded connections to re-resolve, and the change that asked for it (the latest).
    reresolve: VecDeque<ConnKey>,
    reresolve_queued: HashSet<ConnKey>,
    reresolve_event: Option<TopologyEvent>,
    /// When the oldest change still being worked through arrived, and how many flows were queued
    /// since (`last_reresolution` once the queue is empty).
    reresolve_since: Option<(Instant, u64)>,
}

impl Backlog {
    fn is_empty(&self) -> bool {
        self.admit.is_empty() && self.reresolve.is_empty()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    /// Gives back the room a burst took (a 64k dump: megabytes), once worked through; whether
    /// it was a big one (room for more than [`BIG_BURST`] connections).
    fn shrink(&mut self) -> bool {
        let big = self.admit.capacity().max(self.reresolve.capacity()) > BIG_BURST;
        self.admit.shrink_to_fit();
        self.admit_conns.shrink_to_fit();
        self.reresolve.shrink_to_fit();
        self.reresolve_queued.shrink_to_fit();
        big
    }
}

fn key_of(c: &Conn) -> ConnKey {
    (c.orig, c.zone)
}

impl FlowManager {
    /// Number of offloaded connections.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no connection is offloaded.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
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

    /// The shared copy of `h`.
    fn intern(&mut self, h: NextHop) -> Rc<NextHop> {
        if let Some(known) = self.hop_pool.get(&h) {
            return Rc::clone(known);
        }
        let h = Rc::new(h);
        self.hop_pool.insert(Rc::clone(&h));
        h
    }

    /// Handles a conntrack message: admit, update or remove.
    pub async fn on_conntrack(&mut self, msg: conntrack::Message, ctx: &Ctx<'_>) {
        match msg {
            conntrack::Message::New(c) | conntrack::Message::Update(c) => {
                if !c.offloadable_state() {
                    self.backlog.admit_conns.remove(&key_of(&c));
                    if let Some(gone) = &mut self.dump_gone {
                        gone.insert(key_of(&c));
                    }
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
                // Found no room lately: an event (often the UPDATE its own admission attempt
                // caused) is no reason to try again yet.
                if self
                    .unplaceable
                    .get(&key_of(&c))
                    .is_some_and(|t| ctx.now.saturating_duration_since(*t) < UNPLACEABLE_RETRY)
                {
                    return;
                }
                // Tried now: the backlog (if it has it) need not try again.
                self.backlog.admit_conns.remove(&key_of(&c));
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
                self.backlog.admit_conns.remove(&key_of(&c));
                self.unplaceable.remove(&key_of(&c));
                if self.ended(&c) {
                    self.torn_down.remove(&key_of(&c));
                }
                if let Some(gone) = &mut self.dump_gone {
                    gone.insert(key_of(&c));
                }
                // The end of an older entry on the same tuple is not this flow's.
                let other_entry = self
                    .flows
                    .get(&key_of(&c))
                    .is_some_and(|f| f.conn.id != 0 && c.id != 0 && f.conn.id != c.id);
                if !other_entry {
                    self.remove(&key_of(&c), ctx.dp);
                }
                self.forget_waiting(&key_of(&c));
            }
            conntrack::Message::RulesetChanged => self.on_ruleset_changed(ctx),
            _ => {}
        }
    }

    /// Remembers that the data path saw offloaded connection `key` end ([`Self::torn_down`]).
    fn note_ended(&mut self, key: &ConnKey, now: Instant) {
        let Some(id) = self.flows.get(key).map(|f| f.conn.id).filter(|&id| id != 0) else {
            return; // without an id, a new entry on the tuple could not be told apart
        };
        if self.torn_down.len() >= MAX_TORN_DOWN {
            self.forget_ended_before(now);
            if self.torn_down.len() >= MAX_TORN_DOWN {
                self.torn_down.clear();
            }
        }
        self.torn_down.insert(*key, (id, now));
    }

    /// Forgets the connections that ended more than [`TORN_DOWN_FORGET`] before `now`.
    fn forget_ended_before(&mut self, now: Instant) {
        self.torn_down
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < TORN_DOWN_FORGET);
    }

    /// Whether `c` is a conntrack entry the data path saw end.
    fn ended(&self, c: &Conn) -> bool {
        c.id != 0
            && self
                .torn_down
                .get(&key_of(c))
                .is_some_and(|(id, _)| *id == c.id)
    }

    fn on_ruleset_changed(&mut self, ctx: &Ctx<'_>) {
        info!(
            "firewall ruleset changed: all flows back to the kernel; re-admitting in {} s \
             those the new rules still forward",
            READMIT_AFTER.as_secs()
        );
        self.flush(ctx.dp);
        // What conntrack had counted per connection at the flush: a connection whose count
        // grows afterwards is being forwarded by the kernel under the new rules.
        let counts = ctx
            .ct
            .and_then(|ct| ct.dump().ok())
            .map(|conns| conns.iter().map(|c| (key_of(c), c.packets)).collect())
            .unwrap_or_default();
        self.readmit = Some((ctx.now, counts));
    }

    /// The data path saw a FIN or RST on these flows: their connections go back to the kernel,
    /// which sees the rest of the teardown.
    pub fn on_teardown(&mut self, keys: &[FlowKey], dp: Option<&dyn FlowTable>) {
        let Some(table) = dp else { return };
        for k in keys {
            // The entry's owner is the connection's slot; a slot emptied and filled again since
            // holds another connection, whose keys are not this one.
            let owner = table.owner(k).and_then(|slot| self.flows.by_slot(slot));
            if let Some(conn) = owner.filter(|f| f.keys.contains(k)).map(|f| f.conn.key()) {
                debug!(
                    "{}: FIN/RST seen by the data path, back to the kernel",
                    conn.0
                );
                if let Some(gone) = &mut self.dump_gone {
                    gone.insert(conn);
                }
                self.note_ended(&conn, Instant::now());
                self.remove(&conn, dp);
                self.stats.teardown_events += 1;
            }
        }
    }

    /// Resolves and installs both directions of `c`.
    async fn admit(&mut self, c: Conn, ctx: &Ctx<'_>) -> Result<(), Reject> {
        let Some(dp) = ctx.dp.filter(|dp| dp.enabled()) else {
            return Err(self.reject(Reject::Disabled));
        };
        if self.ended(&c) {
            return Err(self.reject(Reject::Ended));
        }
        let hops = match resolve_pair(&c, ctx).await {
            Ok(hops) => hops,
            Err(Unresolved::Local) => return Err(self.reject(Reject::Local)),
            Err(Unresolved::Neighbour { ifindex, ip }) => {
                self.wait_for_neighbour(ifindex, ip, c);
                return Err(self.reject(Reject::Unresolved(format!(
                    "neighbour {ip} on ifindex {ifindex} not resolved"
                ))));
            }
            Err(e) => return Err(self.reject(Reject::Unresolved(e.to_string()))),
        };
        let [to_orig, to_reply] = &hops;
        let shaping = match (
            direction_shaping(to_orig, to_reply, ctx.shaped),
            direction_shaping(to_reply, to_orig, ctx.shaped),
        ) {
            (Some(a), Some(b)) => [a, b],
            _ => return Err(self.reject(Reject::Shaped)),
        };
        if let Some(h) = hops
            .iter()
            .find(|h| !ctx.attached.contains(&h.egress_ifindex))
        {
            let what = format!("ifindex {}", h.egress_ifindex);
            return Err(self.reject(Reject::NotAttached(what)));
        }
        let Some([(k0, v0), (k1, v1)]) = encode::connection(&c, &hops, ctx.resolver, shaping)
        else {
            let why = if shaping == [Shaping::Unshaped; 2] {
                Reject::Inexpressible
            } else {
                Reject::Shaped
            };
            return Err(self.reject(why));
        };
        // Like the kernel's flowtable: conntrack must not judge the packets that take the
        // kernel path again later by a window it stopped tracking, so the flag is set before
        // the first packet bypasses it. This is also where a connection destroyed while it was
        // being resolved is found out: no entry, no flow.
        if c.orig.proto == conntrack::codec::IPPROTO_TCP {
            let alive = match ctx.ct.map(|ct| ct.set_liberal(&[key_of(&c)])) {
                Some(Ok(alive)) => alive.first() == Some(&true),
                Some(Err(e)) => {
                    debug!("{}: liberal TCP tracking: {e:#}", c.orig);
                    false
                }
                None => false,
            };
            if !alive {
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
        let slot = self.flows.vacant_slot();
        if let Err(e) = dp.install(&v0, slot).and_then(|()| dp.install(&v1, slot)) {
            dp.remove(&k0);
            dp.remove(&k1);
            debug!("installing {}: {e:#}", c.orig);
            // The liberal flag above came back as an UPDATE event, which would retry this
            // connection at once, and fail again, and so on: not before UNPLACEABLE_RETRY.
            if self.unplaceable.len() >= MAX_UNPLACEABLE {
                self.unplaceable.clear();
            }
            self.unplaceable.insert(key_of(&c), ctx.now);
            return Err(self.reject(Reject::MapFull));
        }
        self.unplaceable.remove(&key_of(&c));
        self.stats.admitted += 1;
        let hops = hops.map(|h| self.intern(h));
        let seq = self.next_seq;
        self.next_seq += 1;
        self.flows.insert(Offloaded {
            conn: Held::of(&c),
            keys: [k0, k1],
            hops,
            packets_at_refresh: 0,
            seq,
        });
        Ok(())
    }

    fn wait_for_neighbour(&mut self, ifindex: u32, ip: IpAddr, c: Conn) {
        let waiting = self.waiting_for_neighbour.entry((ifindex, ip)).or_default();
        // Bounded: a neighbour that never answers must not grow memory without end.
        if waiting.len() < MAX_WAITING_PER_NEIGHBOUR
            && !waiting.iter().any(|w| key_of(w) == key_of(&c))
        {
            waiting.push(c);
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

    fn remove(&mut self, key: &ConnKey, dp: Option<&dyn FlowTable>) {
        if let Some(f) = self.flows.remove(key) {
            self.retire(&f, dp);
            self.stats.removed += 1;
        }
    }

    /// Takes a connection's entries out of the data path, keeping what they counted.
    fn retire(&mut self, f: &Offloaded, dp: Option<&dyn FlowTable>) {
        let Some(dp) = dp else { return };
        for (dir, k) in f.keys.iter().enumerate() {
            if let Some(c) = dp.counters(k) {
                self.retired.add(f.dir_devices(dir), c.packets, c.bytes);
            }
            dp.remove(k);
        }
    }

    /// Drops every offloaded flow (they continue on the kernel path).
    pub fn flush(&mut self, dp: Option<&dyn FlowTable>) {
        self.backlog.clear();
        let keys: Vec<ConnKey> = self.flows.keys().collect();
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
            self.retry_waiting(*ifindex, *ip, ctx).await;
        }
        let affected: Vec<ConnKey> = self
            .flows
            .iter()
            .filter(|(_, f)| f.affected_by(ev))
            .map(|(k, _)| k)
            .collect();
        if affected.is_empty() {
            return;
        }
        debug!("{ev:?}: re-resolving {} flows", affected.len());
        let b = &mut self.backlog;
        let (since, queued) = b.reresolve_since.unwrap_or((ctx.now, 0));
        let mut added = 0;
        for key in affected {
            if b.reresolve_queued.insert(key) {
                b.reresolve.push_back(key);
                added += 1;
            }
        }
        b.reresolve_since = Some((since, queued + added));
        b.reresolve_event = Some(ev.clone());
    }

    /// Queues the admission `msg` asks for in the backlog instead of doing it now (the event
    /// loop has spent its slice on a burst of events); gives back a message that must be handled
    /// now (a removal, a state change, an update of an offloaded connection).
    pub fn defer(&mut self, msg: conntrack::Message) -> Option<conntrack::Message> {
        match msg {
            conntrack::Message::New(c) | conntrack::Message::Update(c)
                if c.offloadable_state() && !self.flows.contains_key(&key_of(&c)) =>
            {
                let key = key_of(&c);
                if self.backlog.admit_conns.insert(key, c).is_none() {
                    self.backlog.admit.push_back(key);
                }
                None
            }
            other => Some(other),
        }
    }

    /// Whether admissions, re-resolutions or a dump's application are waiting for
    /// [`Self::work`].
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty() || self.applying.is_some()
    }

    /// Connections waiting for admission or re-resolution, and the entries of a dump still to
    /// apply.
    pub fn backlog_len(&self) -> usize {
        let dump = self.applying.as_ref().map_or(0, |a| a.conns.len());
        self.backlog.admit_conns.len() + self.backlog.reresolve.len() + dump
    }

    /// Works through the backlog for about `budget`: re-resolutions first (their flows may be
    /// forwarding on a stale next hop), then a dump being applied, then admissions. Returns with work left when the budget
    /// is spent, so that the event loop serves everything else in between. True when this
    /// finished a big burst (the caller may give the memory it took back to the system).
    pub async fn work(&mut self, ctx: &Ctx<'_>, budget: Duration) -> bool {
        let start = Instant::now();
        let mut big_dump = false;
        while start.elapsed() < budget {
            if !self.backlog.reresolve.is_empty() {
                let n = self.backlog.reresolve.len().min(RERESOLVE_BATCH);
                let keys: Vec<ConnKey> = self.backlog.reresolve.drain(..n).collect();
                for k in &keys {
                    self.backlog.reresolve_queued.remove(k);
                }
                let ev = self
                    .backlog
                    .reresolve_event
                    .clone()
                    .unwrap_or(TopologyEvent::Route);
                self.reresolve(&keys, &ev, ctx).await;
                if self.backlog.reresolve.is_empty() {
                    self.reresolution_done();
                }
            } else if let Some(total) = self.applying.as_ref().map(|a| a.total) {
                let gone = self.dump_gone.take().unwrap_or_default();
                let more = self.apply_slice(&gone, ctx);
                self.dump_gone = Some(gone);
                if !more {
                    self.settle_dump_gone();
                    big_dump |= total > BIG_BURST;
                }
            } else if let Some(key) = self.backlog.admit.pop_front() {
                let Some(c) = self.backlog.admit_conns.remove(&key) else {
                    continue; // destroyed meanwhile
                };
                if self.flows.contains_key(&key) {
                    continue; // an event admitted it meanwhile
                }
                let orig = c.orig;
                match self.admit(c, ctx).await {
                    Ok(()) => debug!("{orig}: offloaded from the backlog"),
                    Err(r) => debug!("{orig}: stays in the kernel: {r:?}"),
                }
            } else {
                break;
            }
        }
        let big_backlog = !self.has_backlog() && self.backlog.shrink();
        big_backlog || big_dump
    }

    fn reresolution_done(&mut self) {
        let b = &mut self.backlog;
        b.reresolve_event = None;
        if let Some((since, flows)) = b.reresolve_since.take() {
            self.stats.last_reresolution = Some(report::Reresolution {
                flows,
                us: Instant::now()
                    .saturating_duration_since(since)
                    .as_micros()
                    .try_into()
                    .unwrap_or(u64::MAX),
            });
        }
    }

    /// Conntrack events were lost (the caller resynchronises): counted for `bpfqos status`.
    pub fn events_lost(&mut self) {
        self.stats.conntrack_events_lost += 1;
    }

    /// A neighbour resolved: admit again the connections that waited for it (no conntrack event
    /// would bring them back).
    async fn retry_waiting(&mut self, ifindex: u32, ip: IpAddr, ctx: &Ctx<'_>) {
        let Some(waiting) = self.waiting_for_neighbour.remove(&(ifindex, ip)) else {
            return;
        };
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

    /// Re-resolves these connections: their lookups all at once (rtnetlink answers them in
    /// parallel instead of one round trip after another), then each result in turn. A flow
    /// whose next hops did not change stays as it is; one whose did is taken out first (so
    /// nothing stale forwards) and admitted again.
    async fn reresolve(&mut self, keys: &[ConnKey], ev: &TopologyEvent, ctx: &Ctx<'_>) {
        let conns: Vec<(ConnKey, Conn)> = keys
            .iter()
            .filter_map(|k| self.flows.get(k).map(|f| (*k, f.conn.conn())))
            .collect();
        let resolved =
            futures::future::join_all(conns.iter().map(|(_, c)| resolve_pair(c, ctx))).await;
        for ((key, conn), hops) in conns.into_iter().zip(resolved) {
            let Some(old) = self.flows.get(&key) else {
                continue;
            };
            self.stats.reresolved += 1;
            match hops {
                // Unchanged: it stays as it is, in its slot (its entries' owner).
                Ok(hops) if hops.iter().zip(&old.hops).all(|(a, b)| *a == **b) => {}
                Ok(_) | Err(_) => {
                    let Some(old) = self.flows.remove(&key) else {
                        continue;
                    };
                    self.retire(&old, ctx.dp);
                    self.stats.removed += 1;
                    if let Err(r) = self.admit(conn, ctx).await {
                        debug!("{}: after {ev:?}: stays in the kernel: {r:?}", key.0);
                    }
                }
            }
        }
    }

    /// Periodic work, spread over each [`Timeouts::refresh_every`]: refresh the conntrack
    /// timeouts of flows with traffic, check that idle ones still exist, and remove flows whose
    /// teardown flag is set (a FIN/RST whose event was lost). Every flow is looked at once per
    /// round, a slice per one-second tick, so that a tick's work stays a fraction of the table
    /// (64k connections: ~6,500 per tick instead of all of them at once).
    pub fn tick(&mut self, ctx: &Ctx<'_>, timeouts: &Timeouts) {
        let (Some(dp), Some(ct)) = (ctx.dp, ctx.ct) else {
            return;
        };
        if self.refresh_round.is_empty() {
            let every = timeouts.refresh_every();
            let due = self
                .last_refresh
                .is_none_or(|t| ctx.now.saturating_duration_since(t) >= every);
            if !due {
                return;
            }
            self.last_refresh = Some(ctx.now);
            self.refresh_round = self.flows.slots().collect();
            // Next hops no connection uses any more; connections that ended long ago.
            self.hop_pool.retain(|h| Rc::strong_count(h) > 1);
            self.flows.shrink();
            self.refresh_round.shrink_to_fit();
            self.forget_ended_before(ctx.now);
            // One-second ticks: the round is done a little before the next one is due.
            let ticks = every.as_secs().saturating_sub(1).max(1) as usize;
            self.refresh_slice = self.refresh_round.len().div_ceil(ticks).max(1);
        }
        let n = self.refresh_slice.min(self.refresh_round.len());
        let slice: Vec<u32> = self.refresh_round.drain(..n).collect();
        let mut teardown = Vec::new();
        let mut active = Vec::new();
        let mut idle = Vec::new();
        for slot in slice {
            let Some(f) = self.flows.by_slot_mut(slot) else {
                continue; // gone since the round started
            };
            let key = &f.conn.key();
            let (mut packets, mut marked) = (0, false);
            for k in &f.keys {
                if let Some(c) = dp.counters(k) {
                    packets += c.packets;
                    marked |= c.teardown();
                }
            }
            if marked {
                teardown.push(*key);
            } else if packets != f.packets_at_refresh {
                f.packets_at_refresh = packets;
                active.push(*key);
            } else {
                idle.push(*key);
            }
        }
        for key in &teardown {
            debug!("{}: FIN/RST flag found, back to the kernel", key.0);
            self.note_ended(key, ctx.now);
            self.remove(key, Some(dp));
        }
        let mut gone = check_conntrack(ct, &active, Some(timeouts));
        gone.extend(check_conntrack(ct, &idle, None));
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
        if ctx.now.saturating_duration_since(since) < READMIT_AFTER {
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

    /// Re-synchronises with the kernel from a dump taken just now: every offloadable conntrack
    /// entry is (re)admitted, every flow whose entry is gone removed, and map entries nobody
    /// owns deleted (left by an earlier daemon or by lost events). Applied at once; the
    /// admissions are queued for [`Self::work`].
    pub async fn resync(&mut self, conns: Vec<Conn>, ctx: &Ctx<'_>) {
        // A dump being applied is older than this one. (A background dump still running keeps
        // what it collected: it applies later.)
        self.applying = Some(Applying::new(conns, self.dump_mark()));
        let none = HashSet::new();
        while self.apply_slice(&none, ctx) {}
        self.settle_dump_gone();
    }

    /// A dump is being taken in the background (the event loop goes on meanwhile): what
    /// [`Self::resync_since`] needs to apply it once it arrives. One being applied goes on
    /// meanwhile (events may be lost again and again: each dump must get applied).
    pub fn dump_started(&mut self) -> DumpMark {
        self.dump_running = true;
        self.dump_gone.get_or_insert_with(HashSet::new);
        self.dump_mark()
    }

    /// The background dump failed: nothing to apply.
    pub fn dump_failed(&mut self) {
        self.dump_running = false;
        self.settle_dump_gone();
    }

    /// What ended since a dump started is forgotten once no dump runs or is being applied.
    fn settle_dump_gone(&mut self) {
        if self.applying.is_none() && !self.dump_running {
            self.dump_gone = None;
        }
    }

    fn dump_mark(&self) -> DumpMark {
        DumpMark {
            seq: self.next_seq,
            flushes: self.stats.flushes,
        }
    }

    /// Applies a dump that started at `mark`, a slice at a time in [`Self::work`]: as
    /// [`Self::resync`], except that flows admitted since are not stale for missing from it,
    /// and connections destroyed, out of the offloadable states or torn down since (until it
    /// is applied: [`Self::dump_gone`] keeps collecting them) are not admitted for being in it.
    /// A dump being applied from an earlier loss is replaced: this one is newer.
    pub fn resync_since(&mut self, conns: Vec<Conn>, mark: DumpMark, _ctx: &Ctx<'_>) {
        self.dump_running = false;
        if self.stats.flushes != mark.flushes {
            // A flush since (a firewall reload, offload off): for the re-admission to decide.
            self.settle_dump_gone();
            return;
        }
        self.dump_gone.get_or_insert_with(HashSet::new);
        self.applying = Some(Applying::new(conns, mark));
    }

    /// One slice of the dump being applied, with the connections `gone` since it started;
    /// false when it is done (or void: a flush since).
    fn apply_slice(&mut self, gone: &HashSet<ConnKey>, ctx: &Ctx<'_>) -> bool {
        let Some(mut a) = self.applying.take() else {
            return false;
        };
        if self.stats.flushes != a.mark.flushes {
            return false;
        }
        let live = |a: &Applying, k: &ConnKey| a.live.contains(k) && !gone.contains(k);
        match a.step {
            // Which connections the dump shows offloadable.
            ApplyStep::Live => {
                let end = (a.next + DUMP_SLICE).min(a.conns.len());
                let shown = a.conns[a.next..end]
                    .iter()
                    .filter(|c| c.offloadable_state());
                a.live.extend(shown.map(key_of));
                a.next = end;
                if end == a.conns.len() {
                    (a.step, a.next) = (ApplyStep::Stale, 0);
                }
            }
            // Flows admitted before it that it does not show offloadable go.
            ApplyStep::Stale => {
                let end = a.next + DUMP_SLICE;
                let stale: Vec<ConnKey> = self
                    .flows
                    .in_slots(a.next..end)
                    .filter(|f| f.seq < a.mark.seq && !live(&a, &f.conn.key()))
                    .map(|f| f.conn.key())
                    .collect();
                for k in &stale {
                    debug!("{}: not in the conntrack dump, back to the kernel", k.0);
                    self.remove(k, ctx.dp);
                }
                a.next = end;
                if end >= self.flows.slots_len() {
                    a.step = ApplyStep::Admit;
                    // Entries nobody owns go first: what is admitted from here on is owned.
                    if let Some(dp) = ctx.dp {
                        let owned: Vec<&FlowKey> =
                            self.flows.values().flat_map(|f| f.keys.iter()).collect();
                        dp.retain(&owned);
                    }
                }
            }
            // The admissions themselves are queued for [`Self::work`]: at tens of thousands
            // of connections they are seconds of work. Admissions already waiting (events
            // deferred from a burst) stay.
            ApplyStep::Admit => {
                for _ in 0..DUMP_SLICE {
                    let Some(c) = a.conns.pop() else {
                        return false;
                    };
                    let key = key_of(&c);
                    if live(&a, &key)
                        && !self.flows.contains_key(&key)
                        && !self.backlog.admit_conns.contains_key(&key)
                    {
                        self.backlog.admit.push_back(key);
                        self.backlog.admit_conns.insert(key, c);
                    }
                }
            }
        }
        self.applying = Some(a);
        true
    }

    /// Packets and bytes forwarded since start, in total and per lowest device (live entries
    /// plus retired ones), and the status of the [`MAX_LISTED_FLOWS`] connections that moved
    /// the most bytes (all of them when there are fewer), sorted by original tuple; `rtt` gives
    /// a connection's latency. One read of every flow's counters serves both (at 64k
    /// connections a read is 128k lookups), and only the listed flows are formatted.
    pub fn status_view(
        &self,
        dp: Option<&dyn FlowTable>,
        rtt: &dyn Fn(&conntrack::Conn) -> Option<crate::rtt::FlowRtt>,
    ) -> (Counters, Vec<FlowStatus>) {
        // One pass: the totals, and the busiest connections in a heap of MAX_LISTED_FLOWS
        // (least busy on top; ties by slot, so the order is total). Not a selection over a
        // vector of every flow: besides its megabytes, std's small-code build (the routers'
        // binaries rebuild std optimized for size) selected among 64k equal figures in a
        // second.
        let mut totals = self.retired.clone();
        let mut busiest = BinaryHeap::with_capacity(MAX_LISTED_FLOWS + 1);
        for (slot, f) in self.flows.slotted() {
            let c = |i: usize| {
                dp.and_then(|dp| dp.counters(&f.keys[i]))
                    .unwrap_or_default()
            };
            let (c0, c1) = (c(0), c(1));
            if dp.is_some() {
                totals.add(f.dir_devices(0), c0.packets, c0.bytes);
                totals.add(f.dir_devices(1), c1.packets, c1.bytes);
            }
            let seen = (c0.bytes + c1.bytes, slot, [c0.packets, c1.packets]);
            if busiest.len() < MAX_LISTED_FLOWS {
                busiest.push(Reverse(seen));
            } else if busiest.peek().is_some_and(|Reverse(least)| seen > *least) {
                busiest.pop();
                busiest.push(Reverse(seen));
            }
        }
        let counted = busiest
            .into_iter()
            .filter_map(|Reverse((bytes, slot, p))| Some((self.flows.by_slot(slot)?, bytes, p)));
        let mut out: Vec<FlowStatus> = counted
            .map(|(f, bytes, [packets_orig, packets_reply])| FlowStatus {
                proto: if f.conn.orig.proto == conntrack::codec::IPPROTO_TCP {
                    "tcp"
                } else {
                    "udp"
                }
                .to_string(),
                orig: f.conn.orig.to_string(),
                reply: f.conn.reply.to_string(),
                packets_orig,
                packets_reply,
                bytes,
                ingress_ifindex: f.hops[0].egress_ifindex,
                egress_ifindex: f.hops[1].egress_ifindex,
                rtt: rtt(&f.conn.conn()),
            })
            .collect();
        out.sort_by(|a, b| a.orig.cmp(&b.orig));
        (totals, out)
    }

    /// The `offload` section of the status document.
    pub fn status(
        &self,
        enabled: bool,
        entries: usize,
        capacity: Option<u32>,
        counted: &Counters,
    ) -> OffloadStatus {
        OffloadStatus {
            enabled,
            flows: entries as u64,
            flows_max: capacity.map(u64::from),
            connections: self.flows.len() as u64,
            manager: self.stats.clone(),
            packets: counted.packets,
            bytes: counted.bytes,
        }
    }
}

/// How the direction arriving by `ingress` and leaving by `egress` passes the shapers: its
/// upload shaper is the egress interface's, its download shaper the ingress interface's.
/// `None` when both apply (a direction between two shaped interfaces).
fn direction_shaping(
    ingress: &NextHop,
    egress: &NextHop,
    shaped: &HashMap<u32, ShapedDevice>,
) -> Option<Shaping> {
    let up = shaped.get(&egress.l3_ifindex).filter(|s| s.upload);
    let down = shaped
        .get(&ingress.l3_ifindex)
        .and_then(|s| s.download_shaper);
    match (up, down) {
        (None, None) => Some(Shaping::Unshaped),
        (Some(s), None) => Some(Shaping::Upload {
            l3: egress.l3_ifindex,
            mtu: egress.mtu,
            has_l2: s.has_l2,
        }),
        (None, Some(shaper)) => Some(Shaping::Download { shaper }),
        (Some(_), Some(_)) => None,
    }
}

/// Both next hops of `c`, bounded in time: the event loop must never hang on netlink, and a
/// lookup that does not answer in time leaves the connection in the kernel.
async fn resolve_pair(c: &Conn, ctx: &Ctx<'_>) -> Result<[NextHop; 2], Unresolved> {
    tokio::time::timeout(RESOLVE_TIMEOUT, ctx.resolver.resolve_pair(c))
        .await
        .unwrap_or_else(|_| {
            Err(Unresolved::Netlink(
                "route/neighbour lookup timed out".into(),
            ))
        })
}

/// Asks conntrack about `keys`, per protocol: with `timeouts`, sets each entry's timeout to
/// its protocol's established timeout; without, only checks that it exists. Returns the keys
/// whose entries are gone (a failed request removes nothing).
fn check_conntrack(
    ct: &dyn ConntrackOps,
    keys: &[ConnKey],
    timeouts: Option<&Timeouts>,
) -> Vec<ConnKey> {
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
        let result = match timeouts {
            Some(t) => ct.refresh(&batch, t.established(proto)),
            None => ct.exists(&batch),
        };
        match result {
            Ok(alive) => gone.extend(batch.iter().zip(alive).filter(|(_, a)| !a).map(|(k, _)| *k)),
            Err(e) => warn!("conntrack refresh: {e:#}"),
        }
    }
    gone
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

#[cfg(test)]
mod tests;
