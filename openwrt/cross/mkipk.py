#!/usr/bin/env python3
"""Builds an OpenWrt .ipk of bpfqos from a cross-built binary and files/, following the
package recipe (openwrt/bpfqos/Makefile) the way OpenWrt's package-ipkg.mk and ipkg-build do:

- the outer file is a gzip'd tar (OpenWrt's opkg format, not Debian's ar) of ./debian-binary,
  ./data.tar.gz and ./control.tar.gz, in that order;
- data.tar.gz: what `define Package/bpfqos/install` installs, with the modes of its macros
  (INSTALL_BIN 0755, INSTALL_CONF 0600, INSTALL_DATA 0644, directories 0755), owned by root;
- control.tar.gz: control (Package, Version = PKG_VERSION-rPKG_RELEASE, Depends from DEPENDS'
  +packages, Source, SourceName, License, LicenseFiles, Section, URL, Maintainer,
  Architecture, Installed-Size, Description), conffiles (Package/conffiles), postinst and prerm
  (the generic wrappers that call /lib/functions.sh's default_postinst/default_prerm, which
  enable/disable the init script and run postinst-pkg/prerm-pkg), postinst-pkg (the recipe's
  Package/postinst).

Reproducible: every mtime is SOURCE_DATE_EPOCH (default: 0), entries sorted, gzip without
timestamps. The binary is statically linked (musl), so there is no libc dependency.

    mkipk.py --binary BIN --arch ARCH --out DIR
"""
import argparse
import gzip
import io
import os
import re
import sys
import tarfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RECIPE = os.path.join(ROOT, "openwrt", "bpfqos", "Makefile")
MODES = {"$(INSTALL_BIN)": 0o755, "$(INSTALL_CONF)": 0o600, "$(INSTALL_DATA)": 0o644}

POSTINST = """#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_postinst $0 $@
"""
PRERM = """#!/bin/sh
[ -s ${IPKG_INSTROOT}/lib/functions.sh ] || exit 0
. ${IPKG_INSTROOT}/lib/functions.sh
default_prerm $0 $@
"""


def fail(msg):
    sys.exit("mkipk: " + msg)


def define_block(text, name):
    m = re.search(r"^define %s\n(.*?)^endef" % re.escape(name), text, re.M | re.S)
    if not m:
        fail("no 'define %s' in %s" % (name, RECIPE))
    return m.group(1)


def variable(text, name):
    m = re.search(r"^%s\s*[:?]?=\s*(.*)$" % re.escape(name), text, re.M)
    if not m:
        fail("no %s in %s" % (name, RECIPE))
    return m.group(1).strip()


def package_field(block, name):
    """A `NAME:=value` line of define Package/bpfqos, with its backslash continuations."""
    m = re.search(r"^\s*%s\s*:?=\s*((?:.*\\\n)*.*)$" % re.escape(name), block, re.M)
    return re.sub(r"\\\n\s*", " ", m.group(1)).strip() if m else ""


def install_list(text, binary):
    """(dest, source file, mode) for every file of Package/bpfqos/install."""
    out = []
    for line in define_block(text, "Package/bpfqos/install").splitlines():
        words = line.split()
        if not words or words[0] == "$(INSTALL_DIR)":
            continue
        if words[0] not in MODES:
            fail("install line not understood: " + line.strip())
        *sources, dest = words[1:]
        if not dest.startswith("$(1)"):
            fail("destination outside $(1): " + line.strip())
        dest = dest[len("$(1)"):]
        for src in sources:
            if src.startswith("$(PKG_INSTALL_DIR)/bin/"):
                path = binary
            elif src.startswith("$(PKG_BUILD_DIR)/"):
                path = os.path.join(ROOT, src[len("$(PKG_BUILD_DIR)/"):])
            else:
                fail("install source not understood: " + src)
            d = dest.rstrip("/") + "/" + os.path.basename(src) if dest.endswith("/") else dest
            out.append((d, path, MODES[words[0]]))
    return out


def add(tar, name, data, mode, mtime):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def add_dir(tar, name, mtime):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info)


def targz(entries, mtime):
    """A gzip'd tar (no gzip timestamp) of entries: (name, bytes or None for a dir, mode)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode in entries:
            if data is None:
                add_dir(tar, name, mtime)
            else:
                add(tar, name, data, mode, mtime)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--arch", required=True, help="OpenWrt package architecture, e.g. mips_24kc")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    text = open(RECIPE).read()
    name = variable(text, "PKG_NAME")
    version = "%s-r%s" % (variable(text, "PKG_VERSION"), variable(text, "PKG_RELEASE"))
    pkg = define_block(text, "Package/bpfqos")
    depends = [w[1:] for w in package_field(pkg, "DEPENDS").split() if w.startswith("+")]
    description = define_block(text, "Package/bpfqos/description").rstrip("\n").splitlines()
    conffiles = define_block(text, "Package/bpfqos/conffiles")
    postinst_pkg = define_block(text, "Package/bpfqos/postinst").replace("$$", "$")

    files = install_list(text, a.binary)
    data_entries, dirs, size = [], set(), 0
    for dest, path, mode in files:
        parts = dest.strip("/").split("/")
        for i in range(1, len(parts)):
            dirs.add("./" + "/".join(parts[:i]) + "/")
        blob = open(path, "rb").read()
        size += len(blob)
        data_entries.append(("./" + dest.strip("/"), blob, mode))
    data_entries = [("./", None, 0o755)] + [(d, None, 0o755) for d in sorted(dirs)] + sorted(
        data_entries)

    control = [
        "Package: " + name,
        "Version: " + version,
        "Depends: " + ", ".join(depends),
        "Source: feeds/bpfqos/bpfqos",
        "SourceName: " + name,
        "License: " + variable(text, "PKG_LICENSE"),
        "LicenseFiles: " + variable(text, "PKG_LICENSE_FILES"),
        "Section: " + package_field(pkg, "SECTION"),
        "URL: " + package_field(pkg, "URL"),
        "Maintainer: " + variable(text, "PKG_MAINTAINER"),
        "Architecture: " + a.arch,
        "Installed-Size: %d" % size,
        "Description: " + description[0].strip(),
    ] + [" " + l.strip() for l in description[1:]]
    control_entries = [
        ("./", None, 0o755),
        ("./control", ("\n".join(control) + "\n").encode(), 0o644),
        ("./conffiles", conffiles.encode(), 0o644),
        ("./postinst", POSTINST.encode(), 0o755),
        ("./postinst-pkg", postinst_pkg.encode(), 0o755),
        ("./prerm", PRERM.encode(), 0o755),
    ]
    outer = [
        ("./debian-binary", b"2.0\n", 0o644),
        ("./data.tar.gz", targz(data_entries, mtime), 0o644),
        ("./control.tar.gz", targz(control_entries, mtime), 0o644),
    ]
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "%s_%s_%s.ipk" % (name, version, a.arch))
    with open(path, "wb") as f:
        f.write(targz(outer, mtime))
    print(path)


if __name__ == "__main__":
    main()
