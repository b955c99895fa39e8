// Package difftest generates random valid policy scenarios for Bulwark's
// differential tests, in the exchange format the reference engines read
// (test/ciliumref for Cilium's own engine; cyclonus' matcher is called in
// process), and renders them as the YAML state `bulwark policy check`
// reads.
//
// A scenario is namespaces with labels, pods with labels, addresses and
// named ports, addresses outside the cluster, policy documents (YAML) and
// the cells to decide: every (source, destination, protocol, port) over
// the pods and outside addresses, except outside-to-outside.
//
// Invariant kept by the generator: pods with the same labels in the same
// namespace (one identity) declare the same named ports, as replicas of
// one Deployment do; tables are per identity (Cilium's too), so pods of
// one identity that disagree on a port name cannot be told apart (see
// the justified differences in the tests).
package difftest

import (
	"fmt"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// Scenario is one generated case (JSON: the exchange format).
type Scenario struct {
	Seed       int64       `json:"seed"`
	Namespaces []Namespace `json:"namespaces"`
	Pods       []Pod       `json:"pods"`
	Externals  []string    `json:"externals"`
	Policies   []string    `json:"policies"` // YAML documents
	Cells      []Cell      `json:"cells"`
}

// Namespace has labels (kubernetes.io/metadata.name included).
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

// Pod is a pod with one address and its container ports.
type Pod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	IP        string            `json:"ip"`
	Ports     []Port            `json:"ports"`
}

// Port is a container port (named or not).
type Port struct {
	Name     string `json:"name,omitempty"`
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
}

// Cell is one flow to decide.
type Cell struct {
	Src      string `json:"src"` // "ns/pod" or an address
	Dst      string `json:"dst"`
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
}

// Verdict of a cell by direction: egress at the source, ingress at the
// destination (true where no endpoint is there).
type Verdict struct {
	Egress  bool `json:"egress"`
	Ingress bool `json:"ingress"`
}

// Allowed is the verdict of the flow.
func (v Verdict) Allowed() bool { return v.Egress && v.Ingress }

// Ref is the "ns/name" of a pod.
func (p Pod) Ref() string { return p.Namespace + "/" + p.Name }

// State renders the scenario as the YAML state of `bulwark policy check`:
// Namespaces, Pods (status.podIP, containers[].ports) and the policies.
func (s *Scenario) State() (string, error) {
	var docs []string
	for _, ns := range s.Namespaces {
		b, err := yaml.Marshal(map[string]any{
			"apiVersion": "v1", "kind": "Namespace",
			"metadata": map[string]any{"name": ns.Name, "labels": ns.Labels},
		})
		if err != nil {
			return "", fmt.Errorf("render namespace %s: %w", ns.Name, err)
		}
		docs = append(docs, string(b))
	}
	for _, p := range s.Pods {
		var ports []map[string]any
		for _, pt := range p.Ports {
			m := map[string]any{"containerPort": pt.Port, "protocol": pt.Protocol}
			if pt.Name != "" {
				m["name"] = pt.Name
			}
			ports = append(ports, m)
		}
		b, err := yaml.Marshal(map[string]any{
			"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": p.Name, "namespace": p.Namespace, "labels": p.Labels},
			"spec":     map[string]any{"containers": []any{map[string]any{"name": "c", "image": "x", "ports": ports}}},
			"status":   map[string]any{"podIP": p.IP},
		})
		if err != nil {
			return "", fmt.Errorf("render pod %s: %w", p.Ref(), err)
		}
		docs = append(docs, string(b))
	}
	docs = append(docs, s.Policies...)
	return strings.Join(docs, "---\n"), nil
}

// PortName returns the name a pod gives proto/port ("" if none).
func (p Pod) PortName(proto string, port int) string {
	for _, pt := range p.Ports {
		if pt.Protocol == proto && pt.Port == port {
			return pt.Name
		}
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
