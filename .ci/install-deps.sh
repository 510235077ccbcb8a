#!/usr/bin/env bash
# Installs everything bpfqos needs to build and test on Debian 12, as root. Idempotent: a second
# run only checks. Used by `make deps` (and so by `make test`/`make demo`) and by .ci/run.
set -euo pipefail

apt_pkgs=(
	# build: BPF objects (clang -target bpfel/bpfeb), libbpf-sys (libelf, zlib)
	clang llvm libelf-dev zlib1g-dev pkg-config make clang-format
	# the real uci CLI built from libuci-sys' bundled sources (test oracle)
	cmake libclang-dev libjson-c-dev
	# independent oracles in tests
	iproute2 nftables conntrack ethtool tcpdump iperf3 python3-scapy bpftool
	# init script and rpcd plugin run under POSIX shells
	dash busybox-static shellcheck nodejs
)
# shellcheck source=.ci/apt.sh
source "$(cd "$(dirname "$0")" && pwd)/apt.sh"
apt_install "${apt_pkgs[@]}"

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
	export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

# The full-kernel VM harness (Debian 6.12 kernel, virtme-ng, qemu, ppp): see tests/vm/.
if [ -x .ci/vm-deps.sh ] || [ -f .ci/vm-deps.sh ]; then
	bash .ci/vm-deps.sh
fi
