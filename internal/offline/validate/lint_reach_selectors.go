package validate

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// lintUnreachableIngressBySelectors is lint f (lintUnreachableIngress) for
// an input without pods: policies alone. It reasons over the pods the
// selectors describe: for an ingress allow (fromEndpoints on numeric
// ports), a peer pod made of exactly the labels each peer selector
// requires (In takes its first value, Exists any value, NotIn and
// DoesNotExist leave the key out) in the namespace the selector is
// confined to, and a selected pod made the same way from the rule's
// endpointSelector. The input's policies then decide the flow between
// them with the engine: if the rule admits it but the peer's egress
// drops it, the rule is flagged, naming the egress rule that is missing.
// A real pod with more labels could still be allowed by an egress rule
// on those labels: hence a warning, worded for the described pods.
func (l *linter) lintUnreachableIngressBySelectors() []Finding {
	var policies []any
	namespaces := map[string]map[string]string{}
	for _, o := range l.set.Objects {
		switch v := o.Obj.(type) {
		case api.Policy:
			policies = append(policies, v)
		case *networkingv1.NetworkPolicy:
			policies = append(policies, v)
			namespaces[v.Namespace] = map[string]string{}
		case *corev1.Namespace:
			ls := map[string]string{}
			for k, val := range v.Labels {
				ls[k] = val
			}
			namespaces[v.Name] = ls
		}
	}
	var out []Finding
	for _, o := range l.set.Objects {
		if np, ok := o.Obj.(*networkingv1.NetworkPolicy); ok {
			out = append(out, l.netpolReachBySelectors(&reporter{obj: o}, np, policies, namespaces)...)
			continue
		}
		p, ok := o.Obj.(api.Policy)
		if !ok || p.PolicyKind() != api.KindCNP {
			continue
		}
		r := &reporter{obj: o}
		ns := p.Meta().Namespace
		for ri, rule := range p.Rules() {
			if rule.EndpointSelector == nil {
				continue
			}
			dst, ok := describedPod(ns, &rule.EndpointSelector.LabelSelector, "dst")
			if !ok || dst.ns != ns {
				continue
			}
			for i, in := range rule.Ingress {
				ports := numericPorts(in.ToPorts)
				if len(in.FromEndpoints) == 0 || len(ports) == 0 {
					continue
				}
				path := field.NewPath(p.RulePath(ri)).Child("ingress").Index(i)
				var rr ruleReach
				for j, peer := range in.FromEndpoints {
					src, ok := describedPod(ns, &peer.LabelSelector, "src")
					if !ok {
						rr.unknown = true
						continue
					}
					rr.add(l.reachBySelectors(r, path.Child("fromEndpoints").Index(j), policies, namespaces, src, dst, ports))
				}
				out = append(out, rr.findings()...)
			}
		}
	}
	return out
}

// describedGroup is a pod described by a selector: its namespace, its
// labels, and the namespace labels the selector requires.
type describedGroup struct {
	ns       string
	labels   map[string]string
	nsLabels map[string]string
	name     string
}

// describedPod builds the pod a Cilium endpoint selector describes (see
// lintUnreachableIngressBySelectors). ok is false for selectors on
// reserved identities or that no pod can match.
func describedPod(policyNS string, ls *metav1.LabelSelector, name string) (describedGroup, bool) {
	g := describedGroup{ns: policyNS, labels: map[string]string{}, nsLabels: map[string]string{}, name: name}
	if ls == nil {
		return g, true
	}
	set := func(key, val string) bool {
		src, k := splitSource(key)
		if src == identity.SourceReserved {
			return false
		}
		switch {
		case k == identity.LabelNamespace:
			g.ns = val
		case strings.HasPrefix(k, identity.LabelNamespacePrefix):
			g.nsLabels[strings.TrimPrefix(k, identity.LabelNamespacePrefix)] = val
		case strings.HasPrefix(k, "io.cilium.k8s.policy."):
			// cluster and service account: the described pod has the defaults
		default:
			g.labels[k] = val
		}
		return true
	}
	for k, v := range ls.MatchLabels {
		if !set(k, v) {
			return g, false
		}
	}
	for _, e := range ls.MatchExpressions {
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			if len(e.Values) == 0 || !set(e.Key, e.Values[0]) {
				return g, false
			}
		case metav1.LabelSelectorOpExists:
			if !set(e.Key, "any") {
				return g, false
			}
		}
	}
	return g, g.ns != ""
}

func splitSource(key string) (string, string) {
	for _, src := range []string{identity.SourceK8s, identity.SourceAny, identity.SourceReserved} {
		if strings.HasPrefix(key, src+":") {
			return src, strings.TrimPrefix(key, src+":")
		}
	}
	return "", key
}

// reachBySelectors decides src → dst on each port with the input's
// policies and a state of the two described pods; it reports a finding
// when the ingress side allows and the source's egress drops.
func (l *linter) reachBySelectors(r *reporter, path *field.Path, policies []any, namespaces map[string]map[string]string,
	src, dst describedGroup, ports []portProto) (Finding, bool) {
	nsLabels := map[string]map[string]string{}
	for ns, ls := range namespaces {
		nsLabels[ns] = ls
	}
	for _, g := range []describedGroup{src, dst} {
		ls := map[string]string{}
		for k, v := range nsLabels[g.ns] {
			ls[k] = v
		}
		for k, v := range g.nsLabels {
			ls[k] = v
		}
		nsLabels[g.ns] = ls
	}
	var objs []any
	names := make([]string, 0, len(nsLabels))
	for ns := range nsLabels {
		names = append(names, ns)
	}
	sort.Strings(names)
	for _, ns := range names {
		objs = append(objs, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: nsLabels[ns]}})
	}
	for i, g := range []describedGroup{src, dst} {
		objs = append(objs, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: g.ns, Name: g.name, Labels: g.labels},
			Status:     corev1.PodStatus{PodIP: fmt.Sprintf("10.255.255.%d", i+1)},
		})
	}
	objs = append(objs, policies...)
	state, err := check.FromObjects(objs...)
	if err != nil {
		return Finding{}, false // validation reports why the input does not load
	}
	var example *check.Result
	for _, pp := range ports {
		res, err := state.Check(check.Flow{Src: src.ns + "/" + src.name, Dst: dst.ns + "/" + dst.name, Port: pp.port, Protocol: pp.proto})
		if err != nil {
			return Finding{}, false
		}
		if res.Verdict == "allowed" {
			return Finding{}, false
		}
		if res.Ingress == "allowed" && res.Egress == "denied" && example == nil {
			res := res
			example = &res
		}
	}
	if example == nil {
		return Finding{}, false
	}
	rr := &reporter{obj: r.obj}
	rr.warnf("lint/ingress-unreachable", path,
		"this ingress allow never takes effect for the pods the selectors describe (no pods in the input): a pod labelled %s in namespace %s is in egress default deny (through %s) and no egress rule lets it reach pods labelled %s in namespace %s on %s/%d; add an egress rule selecting {%s} with toEndpoints {%s} on %s/%d",
		labelText(src.labels), src.ns, strings.Join(example.Policies, ", "), labelText(dst.labels), dst.ns, example.Protocol, example.Port,
		labelText(src.labels), labelText(dst.labels), example.Protocol, example.Port)
	return rr.out[0], true
}

func labelText(ls map[string]string) string {
	if len(ls) == 0 {
		return "{}"
	}
	keys := make([]string, 0, len(ls))
	for k := range ls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + ls[k]
	}
	return strings.Join(parts, ",")
}

// netpolReachBySelectors is lintUnreachableIngressBySelectors for a
// NetworkPolicy's ingress rules: the peer pod of each podSelector /
// namespaceSelector peer (a namespaceSelector naming
// kubernetes.io/metadata.name describes that namespace, another one a
// namespace with the labels it requires).
func (l *linter) netpolReachBySelectors(r *reporter, np *networkingv1.NetworkPolicy, policies []any, namespaces map[string]map[string]string) []Finding {
	ingress := len(np.Spec.PolicyTypes) == 0
	for _, pt := range np.Spec.PolicyTypes {
		ingress = ingress || pt == networkingv1.PolicyTypeIngress
	}
	if !ingress {
		return nil
	}
	dst, ok := describedPod(np.Namespace, &np.Spec.PodSelector, "dst")
	if !ok || dst.ns != np.Namespace {
		return nil
	}
	var out []Finding
	for i, rule := range np.Spec.Ingress {
		ports := netpolNumericPorts(rule.Ports)
		if len(ports) == 0 {
			continue
		}
		path := field.NewPath("spec", "ingress").Index(i)
		var rr ruleReach
		if len(rule.From) == 0 {
			continue // every peer, the world included: not all under default deny
		}
		for j, peer := range rule.From {
			if peer.IPBlock != nil || (peer.PodSelector == nil && peer.NamespaceSelector == nil) {
				rr.unknown = true // an address outside the cluster has no egress policy
				continue
			}
			src, ok := describedPod(np.Namespace, peer.PodSelector, "src")
			if !ok {
				rr.unknown = true
				continue
			}
			if peer.NamespaceSelector != nil {
				nsg, ok := describedPod(np.Namespace, peer.NamespaceSelector, "")
				if !ok {
					rr.unknown = true
					continue
				}
				src.ns = nsg.labels[corev1.LabelMetadataName]
				if src.ns == "" {
					src.ns = "described-namespace"
				}
				for k, v := range nsg.labels {
					src.nsLabels[k] = v
				}
			}
			rr.add(l.reachBySelectors(r, path.Child("from").Index(j), policies, namespaces, src, dst, ports))
		}
		out = append(out, rr.findings()...)
	}
	return out
}

// ruleReach gathers the verdicts of a rule's described peers: the rule is
// flagged only when every peer is blocked at its own egress.
type ruleReach struct {
	blocked []Finding
	unknown bool // a peer that could not be described, or that reached
}

func (rr *ruleReach) add(f Finding, blocked bool) {
	if blocked {
		rr.blocked = append(rr.blocked, f)
	} else {
		rr.unknown = true
	}
}

func (rr *ruleReach) findings() []Finding {
	if rr.unknown || len(rr.blocked) == 0 {
		return nil
	}
	return rr.blocked[:1]
}

// netpolNumericPorts lists the numeric (port, protocol) pairs of
// NetworkPolicy ports (TCP by default; a range by its first port).
func netpolNumericPorts(ports []networkingv1.NetworkPolicyPort) []portProto {
	var out []portProto
	for _, p := range ports {
		if p.Port == nil || p.Port.Type != intstr.Int || p.Port.IntVal < 1 {
			continue
		}
		proto := "TCP"
		if p.Protocol != nil {
			proto = string(*p.Protocol)
		}
		out = append(out, portProto{int(p.Port.IntVal), proto})
	}
	return out
}
