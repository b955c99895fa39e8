package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/bulwark-net/bulwark/internal/identity"
	"github.com/bulwark-net/bulwark/internal/policy/api"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
	"github.com/bulwark-net/bulwark/internal/policy/selector"
)

// compileCilium translates a CiliumNetworkPolicy or
// CiliumClusterwideNetworkPolicy.
//
// Semantics (Cilium documentation and CRD reference):
//   - A namespaced policy's endpointSelector applies in its namespace only;
//     its peer selectors (fromEndpoints/toEndpoints) are confined to its
//     namespace unless they name io.kubernetes.pod.namespace, a namespace
//     label (io.cilium.k8s.namespace.labels.*) or a reserved: label. A
//     clusterwide policy's peer selectors that don't name the namespace
//     select pods of every namespace. Peer selectors without a reserved:
//     label select pods of this cluster only (never CIDR or reserved
//     identities), as Cilium adds the cluster label to them.
//   - A rule with a non-empty ingress or ingressDeny section puts the
//     selected endpoints in ingress default deny unless
//     enableDefaultDeny.ingress is false (same for egress). An empty list
//     ("ingress: []") is no section, as the CRD says.
//   - Within an element, the peer fields are ORed. An element with ports
//     (or icmps) but no peer field applies to every peer; an element with
//     neither ("{}") allows nothing; one with peers and no ports is L3-only.
//   - Protocol ANY (or none) is TCP, UDP and SCTP; port 0 (or none) is
//     every port. L7 rules make the ports' entries Redirect entries.
//   - Deny sections produce Deny entries, which win over every allow.
func compileCilium(p api.Policy) (*compiledPolicy, error) {
	meta := p.Meta()
	ref := resolved.PolicyRef{Kind: p.PolicyKind(), Namespace: meta.Namespace, Name: meta.Name}
	where := p.PolicyKind() + " " + ref.String()
	if meta.Name == "" {
		return nil, fmt.Errorf("%s: %w", p.PolicyKind(), fieldErrorf("metadata.name", "empty"))
	}
	ns := ""
	if p.PolicyKind() == KindCNP {
		if meta.Namespace == "" {
			return nil, fmt.Errorf("%s: %w", where, fieldErrorf("metadata.namespace", "empty"))
		}
		ns = meta.Namespace
	} else {
		ref.Namespace = ""
	}
	audit, err := auditMode(meta.Annotations)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	cp := &compiledPolicy{ref: ref, audit: audit}
	rules := p.Rules()
	if len(rules) == 0 {
		return nil, fmt.Errorf("%s: %w", where, fieldErrorf("spec", "neither spec nor specs is set"))
	}
	// The rule compiler below assumes no unsupported feature is used:
	// Unsupported is the one list of them.
	if unsupported := Unsupported(p); len(unsupported) > 0 {
		return nil, fmt.Errorf("%s: %w", where, unsupported[0])
	}
	for i := range rules {
		r := &rules[i]
		c := &ciliumCompiler{cp: cp, ns: ns, path: p.RulePath(i)}
		rule, err := c.rule(r, i)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		cp.rules = append(cp.rules, rule)
	}
	return cp, nil
}

type ciliumCompiler struct {
	cp   *compiledPolicy
	ns   string // "" for clusterwide
	path string
}

func (c *ciliumCompiler) rule(r *api.Rule, index int) (*compiledRule, error) {
	if r.EndpointSelector == nil {
		return nil, fieldErrorf(c.path+".endpointSelector", "required")
	}
	subjectSel := r.EndpointSelector.LabelSelector
	if c.ns != "" {
		// As Cilium: a namespaced policy's endpointSelector always applies
		// in the policy's namespace; a k8s:io.kubernetes.pod.namespace
		// matchLabels entry naming another namespace is replaced.
		subjectSel = *subjectSel.DeepCopy()
		for _, key := range []string{identity.LabelNamespace, identity.SourceK8s + ":" + identity.LabelNamespace, identity.SourceAny + ":" + identity.LabelNamespace} {
			delete(subjectSel.MatchLabels, key)
		}
	}
	subject, err := selector.FromLabelSelector(&subjectSel)
	if err != nil {
		return nil, fieldErrorf(c.path+".endpointSelector", "%v", err)
	}
	if c.ns != "" {
		subject = subject.And(nsIs(c.ns))
	}
	if len(r.Ingress) == 0 && len(r.IngressDeny) == 0 && len(r.Egress) == 0 && len(r.EgressDeny) == 0 {
		// As Cilium's rule sanitiser: a rule without a section is refused.
		return nil, fieldErrorf(c.path, "a rule needs at least one of ingress, ingressDeny, egress, egressDeny (Cilium rejects it)")
	}
	rule := &compiledRule{policy: c.cp.ref, audit: c.cp.audit, index: index, path: c.path, subject: subject}

	in := &rule.dirs[resolved.Ingress]
	in.present = len(r.Ingress) > 0 || len(r.IngressDeny) > 0
	in.defaultDeny = in.present && (r.EnableDefaultDeny.Ingress == nil || *r.EnableDefaultDeny.Ingress)
	for i := range r.Ingress {
		e := &r.Ingress[i]
		path := fmt.Sprintf("%s.ingress[%d]", c.path, i)
		it, err := c.item(path, resolved.Allow, &e.IngressCommonRule, nil, nil, e.ToPorts, e.ICMPs, resolved.Ingress)
		if err != nil {
			return nil, err
		}
		in.items = append(in.items, it)
	}
	for i := range r.IngressDeny {
		e := &r.IngressDeny[i]
		path := fmt.Sprintf("%s.ingressDeny[%d]", c.path, i)
		it, err := c.item(path, resolved.Deny, &e.IngressCommonRule, nil, nil, e.ToPorts, e.ICMPs, resolved.Ingress)
		if err != nil {
			return nil, err
		}
		in.items = append(in.items, it)
	}

	out := &rule.dirs[resolved.Egress]
	out.present = len(r.Egress) > 0 || len(r.EgressDeny) > 0
	out.defaultDeny = out.present && (r.EnableDefaultDeny.Egress == nil || *r.EnableDefaultDeny.Egress)
	for i := range r.Egress {
		e := &r.Egress[i]
		path := fmt.Sprintf("%s.egress[%d]", c.path, i)
		it, err := c.item(path, resolved.Allow, nil, &e.EgressCommonRule, e.ToFQDNs, e.ToPorts, e.ICMPs, resolved.Egress)
		if err != nil {
			return nil, err
		}
		out.items = append(out.items, it)
	}
	for i := range r.EgressDeny {
		e := &r.EgressDeny[i]
		path := fmt.Sprintf("%s.egressDeny[%d]", c.path, i)
		it, err := c.item(path, resolved.Deny, nil, &e.EgressCommonRule, nil, e.ToPorts, e.ICMPs, resolved.Egress)
		if err != nil {
			return nil, err
		}
		out.items = append(out.items, it)
	}
	return rule, nil
}

// item compiles one ingress/egress element. Exactly one of in/eg is set.
func (c *ciliumCompiler) item(path string, verdict resolved.Verdict, in *api.IngressCommonRule, eg *api.EgressCommonRule,
	fqdns []api.FQDNSelector, toPorts []api.PortRule, icmps []api.ICMPRule, dir resolved.Direction) (it ruleItem, err error) {
	it = ruleItem{verdict: verdict, path: path}
	// Peer fields of unsupported features (requires, nodes, groups, CIDR
	// group references) are absent: compileCilium refused them first.
	var (
		endpoints []api.EndpointSelector
		cidrs     []api.CIDR
		cidrSets  []api.CIDRRule
		entities  []api.Entity
		services  []api.Service
		prefix    string
	)
	if in != nil {
		endpoints, cidrs, cidrSets, entities = in.FromEndpoints, in.FromCIDR, in.FromCIDRSet, in.FromEntities
		prefix = "from"
	} else {
		endpoints, cidrs, cidrSets, entities, services = eg.ToEndpoints, eg.ToCIDR, eg.ToCIDRSet, eg.ToEntities, eg.ToServices
		prefix = "to"
	}
	hasL3 := len(endpoints) > 0 || len(cidrs) > 0 || len(cidrSets) > 0 || len(entities) > 0 || len(fqdns) > 0 || len(services) > 0
	// An explicitly empty peer list ("toEndpoints: []", also for CIDR,
	// CIDR sets and entities) selects nothing, and the element then
	// selects no peer at all whatever else it lists: Cilium's engine
	// (utils.mergeEndpointSelectors) drops such an element, while an
	// absent list leaves a ports-only element applying to every peer.
	// The element still counts as a section (default deny).
	explicitEmpty := (endpoints != nil && len(endpoints) == 0) || (cidrs != nil && len(cidrs) == 0) ||
		(cidrSets != nil && len(cidrSets) == 0) || (entities != nil && len(entities) == 0)
	if explicitEmpty {
		defer func() { it.peers, it.services = nil, nil }()
	}
	for j, svc := range services {
		ref, err := c.serviceRef(fmt.Sprintf("%s.toServices[%d]", path, j), svc)
		if err != nil {
			return it, err
		}
		it.services = append(it.services, ref)
		c.cp.usesServices = true
	}

	for j := range endpoints {
		s, err := c.peerSelector(&endpoints[j])
		if err != nil {
			return it, fieldErrorf(fmt.Sprintf("%s.%sEndpoints[%d]", path, prefix, j), "%v", err)
		}
		it.peers = append(it.peers, labelPeer(s))
	}
	for j, cidr := range cidrs {
		p, err := parseCIDR(string(cidr))
		if err != nil {
			return it, fieldErrorf(fmt.Sprintf("%s.%sCIDR[%d]", path, prefix, j), "%v", err)
		}
		c.cp.cidrs = append(c.cp.cidrs, p)
		it.peers = append(it.peers, cidrPeer(p, nil))
	}
	for j, cs := range cidrSets {
		p, err := parseCIDR(string(cs.Cidr))
		if err != nil {
			return it, fieldErrorf(fmt.Sprintf("%s.%sCIDRSet[%d].cidr", path, prefix, j), "%v", err)
		}
		var excepts []netip.Prefix
		for k, e := range cs.ExceptCIDRs {
			ep, err := parseCIDR(string(e))
			if err != nil {
				return it, fieldErrorf(fmt.Sprintf("%s.%sCIDRSet[%d].except[%d]", path, prefix, j, k), "%v", err)
			}
			excepts = append(excepts, ep)
		}
		c.cp.cidrs = append(c.cp.cidrs, p)
		c.cp.cidrs = append(c.cp.cidrs, excepts...)
		it.peers = append(it.peers, cidrPeer(p, excepts))
	}
	for j, e := range entities {
		sels, err := entitySelectors(string(e))
		if err != nil {
			return it, fieldErrorf(fmt.Sprintf("%s.%sEntities[%d]", path, prefix, j), "%v", err)
		}
		for _, s := range sels {
			it.peers = append(it.peers, labelPeer(s))
		}
	}
	if len(fqdns) > 0 {
		var names, patterns []string
		for j, f := range fqdns {
			switch {
			case f.MatchName != "" && f.MatchPattern == "":
				names = append(names, f.MatchName)
			case f.MatchPattern != "" && f.MatchName == "":
				patterns = append(patterns, f.MatchPattern)
			default:
				return it, fieldErrorf(fmt.Sprintf("%s.toFQDNs[%d]", path, j), "exactly one of matchName and matchPattern must be set")
			}
		}
		m, err := newFQDNMatcher(names, patterns)
		if err != nil {
			return it, fieldErrorf(path+".toFQDNs", "%v", err)
		}
		it.peers = append(it.peers, fqdnPeer(m))
	}

	hasL4 := len(toPorts) > 0 || len(icmps) > 0
	if !hasL3 && hasL4 {
		it.peers = []peerSpec{labelPeer(selector.All())}
	}
	if !hasL4 {
		it.l3Only = true
		return it, nil
	}
	for j := range toPorts {
		pr := &toPorts[j]
		pp := fmt.Sprintf("%s.toPorts[%d]", path, j)
		if c.cp.audit && pr.HasL7() {
			// Rule zero: the proxy enforces L7 rules (a request they do
			// not allow gets 403); it has no audit mode, so such rules in
			// an audit-mode policy would drop what the policy promises to
			// pass. An enforcing policy may carry them, and an audit-mode
			// deny of the port flags the redirected traffic.
			return it, fieldErrorf(pp+".rules", "L7 rules in an audit-mode policy (annotation %s) are not supported: the L7 proxy would enforce them; put them in an enforcing policy", AuditAnnotation)
		}
		l7, err := l7Rules(pr, pp, verdict, dir)
		if err != nil {
			return it, err
		}
		ports := pr.Ports
		if len(ports) == 0 {
			if l7 != nil {
				return it, fieldErrorf(pp+".rules", "L7 rules need ports")
			}
			// As Cilium's engine: a toPorts element without ports
			// contributes no port (it matches no traffic).
			continue
		}
		for k, port := range ports {
			kp := fmt.Sprintf("%s.ports[%d]", pp, k)
			proto, err := port.Proto()
			if err != nil {
				return it, fieldErrorf(kp+".protocol", "%v", err)
			}
			if strings.TrimSpace(string(port.Port)) == "" {
				// Cilium's sanitiser: "port must be specified".
				return it, fieldErrorf(kp+".port", "required (a number, \"0\" for every port, or a port name), as Cilium requires")
			}
			spec, err := port.Parse()
			if err != nil {
				field := kp + ".port"
				if strings.HasPrefix(err.Error(), "endPort") {
					field = kp + ".endPort" // the range's end is wrong, not the port
				}
				return it, fieldErrorf(field, "%v", err)
			}
			protos := []resolved.Protocol{proto}
			if proto == resolved.ProtoAny {
				protos = []resolved.Protocol{resolved.ProtoTCP, resolved.ProtoUDP, resolved.ProtoSCTP}
			}
			if spec.IsNamed() {
				if dir == resolved.Egress {
					c.cp.egressNamed = true
				}
				ps := portSpec{proto: proto, name: spec.Name, anyProto: proto == resolved.ProtoAny, l7: l7}
				it.ports = append(it.ports, ps)
				continue
			}
			lo, hi := spec.Range()
			for _, pr := range protos {
				ps := portSpec{proto: pr, lo: lo, hi: hi, l7: l7}
				if pr == resolved.ProtoICMP || pr == resolved.ProtoICMPv6 {
					ps.lo, ps.hi = 0, 0
				}
				it.ports = append(it.ports, ps)
			}
		}
	}
	for j, ic := range icmps {
		if len(ic.Fields) == 0 {
			return it, fieldErrorf(fmt.Sprintf("%s.icmps[%d].fields", path, j), "empty")
		}
		for k, f := range ic.Fields {
			proto := resolved.ProtoICMP
			switch strings.ToLower(f.Family) {
			case "", "ipv4":
			case "ipv6":
				proto = resolved.ProtoICMPv6
			default:
				return it, fieldErrorf(fmt.Sprintf("%s.icmps[%d].fields[%d].family", path, j, k), "%q is not IPv4 or IPv6", f.Family)
			}
			// ICMP entries cover every ICMP type of the family: the
			// resolved table has no ICMP type field (see package doc).
			it.ports = append(it.ports, portSpec{proto: proto})
		}
	}
	if len(it.ports) == 0 {
		// Only port rules without ports: the element matches no traffic
		// (Cilium adds neither an L4 nor an L3-only filter for it).
		it.peers, it.services, it.l3Only = nil, nil, true
	}
	return it, nil
}

// serviceRef compiles a toServices element. The namespace defaults to the
// policy's (for a clusterwide policy: a named Service needs one; a label
// selector without one selects Services of every namespace).
func (c *ciliumCompiler) serviceRef(path string, svc api.Service) (serviceRef, error) {
	switch {
	case svc.K8sService != nil && svc.K8sServiceSelector == nil:
		ns := svc.K8sService.Namespace
		if ns == "" {
			ns = c.ns
		}
		if svc.K8sService.ServiceName == "" {
			return serviceRef{}, fieldErrorf(path+".k8sService.serviceName", "required")
		}
		if ns == "" {
			return serviceRef{}, fieldErrorf(path+".k8sService.namespace", "required in a clusterwide policy")
		}
		return serviceRef{namespace: ns, name: svc.K8sService.ServiceName}, nil
	case svc.K8sServiceSelector != nil && svc.K8sService == nil:
		sel, err := k8sSelector(&svc.K8sServiceSelector.Selector.LabelSelector, "")
		if err != nil {
			return serviceRef{}, fieldErrorf(path+".k8sServiceSelector.selector", "%v", err)
		}
		ns := svc.K8sServiceSelector.Namespace
		if ns == "" {
			ns = c.ns
		}
		return serviceRef{namespace: ns, labels: &sel}, nil
	}
	return serviceRef{}, fieldErrorf(path, "exactly one of k8sService and k8sServiceSelector must be set")
}

func parseCIDR(s string) (netip.Prefix, error) {
	p, err := identity.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or CIDR prefix", s)
	}
	return p, nil
}

// peerSelector applies Cilium's scoping to a peer selector (Cilium v1.20,
// k8s/apis/cilium.io/utils getEndpointSelector): a selector on reserved
// labels is left alone; otherwise a namespaced policy's selector is
// confined to its namespace unless it names the namespace or a namespace
// label, a clusterwide policy's selects pods only, and every such selector
// selects pods of this cluster only (the cluster label, unless the
// selector names it), so never CIDR or reserved identities.
func (c *ciliumCompiler) peerSelector(es *api.EndpointSelector) (selector.Selector, error) {
	s, err := selector.FromLabelSelector(&es.LabelSelector)
	if err != nil {
		return s, err
	}
	if s.HasSource(identity.SourceReserved) {
		return s, nil
	}
	switch {
	case s.HasKey(identity.LabelNamespace):
	case c.ns == "":
		s = s.And(isPod)
	case namesNamespaceLabel(s):
	default:
		s = s.And(nsIs(c.ns))
	}
	if !s.HasKey(identity.LabelCluster) {
		s = s.And(selector.Requirement{Source: identity.SourceK8s, Key: identity.LabelCluster, Op: selector.In, Values: []string{identity.DefaultClusterName}})
	}
	return s, nil
}

// namesNamespaceLabel: a requirement on io.cilium.k8s.namespace.labels.*.
func namesNamespaceLabel(s selector.Selector) bool {
	for _, r := range s.Requirements() {
		if (r.Source == identity.SourceK8s || r.Source == identity.SourceAny) && strings.HasPrefix(r.Key, identity.LabelNamespacePrefix) {
			return true
		}
	}
	return false
}

func reservedSel(name string) selector.Selector {
	return selector.New(selector.Requirement{Source: identity.SourceReserved, Key: name, Op: selector.Exists})
}

// entitySelectors maps an entity to the selectors of its identities
// (Cilium's mapping; "cluster" is every pod of this cluster plus the
// node-level reserved identities).
func entitySelectors(e string) ([]selector.Selector, error) {
	switch e {
	case identity.EntityAll:
		return []selector.Selector{selector.All()}, nil
	case identity.EntityNone:
		return nil, nil
	case identity.EntityWorld:
		return []selector.Selector{reservedSel("world"), reservedSel("world-ipv4"), reservedSel("world-ipv6")}, nil
	case identity.EntityCluster:
		return []selector.Selector{
			reservedSel("host"), reservedSel("remote-node"), reservedSel("init"), reservedSel("ingress"),
			reservedSel("health"), reservedSel("unmanaged"), reservedSel("kube-apiserver"),
			selector.New(selector.Requirement{Source: identity.SourceK8s, Key: identity.LabelCluster, Op: selector.In, Values: []string{identity.DefaultClusterName}}),
		}, nil
	case identity.EntityWorldIPv4, identity.EntityWorldIPv6, identity.EntityHost, identity.EntityRemoteNode,
		identity.EntityKubeAPIServer, identity.EntityHealth, identity.EntityInit, identity.EntityIngress, identity.EntityUnmanaged:
		return []selector.Selector{reservedSel(e)}, nil
	}
	return nil, fmt.Errorf("unknown entity %q", e)
}

func l7Rules(pr *api.PortRule, path string, verdict resolved.Verdict, dir resolved.Direction) (*resolved.L7Rules, error) {
	if !pr.HasL7() {
		return nil, nil
	}
	if verdict == resolved.Deny {
		return nil, fieldErrorf(path+".rules", "deny rules cannot carry L7 rules")
	}
	r := pr.Rules
	out := &resolved.L7Rules{}
	for i, h := range r.HTTP {
		hp := fmt.Sprintf("%s.rules.http[%d]", path, i)
		// Invalid expressions are refused here too: a rule the proxy could
		// not compile would deny everything while showing as active.
		for _, f := range []struct{ name, re string }{{"method", h.Method}, {"path", h.Path}, {"host", h.Host}} {
			if f.re == "" {
				continue
			}
			if _, err := regexp.Compile(f.re); err != nil {
				return nil, fieldErrorf(hp+"."+f.name, "invalid regular expression %q: %v", f.re, err)
			}
		}
		hr := resolved.HTTPRule{Method: h.Method, Path: h.Path, Host: h.Host, Headers: append([]string(nil), h.Headers...)}
		for j, m := range h.HeaderMatches {
			mp := fmt.Sprintf("%s.headerMatches[%d]", hp, j)
			if m.Name == "" {
				return nil, fieldErrorf(mp+".name", "required")
			}
			switch act := resolved.MismatchAction(m.Mismatch); act {
			case resolved.MismatchFail, resolved.MismatchLog, resolved.MismatchAdd, resolved.MismatchDelete, resolved.MismatchReplace:
				hr.HeaderMatches = append(hr.HeaderMatches, resolved.HeaderMatch{Name: m.Name, Value: m.Value, Mismatch: act})
			default:
				return nil, fieldErrorf(mp+".mismatch", "unsupported mismatch action %q (LOG, ADD, DELETE, REPLACE)", m.Mismatch)
			}
		}
		out.HTTP = append(out.HTTP, hr)
	}
	for i, d := range r.DNS {
		if dir != resolved.Egress {
			return nil, fieldErrorf(fmt.Sprintf("%s.rules.dns[%d]", path, i), "DNS rules apply to egress only")
		}
		if (d.MatchName == "") == (d.MatchPattern == "") {
			return nil, fieldErrorf(fmt.Sprintf("%s.rules.dns[%d]", path, i), "exactly one of matchName and matchPattern must be set")
		}
		out.DNS = append(out.DNS, resolved.DNSRule{MatchName: d.MatchName, MatchPattern: d.MatchPattern})
	}
	return out, nil
}
