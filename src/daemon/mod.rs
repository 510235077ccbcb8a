//! The daemon: owns the running configuration and the data path, and serialises every change
//! through one event loop (signals, control requests, the one-second heartbeat tick).
//!
//! Everything mutable lives in [`Daemon`] and is touched only from the loop, so no locks: control
//! connections are served on their own tasks and forward requests through a channel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use log::error;
use log::info;
use log::warn;
use tokio::signal::unix::signal;
use tokio::signal::unix::SignalKind;
use tokio::sync::mpsc;

use crate::cli::DaemonArgs;
use crate::config;
use crate::config::Config;
use crate::control::server::ControlSocket;
use crate::control::Reply;
use crate::control::Request;
use crate::dataplane::Dataplane;
use crate::logger;
use crate::status::ConfigStatus;
use crate::status::InterfaceStatus;
use crate::status::Status;

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

    let dataplane = match Dataplane::load(&args.pin_dir) {
        Ok(dp) => Some(dp),
        Err(e) => {
            error!("BPF data path unavailable, everything stays in the kernel path: {e:#}");
            None
        }
    };
    let mut daemon = Daemon::new(args, loaded, dataplane);
    daemon.apply();

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
                let _ = daemon.reload();
            }
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = tick.tick() => daemon.tick(),
            Some((req, reply)) = rx.recv() => {
                // The client may have gone away; its loss.
                let _ = reply.send(daemon.handle(req));
            }
        }
    }
    daemon.shutdown();
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// Everything the daemon owns.
struct Daemon {
    args: DaemonArgs,
    started: Instant,
    config: Config,
    warnings: Vec<String>,
    last_reload_error: Option<String>,
    reloads: u64,
    dataplane: Option<Dataplane>,
    /// Per configured interface: why it is not in use, if it is not.
    interface_errors: BTreeMap<String, String>,
}

impl Daemon {
    fn new(args: DaemonArgs, loaded: config::Loaded, dataplane: Option<Dataplane>) -> Self {
        Self {
            args,
            started: Instant::now(),
            config: loaded.config,
            warnings: loaded.warnings.iter().map(|w| w.to_string()).collect(),
            last_reload_error: None,
            reloads: 0,
            dataplane,
            interface_errors: BTreeMap::new(),
        }
    }

    fn config_file(&self) -> PathBuf {
        self.args.config_dir.join("bpfqos")
    }

    /// Devices the data path should be attached to under the running config.
    fn wanted_devices(&self) -> Vec<String> {
        let g = &self.config.globals;
        if !g.enabled || !g.offload {
            return Vec::new();
        }
        self.config
            .interfaces
            .iter()
            .filter(|i| i.offload)
            .filter_map(|i| i.device.clone())
            .collect()
    }

    /// Brings attachments in line with the running config. Failures are per interface and never
    /// fatal: that interface simply stays on the kernel path.
    fn apply(&mut self) {
        logger::set_level(self.config.globals.log_level);
        self.interface_errors.clear();
        for i in &self.config.interfaces {
            if i.device.is_none() {
                self.interface_errors.insert(
                    i.name.clone(),
                    format!(
                        "logical network '{}' needs ubus to resolve; set option device",
                        i.network.as_deref().unwrap_or("")
                    ),
                );
            }
        }
        let wanted = self.wanted_devices();
        let Some(dp) = self.dataplane.as_mut() else {
            return;
        };
        dp.set_enabled(self.config.globals.enabled && self.config.globals.offload);
        for dev in dp.attached_devices() {
            if !wanted.contains(&dev) {
                dp.detach(&dev);
            }
        }
        for dev in &wanted {
            if let Err(e) = dp.attach(dev) {
                let msg = format!("{e:#}");
                warn!("{dev}: not attached, traffic stays on the kernel path: {msg}");
                for i in self
                    .config
                    .interfaces
                    .iter()
                    .filter(|i| i.device.as_ref() == Some(dev))
                {
                    self.interface_errors.insert(i.name.clone(), msg.clone());
                }
            }
        }
    }

    /// Reloads the config file; a config with errors is rejected whole and the running one kept.
    fn reload(&mut self) -> Result<(), String> {
        match config::load(&self.args.config_dir) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    warn!("{w}");
                }
                self.warnings = loaded.warnings.iter().map(|w| w.to_string()).collect();
                self.config = loaded.config;
                self.last_reload_error = None;
                self.reloads += 1;
                self.apply();
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

    fn tick(&mut self) {
        if let Some(dp) = self.dataplane.as_mut() {
            if let Err(e) = dp.heartbeat() {
                warn!("heartbeat: {e:#}");
            }
        }
        // Devices that failed to attach (not there yet: hotplug, PPPoE not up) are retried.
        if !self.interface_errors.is_empty() {
            let missing: Vec<String> = self
                .wanted_devices()
                .into_iter()
                .filter(|d| {
                    self.dataplane
                        .as_ref()
                        .is_some_and(|dp| !dp.attached_devices().contains(d))
                })
                .collect();
            if let Some(dp) = self.dataplane.as_mut() {
                for dev in missing {
                    if dp.attach(&dev).is_ok() {
                        let names: Vec<String> = self
                            .config
                            .interfaces
                            .iter()
                            .filter(|i| i.device.as_deref() == Some(dev.as_str()))
                            .map(|i| i.name.clone())
                            .collect();
                        for n in names {
                            self.interface_errors.remove(&n);
                        }
                    }
                }
            }
        }
    }

    fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Ping => Reply::ok(serde_json::json!({"pong": true})),
            Request::Status => match serde_json::to_value(self.status()) {
                Ok(v) => Reply::ok(v),
                Err(e) => Reply::err(format!("serialising status: {e}")),
            },
            Request::Reload => match self.reload() {
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
        if let Some(dp) = &self.dataplane {
            st.offload = dp.offload_status();
            st.attach = dp.attach_points();
        }
        st.interfaces = self
            .config
            .interfaces
            .iter()
            .map(|i| InterfaceStatus {
                name: i.name.clone(),
                device: i.device.clone(),
                offload: i.offload,
                upload_kbit: i.upload_kbit,
                download_kbit: i.download_kbit,
                error: self.interface_errors.get(&i.name).cloned(),
            })
            .collect();
        st
    }

    fn shutdown(&mut self) {
        if let Some(dp) = self.dataplane.take() {
            dp.shutdown(self.args.keep);
        }
    }
}
