#!/bin/sh
# Builds the BPF objects for both byte orders without cargo, exactly as build.rs does:
#   bpf/build.sh OUTDIR
# Needs clang and libbpf's headers (<bpf/bpf_helpers.h>): from $LIBBPF_INCLUDE if set, else the
# copy build.rs wrote into cargo's OUT_DIR, else the system's (libbpf-dev).
# Environment: BPFQOS_CLANG (default clang), BPFQOS_BPF_CFLAGS (extra flags, e.g. -I<staging>).
set -eu
out=${1:?usage: bpf/build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
clang=${BPFQOS_CLANG:-clang}
inc=${LIBBPF_INCLUDE:-}
if [ -z "$inc" ]; then
	for d in $(ls -td "$here"/../target/*/build/bpfqos-*/out/include 2>/dev/null); do
		inc=$d
		break
	done
fi
if [ -z "$inc" ] && [ -f /usr/include/bpf/bpf_helpers.h ]; then
	inc=/usr/include
fi
[ -n "$inc" ] || { echo "no libbpf headers: set LIBBPF_INCLUDE or run cargo build once" >&2; exit 1; }
multiarch=
for d in /usr/include/$(uname -m)-linux-gnu /usr/include/$(uname -m)-linux-musl; do
	[ -d "$d/asm" ] && multiarch="$multiarch -idirafter $d"
done
mkdir -p "$out"
for src in "$here"/*.bpf.c; do
	name=$(basename "$src" .bpf.c)
	for target in bpfel bpfeb; do
		# shellcheck disable=SC2086
		"$clang" -O2 -g -mcpu=v3 -Wall -Werror -target "$target" -c \
			-I"$inc" -I"$here/include" $multiarch ${BPFQOS_BPF_CFLAGS:-} \
			"$src" -o "$out/$name.$target.o"
		echo "$out/$name.$target.o"
	done
done
