package validate

import (
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

type portContext struct {
	ingress bool // ingress or ingressDeny section
	deny    bool // ingressDeny or egressDeny section
	host    bool // the rule has a nodeSelector (host policy)
}

func validatePortRules(r *reporter, p *field.Path, prs []api.PortRule, ctx portContext) {
	for i := range prs {
		validatePortRule(r, p.Child("toPorts").Index(i), &prs[i], ctx)
	}
}

func validatePortRule(r *reporter, p *field.Path, pr *api.PortRule, ctx portContext) {
	hasL7 := pr.HasL7()
	rules := pr.Rules
	hasDNS := rules != nil && len(rules.DNS) > 0
	if len(pr.Ports) > maxPorts {
		r.errorf("port", p.Child("ports"), "too many ports, the max is %d", maxPorts)
	}
	if len(pr.Ports) == 0 && !hasL7 {
		r.warnf("lint/port-rule-without-ports", p,
			"a toPorts element without ports matches no traffic (Cilium's engine adds no filter for it; it does not mean every port): list ports, or use port \"0\" for every port")
	}
	zeroPort := false
	for j, pp := range pr.Ports {
		pp := pp
		pathJ := p.Child("ports").Index(j)
		spec, err := pp.Parse()
		if err != nil {
			f := pathJ.Child("port")
			if strings.HasPrefix(err.Error(), "endPort") {
				f = pathJ.Child("endPort")
			}
			r.errorf("port", f, "%v", err)
		} else if !spec.IsNamed() && spec.Number == 0 {
			zeroPort = true
		}
		if hasDNS && pp.EndPort != 0 && err == nil && !spec.IsNamed() && int32(spec.Number) < pp.EndPort {
			r.errorf("port", pathJ.Child("endPort"), "DNS rules do not support port ranges")
		}
		proto, perr := pp.Proto()
		if perr != nil {
			r.errorf("protocol", pathJ.Child("protocol"), "%v", perr)
			continue
		}
		if hasL7 && !hasDNS && !ctx.deny && proto.String() != "TCP" {
			r.errorf("l7-protocol", pathJ.Child("protocol"),
				"L7 rules can only apply to TCP (not %s) except for DNS rules", protoName(pp.Protocol))
		}
	}
	for j, sn := range pr.ServerNames {
		if sn == "" {
			r.errorf("serverNames", p.Child("serverNames").Index(j), "empty server name is not allowed")
		}
	}
	if len(pr.ServerNames) > 0 && hasL7 && pr.TerminatingTLS == nil {
		r.errorf("serverNames", p.Child("serverNames"), "serverNames are not allowed with L7 rules without terminatingTLS")
	}
	if pr.Listener != nil {
		lp := p.Child("listener")
		switch {
		case ctx.deny:
			r.errorf("deny-l7", lp, "a listener is not allowed in a deny section")
		case ctx.ingress:
			r.errorf("listener", lp, "a listener is not allowed on ingress")
		case hasL7:
			r.errorf("listener", lp, "a listener is not allowed together with L7 rules")
		}
		if pr.Listener.EnvoyConfig == nil || pr.Listener.EnvoyConfig.Name == "" {
			r.errorf("listener", lp.Child("envoyConfig", "name"), "required")
		}
		if pr.Listener.Name == "" {
			r.errorf("listener", lp.Child("name"), "required")
		}
	}
	if rules == nil {
		return
	}
	rp := p.Child("rules")
	if ctx.deny {
		if hasL7 {
			r.errorf("deny-l7", rp, "L7 rules are not allowed in a deny section (ingressDeny/egressDeny): deny is enforced at L3/L4 only")
		}
		return
	}
	if !hasL7 {
		return
	}
	if ctx.host {
		r.errorf("host-l7", rp, "host policies (nodeSelector) do not support L7 rules")
	}
	if zeroPort {
		r.errorf("l7-port", rp, "L7 rules can not be used when a port is 0")
	}
	kinds := 0
	for _, n := range []bool{rules.HTTP != nil, rules.Kafka != nil, rules.DNS != nil, rules.L7Proto != ""} {
		if n {
			kinds++
		}
	}
	if kinds > 1 {
		r.errorf("l7-kinds", rp, "multiple L7 protocol rule types (%s) in one port rule; use separate toPorts entries", l7Kinds(rules))
	}
	if rules.L7 != nil && rules.L7Proto == "" {
		r.errorf("l7-kinds", rp.Child("l7"), "l7 may only be specified together with l7proto")
	}
	if hasDNS {
		if ctx.ingress {
			r.errorf("dns-ingress", rp.Child("dns"), "DNS rules are not allowed on ingress")
		}
		if len(pr.Ports) == 0 {
			r.errorf("dns-port", p.Child("ports"), "port 53 must be specified for DNS rules")
		}
		for j, d := range rules.DNS {
			validateFQDN(r, rp.Child("dns").Index(j), api.FQDNSelector(d))
		}
	}
	for j, h := range rules.HTTP {
		validateHTTP(r, rp.Child("http").Index(j), h)
	}
}

func protoName(p api.L4Proto) string {
	if p == "" {
		return "ANY (the default)"
	}
	return string(p)
}

func l7Kinds(r *api.L7Rules) string {
	var k []string
	if r.HTTP != nil {
		k = append(k, "http")
	}
	if r.Kafka != nil {
		k = append(k, "kafka")
	}
	if r.DNS != nil {
		k = append(k, "dns")
	}
	if r.L7Proto != "" {
		k = append(k, "l7proto")
	}
	return strings.Join(k, ", ")
}

// validateHTTP compiles method, path and host as Go (RE2) regular
// expressions. Envoy, which enforces them in Cilium, uses RE2 too, so the
// accepted syntax is the same; ECMAScript features such as lookahead or
// backreferences are rejected by both.
func validateHTTP(r *reporter, p *field.Path, h api.PortRuleHTTP) {
	for _, f := range []struct{ name, re string }{{"method", h.Method}, {"path", h.Path}, {"host", h.Host}} {
		if f.re == "" {
			continue
		}
		if _, err := regexp.Compile(f.re); err != nil {
			r.errorf("http-regex", p.Child(f.name), "invalid regular expression %q: %s", f.re, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
		}
	}
	for j, hdr := range h.Headers {
		name, _, _ := strings.Cut(hdr, ":")
		if strings.TrimSpace(name) == "" || strings.ContainsAny(strings.TrimSpace(name), " \t") {
			r.errorf("http-header", p.Child("headers").Index(j), "invalid header %q: want \"Name\" or \"Name: value\"", hdr)
		}
	}
	for j, m := range h.HeaderMatches {
		mp := p.Child("headerMatches").Index(j)
		if m.Name == "" {
			r.errorf("http-header", mp.Child("name"), "required")
		}
		switch m.Mismatch {
		case "", "LOG", "ADD", "DELETE", "REPLACE":
		default:
			r.errorf("http-header", mp.Child("mismatch"), "unsupported mismatch action %q (LOG, ADD, DELETE, REPLACE)", m.Mismatch)
		}
	}
}
