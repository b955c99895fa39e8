// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Bulwark pod datapath: one program body, instantiated for the two
 * directions of a pod's host-side veth.
 *
 *   bulwark_from_pod  tc/tcx ingress of the host veth = the pod's egress
 *   bulwark_to_pod    tc/tcx egress of the host veth  = the pod's ingress
 *
 * Invariants:
 *  - Fail closed: an interface without an endpoint record, an endpoint not
 *    READY, or with OVERFLOW set, drops every IP packet.
 *  - Established flows (conntrack hit, either direction) skip the endpoint
 *    record and the policy lookup unless the global policy revision moved;
 *    then the endpoint's state is checked again, the original direction is
 *    re-evaluated and a flow that lost its allow is deleted. The agent moves
 *    the revision after every change of an endpoint record.
 *  - Policy: deny wins over redirect over allow; no match = the direction's
 *    default (drop when enforced). An audit-mode deny entry never passes a
 *    packet that would drop without it: it turns an allow, or a default
 *    that is not enforced, into AUDIT; no match where the endpoint's
 *    AUDIT flag is set is AUDIT too. AUDIT passes like allow; the new flow emits
 *    a policy-verdict event BW_EV_AUDIT with the rule id and the drop
 *    reason it would have had; conntrack keeps the verdict, so its later
 *    packets pass without events. A redirect to a proxy that an audit-mode
 *    deny matches stays a redirect (the proxy enforces its L7 rules) and
 *    its new flow emits BW_EV_AUDIT naming the audit rule.
 *  - Non-IP (ARP) and IPv6 neighbour discovery pass.
 *  - Local delivery (BW_CFG_LOCAL_DELIVERY): a packet the source pod may
 *    send to a pod on this node is decided there for the destination's
 *    ingress as well, with the destination's record, tables and conntrack
 *    entries, exactly as its own hook would, and handed to the destination
 *    with bpf_redirect_peer: the node's IP stack and the destination's hook
 *    are skipped. Whatever would make that differ from the stack's path (no
 *    route or neighbour, TTL, MTU, an L7 redirect) leaves the packet to the
 *    stack, before anything is recorded for the destination.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/bulwark_maps.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Emit struct bw_event into BTF so bpf2go generates its Go twin. */
const struct bw_event *bw_event_type_anchor __attribute__((unused));

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

/* selector_entry is a selector's entry for a packet in the table and
 * direction k carries: the port LPM under the packet's protocol, else under
 * protocol ANY (except for protocols with entries of their own). */
static __always_inline struct bw_policy_value *selector_entry(struct bw_policy_key *k, __u32 selector,
							       __u32 proto, __u32 port)
{
	k->prefixlen = BW_POLICY_FULL_BITS;
	k->selector = selector;
	k->proto = proto;
	k->port = port;
	struct bw_policy_value *v = bpf_map_lookup_elem(&bw_policy, k);
	if (!v && !has_own_entries(proto)) {
		k->proto = 0;
		v = bpf_map_lookup_elem(&bw_policy, k);
	}
	return v;
}

static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	switch (p->proto) {
	case IPPROTO_TCP: {
		__u8 hdr[14];
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return PARSE_INVALID;
		__builtin_memcpy(&p->sport, &hdr[0], 2);
		__builtin_memcpy(&p->dport, &hdr[2], 2);
		p->tcp_flags = hdr[13];
		return PARSE_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return PARSE_INVALID;
		p->sport = ports[0];
		p->dport = ports[1];
		return PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 hdr[8];
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return PARSE_INVALID;
		__u8 type = hdr[0];
		p->icmp_typecode = ((__u16)type << 8) | hdr[1];
		if (p->proto == IPPROTO_ICMPV6 && type >= 133 && type <= 137)
			return PARSE_PASS;
		if ((p->proto == IPPROTO_ICMP && type == 8) ||
		    (p->proto == IPPROTO_ICMPV6 && type == 128))
			p->icmp_kind = ICMP_ECHO_REQUEST;
		else if ((p->proto == IPPROTO_ICMP && type == 0) ||
			 (p->proto == IPPROTO_ICMPV6 && type == 129))
			p->icmp_kind = ICMP_ECHO_REPLY;
		else
			p->icmp_kind = ICMP_OTHER;
		/* errors quote the packet that caused them: destination
		 * unreachable (incl. fragmentation needed / packet too big), time
		 * exceeded, parameter problem */
		if ((p->proto == IPPROTO_ICMP && (type == 3 || type == 11 || type == 12)) ||
		    (p->proto == IPPROTO_ICMPV6 && type >= 1 && type <= 4))
			p->inner_off = off + 8;
		if (p->icmp_kind != ICMP_OTHER) {
			/* the echo id stands for both ports */
			__builtin_memcpy(&p->sport, &hdr[4], 2);
			p->dport = p->sport;
		}
		return PARSE_OK;
	}
	}
	return PARSE_OK; /* other protocols: no ports */
}

/* parse_fragment handles a fragment of p->proto: the first one is parsed
 * and its ports remembered, later ones take the remembered ports; a later
 * fragment whose first was not seen is invalid (fail closed). */
static __always_inline int parse_fragment(struct __sk_buff *skb, struct pkt *p, __u32 id, __u32 offset,
					  __u32 l4off)
{
	struct bw_frag_key k = { .id = id, .proto = p->proto };
	__builtin_memcpy(k.saddr, p->saddr, 16);
	__builtin_memcpy(k.daddr, p->daddr, 16);
	if (offset == 0) {
		int r = parse_l4(skb, l4off, p);
		if (r == PARSE_OK) {
			struct bw_frag_ports v = { .sport = p->sport, .dport = p->dport,
						   .icmp_kind = p->icmp_kind };
			bpf_map_update_elem(&bw_fragments, &k, &v, BPF_ANY);
		}
		return r;
	}
	struct bw_frag_ports *v = bpf_map_lookup_elem(&bw_fragments, &k);
	if (!v)
		return PARSE_INVALID;
	p->sport = v->sport;
	p->dport = v->dport;
	p->icmp_kind = v->icmp_kind;
	return PARSE_OK;
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u16 eth_proto;
	if (bpf_skb_load_bytes(skb, 12, &eth_proto, 2) < 0)
		return PARSE_PASS;
	if (eth_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return PARSE_INVALID;
		if (ip.ihl < 5)
			return PARSE_INVALID;
		p->saddr[10] = 0xff;
		p->saddr[11] = 0xff;
		__builtin_memcpy(&p->saddr[12], &ip.saddr, 4);
		p->daddr[10] = 0xff;
		p->daddr[11] = 0xff;
		__builtin_memcpy(&p->daddr[12], &ip.daddr, 4);
		p->proto = ip.protocol;
		__u16 frag = bpf_ntohs(ip.frag_off);
		if (frag & 0x3fff) /* MF or an offset: a fragment */
			return parse_fragment(skb, p, bpf_ntohs(ip.id), frag & 0x1fff, ETH_HLEN + ip.ihl * 4);
		return parse_l4(skb, ETH_HLEN + ip.ihl * 4, p);
	}
	if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return PARSE_INVALID;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		p->is_ipv6 = 1;
		__u8 nexthdr = ip6.nexthdr;
		__u32 off = ETH_HLEN + sizeof(ip6);
		/* skip a bounded number of extension headers */
		for (int i = 0; i < 4; i++) {
			__u8 ext[2];
			if (nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
			    nexthdr == IPPROTO_DSTOPTS) {
				if (bpf_skb_load_bytes(skb, off, ext, 2) < 0)
					return PARSE_INVALID;
				nexthdr = ext[0];
				off += ((__u32)ext[1] + 1) * 8;
			} else if (nexthdr == IPPROTO_FRAGMENT) {
				__u8 frag[8];
				if (bpf_skb_load_bytes(skb, off, frag, 8) < 0)
					return PARSE_INVALID;
				__u32 id;
				__builtin_memcpy(&id, &frag[4], 4);
				p->proto = frag[0];
				return parse_fragment(skb, p, bpf_ntohl(id), ((frag[2] << 8) | frag[3]) & 0xfff8,
						      off + 8);
			} else {
				break;
			}
		}
		p->proto = nexthdr;
		return parse_l4(skb, off, p);
	}
	return PARSE_PASS;
}

static __always_inline __u32 ipcache_identity(const __u8 addr[16])
{
	struct bw_ipcache_key k = { .prefixlen = 128 };
	__builtin_memcpy(k.addr, addr, 16);
	struct bw_ipcache_value *v = bpf_map_lookup_elem(&bw_ipcache, &k);
	return v ? v->identity : 2; /* miss: reserved:world */
}

/* assign_proxy hands the packet to the L7 proxy whose port is in its
 * TO_PROXY mark, as Cilium's BPF TPROXY does: to the proxy's socket of this
 * connection when there is one (TCP: established or mid-handshake), else
 * to the proxy's transparent listener (TCP) or socket (UDP), bound to the
 * wildcard address on that port in this (the node's) namespace. Returns 0
 * when the packet is assigned, else nonzero: the caller drops it (nothing
 * listens, or the helper refused). Only valid at tc ingress. */
static __noinline int assign_proxy(struct __sk_buff *skb, const struct pkt *p)
{
	__u16 port = skb->mark >> 16;
	struct bpf_sock_tuple t = {};
	__u32 len;
	if (!port)
		return -1;
	if (p->is_ipv6) {
		__builtin_memcpy(t.ipv6.saddr, p->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, p->daddr, 16);
		t.ipv6.sport = p->sport;
		t.ipv6.dport = p->dport;
		len = sizeof(t.ipv6);
	} else {
		__builtin_memcpy(&t.ipv4.saddr, &p->saddr[12], 4);
		__builtin_memcpy(&t.ipv4.daddr, &p->daddr[12], 4);
		t.ipv4.sport = p->sport;
		t.ipv4.dport = p->dport;
		len = sizeof(t.ipv4);
	}
	struct bpf_sock *sk = 0;
	if (p->proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (sk && (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT)) {
			bpf_sk_release(sk);
			sk = 0;
		}
	}
	if (!sk) {
		/* the proxy's wildcard socket on its port */
		if (p->is_ipv6) {
			__builtin_memset(t.ipv6.daddr, 0, 16);
			t.ipv6.dport = bpf_htons(port);
		} else {
			t.ipv4.daddr = 0;
			t.ipv4.dport = bpf_htons(port);
		}
		if (p->proto == IPPROTO_TCP) {
			sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
			if (sk && sk->state != BPF_TCP_LISTEN) {
				bpf_sk_release(sk);
				sk = 0;
			}
		} else if (p->proto == IPPROTO_UDP) {
			sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		}
	}
	if (!sk)
		return -1;
	long r = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return r ? -1 : 0;
}

struct decision {
	__u8 verdict; /* BW_VERDICT_ALLOW, _DENY, _REDIRECT or _AUDIT */
	__u8 reason;  /* drop reason when DENY; the would-be one when AUDIT, or
		       * when an audit-mode deny flags a REDIRECT */
	__u16 proxy_port;
	__u32 rule_id;
};

static __always_inline __u8 verdict_rank(__u8 v)
{
	/* deny > redirect > allow > none; AUDIT is handled apart */
	switch (v) {
	case BW_VERDICT_DENY:
		return 3;
	case BW_VERDICT_REDIRECT:
		return 2;
	case BW_VERDICT_ALLOW:
		return 1;
	}
	return 0;
}

/* audit_lookup finds the first audit-mode deny (an AUDIT value, or an
 * ALLOW value with BW_POLICY_F_AUDIT) matching the peer, in policy_lookup's
 * order; returns its rule_id << 1 | 1, or 0. policy_lookup calls it only
 * for endpoints with audit entries, when the packet would pass: flows of
 * other endpoints pay one flag test. */
__attribute__((noinline)) __u64 audit_lookup(__u32 table_id, __u32 peer, __u32 match)
{
	__u32 dir = match & 0xff;
	__u32 proto = (match >> 8) & 0xff;
	__u32 port = match >> 16;
	struct bw_selector_list *sl = bpf_map_lookup_elem(&bw_id_selectors, &peer);
	if (!sl)
		return 0;
	if (is_icmp(proto))
		port = 0;
	__u32 n = sl->count;
	struct bw_policy_key k = {
		.table_id = table_id,
		.dir = dir,
	};
	for (__u32 i = 0; i < BW_MAX_SELECTORS; i++) {
		if (i >= n)
			break;
		struct bw_policy_value *v = selector_entry(&k, sl->selectors[i], proto, port);
		if (v && (v->verdict == BW_VERDICT_AUDIT || (v->flags & BW_POLICY_F_AUDIT)))
			return ((__u64)v->rule_id << 1) | 1;
	}
	return 0;
}

/* policy_lookup evaluates an endpoint's table for dir against a peer: for
 * each selector the peer belongs to, the port LPM under the packet's
 * protocol, else under protocol ANY (not for ICMP); the strongest verdict
 * wins. It is a global function so the verifier checks its bounded loop
 * once, not once per caller path. Returns a packed decision:
 * verdict | reason << 8 | proxy_port << 16 | rule_id << 32. */
__attribute__((noinline)) __u64 policy_lookup(__u32 table_id, __u32 ep_flags, __u32 peer, __u32 match)
{
	/* match packs dir | proto << 8 | port (network order) << 16 */
	__u32 dir = match & 0xff;
	__u32 proto = (match >> 8) & 0xff;
	__u32 port = match >> 16;
	__u32 enforce = dir == BW_INGRESS ? (ep_flags & BW_EP_ENFORCE_INGRESS)
					  : (ep_flags & BW_EP_ENFORCE_EGRESS);
	__u32 audit = dir == BW_INGRESS ? (ep_flags & BW_EP_AUDIT_INGRESS) : (ep_flags & BW_EP_AUDIT_EGRESS);
	struct bw_selector_list *sl = bpf_map_lookup_elem(&bw_id_selectors, &peer);
	__u8 best_rank = 0;
	__u64 verdict = BW_VERDICT_NONE, reason = BW_REASON_NONE, proxy_port = 0, rule_id = 0, audit_rule = 0;

	if (sl && (sl->flags & BW_SEL_OVERFLOW))
		return BW_VERDICT_DENY | (BW_REASON_TABLE_OVERFLOW << 8);
	if (is_icmp(proto))
		port = 0; /* ports do not apply to ICMP */
	if (sl) {
		__u32 n = sl->count;
		struct bw_policy_key k = {
			.table_id = table_id,
			.dir = dir,
		};
		for (__u32 i = 0; i < BW_MAX_SELECTORS; i++) {
			if (i >= n)
				break;
			struct bw_policy_value *v = selector_entry(&k, sl->selectors[i], proto, port);
			if (!v)
				continue;
			__u8 r = verdict_rank(v->verdict);
			if (r > best_rank) {
				best_rank = r;
				verdict = v->verdict;
				proxy_port = v->proxy_port;
				rule_id = v->rule_id;
				if (r == 3)
					break;
			}
		}
	}
	if (verdict == BW_VERDICT_DENY) {
		reason = BW_REASON_POLICY_DENY_RULE;
	} else if ((ep_flags & BW_EP_HAS_AUDIT) &&
		   (verdict == BW_VERDICT_ALLOW || (verdict == BW_VERDICT_REDIRECT && proxy_port) ||
		    (verdict == BW_VERDICT_NONE && !enforce)) &&
		   (audit_rule = audit_lookup(table_id, peer, match))) {
		/* An audit-mode deny flags what passes anyway. A redirect stays
		 * one (the proxy enforces the L7 rules), flagged by the reason
		 * the deny would have given and the audit rule. */
		if (verdict != BW_VERDICT_REDIRECT) {
			verdict = BW_VERDICT_AUDIT;
			proxy_port = 0;
		}
		reason = BW_REASON_POLICY_DENY_RULE;
		rule_id = audit_rule >> 1;
	} else if (verdict == BW_VERDICT_NONE) {
		if (enforce) {
			verdict = BW_VERDICT_DENY;
			reason = BW_REASON_POLICY_DENIED;
		} else if (audit) {
			verdict = BW_VERDICT_AUDIT;
			reason = BW_REASON_POLICY_DENIED;
		} else {
			verdict = BW_VERDICT_ALLOW;
		}
	}
	return verdict | (reason << 8) | (proxy_port << 16) | (rule_id << 32);
}

static __always_inline void decide(const struct bw_endpoint *ep, __u8 dir, __u32 peer, __u8 proto,
				   __be16 port, struct decision *d)
{
	__u32 match = (__u32)dir | ((__u32)proto << 8) | ((__u32)port << 16);
	__u64 r = policy_lookup(ep->table_id[dir & 1], ep->flags, peer, match);
	d->verdict = r & 0xff;
	d->reason = (r >> 8) & 0xff;
	d->proxy_port = (r >> 16) & 0xffff;
	d->rule_id = r >> 32;
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

static __always_inline void emit(struct __sk_buff *skb, __u8 dir, __u8 type, __u8 verdict, __u8 reason,
				 const struct pkt *p, __u32 ep_id, __u32 local_id, __u32 peer_id,
				 const struct decision *d, __u8 is_reply_point)
{
	__u8 is_reply = is_reply_point & 1, point = is_reply_point >> 1;
	struct bw_event *e = bpf_ringbuf_reserve(&bw_events, sizeof(*e), 0);
	if (!e) {
		count(dir, BW_CODE_EVENTS_LOST, 0);
		return;
	}
	e->timestamp = bpf_ktime_get_ns();
	e->endpoint_id = ep_id;
	if (dir == BW_EGRESS) {
		e->src_identity = local_id;
		e->dst_identity = peer_id;
	} else {
		e->src_identity = peer_id;
		e->dst_identity = local_id;
	}
	e->rule_id = d ? d->rule_id : 0;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	if (is_icmp(p->proto)) {
		e->sport = p->sport;
		e->dport = p->icmp_typecode;
	} else {
		e->sport = p->sport;
		e->dport = p->dport;
	}
	e->bytes = skb->len;
	e->type = type;
	e->dir = dir;
	e->verdict = verdict;
	e->reason = reason;
	e->proto = p->proto;
	e->tcp_flags = p->tcp_flags;
	e->is_reply = is_reply;
	e->is_ipv6 = p->is_ipv6;
	e->proxy_port = d ? d->proxy_port : 0;
	e->trace_point = point;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
}

/* drop counts the drop and emits an event, at most one per flow per
 * DROP_NOTIFY_INTERVAL_NS. */
static __always_inline int drop(struct __sk_buff *skb, __u32 ifindex, __u8 dir, __u8 reason,
				const struct pkt *p, __u32 ep_id, __u32 local_id, __u32 peer_id,
				const struct decision *d, __u8 is_reply)
{
	count(dir, reason, skb->len);
	struct bw_ct_key k = {};
	ct_key(&k, p->saddr, p->daddr, p->sport, p->dport, p->proto, ifindex);
	__u64 now = bpf_ktime_get_coarse_ns();
	__u64 *last = bpf_map_lookup_elem(&bw_drop_notify, &k);
	if (last && now - *last < DROP_NOTIFY_INTERVAL_NS)
		return TC_ACT_SHOT;
	bpf_map_update_elem(&bw_drop_notify, &k, &now, BPF_ANY);
	emit(skb, dir, BW_EVENT_DROP, BW_EV_DROPPED, reason, p, ep_id, local_id, peer_id, d, is_reply);
	return TC_ACT_SHOT;
}

/* drop_no_proxy drops a packet that a policy sends to an L7 proxy when no
 * proxy socket takes it: rule zero, an L7 rule no proxy enforces drops its
 * traffic. */
static __noinline int drop_no_proxy(struct __sk_buff *skb, __u32 ifindex, __u8 dir, const struct pkt *p,
				    const struct bw_ct_entry *ct)
{
	struct bw_endpoint *ep = bpf_map_lookup_elem(&bw_endpoints, &ifindex);
	struct decision d = { .verdict = BW_VERDICT_REDIRECT, .proxy_port = skb->mark >> 16,
			      .rule_id = ct ? ct->rule_id : 0 };
	__u32 peer_id = ct ? ct->peer_identity : ipcache_identity(dir == BW_EGRESS ? p->daddr : p->saddr);
	skb->mark = 0;
	return drop(skb, ifindex, dir, BW_REASON_PROXY_UNAVAILABLE, p, ep ? ep->endpoint_id : 0,
		    ep ? ep->identity : 0, peer_id, &d, 0);
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

/* config_hz is the configured jiffies per second. */
static __always_inline __u64 config_hz(const struct bw_config *cfg)
{
	return cfg && cfg->hz ? cfg->hz : HZ_FALLBACK;
}

static __always_inline void redirect_to_proxy(struct __sk_buff *skb, __u16 proxy_port)
{
	skb->mark = ((__u32)proxy_port << 16) | PROXY_MARK_MAGIC;
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

/* established passes a packet of a tracked flow whose verdict is current:
 * it records TCP progress and refreshes the expiry, writing the shared
 * entry only when something changes (both directions of a flow hit the
 * same entry, often from different CPUs). A packet the flow redirects to
 * a proxy is marked for it and, at tc ingress (the source's hook, or local
 * delivery), assigned to the proxy's socket or dropped when there is none;
 * at the destination's hook (tc egress) the caller hairpins it. */
/* Whether a hook's packet is to be traced (TRACE_WANTED, | TRACE_REPLY for
 * the reply direction) is left in skb->cb[TRACE_CB(dir)], so that the
 * trace is emitted once the caller knows where the packet goes
 * (trace_at), without a stack slot on the deepest call chain: the pod's
 * egress and the destination's ingress decided by local delivery each have
 * their own. The programs clear the slots they read first. */
#define TRACE_WANTED 1
#define TRACE_REPLY 2

static __always_inline void trace_request(struct __sk_buff *skb, __u8 dir, __u32 trace)
{
	if (dir == BW_EGRESS)
		skb->cb[1] = trace;
	else
		skb->cb[0] = trace;
}

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

/* trace_emit emits the TRACE event of a packet that a hook passed, at the
 * trace point where it went. It runs only for the packets trace_aggregate
 * chose, a few per connection, so the packet is parsed and its flow's
 * entry found again here: nothing is carried on the hooks' stacks. */
static __noinline void trace_emit(struct __sk_buff *skb, __u32 trace_dir_point, __u32 ifindex)
{
	__u8 dir = (trace_dir_point >> 8) & 0xff, point = trace_dir_point >> 16;
	struct bw_endpoint *ep = bpf_map_lookup_elem(&bw_endpoints, &ifindex);
	struct pkt p = {};
	struct bw_ct_key key = {};
	if (!ep || parse(skb, &p) != PARSE_OK)
		return;
	ct_key(&key, p.saddr, p.daddr, p.sport, p.dport, p.proto, ifindex);
	struct bw_ct_entry *ct = bpf_map_lookup_elem(&bw_conntrack, &key);
	if (!ct)
		return;
	struct decision d = { .verdict = ct->verdict, .proxy_port = ct->proxy_port, .rule_id = ct->rule_id };
	emit(skb, dir, BW_EVENT_TRACE, BW_EV_FORWARDED, 0, &p, ep->endpoint_id, ep->identity, ct->peer_identity, &d,
	     (trace_dir_point & TRACE_REPLY ? 1 : 0) | point << 1);
}

/* trace_at emits the trace the hook for dir on ifindex asked for, at
 * point. */
static __always_inline void trace_at(struct __sk_buff *skb, const __u8 dir, __u32 ifindex, __u8 point)
{
	__u32 trace = dir == BW_EGRESS ? skb->cb[1] : skb->cb[0];
	if (trace)
		trace_emit(skb, trace | (__u32)dir << 8 | (__u32)point << 16, ifindex);
}

static __always_inline int established(struct __sk_buff *skb, const __u8 dir, __u32 ifindex, const struct pkt *p,
				       struct bw_ct_entry *ct, __u8 is_reply, __u64 now, __u64 hz,
				       const __u8 deliver, struct bw_ct_entry **out)
{
	if (ct->verdict == BW_VERDICT_REDIRECT && !is_reply) {
		redirect_to_proxy(skb, ct->proxy_port);
		if ((dir == BW_EGRESS || deliver) && assign_proxy(skb, p))
			return drop_no_proxy(skb, ifindex, dir, p, ct);
	}
	if (p->proto == IPPROTO_TCP) {
		if ((p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN && !is_reply) {
			/* the tuple is reused by a new connection */
			ct->tcp_flags_seen = 0;
			ct->closing = 0;
			ct->trace_seen = 0;
		}
		if ((ct->tcp_flags_seen | p->tcp_flags) != ct->tcp_flags_seen)
			ct->tcp_flags_seen |= p->tcp_flags;
		if ((p->tcp_flags & (TCP_FIN | TCP_RST)) && !ct->closing)
			ct->closing = 1;
	}
	*out = ct;
	trace_request(skb, dir, trace_aggregate(ct, trace_bits(p->proto, p->tcp_flags), is_reply));
	ct_refresh(ct, p->proto, now, hz);
	if (ct->verdict == BW_VERDICT_REDIRECT && !is_reply) {
		count(dir, BW_CODE_REDIRECTED, skb->len);
	} else {
		count(dir, BW_CODE_FORWARDED, skb->len);
	}
	return TC_ACT_OK;
}

#define FAST_MISS -1

/* fast_established takes the common packet of an established flow: IPv4
 * without options or fragmentation, or IPv6 without extension headers,
 * carrying TCP without SYN, FIN or RST, or UDP, headers in the linear area,
 * and a conntrack entry of the current revision that the packet changes
 * nothing in but the expiry (nor anything to trace). It reads the headers in
 * place and decides exactly as handle_full would; any other packet is
 * FAST_MISS, for handle_full. */
static __noinline int fast_established(struct __sk_buff *skb, const __u8 dir, __u32 ifindex,
					    struct bw_ct_entry **out)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bw_ct_key k = { .ifindex = ifindex };
	__be16 sport, dport;
	__u8 proto, src_lo;
	__u8 *l4;
	if ((void *)(eth + 1) > data_end)
		return FAST_MISS;
	/* The canonical key (ct_key), built from the headers in place. */
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_HLEN;
		l4 = (__u8 *)(ip + 1);
		if ((void *)(l4 + 14) > data_end)
			return FAST_MISS;
		if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
			return FAST_MISS;
		proto = ip->protocol;
		__builtin_memcpy(&sport, &l4[0], 2);
		__builtin_memcpy(&dport, &l4[2], 2);
		/* v4-mapped addresses order as their 4 bytes do */
		__u32 sa = bpf_ntohl(ip->saddr), da = bpf_ntohl(ip->daddr);
		src_lo = sa < da || (sa == da && bpf_ntohs(sport) <= bpf_ntohs(dport));
		k.addr_lo[10] = k.addr_lo[11] = 0xff;
		k.addr_hi[10] = k.addr_hi[11] = 0xff;
		__builtin_memcpy(&k.addr_lo[12], src_lo ? &ip->saddr : &ip->daddr, 4);
		__builtin_memcpy(&k.addr_hi[12], src_lo ? &ip->daddr : &ip->saddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		l4 = (__u8 *)(ip6 + 1);
		if ((void *)(l4 + 14) > data_end)
			return FAST_MISS;
		proto = ip6->nexthdr; /* extension headers: not TCP/UDP, a miss */
		__builtin_memcpy(&sport, &l4[0], 2);
		__builtin_memcpy(&dport, &l4[2], 2);
		int c = addr_cmp((const __u8 *)&ip6->saddr, (const __u8 *)&ip6->daddr);
		src_lo = c < 0 || (c == 0 && bpf_ntohs(sport) <= bpf_ntohs(dport));
		__builtin_memcpy(k.addr_lo, src_lo ? &ip6->saddr : &ip6->daddr, 16);
		__builtin_memcpy(k.addr_hi, src_lo ? &ip6->daddr : &ip6->saddr, 16);
	} else {
		return FAST_MISS;
	}
	__u8 flags = 0;
	if (proto == IPPROTO_TCP) {
		flags = l4[13];
		if (flags & (TCP_SYN | TCP_FIN | TCP_RST))
			return FAST_MISS;
	} else if (proto != IPPROTO_UDP) {
		return FAST_MISS;
	}
	k.proto = proto;
	k.port_lo = src_lo ? sport : dport;
	k.port_hi = src_lo ? dport : sport;
	struct bw_ct_entry *ct = bpf_map_lookup_elem(&bw_conntrack, &k);
	if (!ct)
		return FAST_MISS;
	/* established: the original's way and hook; reply: the other's */
	__u8 is_reply = src_lo != ct->orig_lo;
	if ((ct->dir == dir) == is_reply)
		return FAST_MISS;
	__u32 zero = 0;
	struct bw_config *cfg = bpf_map_lookup_elem(&bw_config_map, &zero);
	if (!cfg || ct->revision != cfg->revision || ct->closing ||
	    (ct->tcp_flags_seen | flags) != ct->tcp_flags_seen ||
	    !(ct->trace_seen & (is_reply ? BW_TRACE_SEEN_OPEN << 4 : BW_TRACE_SEEN_OPEN)) ||
	    (ct->verdict == BW_VERDICT_REDIRECT && !is_reply))
		return FAST_MISS;
	__u64 hz = config_hz(cfg);
	ct_refresh(ct, proto, bpf_jiffies64(), hz);
	count(dir, BW_CODE_FORWARDED_FAST, skb->len);
	*out = ct;
	return TC_ACT_OK;
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

/* handle_full decides any packet for the endpoint on ifindex, in dir. It
 * is a function of its own so that the fast path's code stays short and
 * contiguous. deliver: the packet is on its way to this endpoint by local
 * delivery (decided from the source's hook); a verdict that needs the
 * stack's path is DEFERred before anything is recorded. out is set to the
 * flow's conntrack entry and the trace the packet asks for. */
static __noinline int handle_full(struct __sk_buff *skb, const __u8 dir, __u32 ifindex, const __u8 deliver,
				  struct bw_ct_entry **out)
{
	struct pkt p = {};
	int pr = parse(skb, &p);
	if (pr == PARSE_PASS)
		return deliver ? DEFER : TC_ACT_OK;

	/* The revision is read before the endpoint record: the agent writes a
	 * record first and moves the revision after, so a verdict stored under
	 * a revision never outlives the record it was taken with. */
	__u32 zero = 0;
	struct bw_config *cfg = bpf_map_lookup_elem(&bw_config_map, &zero);
	__u64 revision = cfg ? cfg->revision : 0;
	__u64 hz = config_hz(cfg);
	__u64 now = bpf_jiffies64();

	/* Conntrack: the original packet's way through the original's hook =
	 * established, the other way through the other hook = reply; an entry
	 * that fits neither (a tuple seen the wrong way) is left alone and the
	 * packet decided as new, untracked. ICMP errors are not tracked; echo
	 * is: requests only establish, replies only reply. */
	struct bw_ct_key key = {};
	struct bw_ct_entry *ct = 0;
	__u8 is_reply = 0, src_lo = 0, untracked = 0;
	if (pr == PARSE_OK && p.icmp_kind != ICMP_OTHER) {
		src_lo = ct_key(&key, p.saddr, p.daddr, p.sport, p.dport, p.proto, ifindex);
		ct = bpf_map_lookup_elem(&bw_conntrack, &key);
		if (ct) {
			is_reply = src_lo != ct->orig_lo;
			if ((ct->dir == dir) == is_reply || (is_reply && p.icmp_kind == ICMP_ECHO_REQUEST) ||
			    (!is_reply && p.icmp_kind == ICMP_ECHO_REPLY)) {
				ct = 0;
				is_reply = 0;
				untracked = 1;
			}
		}
	}
	/* Fast path: a flow validated under the current revision passes
	 * without the endpoint record. Every endpoint record change (removal,
	 * not ready, overflow, new tables, new identity) moves the revision,
	 * and a removed endpoint's flows are purged. */
	if (ct && ct->revision == revision)
		return established(skb, dir, ifindex, &p, ct, is_reply, now, hz, deliver, out);

	struct bw_endpoint *ep = bpf_map_lookup_elem(&bw_endpoints, &ifindex);
	__u8 *peer_addr = dir == BW_EGRESS ? p.daddr : p.saddr;

	if (!ep)
		return drop(skb, ifindex, dir, BW_REASON_UNKNOWN_ENDPOINT, &p, 0, 0, 0, 0, 0);
	__u32 ep_id = ep->endpoint_id;
	__u32 local_id = ep->identity;
	if (pr == PARSE_INVALID)
		return drop(skb, ifindex, dir, BW_REASON_INVALID, &p, ep_id, local_id, 0, 0, 0);
	if (ep->flags & BW_EP_OVERFLOW)
		return drop(skb, ifindex, dir, BW_REASON_TABLE_OVERFLOW, &p, ep_id, local_id, 0, 0, 0);
	if (!(ep->flags & BW_EP_READY))
		return drop(skb, ifindex, dir, BW_REASON_NOT_READY, &p, ep_id, local_id, 0, 0, 0);

	struct decision d = {};
	if (ct) {
		/* Revalidate the original direction under the new policy. The
		 * proxy's upstream flows keep the identity of their mark. */
		__u8 odir = ct->dir;
		__u8 *osrc = ct->orig_lo ? key.addr_lo : key.addr_hi;
		__u8 *odst = ct->orig_lo ? key.addr_hi : key.addr_lo;
		__be16 odport = ct->orig_lo ? key.port_hi : key.port_lo;
		__u8 from_proxy = ct->flags & BW_CT_FROM_PROXY;
		__u32 peer_id = from_proxy ? ct->peer_identity : ipcache_identity(odir == BW_EGRESS ? odst : osrc);
		decide(ep, odir, peer_id, key.proto, odport, &d);
		if (from_proxy && d.verdict == BW_VERDICT_REDIRECT)
			d.verdict = BW_VERDICT_ALLOW; /* the proxy enforced the L7 rules */
		if (d.verdict == BW_VERDICT_DENY) {
			bpf_map_delete_elem(&bw_conntrack, &key);
			return drop(skb, ifindex, dir, BW_REASON_REVOKED, &p, ep_id, local_id, peer_id, &d, is_reply);
		}
		if (d.verdict == BW_VERDICT_REDIRECT && !d.proxy_port) {
			bpf_map_delete_elem(&bw_conntrack, &key);
			return drop(skb, ifindex, dir, BW_REASON_PROXY_UNAVAILABLE, &p, ep_id, local_id, peer_id, &d,
				    is_reply);
		}
		ct->revision = revision;
		ct->route = BW_ROUTE_UNKNOWN; /* the endpoints may have moved */
		ct->rule_id = d.rule_id;
		ct->verdict = d.verdict;
		ct->proxy_port = d.proxy_port;
		ct->peer_identity = peer_id;
		return established(skb, dir, ifindex, &p, ct, is_reply, now, hz, deliver, out);
	}

	if (p.inner_off && icmp_error_related(skb, &p, ifindex, dir)) {
		count(dir, BW_CODE_FORWARDED, skb->len);
		return TC_ACT_OK;
	}

	/* New flow: policy decides. A packet of the L7 proxy's upstream
	 * connection (only the node's stack can mark it) is judged as its
	 * original source, and a redirect allows it: the proxy enforced the
	 * L7 rules. */
	__u32 peer_id, mark_id = 0;
	__u8 from_proxy = dir == BW_INGRESS && !deliver && proxy_identity(skb->mark, &mark_id);
	peer_id = from_proxy ? mark_id : ipcache_identity(peer_addr);
	decide(ep, dir, peer_id, p.proto, p.dport, &d);
	if (from_proxy && d.verdict == BW_VERDICT_REDIRECT)
		d.verdict = BW_VERDICT_ALLOW;
	if (d.verdict == BW_VERDICT_DENY)
		return drop(skb, ifindex, dir, d.reason, &p, ep_id, local_id, peer_id, &d, 0);
	/* Rule zero: a redirect is enforced by a proxy or dropped. At tc
	 * ingress the proxy's socket is assigned now; at the destination's
	 * own hook (tc egress) the caller hairpins the marked packet. */
	if (d.verdict == BW_VERDICT_REDIRECT) {
		if (!d.proxy_port)
			return drop(skb, ifindex, dir, BW_REASON_PROXY_UNAVAILABLE, &p, ep_id, local_id, peer_id, &d, 0);
		redirect_to_proxy(skb, d.proxy_port);
		if ((dir == BW_EGRESS || deliver) && assign_proxy(skb, &p)) {
			skb->mark = 0;
			return drop(skb, ifindex, dir, BW_REASON_PROXY_UNAVAILABLE, &p, ep_id, local_id, peer_id, &d, 0);
		}
	}

	if (p.icmp_kind != ICMP_OTHER && !untracked) {
		ct_create(&key, &d, peer_id, revision,
			  (__u32)dir | (__u32)p.tcp_flags << 8 | (__u32)src_lo << 16 |
				  (__u32)(from_proxy ? BW_CT_FROM_PROXY : 0) << 24);
		/* the new flow's first packet is traced too, as Cilium's */
		trace_request(skb, dir, TRACE_WANTED);
	}
	if (d.verdict == BW_VERDICT_REDIRECT && d.reason) {
		/* to the proxy, flagged by an audit-mode deny */
		count(dir, BW_CODE_REDIRECTED, skb->len);
		count(dir, BW_CODE_AUDITED, skb->len);
		emit(skb, dir, BW_EVENT_POLICY_VERDICT, BW_EV_AUDIT, d.reason, &p, ep_id, local_id, peer_id, &d, 0);
	} else if (d.verdict == BW_VERDICT_REDIRECT) {
		count(dir, BW_CODE_REDIRECTED, skb->len);
		emit(skb, dir, BW_EVENT_POLICY_VERDICT, BW_EV_REDIRECTED, 0, &p, ep_id, local_id, peer_id, &d, 0);
	} else if (d.verdict == BW_VERDICT_AUDIT) {
		count(dir, BW_CODE_FORWARDED, skb->len);
		count(dir, BW_CODE_AUDITED, skb->len);
		emit(skb, dir, BW_EVENT_POLICY_VERDICT, BW_EV_AUDIT, d.reason, &p, ep_id, local_id, peer_id, &d, 0);
	} else {
		count(dir, BW_CODE_FORWARDED, skb->len);
		emit(skb, dir, BW_EVENT_POLICY_VERDICT, BW_EV_FORWARDED, 0, &p, ep_id, local_id, peer_id, &d, 0);
	}
	return TC_ACT_OK;
}

static __always_inline int handle(struct __sk_buff *skb, const __u8 dir, __u32 ifindex, const __u8 deliver,
				  struct bw_ct_entry **out)
{
	int r = fast_established(skb, dir, ifindex, out);
	if (r != FAST_MISS)
		return r;
	return handle_full(skb, dir, ifindex, deliver, out);
}

/* A route to a local endpoint. */
struct local_route {
	__u32 ifindex; /* the destination endpoint's host veth */
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
	__u16 mtu;
	__u16 pad;
};

/* route_local reports whether the node's routing sends the packet to
 * another local endpoint's veth through a resolved neighbour (no hairpin),
 * and fills rt. It is a function of its own so that the lookup's buffer is
 * off the stack while the destination's ingress is decided. */
static __noinline int route_local(struct __sk_buff *skb, struct local_route *rt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_fib_lookup fib = { .ifindex = skb->ifindex };
	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > data_end)
			return 0;
		fib.family = 2; /* AF_INET */
		fib.tos = ip->tos;
		fib.l4_protocol = ip->protocol;
		fib.ipv4_src = ip->saddr;
		fib.ipv4_dst = ip->daddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > data_end)
			return 0;
		fib.family = 10; /* AF_INET6 */
		fib.flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0fffffff);
		fib.l4_protocol = ip6->nexthdr;
		__builtin_memcpy(fib.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, 16);
	} else {
		return 0;
	}
	/* tot_len 0: the size is checked per packet against the device MTU */
	if (bpf_fib_lookup(skb, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return 0;
	__u32 ifindex = fib.ifindex;
	if (ifindex == skb->ifindex || !bpf_map_lookup_elem(&bw_endpoints, &ifindex))
		return 0;
	__u32 mtu = 0;
	bpf_check_mtu(skb, ifindex, &mtu, 0, 0); /* fills in the device's MTU */
	if (!mtu)
		return 0;
	rt->ifindex = ifindex;
	rt->mtu = mtu > 0xffff ? 0xffff : mtu;
	__builtin_memcpy(rt->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(rt->smac, fib.smac, ETH_ALEN);
	return 1;
}

/* local_deliver takes a packet the source pod's egress allowed, with its
 * established conntrack entry when the fast path passed it (the entry
 * caches the route for a second, under its revision). When the node's
 * routing sends the packet to another local endpoint, it decides the
 * destination's ingress here and, allowed, routes the packet as the node
 * would (TTL, MAC addresses from the neighbour table) straight into the
 * destination pod with bpf_redirect_peer. Everything else, and every packet
 * whose way through the stack could differ (TTL expiring, beyond the MTU,
 * an L7 redirect at the destination), returns TC_ACT_OK to the stack with
 * nothing recorded for the destination: its own hook decides there. */
static __always_inline int local_deliver(struct __sk_buff *skb, struct bw_ct_entry *ct)
{
	__u32 zero = 0;
	struct bw_config *cfg = bpf_map_lookup_elem(&bw_config_map, &zero);
	if (!cfg || !(cfg->flags & BW_CFG_LOCAL_DELIVERY))
		return TC_ACT_OK;
	struct local_route rt = {};
	__u32 now = bpf_jiffies64();
	__u8 route = ct ? READ_ONCE(ct->route) : BW_ROUTE_UNKNOWN;
	if (route != BW_ROUTE_UNKNOWN && now - ct->route_at < config_hz(cfg)) {
		if (route != BW_ROUTE_LOCAL)
			return TC_ACT_OK;
		rt.ifindex = ct->route_ifindex;
		rt.mtu = ct->route_mtu;
		__builtin_memcpy(rt.dmac, ct->route_dmac, ETH_ALEN);
		__builtin_memcpy(rt.smac, ct->route_smac, ETH_ALEN);
		if (!rt.ifindex)
			return TC_ACT_OK;
	} else {
		int local = route_local(skb, &rt);
		if (ct) {
			/* Readers on other CPUs see the old route, no route, or
			 * the new one: the state is withdrawn while the fields
			 * change and published after them. */
			WRITE_ONCE(ct->route, BW_ROUTE_UNKNOWN);
			barrier();
			ct->route_at = now;
			ct->route_ifindex = rt.ifindex;
			ct->route_mtu = rt.mtu;
			__builtin_memcpy(ct->route_dmac, rt.dmac, ETH_ALEN);
			__builtin_memcpy(ct->route_smac, rt.smac, ETH_ALEN);
			barrier();
			WRITE_ONCE(ct->route, local ? BW_ROUTE_LOCAL : BW_ROUTE_STACK);
		}
		if (!local)
			return TC_ACT_OK;
	}

	/* This packet: a TTL left to spend, a size within the MTU. */
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 l3len;
	if (((struct ethhdr *)data) + 1 > (struct ethhdr *)data_end)
		return TC_ACT_OK;
	if (((struct ethhdr *)data)->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > data_end || ip->ttl <= 1)
			return TC_ACT_OK;
		l3len = bpf_ntohs(ip->tot_len);
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
			return TC_ACT_OK;
		l3len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	}
	if (skb->gso_size) { /* GSO: per segment */
		__u32 mtu = 0;
		if (bpf_check_mtu(skb, rt.ifindex, &mtu, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
			return TC_ACT_OK;
	} else if (l3len > rt.mtu) {
		return TC_ACT_OK;
	}

	struct bw_ct_entry *dct = 0;
	int r = handle(skb, BW_INGRESS, rt.ifindex, 1, &dct);
	if (r == DEFER)
		return TC_ACT_OK;
	if (r != TC_ACT_OK)
		return r; /* dropped */
	if (skb->mark) {
		/* assigned to the proxy for the destination's L7 rules */
		trace_at(skb, BW_INGRESS, rt.ifindex, BW_TRACE_TO_PROXY);
		return r;
	}

	/* Route it: deciding read the packet, it did not move it. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > data_end)
			return TC_ACT_SHOT;
		__u32 check = ip->check;
		check += bpf_htons(0x0100);
		ip->check = (__u16)(check + (check >= 0xffff));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_SHOT;
		ip6->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, rt.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, rt.smac, ETH_ALEN);
	count(BW_EGRESS, BW_CODE_LOCAL_DELIVERY, skb->len);
	trace_at(skb, BW_INGRESS, rt.ifindex, BW_TRACE_TO_ENDPOINT);
	return bpf_redirect_peer(rt.ifindex, 0);
}

/* proxy_hairpinned takes a packet that this endpoint's own ingress hook
 * (tc egress, where no socket can be assigned) sent to the proxy and turned
 * back into this interface's ingress: it is assigned to the proxy here, or
 * dropped. */
static __noinline int proxy_hairpinned(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse(skb, &p) != PARSE_OK || assign_proxy(skb, &p))
		return drop_no_proxy(skb, skb->ifindex, BW_INGRESS, &p, 0);
	return TC_ACT_OK;
}

/* hairpin_to_proxy turns a packet for the proxy from this interface's
 * egress back into its ingress (bpf_redirect), addressed to the interface
 * itself, so that bulwark_from_pod assigns it to the proxy's socket. The
 * source MAC of a packet the node sends out of the veth is the veth's own. */
static __always_inline int hairpin_to_proxy(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_SHOT;
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

SEC("tc")
int bulwark_from_pod(struct __sk_buff *skb)
{
	if (is_to_proxy_mark(skb->mark))
		return proxy_hairpinned(skb); /* decided at this endpoint's ingress hook */
	struct bw_ct_entry *ct = 0;
	skb->cb[0] = 0;
	skb->cb[1] = 0;
	int r = handle(skb, BW_EGRESS, skb->ifindex, 0, &ct);
	if (r != TC_ACT_OK)
		return r; /* dropped */
	if (skb->mark) {
		/* assigned to the L7 proxy */
		trace_at(skb, BW_EGRESS, skb->ifindex, BW_TRACE_TO_PROXY);
		return r;
	}
	r = local_deliver(skb, ct);
	/* passed to the stack, or delivered to a local pod (whose to-endpoint
	 * trace local_deliver emitted); one the destination dropped is not
	 * traced */
	if (r == TC_ACT_OK)
		trace_at(skb, BW_EGRESS, skb->ifindex, skb->mark ? BW_TRACE_TO_PROXY : BW_TRACE_TO_STACK);
	else if (r == TC_ACT_REDIRECT)
		trace_at(skb, BW_EGRESS, skb->ifindex, BW_TRACE_FROM_ENDPOINT);
	return r;
}

SEC("tc")
int bulwark_to_pod(struct __sk_buff *skb)
{
	struct bw_ct_entry *ct = 0;
	skb->cb[0] = 0;
	int r = handle(skb, BW_INGRESS, skb->ifindex, 0, &ct);
	if (r != TC_ACT_OK)
		return r;
	if (is_to_proxy_mark(skb->mark)) {
		trace_at(skb, BW_INGRESS, skb->ifindex, BW_TRACE_TO_PROXY);
		return hairpin_to_proxy(skb);
	}
	trace_at(skb, BW_INGRESS, skb->ifindex, BW_TRACE_TO_ENDPOINT);
	return r;
}

/* bulwark_clock writes bpf_jiffies64() into the first 8 bytes of its packet:
 * userspace runs it (BPF_PROG_TEST_RUN) to read the conntrack clock. */
SEC("tc")
int bulwark_clock(struct __sk_buff *skb)
{
	__u64 now = bpf_jiffies64();
	bpf_skb_store_bytes(skb, 0, &now, sizeof(now), 0);
	return TC_ACT_OK;
}
