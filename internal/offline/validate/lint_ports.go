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

// declares reports whether a pod has a container port with that name.
func (p lintPod) declares(name string) bool {
	for _, cs := range [][]corev1.Container{p.pod.Spec.InitContainers, p.pod.Spec.Containers} {
		for _, c := range cs {
			for _, cp := range c.Ports {
				if cp.Name == name {
					return true
				}
			}
		}
	}
	return false
}

// lintNamedPorts (lint g): a named port that none of the pods it resolves
// on declares. Named ports resolve on the destination: the selected pods
// for ingress, the peers for egress. Such a port allows nothing.
func (l *linter) lintNamedPorts(r *reporter, p api.Policy) {
	ns := p.Meta().Namespace
	for ri, rule := range p.Rules() {
		if rule.EndpointSelector == nil {
			continue
		}
		rp := field.NewPath(p.RulePath(ri))
		subject := l.matching([]api.EndpointSelector{api.EffectiveSubjectSelector(ns, *rule.EndpointSelector)})
		for i, in := range rule.Ingress {
			l.namedPorts(r, rp.Child("ingress").Index(i), in.ToPorts, subject, "selected pods")
		}
		for i, eg := range rule.Egress {
			if len(eg.ToEndpoints) == 0 {
				continue
			}
			peers := make([]api.EndpointSelector, len(eg.ToEndpoints))
			for j, s := range eg.ToEndpoints {
				peers[j] = api.EffectivePeerSelector(ns, s)
			}
			l.namedPorts(r, rp.Child("egress").Index(i), eg.ToPorts, l.matching(peers), "peer pods")
		}
	}
}

// matching returns the pods any of the selectors matches, or nil when a
// selector is confined to a namespace without pods in the input (unknown).
func (l *linter) matching(sels []api.EndpointSelector) []lintPod {
	var out []lintPod
	for _, s := range sels {
		if ns := selectorNamespace(s); ns != "" && !l.podNS[ns] {
			return nil
		}
		sel, err := s.Selector()
		if err != nil {
			return nil
		}
		for _, p := range l.pods {
			if sel.Matches(p.labels) {
				out = append(out, p)
			}
		}
	}
	return out
}

func (l *linter) namedPorts(r *reporter, p *field.Path, prs []api.PortRule, pods []lintPod, who string) {
	if len(pods) == 0 {
		return
	}
	for j, pr := range prs {
		for k, pp := range pr.Ports {
			spec, err := pp.Parse()
			if err != nil || !spec.IsNamed() {
				continue
			}
			found := false
			for _, pod := range pods {
				if pod.declares(spec.Name) {
					found = true
					break
				}
			}
			if !found {
				r.warnf("lint/named-port", p.Child("toPorts").Index(j).Child("ports").Index(k).Child("port"),
					"named port %q is not declared by any of the %s (%d in the input): it allows nothing", spec.Name, who, len(pods))
			}
		}
	}
}

// lintNetworkPolicyNamedPorts is lint g for NetworkPolicy ingress: named
// ports resolve on the pods the policy selects.
func (l *linter) lintNetworkPolicyNamedPorts(r *reporter, np *networkingv1.NetworkPolicy) {
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		return
	}
	var pods []lintPod
	for _, p := range l.pods {
		if p.pod.Namespace == np.Namespace && sel.Matches(labels.Set(p.pod.Labels)) {
			pods = append(pods, p)
		}
	}
	if len(pods) == 0 {
		return
	}
	for i, in := range np.Spec.Ingress {
		for j, port := range in.Ports {
			if port.Port == nil || port.Port.Type != intstr.String {
				continue
			}
			found := false
			for _, pod := range pods {
				if pod.declares(port.Port.StrVal) {
					found = true
					break
				}
			}
			if !found {
				r.warnf("lint/named-port", field.NewPath("spec", "ingress").Index(i).Child("ports").Index(j).Child("port"),
					"named port %q is not declared by any of the selected pods (%d in the input): it allows nothing", port.Port.StrVal, len(pods))
			}
		}
	}
}
