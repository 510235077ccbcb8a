#!/usr/bin/env bash
# Churn soak at bench length (issue 17): tests/soak.rs for SECS seconds of churn (default 600)
# instead of the test's 60, release build. 20,000 long-lived TCP/UDP flows in both families,
# 500 new short connections a second ending by FIN, RST and conntrack's timeout, a forced
# conntrack event loss halfway; every echo compared, the flow table checked against conntrack
# at the end and emptied after. Prints RSS after warm-up and at the end, the connection rate
# reached, event losses and the table check; fails only if something broke.
#
# Usage: bench/soak.sh   (root)   Environment: SECS (600), LONG (20000), RATE (500).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "soak bench: needs root (network namespaces, BPF)" >&2; exit 1; }
BPFQOS_SOAK_SECS=${SECS:-600} BPFQOS_SOAK_LONG=${LONG:-20000} BPFQOS_SOAK_RATE=${RATE:-500} \
	cargo test --release --locked --test soak -- --nocapture 2>&1 |
	grep -v -e '^client: ' -e '^server: '
