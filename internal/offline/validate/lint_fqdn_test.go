package validate

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLintFQDNWithoutDNSRules(t *testing.T) {
	seed, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "seed", "l7-dns-policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const rule = "lint/fqdn-without-dns-rules"
	dnsRule := "egress:\n- toEndpoints: [{matchLabels: {k8s-app: kube-dns, k8s:io.kubernetes.pod.namespace: kube-system}}]\n  toPorts:\n  - ports: [{port: \"53\", protocol: ANY}]\n    rules: {dns: [{matchPattern: \"*\"}]}\n"
	fqdnRule := "- toFQDNs: [{matchName: api.github.com}]\n  toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n"
	other := func(name, sel, body string) string {
		return "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: " + name + ", namespace: demo}\nspec:\n" + indent("endpointSelector: {matchLabels: {app: "+sel+"}}\n"+body, "  ")
	}
	tests := []struct {
		name, doc, field, msg string
		want                  bool
	}{
		{"seed: DNS allowed without rules.dns", string(seed), "spec.egress[1].toFQDNs", "the rule allowing DNS (spec.egress[0].toPorts[0]) has no rules.dns", true},
		{"corrected seed", strings.Replace(string(seed), "        protocol: UDP\n", "        protocol: UDP\n      rules:\n        dns:\n        - matchPattern: \"*\"\n", 1), "spec.egress[1].toFQDNs", "", false},
		{"no DNS rule at all", cnp("endpointSelector: {matchLabels: {app: backend}}\negress:\n" + fqdnRule), "spec.egress[0].toFQDNs", "no egress rule of these pods allows DNS on port 53 at all", true},
		{"rules.dns in another policy of the namespace", other("fqdn", "backend", "egress:\n"+fqdnRule) + "---\n" + other("dns", "backend", dnsRule), "spec.egress[0].toFQDNs", "", false},
		{"with pods: rules.dns selects the pod", podsDemo + "---\n" + other("fqdn", "web", "egress:\n"+fqdnRule) + "---\n" + other("dns", "web", dnsRule), "spec.egress[0].toFQDNs", "", false},
		{"with pods: rules.dns selects another pod", podsDemo + "---\n" + other("fqdn", "web", "egress:\n"+fqdnRule) + "---\n" + other("dns", "api", dnsRule), "spec.egress[0].toFQDNs", "toFQDNs can never allow anything", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := lintRules(t, tc.doc)
			got := hasLint(fs, rule, tc.field, tc.msg)
			if got != tc.want {
				t.Fatalf("lint %s at %s: %v, want %v\n%v", rule, tc.field, got, tc.want, fs)
			}
			if !tc.want {
				for _, f := range fs {
					if f.Rule == rule {
						t.Fatalf("unexpected %v", f)
					}
				}
			}
		})
	}
}
