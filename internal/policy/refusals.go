package policy

import (
	"fmt"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// CompilePolicy compiles one policy document (a *networkingv1.NetworkPolicy
// or an api.Policy: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy)
// exactly as the Repository does when it is loaded, and returns the
// refusal, or nil when the engine would load it. A refusal of a field wraps
// a *FieldError (errors.As); its Feature is set for Cilium features Bulwark
// does not implement. CompilePolicy changes nothing.
func CompilePolicy(obj any) error {
	switch o := obj.(type) {
	case *networkingv1.NetworkPolicy:
		if o == nil {
			return fmt.Errorf("NetworkPolicy: nil object")
		}
		_, err := compileNetworkPolicy(o)
		return err
	case api.Policy:
		if isNilObject(o) {
			return fmt.Errorf("%T: nil object", o)
		}
		_, err := compileCilium(o)
		return err
	}
	return fmt.Errorf("%T is not a policy document", obj)
}

// FieldError is the engine's refusal of one field of a policy document.
// Every compile error of a policy wraps one (find it with errors.As), so a
// caller can point at the exact field.
type FieldError struct {
	// Field is the JSON path of the refused field, e.g.
	// "spec.ingress[0].fromRequires".
	Field string
	// Reason says why, e.g. "fromRequires is not supported".
	Reason string
	// Feature is set when the field is valid for Cilium but uses a
	// feature Bulwark does not implement: one of UnsupportedFeatures().
	Feature string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErrorf(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Cilium features the engine does not implement. A policy using any of
// them is refused as a whole (never loaded with the feature ignored, which
// would enforce something other than what the policy says).
const (
	FeatureHostPolicies  = "host policies"
	FeatureFromRequires  = "fromRequires"
	FeatureToRequires    = "toRequires"
	FeatureFromNodes     = "fromNodes"
	FeatureToNodes       = "toNodes"
	FeatureGroups        = "cloud provider groups"
	FeatureCIDRGroups    = "CiliumCIDRGroup references"
	FeatureMutualAuth    = "mutual authentication"
	FeatureTLS           = "TLS interception"
	FeatureListener      = "Envoy listeners"
	FeatureServerNames   = "serverNames"
	FeatureKafka         = "Kafka rules"
	FeatureGenericL7     = "generic L7 parsers"
	FeatureHeaderSecrets = "headerMatches secrets"
)

// unsupportedFeatures maps every feature to the verb of its reason ("is" or
// "are", for "<feature> is not supported").
var unsupportedFeatures = []struct{ name, verb string }{
	{FeatureHostPolicies, "are"}, {FeatureFromRequires, "is"}, {FeatureToRequires, "is"},
	{FeatureFromNodes, "is"}, {FeatureToNodes, "is"}, {FeatureGroups, "are"},
	{FeatureCIDRGroups, "are"}, {FeatureMutualAuth, "is"}, {FeatureTLS, "is"},
	{FeatureListener, "are"}, {FeatureServerNames, "is"}, {FeatureKafka, "are"},
	{FeatureGenericL7, "are"}, {FeatureHeaderSecrets, "are"},
}

// UnsupportedFeatures lists every Feature a FieldError can carry.
func UnsupportedFeatures() []string {
	out := make([]string, len(unsupportedFeatures))
	for i, f := range unsupportedFeatures {
		out[i] = f.name
	}
	return out
}

// unsupportedReason is the FieldError reason of a feature.
func unsupportedReason(feature string) string {
	for _, f := range unsupportedFeatures {
		if f.name == feature {
			return feature + " " + f.verb + " not supported"
		}
	}
	return feature + " is not supported"
}

// Unsupported returns every use in p of a feature the engine does not
// implement, in document order. It is the engine's only list of such
// features: compiling p fails with the first of them.
func Unsupported(p api.Policy) []*FieldError {
	var out []*FieldError
	no := func(field, feature string) {
		out = append(out, &FieldError{Field: field, Reason: unsupportedReason(feature), Feature: feature})
	}
	for i, r := range p.Rules() {
		rp := p.RulePath(i)
		if r.NodeSelector != nil {
			no(rp+".nodeSelector", FeatureHostPolicies)
		}
		for j := range r.Ingress {
			e := &r.Ingress[j]
			path := fmt.Sprintf("%s.ingress[%d]", rp, j)
			unsupportedPeers(path, "from", e.FromRequires, e.FromNodes, e.FromGroups, e.FromCIDRSet, no)
			unsupportedPorts(path, e.ToPorts, no)
			unsupportedAuth(path, e.Authentication, no)
		}
		for j := range r.IngressDeny {
			e := &r.IngressDeny[j]
			path := fmt.Sprintf("%s.ingressDeny[%d]", rp, j)
			unsupportedPeers(path, "from", e.FromRequires, e.FromNodes, e.FromGroups, e.FromCIDRSet, no)
			unsupportedPorts(path, e.ToPorts, no)
		}
		for j := range r.Egress {
			e := &r.Egress[j]
			path := fmt.Sprintf("%s.egress[%d]", rp, j)
			unsupportedPeers(path, "to", e.ToRequires, e.ToNodes, e.ToGroups, e.ToCIDRSet, no)
			unsupportedPorts(path, e.ToPorts, no)
			unsupportedAuth(path, e.Authentication, no)
		}
		for j := range r.EgressDeny {
			e := &r.EgressDeny[j]
			path := fmt.Sprintf("%s.egressDeny[%d]", rp, j)
			unsupportedPeers(path, "to", e.ToRequires, e.ToNodes, e.ToGroups, e.ToCIDRSet, no)
			unsupportedPorts(path, e.ToPorts, no)
		}
	}
	return out
}

func unsupportedPeers(path, prefix string, requires, nodes []api.EndpointSelector, groups []api.Groups, cidrSets []api.CIDRRule, no func(field, feature string)) {
	if len(requires) > 0 {
		feature := FeatureFromRequires
		if prefix == "to" {
			feature = FeatureToRequires
		}
		no(path+"."+prefix+"Requires", feature)
	}
	if len(nodes) > 0 {
		feature := FeatureFromNodes
		if prefix == "to" {
			feature = FeatureToNodes
		}
		no(path+"."+prefix+"Nodes", feature)
	}
	if len(groups) > 0 {
		no(path+"."+prefix+"Groups", FeatureGroups)
	}
	for k, cs := range cidrSets {
		if cs.CIDRGroupRef != "" || cs.CIDRGroupSelector != nil {
			no(fmt.Sprintf("%s.%sCIDRSet[%d]", path, prefix, k), FeatureCIDRGroups)
		}
	}
}

func unsupportedAuth(path string, a *api.Authentication, no func(field, feature string)) {
	if a != nil && a.Mode != "" && a.Mode != "disabled" {
		no(path+".authentication", FeatureMutualAuth)
	}
}

func unsupportedPorts(path string, prs []api.PortRule, no func(field, feature string)) {
	for k := range prs {
		pr := &prs[k]
		pp := fmt.Sprintf("%s.toPorts[%d]", path, k)
		if pr.TerminatingTLS != nil || pr.OriginatingTLS != nil {
			no(pp, FeatureTLS)
		}
		if pr.Listener != nil {
			no(pp+".listener", FeatureListener)
		}
		if len(pr.ServerNames) > 0 {
			no(pp+".serverNames", FeatureServerNames)
		}
		if pr.Rules == nil {
			continue
		}
		if len(pr.Rules.Kafka) > 0 {
			no(pp+".rules.kafka", FeatureKafka)
		}
		if pr.Rules.L7Proto != "" || len(pr.Rules.L7) > 0 {
			no(pp+".rules.l7proto", FeatureGenericL7)
		}
		for h, rule := range pr.Rules.HTTP {
			for j, m := range rule.HeaderMatches {
				if m.Secret != nil {
					no(fmt.Sprintf("%s.rules.http[%d].headerMatches[%d].secret", pp, h, j), FeatureHeaderSecrets)
				}
			}
		}
	}
}
