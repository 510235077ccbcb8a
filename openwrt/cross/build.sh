#!/usr/bin/env bash
# Static musl builds of bpfqos for the routers it names, on a plain Debian 12 with only the
# package registries (issue 16; docs/openwrt.md):
#   Debian's rustc-web 1.96 and rust-web-src (the standard library's source for exactly that
#   compiler: -Zbuild-std builds std for any target rustc knows, no rustup target needed),
#   zig (PyPI ziglang 0.15.2) as C compiler and linker with its bundled musl,
#   qemu-user-static to run the result. .ci/cross-deps.sh installs all of it.
#
#   openwrt/cross/build.sh [--tests] TARGET...
#     TARGET: aarch64 armv7 mips x86_64 (router binaries) and s390x (big-endian kernel tests only);
#     default: aarch64 armv7 mips.
#     --tests: also build the test binaries for each target and run them: under qemu-user the
#       ones that need neither root nor a kernel (TESTS_USER below); for s390x the data-path
#       tests on Debian's big-endian s390x kernel (tests/s390x/run.sh, TESTS_KERNEL).
#
# Router binaries: target/cross/<rust triple>/release/bpfqos (+ .stripped); prints each one's
# stripped size and its `--version` under qemu; packs each into target/cross/ipk/ (mkipk.py) for
# the OpenWrt architecture BPFQOS_IPK_ARCH_<AARCH64|ARMV7|MIPS> (defaults: aarch64_cortex-a53,
# BPI-R64; arm_cortex-a7_neon-vfpv4, FritzBox 7530; mips_24kc, ath79 and lantiq). The binaries
# are built for the generic CPU of each architecture, so one runs on every router of it (an
# RB5009 is aarch64_cortex-a72: set the variable). The release build is size-oriented beyond
# Cargo.toml's profile: std rebuilt with `optimize_for_size` and without backtrace
# symbolization (a stripped binary has no symbols to print), no unwind tables (panic=abort).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
tests=0
if [ "${1:-}" = "--tests" ]; then
	tests=1
	shift
fi
[ "$#" -gt 0 ] || set -- aarch64 armv7 mips

# Test binaries that need no root and no kernel of the target: run under qemu-user.
TESTS_USER="config_errors config_oracle topology_fixtures layers bpf_endian"
# Test binaries that need the target's kernel (BPF_PROG_TEST_RUN): run on the s390x kernel.
TESTS_KERNEL="bpf_objects bpf_offload bpf_flowtable bpf_rtt bpf_steer bpf_fuzz"

# Pinned toolchain: Debian's rustc-web and cargo-web, not rustup's.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
CARGO=/usr/bin/cargo
# elfutils' configure looks for these in libraries musl does not have; libbpf needs none of them.
export ac_cv_search_argp_parse='none required' ac_cv_search_fts_close='none required' \
	ac_cv_search__obstack_free='none required'
FEATURES=libbpf-rs/static,libbpf-rs/vendored
# zig cc, unlike gcc and clang, turns on UBSan (trapping) when optimisation is off, as in the test
# builds: libbpf's own offsetof-style member accesses through NULL then abort every test on the
# first object it opens. That C is third-party (libbpf, elfutils, zlib) and OpenWrt's gcc
# compiles it without sanitizers: so do we.
CFLAGS_EXTRA=-fno-sanitize=undefined
LINK="-C link-self-contained=no -C target-feature=+crt-static"

# Runs cargo for the current target with the cross environment.
xcargo() {
	env ZIG_TARGET="$zig" ZIG_MCPU="$mcpu" \
		"CC_$low=$HERE/zig-cc" "AR_$low=$HERE/zig-ar" "CFLAGS_$low=-I$HERE $CFLAGS_EXTRA" \
		"CARGO_TARGET_${up}_LINKER=$HERE/zig-cc" \
		"$CARGO" "$@" --locked --target "$triple" --features "$FEATURES" --target-dir target/cross
}

# The whole run is one function, read before it starts: editing this file while a build runs
# cannot derail it.
main() {
	fail=0
	for t in "$@"; do
		mcpu='' size_flags=''
		case $t in
		aarch64) triple=aarch64-unknown-linux-musl zig=aarch64-linux-musl qemu=qemu-aarch64-static
			arch=${BPFQOS_IPK_ARCH_AARCH64:-aarch64_cortex-a53} ;;
		armv7) triple=armv7-unknown-linux-musleabihf zig=arm-linux-musleabihf mcpu=generic+v7a+vfp3d16 qemu=qemu-arm-static
			arch=${BPFQOS_IPK_ARCH_ARMV7:-arm_cortex-a7_neon-vfpv4}
			# Thumb-2: a quarter less code than ARM mode (2,033,100 -> 1,569,180 B); its speed
			# was not measured here. rustc calls the feature unstable (a warning); tests use it too.
			size_flags="-C target-feature=+thumb-mode" ;;
		mips) triple=mips-unknown-linux-musl zig=mips-linux-musleabi mcpu=mips32r2 qemu=qemu-mips-static
			arch=${BPFQOS_IPK_ARCH_MIPS:-mips_24kc} ;;
		s390x) triple=s390x-unknown-linux-musl zig=s390x-linux-musl qemu=qemu-s390x-static ;;
		# OpenWrt's x86/64 target (and the host's own architecture: this build runs natively,
		# so benches can measure the router's libc and allocator, musl's, on this machine).
		x86_64) triple=x86_64-unknown-linux-musl zig=x86_64-linux-musl qemu=env
			arch=${BPFQOS_IPK_ARCH_X86_64:-x86_64} ;;
		*) echo "build.sh: unknown target $t (aarch64 armv7 mips s390x x86_64)" >&2; exit 2 ;;
		esac
		up=$(echo "$triple" | tr 'a-z-' 'A-Z_')
		low=$(echo "$triple" | tr '-' '_')
		echo "== $t ($triple, zig $zig${mcpu:+ -mcpu=$mcpu})"
		start=$(date +%s)
		mkdir -p "target/cross/$triple"
		if [ "$t" != s390x ]; then
			RUSTFLAGS="$LINK -C force-unwind-tables=no $size_flags" xcargo build --release \
				-Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size
			bin=target/cross/$triple/release/bpfqos
			llvm-strip -o "$bin.stripped" "$bin" 2>/dev/null ||
				python3 -m ziglang objcopy --strip-all "$bin" "$bin.stripped"
			how="under qemu"
			[ "$qemu" = env ] && how=natively
			echo "$t: $(stat -c %s "$bin.stripped") bytes stripped; $how: $("$qemu" "$bin" --version)" |
				tee "target/cross/$triple/size.txt"
			ipk=$(python3 "$HERE/mkipk.py" --binary "$bin.stripped" --arch "$arch" --out target/cross/ipk)
			echo "$t: $ipk ($(stat -c %s "$ipk") bytes)"
		fi
		if [ "$tests" = 1 ]; then
			want=$TESTS_USER
			[ "$t" = s390x ] && want=$TESTS_KERNEL
			args=()
			[ "$t" = s390x ] || args+=(--lib)
			for n in $want; do args+=(--test "$n"); done
			# Test binaries: the dev profile, std with unwinding (the test harness catches panics).
			RUSTFLAGS="$LINK $size_flags" xcargo test --no-run -Zbuild-std "${args[@]}" --message-format=json \
				>"target/cross/$triple/tests.json"
			mapfile -t bins < <(python3 -c 'import json, sys
for m in map(json.loads, open(sys.argv[1])):
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' "target/cross/$triple/tests.json")
			echo "$t: ${#bins[@]} test binaries built in $(($(date +%s) - start)) s"
			if [ "$t" = s390x ]; then
				bash tests/s390x/run.sh "${bins[@]}" || fail=1
			else
				for b in "${bins[@]}"; do
					echo "-- $t: $(basename "$b") under $qemu"
					# Only tests that touch no kernel interface qemu-user cannot translate
					# (bpf(), netlink): TESTS_USER. Host tools they run (clang, bash) run natively.
					if ! CI=true "$qemu" "$b" --test-threads=2 -q 2>&1 | tail -n 25; then
						echo "$t: $(basename "$b") FAILED"
						fail=1
					fi
				done
			fi
		fi
		echo "== $t done in $(($(date +%s) - start)) s"
	done
	return "$fail"
}

main "$@"
