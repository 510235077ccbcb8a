//! Full-kernel scenarios in a VM: VLAN, QinQ, kernel-mode PPPoE, MTU, reconnect, the nftables
//! flowtable, CAKE/fq_codel and the BPF verifier on Debian's 6.12 kernel under virtme-ng.
//!
//! Slow (one software-emulated boot, several minutes), so it is `#[ignore]`d and runs on its own:
//!
//! ```text
//! cargo test --test vm -- --ignored --nocapture
//! ```
//!
//! Prerequisites (root, `/boot/vmlinuz-6.12.*-amd64`, `vng`, `qemu-system-x86_64`) come from
//! `.ci/vm-deps.sh`. Missing ones fail the test under `CI=true` and skip it, with the reason,
//! elsewhere; `BPFQOS_SKIP_VM=1` skips it locally, never in CI. Scenario selection:
//! `BPFQOS_VM_SCENARIOS="mtu qdisc"`. See docs/testing-vm.md.

mod common;

use std::env;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

fn on_path(tool: &str) -> bool {
    common::which(tool).is_some()
}

fn kernel_image() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-6.12.") && n.ends_with("-amd64"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// What is missing to run the VM, empty when everything is there.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { nix::libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    if kernel_image().is_none() {
        missing
            .push("/boot/vmlinuz-6.12.*-amd64 (bookworm-backports linux-image-amd64)".to_string());
    }
    for tool in ["vng", "qemu-system-x86_64"] {
        if !on_path(tool) {
            missing.push(tool.to_string());
        }
    }
    missing
}

#[test]
#[ignore = "boots a VM for several minutes: cargo test --test vm -- --ignored --nocapture"]
fn vm_scenarios() {
    let ci = common::in_ci();
    if env::var("BPFQOS_SKIP_VM").is_ok_and(|v| v == "1") {
        if ci {
            eprintln!(
                "vm: BPFQOS_SKIP_VM=1 is ignored under CI=true: the VM scenarios always run in CI"
            );
        } else {
            eprintln!("vm: SKIPPED (BPFQOS_SKIP_VM=1)");
            return;
        }
    }
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let msg = format!(
            "vm: missing prerequisites: {}; install them with `sudo bash .ci/vm-deps.sh`",
            missing.join(", ")
        );
        assert!(!ci, "{msg} (CI=true: failing, not skipping)");
        eprintln!("{msg}: SKIPPED");
        return;
    }

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("bash");
    cmd.arg(repo.join("tests/vm/run.sh"));
    if let Ok(list) = env::var("BPFQOS_VM_SCENARIOS") {
        cmd.args(list.split_whitespace());
    }
    cmd.env("BPFQOS_BIN", env!("CARGO_BIN_EXE_bpfqos"));
    // The object build.rs wrote for this very build, if it wrote one; run.sh reports if not.
    if let Some(out_dir) = option_env!("OUT_DIR") {
        let obj = Path::new(out_dir).join("offload.bpfel.o");
        if obj.is_file() {
            cmd.env("BPFQOS_BPF_OBJ", obj);
        }
    }
    // The failed checks' own words, for the panic message (a CI excerpt shows the end only).
    let why_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-why.txt");
    let _ = std::fs::remove_file(&why_file);
    cmd.env("BPFQOS_VM_WHY", &why_file);
    // stdout/stderr are inherited: the per-scenario lines stream as the VM runs.
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => panic!("vm: cannot run tests/vm/run.sh: {e}"),
    };
    let why = std::fs::read_to_string(&why_file).unwrap_or_default();
    assert!(
        status.success(),
        "vm: tests/vm/run.sh failed ({status}); the FAIL lines and diagnostics are above\n{why}"
    );
}
