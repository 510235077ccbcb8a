#!/bin/sh
# with-ppp-dir.sh DIR cmd...: run cmd with a private /etc/ppp (a tmpfs in a new mount namespace,
# filled from DIR), so pppd/pppoe-server read only the test's options and PAP secrets and nothing
# of the VM's (or host's) /etc/ppp is read or written.
dir=$1
shift
exec unshare -m --propagation private sh -c \
    'mount -t tmpfs -o mode=0755 bpfqos-ppp /etc/ppp && cp -a "$0"/. /etc/ppp/ && exec "$@"' "$dir" "$@"
