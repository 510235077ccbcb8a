//! What the flow manager needs from the world, as three small traits: the data path's flow
//! table ([`FlowTable`]), conntrack requests ([`ConntrackOps`]) and next-hop resolution
//! ([`Resolver`]). The daemon passes the real ones ([`crate::dataplane::Dataplane`],
//! [`crate::conntrack::Client`], [`KernelResolver`]); the unit tests pass fakes, which is how
//! admission, invalidation and teardown decisions (and their races) are tested without root.

use std::cell::RefCell;
use std::collections::HashMap;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use rtnetlink::Handle;

use super::ConnKey;
use crate::conntrack;
use crate::conntrack::Conn;
use crate::dataplane::abi::FlowCounters;
use crate::dataplane::entry::FlowKey;
use crate::dataplane::entry::FlowValue;
use crate::dataplane::Dataplane;
use crate::topology::NextHop;
use crate::topology::RouteQuery;
use crate::topology::Topology;
use crate::topology::Unresolved;

/// The data path's flow table.
pub trait FlowTable {
    /// Whether offload is switched on.
    fn enabled(&self) -> bool;
    /// Writes an entry (a replacement keeps the old entry's counters) for `owner` (what
    /// [`FlowTable::owner`] gives back for its key); an error when there is no room for it.
    fn install(&self, value: &FlowValue, owner: u32) -> anyhow::Result<()>;
    /// The owner of the live entry `key`; None when it is not installed.
    fn owner(&self, key: &FlowKey) -> Option<u32>;
    /// Unlinks an entry (absent: nothing to do).
    fn remove(&self, key: &FlowKey);
    /// What an entry counted; `None` when it is not installed.
    fn counters(&self, key: &FlowKey) -> Option<FlowCounters>;
    /// Makes `ifindex` a redirect target.
    fn add_tx_port(&self, ifindex: u32) -> anyhow::Result<()>;
    /// Unlinks every entry not in `keep`.
    fn retain(&self, keep: &[&FlowKey]);
}

impl FlowTable for Dataplane {
    fn enabled(&self) -> bool {
        Dataplane::enabled(self)
    }

    fn install(&self, value: &FlowValue, owner: u32) -> anyhow::Result<()> {
        Dataplane::install(self, value, owner)
    }

    fn owner(&self, key: &FlowKey) -> Option<u32> {
        self.flow_owner(key)
    }

    fn remove(&self, key: &FlowKey) {
        self.remove_flow(key)
    }

    fn counters(&self, key: &FlowKey) -> Option<FlowCounters> {
        self.flow_counters(key)
    }

    fn add_tx_port(&self, ifindex: u32) -> anyhow::Result<()> {
        Dataplane::add_tx_port(self, ifindex)
    }

    fn retain(&self, keep: &[&FlowKey]) {
        self.retain_flows(keep)
    }
}

/// Conntrack requests (answers are per entry, in order: `true` = the entry exists).
pub trait ConntrackOps {
    /// Every connection.
    fn dump(&self) -> anyhow::Result<Vec<Conn>>;
    /// Makes TCP window tracking liberal for these entries.
    fn set_liberal(&self, entries: &[ConnKey]) -> anyhow::Result<Vec<bool>>;
    /// Sets these entries' timeouts.
    fn refresh(&self, entries: &[ConnKey], timeout_s: u32) -> anyhow::Result<Vec<bool>>;
    /// Whether these entries still exist.
    fn exists(&self, entries: &[ConnKey]) -> anyhow::Result<Vec<bool>>;
}

impl ConntrackOps for conntrack::Client {
    fn dump(&self) -> anyhow::Result<Vec<Conn>> {
        conntrack::Client::dump(self)
    }

    fn set_liberal(&self, entries: &[ConnKey]) -> anyhow::Result<Vec<bool>> {
        conntrack::Client::set_liberal(self, entries)
    }

    fn refresh(&self, entries: &[ConnKey], timeout_s: u32) -> anyhow::Result<Vec<bool>> {
        conntrack::Client::refresh(self, entries, timeout_s)
    }

    fn exists(&self, entries: &[ConnKey]) -> anyhow::Result<Vec<bool>> {
        conntrack::Client::exists(self, entries)
    }
}

/// Next hops of a connection's two directions.
pub trait Resolver {
    /// [towards the originator, towards the responder], as the kernel would route them.
    fn resolve_pair<'a>(
        &'a self,
        c: &'a Conn,
    ) -> LocalBoxFuture<'a, Result<[NextHop; 2], Unresolved>>;
    /// The MTU of a (lowest) device.
    fn device_mtu(&self, ifindex: u32) -> Option<u32>;
}

/// The real resolver: the kernel's route lookups over rtnetlink and the topology's walk.
pub struct KernelResolver<'a> {
    /// The network model.
    pub topo: &'a Topology,
    /// rtnetlink requests.
    pub handle: &'a Handle,
    /// Answers already had from this resolver. It lives for one batch of work (one event, one
    /// slice of the backlog), in which the same query has the same answer: connections
    /// between the same two hosts, and every connection's "which side is this end on", are
    /// looked up once. A route change after the batch is an event of its own, which
    /// re-resolves with a fresh resolver.
    pub memo: RefCell<HashMap<RouteQuery, Result<NextHop, Unresolved>>>,
}

impl<'a> KernelResolver<'a> {
    /// A resolver with nothing remembered yet.
    pub fn new(topo: &'a Topology, handle: &'a Handle) -> Self {
        Self {
            topo,
            handle,
            memo: RefCell::default(),
        }
    }

    async fn resolve(&self, q: RouteQuery) -> Result<NextHop, Unresolved> {
        if let Some(known) = self.memo.borrow().get(&q) {
            return known.clone();
        }
        let answer = self.topo.resolve(self.handle, q).await;
        // Bounded by the batch: a slice resolves a few hundred connections.
        self.memo.borrow_mut().insert(q, answer.clone());
        answer
    }
}

impl Resolver for KernelResolver<'_> {
    fn resolve_pair<'a>(
        &'a self,
        c: &'a Conn,
    ) -> LocalBoxFuture<'a, Result<[NextHop; 2], Unresolved>> {
        resolve_pair(c, self).boxed_local()
    }

    fn device_mtu(&self, ifindex: u32) -> Option<u32> {
        self.topo.link(ifindex).map(|l| l.mtu)
    }
}

/// Resolves the next hop towards each end of `c`: [towards the originator, towards the
/// responder]. Each lookup is a forwarded-packet route query (policy routing with the real
/// input device and mark), so what is installed is what the kernel itself would do.
async fn resolve_pair(c: &Conn, r: &KernelResolver<'_>) -> Result<[NextHop; 2], Unresolved> {
    let mark = (c.mark != 0).then_some(c.mark);
    let plain = |dst| RouteQuery {
        dst,
        src: None,
        iif: None,
        mark,
    };
    // First find the L3 device each end is behind (the router's own route), which is the input
    // device of the packets coming from that end...
    let orig_side = r.resolve(plain(c.orig.src)).await?;
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
    let to_reply = r
        .resolve(q(c.reply.src, c.orig.src, orig_side.l3_ifindex))
        .await?;
    let to_orig = r
        .resolve(q(c.orig.src, c.reply.src, to_reply.l3_ifindex))
        .await?;
    Ok([to_orig, to_reply])
}
