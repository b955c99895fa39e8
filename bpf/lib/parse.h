/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bulwark datapath: packet parsing into struct pkt (IPv4/IPv6, extension
 * headers, fragments, L4 ports, ICMP kinds). */
#ifndef BULWARK_LIB_PARSE_H
#define BULWARK_LIB_PARSE_H

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

#endif /* BULWARK_LIB_PARSE_H */
