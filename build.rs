//! Builds every BPF object, with the project's one clang command line ([`compile`]):
//! - the data path, `bpf/*.bpf.c`: both byte orders (`<name>.bpfel.o`, `<name>.bpfeb.o` in
//!   OUT_DIR; big-endian is for MIPS routers) and a libbpf-rs skeleton (`<name>.skel.rs`) from the
//!   object matching the target's byte order; the product embeds `<name>.<order>.ship.o`: the
//!   same object without its DWARF and the relocations of `.BTF.ext` (libbpf reads neither; BTF
//!   and `.BTF.ext` stay, the verifier needs them for global functions and prints line info),
//!   334 KB → 167 KB of a router's flash;
//! - the benches' own programs, `bench/bpf/*.bpf.c`: little-endian only, into `OUT_DIR/bench/`,
//!   no skeleton; nothing of the product refers to them.
//!
//! UAPI headers only: no vmlinux.h, no CO-RE (OpenWrt kernels ship without BTF). `make bpf`
//! copies the objects out of OUT_DIR into `target/bpf/` for inspection.
//!
//! Environment:
//! - `BPFQOS_CLANG`: the clang to use (default `clang`).
//! - `BPFQOS_LLVM_STRIP`: the llvm-strip to use (default `llvm-strip`).
//! - `BPFQOS_BPF_CFLAGS`: extra flags, whitespace-separated (e.g. `-I<staging>/usr/include` for
//!   the OpenWrt cross build, whose host has no multiarch asm/ headers for the target).

use std::env;
use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let bpf_dir = manifest.join("bpf");
    let bench_dir = manifest.join("bench").join("bpf");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-changed={}", bench_dir.display());
    println!("cargo:rerun-if-env-changed=BPFQOS_CLANG");
    println!("cargo:rerun-if-env-changed=BPFQOS_BPF_CFLAGS");
    println!("cargo:rerun-if-env-changed=BPFQOS_LLVM_STRIP");

    // libbpf's own headers (bpf_helpers.h, bpf_endian.h, ...) come from libbpf-sys, written
    // into OUT_DIR/include/bpf so that `#include <bpf/bpf_helpers.h>` resolves.
    let inc = out.join("include");
    fs::create_dir_all(inc.join("bpf"))?;
    for (name, text) in libbpf_sys::API_HEADERS {
        write_if_changed(&inc.join("bpf").join(name), text.as_bytes())?;
    }

    let clang = env::var("BPFQOS_CLANG").unwrap_or_else(|_| "clang".to_string());
    let strip = env::var("BPFQOS_LLVM_STRIP").unwrap_or_else(|_| "llvm-strip".to_string());
    let extra: Vec<String> = env::var("BPFQOS_BPF_CFLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let native = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "big" => "bpfeb",
        _ => "bpfel",
    };

    let bpf_inc = bpf_dir.join("include");
    let includes = [inc.as_path(), bpf_inc.as_path()];
    for src in sources(&bpf_dir)? {
        let name = object_name(&src)?;
        for target in ["bpfel", "bpfeb"] {
            let obj = out.join(format!("{name}.{target}.o"));
            compile(&clang, target, &src, &obj, &includes, &extra)?;
            ship(&strip, &obj, &out.join(format!("{name}.{target}.ship.o")))?;
        }
        let skel = out.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .obj(out.join(format!("{name}.{native}.o")))
            .generate(&skel)
            .map_err(|e| format!("generating the skeleton for {}: {e:#}", src.display()))?;
    }
    let bench_out = out.join("bench");
    fs::create_dir_all(&bench_out)?;
    for src in sources(&bench_dir)? {
        let obj = bench_out.join(format!("{}.bpfel.o", object_name(&src)?));
        compile(&clang, "bpfel", &src, &obj, &includes, &extra)?;
    }
    Ok(())
}

/// The `*.bpf.c` files of `dir`, sorted.
fn sources(dir: &Path) -> Result<Vec<PathBuf>, BoxError> {
    let mut sources: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    Ok(sources)
}

/// `offload` for `.../offload.bpf.c`.
fn object_name(src: &Path) -> Result<String, BoxError> {
    let file = src
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("bad BPF source name")?;
    Ok(file.trim_end_matches(".bpf.c").to_string())
}

fn compile(
    clang: &str,
    target: &str,
    src: &Path,
    obj: &Path,
    includes: &[&Path],
    extra: &[String],
) -> Result<(), BoxError> {
    let mut cmd = Command::new(clang);
    // -mcpu=v3: 32-bit ALU ops and jumps (kernel 5.1+; every supported kernel has them) spare
    // the zero-extension shift pairs that v1 code spends on every 32-bit value.
    cmd.args([
        "-O2", "-g", "-mcpu=v3", "-Wall", "-Werror", "-target", target, "-c",
    ]);
    for dir in includes {
        cmd.arg(format!("-I{}", dir.display()));
    }
    // <linux/types.h> needs <asm/types.h>; on Debian it lives in the multiarch directory.
    for dir in multiarch_includes() {
        cmd.arg(format!("-idirafter{}", dir.display()));
    }
    cmd.args(extra);
    cmd.arg(src).arg("-o").arg(obj);
    let status = cmd
        .status()
        .map_err(|e| format!("running {clang} (set BPFQOS_CLANG?): {e}"))?;
    if !status.success() {
        return Err(format!("{clang} failed on {} for {target}: {status}", src.display()).into());
    }
    Ok(())
}

/// Writes the object the product embeds: `obj` without DWARF (`--strip-debug`) and without
/// `.rel.BTF.ext` (relocations of the line/function info that libbpf does not apply).
fn ship(strip: &str, obj: &Path, out: &Path) -> Result<(), BoxError> {
    let status = Command::new(strip)
        .args(["--strip-debug", "--remove-section=.rel.BTF.ext", "-o"])
        .arg(out)
        .arg(obj)
        .status()
        .map_err(|e| format!("running {strip} (set BPFQOS_LLVM_STRIP?): {e}"))?;
    if !status.success() {
        return Err(format!("{strip} failed on {}: {status}", obj.display()).into());
    }
    Ok(())
}

/// The host's multiarch include directory (e.g. /usr/include/x86_64-linux-gnu), if any.
fn multiarch_includes() -> Vec<PathBuf> {
    let arch = env::var("HOST")
        .ok()
        .and_then(|h| h.split('-').next().map(str::to_string))
        .unwrap_or_default();
    let candidates = [
        format!("/usr/include/{arch}-linux-gnu"),
        format!("/usr/include/{arch}-linux-musl"),
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.join("asm").is_dir())
        .collect()
}

fn write_if_changed(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if fs::read(path).map(|old| old == contents).unwrap_or(false) {
        return Ok(());
    }
    fs::write(path, contents)
}
