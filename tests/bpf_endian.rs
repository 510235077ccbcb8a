//! The BPF objects must lay out header bitfields for their own byte order, whatever machine's
//! UAPI headers are on the include path (bpf/include/asm/byteorder.h). A probe compiled like the
//! real objects (same include order) stores an IPv4 header with version 4, IHL 5: its first byte
//! must be 0x45 for both bpfel and bpfeb.

// A test: a failure to set up is a test failure, so unwrap is the right tool here.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn first_rodata_byte(target: &str) -> u8 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("bpfqos-endian-{}-{target}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    std::fs::write(
        &src,
        "#include <linux/types.h>\n#include <linux/ip.h>\n\
         const struct iphdr probe = { .version = 4, .ihl = 5, .tos = 0xab };\n",
    )
    .unwrap();
    let obj = dir.join("probe.o");
    let mut cmd = Command::new(std::env::var("BPFQOS_CLANG").unwrap_or_else(|_| "clang".into()));
    cmd.args(["-O2", "-target", target, "-c"])
        .arg(format!("-I{}", root.join("bpf/include").display()));
    // The host's multiarch directory supplies <asm/types.h>, as in build.rs.
    for d in std::fs::read_dir("/usr/include").unwrap().flatten() {
        if d.path().join("asm").is_dir() {
            cmd.arg(format!("-I{}", d.path().display()));
        }
    }
    let out = cmd.arg(&src).arg("-o").arg(&obj).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = dir.join("rodata.bin");
    let out = Command::new("llvm-objcopy")
        .args(["-O", "binary", "--only-section=.rodata"])
        .arg(&obj)
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&bin).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        bytes.get(1),
        Some(&0xab),
        "probe not found in .rodata: {bytes:02x?}"
    );
    bytes[0]
}

#[test]
fn ipv4_bitfields_follow_the_target_byte_order() {
    assert_eq!(
        first_rodata_byte("bpfel"),
        0x45,
        "bpfel: version/ihl swapped"
    );
    assert_eq!(
        first_rodata_byte("bpfeb"),
        0x45,
        "bpfeb: version/ihl swapped"
    );
}
