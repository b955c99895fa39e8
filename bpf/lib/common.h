/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bulwark datapath: what every part uses: the parsed packet, skb marks,
 * metrics counting, small predicates. */
#ifndef BULWARK_LIB_COMMON_H
#define BULWARK_LIB_COMMON_H

/* skb marks. A pod cannot set one: a veth crossing network namespaces
 * clears the mark, so only the node's own stack (the agent's proxy, the
 * programs here) sets them.
 *  TO_PROXY:   the packet is for the L7 proxy listening on the port in the
 *              upper 16 bits; the agent's policy routing rule (fwmark
 *              0x200/0xf00) makes such packets local.
 *  FROM_PROXY: a packet of the proxy's upstream connection; it carries the
 *              original source's identity (upper 16 bits, low 8 bits, bits
 *              12-15 for bits 24-27), which the destination's ingress
 *              policy judges instead of the proxy's address. */
#define MARK_MAGIC_MASK 0x0F00
#define PROXY_MARK_MAGIC 0x0200
#define PROXY_IDENTITY_MAGIC 0x0E00

#define barrier() asm volatile("" ::: "memory")
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x) = (v))

/* DEFER: the destination's ingress, decided from the source's hook, needs
 * the stack's path (an L7 redirect); nothing was recorded for it. */
#define DEFER -2

struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 is_ipv6;
	__u8 icmp_kind; /* 0 not ICMP, 1 echo request, 2 echo reply, 3 other */
	__u16 icmp_typecode;
	__u32 inner_off; /* ICMP error: offset of the quoted IP header, else 0 */
};

#define ICMP_NONE 0
#define ICMP_ECHO_REQUEST 1
#define ICMP_ECHO_REPLY 2
#define ICMP_OTHER 3

#define PARSE_OK 0
#define PARSE_PASS 1 /* not for policy: ARP, neighbour discovery */
#define PARSE_INVALID 2

static __always_inline void count(__u8 dir, __u32 code, __u32 bytes)
{
	__u32 slot = (__u32)dir * BW_METRIC_CODES + code;
	struct bw_metric *m = bpf_map_lookup_elem(&bw_metrics, &slot);
	if (m) {
		m->packets++;
		m->bytes += bytes;
	}
}

static __always_inline int is_icmp(__u8 proto)
{
	return proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

/* Protocols whose tables always hold the ProtoAny entries folded in: a
 * miss under their own number is final (one LPM lookup per selector). */
static __always_inline int is_to_proxy_mark(__u32 mark)
{
	return (mark & 0xffff) == PROXY_MARK_MAGIC && (mark >> 16);
}

/* proxy_identity reports whether mark is the proxy's upstream mark, and
 * its source identity. */
static __always_inline int proxy_identity(__u32 mark, __u32 *id)
{
	if ((mark & MARK_MAGIC_MASK) != PROXY_IDENTITY_MAGIC)
		return 0;
	*id = (mark >> 16) | ((mark & 0xff) << 16) | (((mark >> 12) & 0xf) << 24);
	return 1;
}

static __always_inline int has_own_entries(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP ||
	       proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

struct decision {
	__u8 verdict; /* BW_VERDICT_ALLOW, _DENY, _REDIRECT or _AUDIT */
	__u8 reason;  /* drop reason when DENY; the would-be one when AUDIT, or
		       * when an audit-mode deny flags a REDIRECT */
	__u16 proxy_port;
	__u32 rule_id;
};

#endif /* BULWARK_LIB_COMMON_H */
