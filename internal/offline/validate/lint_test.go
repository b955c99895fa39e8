package validate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const podsDemo = `apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  containers: [{name: c, image: x}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: demo}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: c, image: x}]
`

func lintRules(t *testing.T, doc string) []Finding {
	t.Helper()
	var out []Finding
	for _, f := range run(t, doc, Options{}) {
		if f.Severity == Warning {
			out = append(out, f)
		}
	}
	return out
}

func hasLint(fs []Finding, rule, field, msg string) bool {
	for _, f := range fs {
		if f.Rule == rule && f.Severity == Warning && (field == "" || f.Field == field) && strings.Contains(f.Message, msg) {
			return true
		}
	}
	return false
}

func TestLint(t *testing.T) {
	tests := []struct {
		name, doc        string
		rule, field, msg string
		want             bool
	}{
		// Lint a: shadowed except.
		{"except shadowed by toCIDR", cnp("endpointSelector: {}\negress:\n- toCIDR: [0.0.0.0/0]\n- toCIDRSet:\n  - cidr: 0.0.0.0/0\n    except: [10.0.0.0/8]\n"),
			"lint/cidr-except-shadowed", "spec.egress[1].toCIDRSet[0].except", "allows all egress", true},
		{"except shadowed by world", cnp("endpointSelector: {}\ningress:\n- fromEntities: [world]\n- fromCIDRSet:\n  - cidr: 10.0.0.0/8\n    except: [10.1.0.0/16]\n"),
			"lint/cidr-except-shadowed", "spec.ingress[1].fromCIDRSet[0].except", "fromEntities world", true},
		{"except shadowed by narrower allow", cnp("endpointSelector: {}\negress:\n- toCIDR: [10.1.0.0/16]\n- toCIDRSet:\n  - cidr: 10.0.0.0/8\n    except: [10.1.2.0/24]\n"),
			"lint/cidr-except-shadowed", "spec.egress[1].toCIDRSet[0].except", "has no effect", true},
		{"except not shadowed", cnp("endpointSelector: {}\negress:\n- toCIDR: [192.168.0.0/16]\n- toCIDRSet:\n  - cidr: 0.0.0.0/0\n    except: [10.0.0.0/8]\n"),
			"lint/cidr-except-shadowed", "spec.egress[1].toCIDRSet[0].except", "", false},
		// Lint b: selects nothing.
		{"subject selects nothing", podsDemo + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: nope}\n"),
			"lint/selects-nothing", "spec.endpointSelector", "matches no pod", true},
		{"peer selects nothing", podsDemo + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: web}\ningress:\n- fromEndpoints:\n  - matchLabels: {app: nope}\n"),
			"lint/selects-nothing", "spec.ingress[0].fromEndpoints[0]", "matches no pod", true},
		{"deployment pods count", podsDemo + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: api}\n"),
			"lint/selects-nothing", "spec.endpointSelector", "", false},
		{"other namespace unknown", podsDemo + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: web}\ningress:\n- fromEndpoints:\n  - matchLabels: {k8s:io.kubernetes.pod.namespace: other, app: x}\n"),
			"lint/selects-nothing", "spec.ingress[0].fromEndpoints[0]", "", false},
		{"no pods no lint", cnp("endpointSelector:\n  matchLabels: {app: nope}\n"),
			"lint/selects-nothing", "spec.endpointSelector", "", false},
		{"netpol selects nothing", podsDemo + "---\n" + netpol("podSelector:\n  matchLabels: {app: nope}\n"),
			"lint/selects-nothing", "spec.podSelector", "matches no pod", true},
		// Namespaced subject naming another namespace.
		{"subject other namespace", cnp("endpointSelector:\n  matchLabels: {k8s:io.kubernetes.pod.namespace: prod}\n"),
			"subject-namespace", "spec.endpointSelector.matchLabels[k8s:io.kubernetes.pod.namespace]", "is ignored", true},
		{"subject own namespace", cnp("endpointSelector:\n  matchLabels: {k8s:io.kubernetes.pod.namespace: demo}\n"),
			"subject-namespace", "spec.endpointSelector.matchLabels[k8s:io.kubernetes.pod.namespace]", "", false},
		// Lint g: named ports.
		{"named port undeclared", podsDemo + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: web}\ningress:\n- toPorts:\n  - ports: [{port: http}]\n"),
			"lint/named-port", "spec.ingress[0].toPorts[0].ports[0].port", "not declared", true},
		{"named port declared", strings.Replace(podsDemo, "containers: [{name: c, image: x}]\n---", "containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}]}]\n---", 1) + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: web}\ningress:\n- toPorts:\n  - ports: [{port: http}]\n"),
			"lint/named-port", "spec.ingress[0].toPorts[0].ports[0].port", "", false},
		{"egress named port on peers", podsDemo + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: web}\negress:\n- toEndpoints: [{matchLabels: {app: api}}]\n  toPorts:\n  - ports: [{port: grpc}]\n"),
			"lint/named-port", "spec.egress[0].toPorts[0].ports[0].port", "peer pods", true},
		{"netpol named port", podsDemo + "---\n" + netpol("podSelector: {}\ningress:\n- ports: [{port: metrics}]\n"),
			"lint/named-port", "spec.ingress[0].ports[0].port", "not declared", true},
		// Lint c: L7 protocol.
		{"dns rules on tcp only", cnp("endpointSelector: {}\negress:\n- toEntities: [cluster]\n  toPorts:\n  - ports: [{port: \"53\", protocol: TCP}]\n    rules:\n      dns: [{matchPattern: \"*\"}]\n"),
			"lint/l7-protocol", "spec.egress[0].toPorts[0].ports", "UDP", true},
		{"dns rules on any", cnp("endpointSelector: {}\negress:\n- toEntities: [cluster]\n  toPorts:\n  - ports: [{port: \"53\", protocol: ANY}]\n    rules:\n      dns: [{matchPattern: \"*\"}]\n"),
			"lint/l7-protocol", "spec.egress[0].toPorts[0].ports", "", false},
		// Lint d: FQDN without DNS.
		{"fqdn without dns", podsDemo + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: web}\negress:\n- toFQDNs:\n  - matchName: api.github.com\n"),
			"lint/fqdn-without-dns", "spec.egress[0].toFQDNs", "demo/web", true},
		{"fqdn with dns", podsDemo + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: web}\negress:\n- toFQDNs:\n  - matchName: api.github.com\n- toEndpoints:\n  - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}\n  toPorts:\n  - ports: [{port: \"53\", protocol: ANY}]\n"),
			"lint/fqdn-without-dns", "spec.egress[0].toFQDNs", "", false},
		{"fqdn with netpol dns", podsDemo + "---\n" + netpol("podSelector: {}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector:\n      matchLabels: {kubernetes.io/metadata.name: kube-system}\n  ports:\n  - {port: 53, protocol: UDP}\n") + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: web}\negress:\n- toFQDNs:\n  - matchName: api.github.com\n"),
			"lint/fqdn-without-dns", "spec.egress[0].toFQDNs", "", false},
		{"fqdn dns over tcp only", podsDemo + "---\n" + cnp("endpointSelector:\n  matchLabels: {app: web}\negress:\n- toFQDNs:\n  - matchName: api.github.com\n- toEntities: [cluster]\n  toPorts:\n  - ports: [{port: \"53\", protocol: TCP}]\n"),
			"lint/fqdn-without-dns", "spec.egress[0].toFQDNs", "UDP 53", true},
		{"http host without dns, no pods", cnp("endpointSelector: {}\negress:\n- toEntities: [world]\n  toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules:\n      http:\n      - host: example.com\n"),
			"lint/fqdn-without-dns", "spec.egress[0].toPorts[0].rules.http[0].host", "no egress rule in the input allows DNS", true},
		// Lint e: claims deny.
		{"description claims deny", cnp("description: Block traffic to the database\nendpointSelector: {}\ningress:\n- fromEntities: [cluster]\n"),
			"lint/claims-deny", "spec.description", "only allow rules", true},
		{"annotation claims deny", strings.Replace(cnp("endpointSelector: {}\ningress:\n- fromEntities: [cluster]\n"), "  namespace: demo\n", "  namespace: demo\n  annotations:\n    description: deny all from world\n", 1),
			"lint/claims-deny", "metadata.annotations[description]", "only allow rules", true},
		{"deny with deny section", cnp("description: deny world\nendpointSelector: {}\ningressDeny:\n- fromEntities: [world]\n"),
			"lint/claims-deny", "spec.description", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := lintRules(t, tt.doc)
			got := hasLint(fs, tt.rule, tt.field, tt.msg)
			if got != tt.want {
				var lines []string
				for _, f := range fs {
					lines = append(lines, f.String())
				}
				t.Errorf("lint %s at %s present=%v, want %v; lints:\n%s", tt.rule, tt.field, got, tt.want, strings.Join(lines, "\n"))
			}
		})
	}
}

func seedFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(seedDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Lint f: the seed's frontend-to-backend ingress allow, with the seed's
// default deny and sample app, never takes effect (frontend egress is
// default-denied); an egress allow for the frontend makes it effective.
func TestLintIngressUnreachable(t *testing.T) {
	base := seedFile(t, "sample-app.yaml") + "\n---\n" + seedFile(t, "default-deny.yaml") + "\n---\n" + seedFile(t, "frontend-to-backend.yaml")
	fs := lintRules(t, base)
	if !hasLint(fs, "lint/ingress-unreachable", "spec.ingress[0]", "demo/frontend-0 -> demo/backend-0 TCP/8080 is dropped at demo/frontend-0's egress, which is default-deny through demo/default-deny-all") {
		t.Errorf("no unreachable-ingress warning: %v", fs)
	}
	egress := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-egress, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`
	fs = lintRules(t, base+"\n---\n"+egress)
	if hasLint(fs, "lint/ingress-unreachable", "spec.ingress[0]", "") {
		t.Errorf("warning despite an egress allow: %v", fs)
	}
	// Without the default deny the frontend's egress is open.
	fs = lintRules(t, seedFile(t, "sample-app.yaml")+"\n---\n"+seedFile(t, "frontend-to-backend.yaml"))
	if hasLint(fs, "lint/ingress-unreachable", "spec.ingress[0]", "") {
		t.Errorf("warning without default deny: %v", fs)
	}
}

// Lint f from policy files alone (no pods in the input): the seed's
// default-deny.yaml + frontend-to-backend.yaml warn, naming the egress
// rule that is missing; an egress allow for the described frontend, or no
// default deny, silences it.
func TestLintIngressUnreachableWithoutPods(t *testing.T) {
	base := seedFile(t, "default-deny.yaml") + "\n---\n" + seedFile(t, "frontend-to-backend.yaml")
	fs := lintRules(t, base)
	if !hasLint(fs, "lint/ingress-unreachable", "spec.ingress[0].fromEndpoints[0]",
		"a pod labelled app=frontend,tier=public in namespace demo is in egress default deny (through demo/default-deny-all) and no egress rule lets it reach pods labelled app=backend,tier=internal in namespace demo on TCP/8080; add an egress rule selecting {app=frontend,tier=public} with toEndpoints {app=backend,tier=internal} on TCP/8080") {
		t.Errorf("no unreachable-ingress warning from policies alone: %v", fs)
	}
	egress := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-egress, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`
	if fs := lintRules(t, base+"\n---\n"+egress); hasLint(fs, "lint/ingress-unreachable", "", "") {
		t.Errorf("warning despite an egress allow: %v", fs)
	}
	if fs := lintRules(t, seedFile(t, "frontend-to-backend.yaml")); hasLint(fs, "lint/ingress-unreachable", "", "") {
		t.Errorf("warning without default deny: %v", fs)
	}
}

// A NetworkPolicy section whose direction policyTypes leaves out is
// ignored (Kubernetes): validate says so.
func TestPolicyTypesIgnoredSection(t *testing.T) {
	doc := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: demo}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{}]
  egress: [{to: [{podSelector: {}}]}]
`
	fs := lintRules(t, doc)
	if !hasLint(fs, "policytypes-ignored-section", "spec.egress", "policyTypes does not list Egress") || hasLint(fs, "policytypes-ignored-section", "spec.ingress", "") {
		t.Errorf("findings: %v", fs)
	}
}

// A toPorts element without ports matches nothing: validate says so.
func TestPortRuleWithoutPorts(t *testing.T) {
	fs := lintRules(t, cnp("endpointSelector: {}\ningress:\n- fromEndpoints: [{}]\n  toPorts: [{}]\n"))
	if !hasLint(fs, "lint/port-rule-without-ports", "spec.ingress[0].toPorts[0]", "matches no traffic") {
		t.Errorf("findings: %v", fs)
	}
}

// The same lint for a NetworkPolicy ingress allow, from policies alone: a
// rule warns only when every peer it admits is blocked at its own egress.
func TestLintNetworkPolicyIngressUnreachableWithoutPods(t *testing.T) {
	allow := func(peerNS string) string {
		return `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: demo}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ` + peerNS + `}}
      podSelector: {matchLabels: {app: probe}}
    ports: [{port: 8080}]
`
	}
	deny := seedFile(t, "default-deny.yaml")
	fs := lintRules(t, deny+"\n---\n"+allow("demo"))
	if !hasLint(fs, "lint/ingress-unreachable", "spec.ingress[0].from[0]", "a pod labelled app=client in namespace demo is in egress default deny (through demo/default-deny-all)") {
		t.Errorf("both peers under default deny: %v", fs)
	}
	// A peer in a namespace without default deny reaches: no warning.
	if fs := lintRules(t, deny+"\n---\n"+allow("tools")); hasLint(fs, "lint/ingress-unreachable", "", "") {
		t.Errorf("a peer reaches: %v", fs)
	}
}
