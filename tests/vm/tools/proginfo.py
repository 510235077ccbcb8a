#!/usr/bin/python3
"""Print, for each pinned BPF program given, the instruction count the verifier processed
(bpf_prog_info.verified_insns, kernel >= 5.16) and the translated size, as JSON lines.

bpftool 7.1 (Debian 12) does not show verified_insns, hence this small bpf(2) caller. x86_64 only
(syscall number); the bpf_prog_info layout is UAPI and only ever grows.
"""

import ctypes
import json
import os
import struct
import sys

SYS_BPF = 321  # x86_64
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
INFO_SIZE = 232
OFF_XLATED_LEN = 20
OFF_NAME = 64
OFF_VERIFIED_INSNS = 216

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, ctypes.c_uint(128))
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r


def prog_info(path):
    p = ctypes.create_string_buffer(path.encode())
    fd = bpf(BPF_OBJ_GET, struct.pack("=QII", ctypes.addressof(p), 0, 0))
    try:
        info = ctypes.create_string_buffer(INFO_SIZE)
        bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, INFO_SIZE, ctypes.addressof(info)))
        raw = info.raw
    finally:
        os.close(fd)
    return {
        "pin": path,
        "name": raw[OFF_NAME:OFF_NAME + 16].split(b"\0")[0].decode(),
        "verified_insns": struct.unpack_from("=I", raw, OFF_VERIFIED_INSNS)[0],
        "xlated_insns": struct.unpack_from("=I", raw, OFF_XLATED_LEN)[0] // 8,
    }


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(json.dumps(prog_info(path)))
