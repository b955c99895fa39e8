package check

import (
	"github.com/bulwark-net/bulwark/internal/manifest"
	"path/filepath"
	"testing"
)

func seed(names ...string) []string {
	var out []string
	for _, n := range names {
		out = append(out, filepath.Join("..", "..", "..", "testdata", "seed", n))
	}
	return out
}

// The article's scenario: default-deny.yaml denies both directions in demo;
// frontend-to-backend.yaml only allows backend's ingress, so frontend's
// egress stays default-denied and the flow is DENIED.
func TestSeedFrontendToBackend(t *testing.T) {
	st, err := Load(seed("sample-app.yaml", "default-deny.yaml", "frontend-to-backend.yaml", "backend-to-database.yaml")...)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name                     string
		flow                     Flow
		verdict, egress, ingress string
		policies                 []string
	}{
		{"frontend to backend 8080", Flow{Src: "demo/frontend-0", Dst: "demo/backend-0", Port: 8080, Protocol: "TCP"}, denied, denied, allowed,
			[]string{"demo/default-deny-all"}},
		{"backend to database 5432", Flow{Src: "demo/backend-0", Dst: "demo/database-0", Port: 5432, Protocol: "TCP"}, denied, denied, allowed,
			[]string{"demo/default-deny-all"}},
		{"frontend to backend 9090", Flow{Src: "demo/frontend-0", Dst: "demo/backend-0", Port: 9090, Protocol: "TCP"}, denied, denied, denied,
			[]string{"demo/default-deny-all", "demo/frontend-to-backend"}},
		{"world to backend", Flow{Src: "203.0.113.9", Dst: "demo/backend-0", Port: 8080, Protocol: "TCP"}, denied, allowed, denied,
			[]string{"demo/default-deny-all", "demo/frontend-to-backend"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := st.Check(c.flow)
			if err != nil {
				t.Fatal(err)
			}
			if res.Verdict != c.verdict || res.Egress != c.egress || res.Ingress != c.ingress {
				t.Errorf("got verdict=%s egress=%s ingress=%s, want %s %s %s", res.Verdict, res.Egress, res.Ingress, c.verdict, c.egress, c.ingress)
			}
			if !equalStrings(res.Policies, c.policies) {
				t.Errorf("policies %v, want %v", res.Policies, c.policies)
			}
		})
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func mustLoadYAML(t *testing.T, doc string) *State {
	t.Helper()
	objs, errs := manifest.Decode("test.yaml", []byte(doc))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	st, err := FromSet(manifest.NewSet(objs...))
	if err != nil {
		t.Fatal(err)
	}
	return st
}
