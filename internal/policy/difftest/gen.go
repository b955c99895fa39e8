package difftest

import (
	"fmt"
	"math/rand"

	"sigs.k8s.io/yaml"
)

// Kind selects the policy documents a scenario holds.
type Kind int

const (
	NetworkPolicies Kind = iota // networking.k8s.io/v1 NetworkPolicy only
	CiliumPolicies              // CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy only
	MixedPolicies               // all three kinds in one scenario
)

// The model's vocabulary: small, so that selectors often match.
var (
	nsNames     = []string{"x", "y", "z"}
	labelKeys   = []string{"app", "tier"}
	labelValues = []string{"a", "b", "c"}
	nsLabelKeys = []string{"team", "env"}
	portNames   = []string{"http", "dns", "metrics"}
	protocols   = []string{"TCP", "UDP", "SCTP"}
	// CellPorts are the destination ports every cell set covers.
	CellPorts = []int{53, 80, 81}
	// externals: inside 192.0.2.0/24 but not its upper /25, inside the
	// upper /25, and in another range.
	externals = []string{"192.0.2.10", "192.0.2.200", "198.51.100.7"}
	cidrs     = []string{"192.0.2.0/24", "192.0.2.128/25", "198.51.100.0/24", "0.0.0.0/0", "192.0.2.10/32"}
	excepts   = map[string][]string{
		"192.0.2.0/24":    {"192.0.2.128/25", "192.0.2.10/32"},
		"0.0.0.0/0":       {"192.0.2.0/24", "198.51.100.0/24"},
		"198.51.100.0/24": {"198.51.100.0/25"},
	}
)

type gen struct {
	r    *rand.Rand
	kind Kind
	n    int // policy counter
}

func (g *gen) pick(xs []string) string { return xs[g.r.Intn(len(xs))] }
func (g *gen) chance(p float64) bool   { return g.r.Float64() < p }

// Generate returns the scenario of a seed; the same seed gives the same
// scenario.
func Generate(seed int64, kind Kind) *Scenario {
	g := &gen{r: rand.New(rand.NewSource(seed)), kind: kind}
	s := &Scenario{Seed: seed, Externals: externals}
	portsOf := map[string][]Port{} // identity (ns + labels) -> named ports
	for i, ns := range nsNames[:2+g.r.Intn(2)] {
		labels := map[string]string{"kubernetes.io/metadata.name": ns}
		for _, k := range nsLabelKeys {
			if g.chance(0.6) {
				labels[k] = g.pick(labelValues)
			}
		}
		s.Namespaces = append(s.Namespaces, Namespace{Name: ns, Labels: labels})
		for j := 0; j < 2+g.r.Intn(2); j++ {
			labels := map[string]string{}
			for _, k := range labelKeys {
				if g.chance(0.7) {
					labels[k] = g.pick(labelValues)
				}
			}
			key := ns + fmt.Sprint(labels)
			ports, ok := portsOf[key]
			if !ok {
				ports = g.podPorts()
				portsOf[key] = ports
			}
			s.Pods = append(s.Pods, Pod{Namespace: ns, Name: fmt.Sprintf("p%d", j), Labels: labels,
				IP: fmt.Sprintf("10.0.%d.%d", i, j+1), Ports: ports})
		}
	}
	for _, ns := range s.Namespaces {
		for k := 0; k < 1+g.r.Intn(3); k++ {
			s.Policies = append(s.Policies, g.policy(ns.Name))
		}
	}
	if kind != NetworkPolicies && g.chance(0.5) {
		s.Policies = append(s.Policies, g.policy(""))
	}
	var peers []string
	for _, p := range s.Pods {
		peers = append(peers, p.Ref())
	}
	peers = append(peers, s.Externals...)
	isPod := func(ref string) bool { return len(ref) > 0 && ref[0] >= 'a' && ref[0] <= 'z' }
	for _, src := range peers {
		for _, dst := range peers {
			// Outside-to-outside is no cell of the cluster; a pod's
			// traffic to itself stays in its network namespace, where no
			// engine (Bulwark's check included) applies policy.
			if (!isPod(src) && !isPod(dst)) || src == dst {
				continue
			}
			for _, proto := range protocols {
				for _, port := range CellPorts {
					s.Cells = append(s.Cells, Cell{Src: src, Dst: dst, Protocol: proto, Port: port})
				}
			}
		}
	}
	return s
}

// podPorts gives an identity's containers some named ports (a name at
// most once per pod, as Kubernetes validates) and maybe an unnamed one.
func (g *gen) podPorts() []Port {
	var out []Port
	used := map[string]bool{}
	for _, name := range portNames {
		if !g.chance(0.5) {
			continue
		}
		proto, port := g.pick(protocols), CellPorts[g.r.Intn(len(CellPorts))]
		key := fmt.Sprint(proto, port)
		if used[key] {
			continue
		}
		used[key] = true
		out = append(out, Port{Name: name, Protocol: proto, Port: port})
	}
	return out
}

// labelSelector: matchLabels and/or matchExpressions with every operator;
// empty sometimes (selects everything). keyPrefix is put before keys (for
// Cilium's namespace-label keys).
func (g *gen) labelSelector(keys []string, keyPrefix string) map[string]any {
	sel := map[string]any{}
	if g.chance(0.25) {
		return sel
	}
	if g.chance(0.6) {
		ml := map[string]any{keyPrefix + g.pick(keys): g.pick(labelValues)}
		sel["matchLabels"] = ml
	}
	if g.chance(0.5) || len(sel) == 0 {
		var exprs []any
		for i := 0; i < 1+g.r.Intn(2); i++ {
			e := map[string]any{"key": keyPrefix + g.pick(keys)}
			switch g.r.Intn(4) {
			case 0:
				e["operator"] = "In"
				e["values"] = []string{g.pick(labelValues), g.pick(labelValues)}
			case 1:
				e["operator"] = "NotIn"
				e["values"] = []string{g.pick(labelValues)}
			case 2:
				e["operator"] = "Exists"
			case 3:
				e["operator"] = "DoesNotExist"
			}
			exprs = append(exprs, e)
		}
		sel["matchExpressions"] = exprs
	}
	return sel
}

func (g *gen) policy(ns string) string {
	g.n++
	var doc map[string]any
	if g.kind == NetworkPolicies || (g.kind == MixedPolicies && ns != "" && g.chance(0.5)) {
		doc = g.networkPolicy(ns)
	} else {
		doc = g.ciliumPolicy(ns)
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		panic(fmt.Sprintf("difftest: marshal generated policy: %v", err)) // maps of plain values always marshal
	}
	return string(b)
}

func (g *gen) networkPolicy(ns string) map[string]any {
	spec := map[string]any{"podSelector": g.labelSelector(labelKeys, "")}
	switch g.r.Intn(5) {
	case 1:
		spec["policyTypes"] = []string{"Ingress"}
	case 2:
		spec["policyTypes"] = []string{"Egress"}
	case 3:
		spec["policyTypes"] = []string{"Ingress", "Egress"}
	}
	for _, dir := range []string{"ingress", "egress"} {
		switch g.r.Intn(4) {
		case 0: // absent
		case 1:
			spec[dir] = []any{}
		default:
			var rules []any
			for i := 0; i < 1+g.r.Intn(2); i++ {
				rules = append(rules, g.npRule(dir))
			}
			spec[dir] = rules
		}
	}
	return map[string]any{
		"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
		"metadata": map[string]any{"name": fmt.Sprintf("np%d", g.n), "namespace": ns},
		"spec":     spec,
	}
}

func (g *gen) npRule(dir string) map[string]any {
	rule := map[string]any{}
	field := "from"
	if dir == "egress" {
		field = "to"
	}
	if g.chance(0.75) {
		var peers []any
		for i := 0; i < 1+g.r.Intn(2); i++ {
			peer := map[string]any{}
			switch g.r.Intn(4) {
			case 0:
				peer["podSelector"] = g.labelSelector(labelKeys, "")
			case 1:
				peer["namespaceSelector"] = g.labelSelector(nsLabelKeys, "")
			case 2:
				peer["podSelector"] = g.labelSelector(labelKeys, "")
				peer["namespaceSelector"] = g.labelSelector(nsLabelKeys, "")
			case 3:
				cidr := g.pick(cidrs)
				ib := map[string]any{"cidr": cidr}
				if ex := excepts[cidr]; len(ex) > 0 && g.chance(0.5) {
					ib["except"] = ex[:1+g.r.Intn(len(ex))]
				}
				peer["ipBlock"] = ib
			}
			peers = append(peers, peer)
		}
		rule[field] = peers
	}
	if g.chance(0.7) {
		var ports []any
		for i := 0; i < 1+g.r.Intn(2); i++ {
			p := map[string]any{}
			if g.chance(0.8) {
				p["protocol"] = g.pick(protocols)
			}
			switch g.r.Intn(4) {
			case 0:
				p["port"] = CellPorts[g.r.Intn(len(CellPorts))]
			case 1:
				p["port"] = 53
				p["endPort"] = 53 + 27*g.r.Intn(2) + g.r.Intn(2)
			case 2:
				p["port"] = g.pick(portNames)
			case 3: // every port of the protocol
			}
			ports = append(ports, p)
		}
		rule["ports"] = ports
	}
	return rule
}

func (g *gen) ciliumPolicy(ns string) map[string]any {
	kind, meta := "CiliumNetworkPolicy", map[string]any{"name": fmt.Sprintf("cnp%d", g.n), "namespace": ns}
	if ns == "" {
		kind, meta = "CiliumClusterwideNetworkPolicy", map[string]any{"name": fmt.Sprintf("ccnp%d", g.n)}
	}
	spec := map[string]any{"endpointSelector": g.labelSelector(labelKeys, "")}
	for _, sec := range []string{"ingress", "ingressDeny", "egress", "egressDeny"} {
		switch g.r.Intn(5) {
		case 0, 1: // absent
		case 2:
			spec[sec] = []any{}
		default:
			var rules []any
			for i := 0; i < 1+g.r.Intn(2); i++ {
				rules = append(rules, g.cnpRule(sec))
			}
			spec[sec] = rules
		}
	}
	nonEmpty := false
	for _, sec := range []string{"ingress", "ingressDeny", "egress", "egressDeny"} {
		if l, ok := spec[sec].([]any); ok && len(l) > 0 {
			nonEmpty = true
		}
	}
	if !nonEmpty { // Cilium refuses a rule without a section
		sec := []string{"ingress", "ingressDeny", "egress", "egressDeny"}[g.r.Intn(4)]
		spec[sec] = []any{g.cnpRule(sec)}
	}
	if g.chance(0.2) {
		dd := map[string]any{}
		if g.chance(0.5) {
			dd["ingress"] = g.chance(0.5)
		}
		if g.chance(0.5) {
			dd["egress"] = g.chance(0.5)
		}
		spec["enableDefaultDeny"] = dd
	}
	return map[string]any{"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, "spec": spec}
}

var entities = []string{"world", "cluster", "all", "host", "world-ipv4"}

func (g *gen) cnpRule(sec string) map[string]any {
	rule := map[string]any{}
	prefix := "from"
	if sec == "egress" || sec == "egressDeny" {
		prefix = "to"
	}
	// At most one peer kind per element (Cilium rejects combinations),
	// plus sometimes an explicitly empty list of another kind.
	switch g.r.Intn(6) {
	case 0: // none: ports-only (every peer) or "{}"
	case 1, 2:
		var sels []any
		n := g.r.Intn(3)
		if g.chance(0.1) {
			n = 0 // explicitly empty
		}
		for i := 0; i < n; i++ {
			sels = append(sels, g.endpointSelector())
		}
		if sels == nil {
			sels = []any{}
		}
		rule[prefix+"Endpoints"] = sels
	case 3:
		var es []string
		for i := 0; i < 1+g.r.Intn(2); i++ {
			es = append(es, g.pick(entities))
		}
		if g.chance(0.1) {
			es = []string{}
		}
		rule[prefix+"Entities"] = es
	case 4:
		var cs []string
		for i := 0; i < 1+g.r.Intn(2); i++ {
			cs = append(cs, g.pick(cidrs))
		}
		rule[prefix+"CIDR"] = cs
	case 5:
		var set []any
		for i := 0; i < 1+g.r.Intn(2); i++ {
			c := g.pick(cidrs)
			m := map[string]any{"cidr": c}
			if ex := excepts[c]; len(ex) > 0 && g.chance(0.5) {
				m["except"] = ex[:1+g.r.Intn(len(ex))]
			}
			set = append(set, m)
		}
		rule[prefix+"CIDRSet"] = set
	}
	if g.chance(0.05) {
		rule["toPorts"] = []any{} // explicitly empty: no L4 part
	} else if g.chance(0.6) {
		var prs []any
		for i := 0; i < 1+g.r.Intn(2); i++ {
			if g.chance(0.08) {
				prs = append(prs, map[string]any{}) // a port rule without ports
				continue
			}
			var ports []any
			for j := 0; j < 1+g.r.Intn(2); j++ {
				p := map[string]any{}
				switch g.r.Intn(5) {
				case 0:
					p["port"] = fmt.Sprint(CellPorts[g.r.Intn(len(CellPorts))])
				case 1:
					p["port"] = "53"
					p["endPort"] = 53 + 27*g.r.Intn(2) + g.r.Intn(2)
				case 2, 3:
					p["port"] = g.pick(portNames)
				case 4:
					p["port"] = "0"
				}
				switch g.r.Intn(6) {
				case 0, 1:
					p["protocol"] = "TCP"
				case 2:
					p["protocol"] = "UDP"
				case 3:
					p["protocol"] = "SCTP"
				case 4:
					p["protocol"] = "ANY"
				}
				ports = append(ports, p)
			}
			prs = append(prs, map[string]any{"ports": ports})
		}
		rule["toPorts"] = prs
	}
	return rule
}

// endpointSelector: pod labels, and sometimes Cilium's namespace keys.
func (g *gen) endpointSelector() map[string]any {
	sel := g.labelSelector(labelKeys, "")
	if g.chance(0.15) { // the same keys with an explicit source
		sel = g.labelSelector(labelKeys, g.pick([]string{"k8s:", "any:"}))
	}
	switch g.r.Intn(7) {
	case 5, 6: // the namespace or a namespace label by expression
		key := "k8s:io.kubernetes.pod.namespace"
		vals := nsNames
		if g.chance(0.5) {
			key, vals = "k8s:io.cilium.k8s.namespace.labels."+g.pick(nsLabelKeys), labelValues
		}
		e := map[string]any{"key": key}
		switch g.r.Intn(4) {
		case 0:
			e["operator"], e["values"] = "In", []string{g.pick(vals)}
		case 1:
			e["operator"], e["values"] = "NotIn", []string{g.pick(vals)}
		case 2:
			e["operator"] = "Exists"
		case 3:
			e["operator"] = "DoesNotExist"
		}
		exprs, _ := sel["matchExpressions"].([]any)
		sel["matchExpressions"] = append(exprs, e)
	case 0:
		sel["matchLabels"] = merge(sel["matchLabels"], map[string]any{"k8s:io.kubernetes.pod.namespace": g.pick(nsNames)})
	case 1:
		sel["matchLabels"] = merge(sel["matchLabels"], map[string]any{"k8s:io.cilium.k8s.namespace.labels." + g.pick(nsLabelKeys): g.pick(labelValues)})
	}
	return sel
}

func merge(a any, b map[string]any) map[string]any {
	out := map[string]any{}
	if m, ok := a.(map[string]any); ok {
		for k, v := range m {
			out[k] = v
		}
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// LabelKeys returns the pod label keys and the namespace label keys the
// generator uses (besides kubernetes.io/metadata.name).
func LabelKeys() (pod, namespace []string) {
	return append([]string(nil), labelKeys...), append([]string(nil), nsLabelKeys...)
}
