/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Byte order of the BPF target, not of the machine whose UAPI headers are on
 * the include path.
 *
 * <linux/ip.h> and <linux/ipv6.h> lay out their bitfields (version/ihl) by
 * __BIG_ENDIAN_BITFIELD / __LITTLE_ENDIAN_BITFIELD from <asm/byteorder.h>.
 * The host's x86 header always says little endian, which silently breaks
 * `-target bpfeb` objects (every IPv4 packet would read as version 5), and
 * OpenWrt's MIPS header refuses to compile without __MIPSEB__/__MIPSEL__.
 * clang defines __BYTE_ORDER__ for the BPF target, so decide from that.
 * bpf/include comes first on the include path, so this file wins.
 */
#ifndef BPFQOS_ASM_BYTEORDER_H
#define BPFQOS_ASM_BYTEORDER_H

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#include <linux/byteorder/big_endian.h>
#elif __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#include <linux/byteorder/little_endian.h>
#else
#error "unknown byte order"
#endif

#endif /* BPFQOS_ASM_BYTEORDER_H */
