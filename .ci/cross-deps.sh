#!/usr/bin/env bash
# What the router builds and the big-endian kernel test need (issue 16, docs/openwrt.md), on
# Debian 12 as root. Idempotent: a second run only checks. Versions are pinned where the route
# depends on them:
#   - rustc-web / cargo-web / rust-web-src 1.96 (bookworm-security): a compiler with the exact
#     source of its standard library, so -Zbuild-std builds std for any target it knows;
#   - zig 0.15.2 (PyPI `ziglang`): C compiler and linker with musl and Linux headers bundled;
#   - qemu-user-static: runs the foreign test binaries; qemu-system-s390x (bookworm-backports,
#     beside the VM's qemu): boots a big-endian kernel;
#   - autotools, gettext, flex, bison, gawk: libbpf-sys' vendored elfutils runs autoreconf;
#   - for the s390x guest, downloaded (not installed) into target/s390x/debs: Debian's
#     linux-image 6.12 for s390x and busybox-static:s390x.
set -euo pipefail
CI_DIR=$(cd "$(dirname "$0")" && pwd)
cd "$CI_DIR/.."

ZIG_VERSION=0.15.2
RUST_WEB_VERSION=1.96
S390X_DIR=${BPFQOS_S390X_DIR:-$PWD/target/s390x}
log() { echo "cross-deps: $*"; }

apt_pkgs=(rustc-web cargo-web rust-web-src qemu-user-static cpio xz-utils
	autoconf automake libtool autopoint gettext pkg-config flex bison gawk)
# shellcheck source=.ci/apt.sh
source "$CI_DIR/apt.sh"
apt_install "${apt_pkgs[@]}"
v=$(/usr/bin/rustc --version | awk '{print $2}')
case $v in
"$RUST_WEB_VERSION".*) ;;
*) log "expected Debian's rustc-web $RUST_WEB_VERSION at /usr/bin/rustc, found $v" >&2; exit 1 ;;
esac

if [ "$(python3 -c 'import ziglang, importlib.metadata as m; print(m.version("ziglang"))' 2>/dev/null)" != "$ZIG_VERSION" ]; then
	log "installing ziglang==$ZIG_VERSION from PyPI"
	python3 -m pip install -q "ziglang==$ZIG_VERSION"
fi

# qemu-system-s390x from the same suite as the installed qemu-system-common (vm-deps.sh puts
# bookworm-backports' qemu there; two suites' qemu packages cannot live side by side).
if ! command -v qemu-system-s390x >/dev/null; then
	common=$(dpkg-query -W -f='${Version}' qemu-system-common 2>/dev/null || true)
	log "installing qemu-system-s390x${common:+ $common}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"qemu-system-s390x${common:+=$common}" >/dev/null
fi

# The s390x guest's kernel and busybox: Debian's own packages, only unpacked.
mkdir -p "$S390X_DIR/debs"
if ! ls "$S390X_DIR"/debs/linux-image-*_s390x.deb >/dev/null 2>&1 ||
	! ls "$S390X_DIR"/debs/busybox-static_*_s390x.deb >/dev/null 2>&1; then
	if ! dpkg --print-foreign-architectures | grep -qx s390x; then
		log "adding the s390x architecture (package lists only; nothing s390x is installed)"
		dpkg --add-architecture s390x
	fi
	apt-get update -qq
	# linux-image-s390x is a metapackage; its one dependency is the kernel itself (6.12 from
	# bookworm-backports when that suite is configured, as vm-deps.sh does).
	kpkg=$(apt-cache depends -t bookworm-backports linux-image-s390x:s390x 2>/dev/null |
		awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
	[ -n "$kpkg" ] || { log "no linux-image for s390x in the package lists" >&2; exit 1; }
	case $kpkg in *:s390x) ;; *) kpkg=$kpkg:s390x ;; esac
	log "downloading $kpkg and busybox-static:s390x"
	# apt's "download is performed unsandboxed as root" warning is expected here.
	(cd "$S390X_DIR/debs" && apt-get download -q "$kpkg" busybox-static:s390x 2>/dev/null)
	ls "$S390X_DIR"/debs/linux-image-*_s390x.deb "$S390X_DIR"/debs/busybox-static_*_s390x.deb >/dev/null
fi
log "ok"
