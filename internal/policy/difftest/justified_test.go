package difftest_test

import (
	"testing"

	"github.com/bulwark-net/bulwark/internal/policy/difftest"
)

// Minimal cases of the justified differences listed in difftest_test.go:
// each pins what the reference engine says and what Bulwark says.

func oneCell(src, dst, proto string, port int) []difftest.Cell {
	return []difftest.Cell{{Src: src, Dst: dst, Protocol: proto, Port: port}}
}

var twoPods = []difftest.Pod{
	{Namespace: "x", Name: "a", Labels: map[string]string{"app": "a"}, IP: "10.0.0.1"},
	{Namespace: "x", Name: "b", Labels: map[string]string{"app": "b"}, IP: "10.0.0.2"},
}

var nsX = []difftest.Namespace{{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x"}}}

// 1: an ipBlock covering a pod's address. Cyclonus: the ipBlock selects the
// pod; Bulwark (and Cilium): a pod address carries its pod identity.
func TestJustifiedIPBlockPodAddress(t *testing.T) {
	s := &difftest.Scenario{Namespaces: nsX, Pods: twoPods, Cells: oneCell("x/a", "x/b", "TCP", 80), Policies: []string{`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr-in, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24}}]}]
`}}
	got, err := bulwark(s)
	if err != nil {
		t.Fatal(err)
	}
	cy := newCyclonus(t, s)
	if raw := cy.decide(s.Cells[0], rawIPBlock); !raw.Ingress {
		t.Errorf("cyclonus with real pod addresses: %+v, want ingress allowed (its reading)", raw)
	}
	if got[0].Ingress || cy.decide(s.Cells[0], exact).Ingress {
		t.Errorf("bulwark %+v and cyclonus on uncovered addresses must both deny", got[0])
	}
}

// 4: NotIn on a pod without the key. Kubernetes: selected; cyclonus: not.
func TestJustifiedCyclonusNotIn(t *testing.T) {
	s := &difftest.Scenario{Namespaces: nsX, Pods: twoPods, Cells: oneCell("x/a", "x/b", "TCP", 80), Policies: []string{`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: notin, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [c]}]}}]}]
`}}
	got, err := bulwark(s)
	if err != nil {
		t.Fatal(err)
	}
	cy := newCyclonus(t, s)
	if raw := cy.decide(s.Cells[0], rawSelectors); raw.Ingress {
		t.Errorf("raw cyclonus: %+v, want its (wrong) denial", raw)
	}
	if !got[0].Ingress || !cy.decide(s.Cells[0], exact).Ingress {
		t.Errorf("bulwark %+v and cyclonus with completed labels must allow (x/a has no tier label)", got[0])
	}
}

// 2: pods of one identity that disagree on a named port. Kubernetes
// decides per pod; Bulwark and Cilium decide per identity, and an
// identity whose pods give a name different values matches none of them
// (fail closed).
func TestJustifiedNamedPortPerIdentity(t *testing.T) {
	pods := []difftest.Pod{
		{Namespace: "x", Name: "client", Labels: map[string]string{"app": "client"}, IP: "10.0.0.1"},
		{Namespace: "x", Name: "web-0", Labels: map[string]string{"app": "web"}, IP: "10.0.0.2", Ports: []difftest.Port{{Name: "http", Protocol: "TCP", Port: 80}}},
		{Namespace: "x", Name: "web-1", Labels: map[string]string{"app": "web"}, IP: "10.0.0.3", Ports: []difftest.Port{{Name: "http", Protocol: "TCP", Port: 81}}},
	}
	s := &difftest.Scenario{Namespaces: nsX, Pods: pods, Cells: oneCell("x/client", "x/web-0", "TCP", 80), Policies: []string{`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
`}}
	got, err := bulwark(s)
	if err != nil {
		t.Fatal(err)
	}
	if !newCyclonus(t, s).decide(s.Cells[0], exact).Egress {
		t.Errorf("cyclonus (per pod) must allow web-0:80")
	}
	if got[0].Egress {
		t.Errorf("bulwark allows egress to web-0:80 although web-1 of the same identity calls 81 http: want fail closed, as Cilium")
	}
	if r := ciliumRef(t, []*difftest.Scenario{s})[0]; r.Error != "" || r.Verdicts[0].Egress {
		t.Errorf("Cilium: %+v, want egress denied", r)
	}
}
