package validate

import (
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// bulwarkUnsupported reports Cilium features that Cilium accepts but
// Bulwark's engine (internal/policy) refuses to load: loading such a policy
// fails as a whole, so validation reports them as errors. Keep this list in
// step with the engine's compile errors.
func bulwarkUnsupported(r *reporter, p api.Policy) {
	const rule = "bulwark-unsupported"
	no := func(path *field.Path, what string) {
		r.errorf(rule, path, "%s: valid for Cilium, but not supported by Bulwark (the policy would not load)", what)
	}
	for i, ru := range p.Rules() {
		rp := field.NewPath(p.RulePath(i))
		if ru.NodeSelector != nil {
			no(rp.Child("nodeSelector"), "host policies")
		}
		ingress := func(dir string, j int, c *api.IngressCommonRule, ports []api.PortRule, auth *api.Authentication) {
			ep := rp.Child(dir).Index(j)
			if len(c.FromRequires) > 0 {
				no(ep.Child("fromRequires"), "fromRequires")
			}
			if len(c.FromNodes) > 0 {
				no(ep.Child("fromNodes"), "fromNodes")
			}
			if len(c.FromGroups) > 0 {
				no(ep.Child("fromGroups"), "cloud provider groups")
			}
			cidrSets(ep.Child("fromCIDRSet"), c.FromCIDRSet, no)
			portRules(ep, ports, no)
			authentication(ep, auth, no)
		}
		egress := func(dir string, j int, c *api.EgressCommonRule, ports []api.PortRule, auth *api.Authentication) {
			ep := rp.Child(dir).Index(j)
			if len(c.ToRequires) > 0 {
				no(ep.Child("toRequires"), "toRequires")
			}
			if len(c.ToNodes) > 0 {
				no(ep.Child("toNodes"), "toNodes")
			}
			if len(c.ToGroups) > 0 {
				no(ep.Child("toGroups"), "cloud provider groups")
			}
			if len(c.ToServices) > 0 {
				no(ep.Child("toServices"), "toServices (select the backends with toEndpoints)")
			}
			cidrSets(ep.Child("toCIDRSet"), c.ToCIDRSet, no)
			portRules(ep, ports, no)
			authentication(ep, auth, no)
		}
		for j := range ru.Ingress {
			ingress("ingress", j, &ru.Ingress[j].IngressCommonRule, ru.Ingress[j].ToPorts, ru.Ingress[j].Authentication)
		}
		for j := range ru.IngressDeny {
			ingress("ingressDeny", j, &ru.IngressDeny[j].IngressCommonRule, ru.IngressDeny[j].ToPorts, nil)
		}
		for j := range ru.Egress {
			egress("egress", j, &ru.Egress[j].EgressCommonRule, ru.Egress[j].ToPorts, ru.Egress[j].Authentication)
		}
		for j := range ru.EgressDeny {
			egress("egressDeny", j, &ru.EgressDeny[j].EgressCommonRule, ru.EgressDeny[j].ToPorts, nil)
		}
	}
}

func cidrSets(p *field.Path, sets []api.CIDRRule, no func(*field.Path, string)) {
	for i, s := range sets {
		if s.CIDRGroupRef != "" || s.CIDRGroupSelector != nil {
			no(p.Index(i), "CiliumCIDRGroup references")
		}
	}
}

func authentication(p *field.Path, a *api.Authentication, no func(*field.Path, string)) {
	if a != nil && a.Mode != "" && a.Mode != "disabled" {
		no(p.Child("authentication"), "mutual authentication")
	}
}

func portRules(p *field.Path, prs []api.PortRule, no func(*field.Path, string)) {
	for i, pr := range prs {
		pp := p.Child("toPorts").Index(i)
		if pr.TerminatingTLS != nil || pr.OriginatingTLS != nil {
			no(pp, "TLS interception")
		}
		if pr.Listener != nil {
			no(pp.Child("listener"), "Envoy listeners")
		}
		if len(pr.ServerNames) > 0 {
			no(pp.Child("serverNames"), "serverNames")
		}
		if pr.Rules == nil {
			continue
		}
		if len(pr.Rules.Kafka) > 0 {
			no(pp.Child("rules", "kafka"), "Kafka rules")
		}
		if pr.Rules.L7Proto != "" {
			no(pp.Child("rules", "l7proto"), "generic L7 parsers")
		}
		for j, h := range pr.Rules.HTTP {
			if len(h.HeaderMatches) > 0 {
				no(pp.Child("rules", "http").Index(j).Child("headerMatches"), "headerMatches")
			}
		}
	}
}
