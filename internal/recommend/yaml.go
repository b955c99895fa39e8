package recommend

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// The documents written, kept to the fields used so the YAML reads as a
// person would write it.
type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type labelSelector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

type npDoc struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       npSpec     `json:"spec"`
}

type npSpec struct {
	PodSelector labelSelector `json:"podSelector"`
	PolicyTypes []string      `json:"policyTypes"`
	Ingress     []npIngress   `json:"ingress,omitempty"`
	Egress      []npEgress    `json:"egress,omitempty"`
}

type npPeer struct {
	PodSelector       *labelSelector `json:"podSelector,omitempty"`
	NamespaceSelector *labelSelector `json:"namespaceSelector,omitempty"`
	IPBlock           *npIPBlock     `json:"ipBlock,omitempty"`
}

type npIPBlock struct {
	CIDR string `json:"cidr"`
}

type npPort struct {
	Protocol string `json:"protocol"`
	Port     uint32 `json:"port"`
}

type npIngress struct {
	From  []npPeer `json:"from"`
	Ports []npPort `json:"ports"`
}

type npEgress struct {
	To    []npPeer `json:"to"`
	Ports []npPort `json:"ports"`
}

type cnpDoc struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   objectMeta `json:"metadata"`
	Spec       cnpSpec    `json:"spec"`
}

// cnpSpec always has both sections: `ingress: [{}]` (a rule that allows
// nothing) turns on default deny for a direction where nothing was seen.
type cnpSpec struct {
	EndpointSelector labelSelector `json:"endpointSelector"`
	Ingress          []cnpIngress  `json:"ingress"`
	Egress           []cnpEgress   `json:"egress"`
}

type cnpIngress struct {
	FromEndpoints []labelSelector `json:"fromEndpoints,omitempty"`
	FromEntities  []string        `json:"fromEntities,omitempty"`
	FromCIDR      []string        `json:"fromCIDR,omitempty"`
	ToPorts       []cnpPortRule   `json:"toPorts,omitempty"`
}

type cnpEgress struct {
	ToEndpoints []labelSelector `json:"toEndpoints,omitempty"`
	ToEntities  []string        `json:"toEntities,omitempty"`
	ToCIDR      []string        `json:"toCIDR,omitempty"`
	ToFQDNs     []cnpFQDN       `json:"toFQDNs,omitempty"`
	ToPorts     []cnpPortRule   `json:"toPorts,omitempty"`
}

type cnpFQDN struct {
	MatchName string `json:"matchName"`
}

type cnpPortRule struct {
	Ports []cnpPort `json:"ports"`
}

type cnpPort struct {
	Port     string `json:"port"`
	Protocol string `json:"protocol"`
}

// namespaceNameLabel is the label Kubernetes sets on every namespace.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// ciliumNamespaceLabel selects a namespace in a CNP endpoint selector.
const ciliumNamespaceLabel = "k8s:io.kubernetes.pod.namespace"

// PolicyName is the name of the policy recommended for a workload.
func PolicyName(w Workload) string { return w.Name + "-recommended" }

// YAML renders the recommendation as a multi-document YAML stream with a
// header saying what it was built from.
func (r *Result) YAML() ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Least-privilege %s for namespace %q, recommended by 'bulwark policy recommend'\n", kindName(r.Kind), r.Namespace)
	fmt.Fprintf(&b, "# from %d flows: each workload seen may make and accept only the connections seen.\n", r.Flows)
	fmt.Fprintf(&b, "# Workloads of the namespace that were not seen get no policy. Check it with 'bulwark policy check'\n")
	fmt.Fprintf(&b, "# and roll it out safely: audit first, then enforce.\n")
	if len(r.Skipped) > 0 {
		reasons := make([]string, 0, len(r.Skipped))
		for k, n := range r.Skipped {
			reasons = append(reasons, fmt.Sprintf("%s: %d", k, n))
		}
		sort.Strings(reasons)
		fmt.Fprintf(&b, "# Flows not counted: %s\n", strings.Join(reasons, "; "))
	}
	if len(r.Workloads) == 0 {
		fmt.Fprintf(&b, "# No connection of the namespace was seen: nothing to recommend.\n")
		return b.Bytes(), nil
	}
	for _, w := range r.Workloads {
		var doc any
		if r.Kind == CiliumNetworkPolicy {
			doc = r.cnp(w)
		} else {
			doc = r.networkPolicy(w)
		}
		y, err := yaml.Marshal(doc)
		if err != nil {
			return nil, fmt.Errorf("render policy of %s: %w", w.Workload.Name, err)
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return b.Bytes(), nil
}

func kindName(k Kind) string {
	if k == CiliumNetworkPolicy {
		return "CiliumNetworkPolicies"
	}
	return "NetworkPolicies"
}

func (r *Result) meta(w WorkloadRules) objectMeta {
	return objectMeta{Name: PolicyName(w.Workload), Namespace: r.Namespace,
		Annotations: map[string]string{"policy.bulwark.io/recommended-from": "observed flows"}}
}

func (r *Result) networkPolicy(w WorkloadRules) npDoc {
	d := npDoc{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy", Metadata: r.meta(w)}
	d.Spec.PodSelector = labelSelector{MatchLabels: w.Workload.Selector}
	d.Spec.PolicyTypes = []string{"Ingress", "Egress"}
	for _, c := range w.Ingress {
		d.Spec.Ingress = append(d.Spec.Ingress, npIngress{From: []npPeer{r.npPeer(c.Peer)}, Ports: npPorts(c.Ports)})
	}
	for _, c := range w.Egress {
		d.Spec.Egress = append(d.Spec.Egress, npEgress{To: []npPeer{r.npPeer(c.Peer)}, Ports: npPorts(c.Ports)})
	}
	return d
}

func (r *Result) npPeer(p Peer) npPeer {
	switch {
	case p.Workload != nil:
		np := npPeer{PodSelector: &labelSelector{MatchLabels: p.Workload.Selector}}
		if p.Workload.Namespace != r.Namespace {
			np.NamespaceSelector = &labelSelector{MatchLabels: map[string]string{namespaceNameLabel: p.Workload.Namespace}}
		}
		return np
	}
	// Recommend keeps only peers a rule can name: without a workload, a
	// NetworkPolicy peer has its address.
	return npPeer{IPBlock: &npIPBlock{CIDR: p.CIDR}}
}

func npPorts(ps []Port) []npPort {
	out := make([]npPort, len(ps))
	for i, p := range ps {
		out[i] = npPort{Protocol: p.Protocol, Port: p.Port}
	}
	return out
}

func (r *Result) cnp(w WorkloadRules) cnpDoc {
	d := cnpDoc{APIVersion: "cilium.io/v2", Kind: "CiliumNetworkPolicy", Metadata: r.meta(w)}
	d.Spec.EndpointSelector = labelSelector{MatchLabels: w.Workload.Selector}
	for _, c := range w.Ingress {
		in := cnpIngress{ToPorts: cnpPorts(c.Ports)}
		switch p := c.Peer; {
		case p.Workload != nil:
			in.FromEndpoints = []labelSelector{r.cnpSelector(*p.Workload)}
		case p.Entity != "":
			in.FromEntities = []string{p.Entity}
		default:
			in.FromCIDR = []string{p.CIDR}
		}
		d.Spec.Ingress = append(d.Spec.Ingress, in)
	}
	for _, c := range w.Egress {
		eg := cnpEgress{ToPorts: cnpPorts(c.Ports)}
		switch p := c.Peer; {
		case p.Workload != nil:
			eg.ToEndpoints = []labelSelector{r.cnpSelector(*p.Workload)}
		case p.Entity != "":
			eg.ToEntities = []string{p.Entity}
		case len(p.Names) > 0:
			for _, n := range p.Names {
				eg.ToFQDNs = append(eg.ToFQDNs, cnpFQDN{MatchName: n})
			}
		default:
			eg.ToCIDR = []string{p.CIDR}
		}
		d.Spec.Egress = append(d.Spec.Egress, eg)
	}
	if len(d.Spec.Ingress) == 0 {
		d.Spec.Ingress = []cnpIngress{{}}
	}
	if len(d.Spec.Egress) == 0 {
		d.Spec.Egress = []cnpEgress{{}}
	}
	return d
}

// cnpSelector selects a workload from a CNP: a selector without a
// namespace label stays in the policy's namespace.
func (r *Result) cnpSelector(w Workload) labelSelector {
	m := make(map[string]string, len(w.Selector)+1)
	for k, v := range w.Selector {
		m[k] = v
	}
	if w.Namespace != r.Namespace {
		m[ciliumNamespaceLabel] = w.Namespace
	}
	return labelSelector{MatchLabels: m}
}

func cnpPorts(ps []Port) []cnpPortRule {
	out := cnpPortRule{}
	for _, p := range ps {
		out.Ports = append(out.Ports, cnpPort{Port: strconv.FormatUint(uint64(p.Port), 10), Protocol: p.Protocol})
	}
	return []cnpPortRule{out}
}
