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
/* The parts by job, in dependency order: each uses only those before it. */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/trace.h"
#include "lib/proxy.h"
#include "lib/deliver.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Emit struct bw_event into BTF so bpf2go generates its Go twin. */
const struct bw_event *bw_event_type_anchor __attribute__((unused));

/* established passes a packet of a tracked flow whose verdict is current:
 * it records TCP progress and refreshes the expiry, writing the shared
 * entry only when something changes (both directions of a flow hit the
 * same entry, often from different CPUs). A packet the flow redirects to
 * a proxy is marked for it and, at tc ingress (the source's hook, or local
 * delivery), assigned to the proxy's socket or dropped when there is none;
 * at the destination's hook (tc egress) the caller hairpins it. */
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
