package check

import (
	"strings"
	"testing"
)

func TestTraceSeed(t *testing.T) {
	st, err := Load(seed("sample-app.yaml", "default-deny.yaml", "frontend-to-backend.yaml", "l7-http-policy.yaml")...)
	if err != nil {
		t.Fatal(err)
	}
	res, err := st.Check(Flow{Src: "demo/frontend-0", Dst: "demo/backend-0", Port: 8080, Protocol: "TCP"})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := st.WriteTrace(&b, res); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Log("\n" + out)
	for _, want := range []string{
		"k8s:app=frontend",
		"Egress of demo/frontend-0 to identity",
		"DENIED by default deny: no rule allows it; default deny set by NetworkPolicy demo/default-deny-all",
		"L4 ALLOWED, each request judged by the L7 rules below (the proxy enforces them; with no proxy running the connection is dropped) by CiliumNetworkPolicy demo/frontend-to-backend, CiliumNetworkPolicy demo/l7-http-policy",
		"Final verdict: DENIED",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("trace output lacks %q", want)
		}
	}
}
