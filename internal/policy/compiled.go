package policy

import (
	"net/netip"
	"strconv"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/policy/selector"
)

// portSpec is one port (range) of a rule item. Proto is never ProtoAny when
// the item has ports: "ANY" is expanded to TCP, UDP and SCTP at compile
// time. Name is set for a named port, resolved per endpoint.
type portSpec struct {
	proto    resolved.Protocol
	lo, hi   uint16 // 0..0: every port of proto
	name     string // named port (lower case); lo/hi unused
	anyProto bool   // the named port was written without a protocol (CNP ANY)
	l7       *resolved.L7Rules
}

// ruleItem is one ingress/egress element: peers × ports with a verdict.
// Invariant: l3Only ⇔ ports is empty; an item with no peers adds nothing.
type ruleItem struct {
	verdict resolved.Verdict // Allow or Deny (Redirect comes from a port's L7 rules)
	peers   []peerSpec
	l3Only  bool
	ports   []portSpec
	path    string // where it comes from in the document, for trace output
	// services are toServices peers: resolved against the Services of the
	// repository when the policy is installed (and again when they change).
	services []serviceRef
}

// serviceRef names Services whose backends are peers: one by name, or all
// those of a namespace ("" for every namespace) whose labels match.
type serviceRef struct {
	namespace string
	name      string             // set: one Service
	labels    *selector.Selector // set: Services selected by their labels
}

// section is a rule's table for one direction.
type section struct {
	present     bool // the rule has a section for this direction
	defaultDeny bool // selected endpoints are default-deny in this direction
	items       []ruleItem
}

// compiledRule is one rule of a policy, translated to selectors.
type compiledRule struct {
	policy  resolved.PolicyRef
	audit   bool   // the policy is in audit mode (see audit.go)
	index   int    // rule index within the policy (stable order)
	path    string // "spec", "specs[1]", or "spec" for NetworkPolicy
	subject selector.Selector
	dirs    [2]section // indexed by resolved.Direction
}

// compiledPolicy is a policy document translated to rules.
type compiledPolicy struct {
	ref   resolved.PolicyRef
	audit bool // policy.bulwark.io/audit: "true"; every rule's audit is the same
	rules []*compiledRule
	// cidrs are the prefixes the policy's CIDR peers name (with excepts):
	// each gets a local identity and an ipcache entry.
	cidrs []netip.Prefix
	// egressNamed: an egress item names a port, resolved against every
	// pod's ports, so endpoints selected by the policy depend on them.
	egressNamed bool
	// usesServices: some item has toServices peers.
	usesServices bool
}

func (p *compiledPolicy) peers() []peerSpec {
	var out []peerSpec
	for _, r := range p.rules {
		for d := range r.dirs {
			for _, it := range r.dirs[d].items {
				out = append(out, it.peers...)
			}
		}
	}
	return out
}

func (p portSpec) String() string {
	proto := p.proto.String()
	if p.anyProto {
		proto = "ANY"
	}
	s := proto
	switch {
	case p.name != "":
		s += "/" + p.name
	case p.lo == 0 && p.hi == 0:
		s += "/*"
	case p.lo == p.hi:
		s += "/" + strconv.Itoa(int(p.lo))
	default:
		s += "/" + strconv.Itoa(int(p.lo)) + "-" + strconv.Itoa(int(p.hi))
	}
	if p.l7 != nil {
		s += " (L7)"
	}
	return s
}

func (s serviceRef) String() string {
	ns := s.namespace
	if ns == "" {
		ns = "*"
	}
	if s.name != "" {
		return "service(" + ns + "/" + s.name + ")"
	}
	return "services(" + ns + ", labels {" + s.labels.String() + "})"
}
