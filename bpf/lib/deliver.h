/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bulwark datapath: local delivery's route lookup (the node's fib, to a
 * local endpoint's veth). */
#ifndef BULWARK_LIB_DELIVER_H
#define BULWARK_LIB_DELIVER_H

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

#endif /* BULWARK_LIB_DELIVER_H */
