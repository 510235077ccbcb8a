#!/usr/bin/env bash
# Builds the real OpenWrt `uci` command line tool from the C sources bundled in the crates.io
# crate `libuci-sys` (libuci + libubox), as an independent oracle for bpfqos' own UCI parser
# (tests/config_oracle.rs) and for tests of the init script.
#
# Output, under <target dir>/uci-oracle/ (target dir: $CARGO_TARGET_DIR, else ./target):
#   bin/uci                      the CLI, linked statically against libuci and libubox
#   bin/jshn                     libubox' JSON helper (used by /usr/share/libubox/jshn.sh)
#   lib/libuci.so, lib/libubox.so, lib/libblobmsg_json.so, lib/libjson_script.so
#   include/                     uci.h, libubox/*.h
#   lib/config/uci.sh            OpenWrt's /lib/config/uci.sh (config_load, config_get,
#                                config_foreach, ...), bundled with the uci sources
#   share/libubox/jshn.sh        OpenWrt's /usr/share/libubox/jshn.sh
# OpenWrt's /lib/functions.sh comes from base-files and is NOT in these sources.
#
# Needs (Debian): cmake, make, pkg-config, libjson-c-dev and gcc or clang; all but gcc are in
# .ci/install-deps.sh, and clang is used when there is no cc. libclang is not needed (no bindgen).
# Idempotent: when the stamp matches (same sources, same script) it only checks, in milliseconds.
# Usage: tests/tools/build-uci.sh   (prints the path of the uci binary on success)
set -euo pipefail

LIBUCI_SYS_VERSION=1.0.5

repo=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
case $target in /*) ;; *) target=$repo/$target ;; esac
out=$target/uci-oracle
stamp=$out/.stamp
log() { printf 'build-uci: %s\n' "$*" >&2; }

cargo_home=${CARGO_HOME:-$HOME/.cargo}
find_src() {
	local d
	for d in "$cargo_home"/registry/src/*/libuci-sys-"$LIBUCI_SYS_VERSION"; do
		[ -f "$d/uci/cli.c" ] && [ -f "$d/libubox/blob.c" ] && { echo "$d"; return 0; }
	done
	return 1
}

want_stamp="libuci-sys-$LIBUCI_SYS_VERSION $(sha256sum "$0" | cut -d' ' -f1)"
if [ -x "$out/bin/uci" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
	echo "$out/bin/uci"
	exit 0
fi

# Any C compiler will do: cc (gcc) if present, else clang (which CI installs for the BPF code).
if [ -z "${CC:-}" ] && ! command -v cc >/dev/null && command -v clang >/dev/null; then
	export CC=clang
fi
command -v "${CC:-cc}" >/dev/null || { log "missing a C compiler (apt-get install gcc or clang)"; exit 1; }
for tool in make cmake pkg-config; do
	command -v "$tool" >/dev/null || { log "missing '$tool' (apt-get install $tool)"; exit 1; }
done
pkg-config --exists json-c || { log "missing json-c (apt-get install libjson-c-dev)"; exit 1; }

# The sources come from crates.io through cargo itself: a throw-away manifest that depends on
# the exact crate version, and `cargo fetch`, which downloads and unpacks it into the registry.
if ! src=$(find_src); then
	log "fetching libuci-sys $LIBUCI_SYS_VERSION from crates.io (cargo fetch)"
	fetch=$out/fetch
	mkdir -p "$fetch/src"
	cat >"$fetch/Cargo.toml" <<EOF
[package]
name = "uci-oracle-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
libuci-sys = "=$LIBUCI_SYS_VERSION"
EOF
	: >"$fetch/src/lib.rs"
	cargo fetch --manifest-path "$fetch/Cargo.toml" >&2
	src=$(find_src) || { log "cargo fetch did not unpack libuci-sys-$LIBUCI_SYS_VERSION under $cargo_home/registry/src"; exit 1; }
fi
log "building uci from $src"

# Build from a copy: uci's CMakeLists writes uci_config.h into its source directory, and the
# registry copy must stay pristine (cargo checks it).
rm -rf "$out"
mkdir -p "$out/build"
cp -r "$src/libubox" "$src/uci" "$out/build/"
jobs=$(nproc 2>/dev/null || echo 2)
# CMAKE_POLICY_VERSION_MINIMUM: the sources say cmake_minimum_required(2.6), which cmake >= 4
# refuses without it; older cmake ignores the variable.
cmake_common=(-DCMAKE_BUILD_TYPE=Release "-DCMAKE_INSTALL_PREFIX=$out"
	-DCMAKE_POLICY_VERSION_MINIMUM=3.5 -DBUILD_LUA=OFF "-DCMAKE_INSTALL_RPATH=$out/lib")

cmake -S "$out/build/libubox" -B "$out/build/libubox-build" "${cmake_common[@]}" \
	-DBUILD_EXAMPLES=OFF >"$out/build/libubox.log" 2>&1 ||
	{ cat "$out/build/libubox.log" >&2; exit 1; }
make -C "$out/build/libubox-build" -j"$jobs" install >>"$out/build/libubox.log" 2>&1 ||
	{ cat "$out/build/libubox.log" >&2; exit 1; }

cmake -S "$out/build/uci" -B "$out/build/uci-build" "${cmake_common[@]}" \
	-DBUILD_STATIC=ON "-Dubox_include_dir=$out/include" "-DCMAKE_PREFIX_PATH=$out" \
	>"$out/build/uci.log" 2>&1 || { cat "$out/build/uci.log" >&2; exit 1; }
make -C "$out/build/uci-build" -j"$jobs" install >>"$out/build/uci.log" 2>&1 ||
	{ cat "$out/build/uci.log" >&2; exit 1; }

install -D -m 0644 "$out/build/uci/sh/uci.sh" "$out/lib/config/uci.sh"

# Smoke test: parse and print a config through the freshly built binary.
probe=$out/build/probe
mkdir -p "$probe"
printf "config probe 'p'\n\toption x 'y'\n" >"$probe/probe"
got=$("$out/bin/uci" -c "$probe" get probe.p.x) || { log "the built uci does not run"; exit 1; }
[ "$got" = y ] || { log "the built uci printed '$got' for probe.p.x, expected 'y'"; exit 1; }

echo "$want_stamp" >"$stamp"
log "done: $out/bin/uci"
echo "$out/bin/uci"
