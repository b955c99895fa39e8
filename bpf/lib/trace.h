/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bulwark datapath: trace events (Cilium's TRACE), requested by the hooks
 * through skb->cb and emitted where the packet went. */
#ifndef BULWARK_LIB_TRACE_H
#define BULWARK_LIB_TRACE_H

static __always_inline void trace_request(struct __sk_buff *skb, __u8 dir, __u32 trace)
{
	if (dir == BW_EGRESS)
		skb->cb[1] = trace;
	else
		skb->cb[0] = trace;
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

#endif /* BULWARK_LIB_TRACE_H */
