/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bulwark datapath: conntrack: the canonical key, lifetimes and refresh,
 * new entries, related ICMP errors, and the per-direction trace
 * aggregation state an entry keeps. */
#ifndef BULWARK_LIB_CONNTRACK_H
#define BULWARK_LIB_CONNTRACK_H

/* Conntrack time is jiffies (bpf_jiffies64 reads a variable; the ktime
 * helpers cost more than the rest of the established path), lifetimes are
 * seconds times the configured HZ. */
#define CT_LIFETIME_TCP_S 21600
#define CT_LIFETIME_TCP_SYN_S 60
#define CT_LIFETIME_NONTCP_S 60
#define CT_LIFETIME_CLOSING_S 10
#define CT_REFRESH_GRANULARITY_S 1
#define HZ_FALLBACK 1000 /* no configured HZ: the longest common tick */
#define DROP_NOTIFY_INTERVAL_NS (1000000000ULL)

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* config_hz is the configured jiffies per second. */
static __always_inline __u64 config_hz(const struct bw_config *cfg)
{
	return cfg && cfg->hz ? cfg->hz : HZ_FALLBACK;
}

/* addr_cmp compares two 16-byte addresses as big-endian numbers. */
static __always_inline int addr_cmp(const __u8 a[16], const __u8 b[16])
{
	__u64 a0, a1, b0, b1;
	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	a0 = bpf_be64_to_cpu(a0);
	b0 = bpf_be64_to_cpu(b0);
	if (a0 != b0)
		return a0 < b0 ? -1 : 1;
	a1 = bpf_be64_to_cpu(a1);
	b1 = bpf_be64_to_cpu(b1);
	if (a1 != b1)
		return a1 < b1 ? -1 : 1;
	return 0;
}

/* ct_key fills k with the canonical conntrack key of a tuple and returns 1
 * when the tuple's source is the key's lo end. */
static __always_inline __u8 ct_key(struct bw_ct_key *k, const __u8 saddr[16], const __u8 daddr[16],
				   __be16 sport, __be16 dport, __u8 proto, __u32 ifindex)
{
	int c = addr_cmp(saddr, daddr);
	__u8 src_lo = c < 0 || (c == 0 && bpf_ntohs(sport) <= bpf_ntohs(dport));
	if (src_lo) {
		__builtin_memcpy(k->addr_lo, saddr, 16);
		__builtin_memcpy(k->addr_hi, daddr, 16);
		k->port_lo = sport;
		k->port_hi = dport;
	} else {
		__builtin_memcpy(k->addr_lo, daddr, 16);
		__builtin_memcpy(k->addr_hi, saddr, 16);
		k->port_lo = dport;
		k->port_hi = sport;
	}
	k->proto = proto;
	k->ifindex = ifindex;
	return src_lo;
}

/* ct_lifetime is the entry's lifetime in seconds. */
static __always_inline __u64 ct_lifetime(__u8 proto, const struct bw_ct_entry *ct)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP_S;
	if (ct->closing)
		return CT_LIFETIME_CLOSING_S;
	if ((ct->tcp_flags_seen & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK))
		return CT_LIFETIME_TCP_S;
	return CT_LIFETIME_TCP_SYN_S;
}

/* ct_refresh moves the entry's deadline to now + its lifetime, writing the
 * shared entry only when the deadline moves by more than the granularity
 * (or the flow is closing, whose short lifetime always restarts). */
static __always_inline void ct_refresh(struct bw_ct_entry *ct, __u8 proto, __u64 now, __u64 hz)
{
	__u64 expires = now + ct_lifetime(proto, ct) * hz;
	if (expires - ct->expires > CT_REFRESH_GRANULARITY_S * hz || ct->closing)
		ct->expires = expires;
}

/* icmp_error_related reports whether an ICMP error quotes a packet of a
 * flow tracked on this interface in the other direction: the quoted packet
 * is the flow's original direction as this endpoint sent it. Such errors
 * (e.g. fragmentation needed) pass. */
static __noinline int icmp_error_related(struct __sk_buff *skb, const struct pkt *p, __u32 ifindex,
					      __u8 dir)
{
	__u8 saddr[16] = {}, daddr[16] = {};
	__u8 proto;
	__u32 l4off;
	if (!p->is_ipv6) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, p->inner_off, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
			return 0;
		saddr[10] = saddr[11] = 0xff;
		daddr[10] = daddr[11] = 0xff;
		__builtin_memcpy(&saddr[12], &ip.saddr, 4);
		__builtin_memcpy(&daddr[12], &ip.daddr, 4);
		proto = ip.protocol;
		l4off = p->inner_off + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, p->inner_off, &ip6, sizeof(ip6)) < 0)
			return 0;
		__builtin_memcpy(saddr, &ip6.saddr, 16);
		__builtin_memcpy(daddr, &ip6.daddr, 16);
		proto = ip6.nexthdr; /* quoted extension headers: not related */
		l4off = p->inner_off + sizeof(ip6);
	}
	__u8 l4[8];
	if (bpf_skb_load_bytes(skb, l4off, l4, sizeof(l4)) < 0)
		return 0;
	__be16 sport, dport;
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
		__builtin_memcpy(&sport, &l4[4], 2); /* quoted echo: id */
		dport = sport;
	} else {
		__builtin_memcpy(&sport, &l4[0], 2);
		__builtin_memcpy(&dport, &l4[2], 2);
	}
	struct bw_ct_key k = {};
	__u8 src_lo = ct_key(&k, saddr, daddr, sport, dport, proto, ifindex);
	struct bw_ct_entry *ct = bpf_map_lookup_elem(&bw_conntrack, &k);
	/* the quoted packet is the flow's original one, sent the other way */
	return ct && ct->dir != dir && ct->orig_lo == src_lo;
}

/* Whether a hook's packet is to be traced (TRACE_WANTED, | TRACE_REPLY for
 * the reply direction) is left in skb->cb (cb[1] for the egress hook,
 * cb[0] for the ingress one), so that the
 * trace is emitted once the caller knows where the packet goes
 * (trace_at), without a stack slot on the deepest call chain: the pod's
 * egress and the destination's ingress decided by local delivery each have
 * their own. The programs clear the slots they read first. */
#define TRACE_WANTED 1
#define TRACE_REPLY 2

/* trace_bits is what a packet shows for trace aggregation (BW_TRACE_SEEN_*). */
static __always_inline __u8 trace_bits(__u8 proto, __u8 tcp_flags)
{
	if (proto != IPPROTO_TCP)
		return BW_TRACE_SEEN_OPEN;
	return ((tcp_flags & (TCP_SYN | TCP_ACK)) ? BW_TRACE_SEEN_OPEN : 0) |
	       ((tcp_flags & TCP_FIN) ? BW_TRACE_SEEN_FIN : 0) | ((tcp_flags & TCP_RST) ? BW_TRACE_SEEN_RST : 0);
}

/* trace_aggregate records what the packet shows in its direction's nibble
 * of ct->trace_seen and returns the trace request when that added
 * something (Cilium's monitor aggregation: flags seen, not every packet). */
static __always_inline __u32 trace_aggregate(struct bw_ct_entry *ct, __u8 bits, __u8 is_reply)
{
	__u8 shift = is_reply ? 4 : 0;
	__u8 add = (__u8)(bits << shift) & ~ct->trace_seen;
	if (!add)
		return 0;
	ct->trace_seen |= add;
	return TRACE_WANTED | (is_reply ? TRACE_REPLY : 0);
}

/* ct_create tracks a new flow decided under revision; flow packs the
 * original packet's dir | tcp_flags << 8 | src_lo << 16 | BW_CT_* << 24. It is a function
 * of its own so that the entry is built off handle_full's stack. */
static __noinline void ct_create(const struct bw_ct_key *key, const struct decision *d, __u32 peer_id,
				 __u64 revision, __u32 flow)
{
	__u8 dir = flow & 0xff, tcp_flags = (flow >> 8) & 0xff, src_lo = (flow >> 16) & 0xff,
	     flags = (flow >> 24) & 0xff;
	__u32 zero = 0;
	__u64 hz = config_hz(bpf_map_lookup_elem(&bw_config_map, &zero));
	struct bw_ct_entry nct = {
		.revision = revision,
		.rule_id = d->rule_id,
		.peer_identity = peer_id,
		.proxy_port = d->proxy_port,
		.dir = dir,
		.verdict = d->verdict,
		.tcp_flags_seen = tcp_flags,
		.closing = (tcp_flags & (TCP_FIN | TCP_RST)) ? 1 : 0,
		.orig_lo = src_lo,
		.flags = flags,
		.trace_seen = trace_bits(key->proto, tcp_flags),
	};
	nct.expires = bpf_jiffies64() + ct_lifetime(key->proto, &nct) * hz;
	bpf_map_update_elem(&bw_conntrack, key, &nct, BPF_ANY);
}

#endif /* BULWARK_LIB_CONNTRACK_H */
