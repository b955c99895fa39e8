package policy_test

import (
	"github.com/bulwark-net/bulwark/internal/policy"
	"net/netip"
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/check"
)

// baseState: two namespaces with a frontend and a backend each.
const baseState = `
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: blue}}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: a, labels: {app: frontend}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: a, labels: {app: backend}}
spec:
  containers:
  - name: c
    image: x
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: b, labels: {app: frontend}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: b, labels: {app: backend}}
spec: {containers: [{name: c, image: x, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.0.2.2}
`

func loadYAML(t *testing.T, docs ...string) *check.State {
	t.Helper()
	objs, errs := manifest.Decode("test.yaml", []byte(strings.Join(docs, "\n---\n")))
	if len(errs) > 0 {
		t.Fatalf("decode: %v", errs)
	}
	st, err := check.FromSet(manifest.NewSet(objs...))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return st
}

type flowCase struct {
	src, dst string
	port     int
	proto    string
	want     string // allowed | denied
	policies string // comma-joined, "" to skip the check
}

func runFlows(t *testing.T, st *check.State, cases []flowCase) {
	t.Helper()
	for _, c := range cases {
		proto := c.proto
		if proto == "" {
			proto = "TCP"
		}
		res, err := st.Check(check.Flow{Src: c.src, Dst: c.dst, Port: c.port, Protocol: proto})
		if err != nil {
			t.Errorf("%s -> %s %d/%s: %v", c.src, c.dst, c.port, proto, err)
			continue
		}
		if res.Verdict != c.want {
			t.Errorf("%s -> %s %d/%s: %s (egress %s, ingress %s, policies %v), want %s", c.src, c.dst, c.port, proto, res.Verdict, res.Egress, res.Ingress, res.Policies, c.want)
		}
		if c.policies != "" && strings.Join(res.Policies, ",") != c.policies {
			t.Errorf("%s -> %s %d/%s: policies %v, want %s", c.src, c.dst, c.port, proto, res.Policies, c.policies)
		}
	}
}

func TestSemantics(t *testing.T) {
	tests := []struct {
		name     string
		policies string
		flows    []flowCase
	}{
		// Deny precedence: a deny from any kind beats allows from every kind.
		{"deny wins across kinds", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: a}
spec:
  podSelector: {}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: ccnp-allow}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-frontend, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "denied", "a/deny-frontend"},
			{"a/frontend", "a/backend", 8081, "", "allowed", "a/allow-all,ccnp-allow"},
			{"b/frontend", "a/backend", 8080, "", "allowed", "a/allow-all,ccnp-allow"},
			{"192.0.2.7", "a/backend", 8080, "", "allowed", "a/allow-all"},
		}},

		// Namespaced selectors are confined to the policy's namespace unless
		// they name it; clusterwide ones are not.
		{"cross-namespace selectors", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: same-ns, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-b, namespace: b}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: a, app: frontend}}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "allowed", "a/same-ns"},
			{"b/frontend", "a/backend", 8080, "", "denied", "a/same-ns"},
			{"a/frontend", "b/backend", 9090, "", "allowed", "b/from-b"},
			{"b/frontend", "b/backend", 9090, "", "denied", "b/from-b"},
		}},
		{"clusterwide peers and namespace labels", `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: frontends}
spec:
  endpointSelector: {matchLabels: {app: backend, k8s:io.kubernetes.pod.namespace: a}}
  ingress: [{fromEndpoints: [{}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: red-team, namespace: b}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: red}
      matchExpressions: [{key: k8s:io.kubernetes.pod.namespace, operator: Exists}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: red-confined, namespace: b}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  # A selector naming a namespace label is not confined to namespace b
  # (Cilium v1.20: getEndpointSelector adds the policy's namespace only
  # to selectors that name neither the namespace nor a namespace label).
  ingress: [{fromEndpoints: [{matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: red}}]}]
`, []flowCase{
			{"b/frontend", "a/backend", 8080, "", "allowed", "frontends"},
			{"a/frontend", "a/backend", 8080, "", "allowed", "frontends"},
			{"192.0.2.7", "a/backend", 8080, "", "denied", "frontends"}, // {} in a CCNP: every pod, not the world
			{"a/frontend", "b/backend", 9090, "", "allowed", "b/red-team"},
			{"b/frontend", "b/backend", 9090, "", "denied", "b/red-team"},
			{"a/frontend", "b/frontend", 80, "", "allowed", "b/red-confined"},
			{"b/backend", "b/frontend", 80, "", "denied", "b/red-confined"},
		}},

		// Entities map to reserved identities; cluster is every pod.
		{"entities", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: world-in, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEntities: [world]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cluster-out, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress: [{toEntities: [cluster]}]
`, []flowCase{
			{"198.51.100.1", "a/backend", 8080, "", "allowed", "a/world-in"},
			{"b/frontend", "a/backend", 8080, "", "denied", "a/world-in"},
			{"a/frontend", "b/backend", 9090, "", "allowed", "a/cluster-out"},
			{"a/frontend", "198.51.100.1", 443, "", "denied", "a/cluster-out"},
		}},

		// CIDR with except selects exactly the right addresses and never pods.
		{"cidr with except", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
  - toCIDR: [192.0.2.0/24]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`, []flowCase{
			{"a/frontend", "10.2.3.4", 80, "", "allowed", "a/cidr"},
			{"a/frontend", "10.1.2.3", 80, "", "denied", "a/cidr"},
			{"a/frontend", "11.0.0.1", 80, "", "denied", "a/cidr"},
			{"a/frontend", "a/backend", 8080, "", "denied", "a/cidr"}, // pod IP 10.0.1.2 is a pod, not a CIDR peer
			{"a/frontend", "10.0.1.2", 8080, "", "denied", "a/cidr"},
			{"a/frontend", "192.0.2.9", 443, "", "allowed", "a/cidr"},
			{"a/frontend", "192.0.2.9", 80, "", "denied", "a/cidr"},
		}},
		{"networkpolicy ipBlock", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ipblock, namespace: a}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
`, []flowCase{
			{"192.0.2.1", "a/backend", 8080, "", "allowed", "a/ipblock"},
			{"10.3.0.1", "a/backend", 8080, "", "denied", "a/ipblock"},
			{"b/frontend", "a/backend", 8080, "", "denied", "a/ipblock"},
		}},

		// Named ports resolve on the destination pod; endPort ranges; ANY.
		{"named ports, ranges and ANY", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - toPorts: [{ports: [{port: http}]}]
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "7000", endPort: 7100, protocol: TCP}, {port: "53", protocol: ANY}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np-named, namespace: b}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress: [{ports: [{port: http}]}]
`, []flowCase{
			{"b/frontend", "a/backend", 8080, "", "allowed", "a/ports"},
			{"b/frontend", "a/backend", 8081, "", "denied", "a/ports"},
			{"a/frontend", "a/backend", 7050, "", "allowed", "a/ports"},
			{"a/frontend", "a/backend", 7101, "", "denied", "a/ports"},
			{"a/frontend", "a/backend", 7050, "UDP", "denied", "a/ports"},
			{"a/frontend", "a/backend", 53, "UDP", "allowed", "a/ports"},
			{"a/frontend", "a/backend", 53, "TCP", "allowed", "a/ports"},
			{"a/frontend", "a/backend", 53, "SCTP", "allowed", "a/ports"},
			{"a/frontend", "b/backend", 9090, "", "allowed", "b/np-named"}, // "http" is 9090 on b/backend
			{"a/frontend", "b/backend", 8080, "", "denied", "b/np-named"},
		}},

		// enableDefaultDeny: false adds allows without isolating.
		{"enableDefaultDeny false", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soft, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  enableDefaultDeny: {ingress: false}
  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "allowed", "a/soft"},
			{"b/frontend", "a/backend", 8080, "", "allowed", ""},
		}},

		// "ingress: [{}]" isolates and allows nothing; "ingress: []" is no section.
		{"empty sections", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: isolate, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: nothing, namespace: b}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: []
  egress: [{toEntities: [all]}] # a rule needs a non-empty section
`, []flowCase{
			{"a/frontend", "a/backend", 8080, "", "denied", "a/isolate"},
			{"a/frontend", "b/backend", 9090, "", "allowed", ""},
		}},

		// toPorts without a peer applies to every peer, the world included.
		{"ports without peers", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
`, []flowCase{
			{"203.0.113.5", "a/backend", 8080, "", "allowed", "a/web"},
			{"b/frontend", "a/backend", 8080, "", "allowed", "a/web"},
			{"b/frontend", "a/backend", 8081, "", "denied", "a/web"},
		}},

		// NetworkPolicy: namespaceSelector alone, and AND with podSelector.
		{"networkpolicy peers", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: peers, namespace: a}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: blue}}
      podSelector: {matchLabels: {app: backend}}
  - from: [{podSelector: {}}]
    ports: [{port: 8080}]
`, []flowCase{
			{"b/backend", "a/backend", 1234, "", "allowed", "a/peers"},
			{"b/frontend", "a/backend", 1234, "", "denied", "a/peers"},
			{"a/frontend", "a/backend", 8080, "", "allowed", "a/peers"},
			{"a/frontend", "a/backend", 8081, "", "denied", "a/peers"},
			{"a/frontend", "a/backend", 8080, "UDP", "denied", "a/peers"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runFlows(t, loadYAML(t, baseState, tc.policies), tc.flows)
		})
	}
}

// toFQDNs selects nothing until the DNS proxy learns addresses for a
// matching name; L7 rules make the entry a proxy redirect.
func TestFQDNAndL7(t *testing.T) {
	st := loadYAML(t, baseState, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toFQDNs: [{matchName: api.github.com}, {matchPattern: "*.amazonaws.com"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: /health}]}
`)
	runFlows(t, st, []flowCase{
		{"a/frontend", "140.82.112.5", 443, "", "denied", "a/fqdn"},
		{"a/frontend", "a/backend", 8080, "", "allowed", "a/fqdn"},
	})
	res, _ := st.Check(check.Flow{Src: "a/frontend", Dst: "a/backend", Port: 8080})
	if !res.Proxy || res.EgressDecision.L7 == nil || len(res.EgressDecision.L7.HTTP) != 1 {
		t.Errorf("L7 rule: proxy=%v decision=%+v", res.Proxy, res.EgressDecision)
	}
	ch, err := st.Repo.Learn("API.github.com.", netip.MustParseAddr("140.82.112.5"))
	if err != nil || len(ch.Selectors) == 0 || !ch.IPCache || len(ch.Endpoints) != 0 {
		t.Fatalf("learn: change %+v, %v (want selector and ipcache changes, no endpoint recompute)", ch, err)
	}
	if _, err := st.Repo.Learn("s3.amazonaws.com", netip.MustParseAddr("52.1.2.3")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Repo.Learn("evil.com", netip.MustParseAddr("6.6.6.6")); err != nil {
		t.Fatal(err)
	}
	st.Snap = st.Repo.Snapshot()
	runFlows(t, st, []flowCase{
		{"a/frontend", "140.82.112.5", 443, "", "allowed", "a/fqdn"},
		{"a/frontend", "52.1.2.3", 443, "", "allowed", "a/fqdn"},
		{"a/frontend", "140.82.112.5", 80, "", "denied", "a/fqdn"},
		{"a/frontend", "6.6.6.6", 443, "", "denied", "a/fqdn"},
	})
	st.Repo.Forget("api.github.com")
	st.Snap = st.Repo.Snapshot()
	runFlows(t, st, []flowCase{{"a/frontend", "140.82.112.5", 443, "", "denied", "a/fqdn"}})
}

// toServices selects the pods behind a Service (by its selector); it
// follows Service changes.
func TestToServices(t *testing.T) {
	svc := `
apiVersion: v1
kind: Service
metadata: {name: api, namespace: b, labels: {tier: api}}
spec: {selector: {app: backend}, ports: [{port: 9090}]}
`
	pol := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-svc, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toServices: [{k8sService: {serviceName: api, namespace: b}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-svc-sel, namespace: b}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: api}}}}]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
`
	st := loadYAML(t, baseState, svc, pol)
	runFlows(t, st, []flowCase{
		{"a/frontend", "b/backend", 9090, "", "allowed", "a/to-svc"},
		{"a/frontend", "a/backend", 8080, "", "denied", "a/to-svc"},
		{"b/frontend", "b/backend", 9090, "", "allowed", "b/to-svc-sel"},
		{"b/frontend", "b/backend", 9091, "", "denied", "b/to-svc-sel"},
	})
	ch, err := st.Repo.Delete(policy.ObjectRef{Kind: "Service", Namespace: "b", Name: "api"})
	if err != nil || len(ch.Endpoints) != 2 {
		t.Fatalf("delete service: %+v %v", ch, err)
	}
	st.Snap = st.Repo.Snapshot()
	runFlows(t, st, []flowCase{
		{"a/frontend", "b/backend", 9090, "", "denied", "a/to-svc"},
		{"b/frontend", "b/backend", 9090, "", "denied", "b/to-svc-sel"},
	})
}
