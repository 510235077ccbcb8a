//! Topology model and next-hop walk on fixtures: no root, no kernel state.

#[allow(dead_code, unused_imports)]
#[path = "../src/topology/mod.rs"]
mod topology;
