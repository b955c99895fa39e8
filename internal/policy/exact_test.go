package policy_test

import (
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/check"
)

// Regression tests for the classes the differential tests found (issue
// 10), one minimal case each, on baseState (semantics_test.go).
func TestExactSemantics(t *testing.T) {
	tests := []struct {
		name     string
		policies string
		flows    []flowCase
	}{
		// NetworkPolicy: policyTypes lists the directions the policy
		// relates to; a section of another direction has no effect (it
		// neither isolates nor allows). Cilium v1.20 enforces such a
		// section; Kubernetes' API reference and cyclonus do not.
		{"policyTypes leaves out a present egress section", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-only, namespace: a}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Ingress]
  ingress: [{}]
  egress: [{to: [{podSelector: {matchLabels: {app: nothing}}}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "allowed", ""},
			{"a/frontend", "192.0.2.1", 443, "", "allowed", ""},
		}},
		{"policyTypes leaves out a present ingress section", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: a}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: nothing}}}]}]
  egress: [{}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "allowed", ""},
		}},

		// NetworkPolicy egress to a named port: the destination pod's own
		// port of that name; an ipBlock address has no named ports.
		{"egress named port resolves on the destination pod only", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-out, namespace: a}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {}}, {ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: http}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "allowed", "a/named-out"}, // a/backend calls 8080 "http"
			{"a/frontend", "a/backend", 9090, "", "denied", "a/named-out"},  // b/backend's "http", not a/backend's
			{"a/frontend", "192.0.2.1", 8080, "", "denied", "a/named-out"},  // no pod, no named port
			{"a/frontend", "192.0.2.1", 9090, "", "denied", "a/named-out"},
		}},

		// CNP: an explicitly empty peer list selects nothing, in allow and
		// deny sections alike; the section still isolates.
		{"explicitly empty toEndpoints in egressDeny denies nothing", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empty-deny, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress: [{toEndpoints: [{}]}]
  egressDeny: [{toEndpoints: [], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "allowed", "a/empty-deny"},
		}},
		{"explicitly empty fromEndpoints in ingress allows nothing but isolates", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empty-allow, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEndpoints: [], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "denied", "a/empty-allow"},
			{"192.0.2.1", "a/backend", 8080, "", "denied", "a/empty-allow"},
		}},
		{"explicitly empty fromEntities and fromCIDR select nothing", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empty-entities, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: []
  - fromCIDR: []
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  ingressDeny: [{fromCIDRSet: [], toPorts: [{ports: [{port: "8080"}]}]}]
  egress: [{toEntities: [all]}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "denied", "a/empty-entities"},
		}},

		// CNP named port with protocol ANY: the destination's port of that
		// name, on that port's own protocol.
		{"named port with protocol ANY", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: any-named, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress: [{toEndpoints: [{}], toPorts: [{ports: [{port: dns, protocol: ANY}]}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 53, "UDP", "allowed", "a/any-named"},
			{"a/frontend", "a/backend", 53, "TCP", "denied", "a/any-named"},
			{"a/frontend", "b/backend", 53, "UDP", "denied", "a/any-named"}, // names no "dns"
		}},

		// Several ports lists in one element: their union, each port on
		// its own protocol (ANY: TCP, UDP and SCTP).
		{"several toPorts lists in one rule", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
    - ports: [{port: "53", protocol: UDP}, {port: "9000", protocol: ANY}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "TCP", "allowed", "a/ports"},
			{"a/frontend", "a/backend", 8080, "UDP", "denied", "a/ports"},
			{"a/frontend", "a/backend", 53, "UDP", "allowed", "a/ports"},
			{"a/frontend", "a/backend", 53, "TCP", "denied", "a/ports"},
			{"a/frontend", "a/backend", 9000, "SCTP", "allowed", "a/ports"},
		}},

		// Deny with entities: cluster is every pod (not the world); all is
		// everything. Deny wins over the allow of every peer.
		{"ingressDeny fromEntities cluster", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-cluster, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEntities: [all]}]
  ingressDeny: [{fromEntities: [cluster], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "denied", "a/deny-cluster"},
			{"b/frontend", "a/backend", 8080, "", "denied", "a/deny-cluster"},
			{"a/frontend", "a/backend", 8081, "", "allowed", "a/deny-cluster"},
			{"192.0.2.1", "a/backend", 8080, "", "allowed", "a/deny-cluster"},
		}},
		{"egressDeny toEntities all", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress: [{toEntities: [cluster, world]}]
  egressDeny: [{toEntities: [all], toPorts: [{ports: [{port: "53", protocol: ANY}]}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 53, "UDP", "denied", "a/deny-all"},
			{"a/frontend", "192.0.2.1", 53, "TCP", "denied", "a/deny-all"},
			{"a/frontend", "192.0.2.1", 443, "TCP", "allowed", "a/deny-all"},
			{"a/frontend", "b/backend", 9090, "TCP", "allowed", "a/deny-all"},
		}},

		// A toPorts element without ports matches no traffic (Cilium adds
		// no filter for it); the section still isolates.
		{"toPorts element without ports", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-ports, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{}]
    toPorts: [{}]
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{}, {ports: [{port: "53", protocol: UDP}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "denied", "a/no-ports"},
			{"a/frontend", "a/backend", 53, "UDP", "allowed", "a/no-ports"},
		}},

		// A peer selector that names the namespace is not confined to the
		// policy's namespace, but still selects pods of this cluster only
		// (Cilium adds the cluster label): NotIn never reaches the world.
		{"namespace NotIn selects pods of the cluster only", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: not-b, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress: [{toEntities: [all]}]
  egressDeny:
  - toEndpoints: [{matchExpressions: [{key: k8s:io.kubernetes.pod.namespace, operator: NotIn, values: [b]}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "denied", "a/not-b"},
			{"a/frontend", "b/backend", 9090, "", "allowed", "a/not-b"},
			{"a/frontend", "192.0.2.1", 443, "", "allowed", "a/not-b"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runFlows(t, loadYAML(t, baseState, tc.policies), tc.flows)
		})
	}
}

// A Cilium port without a number or name is refused, as by Cilium
// ("port must be specified"), not read as every port.
func TestPortWithoutNumberRefused(t *testing.T) {
	doc := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-port, namespace: a}
spec:
  endpointSelector: {}
  ingress: [{toPorts: [{ports: [{protocol: TCP}]}]}]
`
	objs, errs := manifest.Decode("test.yaml", []byte(baseState+"\n---\n"+doc))
	if len(errs) > 0 {
		t.Fatalf("decode: %v", errs)
	}
	if _, err := check.FromSet(manifest.NewSet(objs...)); err == nil || !strings.Contains(err.Error(), "ports[0].port: required") {
		t.Fatalf("load: %v, want a refusal naming the port", err)
	}
}

// A Cilium rule without any section is refused, as Cilium's sanitiser
// refuses it (an empty list is no section).
func TestRuleWithoutSectionRefused(t *testing.T) {
	doc := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: nothing, namespace: a}
spec:
  endpointSelector: {}
  ingress: []
`
	objs, errs := manifest.Decode("test.yaml", []byte(baseState+"\n---\n"+doc))
	if len(errs) > 0 {
		t.Fatalf("decode: %v", errs)
	}
	_, err := check.FromSet(manifest.NewSet(objs...))
	if err == nil || !strings.Contains(err.Error(), "at least one of ingress") {
		t.Fatalf("load: %v, want a refusal naming the missing sections", err)
	}
}
