// Package resolved holds the resolved policy of an endpoint: the contract
// between the policy engine, which computes it, and the datapath, which loads
// it into BPF maps (and the offline checker, which evaluates it in Go).
//
// Entries are a sum, not a product: an entry names a peer selector, and the
// membership of identities in selectors is given separately (Selectors), so
// "allow from the whole cluster on 80" is one entry however many identities
// the cluster has. The datapath compiles entries × membership into its own
// lookup structures.
//
// Invariants every producer and consumer keeps:
//   - Deny wins: a packet matched by any Deny entry is denied, whatever else
//     matches.
//   - Otherwise a matching Redirect sends it to the proxy (L7 rules apply),
//     otherwise a matching Allow forwards it.
//   - Nothing matches: denied if the direction is Enforced (default deny),
//     allowed if not.
//
// Audit mode (a policy annotated policy.bulwark.io/audit: "true") never
// drops; it flags what it would have dropped, where the enforcing policies
// let the packet through:
//   - The audit policy's deny rules become AuditDeny entries. They never
//     let a packet through that would drop without them: an enforcing Deny
//     wins, and under an Enforced default with no Allow the packet drops.
//     Where an Allow matches too, or the direction is not Enforced, the
//     packet passes with an AuditDeny decision naming the audit policy.
//     Where a Redirect matches, the decision stays Redirect (the enforced
//     L7 rules keep applying: the proxy judges each request) and carries
//     the AuditDeny entries in Audit: enforced, the deny would have won, so
//     the connection is flagged as audited, naming the audit policy.
//   - Its default deny applies only as audit: a direction selected only by
//     audit-mode policies is not Enforced but Audit, and a packet nothing
//     matches passes with a default AuditDeny decision naming them. A
//     direction also selected by an enforcing policy stays Enforced (the
//     default deny drops), and the audit policy's allow entries count as
//     allows there, as any policy's do.
//   - Its allow rules are plain Allow entries.
package resolved

import (
	"fmt"
	"sort"

	"github.com/bulwark-net/bulwark/internal/identity"
)

// Direction of traffic relative to the endpoint.
type Direction uint8

const (
	Ingress Direction = 0 // traffic into the endpoint
	Egress  Direction = 1 // traffic leaving the endpoint
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Verdict of an entry.
type Verdict uint8

const (
	None     Verdict = 0 // no entry matched
	Allow    Verdict = 1
	Deny     Verdict = 2
	Redirect Verdict = 3 // allowed, through the L7 proxy
	// AuditDeny is a deny of a policy in audit mode. As a decision it
	// passes the packet (as Allow does) and flags it: the policy would
	// have dropped it.
	AuditDeny Verdict = 4
)

// Passes reports whether a decision with this verdict lets the packet
// through (to the proxy for Redirect).
func (v Verdict) Passes() bool { return v != Deny && v != None }

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	case Redirect:
		return "redirect"
	case AuditDeny:
		return "audit-deny"
	}
	return "none"
}

// Protocol is an IP protocol number; ProtoAny matches every protocol.
type Protocol uint8

const (
	ProtoAny    Protocol = 0
	ProtoICMP   Protocol = 1
	ProtoTCP    Protocol = 6
	ProtoUDP    Protocol = 17
	ProtoICMPv6 Protocol = 58
	ProtoSCTP   Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case ProtoAny:
		return "ANY"
	case ProtoICMP:
		return "ICMP"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoICMPv6:
		return "ICMPv6"
	case ProtoSCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// SelectorID names a peer selector (a set of identities). Membership is
// given by Selectors.
type SelectorID uint32

// PolicyRef names a policy document.
type PolicyRef struct {
	Kind      string // NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy
	Namespace string // empty for cluster-scoped kinds
	Name      string
}

// String is "namespace/name", or "name" for cluster-scoped policies.
func (r PolicyRef) String() string {
	if r.Namespace == "" {
		return r.Name
	}
	return r.Namespace + "/" + r.Name
}

// L7Rules are the application-level rules of a Redirect entry.
type L7Rules struct {
	HTTP []HTTPRule
	DNS  []DNSRule
}

// HTTPRule allows requests matching all of its set fields, as Cilium's
// Envoy translation does: Method, Path (the request target, query
// included) and Host (the authority) are RE2 regular expressions matched
// against the whole value; Headers entries are "Name" (present) or
// "Name value" / "Name: value" (split at the first space, trailing colons
// trimmed from the name; the value is literal, not a regex).
// HeaderMatches with Mismatch FAIL are further conditions; the others are
// actions taken on an allowed request whose header differs.
type HTTPRule struct {
	Method, Path, Host string
	Headers            []string
	HeaderMatches      []HeaderMatch
}

// MismatchAction is what a HeaderMatch does when the request's header
// differs from Value (Cilium's api.MismatchAction).
type MismatchAction string

const (
	MismatchFail    MismatchAction = ""        // the rule does not match
	MismatchLog     MismatchAction = "LOG"     // the rule matches; the mismatch is recorded
	MismatchAdd     MismatchAction = "ADD"     // the rule matches; Name: Value is added
	MismatchDelete  MismatchAction = "DELETE"  // the rule matches; the header is removed
	MismatchReplace MismatchAction = "REPLACE" // the rule matches; the header is set to Value
)

// HeaderMatch requires header Name to equal Value exactly (to be present
// when Value is empty). Secret references are refused by the engine.
type HeaderMatch struct {
	Name, Value string
	Mismatch    MismatchAction
}

// DNSRule allows DNS queries for a name (matchName) or a pattern (matchPattern).
type DNSRule struct {
	MatchName, MatchPattern string
}

// Entry is one line of an endpoint's table for a direction.
type Entry struct {
	Peer SelectorID // the peer identities this entry applies to
	// Proto is the IP protocol, ProtoAny for every protocol. An entry with
	// ProtoAny and PortLo == 0 is L3-only: every protocol and port (ICMP too).
	Proto Protocol
	// PortLo..PortHi is the inclusive destination port range; 0..0 means
	// every port. For ICMP, ports do not apply.
	PortLo, PortHi uint16
	Verdict        Verdict
	L7             *L7Rules    // set for Redirect
	Origin         []PolicyRef // policies whose rules produced the entry
}

// MatchesPort reports whether the entry covers proto/port.
func (e *Entry) MatchesPort(proto Protocol, port uint16) bool {
	if e.Proto != ProtoAny && e.Proto != proto {
		return false
	}
	if e.PortLo == 0 && e.PortHi == 0 {
		return true
	}
	if proto == ProtoICMP || proto == ProtoICMPv6 {
		return false // a port-specific entry never matches ICMP
	}
	return port >= e.PortLo && port <= e.PortHi
}

// DirectionPolicy is an endpoint's table for one direction.
type DirectionPolicy struct {
	// Enforced: the endpoint is default-deny in this direction.
	Enforced bool
	// Audit: not Enforced, but selected by audit-mode policies with a
	// default deny, so a packet nothing matches passes as a default
	// AuditDeny. Never set together with Enforced.
	Audit   bool
	Entries []Entry
	// Selecting lists the policies with a rule for this direction that
	// selects the endpoint: they are named when a default deny drops. When
	// Enforced, only the enforcing ones; when Audit, the audit-mode ones.
	Selecting []PolicyRef
}

// EndpointPolicy is the resolved policy of one endpoint.
type EndpointPolicy struct {
	Identity identity.NumericIdentity
	Ingress  DirectionPolicy
	Egress   DirectionPolicy
	Revision uint64
}

// Dir returns the table for a direction.
func (p *EndpointPolicy) Dir(d Direction) *DirectionPolicy {
	if d == Egress {
		return &p.Egress
	}
	return &p.Ingress
}

// Selectors gives the membership of identities in peer selectors.
type Selectors interface {
	// Selects reports whether the selector matches the identity.
	Selects(sel SelectorID, id identity.NumericIdentity) bool
}

// Decision is the reference evaluation of one packet against a table.
type Decision struct {
	Verdict Verdict // Allow, Deny, Redirect or AuditDeny: never None
	// Matched are the entries that decided (all matching deny entries for a
	// deny, all matching allow/redirect entries otherwise); empty for a
	// default decision.
	Matched []*Entry
	// Default is true when no entry matched and Enforced/not decided.
	Default bool
	// L7 is the union of the L7 rules of matching Redirect entries; nil with
	// AllowAllL7 when a plain Allow also matched (L7 wildcard, as Cilium).
	L7         *L7Rules
	AllowAllL7 bool
	// Audit are the matching AuditDeny entries of a Redirect decision: the
	// connection goes to the proxy, flagged as one they would have denied.
	Audit []*Entry
}

// AuditPolicies returns the sorted, distinct policies that flag a decision
// as audited: those behind an AuditDeny decision, or behind a Redirect
// decision's Audit entries; none otherwise.
func (d Decision) AuditPolicies(dp *DirectionPolicy) []PolicyRef {
	switch {
	case d.Verdict == AuditDeny:
		return d.Policies(dp)
	case d.Verdict == Redirect && len(d.Audit) > 0:
		return Decision{Verdict: AuditDeny, Matched: d.Audit}.Policies(dp)
	}
	return nil
}

// Policies returns the sorted, distinct policies behind a decision; for a
// default deny, the policies selecting the endpoint in that direction.
func (d Decision) Policies(dp *DirectionPolicy) []PolicyRef {
	var refs []PolicyRef
	if d.Default {
		if d.Verdict == Deny || d.Verdict == AuditDeny {
			refs = append(refs, dp.Selecting...)
		}
	} else {
		for _, e := range d.Matched {
			refs = append(refs, e.Origin...)
		}
	}
	sort.Slice(refs, func(i, j int) bool { return refs[i].String() < refs[j].String() })
	out := refs[:0]
	for i, r := range refs {
		if i > 0 && r == refs[i-1] {
			continue
		}
		out = append(out, r)
	}
	return out
}

// Lookup is the reference evaluation that the datapath mirrors: deny wins,
// then redirect (flagged when an audit-deny entry matches too), then allow (flagged as AuditDeny when an audit-deny entry
// matches too), then the default of the direction (Enforced: deny; else a
// matching audit-deny entry, else Audit: a default AuditDeny; else allow).
func (dp *DirectionPolicy) Lookup(sels Selectors, peer identity.NumericIdentity, proto Protocol, port uint16) Decision {
	var deny, allow, redirect, audit []*Entry
	for i := range dp.Entries {
		e := &dp.Entries[i]
		if !e.MatchesPort(proto, port) || !sels.Selects(e.Peer, peer) {
			continue
		}
		switch e.Verdict {
		case Deny:
			deny = append(deny, e)
		case Redirect:
			redirect = append(redirect, e)
		case Allow:
			allow = append(allow, e)
		case AuditDeny:
			audit = append(audit, e)
		}
	}
	switch {
	case len(deny) > 0:
		return Decision{Verdict: Deny, Matched: deny}
	case len(redirect) > 0:
		d := Decision{Verdict: Redirect, Matched: append(redirect, allow...), Audit: audit}
		if len(allow) > 0 {
			d.AllowAllL7 = true
		} else {
			d.L7 = &L7Rules{}
			for _, e := range redirect {
				if e.L7 != nil {
					d.L7.HTTP = append(d.L7.HTTP, e.L7.HTTP...)
					d.L7.DNS = append(d.L7.DNS, e.L7.DNS...)
				}
			}
		}
		return d
	case len(allow) > 0 && len(audit) > 0:
		return Decision{Verdict: AuditDeny, Matched: audit}
	case len(allow) > 0:
		return Decision{Verdict: Allow, Matched: allow}
	case dp.Enforced:
		return Decision{Verdict: Deny, Default: true}
	case len(audit) > 0:
		return Decision{Verdict: AuditDeny, Matched: audit}
	case dp.Audit:
		return Decision{Verdict: AuditDeny, Default: true}
	default:
		return Decision{Verdict: Allow, Default: true}
	}
}

// SelectorSet is a snapshot of selector membership that can also enumerate:
// what the datapath needs to compile its lookup structures.
type SelectorSet interface {
	Selectors
	// Identities returns the identities a selector matches, sorted.
	Identities(sel SelectorID) []identity.NumericIdentity
}
