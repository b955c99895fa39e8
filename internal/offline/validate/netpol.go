package validate

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// validateNetworkPolicy applies the API server's NetworkPolicy validation
// (our own implementation of the rules of k8s.io/kubernetes'
// ValidateNetworkPolicySpec).
func validateNetworkPolicy(r *reporter, np *networkingv1.NetworkPolicy) {
	spec := field.NewPath("spec")
	validateLabelSelector(r, spec.Child("podSelector"), &np.Spec.PodSelector)
	warnNonIdentityKeys(r, spec.Child("podSelector"), &np.Spec.PodSelector)
	for i, rule := range np.Spec.Ingress {
		p := spec.Child("ingress").Index(i)
		for j := range rule.Ports {
			validateNetworkPolicyPort(r, p.Child("ports").Index(j), &rule.Ports[j])
		}
		for j := range rule.From {
			validateNetworkPolicyPeer(r, p.Child("from").Index(j), &rule.From[j])
		}
	}
	for i, rule := range np.Spec.Egress {
		p := spec.Child("egress").Index(i)
		for j := range rule.Ports {
			validateNetworkPolicyPort(r, p.Child("ports").Index(j), &rule.Ports[j])
		}
		for j := range rule.To {
			validateNetworkPolicyPeer(r, p.Child("to").Index(j), &rule.To[j])
		}
	}
	types := spec.Child("policyTypes")
	if len(np.Spec.PolicyTypes) > 2 {
		r.errorf("policyTypes", types, "may not specify more than two policyTypes")
	}
	seen := map[networkingv1.PolicyType]bool{}
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress:
		default:
			r.errorf("policyTypes", types.Index(i), "unsupported value %q: supported values: \"Ingress\", \"Egress\"", string(t))
		}
		if seen[t] {
			r.errorf("policyTypes", types.Index(i), "duplicate value %q", string(t))
		}
		seen[t] = true
	}
	// A section of a direction policyTypes leaves out has no effect
	// (Kubernetes), though Cilium enforces it: say so.
	if len(np.Spec.PolicyTypes) > 0 {
		if len(np.Spec.Ingress) > 0 && !seen[networkingv1.PolicyTypeIngress] {
			r.warnf("policytypes-ignored-section", spec.Child("ingress"),
				"ignored: policyTypes does not list Ingress, so these rules neither isolate nor allow anything (Cilium would still enforce them); add Ingress to policyTypes or remove the section")
		}
		if len(np.Spec.Egress) > 0 && !seen[networkingv1.PolicyTypeEgress] {
			r.warnf("policytypes-ignored-section", spec.Child("egress"),
				"ignored: policyTypes does not list Egress, so these rules neither isolate nor allow anything (Cilium would still enforce them); add Egress to policyTypes or remove the section")
		}
	}
}

func validateNetworkPolicyPort(r *reporter, p *field.Path, port *networkingv1.NetworkPolicyPort) {
	if port.Protocol != nil {
		switch *port.Protocol {
		case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		default:
			r.errorf("protocol", p.Child("protocol"), "unsupported value %q: supported values: \"TCP\", \"UDP\", \"SCTP\"", string(*port.Protocol))
		}
	}
	if port.Port == nil {
		if port.EndPort != nil {
			r.errorf("port", p.Child("endPort"), "may not be specified when port is not specified")
		}
		return
	}
	if port.Port.Type == intstr.Int {
		for _, msg := range validation.IsValidPortNum(int(port.Port.IntVal)) {
			r.errorf("port", p.Child("port"), "invalid port %d: %s", port.Port.IntVal, msg)
		}
		if port.EndPort != nil {
			if *port.EndPort < port.Port.IntVal {
				r.errorf("port", p.Child("endPort"), "endPort %d must be greater than or equal to port %d", *port.EndPort, port.Port.IntVal)
			}
			for _, msg := range validation.IsValidPortNum(int(*port.EndPort)) {
				r.errorf("port", p.Child("endPort"), "invalid port %d: %s", *port.EndPort, msg)
			}
		}
		return
	}
	if port.EndPort != nil {
		r.errorf("port", p.Child("endPort"), "may not be specified when port is a named port (%q)", port.Port.StrVal)
	}
	for _, msg := range validation.IsValidPortName(port.Port.StrVal) {
		r.errorf("port", p.Child("port"), "invalid port name %q: %s", port.Port.StrVal, msg)
	}
}

func validateNetworkPolicyPeer(r *reporter, p *field.Path, peer *networkingv1.NetworkPolicyPeer) {
	selectors := peer.PodSelector != nil || peer.NamespaceSelector != nil
	switch {
	case !selectors && peer.IPBlock == nil:
		r.errorf("peer", p, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
	case selectors && peer.IPBlock != nil:
		r.errorf("peer", p.Child("ipBlock"), "may not specify more than 1 peer: ipBlock cannot be combined with podSelector or namespaceSelector")
	}
	validateLabelSelector(r, p.Child("podSelector"), peer.PodSelector)
	warnNonIdentityKeys(r, p.Child("podSelector"), peer.PodSelector)
	validateLabelSelector(r, p.Child("namespaceSelector"), peer.NamespaceSelector)
	if peer.IPBlock == nil {
		return
	}
	bp := p.Child("ipBlock")
	if peer.IPBlock.CIDR == "" {
		r.errorf("cidr", bp.Child("cidr"), "required")
		return
	}
	cidr, err := netip.ParsePrefix(peer.IPBlock.CIDR)
	if err != nil {
		r.errorf("cidr", bp.Child("cidr"), "invalid CIDR %q: want a prefix such as 10.0.0.0/8", peer.IPBlock.CIDR)
		return
	}
	for i, e := range peer.IPBlock.Except {
		ep := bp.Child("except").Index(i)
		except, err := netip.ParsePrefix(e)
		if err != nil {
			r.errorf("cidr", ep, "invalid CIDR %q: want a prefix such as 10.0.0.0/8", e)
			continue
		}
		if except.Addr().Is4() != cidr.Addr().Is4() || !cidr.Contains(except.Addr()) || except.Bits() <= cidr.Bits() {
			r.errorf("cidr", ep, "except %s must be a strict subset of cidr %s", except, cidr)
		}
	}
}
