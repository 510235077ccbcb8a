//! Shaping: SQM-style upload and download limits per interface (CAKE, or HTB with fq_codel),
//! set up over rtnetlink with bpfqos' own tc codec ([`tc`]).
pub mod client;
pub mod tc;
