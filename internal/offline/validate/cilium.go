package validate

import (
	"net/netip"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// Limits Cilium enforces per port rule and ICMP rule.
const (
	maxPorts      = 40
	maxICMPFields = 40
)

var (
	matchNameChars    = regexp.MustCompile(`^[-a-zA-Z0-9_.]+$`)
	matchPatternChars = regexp.MustCompile(`^[-a-zA-Z0-9_.*]+$`)
)

// validateCiliumPolicy checks a CNP or CCNP the way Cilium's rule sanitizer
// and the CRD schema do.
func validateCiliumPolicy(r *reporter, p api.Policy) {
	rules := p.Rules()
	if len(rules) == 0 {
		r.errorf("spec", field.NewPath("spec"), "spec or specs is required (the policy has no rule)")
		return
	}
	for i := range rules {
		validateRule(r, field.NewPath(p.RulePath(i)), &rules[i])
		if ns := p.Meta().Namespace; ns != "" && rules[i].EndpointSelector != nil {
			subjectNamespace(r, field.NewPath(p.RulePath(i)).Child("endpointSelector"), ns, *rules[i].EndpointSelector)
		}
	}
}

// subjectNamespace warns when a namespaced policy's endpointSelector names
// another namespace: Cilium drops that match (the policy applies in its own
// namespace only), so the rule applies to pods it does not seem to.
func subjectNamespace(r *reporter, p *field.Path, ns string, s api.EndpointSelector) {
	for k, v := range s.MatchLabels {
		if nk, err := api.NormalizeKey(k); err == nil && nk == api.LabelPodNamespace && v != ns {
			r.warnf("subject-namespace", p.Child("matchLabels").Key(k),
				"a CiliumNetworkPolicy applies only in its own namespace %q: the match on namespace %q is ignored (as in Cilium); use a CiliumClusterwideNetworkPolicy or move the policy", ns, v)
		}
	}
}

func validateRule(r *reporter, path *field.Path, rule *api.Rule) {
	switch {
	case rule.EndpointSelector == nil && rule.NodeSelector == nil:
		r.errorf("rule-subject", path.Child("endpointSelector"), "rule must have one of endpointSelector or nodeSelector")
	case rule.EndpointSelector != nil && rule.NodeSelector != nil:
		r.errorf("rule-subject", path.Child("nodeSelector"), "rule cannot have both endpointSelector and nodeSelector")
	}
	if rule.EndpointSelector != nil {
		validateEndpointSelector(r, path.Child("endpointSelector"), *rule.EndpointSelector)
	}
	host := rule.NodeSelector != nil
	if host {
		validateEndpointSelector(r, path.Child("nodeSelector"), *rule.NodeSelector)
	}
	if rule.Log != nil && rule.Log.Value != "" && len(rule.Log.Value) > 32 {
		r.errorf("log", path.Child("log", "value"), "must be at most 32 characters")
	}
	for i := range rule.Ingress {
		in := &rule.Ingress[i]
		p := path.Child("ingress").Index(i)
		validateIngressCommon(r, p, &in.IngressCommonRule)
		validateICMPsWithPorts(r, p, in.ICMPs, in.ToPorts)
		validatePortRules(r, p, in.ToPorts, portContext{ingress: true, host: host})
		validateAuthentication(r, p, in.Authentication)
	}
	for i := range rule.IngressDeny {
		in := &rule.IngressDeny[i]
		p := path.Child("ingressDeny").Index(i)
		validateIngressCommon(r, p, &in.IngressCommonRule)
		validateICMPsWithPorts(r, p, in.ICMPs, in.ToPorts)
		validatePortRules(r, p, in.ToPorts, portContext{ingress: true, host: host, deny: true})
	}
	for i := range rule.Egress {
		eg := &rule.Egress[i]
		p := path.Child("egress").Index(i)
		validateEgressCommon(r, p, &eg.EgressCommonRule, len(eg.ToFQDNs), len(eg.ToPorts) > 0)
		for j, f := range eg.ToFQDNs {
			validateFQDN(r, p.Child("toFQDNs").Index(j), api.FQDNSelector(f))
		}
		validateICMPsWithPorts(r, p, eg.ICMPs, eg.ToPorts)
		validatePortRules(r, p, eg.ToPorts, portContext{host: host})
		validateAuthentication(r, p, eg.Authentication)
	}
	for i := range rule.EgressDeny {
		eg := &rule.EgressDeny[i]
		p := path.Child("egressDeny").Index(i)
		validateEgressCommon(r, p, &eg.EgressCommonRule, 0, len(eg.ToPorts) > 0)
		validateICMPsWithPorts(r, p, eg.ICMPs, eg.ToPorts)
		validatePortRules(r, p, eg.ToPorts, portContext{host: host, deny: true})
	}
}

// peerCombination reports rules that mix peer kinds. Cilium rejects these
// ("Combining X and Y is not supported yet"); Bulwark accepts them with the
// union meaning the YAML suggests, and warns that Cilium would not.
func peerCombination(r *reporter, path *field.Path, counts []peerCount) {
	var set []string
	for _, c := range counts {
		if c.n > 0 {
			set = append(set, c.name)
		}
	}
	if len(set) > 1 {
		r.warnf("peer-combination", path.Child(set[1]),
			"combining %s in one rule: Bulwark allows the union of the peers, but Cilium rejects the policy (\"Combining %s and %s is not supported yet\"); split them into separate rules",
			strings.Join(set, " and "), set[0], set[1])
	}
}

type peerCount struct {
	name string
	n    int
}

func validateIngressCommon(r *reporter, p *field.Path, c *api.IngressCommonRule) {
	peerCombination(r, p, []peerCount{
		{"fromEndpoints", len(c.FromEndpoints)}, {"fromCIDR", len(c.FromCIDR)},
		{"fromCIDRSet", len(c.FromCIDRSet)}, {"fromEntities", len(c.FromEntities)},
		{"fromNodes", len(c.FromNodes)}, {"fromGroups", len(c.FromGroups)},
	})
	for i, s := range c.FromEndpoints {
		validateEndpointSelector(r, p.Child("fromEndpoints").Index(i), s)
	}
	for i, s := range c.FromRequires {
		validateEndpointSelector(r, p.Child("fromRequires").Index(i), s)
	}
	for i, s := range c.FromNodes {
		validateEndpointSelector(r, p.Child("fromNodes").Index(i), s)
	}
	for i, cidr := range c.FromCIDR {
		validateCIDR(r, p.Child("fromCIDR").Index(i), cidr)
	}
	for i := range c.FromCIDRSet {
		validateCIDRRule(r, p.Child("fromCIDRSet").Index(i), &c.FromCIDRSet[i])
	}
	for i, e := range c.FromEntities {
		validateEntity(r, p.Child("fromEntities").Index(i), e)
	}
}

func validateEgressCommon(r *reporter, p *field.Path, c *api.EgressCommonRule, fqdns int, hasPorts bool) {
	peerCombination(r, p, []peerCount{
		{"toEndpoints", len(c.ToEndpoints)}, {"toCIDR", len(c.ToCIDR)},
		{"toCIDRSet", len(c.ToCIDRSet)}, {"toEntities", len(c.ToEntities)},
		{"toServices", len(c.ToServices)}, {"toFQDNs", fqdns},
		{"toGroups", len(c.ToGroups)}, {"toNodes", len(c.ToNodes)},
	})
	if len(c.ToServices) > 0 && hasPorts {
		r.errorf("toServices", p.Child("toPorts"), "combining toServices and toPorts is not supported (Cilium rejects it)")
	}
	for i, s := range c.ToEndpoints {
		validateEndpointSelector(r, p.Child("toEndpoints").Index(i), s)
	}
	for i, s := range c.ToRequires {
		validateEndpointSelector(r, p.Child("toRequires").Index(i), s)
	}
	for i, s := range c.ToNodes {
		validateEndpointSelector(r, p.Child("toNodes").Index(i), s)
	}
	for i, cidr := range c.ToCIDR {
		validateCIDR(r, p.Child("toCIDR").Index(i), cidr)
	}
	for i := range c.ToCIDRSet {
		validateCIDRRule(r, p.Child("toCIDRSet").Index(i), &c.ToCIDRSet[i])
	}
	for i, e := range c.ToEntities {
		validateEntity(r, p.Child("toEntities").Index(i), e)
	}
	for i, s := range c.ToServices {
		sp := p.Child("toServices").Index(i)
		switch {
		case s.K8sService == nil && s.K8sServiceSelector == nil:
			r.errorf("toServices", sp, "one of k8sService or k8sServiceSelector is required")
		case s.K8sService != nil && s.K8sServiceSelector != nil:
			r.errorf("toServices", sp, "only one of k8sService or k8sServiceSelector may be set")
		case s.K8sService != nil && s.K8sService.ServiceName == "":
			r.errorf("toServices", sp.Child("k8sService", "serviceName"), "required")
		case s.K8sServiceSelector != nil:
			validateEndpointSelector(r, sp.Child("k8sServiceSelector", "selector"), s.K8sServiceSelector.Selector)
		}
	}
}

func validateEntity(r *reporter, p *field.Path, e api.Entity) {
	if !e.Valid() {
		names := make([]string, len(api.Entities))
		for i, v := range api.Entities {
			names[i] = string(v)
		}
		r.errorf("entity", p, "unsupported entity %q (one of %s)", string(e), strings.Join(names, ", "))
	}
}

// validateCIDR accepts a prefix or a bare address, as Cilium does for
// fromCIDR/toCIDR.
func validateCIDR(r *reporter, p *field.Path, c api.CIDR) {
	s := string(c)
	if s == "" {
		r.errorf("cidr", p, "IP or CIDR must be specified")
		return
	}
	if _, err := netip.ParsePrefix(s); err == nil {
		return
	}
	if _, err := netip.ParseAddr(s); err != nil {
		r.errorf("cidr", p, "invalid CIDR %q: want an address or prefix such as 10.0.0.0/8", s)
	}
}

// validateCIDRRule: a CIDR (prefix notation only) with exceptions inside it,
// or a CIDR group reference or selector; exactly one of the three.
func validateCIDRRule(r *reporter, p *field.Path, c *api.CIDRRule) {
	n := 0
	for _, set := range []bool{c.Cidr != "", c.CIDRGroupRef != "", c.CIDRGroupSelector != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		r.errorf("cidr", p, "exactly one of cidr, cidrGroupRef or cidrGroupSelector is required")
		return
	}
	if c.CIDRGroupSelector != nil {
		validateEndpointSelector(r, p.Child("cidrGroupSelector"), *c.CIDRGroupSelector)
	}
	if c.Cidr == "" {
		if len(c.ExceptCIDRs) > 0 {
			r.errorf("cidr", p.Child("except"), "except is only allowed with cidr")
		}
		return
	}
	prefix, err := netip.ParsePrefix(string(c.Cidr))
	if err != nil {
		r.errorf("cidr", p.Child("cidr"), "invalid CIDR %q: want a prefix such as 10.0.0.0/8", string(c.Cidr))
		return
	}
	for i, e := range c.ExceptCIDRs {
		ep := p.Child("except").Index(i)
		except, err := netip.ParsePrefix(string(e))
		if err != nil {
			r.errorf("cidr", ep, "invalid CIDR %q: want a prefix such as 10.0.0.0/8", string(e))
			continue
		}
		if except.Addr().Is4() != prefix.Addr().Is4() || !prefix.Contains(except.Addr()) || except.Bits() < prefix.Bits() {
			r.errorf("cidr", ep, "except %s is not inside cidr %s", except, prefix)
		}
	}
}

func validateFQDN(r *reporter, p *field.Path, f api.FQDNSelector) {
	switch {
	case f.MatchName == "" && f.MatchPattern == "":
		r.errorf("fqdn", p, "one of matchName or matchPattern is required")
	case f.MatchName != "" && f.MatchPattern != "":
		r.errorf("fqdn", p, "only one of matchName or matchPattern may be set")
	case f.MatchName != "":
		if !matchNameChars.MatchString(f.MatchName) || len(f.MatchName) > 255 {
			r.errorf("fqdn", p.Child("matchName"), "invalid name %q: only [-a-zA-Z0-9_.] allowed, at most 255 characters", f.MatchName)
		}
	default:
		if !matchPatternChars.MatchString(f.MatchPattern) || len(f.MatchPattern) > 255 {
			r.errorf("fqdn", p.Child("matchPattern"), "invalid pattern %q: only [-a-zA-Z0-9_.*] allowed, at most 255 characters", f.MatchPattern)
		}
	}
}

func validateAuthentication(r *reporter, p *field.Path, a *api.Authentication) {
	if a == nil {
		return
	}
	switch a.Mode {
	case "disabled", "required", "test-always-fail":
	default:
		r.errorf("authentication", p.Child("authentication", "mode"), "unsupported mode %q (disabled, required)", a.Mode)
	}
}

func validateICMPsWithPorts(r *reporter, p *field.Path, icmps []api.ICMPRule, ports []api.PortRule) {
	if len(icmps) > 0 && len(ports) > 0 {
		r.errorf("icmp", p.Child("icmps"), "icmps may only be present without toPorts; define a separate rule for toPorts")
	}
	for i, ir := range icmps {
		ip := p.Child("icmps").Index(i)
		if len(ir.Fields) > maxICMPFields {
			r.errorf("icmp", ip.Child("fields"), "too many types, the max is %d", maxICMPFields)
		}
		for j, f := range ir.Fields {
			validateICMPField(r, ip.Child("fields").Index(j), f)
		}
	}
}

func validateICMPField(r *reporter, p *field.Path, f api.ICMPField) {
	if _, err := api.ICMPType(f); err != nil {
		fp := p.Child("type")
		if strings.HasPrefix(err.Error(), "wrong family") {
			fp = p.Child("family")
		}
		r.errorf("icmp", fp, "%v", err)
	}
}
