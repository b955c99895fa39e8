package api

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Policy is what the resolver needs of either cilium.io/v2 policy kind.
type Policy interface {
	// PolicyKind is KindCNP or KindCCNP.
	PolicyKind() string
	// Meta is the object metadata (Namespace is "" for KindCCNP).
	Meta() *metav1.ObjectMeta
	// Rules returns spec (if set) followed by specs, in document order. The
	// slice aliases the document.
	Rules() []Rule
	// RulePath returns the JSON path of Rules()[i]: "spec" or "specs[j]".
	RulePath(i int) string
}

func rules(spec *Rule, specs []Rule) []Rule {
	out := make([]Rule, 0, len(specs)+1)
	if spec != nil {
		out = append(out, *spec)
	}
	return append(out, specs...)
}

func rulePath(spec *Rule, i int) string {
	if spec != nil {
		if i == 0 {
			return "spec"
		}
		i--
	}
	return "specs[" + itoa(i) + "]"
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b [20]byte
	n := len(b)
	for i > 0 {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
	}
	return string(b[n:])
}

// PolicyKind implements Policy.
func (p *CiliumNetworkPolicy) PolicyKind() string { return KindCNP }

// Meta implements Policy.
func (p *CiliumNetworkPolicy) Meta() *metav1.ObjectMeta { return &p.ObjectMeta }

// Rules implements Policy.
func (p *CiliumNetworkPolicy) Rules() []Rule { return rules(p.Spec, p.Specs) }

// RulePath implements Policy.
func (p *CiliumNetworkPolicy) RulePath(i int) string { return rulePath(p.Spec, i) }

// PolicyKind implements Policy.
func (p *CiliumClusterwideNetworkPolicy) PolicyKind() string { return KindCCNP }

// Meta implements Policy.
func (p *CiliumClusterwideNetworkPolicy) Meta() *metav1.ObjectMeta { return &p.ObjectMeta }

// Rules implements Policy.
func (p *CiliumClusterwideNetworkPolicy) Rules() []Rule { return rules(p.Spec, p.Specs) }

// RulePath implements Policy.
func (p *CiliumClusterwideNetworkPolicy) RulePath(i int) string { return rulePath(p.Spec, i) }

// Subject returns the rule's subject selector (endpointSelector, or
// nodeSelector for host policies) and whether it is a node selector.
func (r *Rule) Subject() (sel *EndpointSelector, isNode bool) {
	if r.EndpointSelector != nil {
		return r.EndpointSelector, false
	}
	return r.NodeSelector, r.NodeSelector != nil
}

// DefaultDenyIngress reports whether the rule puts its subjects into
// ingress default deny: it has at least one ingress or ingressDeny rule (as
// in Cilium, "ingress: []" does not count, "ingress: [{}]" does) and
// enableDefaultDeny.ingress is not false.
func (r *Rule) DefaultDenyIngress() bool {
	present := len(r.Ingress) > 0 || len(r.IngressDeny) > 0
	return present && (r.EnableDefaultDeny.Ingress == nil || *r.EnableDefaultDeny.Ingress)
}

// DefaultDenyEgress is DefaultDenyIngress for egress.
func (r *Rule) DefaultDenyEgress() bool {
	present := len(r.Egress) > 0 || len(r.EgressDeny) > 0
	return present && (r.EnableDefaultDeny.Egress == nil || *r.EnableDefaultDeny.Egress)
}

// HasL7 reports whether the port rule carries any L7 rule.
func (pr *PortRule) HasL7() bool {
	r := pr.Rules
	return r != nil && (len(r.HTTP) > 0 || len(r.Kafka) > 0 || len(r.DNS) > 0 || r.L7Proto != "" || len(r.L7) > 0)
}
