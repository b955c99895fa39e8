/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bulwark datapath: the L7 redirect (Cilium's BPF TPROXY): marks, socket
 * assignment, hairpin, fail-closed drops. */
#ifndef BULWARK_LIB_PROXY_H
#define BULWARK_LIB_PROXY_H

static __always_inline void redirect_to_proxy(struct __sk_buff *skb, __u16 proxy_port)
{
	skb->mark = ((__u32)proxy_port << 16) | PROXY_MARK_MAGIC;
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

#endif /* BULWARK_LIB_PROXY_H */
