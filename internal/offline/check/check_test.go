package check

import (
	"errors"
	"strings"
	"testing"
)

func TestRunFlowsFile(t *testing.T) {
	st, err := Load(seed("sample-app.yaml", "default-deny.yaml", "frontend-to-backend.yaml")...)
	if err != nil {
		t.Fatal(err)
	}
	in := `# comment
{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 8080, "protocol": "TCP"}

{"src": "8.8.8.8", "dst": "demo/backend-1", "port": "8080", "protocol": "udp"}
`
	var got []Result
	if err := st.Run(strings.NewReader(in), func(r Result) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Verdict != denied || got[1].Protocol != "UDP" || got[1].Ingress != denied || got[1].Egress != allowed {
		t.Errorf("results %+v", got)
	}
	for _, tc := range []struct{ in, want string }{
		{`{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 8080}` + "\n" + `{"dst": "demo/backend-0", "port": 1}`, `flows line 2: missing "src"`},
		{`{"src": "demo/x", "dst": "demo/backend-0", "port": 1}`, "flows line 1: src: pod demo/x is not in the state"},
		{`{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 70000}`, "flows line 1: port 70000 is out of range"},
		{`{"src": "demo/frontend-0", "dst": "demo/backend-0", "port": 80, "protocol": "ICMP"}`, `flows line 1: protocol "ICMP" is not TCP, UDP or SCTP`},
		{`[1,2]`, "flows line 1: not a JSON object"},
		{`{"src": "demo", "dst": "demo/backend-0", "port": 80}`, `flows line 1: src: "demo" is neither NS/POD nor an IP address`},
	} {
		emitted := 0
		err := st.Run(strings.NewReader(tc.in), func(Result) error { emitted++; return nil })
		var le *LineError
		if !errors.As(err, &le) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("input %q: error %v, want %q", tc.in, err, tc.want)
		}
		if emitted != 0 {
			t.Errorf("input %q: %d results emitted before the error", tc.in, emitted)
		}
	}
}

func TestSelfTrafficAndPodIPs(t *testing.T) {
	st := mustLoadYAML(t, `
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ns1}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: ns1}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
`)
	res, err := st.Check(Flow{Src: "ns1/a", Dst: "10.1.0.1", Port: 80})
	if err != nil || res.Verdict != allowed {
		t.Errorf("self traffic by IP: %+v %v", res, err)
	}
	res, _ = st.Check(Flow{Src: "10.1.0.1", Dst: "1.1.1.1", Port: 80})
	if res.Verdict != denied || res.Egress != denied {
		t.Errorf("pod IP as source is the pod: %+v", res)
	}
}
