package policy

import (
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// RuleInfo describes a rule selecting an endpoint, for explanations.
type RuleInfo struct {
	Policy  resolved.PolicyRef
	Path    string // "spec", "specs[1]"
	Subject string // the effective endpoint selector
	Audit   bool   // the policy is in audit mode (AuditAnnotation)
	// Sections, indexed by resolved.Direction.
	Sections [2]SectionInfo
}

// SectionInfo describes a rule's section for one direction.
type SectionInfo struct {
	Present     bool
	DefaultDeny bool
	Items       []ItemInfo
}

// ItemInfo is one ingress/egress element of a rule.
type ItemInfo struct {
	Path    string
	Verdict resolved.Verdict
	Peers   []string // selectors, human form
	Ports   []string // "TCP/8080", "UDP/53-54", "TCP/http" (named); empty: L3-only
}

// Rules returns the rules selecting an endpoint, in policy order.
func (s *Snapshot) Rules(k EndpointKey) []RuleInfo {
	ep, ok := s.Endpoints[k]
	if !ok {
		return nil
	}
	out := make([]RuleInfo, 0, len(ep.rules))
	for _, r := range ep.rules {
		ri := RuleInfo{Policy: r.policy, Path: r.path, Subject: "{" + r.subject.String() + "}", Audit: r.audit}
		for d := range r.dirs {
			sec := &r.dirs[d]
			si := SectionInfo{Present: sec.present, DefaultDeny: sec.defaultDeny}
			for _, it := range sec.items {
				ii := ItemInfo{Path: it.path, Verdict: auditVerdict(it.verdict, r.audit)}
				for _, p := range it.peers {
					ii.Peers = append(ii.Peers, p.String())
				}
				for _, svc := range it.services {
					ii.Peers = append(ii.Peers, svc.String())
				}
				for _, p := range it.ports {
					ii.Ports = append(ii.Ports, p.String())
				}
				si.Items = append(si.Items, ii)
			}
			ri.Sections[d] = si
		}
		out = append(out, ri)
	}
	return out
}
