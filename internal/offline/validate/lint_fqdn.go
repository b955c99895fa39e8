package validate

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// lintFQDNWithoutDNSRules (lint f): toFQDNs selects the addresses the DNS
// proxy saw in answers, and only DNS traffic that some egress rule
// covers with rules.dns passes through the proxy (as in Cilium). A rule
// with toFQDNs whose pods have no egress rule with rules.dns on port 53
// can never learn an address: its traffic stays denied. The warning names
// the rule that allows DNS without rules.dns (where to add
// `rules: {dns: [{matchPattern: "*"}]}`), or says there is none.
//
// With pods in the input, each pod the toFQDNs rule selects must be
// selected by a rule with rules.dns on port 53; without pods, the
// toFQDNs rule's own policy rule, or any rule of the input with rules.dns
// in the same namespace (any, for a clusterwide rule), counts.
func (l *linter) lintFQDNWithoutDNSRules() []Finding {
	var out []Finding
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
			rp := field.NewPath(p.RulePath(ri))
			for ei, eg := range rule.Egress {
				if len(eg.ToFQDNs) == 0 {
					continue
				}
				if l.dnsProxied(ns, &rule) {
					continue
				}
				where := "no egress rule of these pods allows DNS on port 53 at all; add one with rules.dns, e.g. toPorts: [{ports: [{port: \"53\", protocol: ANY}], rules: {dns: [{matchPattern: \"*\"}]}}]"
				if dp := dnsRuleWithoutL7(rp, &rule); dp != nil {
					where = fmt.Sprintf("the rule allowing DNS (%s) has no rules.dns; add `rules: {dns: [{matchPattern: \"*\"}]}` to it", dp)
				}
				r.warnf("lint/fqdn-without-dns-rules", rp.Child("egress").Index(ei).Child("toFQDNs"),
					"toFQDNs can never allow anything: it learns addresses only from DNS answers that pass the DNS proxy, and no egress rule of the selected pods sends DNS (port 53) through it: %s. Until then this traffic stays denied, as in Cilium", where)
			}
		}
		out = append(out, r.out...)
	}
	return out
}

// dnsProxied reports whether the pods a rule selects have an egress rule
// with rules.dns on port 53.
func (l *linter) dnsProxied(ns string, rule *api.Rule) bool {
	if hasDNSRules(rule) {
		return true
	}
	subject, err := api.EffectiveSubjectSelector(ns, *rule.EndpointSelector).Selector()
	if err != nil {
		return true // a broken selector is reported by validation
	}
	for _, p := range l.set.Policies() {
		pns := p.Meta().Namespace
		for _, other := range p.Rules() {
			if other.EndpointSelector == nil || !hasDNSRules(&other) {
				continue
			}
			if !l.havePods {
				if pns == "" || ns == "" || pns == ns {
					return true
				}
				continue
			}
			sel, err := api.EffectiveSubjectSelector(pns, *other.EndpointSelector).Selector()
			if err != nil {
				continue
			}
			all := true
			for _, pod := range l.pods {
				if subject.Matches(pod.labels) && !sel.Matches(pod.labels) {
					all = false
					break
				}
			}
			if all {
				return true
			}
		}
	}
	return false
}

// hasDNSRules reports whether a rule has an egress port rule on 53 with
// rules.dns.
func hasDNSRules(rule *api.Rule) bool {
	for _, eg := range rule.Egress {
		for _, pr := range eg.ToPorts {
			if pr.Rules != nil && len(pr.Rules.DNS) > 0 && dnsPortRule(pr) {
				return true
			}
		}
	}
	return false
}

// dnsPortRule reports whether a port rule covers port 53 (UDP, TCP or any).
func dnsPortRule(pr api.PortRule) bool {
	if len(pr.Ports) == 0 {
		return true
	}
	for _, pp := range pr.Ports {
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
		if lo, hi := spec.Range(); lo == 0 || (lo <= 53 && 53 <= hi) {
			return true
		}
	}
	return false
}

// dnsRuleWithoutL7 returns the path of the first egress port rule of a
// rule that allows port 53 without rules.dns, or nil.
func dnsRuleWithoutL7(rp *field.Path, rule *api.Rule) *field.Path {
	for i, eg := range rule.Egress {
		for j, pr := range eg.ToPorts {
			if dnsPortRule(pr) && (pr.Rules == nil || len(pr.Rules.DNS) == 0) && len(eg.ToFQDNs) == 0 {
				return rp.Child("egress").Index(i).Child("toPorts").Index(j)
			}
		}
	}
	return nil
}
