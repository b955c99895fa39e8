// Package recommend writes least-privilege policies from observed flows:
// for every workload of one namespace, a NetworkPolicy or
// CiliumNetworkPolicy that selects it by its labels, turns on default deny
// in both directions, and allows exactly the connections seen (peer by
// workload labels and namespace, or by address or DNS name outside the
// cluster; protocol and destination port).
//
// Invariants:
//   - Every workload seen in the namespace gets a policy for both
//     directions, so a connection that was not observed is denied on the
//     side that belongs to the namespace (a direction with nothing observed
//     allows nothing).
//   - Output is deterministic: the same flows give the same bytes.
//   - Replies, non-policy events and connections of a pod to itself add
//     nothing: policy decides new connections only.
package recommend

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// Kind is the kind of policy written.
type Kind string

const (
	NetworkPolicy       Kind = "networkpolicy"
	CiliumNetworkPolicy Kind = "cnp"
)

// ParseKind reads --kind.
func ParseKind(s string) (Kind, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "networkpolicy", "netpol", "np", "":
		return NetworkPolicy, nil
	case "cnp", "ciliumnetworkpolicy":
		return CiliumNetworkPolicy, nil
	}
	return "", fmt.Errorf("kind %q: want networkpolicy or cnp", s)
}

// Options configure Recommend.
type Options struct {
	// Namespace whose workloads get policies (required).
	Namespace string
	Kind      Kind
	// IncludeDropped also counts connections the policy in force dropped
	// (to allow what an application needs but is denied today); by
	// default only forwarded, redirected and audited ones count.
	IncludeDropped bool
}

// Workload is a set of pods selected by the same labels.
type Workload struct {
	Namespace string
	// Selector are the labels (without source prefix) a policy selects
	// the workload with.
	Selector map[string]string
	// Name is the workload's short name (a selecting label's value).
	Name string
}

func (w Workload) key() string { return w.Namespace + "/" + selectorKey(w.Selector) }

// Peer is the other side of a connection.
type Peer struct {
	// Workload is set for pods.
	Workload *Workload
	// Entity is a Cilium entity (host, kube-apiserver, remote-node, ...)
	// for reserved identities other than world.
	Entity string
	// CIDR is a single address (/32, /128) for peers outside the cluster.
	CIDR string
	// Names are DNS names the address was looked up by, when known.
	Names []string
}

func (p Peer) nameable() bool { return p.Workload != nil || p.Entity != "" || p.CIDR != "" }

func (p Peer) key() string {
	switch {
	case p.Workload != nil:
		return "0 " + p.Workload.key()
	case p.Entity != "":
		return "1 " + p.Entity
	case len(p.Names) > 0:
		return "2 " + strings.Join(p.Names, ",")
	}
	return "3 " + p.CIDR
}

// Port is a protocol and destination port.
type Port struct {
	Protocol string // TCP, UDP, SCTP
	Port     uint32
}

// Connection is one observed connection class of a workload.
type Connection struct {
	Peer  Peer
	Ports []Port // sorted, unique
}

// WorkloadRules is what one workload was seen doing.
type WorkloadRules struct {
	Workload Workload
	Ingress  []Connection // sorted by peer
	Egress   []Connection
}

// Result is the recommendation.
type Result struct {
	Namespace string
	Kind      Kind
	Workloads []WorkloadRules // sorted by name
	// Flows counts the flows that contributed; Skipped says why others
	// did not (reason → count), for the header.
	Flows   int
	Skipped map[string]int
}

// Recommend derives the rules from flows.
func Recommend(flows []*flowpb.Flow, opts Options) (*Result, error) {
	if opts.Namespace == "" {
		return nil, fmt.Errorf("recommend: a namespace is required")
	}
	if opts.Kind == "" {
		opts.Kind = NetworkPolicy
	}
	if _, err := ParseKind(string(opts.Kind)); err != nil {
		return nil, fmt.Errorf("recommend: %w", err)
	}
	res := &Result{Namespace: opts.Namespace, Kind: opts.Kind, Skipped: map[string]int{}}
	type acc struct {
		wl                Workload
		ingress, egress   map[string]*Connection
		ingPorts, egPorts map[string]map[Port]bool
	}
	wls := map[string]*acc{}
	get := func(w Workload) *acc {
		a, ok := wls[w.key()]
		if !ok {
			a = &acc{wl: w, ingress: map[string]*Connection{}, egress: map[string]*Connection{},
				ingPorts: map[string]map[Port]bool{}, egPorts: map[string]map[Port]bool{}}
			wls[w.key()] = a
		}
		return a
	}
	add := func(conns map[string]*Connection, ports map[string]map[Port]bool, p Peer, port Port) {
		k := p.key()
		if _, ok := conns[k]; !ok {
			conns[k] = &Connection{Peer: p}
			ports[k] = map[Port]bool{}
		}
		ports[k][port] = true
	}
	for _, f := range flows {
		if why := skip(f, opts); why != "" {
			res.Skipped[why]++
			continue
		}
		port, ok := portOf(f)
		if !ok {
			res.Skipped["not TCP, UDP or SCTP (ICMP is not expressible in a NetworkPolicy)"]++
			continue
		}
		src := peerOf(f.GetSource(), f.GetIP().GetSource(), f.GetSourceNames())
		dst := peerOf(f.GetDestination(), f.GetIP().GetDestination(), f.GetDestinationNames())
		if opts.Kind == NetworkPolicy {
			// A NetworkPolicy names neither entities nor DNS names:
			// addresses stand in.
			src.Entity, dst.Entity = "", ""
			src.Names, dst.Names = nil, nil
		}
		if !src.nameable() || !dst.nameable() {
			res.Skipped["a side that no rule can name (no pod, entity or address)"]++
			continue
		}
		srcIn := src.Workload != nil && src.Workload.Namespace == opts.Namespace
		dstIn := dst.Workload != nil && dst.Workload.Namespace == opts.Namespace
		if !srcIn && !dstIn {
			res.Skipped["outside the namespace"]++
			continue
		}
		if src.Workload != nil && dst.Workload != nil && f.GetSource().GetPodName() == f.GetDestination().GetPodName() &&
			f.GetSource().GetNamespace() == f.GetDestination().GetNamespace() {
			res.Skipped["a pod to itself"]++
			continue
		}
		res.Flows++
		if srcIn {
			a := get(*src.Workload)
			add(a.egress, a.egPorts, dst, port)
		}
		if dstIn {
			a := get(*dst.Workload)
			add(a.ingress, a.ingPorts, src, port)
		}
	}
	finish := func(conns map[string]*Connection, ports map[string]map[Port]bool) []Connection {
		keys := make([]string, 0, len(conns))
		for k := range conns {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make([]Connection, 0, len(keys))
		for _, k := range keys {
			c := *conns[k]
			for p := range ports[k] {
				c.Ports = append(c.Ports, p)
			}
			sort.Slice(c.Ports, func(i, j int) bool {
				if c.Ports[i].Protocol != c.Ports[j].Protocol {
					return c.Ports[i].Protocol < c.Ports[j].Protocol
				}
				return c.Ports[i].Port < c.Ports[j].Port
			})
			out = append(out, c)
		}
		return out
	}
	for _, a := range wls {
		res.Workloads = append(res.Workloads, WorkloadRules{Workload: a.wl, Ingress: finish(a.ingress, a.ingPorts), Egress: finish(a.egress, a.egPorts)})
	}
	sort.Slice(res.Workloads, func(i, j int) bool {
		a, b := res.Workloads[i].Workload, res.Workloads[j].Workload
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.key() < b.key()
	})
	// Two workloads with one name (different labels) get distinct policy
	// names.
	seen := map[string]int{}
	for i := range res.Workloads {
		n := res.Workloads[i].Workload.Name
		seen[n]++
		if seen[n] > 1 {
			res.Workloads[i].Workload.Name = n + "-" + strconv.Itoa(seen[n])
		}
	}
	return res, nil
}

// skip says why a flow does not count ("" when it does).
func skip(f *flowpb.Flow, opts Options) string {
	if f.GetIsReply().GetValue() {
		return "reply"
	}
	switch f.GetVerdict() {
	case flowpb.Verdict_FORWARDED, flowpb.Verdict_REDIRECTED, flowpb.Verdict_AUDIT:
	case flowpb.Verdict_DROPPED:
		if !opts.IncludeDropped {
			return "dropped (--include-dropped counts them)"
		}
		switch f.GetDropReasonDesc() {
		case flowpb.DropReason_POLICY_DENIED, flowpb.DropReason_POLICY_DENY:
		default:
			return "dropped for a reason other than policy"
		}
	default:
		return "verdict " + f.GetVerdict().String()
	}
	if f.GetType() == flowpb.FlowType_L7 {
		return "L7 record (its connection's L3/L4 flow counts)"
	}
	return ""
}

func portOf(f *flowpb.Flow) (Port, bool) {
	switch l4 := f.GetL4().GetProtocol().(type) {
	case *flowpb.Layer4_TCP:
		return Port{"TCP", l4.TCP.GetDestinationPort()}, l4.TCP.GetDestinationPort() != 0
	case *flowpb.Layer4_UDP:
		return Port{"UDP", l4.UDP.GetDestinationPort()}, l4.UDP.GetDestinationPort() != 0
	case *flowpb.Layer4_SCTP:
		return Port{"SCTP", l4.SCTP.GetDestinationPort()}, l4.SCTP.GetDestinationPort() != 0
	}
	return Port{}, false
}

// Labels a selector never uses: the namespace (its own selector part),
// namespace labels and cluster name (shared by every pod there).
func ignoredLabel(key string) bool {
	return key == "io.kubernetes.pod.namespace" ||
		strings.HasPrefix(key, "io.cilium.k8s.namespace.labels.") ||
		strings.HasPrefix(key, "io.cilium.k8s.policy.") ||
		strings.HasPrefix(key, "io.cilium.")
}

// preferredLabels name a workload on their own when a pod has one.
var preferredLabels = []string{"app.kubernetes.io/name", "app", "k8s-app", "name"}

// entities maps reserved identities onto Cilium entities.
var entities = map[string]string{
	"host": "host", "remote-node": "remote-node", "kube-apiserver": "kube-apiserver",
	"health": "health", "ingress": "ingress", "init": "init", "unmanaged": "unmanaged",
}

func peerOf(ep *flowpb.Endpoint, ip string, names []string) Peer {
	labels := map[string]string{}
	var reserved []string
	for _, l := range ep.GetLabels() {
		src, kv, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		switch src {
		case "reserved":
			reserved = append(reserved, k)
		case "k8s":
			if !ignoredLabel(k) {
				labels[k] = v
			}
		}
	}
	if ep.GetPodName() != "" && ep.GetNamespace() != "" && len(reserved) == 0 {
		w := Workload{Namespace: ep.GetNamespace(), Selector: labels}
		for _, k := range preferredLabels {
			if v, ok := labels[k]; ok {
				w.Selector = map[string]string{k: v}
				w.Name = v
				break
			}
		}
		if w.Name == "" {
			w.Name = podBaseName(ep.GetPodName())
		}
		return Peer{Workload: &w}
	}
	var p Peer
	if a, err := netip.ParseAddr(ip); err == nil {
		a = a.Unmap()
		p.CIDR = netip.PrefixFrom(a, a.BitLen()).String()
	}
	for _, r := range reserved {
		if e, ok := entities[r]; ok {
			p.Entity = e
			return p
		}
	}
	p.Names = normalizedNames(names)
	return p
}

func normalizedNames(names []string) []string {
	var out []string
	for _, n := range names {
		n = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
		if n != "" {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return slicesCompact(out)
}

func slicesCompact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// podBaseName strips a Deployment's "-<hash>-<suffix>" or a StatefulSet's
// "-<n>" from a pod name.
func podBaseName(pod string) string {
	parts := strings.Split(pod, "-")
	switch {
	case len(parts) >= 3:
		return strings.Join(parts[:len(parts)-2], "-")
	case len(parts) == 2:
		return parts[0]
	}
	return pod
}

func selectorKey(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + m[k])
	}
	return b.String()
}
