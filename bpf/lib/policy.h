/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bulwark datapath: policy decisions: ipcache identity, the selector walk
 * over the policy LPM (policy_lookup, audit_lookup). */
#ifndef BULWARK_LIB_POLICY_H
#define BULWARK_LIB_POLICY_H

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

static __always_inline __u32 ipcache_identity(const __u8 addr[16])
{
	struct bw_ipcache_key k = { .prefixlen = 128 };
	__builtin_memcpy(k.addr, addr, 16);
	struct bw_ipcache_value *v = bpf_map_lookup_elem(&bw_ipcache, &k);
	return v ? v->identity : 2; /* miss: reserved:world */
}

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

#endif /* BULWARK_LIB_POLICY_H */
