package policy

import (
	"github.com/bulwark-net/bulwark/internal/identity"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// refreshServicePolicies re-installs the policies with toServices peers
// after a Service changed.
func (r *Repository) refreshServicePolicies() {
	for _, ip := range r.policies {
		if ip.cp.usesServices {
			r.setPolicy(ip.cp)
		}
	}
}

// resolveServices turns toServices references into peers: the pods a
// Service's selector selects in its namespace (as Cilium does for Services
// with a selector). A Service without a selector, or one that does not
// exist, contributes no peer: its backends are not known here.
func (r *Repository) resolveServices(cp *compiledPolicy) map[*ruleItem][]peerSpec {
	out := map[*ruleItem][]peerSpec{}
	peerOf := func(svc *corev1.Service) (peerSpec, bool) {
		if len(svc.Spec.Selector) == 0 {
			return peerSpec{}, false
		}
		sel, _ := k8sSelector(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, "")
		return labelPeer(sel.And(nsIs(svc.Namespace))), true
	}
	for _, rule := range cp.rules {
		for d := range rule.dirs {
			items := rule.dirs[d].items
			for i := range items {
				it := &items[i]
				for _, ref := range it.services {
					if ref.name != "" {
						if svc, ok := r.services[EndpointKey{ref.namespace, ref.name}]; ok {
							if p, ok := peerOf(svc); ok {
								out[it] = append(out[it], p)
							}
						}
						continue
					}
					keys := make([]EndpointKey, 0, len(r.services))
					for k := range r.services {
						keys = append(keys, k)
					}
					sortKeys(keys)
					for _, k := range keys {
						svc := r.services[k]
						if ref.namespace != "" && svc.Namespace != ref.namespace {
							continue
						}
						ls := make([]identity.Label, 0, len(svc.Labels))
						for lk, lv := range svc.Labels {
							ls = append(ls, identity.Label{Source: identity.SourceK8s, Key: lk, Value: lv})
						}
						if !ref.labels.Matches(identity.NewLabels(ls...)) {
							continue
						}
						if p, ok := peerOf(svc); ok {
							out[it] = append(out[it], p)
						}
					}
				}
			}
		}
	}
	return out
}
