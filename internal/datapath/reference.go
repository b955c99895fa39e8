package datapath

import (
	"github.com/bulwark-net/bulwark/internal/datapath/event"
	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// RefDecision is the outcome of ReferenceLookup.
type RefDecision struct {
	Verdict   resolved.Verdict // Allow, Deny, Redirect or AuditDeny (passes)
	Reason    event.DropReason // set when Deny, and the would-be reason when AuditDeny
	RuleID    uint32           // 0 for a default verdict
	ProxyPort uint16
	// Audited: a Redirect that an audit-mode deny flags (enforced, the deny
	// would win); RuleID names the audit policies, Reason is the would-be
	// reason.
	Audited bool
}

// ReferenceLookup evaluates a new flow of an endpoint the way the C
// policy_lookup does, on the same compiled tables: the selectors of the
// peer in ascending order, per selector the longest port prefix under the
// packet's protocol, else (not for TCP, UDP, SCTP, ICMP) under protocol 0; the strongest
// verdict wins (deny > redirect > allow), first found on a tie; an
// audit-deny value (the first found names the decision) turns an allow,
// or a default that is not enforced, into AuditDeny, and flags a redirect
// to a proxy (Audited); no match = the
// direction's default (deny when enforced, audit-deny when audited). A redirect without a proxy port is a drop
// (ReasonProxyUnavailable), as the program decides it.
func (c *Compiled) ReferenceLookup(epID uint32, dir resolved.Direction, peer identity.NumericIdentity,
	proto resolved.Protocol, port uint16) RefDecision {
	ep := c.Endpoints[epID]
	if ep == nil {
		return RefDecision{Verdict: resolved.Deny, Reason: event.ReasonEndpointNotReady}
	}
	if _, over := c.Overflowed[peer]; over {
		return RefDecision{Verdict: resolved.Deny, Reason: event.ReasonTableOverflow}
	}
	icmp := proto == resolved.ProtoICMP || proto == resolved.ProtoICMPv6
	if icmp {
		port = 0
	}
	var best RefDecision
	var auditSeen bool
	var auditRule uint32
	rank := func(v resolved.Verdict) int {
		switch v {
		case resolved.Deny:
			return 3
		case resolved.Redirect:
			return 2
		case resolved.Allow:
			return 1
		}
		return 0
	}
	for _, sel := range c.SelectorLists[peer] {
		v, ok := ep.lpm(dir, sel, proto, port)
		if !ok && !hasOwnEntries(proto) {
			v, ok = ep.lpm(dir, sel, resolved.ProtoAny, port)
		}
		if !ok {
			continue
		}
		if (v.Verdict == resolved.AuditDeny || v.Audit) && !auditSeen {
			auditSeen, auditRule = true, v.RuleID
		}
		if rank(v.Verdict) > rank(best.Verdict) {
			best = RefDecision{Verdict: v.Verdict, RuleID: v.RuleID, ProxyPort: v.ProxyPort}
			if v.Verdict == resolved.Deny {
				break
			}
		}
	}
	enforced := ep.EnforceIngress
	if dir == resolved.Egress {
		enforced = ep.EnforceEgress
	}
	if auditSeen && (best.Verdict == resolved.Allow || (best.Verdict == resolved.None && !enforced)) {
		// An audit-mode deny flags what would pass anyway.
		return RefDecision{Verdict: resolved.AuditDeny, Reason: event.ReasonPolicyDenyRule, RuleID: auditRule}
	}
	if auditSeen && best.Verdict == resolved.Redirect && best.ProxyPort != 0 {
		// The connection goes to the proxy (its L7 rules apply), flagged.
		return RefDecision{Verdict: resolved.Redirect, Reason: event.ReasonPolicyDenyRule, RuleID: auditRule,
			ProxyPort: best.ProxyPort, Audited: true}
	}
	switch best.Verdict {
	case resolved.Deny:
		best.Reason = event.ReasonPolicyDenyRule
	case resolved.Redirect:
		if best.ProxyPort == 0 {
			// Rule zero: no proxy to enforce the L7 rules, the flow drops
			// (the program's handle_full, after policy_lookup).
			best.Verdict, best.Reason = resolved.Deny, event.ReasonProxyUnavailable
		}
	case resolved.None:
		if enforced {
			return RefDecision{Verdict: resolved.Deny, Reason: event.ReasonPolicyDenied}
		}
		audited := ep.AuditIngress
		if dir == resolved.Egress {
			audited = ep.AuditEgress
		}
		if audited {
			return RefDecision{Verdict: resolved.AuditDeny, Reason: event.ReasonPolicyDenied}
		}
		return RefDecision{Verdict: resolved.Allow}
	}
	return best
}

// lpm is the longest-prefix match of the port under (dir, sel, proto).
func (ep *CompiledEndpoint) lpm(dir resolved.Direction, sel resolved.SelectorID, proto resolved.Protocol, port uint16) (TableValue, bool) {
	for bits := 16; bits >= 0; bits-- {
		mask := uint16(0)
		if bits > 0 {
			mask = uint16(0xffff << (16 - bits))
		}
		k := TableKey{Dir: dir, Selector: sel, Proto: proto, Port: port & mask, PortBits: uint8(bits)}
		if v, ok := ep.Entries[k]; ok {
			return v, true
		}
	}
	return TableValue{}, false
}
