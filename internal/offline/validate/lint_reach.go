package validate

import (
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/bulwark-net/bulwark/internal/policy/api"
)

// maxReachChecks bounds the flows evaluated per ingress rule.
const maxReachChecks = 256

// lintUnreachableIngress (lint f): an ingress allow (fromEndpoints on some
// ports) that can never take effect, because every peer it admits is in
// egress default deny and no egress rule lets that peer reach the selected
// pods on those ports. It asks the policy engine (internal/offline/check) for
// the verdict of each peer → pod flow the rule is about: the rule is
// flagged when its own side allows at least one such flow but no flow is
// allowed end to end. Rules without ports (L3-only) or with only named
// ports are not checked. Skipped when the input does not load into the
// engine (validation reports why).
func (l *linter) lintUnreachableIngress() []Finding {
	if !l.havePods {
		return l.lintUnreachableIngressBySelectors()
	}
	state, err := check.FromSet(l.set)
	if err != nil {
		return nil
	}
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
			subject, err := api.EffectiveSubjectSelector(ns, *rule.EndpointSelector).Selector()
			if err != nil {
				continue
			}
			for i, in := range rule.Ingress {
				if len(in.FromEndpoints) == 0 {
					continue
				}
				ports := numericPorts(in.ToPorts)
				if len(ports) == 0 {
					continue
				}
				path := field.NewPath(p.RulePath(ri)).Child("ingress").Index(i)
				l.checkIngressReach(r, state, path, subject.Matches, ns, in.FromEndpoints, ports)
			}
		}
		out = append(out, r.out...)
	}
	return out
}

type portProto struct {
	port  int
	proto string
}

// numericPorts lists the numeric (port, protocol) pairs of port rules; ANY
// is checked as TCP, a range by its first port.
func numericPorts(prs []api.PortRule) []portProto {
	var out []portProto
	for _, pr := range prs {
		for _, pp := range pr.Ports {
			spec, err := pp.Parse()
			if err != nil || spec.IsNamed() || spec.Number == 0 {
				continue
			}
			proto := string(pp.Protocol)
			if proto == "" || proto == string(api.ProtoAny) {
				proto = string(api.ProtoTCP)
			}
			if proto != "TCP" && proto != "UDP" && proto != "SCTP" {
				continue
			}
			out = append(out, portProto{int(spec.Number), proto})
		}
	}
	return out
}

func (l *linter) checkIngressReach(r *reporter, state *check.State, path *field.Path,
	isSubject func(labels.Labels) bool, ns string, peers []api.EndpointSelector, ports []portProto) {
	var example *check.Result
	checks := 0
	for _, dst := range l.pods {
		if !isSubject(dst.labels) {
			continue
		}
		for _, src := range l.pods {
			if src.pod == dst.pod || !admits(ns, peers, src) {
				continue
			}
			for _, pp := range ports {
				if checks >= maxReachChecks {
					break
				}
				checks++
				res, err := state.Check(check.Flow{
					Src: src.pod.Namespace + "/" + src.pod.Name, Dst: dst.pod.Namespace + "/" + dst.pod.Name,
					Port: pp.port, Protocol: pp.proto,
				})
				if err != nil {
					continue
				}
				if res.Verdict == "allowed" {
					return // the rule takes effect for at least one flow
				}
				if res.Ingress == "allowed" && res.Egress == "denied" && example == nil {
					res := res
					example = &res
				}
			}
		}
	}
	if example == nil {
		return
	}
	why := ""
	if len(example.Policies) > 0 {
		if d := example.EgressDecision; d != nil && d.Default {
			why = ", which is default-deny through " + strings.Join(example.Policies, ", ")
		} else {
			why = ", denied by " + strings.Join(example.Policies, ", ")
		}
	}
	r.warnf("lint/ingress-unreachable", path,
		"this ingress allow never takes effect: every peer it admits is in egress default deny and no egress rule lets it reach the selected pods (e.g. %s -> %s %s/%d is dropped at %s's egress%s); add an egress allow for the peers",
		example.Src, example.Dst, example.Protocol, example.Port, example.Src, why)
}

func admits(ns string, peers []api.EndpointSelector, p lintPod) bool {
	for _, s := range peers {
		sel, err := api.EffectivePeerSelector(ns, s).Selector()
		if err == nil && sel.Matches(p.labels) {
			return true
		}
	}
	return false
}
