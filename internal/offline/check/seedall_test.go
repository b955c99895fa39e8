package check

import "testing"

// Every seed document loads together, and the clusterwide policies take
// part: global-deny-external-access (despite its name) allows egress to
// 0.0.0.0/0 for every pod, so demo pods reach the outside world while
// pod-to-pod egress stays default-denied.
func TestAllSeedsTogether(t *testing.T) {
	st, err := Load(seed(".")...)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		flow     Flow
		verdict  string
		policies string
	}{
		{Flow{Src: "demo/frontend-0", Dst: "8.8.8.8", Port: 443, Protocol: "TCP"}, allowed, "global-deny-external-access"},
		{Flow{Src: "demo/backend-0", Dst: "10.1.2.3", Port: 5432, Protocol: "TCP"}, allowed, "global-deny-external-access"},
		{Flow{Src: "demo/frontend-0", Dst: "demo/backend-0", Port: 8080, Protocol: "TCP"}, denied, "demo/allow-dns,demo/default-deny-all,global-deny-external-access"},
		{Flow{Src: "demo/backend-0", Dst: "demo/database-0", Port: 5432, Protocol: "TCP"}, denied, "demo/allow-dns,demo/default-deny-all,demo/dns-egress-policy,global-deny-external-access"},
	} {
		res, err := st.Check(c.flow)
		if err != nil {
			t.Fatal(err)
		}
		if res.Verdict != c.verdict || join(res.Policies) != c.policies {
			t.Errorf("%+v: %s %v (egress %s ingress %s), want %s %s", c.flow, res.Verdict, res.Policies, res.Egress, res.Ingress, c.verdict, c.policies)
		}
	}
}

func join(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += ","
		}
		out += s
	}
	return out
}
