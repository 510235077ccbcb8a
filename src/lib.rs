//! bpfqos: XDP/TC flow offload, shaping, passive latency monitoring and autorate for routers.
//!
//! The library behind the `bpfqos` binary (`src/main.rs` only parses the command line and calls
//! [`commands::run`]). Tests and benches use it as `bpfqos::...`.
//!
//! Modules by concern, lower layers first (no module imports one above it):
//! - [`config`]: UCI text to a typed, validated [`config::Config`];
//! - [`topology`]: the rtnetlink model of the router's network and the walk down to the lowest
//!   devices; [`conntrack`]: ctnetlink;
//! - [`dataplane`]: the BPF objects, their maps, where they are attached, their counters;
//! - [`interfaces`]: configured interfaces to devices and attach points, with reasons;
//! - [`steering`]: CPU steering: which devices spread the kernel's receive work over which CPUs;
//! - [`rtt`]: passive latency: per flow, interface and circuit, from the data path's maps;
//! - [`qos`]: shaping (upload, download, circuits);
//! - [`offload`]: the flow-table manager (admission, invalidation, teardown);
//! - [`status`]: the status document; [`control`]: its socket; [`rpcd`]: the ubus plugin;
//! - [`daemon`]: the event loop that owns all of the above; [`commands`], [`cli`], [`logger`].

pub mod autorate;
pub mod cli;
pub mod commands;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod interfaces;
pub mod logger;
pub mod nl;
pub mod offload;
pub mod qos;
pub mod rpcd;
pub mod rtt;
pub mod status;
pub mod steering;
pub mod topology;
