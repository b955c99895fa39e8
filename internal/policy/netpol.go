package policy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/policy/selector"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Kinds of policy documents.
const (
	KindNetworkPolicy = "NetworkPolicy"
	KindCNP           = "CiliumNetworkPolicy"
	KindCCNP          = "CiliumClusterwideNetworkPolicy"
)

// k8sSelector converts a Kubernetes label selector whose keys are plain pod
// (or namespace, with prefix) label keys: every key gets source k8s.
func k8sSelector(ls *metav1.LabelSelector, keyPrefix string) (selector.Selector, error) {
	if ls == nil {
		return selector.All(), nil
	}
	var reqs []selector.Requirement
	for k, v := range ls.MatchLabels {
		reqs = append(reqs, selector.Requirement{Source: identity.SourceK8s, Key: keyPrefix + k, Op: selector.In, Values: []string{v}})
	}
	for i, e := range ls.MatchExpressions {
		r := selector.Requirement{Source: identity.SourceK8s, Key: keyPrefix + e.Key, Values: e.Values}
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			r.Op = selector.In
		case metav1.LabelSelectorOpNotIn:
			r.Op = selector.NotIn
		case metav1.LabelSelectorOpExists:
			r.Op = selector.Exists
		case metav1.LabelSelectorOpDoesNotExist:
			r.Op = selector.DoesNotExist
		default:
			return selector.Selector{}, fmt.Errorf("matchExpressions[%d].operator: unknown operator %q", i, e.Operator)
		}
		if (r.Op == selector.In || r.Op == selector.NotIn) && len(e.Values) == 0 {
			return selector.Selector{}, fmt.Errorf("matchExpressions[%d]: operator %s needs values", i, e.Operator)
		}
		reqs = append(reqs, r)
	}
	return selector.New(reqs...), nil
}

func nsIs(ns string) selector.Requirement {
	return selector.Requirement{Source: identity.SourceK8s, Key: identity.LabelNamespace, Op: selector.In, Values: []string{ns}}
}

// isPod requires the namespace label: only pods carry it (reserved and CIDR
// identities do not).
var isPod = selector.Requirement{Source: identity.SourceK8s, Key: identity.LabelNamespace, Op: selector.Exists}

// cidrPeer returns the selector of a prefix minus its excepts: identities
// labelled with the prefix and with none of the excepts. Excepts outside the
// prefix are ignored (they could not select anything in it).
func cidrPeer(p netip.Prefix, excepts []netip.Prefix) peerSpec {
	reqs := []selector.Requirement{{Source: identity.SourceCIDR, Key: identity.CIDRKey(p), Op: selector.Exists}}
	for _, e := range excepts {
		if e.Addr().Is4() == p.Addr().Is4() && p.Bits() <= e.Bits() && p.Contains(e.Addr()) {
			reqs = append(reqs, selector.Requirement{Source: identity.SourceCIDR, Key: identity.CIDRKey(e), Op: selector.DoesNotExist})
		}
	}
	return labelPeer(selector.New(reqs...))
}

// compileNetworkPolicy translates a Kubernetes NetworkPolicy.
//
// Semantics (Kubernetes API reference): the policy selects pods of its
// namespace by podSelector; policyTypes default to Ingress, plus Egress when
// egress rules exist; a selected pod is default-deny for each policy type.
// A rule with no from/to allows every peer (pods, host and outside world);
// no ports allows every port and protocol; a peer podSelector alone selects
// in the policy's namespace, namespaceSelector alone selects every pod of
// the matching namespaces, both select their intersection. ipBlock is a
// CIDR peer, as Cilium implements it: it never selects pods (pod IPs carry
// their pod identity), only addresses outside the cluster.
func compileNetworkPolicy(np *networkingv1.NetworkPolicy) (*compiledPolicy, error) {
	ref := resolved.PolicyRef{Kind: KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}
	where := "NetworkPolicy " + ref.String()
	if np.Name == "" {
		return nil, fmt.Errorf("NetworkPolicy: %w", fieldErrorf("metadata.name", "empty"))
	}
	if np.Namespace == "" {
		return nil, fmt.Errorf("%s: %w", where, fieldErrorf("metadata.namespace", "empty"))
	}
	subject, err := k8sSelector(&np.Spec.PodSelector, "")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, fieldErrorf("spec.podSelector", "%v", err))
	}
	audit, err := auditMode(np.Annotations)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	rule := &compiledRule{policy: ref, audit: audit, path: "spec", subject: subject.And(nsIs(np.Namespace))}
	cp := &compiledPolicy{ref: ref, audit: audit, rules: []*compiledRule{rule}}

	// Without policyTypes: Ingress, plus Egress when egress rules exist.
	// With policyTypes: exactly the listed directions; a section for a
	// direction that is not listed has no effect at all.
	ingress, egress := true, len(np.Spec.Egress) > 0
	if len(np.Spec.PolicyTypes) > 0 {
		ingress, egress = false, false
	}
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		default:
			return nil, fmt.Errorf("%s: %w", where, fieldErrorf(fmt.Sprintf("spec.policyTypes[%d]", i), "unknown type %q (Ingress or Egress)", t))
		}
	}
	// Sections of directions left out of policyTypes are still checked
	// (the API server validates them) but add nothing.
	in := &rule.dirs[resolved.Ingress]
	in.present, in.defaultDeny = ingress, ingress
	for i, r := range np.Spec.Ingress {
		path := fmt.Sprintf("spec.ingress[%d]", i)
		nc := len(cp.cidrs)
		it, err := netpolItem(cp, np.Namespace, r.From, r.Ports, path, "from")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if !ingress {
			cp.cidrs = cp.cidrs[:nc] // an ignored ipBlock names no prefix
			continue
		}
		in.items = append(in.items, it)
	}
	out := &rule.dirs[resolved.Egress]
	out.present, out.defaultDeny = egress, egress
	for i, r := range np.Spec.Egress {
		path := fmt.Sprintf("spec.egress[%d]", i)
		nc := len(cp.cidrs)
		it, err := netpolItem(cp, np.Namespace, r.To, r.Ports, path, "to")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if !egress {
			cp.cidrs = cp.cidrs[:nc]
			continue
		}
		for _, p := range it.ports {
			if p.name != "" {
				cp.egressNamed = true
			}
		}
		out.items = append(out.items, it)
	}
	return cp, nil
}

func netpolItem(cp *compiledPolicy, ns string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, path, field string) (ruleItem, error) {
	it := ruleItem{verdict: resolved.Allow, path: path}
	if len(peers) == 0 {
		it.peers = []peerSpec{labelPeer(selector.All())}
	}
	for j, p := range peers {
		pp := fmt.Sprintf("%s.%s[%d]", path, field, j)
		if p.IPBlock != nil {
			if p.PodSelector != nil || p.NamespaceSelector != nil {
				return it, fieldErrorf(pp, "ipBlock cannot be combined with podSelector or namespaceSelector")
			}
			cidr, err := identity.ParsePrefix(p.IPBlock.CIDR)
			if err != nil || !strings.Contains(p.IPBlock.CIDR, "/") {
				return it, fieldErrorf(pp+".ipBlock.cidr", "%q is not a CIDR prefix", p.IPBlock.CIDR)
			}
			var excepts []netip.Prefix
			for k, e := range p.IPBlock.Except {
				ep, err := identity.ParsePrefix(e)
				if err != nil {
					return it, fieldErrorf(fmt.Sprintf("%s.ipBlock.except[%d]", pp, k), "%q is not a CIDR prefix", e)
				}
				excepts = append(excepts, ep)
				cp.cidrs = append(cp.cidrs, ep)
			}
			cp.cidrs = append(cp.cidrs, cidr)
			it.peers = append(it.peers, cidrPeer(cidr, excepts))
			continue
		}
		if p.PodSelector == nil && p.NamespaceSelector == nil {
			return it, fieldErrorf(pp, "a peer needs podSelector, namespaceSelector or ipBlock")
		}
		var reqs []selector.Requirement
		if p.PodSelector != nil {
			s, err := k8sSelector(p.PodSelector, "")
			if err != nil {
				return it, fieldErrorf(pp+".podSelector", "%v", err)
			}
			reqs = append(reqs, s.Requirements()...)
		}
		if p.NamespaceSelector != nil {
			s, err := k8sSelector(p.NamespaceSelector, identity.LabelNamespacePrefix)
			if err != nil {
				return it, fieldErrorf(pp+".namespaceSelector", "%v", err)
			}
			reqs = append(reqs, s.Requirements()...)
			reqs = append(reqs, isPod)
		} else {
			reqs = append(reqs, nsIs(ns))
		}
		it.peers = append(it.peers, labelPeer(selector.New(reqs...)))
	}
	if len(ports) == 0 {
		it.l3Only = true
		return it, nil
	}
	for j, p := range ports {
		pp := fmt.Sprintf("%s.ports[%d]", path, j)
		proto := resolved.ProtoTCP
		if p.Protocol != nil {
			switch *p.Protocol {
			case corev1.ProtocolTCP:
			case corev1.ProtocolUDP:
				proto = resolved.ProtoUDP
			case corev1.ProtocolSCTP:
				proto = resolved.ProtoSCTP
			default:
				return it, fieldErrorf(pp+".protocol", "%q is not TCP, UDP or SCTP", *p.Protocol)
			}
		}
		ps := portSpec{proto: proto}
		switch {
		case p.Port == nil:
			if p.EndPort != nil {
				return it, fieldErrorf(pp+".endPort", "set without port")
			}
		case p.Port.Type == intstr.String:
			if p.EndPort != nil {
				return it, fieldErrorf(pp+".endPort", "not allowed with named port %q", p.Port.StrVal)
			}
			if p.Port.StrVal == "" {
				return it, fieldErrorf(pp+".port", "empty name")
			}
			ps.name = strings.ToLower(p.Port.StrVal)
		default:
			n := p.Port.IntVal
			if n < 1 || n > 65535 {
				return it, fieldErrorf(pp+".port", "%d is out of range 1-65535", n)
			}
			ps.lo, ps.hi = uint16(n), uint16(n)
			if p.EndPort != nil {
				if *p.EndPort < n || *p.EndPort > 65535 {
					return it, fieldErrorf(pp+".endPort", "%d must be in %d-65535", *p.EndPort, n)
				}
				ps.hi = uint16(*p.EndPort)
			}
		}
		it.ports = append(it.ports, ps)
	}
	return it, nil
}
