#!/usr/bin/env bash
# Install what the full-kernel VM harness (tests/vm/run.sh) needs on a Debian 12
# (bookworm) machine, as root. Idempotent: when everything is already there it
# only checks and exits (well under a second).
#
#   - bookworm-backports apt source (deb822), on the same mirror apt already uses
#   - linux-image-amd64 from bookworm-backports (6.12, the kernel of OpenWrt 25.12)
#   - qemu-system-x86, busybox-static and the in-VM oracles (ppp, pppoe, iproute2,
#     nftables, conntrack, tcpdump, ethtool, python3-scapy, iperf3, bpftool)
#   - virtme-ng from PyPI, pinned, in its own venv, linked as /usr/local/bin/vng
set -euo pipefail

VIRTME_NG_VERSION=1.42
VENV=/opt/virtme-ng
BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.sources

# From bookworm-backports: the kernel, and qemu (images that already carry
# qemu-utils from backports cannot take bookworm's qemu-system-x86 beside it).
PKGS=(busybox-static ppp pppoe iproute2 nftables conntrack
      tcpdump ethtool python3-scapy iperf3 bpftool kmod python3-venv
      procps psmisc iputils-ping)

log() { printf 'vm-deps: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "must run as root"; exit 1; }

# bookworm-backports already configured, by us or by anyone (avoid a duplicate source).
have_backports() { grep -rqsE '(^|[[:space:]])bookworm-backports([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/; }
have_kernel() { compgen -G '/boot/vmlinuz-6.12.*-amd64' >/dev/null; }
have_vng() {
    [ -x "$VENV/bin/vng" ] && [ -e /usr/local/bin/vng ] && [ -e /usr/local/bin/virtme-run ] &&
        "$VENV/bin/python" -c "import importlib.metadata as m,sys; sys.exit(m.version('virtme-ng')!='$VIRTME_NG_VERSION')" 2>/dev/null
}
missing_pkgs() {
    local p
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

if have_kernel && command -v qemu-system-x86_64 >/dev/null && have_vng && have_backports && [ -z "$(missing_pkgs)" ]; then
    log "all present ($(basename /boot/vmlinuz-6.12.*-amd64 | tail -n1), virtme-ng $VIRTME_NG_VERSION)"
    exit 0
fi

# The Debian mirror apt already uses for bookworm (deb822 .sources or one-line
# sources.list), so backports comes from the same host. Nothing is hard-coded.
debian_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: paragraphs separated by blank lines; want one with Suites: bookworm
        awk 'BEGIN{RS=""; FS="\n"}
             {u=""; s=0; en=1
              for(i=1;i<=NF;i++){
                if($i ~ /^URIs:/){sub(/^URIs:[ \t]*/,"",$i); split($i,a,/[ \t]+/); u=a[1]}
                if($i ~ /^Suites:/ && $i ~ /(^|[ \t])bookworm([ \t]|$)/) s=1
                if($i ~ /^Enabled:[ \t]*no/) en=0
              }
              if(u!="" && s && en){print u; exit}}' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                          if ($(i+1)=="bookworm") { print $i; exit } }' "$f"
    done
}

if ! have_backports; then
    mirror=$(debian_mirror | head -n1)
    [ -n "$mirror" ] || { log "no bookworm apt source found in /etc/apt/sources.list*"; exit 1; }
    log "adding bookworm-backports from $mirror"
    cat >"$BACKPORTS_FILE" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
          --no-install-recommends)
log "apt-get update"
apt-get update -q >/dev/null
bpo_need=()
have_kernel || bpo_need+=(linux-image-amd64)
command -v qemu-system-x86_64 >/dev/null || bpo_need+=(qemu-system-x86)
if [ "${#bpo_need[@]}" -gt 0 ]; then
    log "installing ${bpo_need[*]} from bookworm-backports"
    apt-get install "${apt_opts[@]}" -t bookworm-backports "${bpo_need[@]}" >/dev/null
    have_kernel || { log "no /boot/vmlinuz-6.12.*-amd64 after install"; exit 1; }
fi
mapfile -t need < <(missing_pkgs)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get install "${apt_opts[@]}" "${need[@]}" >/dev/null
fi

# A venv of Debian's python3 keeps virtme-ng independent of whatever python
# (pyenv, ...) is first in PATH, and needs no --break-system-packages.
if ! have_vng; then
    log "installing virtme-ng==$VIRTME_NG_VERSION into $VENV"
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VIRTME_NG_VERSION"
    # vng runs virtme-run & co. from PATH: link them all.
    for b in "$VENV"/bin/vng "$VENV"/bin/virtme-*; do ln -sf "$b" /usr/local/bin/; done
    have_vng || { log "virtme-ng install did not produce $VENV/bin/vng"; exit 1; }
fi
log "done: $(ls /boot/vmlinuz-6.12.*-amd64 | tail -n1), vng $VIRTME_NG_VERSION"
