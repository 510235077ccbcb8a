//! The daemon: owns the running configuration, the network model, the data path and the flow
//! table, and serialises every change through one event loop (signals, control requests,
//! conntrack events, rtnetlink events, and a one-second tick for heartbeat and refreshes).
//!
//! Everything mutable lives in [`Daemon`] and is touched only from the loop, so no locks: control
//! connections are served on their own tasks and forward requests through a channel.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use log::debug;
use log::error;
use log::info;
use log::warn;
use tokio::signal::unix::signal;
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;

use crate::cli::DaemonArgs;
use crate::config;
use crate::config::Config;
use crate::conntrack;
use crate::control::server::ControlSocket;
use crate::control::Reply;
use crate::control::Request;
use crate::dataplane::Dataplane;
use crate::logger;
use crate::offload::encode;
use crate::offload::Ctx;
use crate::offload::FlowManager;
use crate::offload::Timeouts;
use crate::status::ConfigStatus;
use crate::status::InterfaceStatus;
use crate::status::Status;
use crate::topology;
use crate::topology::Topology;
use crate::topology::TopologyEvent;

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

async fn event_loop(args: DaemonArgs, loaded: config::Loaded) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let socket = ControlSocket::bind(&args.socket)?;
    let socket_path = args.socket.clone();

    let rtnl = topology::subscribe().context("rtnetlink")?;
    let topo = Topology::dump(&rtnl.handle)
        .await
        .context("reading the network configuration")?;
    let mut topo_events = rtnl.events;
    let dataplane = match Dataplane::load(&args.pin_dir) {
        Ok(dp) => Some(dp),
        Err(e) => {
            error!("BPF data path unavailable, everything stays in the kernel path: {e:#}");
            None
        }
    };
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
    let mut daemon = Daemon {
        args,
        started: Instant::now(),
        config: loaded.config,
        warnings: loaded.warnings.iter().map(|w| w.to_string()).collect(),
        last_reload_error: None,
        reloads: 0,
        interface_errors: BTreeMap::new(),
        devices: BTreeMap::new(),
        net: Net {
            ct: ct_client,
            topo,
            handle: rtnl.handle,
            dp: dataplane,
            attached: HashSet::new(),
        },
        flows: FlowManager::default(),
        timeouts: Timeouts::read(),
    };
    daemon.apply();
    daemon.resync().await;

    let (tx, mut rx) = mpsc::channel(16);
    tokio::task::spawn_local(socket.serve(tx));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        "bpfqos {} running, control socket {}",
        env!("CARGO_PKG_VERSION"),
        socket_path.display()
    );
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading configuration");
                let _ = daemon.reload().await;
            }
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = tick.tick() => daemon.tick().await,
            Some((req, reply)) = rx.recv() => {
                // The client may have gone away; its loss.
                let _ = reply.send(daemon.handle(req).await);
            }
            ev = recv_ct(&mut ct_events) => match ev {
                Ok(conntrack::Recv::Messages(msgs)) => daemon.on_conntrack(msgs).await,
                Ok(conntrack::Recv::Overflow) => {
                    warn!("conntrack events lost (queue overflow): resynchronising");
                    daemon.resync().await;
                }
                Err(e) => {
                    error!("conntrack event socket failed, admission stops: {e:#}");
                    ct_events = None;
                }
            },
            Some(ev) = topo_events.next() => daemon.on_netlink(ev).await,
        }
    }
    daemon.shutdown();
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

/// The network side the flow manager works against, kept apart from the manager so both can be
/// borrowed at once.
struct Net {
    ct: Option<conntrack::Client>,
    topo: Topology,
    handle: rtnetlink::Handle,
    dp: Option<Dataplane>,
    /// Ifindexes of the lowest devices the data path is attached to.
    attached: HashSet<u32>,
}

impl Net {
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            topo: &self.topo,
            handle: &self.handle,
            dp: self.dp.as_ref(),
            attached: &self.attached,
            ct: self.ct.as_ref(),
        }
    }
}

/// Everything the daemon owns.
struct Daemon {
    args: DaemonArgs,
    started: Instant,
    config: Config,
    warnings: Vec<String>,
    last_reload_error: Option<String>,
    reloads: u64,
    /// Per configured interface: why it is not (fully) in use.
    interface_errors: BTreeMap<String, String>,
    /// Per interface section: its device, or why there is none (resolve_devices()).
    devices: BTreeMap<String, Result<String, String>>,
    net: Net,
    flows: FlowManager,
    timeouts: Timeouts,
}

impl Daemon {
    fn config_file(&self) -> PathBuf {
        self.args.config_dir.join("bpfqos")
    }

    fn offload_on(&self) -> bool {
        self.config.globals.enabled && self.config.globals.offload
    }

    /// Lowest devices (name, ifindex) of each offload-enabled interface, or why there are none.
    fn wanted_devices(&self) -> BTreeMap<String, Result<Vec<(String, u32)>, String>> {
        let mut out = BTreeMap::new();
        if !self.offload_on() {
            return out;
        }
        for i in self.config.interfaces.iter().filter(|i| i.offload) {
            let r = match self.devices.get(&i.name) {
                None => continue, // resolve_devices() covers every interface
                Some(Err(e)) => Err(e.clone()),
                Some(Ok(dev)) => match self.net.topo.link_by_name(dev) {
                    None => Err(format!("{dev}: no such device")),
                    Some(link) => {
                        let points: Vec<(String, u32)> = self
                            .net
                            .topo
                            .attach_points(link.ifindex)
                            .into_iter()
                            .filter_map(|ix| self.net.topo.link(ix).map(|l| (l.name.clone(), ix)))
                            .collect();
                        if points.is_empty() {
                            Err(format!("{dev}: no device below it can carry the data path"))
                        } else {
                            Ok(points)
                        }
                    }
                },
            };
            out.insert(i.name.clone(), r);
        }
        out
    }

    /// Brings attachments in line with the running config and topology. Failures are per
    /// interface and never fatal: that interface simply stays on the kernel path.
    /// The device of every interface section (`option network` resolved from the network
    /// config now), kept for what apply() does next and for status.
    fn resolve_devices(&mut self) {
        self.devices = self
            .config
            .interfaces
            .iter()
            .map(|i| {
                let dev = config::network::interface_device(i, &self.args.config_dir);
                (i.name.clone(), dev)
            })
            .collect();
    }

    fn apply(&mut self) {
        logger::set_level(self.config.globals.log_level);
        self.resolve_devices();
        let enabled = self.offload_on();
        let wanted = self.wanted_devices();
        self.interface_errors.clear();
        let Some(dp) = self.net.dp.as_mut() else {
            return;
        };
        dp.set_enabled(enabled);
        let want: HashSet<&str> = wanted
            .values()
            .filter_map(|r| r.as_ref().ok())
            .flatten()
            .map(|(n, _)| n.as_str())
            .collect();
        for dev in dp.attached_devices() {
            if !want.contains(dev.as_str()) {
                dp.detach(&dev);
            }
        }
        self.net.attached.clear();
        for (name, r) in &wanted {
            let points = match r {
                Ok(p) => p,
                Err(e) => {
                    self.interface_errors.insert(name.clone(), e.clone());
                    continue;
                }
            };
            for (dev, ifindex) in points {
                let tagger = self
                    .net
                    .topo
                    .link(*ifindex)
                    .and_then(|l| l.dsa_tagger.as_ref())
                    .and_then(encode::dsa_proto);
                if let Err(e) = dp.set_dsa_tagger(*ifindex, tagger) {
                    warn!("{dev}: {e:#}");
                }
                match dp.attach(dev) {
                    Ok(()) => {
                        self.net.attached.insert(*ifindex);
                    }
                    Err(e) => {
                        let msg = format!("{dev}: {e:#}");
                        warn!("{msg}; traffic there stays on the kernel path");
                        self.interface_errors.insert(name.clone(), msg);
                    }
                }
            }
        }
    }

    /// Dumps conntrack and makes the flow table match it (start, lost events, re-enable).
    async fn resync(&mut self) {
        let Some(ct) = self.net.ct.as_ref() else {
            return;
        };
        match ct.dump() {
            Ok(conns) => {
                let ctx = self.net.ctx();
                self.flows.resync(conns, &ctx).await;
                info!(
                    "conntrack synchronised: {} flows offloaded",
                    self.flows.len()
                );
            }
            Err(e) => warn!("conntrack dump: {e:#}"),
        }
    }

    async fn on_conntrack(&mut self, msgs: Vec<conntrack::Message>) {
        for m in msgs {
            let ctx = self.net.ctx();
            self.flows.on_conntrack(m, &ctx).await;
        }
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
            // Devices come and go (hotplug, PPPoE reconnect): follow them.
            let before = self.net.attached.clone();
            self.apply();
            if before != self.net.attached {
                debug!(
                    "attach points changed: {:?} -> {:?}",
                    before, self.net.attached
                );
            }
        }
        let ctx = self.net.ctx();
        self.flows.on_topology(&change, &ctx).await;
    }

    /// Reloads the config file; a config with errors is rejected whole and the running one kept.
    async fn reload(&mut self) -> Result<(), String> {
        match config::load(&self.args.config_dir) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    warn!("{w}");
                }
                self.warnings = loaded.warnings.iter().map(|w| w.to_string()).collect();
                self.config = loaded.config;
                self.last_reload_error = None;
                self.reloads += 1;
                self.timeouts = Timeouts::read();
                self.apply();
                if self.offload_on() {
                    self.resync().await;
                } else {
                    self.flows.flush(self.net.dp.as_ref());
                }
                info!("configuration reloaded");
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                error!("reload rejected, keeping the running configuration:\n{msg}");
                self.last_reload_error = Some(msg.clone());
                Err(msg)
            }
        }
    }

    async fn tick(&mut self) {
        if let Some(dp) = self.net.dp.as_mut() {
            if let Err(e) = dp.heartbeat() {
                warn!("heartbeat: {e:#}");
            }
        }
        if let Some(ct) = self.net.ct.as_ref() {
            self.flows.tick(ct, self.net.dp.as_ref(), &self.timeouts);
        }
        let ctx = self.net.ctx();
        self.flows.readmit_due(&ctx).await;
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

    fn status(&self) -> Status {
        let mut st = Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            config: ConfigStatus {
                file: self.config_file().display().to_string(),
                warnings: self.warnings.clone(),
                last_reload_error: self.last_reload_error.clone(),
                reloads: self.reloads,
            },
            ..Default::default()
        };
        let counted = self.flows.counters(self.net.dp.as_ref());
        if let Some(dp) = &self.net.dp {
            st.offload = dp.offload_status();
            st.attach = dp.attach_points();
            for a in &mut st.attach {
                if let Some(c) = counted.devices.get(&a.ifindex) {
                    [a.rx_packets, a.rx_bytes, a.tx_packets, a.tx_bytes] = *c;
                }
            }
            st.datapath = dp
                .stats()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        }
        st.offload.packets = counted.packets;
        st.offload.bytes = counted.bytes;
        st.offload.connections = self.flows.len() as u64;
        st.offload.manager = serde_json::to_value(self.flows.stats()).unwrap_or_default();
        st.flows =
            serde_json::to_value(self.flows.flow_status(self.net.dp.as_ref())).unwrap_or_default();
        st.interfaces = self
            .config
            .interfaces
            .iter()
            .map(|i| InterfaceStatus {
                name: i.name.clone(),
                device: self.devices.get(&i.name).and_then(|d| d.clone().ok()),
                offload: i.offload,
                upload_kbit: i.upload_kbit,
                download_kbit: i.download_kbit,
                error: self.interface_errors.get(&i.name).cloned(),
            })
            .collect();
        st
    }

    fn shutdown(&mut self) {
        if let Some(dp) = self.net.dp.take() {
            dp.shutdown(self.args.keep);
        }
    }
}
