package validate

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// dnsNamedPorts are container port names that mean DNS.
var dnsNamedPorts = map[string]bool{"dns": true, "domain": true, "dns-udp": true}

// lintDNSForFQDN (lint d): a rule uses toFQDNs, or egress HTTP rules with a
// host, for pods that are in egress default deny, and no egress rule allows
// those pods DNS (UDP 53) to kube-dns. The FQDN rules then never learn an
// address (the DNS proxy sees no query), so the traffic they appear to
// allow is dropped. Without pods in the input, the check is whether any
// egress rule of the input allows DNS at all.
func (l *linter) lintDNSForFQDN() []Finding {
	var out []Finding
	kubeDNS := l.kubeDNSPods()
	for _, o := range l.set.Objects {
		p, ok := o.Obj.(api.Policy)
		if !ok {
			continue
		}
		r := &reporter{obj: o}
		ns := p.Meta().Namespace
		for ri, rule := range p.Rules() {
			if rule.EndpointSelector == nil {
				continue
			}
			usePath := fqdnUse(field.NewPath(p.RulePath(ri)), &rule)
			if usePath == nil {
				continue
			}
			subject, err := api.EffectiveSubjectSelector(ns, *rule.EndpointSelector).Selector()
			if err != nil {
				continue
			}
			if !l.havePods {
				if !l.dnsAllowed(nil, kubeDNS) {
					r.warnf("lint/fqdn-without-dns", usePath,
						"FQDN-based egress needs DNS, but no egress rule in the input allows DNS (UDP 53) to kube-dns; the selected pods are in egress default deny, so their lookups fail and the names never resolve to allowed addresses")
				}
				continue
			}
			for _, pod := range l.pods {
				if !subject.Matches(pod.labels) || !l.egressDefaultDeny(pod) || l.dnsAllowed(&pod, kubeDNS) {
					continue
				}
				r.warnf("lint/fqdn-without-dns", usePath,
					"pod %s/%s is in egress default deny and no egress rule allows it DNS (UDP 53) to kube-dns: its lookups fail, so the FQDN rules never learn an address to allow",
					pod.pod.Namespace, pod.pod.Name)
				break
			}
		}
		out = append(out, r.out...)
	}
	return out
}

// fqdnUse returns the path of the first toFQDNs or egress HTTP host rule of
// a rule, or nil.
func fqdnUse(rp *field.Path, rule *api.Rule) *field.Path {
	for i, eg := range rule.Egress {
		if len(eg.ToFQDNs) > 0 {
			return rp.Child("egress").Index(i).Child("toFQDNs")
		}
		for j, pr := range eg.ToPorts {
			if pr.Rules == nil {
				continue
			}
			for k, h := range pr.Rules.HTTP {
				if h.Host != "" {
					return rp.Child("egress").Index(i).Child("toPorts").Index(j).Child("rules", "http").Index(k).Child("host")
				}
			}
		}
	}
	return nil
}

// kubeDNSPods returns the label sets of the cluster DNS pods: those of the
// input labelled k8s-app=kube-dns, else the standard kube-system/kube-dns.
func (l *linter) kubeDNSPods() []labels.Set {
	var out []labels.Set
	for _, p := range l.pods {
		if p.pod.Labels["k8s-app"] == "kube-dns" {
			out = append(out, p.labels)
		}
	}
	if len(out) == 0 {
		synthetic := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
			Name: "coredns", Namespace: metav1.NamespaceSystem, Labels: map[string]string{"k8s-app": "kube-dns"},
		}}
		out = append(out, PodSelectorLabels(l.set, synthetic))
	}
	return out
}

// egressDefaultDeny reports whether some policy puts the pod in egress
// default deny.
func (l *linter) egressDefaultDeny(pod lintPod) bool {
	for _, p := range l.set.Policies() {
		ns := p.Meta().Namespace
		for _, rule := range p.Rules() {
			if rule.EndpointSelector == nil || !rule.DefaultDenyEgress() {
				continue
			}
			if sel, err := api.EffectiveSubjectSelector(ns, *rule.EndpointSelector).Selector(); err == nil && sel.Matches(pod.labels) {
				return true
			}
		}
	}
	for _, np := range l.set.NetworkPolicies {
		if np.Namespace != pod.pod.Namespace || !hasPolicyType(np, networkingv1.PolicyTypeEgress) {
			continue
		}
		if sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err == nil && sel.Matches(labels.Set(pod.pod.Labels)) {
			return true
		}
	}
	return false
}

func hasPolicyType(np *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	for _, pt := range np.Spec.PolicyTypes {
		if pt == t {
			return true
		}
	}
	return false
}

// dnsAllowed reports whether an egress allow rule selecting pod (any pod
// when pod is nil) allows UDP 53 to one of the kube-dns pods.
func (l *linter) dnsAllowed(pod *lintPod, kubeDNS []labels.Set) bool {
	for _, p := range l.set.Policies() {
		ns := p.Meta().Namespace
		for _, rule := range p.Rules() {
			if rule.EndpointSelector == nil {
				continue
			}
			if pod != nil {
				sel, err := api.EffectiveSubjectSelector(ns, *rule.EndpointSelector).Selector()
				if err != nil || !sel.Matches(pod.labels) {
					continue
				}
			}
			for _, eg := range rule.Egress {
				if ciliumPortsAllowDNS(eg.ToPorts) && ciliumPeersReach(ns, &eg, kubeDNS) {
					return true
				}
			}
		}
	}
	for _, np := range l.set.NetworkPolicies {
		if pod != nil {
			if np.Namespace != pod.pod.Namespace {
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil || !sel.Matches(labels.Set(pod.pod.Labels)) {
				continue
			}
		}
		for _, eg := range np.Spec.Egress {
			if netpolPortsAllowDNS(eg.Ports) && l.netpolPeersReach(np.Namespace, eg.To, kubeDNS) {
				return true
			}
		}
	}
	return false
}

func ciliumPortsAllowDNS(prs []api.PortRule) bool {
	if len(prs) == 0 {
		return true
	}
	for _, pr := range prs {
		if len(pr.Ports) == 0 {
			return true
		}
		for _, pp := range pr.Ports {
			if pp.Protocol != "" && pp.Protocol != api.ProtoAny && pp.Protocol != api.ProtoUDP {
				continue
			}
			spec, err := pp.Parse()
			if err != nil {
				continue
			}
			if spec.IsNamed() {
				if dnsNamedPorts[spec.Name] {
					return true
				}
				continue
			}
			lo, hi := spec.Range()
			if lo == 0 || (lo <= 53 && 53 <= hi) {
				return true
			}
		}
	}
	return false
}

// ciliumPeersReach reports whether an egress rule's peers include a
// kube-dns pod: a rule with no L3 peer reaches everything.
func ciliumPeersReach(ns string, eg *api.EgressRule, kubeDNS []labels.Set) bool {
	c := &eg.EgressCommonRule
	if len(c.ToEndpoints) == 0 && len(c.ToCIDR) == 0 && len(c.ToCIDRSet) == 0 && len(c.ToEntities) == 0 &&
		len(c.ToServices) == 0 && len(eg.ToFQDNs) == 0 && len(c.ToGroups) == 0 && len(c.ToNodes) == 0 {
		return true
	}
	for _, e := range c.ToEntities {
		if e == api.EntityAll || e == api.EntityCluster {
			return true
		}
	}
	for _, s := range c.ToEndpoints {
		sel, err := api.EffectivePeerSelector(ns, s).Selector()
		if err != nil {
			continue
		}
		for _, d := range kubeDNS {
			if sel.Matches(d) {
				return true
			}
		}
	}
	return false
}

func netpolPortsAllowDNS(ports []networkingv1.NetworkPolicyPort) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolUDP {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.String:
			if dnsNamedPorts[p.Port.StrVal] {
				return true
			}
		case p.EndPort != nil:
			if p.Port.IntVal <= 53 && 53 <= *p.EndPort {
				return true
			}
		case p.Port.IntVal == 53:
			return true
		}
	}
	return false
}

func (l *linter) netpolPeersReach(ns string, peers []networkingv1.NetworkPolicyPeer, kubeDNS []labels.Set) bool {
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if peer.IPBlock != nil {
			continue
		}
		for _, d := range kubeDNS {
			podNS := d[api.LabelPodNamespace]
			if peer.NamespaceSelector == nil {
				if podNS != ns {
					continue
				}
			} else {
				sel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
				if err != nil || !sel.Matches(NamespaceLabels(l.set, podNS)) {
					continue
				}
			}
			if peer.PodSelector != nil {
				sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
				if err != nil || !sel.Matches(podLabelsOnly(d)) {
					continue
				}
			}
			return true
		}
	}
	return false
}

// podLabelsOnly strips the Cilium-derived keys from a selector label set.
func podLabelsOnly(ls labels.Set) labels.Set {
	out := labels.Set{}
	for k, v := range ls {
		switch {
		case k == api.LabelPodNamespace, k == api.LabelServiceAccount, k == api.LabelCluster:
		case len(k) > len(api.NamespaceLabelPrefix) && k[:len(api.NamespaceLabelPrefix)] == api.NamespaceLabelPrefix:
		default:
			out[k] = v
		}
	}
	return out
}
