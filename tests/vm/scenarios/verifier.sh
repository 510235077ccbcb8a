# shellcheck shell=bash disable=SC2154,SC2034  # PID_<name> come from lib.sh bg(); DIAG_NS is read there
# The bpfqos BPF objects load and pass the verifier on 6.12 (the kernel of OpenWrt 25.12).
# Loads every program of the little-endian object(s) build.rs produced with bpftool (an
# independent loader: libbpf underneath, but not the daemon's code) and reports, per program,
# the instructions the verifier processed (bpf_prog_info.verified_insns) and the translated size.

scenario_main() {
    local obj=${BPFQOS_BPF_OBJ:-}
    if [ -z "$obj" ] || [ ! -f "$obj" ]; then
        fail "no BPF object: expected offload.bpfel.o under target/*/build/bpfqos-*/out/ (built by build.rs, issue 3); run 'cargo build' first or set BPFQOS_BPF_OBJ (got '${obj}')"
    fi
    command -v bpftool >/dev/null || fail "bpftool not installed (.ci/vm-deps.sh installs it)"
    local dir objs o n=0
    dir=$(dirname "$obj")
    objs=("$obj")
    for o in "$dir"/*.bpfel.o; do [ "$o" = "$obj" ] || objs+=("$o"); done
    ns_add bpf
    for o in "${objs[@]}"; do
        step "load $(basename "$o") ($(stat -c %s "$o") bytes) with bpftool prog loadall"
        # A private bpffs in the namespace's own mount namespace; pins vanish with it.
        # A private bpffs in the namespace's own mount namespace; pins vanish with it.
        if ! nsx bpf unshare -m --propagation private sh -c '
            mount -t bpf bpf /sys/fs/bpf && mkdir -p /sys/fs/bpf/v &&
            bpftool prog loadall "$1" /sys/fs/bpf/v >"$2/verifier.txt" 2>&1 &&
            "$3" "$4" /sys/fs/bpf/v/*' _ "$o" "$WORK" "$PY" "$VMDIR/tools/proginfo.py" \
            >"$WORK/progs.json"; then
            tail -n 40 "$WORK/verifier.txt"
            # The rejection on the console: the source line, the instruction and the reason.
            grep -B 30 -E '^processed [0-9]+ insns' "$WORK/verifier.txt" | grep -v '^mark_precise' |
                grep -E '^; |^[0-9]+: |^[a-zA-Z]' | tail -n 4 | sed 's/^/      | /' | cut -c1-200 >&3
            grep -E "^libbpf: prog '.*': failed to load" "$WORK/verifier.txt" | sed 's/^/      | /' >&3
            fail "$(basename "$o") did not pass the verifier on $(uname -r) (verifier log in the scenario log)"
        fi
        $PY - "$WORK/progs.json" "$(basename "$o")" >&3 <<'PYEOF' || fail "$(basename "$o"): no program loaded"
import json, sys
progs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for p in progs:
    print(f"  [verifier] {sys.argv[2]} {p['name']}: {p['verified_insns']} insns processed "
          f"by the verifier, {p['xlated_insns']} insns after translation")
sys.exit(0 if progs else 1)
PYEOF
        n=$((n + 1))
    done
    note "$n object(s) loaded and verified on $(uname -r)"
}
