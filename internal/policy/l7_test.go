package policy_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/offline/check"
	"github.com/bulwark-net/bulwark/internal/policy"
	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

const l7Backend = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s, namespace: a}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
`

func l7Policy(name, rules string) string {
	return strings.Replace(l7Backend, "%s", name, 1) + rules
}

// headerMatches compile into the Redirect entry's rules, and the rules of
// several policies on one port are merged (OR-ed) without duplicates.
func TestHTTPHeaderMatchesCompiledAndMerged(t *testing.T) {
	st := loadYAML(t, baseState,
		l7Policy("one", `        - method: GET
          path: /api/.*
          headers: ["X-API-Version: v2"]
          headerMatches:
          - {name: X-Tenant, value: blue}
          - {name: X-Trace, value: "on", mismatch: ADD}
`),
		l7Policy("two", `        - method: POST
          path: /login
        - method: GET
          path: /api/.*
          headers: ["X-API-Version: v2"]
          headerMatches:
          - {name: X-Tenant, value: blue}
          - {name: X-Trace, value: "on", mismatch: ADD}
`))
	res, err := st.Check(check.Flow{Src: "a/frontend", Dst: "a/backend", Port: 8080, Protocol: "TCP"})
	if err != nil {
		t.Fatal(err)
	}
	l7 := res.IngressDecision.L7
	if !res.Proxy || l7 == nil {
		t.Fatalf("want a proxy redirect with L7 rules, got proxy=%v decision=%+v", res.Proxy, res.IngressDecision)
	}
	if len(l7.HTTP) != 2 {
		t.Fatalf("merged rules: got %d, want 2 (the identical rule once): %+v", len(l7.HTTP), l7.HTTP)
	}
	var withMatches *resolved.HTTPRule
	for i := range l7.HTTP {
		if l7.HTTP[i].Path == "/api/.*" {
			withMatches = &l7.HTTP[i]
		}
	}
	if withMatches == nil {
		t.Fatalf("rule /api/.* missing: %+v", l7.HTTP)
	}
	want := []resolved.HeaderMatch{{Name: "X-Tenant", Value: "blue", Mismatch: resolved.MismatchFail}, {Name: "X-Trace", Value: "on", Mismatch: resolved.MismatchAdd}}
	if len(withMatches.HeaderMatches) != len(want) {
		t.Fatalf("headerMatches: got %+v, want %+v", withMatches.HeaderMatches, want)
	}
	for i := range want {
		if withMatches.HeaderMatches[i] != want[i] {
			t.Errorf("headerMatches[%d]: got %+v, want %+v", i, withMatches.HeaderMatches[i], want[i])
		}
	}
}

// Rules the proxy could not enforce are refused with the field named.
func TestHTTPRuleRefusals(t *testing.T) {
	tests := []struct{ name, rules, field, feature string }{
		{"bad path regex", "        - path: \"/api/(\"\n", "spec.ingress[0].toPorts[0].rules.http[0].path", ""},
		{"bad method regex", "        - method: \"GET[\"\n", "spec.ingress[0].toPorts[0].rules.http[0].method", ""},
		{"lookahead host", "        - host: \"(?!evil).*\"\n", "spec.ingress[0].toPorts[0].rules.http[0].host", ""},
		{"secret", "        - headerMatches:\n          - name: X-Token\n            secret: {name: tok}\n", "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret", policy.FeatureHeaderSecrets},
		{"unknown mismatch", "        - headerMatches:\n          - {name: X-Token, value: v, mismatch: IGNORE}\n", "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, errs := manifest.Decode("p.yaml", []byte(l7Policy("p", tt.rules)))
			if len(errs) > 0 {
				t.Fatalf("decode: %v", errs)
			}
			err := policy.CompilePolicy(objs[0].Obj)
			var fe *policy.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want a FieldError", err)
			}
			if fe.Field != tt.field || fe.Feature != tt.feature {
				t.Errorf("refused %s (feature %q: %s), want %s (feature %q)", fe.Field, fe.Feature, fe.Reason, tt.field, tt.feature)
			}
		})
	}
}
