//! The flow manager's decisions, driven with fakes of the data path, conntrack and the
//! resolver: no root, no kernel, milliseconds. The races are replayed in the order the event
//! loop would see them (one event at a time; what happens "during" a resolution happens inside
//! the fake resolver, before its answer comes back).

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;
use std::time::Instant;

use futures::future::LocalBoxFuture;
use futures::FutureExt;

use super::ports::ConntrackOps;
use super::ports::FlowTable;
use super::ports::Resolver;
use super::ConnKey;
use super::Ctx;
use super::FlowManager;
use super::Timeouts;
use super::READMIT_AFTER;
use crate::conntrack::codec::status;
use crate::conntrack::codec::IPPROTO_TCP;
use crate::conntrack::codec::IPPROTO_UDP;
use crate::conntrack::codec::TCP_CONNTRACK_ESTABLISHED;
use crate::conntrack::Conn;
use crate::conntrack::Message;
use crate::conntrack::Tuple;
use crate::dataplane::abi::FlowCounters;
use crate::dataplane::abi::FLOW_F_TEARDOWN;
use crate::dataplane::entry::FlowKey;
use crate::dataplane::entry::FlowValue;
use crate::topology::L2Encap;
use crate::topology::NextHop;
use crate::topology::TopologyEvent;
use crate::topology::Unresolved;

const LAN: u32 = 2;
const WAN: u32 = 3;
const MAC_HOST: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_GW: [u8; 6] = [2, 0, 0, 0, 1, 1];
const MAC_GW_NEW: [u8; 6] = [2, 0, 0, 0, 1, 2];

/// The data path's flow table, in memory.
#[derive(Default)]
struct FakeTable {
    enabled: Cell<bool>,
    entries: RefCell<HashMap<FlowKey, (FlowValue, FlowCounters)>>,
    owners: RefCell<HashMap<FlowKey, u32>>,
    tx_ports: RefCell<HashSet<u32>>,
    /// Installs fail once this many entries are in.
    capacity: Cell<usize>,
    installs: Cell<usize>,
}

impl FakeTable {
    fn new() -> Self {
        let t = Self::default();
        t.enabled.set(true);
        t.capacity.set(usize::MAX);
        t
    }

    fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    fn count(&self, key: &FlowKey, packets: u64, flags: u32) {
        if let Some((_, c)) = self.entries.borrow_mut().get_mut(key) {
            c.packets += packets;
            c.bytes += packets * 100;
            c.flags |= flags;
        }
    }

    fn dst_macs(&self) -> Vec<[u8; 6]> {
        let mut macs: Vec<[u8; 6]> = self
            .entries
            .borrow()
            .values()
            .map(|(v, _)| v.next_hop().h_dest)
            .collect();
        macs.sort();
        macs
    }
}

impl FlowTable for FakeTable {
    fn enabled(&self) -> bool {
        self.enabled.get()
    }

    fn install(&self, value: &FlowValue, owner: u32) -> anyhow::Result<()> {
        let mut e = self.entries.borrow_mut();
        if !e.contains_key(&value.key()) && e.len() >= self.capacity.get() {
            anyhow::bail!("flow table full");
        }
        self.installs.set(self.installs.get() + 1);
        let kept = e.get(&value.key()).map(|(_, c)| *c).unwrap_or_default();
        e.insert(value.key(), (*value, kept));
        self.owners.borrow_mut().insert(value.key(), owner);
        Ok(())
    }

    fn owner(&self, key: &FlowKey) -> Option<u32> {
        self.owners.borrow().get(key).copied()
    }

    fn remove(&self, key: &FlowKey) {
        self.entries.borrow_mut().remove(key);
        self.owners.borrow_mut().remove(key);
    }

    fn counters(&self, key: &FlowKey) -> Option<FlowCounters> {
        self.entries.borrow().get(key).map(|(_, c)| *c)
    }

    fn add_tx_port(&self, ifindex: u32) -> anyhow::Result<()> {
        self.tx_ports.borrow_mut().insert(ifindex);
        Ok(())
    }

    fn retain(&self, keep: &[&FlowKey]) {
        self.entries.borrow_mut().retain(|k, _| keep.contains(&k));
        self.owners.borrow_mut().retain(|k, _| keep.contains(&k));
    }
}

/// Conntrack: the live entries and what was asked of it.
#[derive(Default)]
struct FakeConntrack {
    live: RefCell<HashMap<ConnKey, Conn>>,
    liberal: RefCell<Vec<ConnKey>>,
    refreshed: RefCell<Vec<(ConnKey, u32)>>,
    checked: RefCell<Vec<ConnKey>>,
}

impl FakeConntrack {
    fn add(&self, c: &Conn) {
        self.live.borrow_mut().insert((c.orig, c.zone), c.clone());
    }

    fn destroy(&self, c: &Conn) {
        self.live.borrow_mut().remove(&(c.orig, c.zone));
    }

    fn count(&self, c: &Conn, packets: [u64; 2]) {
        if let Some(e) = self.live.borrow_mut().get_mut(&(c.orig, c.zone)) {
            e.packets = Some(packets);
        }
    }

    fn alive(&self, entries: &[ConnKey]) -> Vec<bool> {
        let live = self.live.borrow();
        entries.iter().map(|k| live.contains_key(k)).collect()
    }
}

impl ConntrackOps for FakeConntrack {
    fn dump(&self) -> anyhow::Result<Vec<Conn>> {
        Ok(self.live.borrow().values().cloned().collect())
    }

    fn set_liberal(&self, entries: &[ConnKey]) -> anyhow::Result<Vec<bool>> {
        self.liberal.borrow_mut().extend_from_slice(entries);
        Ok(self.alive(entries))
    }

    fn refresh(&self, entries: &[ConnKey], timeout_s: u32) -> anyhow::Result<Vec<bool>> {
        self.refreshed
            .borrow_mut()
            .extend(entries.iter().map(|k| (*k, timeout_s)));
        Ok(self.alive(entries))
    }

    fn exists(&self, entries: &[ConnKey]) -> anyhow::Result<Vec<bool>> {
        self.checked.borrow_mut().extend_from_slice(entries);
        Ok(self.alive(entries))
    }
}

type Answer = Result<[NextHop; 2], Unresolved>;

/// Next hops per connection, and what happens in the world while one is being resolved.
#[derive(Default)]
struct FakeResolver {
    answers: RefCell<HashMap<Tuple, Answer>>,
    during: RefCell<Option<Box<dyn Fn()>>>,
    calls: Cell<usize>,
}

impl FakeResolver {
    fn set(&self, c: &Conn, answer: Answer) {
        self.answers.borrow_mut().insert(c.orig, answer);
    }
}

impl Resolver for FakeResolver {
    fn resolve_pair<'a>(&'a self, c: &'a Conn) -> LocalBoxFuture<'a, Answer> {
        async move {
            self.calls.set(self.calls.get() + 1);
            if let Some(f) = self.during.borrow_mut().take() {
                f();
            }
            self.answers
                .borrow()
                .get(&c.orig)
                .cloned()
                .unwrap_or_else(|| Err(Unresolved::NoRoute("no answer configured".into())))
        }
        .boxed_local()
    }

    fn device_mtu(&self, _ifindex: u32) -> Option<u32> {
        Some(1500)
    }
}

/// Everything one test drives.
struct World {
    table: FakeTable,
    ct: Rc<FakeConntrack>,
    resolver: FakeResolver,
    attached: HashSet<u32>,
    shaped: HashMap<u32, crate::qos::ShapedDevice>,
    now: Cell<Instant>,
}

impl World {
    fn new() -> Self {
        Self {
            table: FakeTable::new(),
            ct: Rc::default(),
            resolver: FakeResolver::default(),
            attached: [LAN, WAN].into_iter().collect(),
            shaped: HashMap::new(),
            now: Cell::new(Instant::now()),
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            resolver: &self.resolver,
            dp: Some(&self.table),
            attached: &self.attached,
            shaped: &self.shaped,
            ct: Some(&*self.ct),
            now: self.now.get(),
        }
    }

    fn advance(&self, d: Duration) {
        self.now.set(self.now.get() + d);
    }

    /// A live, routable connection: conntrack has it, the resolver knows its next hops.
    fn connection(&self, n: u8, proto: u8) -> Conn {
        let c = conn(n, proto);
        self.ct.add(&c);
        self.resolver.set(&c, Ok(hops(MAC_GW)));
        c
    }
}

fn tuple(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Tuple {
    Tuple {
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        proto,
        sport,
        dport,
    }
}

/// Connection `n` from a LAN host to a server, SNATed to the router's WAN address.
fn conn(n: u8, proto: u8) -> Conn {
    let sport = 40000 + u16::from(n);
    Conn {
        id: u32::from(n),
        orig: tuple([198, 18, 1, 2], [198, 19, 0, 2], proto, sport, 443),
        reply: tuple([198, 19, 0, 2], [198, 19, 0, 1], proto, 443, sport),
        status: status::CONFIRMED | status::ASSURED,
        tcp_state: (proto == IPPROTO_TCP).then_some(TCP_CONNTRACK_ESTABLISHED),
        mark: 0,
        zone: 0,
        timeout: Some(100),
        helper: None,
        packets: Some([10, 10]),
    }
}

fn hop(l3: u32, egress: u32, dst_mac: [u8; 6], neighbour: [u8; 4]) -> NextHop {
    NextHop {
        l3_ifindex: l3,
        egress_ifindex: egress,
        src_mac: [2, 0, 0, 0, 0, 0xfe],
        dst_mac,
        encap: L2Encap::default(),
        mtu: 1500,
        gateway: None,
        neighbour: Some((l3, IpAddr::V4(Ipv4Addr::from(neighbour)))),
        devices: vec![l3, egress],
    }
}

/// [towards the LAN host, towards the WAN gateway with `gw_mac`].
fn hops(gw_mac: [u8; 6]) -> [NextHop; 2] {
    [
        hop(LAN, LAN, MAC_HOST, [198, 18, 1, 2]),
        hop(WAN, WAN, gw_mac, [198, 19, 0, 254]),
    ]
}

/// The record admission makes for connection `n` (TCP, through the WAN gateway).
pub(super) fn offloaded(n: u8) -> super::Offloaded {
    let w = World::new();
    let c = w.connection(n, IPPROTO_TCP);
    let unshaped = [super::encode::Shaping::Unshaped; 2];
    let [(k0, _), (k1, _)] =
        super::encode::connection(&c, &hops(MAC_GW), &w.resolver, unshaped).expect("encodable");
    super::Offloaded {
        conn: super::Held::of(&c),
        keys: [k0, k1],
        hops: hops(MAC_GW).map(Rc::new),
        packets_at_refresh: 0,
        seq: u64::from(n),
    }
}

/// Ticks once a second until the refresh round in progress is done.
fn refresh_round(m: &mut FlowManager, w: &World, timeouts: &Timeouts) {
    for _ in 0..100 {
        if m.refresh_round.is_empty() {
            return;
        }
        w.advance(Duration::from_secs(1));
        m.tick(&w.ctx(), timeouts);
    }
    panic!("the refresh round did not end");
}

/// Works through the manager's backlog (what the event loop does between events).
async fn drain(m: &mut FlowManager, w: &World) {
    m.work(&w.ctx(), Duration::MAX).await;
    assert!(!m.has_backlog());
}

fn keys_of(m: &FlowManager) -> Vec<FlowKey> {
    let mut k: Vec<FlowKey> = m.flows.values().flat_map(|f| f.keys).collect();
    k.sort_by(|a, b| a.bytes().cmp(b.bytes()));
    k
}

#[tokio::test]
async fn an_established_connection_is_installed_both_ways() {
    let w = World::new();
    let mut m = FlowManager::default();
    let c = w.connection(1, IPPROTO_TCP);
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    assert_eq!(m.len(), 1);
    assert_eq!(w.table.len(), 2, "both directions");
    assert_eq!(m.stats().admitted, 1);
    assert_eq!(*w.ct.liberal.borrow(), vec![(c.orig, 0)]);
    assert_eq!(*w.table.tx_ports.borrow(), [LAN, WAN].into_iter().collect());
    assert_eq!(w.table.dst_macs(), vec![MAC_HOST, MAC_GW]);
    // The same connection again (an update): nothing new.
    m.on_conntrack(Message::Update(c), &w.ctx()).await;
    assert_eq!(w.table.installs.get(), 2);
}

#[tokio::test]
async fn only_offloadable_states_are_admitted_and_leaving_them_removes() {
    let w = World::new();
    let mut m = FlowManager::default();
    let mut c = w.connection(1, IPPROTO_TCP);
    let established = c.clone();
    c.tcp_state = Some(TCP_CONNTRACK_ESTABLISHED + 1);
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    assert!(m.is_empty(), "FIN_WAIT is not offloaded");
    m.on_conntrack(Message::Update(established), &w.ctx()).await;
    assert_eq!(m.len(), 1);
    m.on_conntrack(Message::Update(c), &w.ctx()).await;
    assert!(m.is_empty());
    assert_eq!(w.table.len(), 0);
    assert_eq!(m.stats().removed, 1);
    let mut udp = w.connection(2, IPPROTO_UDP);
    udp.status &= !status::ASSURED;
    m.on_conntrack(Message::New(udp), &w.ctx()).await;
    assert!(m.is_empty(), "unassured UDP is not offloaded");
}

#[tokio::test]
async fn destroy_removes_both_entries_and_keeps_what_they_counted() {
    let w = World::new();
    let mut m = FlowManager::default();
    let c = w.connection(1, IPPROTO_UDP);
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    for k in keys_of(&m) {
        w.table.count(&k, 5, 0);
    }
    m.on_conntrack(Message::Destroy(c), &w.ctx()).await;
    assert!(m.is_empty());
    assert_eq!(w.table.len(), 0);
    let counted = m.status_view(Some(&w.table), &|_| None).0;
    assert_eq!(counted.packets, 10);
    assert_eq!(counted.devices[&LAN].rx_packets, 5);
    assert_eq!(counted.devices[&LAN].tx_packets, 5);
}

#[tokio::test]
async fn a_tcp_connection_destroyed_while_it_is_resolved_is_not_installed() {
    let w = World::new();
    let mut m = FlowManager::default();
    let c = w.connection(1, IPPROTO_TCP);
    // The DESTROY happens in the kernel while the route lookup is in flight: by the time the
    // manager asks conntrack to make the entry liberal, it is gone.
    let (gone, ct) = (c.clone(), Rc::clone(&w.ct));
    *w.resolver.during.borrow_mut() = Some(Box::new(move || ct.destroy(&gone)));
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    assert!(m.is_empty());
    assert_eq!(w.table.len(), 0, "nothing written for a dead connection");
    assert_eq!(m.stats().rejected.get("unresolved"), Some(&1));
    // Its DESTROY event, read next, finds nothing to do.
    m.on_conntrack(Message::Destroy(c), &w.ctx()).await;
    assert_eq!(m.stats().removed, 0);
}

#[tokio::test]
async fn a_udp_destroy_queued_behind_the_admission_removes_it() {
    let w = World::new();
    let mut m = FlowManager::default();
    let c = w.connection(1, IPPROTO_UDP);
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    w.ct.destroy(&c);
    m.on_conntrack(Message::Destroy(c), &w.ctx()).await;
    assert!(m.is_empty());
    assert_eq!(w.table.len(), 0);
}

#[tokio::test]
async fn a_neighbour_change_during_admission_is_followed_by_a_rewrite() {
    let w = World::new();
    let mut m = FlowManager::default();
    let c = w.connection(1, IPPROTO_TCP);
    // The resolution sees the old MAC; the gateway's MAC changes right after (the NEWNEIGH
    // event is queued behind the admission).
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    assert_eq!(w.table.dst_macs(), vec![MAC_HOST, MAC_GW]);
    w.resolver.set(&c, Ok(hops(MAC_GW_NEW)));
    let ev = TopologyEvent::Neigh {
        ifindex: WAN,
        ip: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 254)),
        mac: Some(MAC_GW_NEW),
    };
    m.on_topology(&ev, &w.ctx()).await;
    drain(&mut m, &w).await;
    assert_eq!(m.len(), 1);
    assert_eq!(w.table.dst_macs(), vec![MAC_HOST, MAC_GW_NEW]);
    assert_eq!(m.stats().reresolved, 1);
    // A neighbour nobody uses re-resolves nothing.
    let other = TopologyEvent::Neigh {
        ifindex: WAN,
        ip: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 99)),
        mac: Some(MAC_GW),
    };
    m.on_topology(&other, &w.ctx()).await;
    drain(&mut m, &w).await;
    assert_eq!(m.stats().reresolved, 1);
}

#[tokio::test]
async fn a_connection_waiting_for_its_neighbour_is_admitted_when_it_resolves() {
    let w = World::new();
    let mut m = FlowManager::default();
    let c = w.connection(1, IPPROTO_TCP);
    let gw = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 254));
    w.resolver.set(
        &c,
        Err(Unresolved::Neighbour {
            ifindex: WAN,
            ip: gw,
        }),
    );
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    assert!(m.is_empty());
    w.resolver.set(&c, Ok(hops(MAC_GW)));
    let resolved = TopologyEvent::Neigh {
        ifindex: WAN,
        ip: gw,
        mac: Some(MAC_GW),
    };
    m.on_topology(&resolved, &w.ctx()).await;
    drain(&mut m, &w).await;
    assert_eq!(m.len(), 1, "retried without a conntrack event");
    // Once admitted, it no longer waits: a second resolution event retries nothing.
    let calls = w.resolver.calls.get();
    m.on_topology(&resolved, &w.ctx()).await;
    drain(&mut m, &w).await;
    assert_eq!(
        w.resolver.calls.get(),
        calls + 1,
        "one re-resolution, no retry"
    );
}

#[tokio::test]
async fn a_firewall_reload_flushes_and_readmits_what_the_new_rules_forward() {
    let w = World::new();
    let mut m = FlowManager::default();
    let (a, b) = (w.connection(1, IPPROTO_TCP), w.connection(2, IPPROTO_UDP));
    m.on_conntrack(Message::New(a.clone()), &w.ctx()).await;
    m.on_conntrack(Message::New(b.clone()), &w.ctx()).await;
    assert_eq!(m.len(), 2);
    m.on_conntrack(Message::RulesetChanged, &w.ctx()).await;
    assert!(m.is_empty());
    assert_eq!(w.table.len(), 0);
    assert_eq!(m.stats().flushes, 1);
    // Under the new rules the kernel forwards `a` (conntrack counts both ways) and drops `b`
    // (only its original direction is counted: prerouting, before the filter).
    w.ct.count(&a, [20, 20]);
    w.ct.count(&b, [20, 10]);
    w.advance(READMIT_AFTER / 2);
    m.readmit_due(&w.ctx()).await;
    assert!(m.is_empty(), "too early");
    w.advance(READMIT_AFTER);
    m.readmit_due(&w.ctx()).await;
    assert_eq!(m.len(), 1);
    assert!(m.flows.contains_key(&(a.orig, 0)));
    // Done once: later ticks do not re-admit `b`.
    w.ct.count(&b, [30, 30]);
    m.readmit_due(&w.ctx()).await;
    assert_eq!(m.len(), 1);
}

#[tokio::test]
async fn a_teardown_event_sends_its_connection_back_to_the_kernel() {
    let w = World::new();
    let mut m = FlowManager::default();
    let (a, b) = (w.connection(1, IPPROTO_TCP), w.connection(2, IPPROTO_TCP));
    m.on_conntrack(Message::New(a.clone()), &w.ctx()).await;
    m.on_conntrack(Message::New(b), &w.ctx()).await;
    let reply_key_of_a = m.flows[&(a.orig, 0)].keys[1];
    let unknown = FlowKey::from_bytes(&[0u8; 32]).unwrap_or(reply_key_of_a);
    m.on_teardown(&[reply_key_of_a, unknown, reply_key_of_a], Some(&w.table));
    assert_eq!(m.len(), 1);
    assert!(!m.flows.contains_key(&(a.orig, 0)));
    assert_eq!(m.stats().teardown_events, 1);
    assert_eq!(w.table.len(), 2);
    // The key leads to its connection through the entry's owner (the connection's slot): an
    // entry whose owner slot holds another connection (not one this manager installed) is
    // not that connection's teardown.
    let slot_of_b = w
        .table
        .owner(&m.flows[&(w.connection(2, IPPROTO_TCP).orig, 0)].keys[0]);
    let stranger = w.connection(3, IPPROTO_UDP);
    let unshaped = [super::encode::Shaping::Unshaped; 2];
    let [(k, v), _] = super::encode::connection(&stranger, &hops(MAC_GW), &w.resolver, unshaped)
        .expect("encodable");
    w.table
        .install(&v, slot_of_b.expect("b's entries have an owner"))
        .expect("room");
    m.on_teardown(&[k], Some(&w.table));
    assert_eq!(m.len(), 1, "another connection's key took b out");
    assert_eq!(m.stats().teardown_events, 1);
}

#[tokio::test]
async fn refreshes_run_when_due_and_catch_lost_teardowns_and_gone_entries() {
    let w = World::new();
    let mut m = FlowManager::default();
    let timeouts = Timeouts { tcp: 300, udp: 60 };
    let active = w.connection(1, IPPROTO_TCP);
    let idle = w.connection(2, IPPROTO_UDP);
    let flagged = w.connection(3, IPPROTO_TCP);
    let vanished = w.connection(4, IPPROTO_UDP);
    for c in [&active, &idle, &flagged, &vanished] {
        m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    }
    // The first round establishes the baseline (every flow has "new" packets: 0 -> counted).
    // A round is spread over the ticks of one refresh interval: 4 flows, 9 ticks, 1 per tick.
    m.tick(&w.ctx(), &timeouts);
    assert_eq!(m.refresh_round.len(), 3, "one flow per tick");
    refresh_round(&mut m, &w, &timeouts);
    w.ct.refreshed.borrow_mut().clear();
    w.ct.checked.borrow_mut().clear();
    // Before the next refresh is due, a tick reads nothing.
    w.table.count(&m.flows[&(active.orig, 0)].keys[0], 3, 0);
    w.table
        .count(&m.flows[&(flagged.orig, 0)].keys[1], 1, FLOW_F_TEARDOWN);
    w.ct.destroy(&vanished);
    w.advance(Duration::from_secs(1));
    m.tick(&w.ctx(), &timeouts);
    assert_eq!(m.len(), 4);
    assert!(w.ct.refreshed.borrow().is_empty() && w.ct.checked.borrow().is_empty());
    w.advance(timeouts.refresh_every());
    m.tick(&w.ctx(), &timeouts);
    refresh_round(&mut m, &w, &timeouts);
    assert_eq!(*w.ct.refreshed.borrow(), vec![((active.orig, 0), 300)]);
    let mut checked = w.ct.checked.borrow().clone();
    checked.sort();
    let mut want = vec![(idle.orig, 0), (vanished.orig, 0)];
    want.sort();
    assert_eq!(checked, want, "idle flows are only checked");
    let mut left: Vec<Tuple> = m.flows.keys().map(|k| k.0).collect();
    left.sort();
    let mut want = vec![active.orig, idle.orig];
    want.sort();
    assert_eq!(left, want, "flagged and vanished connections removed");
    assert_eq!(w.table.len(), 4);
}

#[tokio::test]
async fn a_full_table_leaves_nothing_behind() {
    let w = World::new();
    let mut m = FlowManager::default();
    w.table.capacity.set(1);
    let c = w.connection(1, IPPROTO_TCP);
    m.on_conntrack(Message::New(c), &w.ctx()).await;
    assert!(m.is_empty());
    assert_eq!(w.table.len(), 0, "the first direction was taken out again");
    assert_eq!(m.stats().rejected.get("map_full"), Some(&1));
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let mut w = World::new();
    let mut m = FlowManager::default();
    let local = w.connection(1, IPPROTO_TCP);
    w.resolver.set(&local, Err(Unresolved::Local));
    m.on_conntrack(Message::New(local), &w.ctx()).await;
    w.attached.remove(&WAN);
    let unattached = w.connection(2, IPPROTO_TCP);
    m.on_conntrack(Message::New(unattached), &w.ctx()).await;
    w.attached.insert(WAN);
    // Shaped both ways on one direction (WAN to WAN through two shapers): kernel path.
    w.shaped.insert(
        WAN,
        crate::qos::ShapedDevice {
            upload: true,
            download_shaper: Some(9),
            has_l2: true,
        },
    );
    let shaped = w.connection(4, IPPROTO_TCP);
    w.resolver.set(
        &shaped,
        Ok([
            hop(WAN, WAN, MAC_HOST, [198, 18, 1, 2]),
            hop(WAN, WAN, MAC_GW, [198, 19, 0, 254]),
        ]),
    );
    m.on_conntrack(Message::New(shaped), &w.ctx()).await;
    w.shaped.clear();
    w.table.enabled.set(false);
    let off = w.connection(3, IPPROTO_TCP);
    m.on_conntrack(Message::New(off), &w.ctx()).await;
    assert!(m.is_empty());
    assert_eq!(w.table.len(), 0);
    let r = &m.stats().rejected;
    assert_eq!(
        (r.get("local"), r.get("not_attached"), r.get("disabled")),
        (Some(&1), Some(&1), Some(&1))
    );
    assert_eq!(r.get("shaped"), Some(&1));
    assert!(w.ct.liberal.borrow().is_empty(), "conntrack untouched");
}

#[tokio::test]
async fn a_route_change_rewrites_changed_flows_and_drops_unroutable_ones() {
    let w = World::new();
    let mut m = FlowManager::default();
    let same = w.connection(1, IPPROTO_TCP);
    let moved = w.connection(2, IPPROTO_TCP);
    let lost = w.connection(3, IPPROTO_TCP);
    for c in [&same, &moved, &lost] {
        m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    }
    let installs = w.table.installs.get();
    w.resolver.set(&moved, Ok(hops(MAC_GW_NEW)));
    w.resolver
        .set(&lost, Err(Unresolved::NoRoute("route deleted".into())));
    m.on_topology(&TopologyEvent::Route, &w.ctx()).await;
    // Queued, not done yet: the event loop works through it between other events.
    assert_eq!((m.stats().reresolved, m.backlog_len()), (0, 3));
    assert_eq!(m.stats().last_reresolution, None);
    m.work(&w.ctx(), Duration::ZERO).await;
    assert_eq!(m.backlog_len(), 3, "no budget, no work");
    drain(&mut m, &w).await;
    assert_eq!(m.stats().reresolved, 3);
    assert_eq!(m.stats().last_reresolution.map(|r| r.flows), Some(3));
    assert_eq!(m.len(), 2);
    assert!(!m.flows.contains_key(&(lost.orig, 0)));
    assert_eq!(
        w.table.installs.get(),
        installs + 2,
        "only the moved flow is rewritten"
    );
    assert_eq!(m.flows[&(moved.orig, 0)].hops[1].dst_mac, MAC_GW_NEW);
    assert_eq!(w.table.len(), 4);
}

#[tokio::test]
async fn resync_matches_conntrack_and_drops_orphan_entries() {
    let w = World::new();
    let mut m = FlowManager::default();
    let kept = w.connection(1, IPPROTO_TCP);
    let stale = w.connection(2, IPPROTO_TCP);
    m.on_conntrack(Message::New(kept.clone()), &w.ctx()).await;
    m.on_conntrack(Message::New(stale.clone()), &w.ctx()).await;
    // Events were lost: `stale` ended, `fresh` began, and an earlier daemon left an entry.
    w.ct.destroy(&stale);
    let fresh = w.connection(3, IPPROTO_UDP);
    let unshaped = [super::encode::Shaping::Unshaped; 2];
    let orphan =
        super::encode::connection(&conn(9, IPPROTO_UDP), &hops(MAC_GW), &w.resolver, unshaped)
            .map(|[(_, v), _]| v);
    if let Some(v) = orphan {
        let _ = w.table.install(&v, 77);
    }
    assert_eq!(w.table.len(), 5);
    let conns = w.ct.dump().unwrap_or_default();
    m.resync(conns, &w.ctx()).await;
    assert!(m.has_backlog(), "admissions wait for the backlog");
    drain(&mut m, &w).await;
    let mut left: Vec<Tuple> = m.flows.keys().map(|k| k.0).collect();
    left.sort();
    let mut want = vec![kept.orig, fresh.orig];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(w.table.len(), 4, "the orphan entry is gone");
}

fn shaped(upload: bool, download_shaper: Option<u32>, has_l2: bool) -> crate::qos::ShapedDevice {
    crate::qos::ShapedDevice {
        upload,
        download_shaper,
        has_l2,
    }
}

fn entry_of(w: &World, m: &FlowManager, c: &Conn, dir: usize) -> FlowValue {
    let k = m.flows[&(c.orig, 0)].keys[dir];
    w.table.entries.borrow()[&k].0
}

fn action_nh_shaper(v: &FlowValue) -> (u8, u32, u8, u16) {
    match v {
        FlowValue::V4(v) => (v.action, v.nh.ifindex, v.nh.l2_len, v.shaper),
        FlowValue::V6(v) => (v.action, v.nh.ifindex, v.nh.l2_len, v.shaper),
    }
}

#[tokio::test]
async fn shaped_directions_go_through_their_shapers() {
    use crate::dataplane::abi::Action;
    let mut w = World::new();
    let mut m = FlowManager::default();
    // WAN shaped both ways: upload at its L3 device (Ethernet), download through shaper 9.
    w.shaped.insert(WAN, shaped(true, Some(9), true));
    let c = w.connection(1, IPPROTO_TCP);
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    assert_eq!(m.len(), 1, "{:?}", m.stats());
    let up = action_nh_shaper(&entry_of(&w, &m, &c, 0));
    assert_eq!(
        up,
        (Action::BPFQOS_ACT_FORWARD_TC.0 as u8, WAN, 14, 0),
        "upload: TC twin to the L3 device with a plain Ethernet header"
    );
    let down = action_nh_shaper(&entry_of(&w, &m, &c, 1));
    assert_eq!(
        down,
        (Action::BPFQOS_ACT_FORWARD_SHAPED.0 as u8, LAN, 14, 9),
        "download: rewritten for the LAN port, into shaper 9"
    );
    // A PPP WAN (no L2 header): the IP packet goes to it.
    m.flush(Some(&w.table));
    w.shaped.insert(WAN, shaped(true, None, false));
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    let up = action_nh_shaper(&entry_of(&w, &m, &c, 0));
    assert_eq!(up.0, Action::BPFQOS_ACT_FORWARD_L3.0 as u8);
    let down = action_nh_shaper(&entry_of(&w, &m, &c, 1));
    assert_eq!(
        down.0,
        Action::BPFQOS_ACT_FORWARD.0 as u8,
        "download unshaped"
    );
}

#[tokio::test]
async fn an_upload_arriving_encapsulated_stays_in_the_kernel() {
    let mut w = World::new();
    let mut m = FlowManager::default();
    w.shaped.insert(WAN, shaped(true, None, true));
    let c = w.connection(1, IPPROTO_TCP);
    let mut h = hops(MAC_GW);
    // The client sits behind a PPPoE session on the LAN side: TC cannot strip it.
    h[0].encap.pppoe = Some(crate::topology::PppoeSession {
        sid: 7,
        peer_mac: MAC_HOST,
        local_mac: [2, 0, 0, 0, 0, 0xfe],
    });
    w.resolver.set(&c, Ok(h));
    m.on_conntrack(Message::New(c), &w.ctx()).await;
    assert!(m.is_empty());
    assert_eq!(m.stats().rejected.get("shaped"), Some(&1));
    assert_eq!(w.table.len(), 0);
}

#[tokio::test]
async fn the_status_lists_the_busiest_connections_when_there_are_many() {
    let w = World::new();
    let mut m = FlowManager::default();
    let n = super::MAX_LISTED_FLOWS + 44;
    let mut keys = Vec::new();
    for i in 0..n {
        let mut c = conn(1, IPPROTO_UDP);
        let sport = 10000 + i as u16;
        (c.orig.sport, c.reply.dport, c.id) = (sport, sport, i as u32);
        w.ct.add(&c);
        w.resolver.set(&c, Ok(hops(MAC_GW)));
        m.on_conntrack(Message::New(c), &w.ctx()).await;
        keys.push(
            m.flows
                .iter()
                .find(|(c, _)| c.0.sport == sport)
                .map(|(_, f)| f.keys[0]),
        );
    }
    assert_eq!(m.len(), n);
    // Connection i moves i packets (100 bytes each): the busiest are the last ones.
    for (i, k) in keys.iter().enumerate() {
        w.table.count(
            &k.unwrap_or_else(|| panic!("connection {i} installed")),
            i as u64,
            0,
        );
    }
    let listed = m.status_view(Some(&w.table), &|_| None).1;
    assert_eq!(listed.len(), super::MAX_LISTED_FLOWS);
    let least = (n - super::MAX_LISTED_FLOWS) as u64 * 100;
    assert!(
        listed.iter().all(|f| f.bytes >= least),
        "only the busiest are listed"
    );
    let mut sorted = listed.clone();
    sorted.sort_by(|a, b| a.orig.cmp(&b.orig));
    assert_eq!(listed, sorted, "listed in tuple order");
    // Fewer than the limit: all of them.
    m.flush(Some(&w.table));
    assert!(m.status_view(Some(&w.table), &|_| None).1.is_empty());
}

#[tokio::test]
async fn a_connection_that_cannot_be_placed_is_not_retried_by_its_own_update() {
    // Making TCP tracking liberal is a ctnetlink update, which comes back as an UPDATE event:
    // retried at once, a connection that found no room would fail again and cause the next
    // (found at 10k connections: 800,000 retries a minute for three of them).
    let w = World::new();
    w.table.capacity.set(0);
    let mut m = FlowManager::default();
    let c = w.connection(1, IPPROTO_TCP);
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    assert!(m.is_empty());
    assert_eq!(m.stats().rejected.get("map_full"), Some(&1));
    assert_eq!(
        w.ct.liberal.borrow().len(),
        1,
        "liberal before any packet bypasses conntrack"
    );
    assert_eq!(w.table.len(), 0);
    m.on_conntrack(Message::Update(c.clone()), &w.ctx()).await;
    assert_eq!(
        m.stats().rejected.get("map_full"),
        Some(&1),
        "not retried at once"
    );
    // Later (room may have been made), an event retries it.
    w.table.capacity.set(usize::MAX);
    w.advance(super::UNPLACEABLE_RETRY);
    m.on_conntrack(Message::Update(c), &w.ctx()).await;
    assert_eq!(m.len(), 1);
}

#[tokio::test]
async fn a_connection_destroyed_while_waiting_for_admission_is_not_admitted() {
    let w = World::new();
    let mut m = FlowManager::default();
    let conns: Vec<Conn> = (1..=3).map(|n| w.connection(n, IPPROTO_UDP)).collect();
    m.resync(conns.clone(), &w.ctx()).await;
    assert_eq!((m.len(), m.backlog_len()), (0, 3));
    m.on_conntrack(Message::Destroy(conns[1].clone()), &w.ctx())
        .await;
    // An event may admit a queued one first; the backlog then skips it.
    m.on_conntrack(Message::Update(conns[2].clone()), &w.ctx())
        .await;
    assert_eq!((m.len(), m.backlog_len()), (1, 1));
    drain(&mut m, &w).await;
    assert_eq!(m.len(), 2);
    assert!(
        !m.flows.contains_key(&(conns[1].orig, 0)),
        "destroyed: stays out"
    );
    assert_eq!(m.stats().admitted, 2);
    // A flush forgets the backlog with the flows.
    m.resync(vec![conns[1].clone()], &w.ctx()).await;
    m.flush(Some(&w.table));
    assert!(!m.has_backlog());
}

#[tokio::test]
async fn admissions_beyond_a_burst_wait_in_the_backlog_and_removals_do_not() {
    let w = World::new();
    let mut m = FlowManager::default();
    let (a, b) = (w.connection(1, IPPROTO_TCP), w.connection(2, IPPROTO_TCP));
    m.on_conntrack(Message::New(a.clone()), &w.ctx()).await;
    assert!(
        m.defer(Message::New(b.clone())).is_none(),
        "an admission waits"
    );
    assert!(m.defer(Message::Update(b.clone())).is_none(), "once");
    assert_eq!(m.backlog_len(), 1);
    assert!(matches!(
        m.defer(Message::Update(a.clone())),
        Some(Message::Update(_))
    ));
    assert!(matches!(
        m.defer(Message::Destroy(a)),
        Some(Message::Destroy(_))
    ));
    drain(&mut m, &w).await;
    assert_eq!(m.len(), 2);
}

#[tokio::test]
async fn a_background_dump_does_not_undo_what_happened_while_it_ran() {
    let w = World::new();
    let mut m = FlowManager::default();
    let [old, new, dead, missed, born, late, closed] =
        [1, 2, 3, 4, 5, 6, 7].map(|n| w.connection(n, IPPROTO_UDP));
    m.on_conntrack(Message::New(old.clone()), &w.ctx()).await;
    m.on_conntrack(Message::New(closed.clone()), &w.ctx()).await;
    let mark = m.dump_started();
    // While the dump runs: a connection is admitted, one the dump lists is destroyed, one is
    // torn down by a FIN the data path saw, and an event of one from before it was assured.
    m.on_conntrack(Message::New(new.clone()), &w.ctx()).await;
    m.on_conntrack(Message::Destroy(dead.clone()), &w.ctx())
        .await;
    let fin = m.flows[&(closed.orig, 0)].keys[0];
    m.on_teardown(&[fin], Some(&w.table));
    let mut young = late.clone();
    young.status &= !crate::conntrack::codec::status::ASSURED;
    m.on_conntrack(Message::Update(young), &w.ctx()).await;
    // The dump (taken at the start): `old` had gone already (its DESTROY was lost), `new` was
    // not born yet; `dead`, `closed` and `missed` (whose NEW was lost) were there, `late`
    // assured.
    let ending = w.connection(8, IPPROTO_UDP);
    m.resync_since(
        vec![
            dead.clone(),
            missed.clone(),
            late.clone(),
            closed.clone(),
            ending.clone(),
        ],
        mark,
        &w.ctx(),
    );
    // It is applied a slice at a time by the backlog; what ends meanwhile counts as well.
    assert!(m.has_backlog());
    m.on_conntrack(Message::Destroy(ending.clone()), &w.ctx())
        .await;
    // Events lost again meanwhile: another dump starts; the one being applied goes on.
    let again = m.dump_started();
    drain(&mut m, &w).await;
    assert!(!m.flows.contains_key(&(old.orig, 0)), "stale: out");
    assert!(
        m.flows.contains_key(&(new.orig, 0)),
        "admitted since: not stale"
    );
    assert!(
        !m.flows.contains_key(&(ending.orig, 0)),
        "destroyed while the dump was applied: not admitted"
    );
    assert!(
        !m.flows.contains_key(&(dead.orig, 0)),
        "destroyed since: not admitted"
    );
    assert!(
        m.flows.contains_key(&(missed.orig, 0)),
        "the lost event's connection"
    );
    assert!(
        !m.flows.contains_key(&(closed.orig, 0)),
        "torn down since: not admitted again"
    );
    // The second dump arrives (the same entries, and `new`, admitted before it started):
    // applied alike; once no dump runs or is being applied, what ended meanwhile is forgotten.
    let second = vec![
        new.clone(),
        dead.clone(),
        missed.clone(),
        late.clone(),
        closed.clone(),
        ending.clone(),
    ];
    m.resync_since(second, again, &w.ctx());
    drain(&mut m, &w).await;
    assert!(m.flows.contains_key(&(missed.orig, 0)));
    assert!(!m.flows.contains_key(&(closed.orig, 0)));
    assert!(m.dump_gone.is_none(), "forgotten once applied");
    // `late`: vetoed by the older event; the event of its transition, delivered since the
    // queue was emptied before the dump, admits it.
    assert!(!m.flows.contains_key(&(late.orig, 0)));
    m.on_conntrack(Message::Update(late.clone()), &w.ctx())
        .await;
    assert!(m.flows.contains_key(&(late.orig, 0)));
    m.on_conntrack(Message::Destroy(late.clone()), &w.ctx())
        .await;
    assert_eq!(m.len(), 2);
    // A resync from a dump of its own (a reload) while a background dump runs: the background
    // one still knows what went away meanwhile.
    let mark = m.dump_started();
    m.on_conntrack(Message::Destroy(missed.clone()), &w.ctx())
        .await;
    m.resync(vec![new.clone()], &w.ctx()).await;
    m.resync_since(vec![new.clone(), missed.clone()], mark, &w.ctx());
    drain(&mut m, &w).await;
    assert!(
        !m.flows.contains_key(&(missed.orig, 0)),
        "destroyed meanwhile"
    );
    assert_eq!(m.len(), 1);
    // A flush while a dump runs (a firewall reload): its admissions are void.
    let mark = m.dump_started();
    m.flush(Some(&w.table));
    m.resync_since(vec![born], mark, &w.ctx());
    assert!(!m.has_backlog() && m.is_empty());
}

#[tokio::test]
async fn connections_share_their_next_hops() {
    let w = World::new();
    let mut m = FlowManager::default();
    let timeouts = Timeouts { tcp: 300, udp: 60 };
    let (a, b) = (w.connection(1, IPPROTO_TCP), w.connection(2, IPPROTO_UDP));
    m.on_conntrack(Message::New(a.clone()), &w.ctx()).await;
    m.on_conntrack(Message::New(b.clone()), &w.ctx()).await;
    let (fa, fb) = (&m.flows[&(a.orig, 0)], &m.flows[&(b.orig, 0)]);
    assert!(std::rc::Rc::ptr_eq(&fa.hops[1], &fb.hops[1]), "one copy");
    assert_eq!(m.hop_pool.len(), 2, "towards the host, towards the gateway");
    // Once no connection uses them, the next refresh round lets them go.
    m.flush(Some(&w.table));
    m.tick(&w.ctx(), &timeouts);
    assert!(m.hop_pool.is_empty());
}

#[tokio::test]
async fn a_connection_seen_ending_is_not_brought_back_by_older_news_of_it() {
    let w = World::new();
    let mut m = FlowManager::default();
    let c = w.connection(1, IPPROTO_TCP);
    m.on_conntrack(Message::New(c.clone()), &w.ctx()).await;
    let fin = m.flows[&(c.orig, 0)].keys[0];
    m.on_teardown(&[fin], Some(&w.table));
    assert!(m.is_empty());
    // Conntrack still calls that entry ESTABLISHED (an RST it doubted; a dump from before
    // the end; the echo of the liberal update): not admitted again.
    m.on_conntrack(Message::Update(c.clone()), &w.ctx()).await;
    let mark = m.dump_started();
    m.resync_since(vec![c.clone()], mark, &w.ctx());
    drain(&mut m, &w).await;
    assert!(m.is_empty(), "the same entry came back");
    assert_eq!(m.stats.rejected.get("ended"), Some(&2));
    // The client reuses the port: a new entry (another id) on the same tuple is admitted.
    let mut again = c.clone();
    again.id = c.id.wrapping_add(1);
    m.on_conntrack(Message::New(again.clone()), &w.ctx()).await;
    assert_eq!(m.len(), 1);
    // The old entry's DESTROY forgets it; the new one's teardown is remembered in turn.
    m.on_conntrack(Message::Destroy(c.clone()), &w.ctx()).await;
    assert!(m.torn_down.is_empty());
    assert_eq!(m.len(), 1, "the old entry's end is not the new one's");
}
