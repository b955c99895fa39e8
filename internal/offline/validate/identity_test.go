package validate

import "testing"

// Selectors on labels that are never part of a pod's identity are
// accepted with a warning naming the field; derived labels (namespace,
// namespace labels, service account) and ordinary labels are not flagged.
func TestNonIdentityLabelWarning(t *testing.T) {
	tests := []struct {
		name, doc, field string // field "" = no warning expected
	}{
		{"cnp subject", cnp("endpointSelector:\n  matchLabels:\n    pod-template-hash: abc\ningress:\n- {}\n"), "spec.endpointSelector.matchLabels[pod-template-hash]"},
		{"cnp peer expression", cnp("endpointSelector: {}\ningress:\n- fromEndpoints:\n  - matchExpressions:\n    - key: k8s:statefulset.kubernetes.io/pod-name\n      operator: Exists\n"), "spec.ingress[0].fromEndpoints[0].matchExpressions[0].key"},
		{"netpol pod selector", netpol("podSelector:\n  matchLabels:\n    controller-revision-hash: x\n"), "spec.podSelector.matchLabels[controller-revision-hash]"},
		{"netpol peer", netpol("podSelector: {}\ningress:\n- from:\n  - podSelector:\n      matchLabels:\n        job-name: j\n"), "spec.ingress[0].from[0].podSelector.matchLabels[job-name]"},
		{"derived labels", cnp("endpointSelector:\n  matchLabels:\n    k8s:io.kubernetes.pod.namespace: demo\n    io.cilium.k8s.policy.serviceaccount: sa\n    io.cilium.k8s.namespace.labels.team: red\n    app.kubernetes.io/name: web\ningress:\n- {}\n"), ""},
		{"netpol namespace selector", netpol("podSelector: {}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels:\n        kubernetes.io/metadata.name: demo\n"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []Finding
			for _, f := range run(t, tc.doc, Options{}) {
				if f.Severity == Error {
					t.Errorf("unexpected error: %s %s", f.Field, f.Message)
				}
				if f.Rule == "non-identity-label" {
					got = append(got, f)
				}
			}
			switch {
			case tc.field == "" && len(got) > 0:
				t.Errorf("unexpected warnings: %+v", got)
			case tc.field != "" && (len(got) != 1 || got[0].Field != tc.field || got[0].Severity != Warning):
				t.Errorf("warnings %+v, want one on %s", got, tc.field)
			}
		})
	}
}
