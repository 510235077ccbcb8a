#!/usr/bin/env bash
# The data path on a real big-endian kernel (issue 16): boots Debian's s390x kernel (6.12) under
# qemu-system-s390x (TCG) with an initramfs holding busybox, the veth module and the given test
# binaries (static s390x-musl builds: openwrt/cross/build.sh --tests s390x), runs each as root
# with CI=true (nothing may skip) and fails unless every one passes. The big-endian binaries
# embed and load the bpfeb object (src/dataplane/abi.rs), so this is the bpfeb object through a
# big-endian verifier, interpreter/JIT and BPF_PROG_TEST_RUN, driven by big-endian Rust.
#
#   tests/s390x/run.sh TEST_BINARY...
#
# Needs .ci/cross-deps.sh (qemu-system-s390x, cpio, the two s390x .debs in target/s390x/debs).
# Environment: BPFQOS_S390X_DIR (default target/s390x), BPFQOS_S390X_TIMEOUT (seconds, 1800).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${BPFQOS_S390X_DIR:-$REPO/target/s390x}
TIMEOUT=${BPFQOS_S390X_TIMEOUT:-1800}
[ "$#" -gt 0 ] || { echo "usage: $0 TEST_BINARY..." >&2; exit 2; }
for b in "$@"; do
	# ELF, big-endian (EI_DATA 2), e_machine EM_S390 (22)
	if [ "$(od -An -tx1 -N6 "$b" | tr -d ' \n')" != 7f454c460202 ] ||
		[ "$(od -An -tx1 -j18 -N2 "$b" | tr -d ' \n')" != 0016 ]; then
		echo "s390x: $b is not a 64-bit big-endian s390x ELF binary" >&2
		exit 2
	fi
done

kdeb=$(find "$DIR/debs" -name 'linux-image-*_s390x.deb' 2>/dev/null | sort | tail -n1)
bdeb=$(find "$DIR/debs" -name 'busybox-static_*_s390x.deb' 2>/dev/null | sort | tail -n1)
if [ -z "$kdeb" ] || [ -z "$bdeb" ]; then
	echo "s390x: no kernel/busybox .deb in $DIR/debs: run .ci/cross-deps.sh" >&2
	exit 2
fi

# Unpack the kernel package once per .deb.
kroot=$DIR/kernel
if [ ! -f "$kroot/.from" ] || [ "$(cat "$kroot/.from")" != "$(basename "$kdeb")" ]; then
	rm -rf "$kroot" && mkdir -p "$kroot"
	dpkg-deb -x "$kdeb" "$kroot"
	basename "$kdeb" >"$kroot/.from"
fi
vmlinuz=$(find "$kroot/boot" -name 'vmlinuz-*' | head -n1)
veth=$(find "$kroot/lib/modules" -name 'veth.ko*' | head -n1)
if [ -z "$vmlinuz" ] || [ -z "$veth" ]; then
	echo "s390x: kernel or veth.ko missing in $kdeb" >&2
	exit 2
fi

# The initramfs: busybox, veth.ko (decompressed: busybox insmod hands the kernel raw bytes),
# the test binaries (stripped), and /init.
work=$(mktemp -d "$DIR/initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,tests,lib}
dpkg-deb --fsys-tarfile "$bdeb" | tar -x -C "$work" ./bin/busybox
mv "$work/bin/busybox" "$root/bin/busybox"
case $veth in
*.xz) xz -dc "$veth" >"$root/lib/veth.ko" ;;
*.zst) zstd -dc "$veth" >"$root/lib/veth.ko" ;;
*) cp "$veth" "$root/lib/veth.ko" ;;
esac
names=()
for b in "$@"; do
	n=$(basename "$b")
	n=${n%-*} # cargo's hash suffix
	llvm-strip -o "$root/tests/$n" "$b" 2>/dev/null || cp "$b" "$root/tests/$n"
	names+=("$n")
done
cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
ip link set lo up
echo "s390x-guest: kernel $(uname -r) $(uname -m), $(grep -c ^processor /proc/cpuinfo) CPUs, byte order $(echo -n I | od -An -tx2 | tr -d ' ')"
insmod /lib/veth.ko || echo "s390x-guest: insmod veth failed"
for t in /tests/*; do
	echo "s390x-guest: begin $t"
	( cd /tmp && CI=true TMPDIR=/tmp RUST_BACKTRACE=1 "$t" --test-threads=1 )
	echo "s390x-guest: end $t rc=$?"
done
echo "s390x-guest: all done"
sync
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initramfs.gz")

log=$DIR/console.log
echo "s390x: booting $(basename "$vmlinuz") with ${names[*]} (console: $log)"
start=$(date +%s)
rc=0
timeout "$TIMEOUT" qemu-system-s390x -machine s390-ccw-virtio -cpu max -smp 2 -m 2048 \
	-nographic -no-reboot -nic none \
	-kernel "$vmlinuz" -initrd "$work/initramfs.gz" \
	-append "console=ttysclp0 panic=-1 rdinit=/init quiet" </dev/null >"$log" 2>&1 || rc=$?
echo "s390x: guest ended after $(($(date +%s) - start)) s (qemu exit $rc)"

# Verdict: every binary began and ended with rc=0, and the guest got to the end.
grep -E '^(s390x-guest:|test result:|test .* FAILED|---- |thread .* panicked)' "$log" | tr -d '\r' || true
fail=0
grep -q 's390x-guest: all done' "$log" || { echo "s390x: the guest did not finish (timeout ${TIMEOUT}s or crash): see $log"; fail=1; }
grep -q 's390x-guest: kernel .* s390x, .* byte order 4900' "$log" || { echo "s390x: the guest is not a big-endian s390x kernel"; fail=1; }
for n in "${names[@]}"; do
	grep -q "s390x-guest: end /tests/$n rc=0" "$log" || { echo "s390x: $n did not pass"; fail=1; }
done
if [ "$fail" = 0 ]; then
	echo "s390x: PASS (${names[*]})"
else
	echo "s390x: FAIL; the end of the console:"
	tail -n 60 "$log" | tr -d '\r'
	exit 1
fi
