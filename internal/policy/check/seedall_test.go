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
		{Flow{"demo/frontend-0", "8.8.8.8", 443, "TCP"}, allowed, "global-deny-external-access"},
		{Flow{"demo/backend-0", "10.1.2.3", 5432, "TCP"}, allowed, "global-deny-external-access"},
		{Flow{"demo/frontend-0", "demo/backend-0", 8080, "TCP"}, denied, "demo/allow-dns,demo/default-deny-all,global-deny-external-access"},
		{Flow{"demo/backend-0", "demo/database-0", 5432, "TCP"}, denied, "demo/allow-dns,demo/default-deny-all,demo/dns-egress-policy,global-deny-external-access"},
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
