#!/usr/bin/env bash
# Static musl builds of bpfqos for the routers it names, on a plain Debian 12 with only the
# package registries (issue 16; docs/openwrt.md):
#   Debian's rustc-web 1.96 and rust-web-src (the standard library's source for exactly that
#   compiler: -Zbuild-std builds std for any target rustc knows, no rustup target needed),
#   zig (PyPI ziglang 0.15.2) as C compiler and linker with its bundled musl,
#   qemu-user-static to run the result.
#
#   openwrt/cross/build.sh TARGET...   TARGET: aarch64 armv7 mips (default: all three)
#
# Binaries: target/cross/<rust triple>/release/bpfqos; prints each one's stripped size and its
# `--version` under qemu. Needs: apt-get install rustc-web cargo-web rust-web-src
# qemu-user-static autoconf automake libtool autopoint gettext pkg-config flex bison gawk;
# pip install ziglang==0.15.2.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
[ "$#" -gt 0 ] || set -- aarch64 armv7 mips
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
# elfutils' configure looks for these in libraries musl does not have; libbpf needs none of them.
export ac_cv_search_argp_parse='none required' ac_cv_search_fts_close='none required' \
	ac_cv_search__obstack_free='none required'
for t in "$@"; do
	mcpu=
	case $t in
	aarch64) triple=aarch64-unknown-linux-musl zig=aarch64-linux-musl qemu=qemu-aarch64-static ;;
	armv7) triple=armv7-unknown-linux-musleabihf zig=arm-linux-musleabihf mcpu=generic+v7a+vfp3d16 qemu=qemu-arm-static ;;
	mips) triple=mips-unknown-linux-musl zig=mips-linux-musleabi mcpu=mips32r2 qemu=qemu-mips-static ;;
	*) echo "build.sh: unknown target $t (aarch64 armv7 mips)" >&2; exit 2 ;;
	esac
	up=$(echo "$triple" | tr 'a-z-' 'A-Z_')
	low=$(echo "$triple" | tr '-' '_')
	echo "== $t ($triple, zig $zig${mcpu:+ -mcpu=$mcpu})"
	env ZIG_TARGET="$zig" ZIG_MCPU="$mcpu" \
		"CC_$low=$HERE/zig-cc" "AR_$low=$HERE/zig-ar" "CFLAGS_$low=-I$HERE" \
		"CARGO_TARGET_${up}_LINKER=$HERE/zig-cc" \
		RUSTFLAGS="-C link-self-contained=no -C target-feature=+crt-static" \
		cargo build --release --locked --target "$triple" -Zbuild-std=std,panic_abort \
		--features libbpf-rs/static,libbpf-rs/vendored --target-dir target/cross
	bin=target/cross/$triple/release/bpfqos
	llvm-strip -o "$bin.stripped" "$bin" 2>/dev/null || python3 -m ziglang objcopy --strip-all "$bin" "$bin.stripped"
	echo "$t: $(stat -c %s "$bin.stripped") bytes stripped; under qemu: $("$qemu" "$bin" --version)"
done
