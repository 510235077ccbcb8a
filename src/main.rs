//! bpfqos: XDP/TC flow offload, shaping, passive latency monitoring and autorate for routers.

mod config;
mod dataplane;

fn main() {}
