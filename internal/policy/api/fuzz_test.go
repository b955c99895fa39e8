package api

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// FuzzSelector: building, normalising and confining selectors never
// panics; a selector that converts matches consistently with its
// namespace-confined form; port parsing never panics and keeps ranges
// ordered.
func FuzzSelector(f *testing.F) {
	f.Add("k8s:app", "web", "In", "any:tier", "x", "demo", "8080", int32(0))
	f.Add("reserved:host", "", "Exists", "k8s:io.kubernetes.pod.namespace", "kube-system", "", "http", int32(0))
	f.Add("a/b", "c", "NotIn", "", "", "ns", "0x10", int32(90))
	f.Add("cidr:1.2.3.4/32", "", "DoesNotExist", "x:y:z", "v", "", "65536", int32(-1))
	f.Fuzz(func(t *testing.T, key, value, op, exprKey, exprValue, ns, port string, endPort int32) {
		s := EndpointSelector{metav1.LabelSelector{
			MatchLabels: map[string]string{key: value},
			MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: exprKey, Operator: metav1.LabelSelectorOperator(op), Values: []string{exprValue},
			}},
		}}
		_, _ = s.Normalized()
		_ = s.MentionsNamespace()
		peer := EffectivePeerSelector(ns, s)
		subject := EffectiveSubjectSelector(ns, s)
		sel, err := s.Selector()
		if err == nil {
			ls := labels.Set{LabelPodNamespace: "other-" + ns}
			if nk, err := NormalizeKey(key); err == nil {
				ls[nk] = value
			}
			if psel, err := peer.Selector(); err == nil && ns != "" && !s.MentionsNamespace() && !s.MentionsReserved() && psel.Matches(ls) {
				t.Fatalf("peer selector %v escaped namespace %q", psel, ns)
			}
			_ = sel.Matches(ls)
		}
		if ssel, err := subject.Selector(); err == nil && ns != "" {
			if ssel.Matches(labels.Set{LabelPodNamespace: "other-" + ns}) {
				t.Fatalf("subject selector %v escaped namespace %q", ssel, ns)
			}
		}
		if spec, err := ParsePort(Port(port), endPort); err == nil {
			lo, hi := spec.Range()
			if !spec.IsNamed() && lo > hi {
				t.Fatalf("range %d-%d", lo, hi)
			}
		}
	})
}
