package validate

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// Lint returns warnings for policies that parse but do not do what they
// appear to. Each check is documented on its function.
func Lint(set *manifest.Set) []Finding {
	l := newLinter(set)
	var out []Finding
	for _, o := range set.Objects {
		r := &reporter{obj: o}
		switch v := o.Obj.(type) {
		case api.Policy:
			lintShadowedExcept(r, v)
			lintClaimsDeny(r, v)
			lintL7Protocol(r, v)
			if l.havePods {
				l.lintCiliumSelectors(r, v)
				l.lintNamedPorts(r, v)
			}
		case *networkingv1.NetworkPolicy:
			if l.havePods {
				l.lintNetworkPolicySelectors(r, v)
				l.lintNetworkPolicyNamedPorts(r, v)
			}
		}
		out = append(out, r.out...)
	}
	out = append(out, l.lintDNSForFQDN()...)
	out = append(out, l.lintFQDNWithoutDNSRules()...)
	out = append(out, l.lintUnreachableIngress()...)
	return out
}

// linter holds the pods of the input, with the labels Cilium gives them.
type linter struct {
	set      *manifest.Set
	havePods bool
	pods     []lintPod
	podNS    map[string]bool // namespaces that have pods in the input
}

type lintPod struct {
	pod    *corev1.Pod
	labels labels.Set // pod labels + Cilium's namespace/service-account labels
}

func newLinter(set *manifest.Set) *linter {
	l := &linter{set: set, podNS: map[string]bool{}}
	for _, p := range set.AllPods() {
		l.pods = append(l.pods, lintPod{pod: p, labels: PodSelectorLabels(set, p)})
		l.podNS[p.Namespace] = true
	}
	l.havePods = len(l.pods) > 0
	return l
}

// PodSelectorLabels returns the labels a Cilium endpoint selector sees on a
// pod (keys normalised as api.NormalizeKey does): the pod's
// identity-relevant labels (identity.IsIdentityRelevant), its
// namespace (io.kubernetes.pod.namespace), its namespace's labels
// (io.cilium.k8s.namespace.labels.*, from the Namespace object of the set
// when there is one, plus kubernetes.io/metadata.name), its service account
// and cluster.
func PodSelectorLabels(set *manifest.Set, p *corev1.Pod) labels.Set {
	ls := labels.Set{}
	for k, v := range identity.IdentityLabels(p.Labels) {
		ls[k] = v
	}
	ls[api.LabelPodNamespace] = p.Namespace
	for k, v := range NamespaceLabels(set, p.Namespace) {
		ls[api.NamespaceLabelPrefix+k] = v
	}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	ls[api.LabelServiceAccount] = sa
	ls[api.LabelCluster] = "default"
	return ls
}

// NamespaceLabels returns the labels of namespace ns: those of its Namespace
// object in the set, plus kubernetes.io/metadata.name as the API server
// sets it.
func NamespaceLabels(set *manifest.Set, ns string) labels.Set {
	ls := labels.Set{"kubernetes.io/metadata.name": ns}
	if n := set.Namespace(ns); n != nil {
		for k, v := range n.Labels {
			ls[k] = v
		}
	}
	return ls
}

// lintShadowedExcept (lint a): a CIDR set with "except" next to another
// allow of the same policy and direction that already covers the excepted
// prefix (0.0.0.0/0 in toCIDR, a CIDR set without except, or the world/all
// entity). Allows are a union, so the except removes nothing: the policy
// allows what it looks like it excludes.
func lintShadowedExcept(r *reporter, p api.Policy) {
	type cover struct {
		prefix netip.Prefix // zero for entity "world"/"all"
		path   *field.Path
		what   string
		ports  bool // restricted to toPorts
	}
	for ri, rule := range p.Rules() {
		rp := field.NewPath(p.RulePath(ri))
		for _, dir := range []string{"egress", "ingress"} {
			var covers []cover
			type exceptAt struct {
				prefix netip.Prefix
				path   *field.Path
				cidr   string
			}
			var excepts []exceptAt
			visit := func(i int, cidrs []api.CIDR, sets []api.CIDRRule, ents []api.Entity, hasPorts bool, cidrField, setField, entField string) {
				base := rp.Child(dir).Index(i)
				for j, c := range cidrs {
					if pf, ok := parsePrefixOrAddr(string(c)); ok {
						covers = append(covers, cover{pf, base.Child(cidrField).Index(j), fmt.Sprintf("%s %s", cidrField, pf), hasPorts})
					}
				}
				for j, s := range sets {
					pf, err := netip.ParsePrefix(string(s.Cidr))
					if err != nil {
						continue
					}
					if len(s.ExceptCIDRs) == 0 {
						covers = append(covers, cover{pf, base.Child(setField).Index(j), fmt.Sprintf("%s cidr %s", setField, pf), hasPorts})
					}
					for k, e := range s.ExceptCIDRs {
						if ep, err := netip.ParsePrefix(string(e)); err == nil {
							excepts = append(excepts, exceptAt{ep, base.Child(setField).Index(j).Child("except").Index(k), pf.String()})
						}
					}
				}
				for j, e := range ents {
					if e == api.EntityWorld || e == api.EntityAll || e == api.EntityWorldIPv4 || e == api.EntityWorldIPv6 {
						covers = append(covers, cover{netip.Prefix{}, base.Child(entField).Index(j), fmt.Sprintf("%s %s", entField, e), hasPorts})
					}
				}
			}
			if dir == "egress" {
				for i, e := range rule.Egress {
					visit(i, e.ToCIDR, e.ToCIDRSet, e.ToEntities, len(e.ToPorts) > 0, "toCIDR", "toCIDRSet", "toEntities")
				}
			} else {
				for i, in := range rule.Ingress {
					visit(i, in.FromCIDR, in.FromCIDRSet, in.FromEntities, len(in.ToPorts) > 0, "fromCIDR", "fromCIDRSet", "fromEntities")
				}
			}
			// One warning per CIDR set: its shadowed excepts together.
			type shadow struct {
				path    *field.Path
				cidr    string
				excepts []string
				by      cover
			}
			var shadows []*shadow
			byPath := map[string]*shadow{}
			for _, ex := range excepts {
				for _, c := range covers {
					covered := !c.prefix.IsValid() || (c.prefix.Addr().Is4() == ex.prefix.Addr().Is4() &&
						c.prefix.Bits() <= ex.prefix.Bits() && c.prefix.Contains(ex.prefix.Addr()))
					if !covered {
						continue
					}
					setPath := ex.path.String()
					setPath = setPath[:strings.LastIndex(setPath, "[")]
					sh := byPath[setPath]
					if sh == nil {
						sh = &shadow{path: ex.path, cidr: ex.cidr, by: c}
						byPath[setPath] = sh
						shadows = append(shadows, sh)
					}
					sh.excepts = append(sh.excepts, ex.prefix.String())
					break
				}
			}
			for _, sh := range shadows {
				effect := "the except has no effect"
				if !sh.by.ports && (!sh.by.prefix.IsValid() || sh.by.prefix.Bits() == 0) {
					effect = fmt.Sprintf("the except has no effect: the rule allows all %s, including the addresses it appears to exclude", dir)
				}
				path := sh.path.String()
				path = path[:strings.LastIndex(path, "[")]
				r.add(Warning, "lint/cidr-except-shadowed", nil, "")
				f := &r.out[len(r.out)-1]
				f.Field = path
				f.Line = r.obj.FieldLine(path)
				f.Message = fmt.Sprintf("except %s of cidr %s is meaningless: %s (%s) already allows those addresses and allows are a union, so %s; to exclude addresses use %sDeny",
					strings.Join(sh.excepts, ", "), sh.cidr, sh.by.path, sh.by.what, effect, dir)
			}
		}
	}
}

func parsePrefixOrAddr(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), true
	}
	return netip.Prefix{}, false
}

var denyWords = regexp.MustCompile(`(?i)\b(deny|denies|denied|denying|block|blocks|blocked|blocking|forbid|forbids|restrict external)\b`)

// lintClaimsDeny (lint e): the description (or the "description"
// annotation) says the policy denies or blocks, but it has no
// ingressDeny/egressDeny section: a Cilium policy only ever allows, except
// through those sections (and through the default deny of the endpoints it
// selects).
func lintClaimsDeny(r *reporter, p api.Policy) {
	hasDeny := false
	var claim string
	var claimPath *field.Path
	for i, rule := range p.Rules() {
		if len(rule.IngressDeny) > 0 || len(rule.EgressDeny) > 0 {
			hasDeny = true
		}
		if claim == "" && denyWords.MatchString(rule.Description) {
			claim, claimPath = rule.Description, field.NewPath(p.RulePath(i)).Child("description")
		}
	}
	if d := p.Meta().Annotations["description"]; claim == "" && denyWords.MatchString(d) {
		claim, claimPath = d, field.NewPath("metadata", "annotations").Key("description")
	}
	if claim == "" || hasDeny {
		return
	}
	r.warnf("lint/claims-deny", claimPath,
		"the description says %q but the policy has only allow rules (no ingressDeny/egressDeny): it denies nothing itself; traffic it does not allow is dropped only by default deny of the endpoints it selects",
		claim)
}

// selects reports whether sel matches some pod of the input, and whether the
// question is meaningful (the selector's namespace has pods in the input).
func (l *linter) anyMatch(sel labels.Selector, ns string) (matched, meaningful bool) {
	if ns != "" && !l.podNS[ns] {
		return false, false
	}
	for _, p := range l.pods {
		if sel.Matches(p.labels) {
			return true, true
		}
	}
	return false, true
}

// selectorNamespace returns the single namespace a normalised selector is
// confined to ("" if none or several).
func selectorNamespace(s api.EndpointSelector) string {
	n, err := s.Normalized()
	if err != nil {
		return ""
	}
	if ns, ok := n.MatchLabels[api.LabelPodNamespace]; ok {
		return ns
	}
	for _, e := range n.MatchExpressions {
		if e.Key == api.LabelPodNamespace && e.Operator == metav1.LabelSelectorOpIn && len(e.Values) == 1 {
			return e.Values[0]
		}
	}
	return ""
}

// lintCiliumSelectors (lint b): an endpointSelector, fromEndpoints or
// toEndpoints selector no pod of the input matches (only asked when the
// input has pods or workloads in the selector's namespace).
func (l *linter) lintCiliumSelectors(r *reporter, p api.Policy) {
	ns := p.Meta().Namespace
	check := func(path *field.Path, s api.EndpointSelector, what string) {
		if s.IsEmpty() && ns == "" {
			return
		}
		sel, err := s.Selector()
		if err != nil {
			return // reported by validation
		}
		matched, meaningful := l.anyMatch(sel, selectorNamespace(s))
		if meaningful && !matched {
			r.warnf("lint/selects-nothing", path, "%s %s matches no pod in the input", what, describeSelector(s))
		}
	}
	for i, rule := range p.Rules() {
		rp := field.NewPath(p.RulePath(i))
		if rule.EndpointSelector != nil {
			check(rp.Child("endpointSelector"), api.EffectiveSubjectSelector(ns, *rule.EndpointSelector), "endpointSelector")
		}
		for j, in := range rule.Ingress {
			for k, s := range in.FromEndpoints {
				check(rp.Child("ingress").Index(j).Child("fromEndpoints").Index(k), api.EffectivePeerSelector(ns, s), "peer selector")
			}
		}
		for j, in := range rule.IngressDeny {
			for k, s := range in.FromEndpoints {
				check(rp.Child("ingressDeny").Index(j).Child("fromEndpoints").Index(k), api.EffectivePeerSelector(ns, s), "peer selector")
			}
		}
		for j, eg := range rule.Egress {
			for k, s := range eg.ToEndpoints {
				check(rp.Child("egress").Index(j).Child("toEndpoints").Index(k), api.EffectivePeerSelector(ns, s), "peer selector")
			}
		}
		for j, eg := range rule.EgressDeny {
			for k, s := range eg.ToEndpoints {
				check(rp.Child("egressDeny").Index(j).Child("toEndpoints").Index(k), api.EffectivePeerSelector(ns, s), "peer selector")
			}
		}
	}
}

// lintNetworkPolicySelectors is lint b for NetworkPolicy: the podSelector,
// and peers' podSelectors in the policy's own namespace.
func (l *linter) lintNetworkPolicySelectors(r *reporter, np *networkingv1.NetworkPolicy) {
	ns := np.Namespace
	if !l.podNS[ns] {
		return
	}
	check := func(path *field.Path, ls *metav1.LabelSelector, what string) {
		sel, err := metav1.LabelSelectorAsSelector(ls)
		if err != nil {
			return
		}
		for _, p := range l.pods {
			if p.pod.Namespace == ns && sel.Matches(labels.Set(p.pod.Labels)) {
				return
			}
		}
		r.warnf("lint/selects-nothing", path, "%s %s matches no pod of namespace %s in the input", what, metav1.FormatLabelSelector(ls), ns)
	}
	spec := field.NewPath("spec")
	check(spec.Child("podSelector"), &np.Spec.PodSelector, "podSelector")
	for i, in := range np.Spec.Ingress {
		for j, peer := range in.From {
			if peer.PodSelector != nil && peer.NamespaceSelector == nil {
				check(spec.Child("ingress").Index(i).Child("from").Index(j).Child("podSelector"), peer.PodSelector, "peer podSelector")
			}
		}
	}
	for i, eg := range np.Spec.Egress {
		for j, peer := range eg.To {
			if peer.PodSelector != nil && peer.NamespaceSelector == nil {
				check(spec.Child("egress").Index(i).Child("to").Index(j).Child("podSelector"), peer.PodSelector, "peer podSelector")
			}
		}
	}
}

func describeSelector(s api.EndpointSelector) string {
	n, err := s.Normalized()
	if err != nil || (len(n.MatchLabels) == 0 && len(n.MatchExpressions) == 0) {
		return "{}"
	}
	var parts []string
	keys := make([]string, 0, len(n.MatchLabels))
	for k := range n.MatchLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+n.MatchLabels[k])
	}
	for _, e := range n.MatchExpressions {
		switch e.Operator {
		case metav1.LabelSelectorOpExists:
			parts = append(parts, e.Key)
		case metav1.LabelSelectorOpDoesNotExist:
			parts = append(parts, "!"+e.Key)
		default:
			parts = append(parts, fmt.Sprintf("%s %s (%s)", e.Key, strings.ToLower(string(e.Operator)), strings.Join(e.Values, ",")))
		}
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// lintL7Protocol (lint c): L7 rules on a port whose protocol does not carry
// that L7 protocol. HTTP on UDP (or ANY) is already a validation error, as
// in Cilium; what remains is DNS rules only on TCP: resolvers query over
// UDP first, so those lookups are dropped and only the TCP retries (if any)
// are seen by the DNS proxy.
func lintL7Protocol(r *reporter, p api.Policy) {
	for ri, rule := range p.Rules() {
		for i, eg := range rule.Egress {
			for j, pr := range eg.ToPorts {
				if pr.Rules == nil || len(pr.Rules.DNS) == 0 || len(pr.Ports) == 0 {
					continue
				}
				udp := false
				for _, pp := range pr.Ports {
					if pp.Protocol == "" || pp.Protocol == api.ProtoAny || pp.Protocol == api.ProtoUDP {
						udp = true
					}
				}
				if !udp {
					r.warnf("lint/l7-protocol", field.NewPath(p.RulePath(ri)).Child("egress").Index(i).Child("toPorts").Index(j).Child("ports"),
						"DNS rules on TCP only: resolvers query over UDP first, so ordinary lookups are dropped; add protocol UDP (or ANY) for port 53")
				}
			}
		}
	}
}
