//! The daemon: one event loop over signals, control requests, conntrack events, rtnetlink
//! events, the data path's teardown events and a one-second tick (heartbeat, refreshes). It
//! owns the running configuration and every module's state, and hands each event to the module
//! it concerns; the decisions are theirs (interfaces, data plane, flow manager).
//!
//! Everything mutable lives in [`Daemon`] and is touched only from the loop, so no locks: control
//! connections are served on their own tasks and forward requests through a channel.

mod stall;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use log::debug;
use log::error;
use log::info;
use log::warn;
use tokio::signal::unix::signal;
use tokio::signal::unix::Signal;
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;

use crate::autorate;
use crate::cli::DaemonArgs;
use crate::config;
use crate::config::Config;
use crate::conntrack;
use crate::control::server::ControlSocket;
use crate::control::Reply;
use crate::control::Request;
use crate::dataplane::entry::FlowKey;
use crate::dataplane::events::TeardownEvents;
use crate::dataplane::Dataplane;
use crate::interfaces::Interfaces;
use crate::logger;
use crate::offload::ports::ConntrackOps;
use crate::offload::ports::FlowTable;
use crate::offload::ports::KernelResolver;
use crate::offload::ports::Resolver;
use crate::offload::Ctx;
use crate::offload::FlowManager;
use crate::offload::Timeouts;
use crate::qos;
use crate::qos::Shaping;
use crate::rtt;
use crate::status::ConfigStatus;
use crate::status::InterfaceStatus;
use crate::status::Status;
use crate::steering;
use crate::topology;
use crate::topology::LinkKind;
use crate::topology::Topology;
use crate::topology::TopologyEvent;

/// How long one turn of the event loop works through the flow manager's backlog: admissions after
/// a resync cost ~30-100 us each, so a slice is a few hundred of them, and every other event
/// waits at most this long for it.
const BACKLOG_SLICE: Duration = Duration::from_millis(10);

/// Longest the loop spends emptying the conntrack event queue after an overflow: a safety
/// valve only (an 8 MiB queue reads in a few milliseconds, headers only), since the queue
/// must be emptied for the kernel to report the next loss.
const DISCARD_LIMIT: Duration = Duration::from_secs(1);

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let loaded = config::load(&args.config_dir)
        .map_err(|e| anyhow::anyhow!("invalid configuration, not starting:\n{e}"))?;
    logger::set_level(loaded.config.globals.log_level);
    for w in &loaded.warnings {
        warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("creating the event loop")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, event_loop(args, loaded))
}

/// The signals the daemon reacts to.
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }
}

async fn event_loop(args: DaemonArgs, loaded: config::Loaded) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let socket = ControlSocket::bind(&args.socket)?;
    let socket_path = args.socket.clone();
    let rtnl = topology::subscribe().context("rtnetlink")?;
    let mut topo_events = rtnl.events;
    // Without conntrack events there is no admission; the daemon still runs (status, attach).
    let (mut ct_events, ct_client) = match (
        conntrack::EventSocket::subscribe(),
        conntrack::Client::new(),
    ) {
        (Ok(ev), Ok(cl)) => (Some(ev), Some(cl)),
        (Err(e), _) | (_, Err(e)) => {
            error!("conntrack unavailable, no flow will be offloaded: {e:#}");
            (None, None)
        }
    };
    let topo = Topology::dump(&rtnl.handle)
        .await
        .context("reading the network configuration")?;
    let dp = match Dataplane::load(&args.pin_dir) {
        Ok(dp) => Some(dp),
        Err(e) => {
            error!("BPF data path unavailable, everything stays in the kernel path: {e:#}");
            None
        }
    };
    let mut teardown = dp.as_ref().and_then(|dp| match dp.teardown_events() {
        Ok(t) => Some(t),
        Err(e) => {
            warn!("no FIN/RST events from the data path, teardown waits for refreshes: {e:#}");
            None
        }
    });
    let mut daemon = Daemon::new(args, loaded, Net::new(ct_client, topo, rtnl.handle, dp));
    let mut dump: Option<Dump> = None;
    let mut dump_again = false;
    daemon.apply().await;
    daemon.resync().await;

    let (tx, mut rx) = mpsc::channel(16);
    tokio::task::spawn_local(socket.serve(tx));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut autorate_tick =
        tokio::time::interval(Duration::from_millis(autorate::controller::TICK_MS));
    autorate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        "bpfqos {} running, control socket {}",
        env!("CARGO_PKG_VERSION"),
        socket_path.display()
    );
    loop {
        // Each branch returns what it was and when it started: the time it takes is the time
        // every other event waits (status `event_loop`).
        let (what, started) = tokio::select! {
            _ = signals.hup.recv() => {
                let t = Instant::now();
                info!("SIGHUP: reloading configuration");
                let _ = daemon.reload().await;
                ("reload", t)
            }
            _ = signals.term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = signals.int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = tick.tick() => {
                let t = Instant::now();
                daemon.tick().await;
                ("tick", t)
            }
            _ = autorate_tick.tick(), if daemon.autorate.active() => {
                let t = Instant::now();
                daemon.autorate_tick();
                ("autorate", t)
            }
            Some((req, reply)) = rx.recv() => {
                let t = Instant::now();
                // The client may have gone away; its loss.
                let _ = reply.send(daemon.handle(req).await);
                ("request", t)
            }
            ev = recv_ct(&mut ct_events) => {
                let t = Instant::now();
                match ev {
                    Ok(conntrack::Recv::Messages(msgs)) => daemon.on_conntrack(msgs).await,
                    Ok(conntrack::Recv::Overflow) => {
                        warn!("conntrack events lost (queue overflow): resynchronising");
                        daemon.flows.events_lost();
                        // What is still queued predates the loss: the dump replaces it.
                        if let Some(ev) = ct_events.as_mut() {
                            let (emptied, kept, n) = ev.discard_queued(DISCARD_LIMIT);
                            debug!("{n} queued conntrack events superseded by the dump");
                            if !emptied {
                                warn!("conntrack events keep coming faster than they are read");
                            }
                            if !kept.is_empty() {
                                daemon.on_conntrack(kept).await;
                            }
                        }
                        // The dump of a big table takes long: it runs on a thread of its own
                        // while the loop goes on. Losses during one mean one more afterwards.
                        if dump.is_some() {
                            dump_again = true;
                        } else {
                            dump = daemon.start_dump();
                        }
                    }
                    Err(e) => {
                        error!("conntrack event socket failed, admission stops: {e:#}");
                        ct_events = None;
                    }
                }
                ("conntrack", t)
            }
            ev = recv_teardown(&mut teardown) => {
                let t = Instant::now();
                match ev {
                    Ok(keys) => daemon.on_teardown(&keys),
                    Err(e) => {
                        warn!("data-path events failed, teardown waits for refreshes: {e:#}");
                        teardown = None;
                    }
                }
                ("teardown", t)
            }
            Some(ev) = topo_events.next() => {
                let t = Instant::now();
                daemon.on_netlink(ev).await;
                ("netlink", t)
            }
            res = recv_dump(&mut dump) => {
                let t = Instant::now();
                let mark = dump.take().map(|(m, _)| m);
                match (res, mark) {
                    (Ok(conns), Some(mark)) => daemon.apply_dump(conns, mark),
                    (Err(e), _) => {
                        warn!("conntrack dump after lost events: {e:#}");
                        daemon.flows.dump_failed();
                    }
                    (_, None) => {}
                }
                if std::mem::take(&mut dump_again) {
                    dump = daemon.start_dump();
                }
                ("conntrack dump", t)
            }
            // Admissions after a resync, re-resolutions after a topology change: a slice at a
            // time, taking turns with everything above (select! picks among ready branches at
            // random).
            _ = std::future::ready(()), if daemon.flows.has_backlog() => {
                let t = Instant::now();
                daemon.work().await;
                ("backlog", t)
            }
        };
        let now = Instant::now();
        daemon
            .loop_stats
            .record(what, now.saturating_duration_since(started), now);
    }
    daemon.shutdown().await;
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// Next conntrack batch, or never when there is no conntrack socket.
async fn recv_ct(ev: &mut Option<conntrack::EventSocket>) -> anyhow::Result<conntrack::Recv> {
    match ev {
        Some(ev) => ev.recv().await,
        None => std::future::pending().await,
    }
}

/// A background conntrack dump: where it started, and the thread taking it.
type Dump = (
    crate::offload::DumpMark,
    tokio::task::JoinHandle<anyhow::Result<Vec<conntrack::Conn>>>,
);

/// The background dump's connections, or never when none runs.
async fn recv_dump(dump: &mut Option<Dump>) -> anyhow::Result<Vec<conntrack::Conn>> {
    match dump {
        Some((_, thread)) => thread.await.context("the dump thread")?,
        None => std::future::pending().await,
    }
}

/// Next teardown requests, or never without the ring buffer.
async fn recv_teardown(ev: &mut Option<TeardownEvents>) -> anyhow::Result<Vec<FlowKey>> {
    match ev {
        Some(ev) => ev.recv().await,
        None => std::future::pending().await,
    }
}

/// The network side the flow manager works against, kept apart from the manager so both can be
/// borrowed at once.
struct Net {
    ct: Option<conntrack::Client>,
    topo: Topology,
    handle: rtnetlink::Handle,
    dp: Option<Dataplane>,
    /// Ifindexes of the lowest devices the offload is attached to.
    attached: HashSet<u32>,
    /// Shaped interfaces by L3 ifindex: their connections go through the shapers.
    shaped: HashMap<u32, qos::ShapedDevice>,
}

impl Net {
    fn new(
        ct: Option<conntrack::Client>,
        topo: Topology,
        handle: rtnetlink::Handle,
        dp: Option<Dataplane>,
    ) -> Self {
        Self {
            ct,
            topo,
            handle,
            dp,
            attached: HashSet::new(),
            shaped: HashMap::new(),
        }
    }

    fn resolver(&self) -> KernelResolver<'_> {
        KernelResolver::new(&self.topo, &self.handle)
    }

    fn ctx<'a>(&'a self, resolver: &'a dyn Resolver) -> Ctx<'a> {
        Ctx {
            resolver,
            dp: self.flow_table(),
            attached: &self.attached,
            shaped: &self.shaped,
            ct: self.ct.as_ref().map(|c| c as &dyn ConntrackOps),
            now: Instant::now(),
        }
    }

    fn flow_table(&self) -> Option<&dyn FlowTable> {
        self.dp.as_ref().map(|d| d as &dyn FlowTable)
    }
}

/// Everything the daemon owns.
struct Daemon {
    args: DaemonArgs,
    started: Instant,
    /// The event loop's longest handlers (status `event_loop`).
    loop_stats: stall::LoopStats,
    config: Config,
    warnings: Vec<String>,
    last_reload_error: Option<String>,
    reloads: u64,
    /// The configured interfaces resolved to devices (at the last apply).
    interfaces: Interfaces,
    /// Per configured interface: why it is not (fully) in use.
    interface_errors: BTreeMap<String, String>,
    net: Net,
    flows: FlowManager,
    qos: Shaping,
    rtt: rtt::Monitor,
    autorate: autorate::Autorate,
    /// CPU steering as last applied.
    steering: steering::Plan,
    /// When the devices holding a default route (the default WAN side of passive RTT) were
    /// last read, and which they were.
    default_routes: (Instant, HashSet<u32>),
    /// The circuits' hosts changed: their NATed connections must be looked up again.
    nat_stale: bool,
    timeouts: Timeouts,
}

impl Daemon {
    fn new(args: DaemonArgs, loaded: config::Loaded, net: Net) -> Self {
        Self {
            args,
            started: Instant::now(),
            loop_stats: stall::LoopStats::new(Instant::now()),
            config: loaded.config,
            warnings: loaded.warnings.iter().map(|w| w.to_string()).collect(),
            last_reload_error: None,
            reloads: 0,
            interfaces: Interfaces::default(),
            interface_errors: BTreeMap::new(),
            net,
            flows: FlowManager::default(),
            qos: Shaping::default(),
            rtt: rtt::Monitor::default(),
            autorate: autorate::Autorate::default(),
            steering: steering::Plan::default(),
            default_routes: (Instant::now(), HashSet::new()),
            nat_stale: false,
            timeouts: Timeouts::read(),
        }
    }

    fn offload_on(&self) -> bool {
        self.config.globals.enabled && self.config.globals.offload
    }

    /// Passive RTT: `option rtt`, or autorate on an interface (it runs on the samples).
    fn rtt_on(&self) -> bool {
        self.config.globals.enabled
            && (self.config.globals.rtt || self.config.interfaces.iter().any(|i| i.autorate))
    }

    /// Brings the interfaces, attachments and shapers in line with the running config and
    /// topology. Failures are per interface and never fatal: that interface simply stays on
    /// the kernel path, unshaped.
    async fn apply(&mut self) {
        logger::set_level(self.config.globals.log_level);
        self.interfaces = Interfaces::resolve(&self.config, &self.args.config_dir, &self.net.topo);
        self.interface_errors.clear();
        self.apply_offload();
        self.autorate.configure(&self.config, &mut self.qos);
        self.apply_shaping().await;
        self.apply_rtt().await;
    }

    /// Passive RTT's interface slots and sides, on every device that carries them (the
    /// download shapers' far ends exist only after the shapers were applied).
    async fn apply_rtt(&mut self) {
        if self.net.dp.is_none() {
            return;
        }
        let default_routes = topology::resolve::default_route_devices(&self.net.handle).await;
        self.default_routes = (Instant::now(), default_routes.clone());
        let Some(dp) = self.net.dp.as_mut() else {
            return;
        };
        let extra: HashMap<String, Vec<u32>> = self
            .config
            .interfaces
            .iter()
            .filter_map(|i| {
                let far = qos::veth_names(&i.name).1;
                let ifindex = nix::net::if_::if_nametoindex(far.as_str()).ok()?;
                Some((i.name.clone(), vec![ifindex]))
            })
            .collect();
        self.rtt
            .assign(&self.config, &self.interfaces, &extra, &default_routes, dp);
        // The window's base now, before the control socket answers: samples taken before the
        // first one-second tick (a connection's handshake, often all a data-free half has)
        // belong to the window, whichever of the tick and the first packets comes first.
        self.rtt.tick(dp, Instant::now());
    }

    /// The shapers of every interface with a rate (none when bpfqos is disabled).
    async fn apply_shaping(&mut self) {
        let topo = &self.net.topo;
        let wants: Vec<qos::Want<'_>> = self
            .config
            .interfaces
            .iter()
            .filter(|i| self.config.globals.enabled && (i.upload_kbit > 0 || i.download_kbit > 0))
            .map(|i| {
                let l3 = self
                    .interfaces
                    .get(&i.name)
                    .ok_or_else(|| "not resolved".to_string())
                    .and_then(|r| r.device.clone())
                    .and_then(|name| {
                        topo.link_by_name(&name)
                            .map(|l| qos::L3Device {
                                dev: crate::dataplane::Device {
                                    name: name.clone(),
                                    ifindex: l.ifindex,
                                },
                                has_l2: l.mac.is_some() && l.kind != LinkKind::Ppp,
                                mtu: l.mtu,
                            })
                            .ok_or_else(|| format!("{name}: no such device"))
                    });
                qos::Want { config: i, l3 }
            })
            .collect();
        let circuits: &[config::Circuit] = if self.config.globals.enabled {
            &self.config.circuits
        } else {
            &[]
        };
        if self
            .qos
            .apply(&wants, circuits, &self.net.handle, self.net.dp.as_mut())
            .await
        {
            self.nat_stale = true;
        }
        let shaped = self.qos.shaped();
        if shaped != self.net.shaped {
            // Entries encode how they pass the shapers: written anew for the new ones.
            self.net.shaped = shaped;
            self.flows.flush(self.net.flow_table());
            self.resync().await;
        }
    }

    /// The data path's attach points: the lowest devices of the interfaces that offload, and
    /// with passive RTT on, of every interface (the parse path sees arrivals, the egress hook
    /// departures; where offload is off, nothing is forwarded there).
    fn apply_offload(&mut self) {
        let enabled = self.offload_on();
        let rtt = self.rtt_on();
        let Some(dp) = self.net.dp.as_mut() else {
            return;
        };
        dp.set_enabled(enabled);
        dp.set_rtt(rtt);
        let (offloading, errors) = if enabled {
            self.interfaces.offload_devices()
        } else {
            Default::default()
        };
        let mut wanted = offloading.clone();
        // Passive RTT looks at every lowest device; so does steering where it would steer
        // (XDP assumed: whether it got XDP is known after the attach).
        let (all, _) = self.interfaces.lowest_devices(|_| true);
        // Read once (sysfs, ethtool netlink), planned twice: before the attach with XDP
        // assumed, after it with what each device got.
        let g = &self.config.globals;
        let mut facts = if g.enabled {
            steering_facts(&self.interfaces, &self.net.topo, &all)
        } else {
            Vec::new()
        };
        let online = steering::online_cpus(self.net.topo.fs());
        // Nothing when bpfqos is disabled.
        let plan_of = |facts: &[steering::DeviceFacts]| {
            if g.enabled {
                steering::plan(g, &online, facts)
            } else {
                steering::Plan::default()
            }
        };
        let steer_plan = plan_of(&facts);
        for d in all {
            let steers = steer_plan
                .devices
                .iter()
                .any(|s| s.ifindex == d.ifindex && s.steering);
            if (rtt || steers) && !wanted.iter().any(|w| w.ifindex == d.ifindex) {
                wanted.push(d);
            }
        }
        self.interface_errors.extend(errors);
        let shaping = self.config.globals.enabled
            && self
                .config
                .interfaces
                .iter()
                .any(|i| i.upload_kbit > 0 || i.download_kbit > 0);
        let failed = dp.sync_offload(&wanted, shaping);
        for f in &mut facts {
            f.xdp = dp.has_xdp(&f.name);
        }
        let plan = plan_of(&facts);
        dp.set_steering(&plan.cpus, plan.queue, &plan.steering_devices());
        self.steering = plan;
        for (dev, msg) in &failed {
            for owner in self.interfaces.owners_of(dev).filter(|i| i.offload) {
                self.interface_errors
                    .insert(owner.name.clone(), msg.clone());
            }
        }
        let before = std::mem::take(&mut self.net.attached);
        self.net.attached = offloading
            .iter()
            .filter(|w| !failed.iter().any(|(d, _)| *d == w.name))
            .map(|w| w.ifindex)
            .collect();
        if before != self.net.attached {
            debug!(
                "attach points changed: {before:?} -> {:?}",
                self.net.attached
            );
        }
    }

    /// Dumps conntrack and makes the flow table match it (start, lost events, re-enable).
    async fn resync(&mut self) {
        let Some(ct) = self.net.ct.as_ref() else {
            return;
        };
        match ct.dump() {
            Ok(conns) => {
                self.qos.rebuild_nat(&conns, self.net.dp.as_ref());
                self.nat_stale = false;
                let resolver = self.net.resolver();
                let ctx = self.net.ctx(&resolver);
                self.flows.resync(conns, &ctx).await;
                info!(
                    "conntrack synchronised: {} connections offloaded, {} to admit",
                    self.flows.len(),
                    self.flows.backlog_len()
                );
            }
            Err(e) => warn!("conntrack dump: {e:#}"),
        }
    }

    /// Starts a conntrack dump on a thread of its own (with its own socket).
    fn start_dump(&mut self) -> Option<Dump> {
        self.net.ct.as_ref()?;
        let mark = self.flows.dump_started();
        let thread = tokio::task::spawn_blocking(|| conntrack::Client::new()?.dump());
        Some((mark, thread))
    }

    /// Applies a background dump: circuits' NAT state, then the flow table (stale flows out,
    /// the admissions queued).
    fn apply_dump(&mut self, conns: Vec<conntrack::Conn>, mark: crate::offload::DumpMark) {
        self.qos.rebuild_nat(&conns, self.net.dp.as_ref());
        self.nat_stale = false;
        let resolver = self.net.resolver();
        let ctx = self.net.ctx(&resolver);
        let n = conns.len();
        self.flows.resync_since(conns, mark, &ctx);
        info!(
            "conntrack dump of {n} entries: applying it a slice at a time ({} connections \
             offloaded now)",
            self.flows.len()
        );
    }

    /// Looks at the connections of circuits' hosts again when the circuits changed (a reload
    /// that did not resynchronise the offload anyway).
    fn refresh_nat_if_stale(&mut self) {
        if !self.nat_stale {
            return;
        }
        self.nat_stale = false;
        let Some(ct) = self.net.ct.as_ref() else {
            return;
        };
        match ct.dump() {
            Ok(conns) => self.qos.rebuild_nat(&conns, self.net.dp.as_ref()),
            Err(e) => warn!("conntrack dump for circuits: {e:#}"),
        }
    }

    async fn on_conntrack(&mut self, msgs: Vec<conntrack::Message>) {
        let resolver = self.net.resolver();
        let start = Instant::now();
        for m in msgs {
            self.qos.on_conntrack(&m, self.net.dp.as_ref());
            // A burst (a read holds up to ~1,000 events): admissions beyond one slice wait in
            // the backlog, so that the loop serves everything else in between.
            let m = if start.elapsed() < BACKLOG_SLICE {
                Some(m)
            } else {
                self.flows.defer(m)
            };
            if let Some(m) = m {
                let ctx = self.net.ctx(&resolver);
                self.flows.on_conntrack(m, &ctx).await;
            }
        }
    }

    /// One slice of the flow manager's backlog.
    async fn work(&mut self) {
        let resolver = self.net.resolver();
        let ctx = self.net.ctx(&resolver);
        if self.flows.work(&ctx, BACKLOG_SLICE).await {
            release_free_memory();
        }
    }

    fn on_teardown(&mut self, keys: &[FlowKey]) {
        self.flows.on_teardown(keys, self.net.flow_table());
    }

    async fn on_netlink(&mut self, ev: topology::NetlinkEvent) {
        let Some(change) = self.net.topo.apply(&ev) else {
            return;
        };
        if change == TopologyEvent::Resync {
            match Topology::dump(&self.net.handle).await {
                Ok(t) => self.net.topo = t,
                Err(e) => warn!("re-reading the network configuration: {e:#}"),
            }
        }
        if matches!(change, TopologyEvent::Link(_) | TopologyEvent::Resync) {
            // Devices come and go (hotplug, PPPoE reconnect): follow them, checking the
            // shapers against the kernel.
            self.qos.verify_next();
            self.apply().await;
        }
        let resolver = self.net.resolver();
        let ctx = self.net.ctx(&resolver);
        self.flows.on_topology(&change, &ctx).await;
    }

    /// Reloads the config file; a config with errors is rejected whole and the running one kept.
    async fn reload(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let loaded = match config::load(&self.args.config_dir) {
            Ok(loaded) => loaded,
            Err(e) => {
                let msg = e.to_string();
                error!("reload rejected, keeping the running configuration:\n{msg}");
                self.last_reload_error = Some(msg.clone());
                return Err(msg);
            }
        };
        for w in &loaded.warnings {
            warn!("{w}");
        }
        self.warnings = loaded.warnings.iter().map(|w| w.to_string()).collect();
        self.config = loaded.config;
        self.last_reload_error = None;
        self.reloads += 1;
        self.timeouts = Timeouts::read();
        self.apply().await;
        if self.offload_on() {
            self.resync().await;
        } else {
            self.flows.flush(self.net.flow_table());
        }
        self.refresh_nat_if_stale();
        info!("configuration reloaded in {:?}", started.elapsed());
        Ok(())
    }

    async fn tick(&mut self) {
        if let Some(dp) = self.net.dp.as_ref() {
            if let Err(e) = dp.heartbeat() {
                warn!("heartbeat: {e:#}");
            }
        }
        let resolver = self.net.resolver();
        let ctx = self.net.ctx(&resolver);
        self.flows.tick(&ctx, &self.timeouts);
        self.flows.readmit_due(&ctx).await;
        if let Some(dp) = self.net.dp.as_ref() {
            self.rtt.tick(dp, Instant::now());
        }
        // A default route can come without a link event (DHCP, PPP's IPCP after the link):
        // look again now and then, and give the devices their sides anew when it moved.
        if self.default_routes.0.elapsed() >= Duration::from_secs(10) {
            let now = topology::resolve::default_route_devices(&self.net.handle).await;
            if now != self.default_routes.1 {
                self.apply_rtt().await;
            } else {
                self.default_routes.0 = Instant::now();
            }
        }
    }

    /// Autorate's tick: reads the excess delay and the shapers' counters, moves the rates.
    fn autorate_tick(&mut self) {
        let (rtt, interfaces) = (&self.rtt, &self.interfaces);
        let place = |name: &str| {
            let r = interfaces.get(name);
            let l3 = r.and_then(|r| r.ifindex);
            let shaper_timed = r.is_some_and(|r| {
                r.lowest
                    .as_ref()
                    .is_ok_and(|l| l.iter().any(|d| Some(d.ifindex) == l3))
            });
            (rtt.slot_of(name), shaper_timed)
        };
        self.autorate
            .tick(Instant::now(), self.net.dp.as_ref(), &place, &mut self.qos);
    }

    async fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Ping => Reply::ok(serde_json::json!({"pong": true})),
            Request::Status => match serde_json::to_value(self.status()) {
                Ok(v) => Reply::ok(v),
                Err(e) => Reply::err(format!("serialising status: {e}")),
            },
            Request::Reload => match self.reload().await {
                Ok(()) => Reply::ok(serde_json::json!({"reloaded": true})),
                Err(e) => Reply::err(format!(
                    "configuration rejected, running configuration kept:\n{e}"
                )),
            },
        }
    }

    /// The status document, from the sections each module builds.
    fn status(&mut self) -> Status {
        let halves = self
            .net
            .dp
            .as_ref()
            .filter(|d| d.rtt_enabled())
            .map(Dataplane::rtt_halves)
            .unwrap_or_default();
        let totals = rtt::Totals::of(&halves);
        let mut summaries = self.rtt.summaries(self.net.dp.as_ref(), &totals);
        let interfaces = self.interface_status(&mut summaries.interfaces);
        let shapers: Vec<&crate::status::ShaperStatus> = interfaces
            .iter()
            .filter_map(|i| i.shaper.as_ref())
            .collect();
        let mut circuits = qos::status::circuits_status(self.qos.circuits(), &shapers);
        let dp = self.net.dp.as_ref();
        if dp.is_some_and(Dataplane::rtt_enabled) {
            let by_id = &summaries.circuits;
            for c in &mut circuits {
                let id = self.qos.circuit_id(&c.name);
                c.rtt = Some(
                    id.and_then(|id| by_id.get(&id).cloned())
                        .unwrap_or_default(),
                );
            }
        }
        // Every flow's counters are read below (totals, the busiest connections): one batched
        // read of the tables instead of a bpf() call per flow and direction.
        let _snapshot = dp.map(Dataplane::counter_snapshot);
        let table = self.net.flow_table();
        let index = dp.filter(|d| d.rtt_enabled()).map(|_| rtt::index(&halves));
        let (counted, flows) = self
            .flows
            .status_view(table, &|c| rtt::flow_rtt(index.as_ref(), c));
        let mut attach = dp.map(Dataplane::attach_points).unwrap_or_default();
        for a in &mut attach {
            if let Some(c) = counted.devices.get(&a.ifindex) {
                a.rx_packets = c.rx_packets;
                a.rx_bytes = c.rx_bytes;
                a.tx_packets = c.tx_packets;
                a.tx_bytes = c.tx_bytes;
            }
        }
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            config: ConfigStatus {
                file: self
                    .args
                    .config_dir
                    .join(config::PACKAGE)
                    .display()
                    .to_string(),
                warnings: self.warnings.clone(),
                last_reload_error: self.last_reload_error.clone(),
                reloads: self.reloads,
            },
            offload: self.flows.status(
                dp.is_some_and(Dataplane::enabled),
                dp.map_or(0, Dataplane::flow_entries),
                dp.map(Dataplane::flow_capacity),
                &counted,
            ),
            attach,
            interfaces,
            flows,
            rtt: self.rtt.status(dp, &halves),
            datapath: dp.map(Dataplane::stats).unwrap_or_default(),
            shaping: crate::status::ShapingStatus {
                datapath: dp.map(Dataplane::shape_stats).unwrap_or_default(),
                circuit_nat_entries: dp.map_or(0, |d| d.circuit_nat_len() as u64),
                circuit_error: self.qos.circuit_error().map(str::to_string),
            },
            circuits,
            circuits_total: self.qos.circuits().len(),
            steering: {
                let online = steering::online_cpus(self.net.topo.fs());
                let ncpus = online.iter().max().map_or(0, |m| m + 1);
                let counters = dp.map(|d| d.steering_counters(ncpus)).unwrap_or_default();
                let held = dp
                    .filter(|_| !self.steering.cpus.is_empty())
                    .map(Dataplane::ppp_held_sessions)
                    .unwrap_or_default();
                steering::SteeringStatus::of(&self.config.globals, &self.steering, &counters, &held)
            },
            event_loop: self.loop_stats.status(Instant::now()),
        }
    }

    /// The `interfaces` section: every configured interface, its device, what keeps it (partly)
    /// out of use, and its shapers.
    /// `rtt`: the latency summaries per interface name (taken out as they are used).
    fn interface_status(
        &mut self,
        rtt: &mut HashMap<String, rtt::RttSummary>,
    ) -> Vec<InterfaceStatus> {
        let mut out = Vec::new();
        let dp = self.net.dp.as_ref().filter(|d| d.rtt_enabled());
        for i in &self.config.interfaces {
            out.push(InterfaceStatus {
                name: i.name.clone(),
                device: self
                    .interfaces
                    .get(&i.name)
                    .and_then(|r| r.device.clone().ok()),
                offload: i.offload,
                upload_kbit: i.upload_kbit,
                download_kbit: i.download_kbit,
                error: self
                    .interface_errors
                    .get(&i.name)
                    .cloned()
                    .or_else(|| self.qos.error(&i.name).map(str::to_string)),
                shaper: self.qos.status(&i.name),
                rtt: dp.map(|_| rtt.remove(&i.name).unwrap_or_default()),
                wan: self.rtt.is_wan_interface(&i.name).unwrap_or(false),
                autorate: self.autorate.status(&i.name, Instant::now()),
            });
        }
        out
    }

    async fn shutdown(&mut self) {
        if !self.args.keep {
            self.qos
                .remove_all(&self.net.handle, self.net.dp.as_mut())
                .await;
        }
        if let Some(dp) = self.net.dp.take() {
            dp.shutdown(self.args.keep);
        }
    }
}

/// What steering decides by, for each of `devices` (XDP assumed; the caller corrects it once
/// attached): sysfs queues and RPS, PPPoE from the interfaces, VLAN offload over ethtool netlink.
fn steering_facts(
    interfaces: &Interfaces,
    topo: &Topology,
    devices: &[crate::dataplane::OffloadDevice],
) -> Vec<steering::DeviceFacts> {
    let fs = topo.fs();
    // The lowest devices of PPP interfaces carry PPPoE.
    let pppoe: HashSet<u32> = interfaces
        .iter()
        .filter(|i| {
            i.device
                .as_ref()
                .ok()
                .and_then(|d| topo.link_by_name(d))
                .is_some_and(|l| l.kind == LinkKind::Ppp)
        })
        .flat_map(|i| i.lowest.iter().flatten().map(|d| d.ifindex))
        .collect();
    devices
        .iter()
        .map(|d| {
            steering::DeviceFacts::read(
                fs,
                &d.name,
                d.ifindex,
                pppoe.contains(&d.ifindex),
                true,
                topology::ethtool::vlan_rx_offload(&d.name)
                    .map_err(|e| debug!("{}: features: {e:#}", d.name))
                    .ok(),
            )
        })
        .collect()
}

/// Hands memory freed after a burst (a conntrack dump and its admissions: tens of MiB at 64k
/// connections) back to the system. glibc keeps freed heap for reuse, resident; musl, OpenWrt's
/// libc, returns large blocks by itself.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only gives unused heap pages back to the kernel.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
