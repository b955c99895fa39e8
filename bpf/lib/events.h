/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bulwark datapath: events to the ring buffer: policy verdicts, drops
 * (rate-limited per flow). */
#ifndef BULWARK_LIB_EVENTS_H
#define BULWARK_LIB_EVENTS_H

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
	/* A trace does not wake the reader: it rides along with the next
	 * event that does, or the reader's poll deadline (the agent's is
	 * 200 ms), so the few traces of a connection do not each cost the
	 * reader's wakeup on the packet's path. */
	bpf_ringbuf_submit(e, type == BW_EVENT_TRACE ? BPF_RB_NO_WAKEUP : 0);
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

#endif /* BULWARK_LIB_EVENTS_H */
