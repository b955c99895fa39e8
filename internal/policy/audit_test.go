package policy_test

import (
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/check"
)

// auditCase is a flow with its verdict and the audit-mode policies that
// would have denied it ("" when none flags it).
type auditCase struct {
	src, dst string
	port     int
	want     string // allowed | denied
	audit    string // comma-joined Result.Audit
}

func runAudit(t *testing.T, st *check.State, cases []auditCase) {
	t.Helper()
	for _, c := range cases {
		res, err := st.Check(check.Flow{Src: c.src, Dst: c.dst, Port: c.port, Protocol: "TCP"})
		if err != nil {
			t.Fatalf("%s -> %s %d: %v", c.src, c.dst, c.port, err)
		}
		if res.Verdict != c.want || strings.Join(res.Audit, ",") != c.audit {
			t.Errorf("%s -> %s %d: %s audit %v (policies %v), want %s audit %q", c.src, c.dst, c.port, res.Verdict, res.Audit, res.Policies, c.want, c.audit)
		}
	}
}

// TestAuditSemantics: the semantics of policy.bulwark.io/audit (package
// doc of internal/policy/resolved).
func TestAuditSemantics(t *testing.T) {
	t.Run("audit default deny alone passes flagged", func(t *testing.T) {
		st := loadYAML(t, baseState, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dd, namespace: a, annotations: {policy.bulwark.io/audit: "true"}}
spec: {podSelector: {}, policyTypes: [Ingress]}
`)
		runAudit(t, st, []auditCase{
			{"b/frontend", "a/backend", 8080, "allowed", "a/dd"},
			{"a/backend", "b/backend", 9090, "allowed", ""}, // b is not selected
		})
	})
	t.Run("enforcing default deny wins; audit allows count", func(t *testing.T) {
		st := loadYAML(t, baseState, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dd, namespace: a}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: audit-allow, namespace: a, annotations: {policy.bulwark.io/audit: "true"}}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}], ports: [{port: 8080}]}]
`)
		runAudit(t, st, []auditCase{
			{"a/frontend", "a/backend", 8080, "allowed", ""}, // the audit policy's allow allows
			{"a/frontend", "a/backend", 8081, "denied", ""},  // enforced default deny
			{"b/frontend", "a/backend", 8080, "denied", ""},
		})
	})
	t.Run("audit deny flags allows; enforcing deny wins; no allow under default deny drops", func(t *testing.T) {
		st := loadYAML(t, baseState, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEndpoints: [{}], toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "8081", protocol: TCP}]}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: audit-deny, namespace: a, annotations: {policy.bulwark.io/audit: "true"}}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-8081, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny: [{fromEndpoints: [{matchLabels: {app: frontend}}], toPorts: [{ports: [{port: "8081", protocol: TCP}]}]}]
`)
		runAudit(t, st, []auditCase{
			{"a/frontend", "a/backend", 8080, "allowed", "a/audit-deny"}, // allowed, flagged
			{"a/frontend", "a/backend", 9999, "denied", ""},              // nothing allows it: the enforcing default deny drops
			{"a/frontend", "a/backend", 8081, "denied", ""},              // the enforcing deny wins
		})
	})
	t.Run("bad annotation value refused", func(t *testing.T) {
		_, err := loadYAMLErr(baseState, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dd, namespace: a, annotations: {policy.bulwark.io/audit: "yes"}}
spec: {podSelector: {}}
`)
		if err == nil || !strings.Contains(err.Error(), "policy.bulwark.io/audit") {
			t.Fatalf("audit annotation \"yes\": err %v, want a refusal naming the annotation", err)
		}
	})
	l7 := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]
`
	t.Run("audit deny of an L7-redirected port flags it; the proxy still enforces", func(t *testing.T) {
		st := loadYAML(t, baseState, l7, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: audit-deny, namespace: a, annotations: {policy.bulwark.io/audit: "true"}}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny: [{fromEndpoints: [{matchLabels: {app: frontend}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
`)
		runAudit(t, st, []auditCase{{"a/frontend", "a/backend", 8080, "allowed", "a/audit-deny"}})
		res, err := st.Check(check.Flow{Src: "a/frontend", Dst: "a/backend", Port: 8080, Protocol: "TCP"})
		if err != nil || !res.Proxy {
			t.Fatalf("flagged redirect: %+v (%v), want it still sent to the proxy", res, err)
		}
	})
	t.Run("L7 rules in an audit-mode policy refused", func(t *testing.T) {
		_, err := loadYAMLErr(baseState, strings.Replace(l7, "namespace: a}", `namespace: a, annotations: {policy.bulwark.io/audit: "true"}}`, 1))
		if err == nil || !strings.Contains(err.Error(), "spec.ingress[0].toPorts[0].rules") || !strings.Contains(err.Error(), "audit-mode") {
			t.Fatalf("L7 rules in an audit-mode policy: err %v, want a refusal naming the field", err)
		}
	})
}

// loadYAMLErr is loadYAML returning the decode or load error.
func loadYAMLErr(docs ...string) (*check.State, error) {
	objs, errs := manifest.Decode("test.yaml", []byte(strings.Join(docs, "\n---\n")))
	if len(errs) > 0 {
		return nil, errs
	}
	return check.FromSet(manifest.NewSet(objs...))
}
